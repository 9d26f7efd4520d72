"""`python -m tcalloc` (run, stress, stats) and the TCALLOC_* settings.

Every case runs a fresh interpreter, as a user would, from a directory other
than the checkout; TCALLOC_* variables of the calling environment are removed
so each test sees only what it sets.
"""
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

import tcalloc
from tcalloc import _config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_ENV = {k: v for k, v in os.environ.items() if not k.startswith("TCALLOC_")}
BASE_ENV["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")


def tc(*args, env=None, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "tcalloc", *args], env=dict(BASE_ENV, **(env or {})),
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def py(code, env=None, cwd=None):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          env=dict(BASE_ENV, **(env or {})), cwd=cwd, capture_output=True,
                          text=True, timeout=120)


# ---- the CLI ----------------------------------------------------------------------

@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["stats", "--help"],
                                  ["stress", "--help"]])
def test_help_everywhere(args, tmp_path):
    r = tc(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: python -m tcalloc"), r.stdout[:200]


def test_version(tmp_path):
    r = tc("--version", cwd=tmp_path)
    assert r.returncode == 0
    assert r.stdout.split()[:2] == ["tcalloc", tcalloc.__version__]


@pytest.mark.parametrize("args", [[], ["run"], ["run", "-m"], ["run", "-c"], ["frobnicate"],
                                  ["run", "--domains", "heap", "x.py"], ["run", "--nope", "x.py"],
                                  ["run", "--domains"], ["stats", "extra"]])
def test_bad_usage_exits_2_with_usage(args, tmp_path):
    r = tc(*args, cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "usage: python -m tcalloc" in r.stderr


USUAL_RUN_FORMS = [
    ["x.py"], ["--", "x.py"], ["-m", "mod"], ["-mmod"], ["-c", "pass"], ["-cpass"],
    ["--stats", "x.py"], ["--domains", "raw,obj", "x.py"], ["--domains=mem", "-m", "mod"],
    ["--domains", " obj , raw ", "x.py"], ["--heap-profile", "h.svg", "--stats", "-c", "1"],
    ["--heap-profile=h.pb.gz", "x.py"], ["--stats", "--domains", "obj", "--", "-x.py"]]
OTHER_RUN_FORMS = [
    ["-h"], ["--domains", "heap", "x.py"], ["--domains=", "x.py"], ["--nope", "x.py"],
    ["--stats"], ["-m"], ["-c"], ["--domains"], ["--heap-profile", "x.py"], ["-"]]


@pytest.mark.parametrize("argv", USUAL_RUN_FORMS + OTHER_RUN_FORMS)
def test_run_reads_its_options_as_its_argparse_parser_does(argv):
    # run parses the usual forms by hand (argparse would load modules into
    # the program's interpreter); each must read as the parser reads it, and
    # everything else must go to the parser.
    from tcalloc import __main__ as cli
    own, _ = cli._split_run(argv)
    mine = cli._parse_run_simply(own)
    if argv not in USUAL_RUN_FORMS:
        assert mine is None, argv
        return
    assert mine is not None, argv
    ref = cli._parser()[1].parse_args(own)
    for k in ("domains", "stats", "heap_profile", "module", "code", "script"):
        assert getattr(mine, k) == getattr(ref, k), (argv, k)


def test_run_loads_nothing_the_program_did_not_ask_for(tmp_path):
    # The interpreter run hands over carries tcalloc and what Python's own
    # `python script.py` loads, not run's argument parser nor tracemalloc
    # (each is memory the program then pays: ~1 MiB together).
    script = tmp_path / "p.py"
    script.write_text("import sys; print(' '.join(sorted(sys.modules)))\n")
    r = tc("run", "--stats", "--domains", "obj,mem,raw", str(script), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    loaded = set(r.stdout.split())
    assert "tcalloc._engine" in loaded
    assert not loaded & {"argparse", "gettext", "tracemalloc", "pickle", "ctypes", "html",
                         "gzip"}, loaded


def test_missing_script_exits_2_as_python_does(tmp_path):
    r = tc("run", str(tmp_path / "nope.py"), cwd=tmp_path)
    assert r.returncode == 2
    assert "can't open file" in r.stderr and "No such file" in r.stderr


def test_run_c_code_gets_argv_main_and_exit_status(tmp_path):
    code = "import sys, tcalloc; print(sys.argv, __name__, tcalloc.installed()); sys.exit(5)"
    r = tc("run", "-c", code, "a", "--b", cwd=tmp_path)
    assert r.returncode == 5, r.stderr
    assert r.stdout.strip() == "['-c', 'a', '--b'] __main__ True"


def test_run_c_exception_exits_1_with_traceback(tmp_path):
    r = tc("run", "-c", "raise KeyError('boom')", cwd=tmp_path)
    assert r.returncode == 1
    assert "KeyError: 'boom'" in r.stderr


def _plain(args, cwd, stdin=None):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                          env=BASE_ENV, input=stdin, timeout=120)


@pytest.mark.parametrize("program", [
    "def f():\n    raise KeyError('boom')\nf()\n",
    "x = (\n",                                                    # SyntaxError: no frames
    "import sys\ndef h(t, v, tb):\n    raise RuntimeError('x')\nsys.excepthook = h\n"
    "raise ValueError\n",                                         # a hook that fails
    "import sys\nsys.excepthook = lambda t, v, tb: print('hook', t.__name__, "
    "tb.tb_frame.f_code.co_filename)\nraise ValueError\n",       # the program's own hook
    "import atexit\natexit.register(print, 'bye')\nraise KeyboardInterrupt\n",
])
def test_run_reports_an_uncaught_exception_as_python_does(tmp_path, program):
    # Byte for byte: the program's frames only (not run's or runpy's),
    # through the program's own sys.excepthook; exit 1, or death by SIGINT
    # after the atexit handlers for KeyboardInterrupt.
    script = tmp_path / "prog.py"
    script.write_text(program)
    for args in ([str(script)], ["-c", program]):
        r = tc("run", *args, cwd=tmp_path)
        plain = _plain(args, tmp_path)
        assert (r.returncode, r.stdout, r.stderr) == (plain.returncode, plain.stdout,
                                                      plain.stderr), (args, r.stderr)
    assert plain.returncode in (1, -2)


_WHERE = ("import sys, os, threading, pickle\n"
          "class Job: pass\n"
          "def late():\n"
          "    # after the program's code returned: __main__ is still the program's\n"
          "    print(len(pickle.dumps(Job())) > 0, sys.modules['__main__'].__dict__.get('Job') is Job)\n"
          "print(os.path.isabs(__file__), type(__builtins__).__name__, sys.argv[0])\n"
          "print(sys.path[0])\n"
          "import helper_next_to_the_real_file\n"
          "threading.Timer(0.2, late).start()\n")


def test_run_a_script_sees_what_python_gives_it(tmp_path):
    # The script's real directory first on sys.path (through a symlink),
    # __file__ absolute (a program that changes directory still finds its
    # files), __builtins__ the module, sys.argv[0] as typed, and __main__
    # still the program's module for threads that outlive its code.
    real = tmp_path / "real"
    real.mkdir()
    (real / "tool.py").write_text(_WHERE)
    (real / "helper_next_to_the_real_file.py").write_text("")
    (tmp_path / "links").mkdir()
    os.symlink(real / "tool.py", tmp_path / "links" / "tool.py")
    for script in ("real/tool.py", "links/tool.py"):
        r = tc("run", script, cwd=tmp_path)
        plain = _plain([script], tmp_path)
        assert (r.returncode, r.stdout, r.stderr) == (plain.returncode, plain.stdout,
                                                      plain.stderr), (script, r.stderr)
        assert plain.stdout.split("\n")[:3] == ["True module " + script, str(real),
                                                "True True"], plain.stdout


@pytest.mark.parametrize("kind", ["directory", "zip"])
def test_run_a_directory_or_zip_runs_its_main_as_python_does(tmp_path, kind):
    app = tmp_path / "app"
    app.mkdir()
    (app / "__main__.py").write_text("import sys, mod_in_app\n"
                                     "print(sys.argv, sys.path[0], __file__)\n")
    (app / "mod_in_app.py").write_text("")
    (tmp_path / "sibling_of_app.py").write_text("")
    target = "app"
    if kind == "zip":
        import zipfile
        with zipfile.ZipFile(tmp_path / "app.pyz", "w") as z:
            for f in app.iterdir():
                z.write(f, f.name)
        target = "app.pyz"
    r = tc("run", target, "x", cwd=tmp_path)
    plain = _plain([target, "x"], tmp_path)
    assert (r.returncode, r.stdout, r.stderr) == (plain.returncode, plain.stdout, plain.stderr)
    assert plain.stdout.startswith("['%s', 'x'] %s" % (target, tmp_path / target))
    # Its parent is not on the path: python does not put it there.
    (app / "__main__.py").write_text("import sibling_of_app\n")
    if kind == "zip":
        with zipfile.ZipFile(tmp_path / "app.pyz", "w") as z:
            z.write(app / "__main__.py", "__main__.py")
    r = tc("run", target, cwd=tmp_path)
    assert r.returncode == 1 and "No module named 'sibling_of_app'" in r.stderr, r.stderr


def test_run_a_directory_without_main_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    r = tc("run", "empty", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr == ("python -m tcalloc: can't find '__main__' module in %r\n"
                        % str(tmp_path / "empty")), r.stderr


def test_run_m_keeps_main_for_threads_that_outlive_the_module(tmp_path):
    (tmp_path / "late_mod.py").write_text(_WHERE.replace("import helper_next_to_the_real_file\n",
                                                         ""))
    r = tc("run", "-m", "late_mod", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[2] == "True True", r.stdout


def test_run_m_of_a_missing_module_is_one_line(tmp_path):
    r = tc("run", "-m", "no_such_module_here", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr == "python -m tcalloc: No module named no_such_module_here\n", r.stderr


def test_run_dash_reads_the_program_from_stdin(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tcalloc", "run", "-", "a", "--b"], cwd=tmp_path,
                       env=BASE_ENV, input="import sys, tcalloc\n"
                       "print(sys.argv, __name__, __file__, tcalloc.installed())\n",
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "['-', 'a', '--b'] __main__ <stdin> True"
    # Source bytes, as python reads them: a coding cookie is honoured.
    src = b"# -*- coding: latin-1 -*-\nprint(len('\xe9'))\n"
    r = subprocess.run([sys.executable, "-m", "tcalloc", "run", "-"], cwd=tmp_path,
                       env=BASE_ENV, input=src, capture_output=True, timeout=120)
    assert (r.returncode, r.stdout) == (0, b"1\n"), r.stderr


def test_run_heap_profile_that_cannot_be_written_fails_before_the_program(tmp_path):
    r = tc("run", "--heap-profile", str(tmp_path / "no" / "such" / "h.pb.gz"), "-c",
           "print('ran')", cwd=tmp_path)
    assert r.returncode == 2 and "ran" not in r.stdout, (r.stdout, r.stderr)
    assert "--heap-profile: cannot write in" in r.stderr, r.stderr
    (tmp_path / "adir").mkdir()
    for value, says in (("adir", "is a directory"), ("", "give a file name")):
        r = tc("run", "--heap-profile=" + value, "-c", "print('ran')", cwd=tmp_path)
        assert r.returncode == 2 and "ran" not in r.stdout, (value, r.stdout, r.stderr)
        assert says in r.stderr, r.stderr


def test_run_options_take_no_option_for_a_value_and_no_abbreviation(tmp_path):
    # `--heap-profile --stats prog.py` used to write a profile named
    # "--stats"; `--heap x prog.py` was read as a program named "--heap".
    (tmp_path / "p.py").write_text("print('ran')\n")
    for args in (["--heap-profile", "--stats", "p.py"], ["--heap", "h.txt", "p.py"],
                 ["--dom", "raw", "p.py"]):
        r = tc("run", *args, cwd=tmp_path)
        assert r.returncode == 2 and "ran" not in r.stdout, (args, r.stdout, r.stderr)
        assert "usage:" in r.stderr, r.stderr
    assert sorted(os.listdir(tmp_path)) == ["p.py"]


def test_run_reports_on_the_interpreters_stderr_whatever_the_program_did_with_its_own(tmp_path):
    for code in ("import sys, io; sys.stderr = io.StringIO()",
                 "import sys; sys.stderr = open(%r, 'w'); sys.stderr.close()"
                 % str(tmp_path / "err.log")):
        r = tc("run", "--stats", "-c", code, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "tcalloc: mallocs=" in r.stderr, r.stderr


def test_run_dash_without_stdin_says_so(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tcalloc", "run", "-"], cwd=tmp_path,
                       env=BASE_ENV, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr          # an empty program, as python runs it
    r = subprocess.run([sys.executable, "-c",
                        "import os, subprocess, sys; os.close(0); "
                        "sys.exit(subprocess.run([sys.executable, '-m', 'tcalloc', 'run', '-'],"
                        " stdin=None).returncode)"],
                       cwd=tmp_path, env=BASE_ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no standard input" in r.stderr, (r.returncode, r.stderr)


def test_run_heap_profile_goes_where_it_was_named_and_keeps_the_exit_status(tmp_path):
    # A relative path names a file in the directory run started in, whatever
    # directory the program ends in; the program's exit status stays its
    # own even when the profile cannot be written at the end.
    (tmp_path / "elsewhere").mkdir()
    r = tc("run", "--heap-profile", "h.pb.gz", "-c",
           "import os, sys; os.chdir('elsewhere'); sys.exit(3)", cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    assert (tmp_path / "h.pb.gz").exists() and not (tmp_path / "elsewhere" / "h.pb.gz").exists()
    out = tmp_path / "out"
    out.mkdir()
    r = tc("run", "--heap-profile", str(out / "h.pb.gz"), "-c",
           "import shutil, sys; shutil.rmtree(%r); sys.exit(3)" % str(out), cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    assert "could not write the report" in r.stderr, r.stderr
    out.mkdir()                       # a program that succeeds: the lost report is a failure
    r = tc("run", "--heap-profile", str(out / "h.pb.gz"), "-c",
           "import shutil; shutil.rmtree(%r)" % str(out), cwd=tmp_path)
    assert r.returncode == 1 and "could not write the report" in r.stderr, (r.returncode, r.stderr)


def test_the_tcalloc_script_runs_a_module_from_the_current_directory(tmp_path):
    # Under the installed `tcalloc` script, sys.path[0] is the script's bin
    # directory, not the current one: `run -m` must find modules where
    # `python -m` would.
    script = os.path.join(os.path.dirname(sys.executable), "tcalloc")
    if not os.path.exists(script):
        pytest.skip("no tcalloc console script next to %s" % sys.executable)
    (tmp_path / "mymod_for_run.py").write_text("import sys; print('mod ran', sys.argv[1:])\n")
    r = subprocess.run([script, "run", "-m", "mymod_for_run", "x"], cwd=tmp_path,
                       env=dict(BASE_ENV), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "mod ran ['x']"


def test_program_options_are_the_programs(tmp_path):
    # Options end at the program: --stats after the script belongs to it.
    script = tmp_path / "p.py"
    script.write_text("import sys; print(sys.argv[1:])\n")
    r = tc("run", str(script), "--stats", "-m", "x", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "['--stats', '-m', 'x']"
    assert "tcalloc: mallocs=" not in r.stderr
    r = tc("run", "--", str(script), "-c", cwd=tmp_path)
    assert r.stdout.strip() == "['-c']"


def test_run_stats_while_the_programs_globals_live_with_peaks(tmp_path):
    # 200k distinct strings stay referenced by the program's globals: the
    # figures must count them, so they are taken before teardown.
    script = tmp_path / "p.py"
    script.write_text("keep = [str(i) * 3 for i in range(200000)]\n")
    r = tc("run", "--stats", str(script), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = re.search(r"tcalloc: mallocs=(\d+) frees=(\d+) bytes_in_use=(\d+) heap_bytes=(\d+) "
                  r"peak_heap_bytes=(\d+) peak_allocated_bytes=(\d+)", r.stderr)
    assert m, r.stderr
    mallocs, frees, in_use, heap, peak_heap, peak_alloc = map(int, m.groups())
    assert in_use >= 200000 * 40            # each str object is at least 40 bytes
    assert peak_heap >= heap - int(re.search(r"(\d+) \(.*\) Bytes released to OS",
                                             r.stderr).group(1))
    assert peak_alloc >= in_use
    assert "Peak committed heap" in r.stderr


def test_run_stats_printed_on_sys_exit_too(tmp_path):
    r = tc("run", "--stats", "-c", "import sys; sys.exit(3)", cwd=tmp_path)
    assert r.returncode == 3
    assert "tcalloc: mallocs=" in r.stderr


def test_stress_subcommand_is_the_lab(tmp_path):
    r = tc("stress", "--workloads", "larson", "--backends", "tcalloc", "--threads", "2",
           "--ops", "2000", "--json", str(tmp_path / "r.json"), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    runs = json.loads((tmp_path / "r.json").read_text())["runs"]
    assert runs and all(x["corrupt"] == 0 and x["lost"] == 0 for x in runs)


def test_stats_shows_this_environments_settings(tmp_path):
    r = tc("stats", "--json", "--classes", cwd=tmp_path,
           env={"TCALLOC_MEMORY_LIMIT": "3G", "TCALLOC_RELEASE_RATE": "8MiB"})
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["memory_limit"] == {"bytes": 3 << 30, "hard": False}
    assert info["release_rate"] == 8 << 20
    assert info["settings"] == {"TCALLOC_MEMORY_LIMIT": 3 << 30, "TCALLOC_RELEASE_RATE": 8 << 20}
    assert len(info["classes"]) == info["size_classes"] == len(tcalloc.size_class_table())
    r = tc("stats", cwd=tmp_path, env={"TCALLOC_MEMORY_LIMIT": "3G"})
    assert "memory limit: 3221225472 (3.0 GiB), soft" in r.stdout


def test_hard_limit_too_small_for_run_says_so(tmp_path):
    script = tmp_path / "p.py"
    script.write_text("print('ran')\n")
    r = tc("run", str(script), cwd=tmp_path,
           env={"TCALLOC_MEMORY_LIMIT": "2", "TCALLOC_MEMORY_LIMIT_HARD": "1"})
    assert r.returncode == 2
    assert "ran" not in r.stdout
    assert "hard memory limit" in r.stderr and "TCALLOC_MEMORY_LIMIT=2 " in r.stderr
    r = tc("run", str(script), cwd=tmp_path,
           env={"TCALLOC_MEMORY_LIMIT": "256M", "TCALLOC_MEMORY_LIMIT_HARD": "1"})
    assert r.returncode == 0 and r.stdout.strip() == "ran", r.stderr


def test_console_script_is_installed():
    import shutil
    exe = shutil.which("tcalloc") or os.path.join(os.path.dirname(sys.executable), "tcalloc")
    if not os.path.exists(exe):
        pytest.skip("no tcalloc console script next to this interpreter (not pip-installed)")
    r = subprocess.run([exe, "--version"], capture_output=True, text=True, env=BASE_ENV)
    assert r.returncode == 0 and r.stdout.startswith("tcalloc ")


# ---- settings -------------------------------------------------------------------

@pytest.mark.parametrize("text,value", [
    ("0", 0), ("4096", 4096), ("4096b", 4096), ("512k", 512 << 10), ("512K", 512 << 10),
    ("64MiB", 64 << 20), ("64MB", 64 << 20), ("64 m", 64 << 20), ("2G", 2 << 30),
    ("1.5GB", 3 << 29), (".5k", 512), ("1T", 1 << 40), ("0.0k", 0), ("0.3k", 307)])
def test_sizes_take_the_usual_units(text, value):
    assert _config.parse_size(text, "X") == value


@pytest.mark.parametrize("text", ["-1", "", "2 giga", "1.5", "0x10", "1e9", "10ib", "G", "9e99",
                                  "99999999999T", "0.0001k", ".0009K"])
def test_bad_sizes_are_refused_naming_the_value(text):
    with pytest.raises(ValueError, match=re.escape("X=%r" % text)):
        _config.parse_size(text, "X")


DEFAULT_RATE = 8 << 20      # the documented default release rate (README, Settings)


@pytest.mark.parametrize("env,expect", [
    ({"TCALLOC_MEMORY_LIMIT": "2G"}, "(2147483648, False) %d False" % DEFAULT_RATE),
    ({"TCALLOC_MEMORY_LIMIT": "2G", "TCALLOC_MEMORY_LIMIT_HARD": "yes"}, "(2147483648, True) %d False" % DEFAULT_RATE),
    ({"TCALLOC_MEMORY_LIMIT": "2G", "TCALLOC_MEMORY_LIMIT_HARD": "off"}, "(2147483648, False) %d False" % DEFAULT_RATE),
    ({"TCALLOC_RELEASE_RATE": "64MB"}, "None 67108864 False"),
    ({"TCALLOC_RELEASE_RATE": "0"}, "None 0 False"),          # an explicit 0 is a setting: off
    ({"TCALLOC_DEBUG": "True"}, "None %d True" % DEFAULT_RATE),
    ({"TCALLOC_DEBUG": "0", "TCALLOC_MEMORY_LIMIT": ""}, "None %d False" % DEFAULT_RATE),
])
def test_environment_settings_are_read_as_written(env, expect, tmp_path):
    r = py("import tcalloc; print(tcalloc.get_memory_limit(), tcalloc.get_release_rate(), "
           "tcalloc.debug_enabled())", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == expect


def test_thread_cache_budget_from_the_environment(tmp_path):
    r = py("import tcalloc; print(tcalloc.get_max_total_thread_cache_bytes())",
           env={"TCALLOC_MAX_TOTAL_THREAD_CACHE_BYTES": "8M"}, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == str(8 << 20), r.stderr


@pytest.mark.parametrize("name,value", [
    ("TCALLOC_MEMORY_LIMIT", "-1"), ("TCALLOC_MEMORY_LIMIT", "2 giga"),
    ("TCALLOC_RELEASE_RATE", "fast"), ("TCALLOC_MEMORY_LIMIT_HARD", "maybe"),
    ("TCALLOC_DEBUG", "2"), ("TCALLOC_MAX_TOTAL_THREAD_CACHE_BYTES", "lots"),
    ("TCALLOC_MAX_TOTAL_THREAD_CACHE_BYTES", "5000000T")])     # above the engine's 2**62-1
def test_bad_environment_value_stops_import_naming_variable_and_value(name, value, tmp_path):
    env = {name: value}
    if name == "TCALLOC_MEMORY_LIMIT_HARD":
        env["TCALLOC_MEMORY_LIMIT"] = "1G"
    r = py("import tcalloc", env=env, cwd=tmp_path)
    assert r.returncode == 1
    assert "ValueError: %s=%r" % (name, value) in r.stderr, r.stderr
    # run says the same before any program code runs
    r = tc("run", "-c", "print('ran')", env=env, cwd=tmp_path)
    assert r.returncode != 0 and "ran" not in r.stdout
    assert "%s=%r" % (name, value) in r.stderr


def test_hard_without_a_limit_is_refused(tmp_path):
    r = py("import tcalloc", env={"TCALLOC_MEMORY_LIMIT_HARD": "1"}, cwd=tmp_path)
    assert r.returncode == 1 and "without TCALLOC_MEMORY_LIMIT" in r.stderr


def test_unknown_variable_warns(tmp_path):
    r = py("import tcalloc", env={"TCALLOC_MEMROY_LIMIT": "1G"}, cwd=tmp_path)
    assert r.returncode == 0
    assert "unknown environment variable TCALLOC_MEMROY_LIMIT" in r.stderr


@pytest.mark.parametrize("hard", ["yes", 1, None])
def test_set_memory_limit_hard_must_be_bool(hard):
    with pytest.raises(TypeError, match="hard must be a bool"):
        tcalloc.set_memory_limit(1 << 40, hard=hard)
    assert tcalloc.get_memory_limit() is None
