"""Command line of tcalloc.

    python -m tcalloc run [--domains raw,mem,obj] [--stats] [--heap-profile FILE] script.py [args...]
    python -m tcalloc run [options] -m module [args...]
    python -m tcalloc run [options] -c code [args...]
    python -m tcalloc run [options] - [args...]         (the program from stdin)
    python -m tcalloc stress [lab options]       (the stress lab, as python -m tcalloc.stress)
    python -m tcalloc stats [--json] [--classes]
    python -m tcalloc --version

``run`` installs the interpreter hook before the program's first line (as
``python -m cProfile`` does): sys.argv and sys.path[0] are what the program
would see if started directly, and the exit status is the program's, as
Python's own: 0, the SystemExit code, 1 after an uncaught exception.
``--stats`` prints tcalloc's figures to stderr as soon as the program's code
has finished, while its module globals are still alive, with the peaks.
Usage errors exit with 2, as Python's do. The same ``tcalloc`` console script
is installed.
"""
import os
import sys

# argparse, runpy and types load only where needed: `run` parses its usual
# options by hand, so the interpreter it hands to the program carries no
# modules the program did not import (argparse and gettext alone are
# ~300 KiB of RSS that a plain `python script.py` does not pay).

DOMAINS = ("raw", "mem", "obj")
# A hard limit must leave the interpreter this much above what tcalloc holds
# when run starts: below it the program dies before it can print why
# (CPython's "lost sys.stderr").
RUN_MIN_HEADROOM = 16 << 20


def _version():
    import tcalloc
    return "tcalloc %s (Python %s)" % (tcalloc.__version__, sys.version.split()[0])


def _domain_list(text):
    """The domains a --domains value names, or None if it is not a
    non-empty comma-separated subset of DOMAINS."""
    doms = tuple(d.strip() for d in text.split(",") if d.strip())
    if not doms or any(d not in DOMAINS for d in doms):
        return None
    return doms


def _domains(text):
    import argparse
    doms = _domain_list(text)
    if doms is None:
        raise argparse.ArgumentTypeError(
            "%r: a comma-separated subset of %s" % (text, ",".join(DOMAINS)))
    return doms


def _parser():
    """The top-level parser and run's (run is parsed on its own: options end
    at the program, see _split_run)."""
    import argparse
    p = argparse.ArgumentParser(
        prog="python -m tcalloc", allow_abbrev=False,
        description="tcalloc: a TCMalloc-style allocator for Python. Run a program on it, "
                    "stress-test it, or show its settings.")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # No abbreviations (--heap for --heap-profile): options end at the
    # program, and _split_run finds that end by the full names.
    r = sub.add_parser(
        "run", allow_abbrev=False,
        help="run a Python program with tcalloc as the interpreter's allocator",
        description="Run a script, a module (-m) or code (-c) with tcalloc under the "
                    "interpreter's allocator (PyMem_SetAllocator), its Python children too. "
                    "Options end at the program: everything after it is the program's.",
        usage="python -m tcalloc run [-h] [--domains D] [--stats] [--heap-profile FILE] "
              "(script | -m module | -c code | -) [args ...]")
    r.add_argument("--domains", type=_domains, default=DOMAINS, metavar="D",
                   help="allocator domains to put on tcalloc, a comma-separated subset of "
                        "raw,mem,obj (default: all three)")
    r.add_argument("--stats", action="store_true",
                   help="when the program's code has finished (its globals still alive), "
                        "print tcalloc's figures to stderr: a summary line "
                        "'tcalloc: mallocs=... peak_heap_bytes=...' and the stats table")
    r.add_argument("--heap-profile", metavar="FILE",
                   help="sample the heap (at TCALLOC_SAMPLE_RATE, default 2 MiB) and write its "
                        "profile to FILE when the program's code has finished, and the peak's "
                        "to FILE with '.peak' before its extension; the extension picks the "
                        "format: .svg flame graph, .txt table, .collapsed stacks, else pprof")
    target = r.add_mutually_exclusive_group(required=True)
    target.add_argument("-m", dest="module", metavar="module", help="run a library module as a script")
    target.add_argument("-c", dest="code", metavar="code", help="run code given as a string")
    target.add_argument("script", nargs="?", help="path of the script to run (-: read it from stdin)")
    r.add_argument("args", nargs="*", help="arguments for the program (sys.argv[1:])")

    sub.add_parser("stress", add_help=False, help="the stress and contention lab "
                                                  "(python -m tcalloc stress --help)")

    s = sub.add_parser(
        "stats", help="tcalloc's settings, build and size classes in this environment",
        description="Show what a program started in this environment would get: the "
                    "validated TCALLOC_* settings, the build's switches and the size classes. "
                    "A program's own figures: python -m tcalloc run --stats program.py")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--classes", action="store_true", help="list every size class")
    return p, r


def _split_run(argv):
    """run's own options, and the program's argv: options end at the script,
    or at -m/-c and their value, as with python itself."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--", "-m", "-c"):     # the next word is the program
            return argv[:i + 2], argv[i + 2:]
        if a.startswith(("-m", "-c")) and not a.startswith("--"):
            return argv[:i + 1], argv[i + 1:]           # -mmodule, as python accepts
        if a in ("--domains", "--heap-profile"):
            i += 2
            continue
        if not a.startswith("-") or a == "-":
            return argv[:i + 1], argv[i + 1:]
        i += 1
    return argv, []


class _RunArgs:
    domains = DOMAINS
    stats = False
    heap_profile = None
    module = code = script = None


def _parse_run_simply(own):
    """run's options as the argparse parser would read them, for the usual
    forms (--domains D, --stats, --heap-profile FILE, then a script, -m
    module or -c code); None for anything else (help, a bad option, a bad
    domain list), which the argparse parser then reports."""
    a = _RunArgs()
    i, n = 0, len(own)
    while i < n:
        w = own[i]
        if w == "--stats":
            a.stats = True
        elif w in ("--domains", "--heap-profile") or w.startswith(("--domains=", "--heap-profile=")):
            name, eq, val = w.partition("=")
            if not eq:
                if i + 1 >= n - 1:          # the value, then the program, must follow
                    return None
                i += 1
                val = own[i]
            if name == "--domains":
                a.domains = _domain_list(val)
                if a.domains is None:
                    return None
            elif not val or val.startswith("-"):
                return None                 # argparse says what is wrong
            else:
                a.heap_profile = val
        elif w in ("-m", "-c") and i == n - 2:
            setattr(a, "module" if w == "-m" else "code", own[i + 1])
            return a
        elif len(w) > 2 and w.startswith(("-m", "-c")) and not w.startswith("--") and i == n - 1:
            setattr(a, "module" if w[1] == "m" else "code", w[2:])
            return a
        elif w == "--" and i == n - 2:
            a.script = own[i + 1]
            return a
        elif not w.startswith("-") and i == n - 1:
            a.script = w
            return a
        else:
            return None
        i += 1
    return None


def summary(st):
    """The one-line summary run --stats prints first (tests and users grep it)."""
    mallocs = st["large_mallocs"] + sum(c["mallocs"] for c in st["size_classes"])
    frees = st["large_frees"] + sum(c["frees"] for c in st["size_classes"])
    return ("tcalloc: mallocs=%d frees=%d bytes_in_use=%d heap_bytes=%d "
            "peak_heap_bytes=%d peak_allocated_bytes=%d"
            % (mallocs, frees, st["bytes_in_use"], st["heap_bytes"],
               st["peak_heap_bytes"], st["peak_allocated_bytes"]))


def _print_stats():
    import tcalloc
    out = _report_stream()
    out.write(summary(tcalloc.stats()) + "\n" + tcalloc.stats_text() + "\n")
    out.flush()


def _fmt(n):
    from tcalloc.buffer import _human
    return "%d (%s)" % (n, _human(n))


def _check_limit():
    """None, or why a hard limit leaves too little for the interpreter."""
    import tcalloc
    lim = tcalloc.get_memory_limit()
    if lim is None or not lim[1]:
        return None
    held = tcalloc.stats()["heap_bytes"]
    if lim[0] >= held + RUN_MIN_HEADROOM:
        return None
    return ("the hard memory limit (TCALLOC_MEMORY_LIMIT=%s, TCALLOC_MEMORY_LIMIT_HARD) is too "
            "small to run a program with the interpreter on tcalloc: tcalloc holds %s already "
            "and run needs at least %s more; raise the limit or make it soft"
            % (_fmt(lim[0]), _fmt(held), _fmt(RUN_MIN_HEADROOM)))


def peak_path(path):
    """Where run --heap-profile FILE writes the peak's profile: FILE with
    '.peak' before its extension (heap.pb.gz -> heap.peak.pb.gz)."""
    head, name = os.path.split(path)
    lead = len(name) - len(name.lstrip("."))      # a leading dot is no extension (.txt)
    stem, dot, ext = name[lead:].partition(".")
    return os.path.join(head, name[:lead] + stem + ".peak" + dot + ext)


def _write_heap_profiles(path):
    import tcalloc
    tcalloc.heap_profile().write(path)
    tcalloc.peak_heap_profile().write(peak_path(path))
    _report_stream().write("tcalloc: heap profiles written to %s and %s\n"
                           % (path, peak_path(path)))


def _register_source(code, source, name):
    """Keep the source of -c code for tracebacks, as python does from 3.13
    (the call it makes itself, to a private linecache function: 3.13 keys
    the source by file name, later versions by each code object)."""
    import linecache
    register = getattr(linecache, "_register_code", None)
    if register is not None:
        register(code if hasattr(linecache, "_interactive_cache") else name, source, name)


def _program_frames(tb):
    """tb without its first frames, those of this module and of runpy, which
    started the program: a traceback then reads as under python."""
    import runpy
    ours = (_program_frames.__code__.co_filename, runpy.run_path.__code__.co_filename)
    while tb is not None and tb.tb_frame.f_code.co_filename in ours:
        tb = tb.tb_next
    return tb


def _report_program_frames(exc, tb):
    """Make the interpreter's report of exc, uncaught, read as under python:
    the hook it calls shows the program's frames only (tb), through the
    sys.excepthook in place now (the program's own, if it set one), and a
    hook that fails is reported as python reports it."""
    hook = sys.excepthook

    def report(typ, value, value_tb):
        sys.excepthook = hook
        if value is exc:
            value_tb = tb
            value = value.with_traceback(tb)   # the default hook prints __traceback__
        try:
            hook(typ, value, value_tb)
        except Exception as err:
            sys.stderr.write("Error in sys.excepthook:\n")
            err_tb = err.__traceback__.tb_next      # from the hook's frame on
            sys.__excepthook__(type(err), err.with_traceback(err_tb), err_tb)
            sys.stderr.write("\nOriginal exception was:\n")
            sys.__excepthook__(typ, value, value_tb)
    sys.excepthook = report


def _run(argv):
    own, prog_args = _split_run(argv)
    a = _parse_run_simply(own)
    if a is None:
        a = _parser()[1].parse_args(own)    # exits 2 with run's usage on a bad option
    if a.script is not None and a.script != "-" and not os.path.exists(a.script):
        sys.stderr.write("python -m tcalloc: can't open file %r: [Errno 2] No such file or "
                         "directory\n" % a.script)
        return 2

    if a.heap_profile is not None:
        # Resolved now: the program may change directory. Checked now: a
        # profile that cannot be written should not cost a whole run first.
        if not a.heap_profile:
            sys.stderr.write("python -m tcalloc: --heap-profile: give a file name\n")
            return 2
        a.heap_profile = os.path.abspath(a.heap_profile)
        where = os.path.dirname(a.heap_profile)
        if not os.path.isdir(where) or not os.access(where, os.W_OK):
            sys.stderr.write("python -m tcalloc: --heap-profile: cannot write in %r (no such "
                             "directory, or not writable)\n" % where)
            return 2
        for p in (a.heap_profile, peak_path(a.heap_profile)):
            if os.path.isdir(p):
                sys.stderr.write("python -m tcalloc: --heap-profile: %r is a directory\n" % p)
                return 2

    import tcalloc
    why = _check_limit()
    if why:
        sys.stderr.write("python -m tcalloc: %s\n" % why)
        return 2
    if a.heap_profile and not tcalloc.get_sample_rate():
        from tcalloc.heapprof import DEFAULT_SAMPLE_RATE
        tcalloc.set_sample_rate(DEFAULT_SAMPLE_RATE)
    tcalloc.install(a.domains)
    # Python children of the program (python -m test -jN workers, subprocess,
    # multiprocessing spawn) start on tcalloc too.
    from tcalloc._site import propagate
    propagate(a.domains)
    kept = None
    failed = False
    # sys.path[0] is what the interpreter put there for this start (the
    # current directory under `python -m tcalloc`, the bin directory under
    # the `tcalloc` script): it becomes what it would be for the program.
    # With -P (safe_path) or -I nothing was put there, and nothing is (-I
    # implies safe_path from 3.11; before, only isolated says so).
    first = not (getattr(sys.flags, "safe_path", False) or sys.flags.isolated)
    try:
        if a.module is not None:
            # As `python -m`: the module runs as __main__, sys.argv[0] is its file.
            sys.argv = [a.module] + prog_args
            if first:
                sys.path[0] = os.getcwd()
            kept = _run_module(a.module)
        elif a.code is not None or a.script == "-":
            # -c code, or the program read from stdin (`run -`), as python does
            if a.code is not None:
                source, sys.argv, name = a.code, ["-c"] + prog_args, "<string>"
            else:
                if sys.stdin is None:
                    sys.stderr.write("python -m tcalloc: run -: no standard input to read "
                                     "the program from\n")
                    return 2
                # bytes: compile() reads a coding cookie, as python does
                source, sys.argv, name = sys.stdin.buffer.read(), ["-"] + prog_args, "<stdin>"
            if first:
                sys.path[0] = ""
            main = _new_main()
            if a.code is None:
                main.__file__ = name
            kept = main.__dict__
            code = compile(source, name, "exec")
            if a.code is not None:
                _register_source(code, source, name)
            exec(code, kept)
        else:
            sys.argv = [a.script] + prog_args
            kept = _run_script(a.script, first)
    except SystemExit:
        raise
    except BaseException as e:
        tb = _program_frames(e.__traceback__)
        if tb is None and isinstance(e, ImportError) and a.code is None:
            # runpy found no module to run (python: "No module named x"), or
            # a directory or zip file has no __main__ module
            sys.stderr.write("python -m tcalloc: %s\n" % e)
            failed = True
        else:
            # Python reports it (exit 1; after Ctrl-C, death by SIGINT once
            # the program's atexit handlers ran), with the program's frames.
            _report_program_frames(e, tb)
            raise
        del e, tb
    finally:
        # The program's globals (kept) are still alive here: the figures are
        # the program's at its end, not after teardown. A failure to report
        # them is said, and does not replace the program's own exit.
        try:
            if a.stats:
                _print_stats()
            if a.heap_profile:
                _write_heap_profiles(a.heap_profile)
        except (OSError, ValueError) as e:
            _report_stream().write("python -m tcalloc: could not write the report: %s\n" % e)
            failed = True
        del kept
    return 1 if failed else 0


def _new_main():
    """A fresh module for the program, put in sys.modules["__main__"] for
    good, as python runs a program in __main__: threads and atexit handlers
    still running after the program's code see it (pickle looks classes up
    there, multiprocessing's spawn finds the program's file there)."""
    import builtins
    main = type(sys)("__main__")
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    return main


# -m and a directory or zip file go through the helpers runpy has for
# python's own -m (its public calls run the code in a temporary module and
# put the old __main__ back when it returns).

def _run_module(name):
    """Run module `name` as `python -m name` does, in a fresh __main__; its
    globals. ImportError if there is no such module."""
    import runpy
    mod_name, spec, code = runpy._get_module_details(name)
    sys.argv[0] = spec.origin
    return runpy._run_code(code, _new_main().__dict__, None, "__main__", spec)


def _run_script(path, first):
    """Run the script, directory or zip file at `path` as `python path` does;
    its globals. sys.argv is set already."""
    full = os.path.abspath(path)
    if _has_importer(full):
        # A directory or zip file runs its __main__ module, found on the path
        # it is put first on (before the script's directory would be).
        if first:
            sys.path[0] = full
        else:
            sys.path.insert(0, full)
        import runpy
        mod_name, spec, code = runpy._get_main_module_details()
        return runpy._run_code(code, _new_main().__dict__, None, "__main__", spec)
    # A file: python puts its real directory first (symlinks resolved), and
    # gives the program its absolute path as __file__ (from 3.9).
    if first:
        sys.path[0] = os.path.dirname(os.path.realpath(full))
    import importlib.machinery
    import importlib.util
    with open(full, "rb") as f:
        data = f.read()
    main = _new_main()
    main.__file__ = full
    main.__cached__ = None
    if data[:4] == importlib.util.MAGIC_NUMBER:
        import marshal
        main.__loader__ = importlib.machinery.SourcelessFileLoader("__main__", full)
        code = marshal.loads(data[16:])
    else:
        main.__loader__ = importlib.machinery.SourceFileLoader("__main__", full)
        code = compile(data, full, "exec")
    exec(code, main.__dict__)
    return main.__dict__


def _has_importer(path):
    """Can path be an entry of sys.path (a directory, a zip file)? python
    asks sys.path_hooks, as here, and then runs the __main__ module found
    there instead of the file."""
    for hook in sys.path_hooks:
        try:
            hook(path)
            return True
        except ImportError:
            pass
    return False


def _report_stream():
    """Where run's own reports go: the interpreter's stderr, not a sys.stderr
    the program replaced (and may have closed)."""
    return sys.__stderr__ if sys.__stderr__ is not None else sys.stderr




def _stats(a):
    import json
    import tcalloc
    from tcalloc import _config
    from tcalloc.buffer import _human
    table = tcalloc.size_class_table()
    lim = tcalloc.get_memory_limit()
    info = {
        "version": tcalloc.__version__,
        "settings": _config.applied,
        "memory_limit": None if lim is None else {"bytes": lim[0], "hard": lim[1]},
        "release_rate": tcalloc.get_release_rate(),
        "max_total_thread_cache_bytes": tcalloc.get_max_total_thread_cache_bytes(),
        "debug": tcalloc.debug_enabled(),
        "size_classes": len(table),
    }
    if a.classes:
        info["classes"] = [dict(zip(("class", "size", "pages", "batch", "objects_per_span"), row))
                           for row in table]
    if a.json:
        print(json.dumps(info, indent=2))
        return 0
    print(_version())
    print("settings from the environment: %s" % (", ".join(
        "%s=%s" % kv for kv in sorted(info["settings"].items())) or "none"))
    print("memory limit: %s" % ("none" if lim is None else "%s, %s" % (
        _fmt(lim[0]), "hard" if lim[1] else "soft")))
    print("release to the OS by itself: %s" % (
        "off (release_free_memory() and a memory limit only)" if not info["release_rate"]
        else "on free past 64 MiB free, and in the background at %s/s"
        % _human(info["release_rate"])))
    print("thread caches, overall budget: %s" % _fmt(info["max_total_thread_cache_bytes"]))
    print("debug mode: %s" % ("on" if info["debug"] else "off"))
    print("size classes: %d, from %d B to %s" % (
        info["size_classes"], table[0][1], _human(table[-1][1])))
    if a.classes:
        print("%5s %8s %5s %5s %8s" % ("class", "size", "pages", "batch", "objects"))
        for c in info["classes"]:
            print("%5d %8d %5d %5d %8d" % (c["class"], c["size"], c["pages"], c["batch"],
                                           c["objects_per_span"]))
    print("a program's figures: python -m tcalloc run --stats program.py")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "stress":
        from tcalloc.stress.cli import main as stress_main
        return stress_main(argv[1:], prog="python -m tcalloc stress")
    if argv and argv[0] == "run":
        return _run(argv[1:])
    a = _parser()[0].parse_args(argv)      # exits 2 (usage) or 0 (--help, --version)
    return _stats(a)


if __name__ == "__main__":
    sys.exit(main())
