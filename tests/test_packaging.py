"""What users install: an sdist that builds, a wheel that is the product and
nothing else, and the stress lab working from a plain (non-editable) install
in another directory."""
import os
import subprocess
import sys
import tarfile
import textwrap
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    pytest.importorskip("build", reason="the 'build' package (test extra) builds the dists")
    out = tmp_path_factory.mktemp("dist")
    # sdist first, then the wheel built from the unpacked sdist: proves the
    # sdist holds everything the build needs.
    r = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), ROOT],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    sdist = next(out.glob("tcalloc-*.tar.gz"))
    wheel = next(out.glob("tcalloc-*.whl"))
    return sdist, wheel


def test_wheel_holds_the_product_only(dists):
    _, wheel = dists
    names = zipfile.ZipFile(wheel).namelist()
    exts = sorted(n for n in names if n.endswith(".so"))
    mods = sorted(n.split(".")[0].replace("/", ".") for n in exts)
    assert mods == ["tcalloc._engine", "tcalloc._numpy_handler", "tcalloc._threadclock",
                    "tcalloc.buffer", "tcalloc.stress._workloads"], exts
    for n in names:
        base = os.path.basename(n)
        assert not base.startswith(("tct_", "_bench", "_test")), n
        assert not n.startswith(("tests/", "bench/")), n
        assert not n.endswith((".pyx", ".pxi", ".c")), n
    for needed in ["tcalloc/includes/tcalloc.h", "tcalloc/capi.pxd", "tcalloc/_engine.pxd",
                   "tcalloc/stress/__main__.py", "tcalloc/stress/peers.py"]:
        assert needed in names, needed
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    assert "License-Expression: MIT" in text, "PEP 639 license metadata"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "LICENSE in the wheel"
    # The deliberately broken allocator of the lab's tests stays in the tests.
    so = zipfile.ZipFile(wheel).read(next(n for n in exts if "_workloads" in n))
    assert b"broken_malloc" not in so


def test_sdist_holds_what_the_tests_and_build_need(dists):
    sdist, _ = dists
    names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
    for needed in ["LICENSE", "devbuild.py", "setup.py", "pyproject.toml", "MANIFEST.in",
                   "tcalloc/_engine.pyx", "tcalloc/engine/threadcache.pxi",
                   "stress/_workloads.pyx", "stress/tc_harness.h", "tests/conftest.py",
                   "tests/native/tct_native.pyx", "bench/_bench.pyx", "docs/architecture.md"]:
        assert needed in names, needed


def test_lab_runs_from_a_plain_install_elsewhere(dists, tmp_path):
    _, wheel = dists
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = str(venv / "bin" / "python")
    r = subprocess.run([py, "-m", "pip", "install", "-q", str(wheel)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    r = subprocess.run([py, "-m", "tcalloc.stress", "--workloads", "larson", "--backends",
                        "tcalloc", "--threads", "2", "--ops", "2000"], cwd=work, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "larson" in r.stdout and "tcalloc" in r.stdout
    # The same from a child process (--isolate, as every peer runs).
    r = subprocess.run([py, "-m", "tcalloc.stress", "--workloads", "larson", "--backends",
                        "tcalloc", "--threads", "2", "--ops", "2000", "--isolate"], cwd=work,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # A child's path must not hold the package's own directory, whose
    # numpy.py and profile.py would then shadow numpy and the standard
    # library's profile in the child; nor the site directory ahead of the
    # standard library (PYTHONPATH), where any backport installed there
    # would shadow the standard module.
    check = textwrap.dedent("""
        import os, subprocess, sys, tcalloc
        from tcalloc.stress.runner import child_env
        env = child_env(None)
        out = subprocess.run([sys.executable, "-c", "import profile; print(profile.__file__)"],
                             env=env, capture_output=True, text=True, check=True).stdout
        assert os.path.dirname(out.strip()) != os.path.dirname(tcalloc.__file__), out
        site_dir = os.path.dirname(os.path.dirname(tcalloc.__file__))
        assert site_dir not in env.get("PYTHONPATH", "").split(os.pathsep), env["PYTHONPATH"]
    """)
    r = subprocess.run([py, "-c", check], cwd=work, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


@pytest.mark.parametrize("source", ["tcalloc/_engine.pyx", "tcalloc/buffer.pyx",
                                    "tcalloc/_numpy_handler.pyx", "tcalloc/_threadclock.pyx",
                                    "stress/_workloads.pyx",
                                    "tests/native/tct_native.pyx", "tests/native/tct_components.pyx",
                                    "tests/native/tct_broken.pyx", "bench/_bench.pyx"])
def test_checked_build_translates(source, tmp_path):
    """The documented debug build (TCALLOC_CYTHON_CHECKS=1: bounds, wraparound
    and None checks on) must translate: a None check on `self` inside a nogil
    block is an error Cython reports only with the checks on."""
    code = textwrap.dedent(f"""
        import os, sys
        os.environ["TCALLOC_CYTHON_CHECKS"] = "1"
        sys.path.insert(0, {ROOT!r})
        os.chdir({ROOT!r})
        from setup import build_options, extension
        from Cython.Build import cythonize
        d = build_options()[0]
        assert d["boundscheck"] and d["nonecheck"]
        name = os.path.splitext(os.path.basename({source!r}))[0]
        cythonize([extension(name, {source!r}, include_dirs=["tests/native"])],
                  compiler_directives=d, include_path=[".", "stress", "tcalloc/engine", "tcalloc"],
                  quiet=True, build_dir={str(tmp_path)!r}, force=True)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]


def test_import_tcalloc_loads_no_heavy_standard_modules():
    # `python -m tcalloc run` imports tcalloc before the program starts, so
    # every module the import pulls in is start-up memory the program pays
    # (typing with re, enum and functools, and threading were 1.5 MiB on
    # top of a fresh interpreter's 8.7). -S: no site, so nothing else loads them
    # first; the package's own directory goes on the path by hand.
    import tcalloc
    where = os.path.dirname(os.path.dirname(os.path.abspath(tcalloc.__file__)))
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {where!r})
        before = set(sys.modules)
        import tcalloc
        assert tcalloc.stats()["heap_bytes"] >= 0
        print(" ".join(sorted(set(sys.modules) - before)))
    """)
    r = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                       timeout=60, env={k: v for k, v in os.environ.items()
                                        if not k.startswith(("TCALLOC_", "PYTHON"))})
    assert r.returncode == 0, r.stderr
    loaded = set(r.stdout.split())
    assert "tcalloc._engine" in loaded
    heavy = {"typing", "re", "enum", "functools", "collections", "threading", "warnings",
             "numbers", "tcalloc.buffer", "tcalloc.heapprof"}
    assert not loaded & heavy, sorted(loaded & heavy)
