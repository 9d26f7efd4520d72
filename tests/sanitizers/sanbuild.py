"""Sanitizer builds of the engine and the native test modules (never the wheel).

    python tests/sanitizers/sanbuild.py tsan|asan     # prints the build directory

A build directory holds an importable tree whose native modules are
compiled with ``-fsanitize=thread`` or ``-fsanitize=address``: ``tcalloc``
(the package's Python files, ``_engine`` and ``buffer``), ``tcalloc.stress``
(the lab's Python files and ``_workloads``), and the test modules
``tct_native`` and ``tct_components``. The interpreter stays uninstrumented:
a child ``python`` runs with the sanitizer runtime in ``LD_PRELOAD`` and
this directory first on ``PYTHONPATH`` (see ``child_env``).

Same Cython directives and macros as the product (setup.py's
``build_options``), plus ``TCALLOC_ASSERTS=1`` (the engine's internal
invariants checked); the optimisation flags are the sanitizers' usual ones
(``-O1`` and debug information: line numbers in reports, inlined frames named). Builds live in
``build/sanitizers/<kind>-<hash>``, the hash covering every source the
modules are made of, the flags, and the Cython, compiler and Python versions:
an unchanged tree is never rebuilt, a changed one gets a new directory.
"""
import concurrent.futures
import fcntl
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.path.join(ROOT, "build", "sanitizers")
GCC_LIB = "/usr/lib/gcc/x86_64-linux-gnu/12"
CC = os.environ.get("TCALLOC_SAN_CC", "gcc")

# -g for TSan: its suppressions match inlined functions by name. ASan's
# reports need only line tables (-g1 compiles a quarter faster).
SANITIZERS = {
    "tsan": {"flags": ["-fsanitize=thread", "-g"], "runtime": "libtsan.so"},
    "asan": {"flags": ["-fsanitize=address", "-fno-omit-frame-pointer", "-g1"], "runtime": "libasan.so"},
}
COMMON_FLAGS = ["-O1", "-fPIC", "-Wno-unused-function", "-Wno-unused-result"]

# module name -> (source, place of the .so under the build directory)
MODULES = {
    "tcalloc._engine": ("tcalloc/_engine.pyx", "tcalloc"),
    "tcalloc.buffer": ("tcalloc/buffer.pyx", "tcalloc"),
    "tcalloc.stress._workloads": ("stress/_workloads.pyx", "tcalloc/stress"),
    "tct_native": ("tests/native/tct_native.pyx", "."),
    "tct_components": ("tests/native/tct_components.pyx", "."),
}
INCLUDES = ["tcalloc/includes", "stress", "tests/native"]


def runtime(kind):
    """The sanitizer runtime to LD_PRELOAD, or None when it is not installed."""
    path = os.path.join(GCC_LIB, SANITIZERS[kind]["runtime"])
    return os.path.realpath(path) if os.path.exists(path) else None


def _sources():
    pats = ["tcalloc/*.py", "tcalloc/*.pyx", "tcalloc/*.pxd", "tcalloc/_site/*.py",
            "tcalloc/engine/*.pxi", "tcalloc/includes/*.h", "stress/*.py", "stress/*.pyx",
            "stress/*.pxi", "stress/*.h", "tests/native/*.pyx", "setup.py"]
    return sorted(p for pat in pats for p in glob.glob(os.path.join(ROOT, pat)))


def _tool_versions():
    import Cython
    cc = subprocess.run([CC, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return "cython %s | %s | python %s" % (Cython.__version__, cc, sys.version)


def _fingerprint(kind, options):
    """Hash of the sources, the build options and the tools; kind None: the C sources'."""
    h = hashlib.sha256()
    for p in _sources():
        h.update(os.path.relpath(p, ROOT).encode() + b"\0")
        with open(p, "rb") as f:
            h.update(f.read())
    flags = SANITIZERS[kind]["flags"] + COMMON_FLAGS if kind else []
    h.update(repr((flags, options, _tool_versions())).encode())
    return h.hexdigest()[:16]


def _options():
    sys.path.insert(0, ROOT)
    try:
        from setup import build_options
    finally:
        sys.path.pop(0)
    directives, macros, _ = build_options()
    # The engine's internal invariants (TC_ASSERT) are checked here too: the
    # sanitizer legs are the suite's debug builds.
    macros = [m for m in macros if m[0] != "TCALLOC_ASSERTS"] + [("TCALLOC_ASSERTS", "1")]
    return directives, macros


def _cythonize(directives, cdir):
    """C sources of every module into cdir (shared by both kinds: the C is
    the same, only the compiler flags differ)."""
    from Cython.Build import cythonize
    from setuptools import Extension
    exts = [Extension(name, [src]) for name, (src, _) in MODULES.items()]
    out = {}
    for ext in cythonize(exts, compiler_directives=directives, quiet=True, build_dir=cdir,
                         include_path=[".", "stress", os.path.join("tcalloc", "engine")],
                         nthreads=os.cpu_count() or 1):
        out[ext.name] = os.path.join(ROOT, ext.sources[0])
    return out


def _python_tree(dest):
    """The pure-Python parts of tcalloc and tcalloc.stress, as the wheel lays them out."""
    skip = shutil.ignore_patterns("*.so", "*.c", "__pycache__", "*.html")
    shutil.copytree(os.path.join(ROOT, "tcalloc"), os.path.join(dest, "tcalloc"), ignore=skip)
    shutil.copytree(os.path.join(ROOT, "stress"), os.path.join(dest, "tcalloc", "stress"), ignore=skip)


# Read once, here: _compile runs in a thread pool, and Python 3.11's
# sysconfig fills its variables on first use without a lock, so a second
# thread could read EXT_SUFFIX as None while the first was still filling.
PY_INCLUDE = sysconfig.get_paths()["include"]
EXT_SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")


def _compile(kind, macros, name, csrc, dest):
    inc = [PY_INCLUDE] + [os.path.join(ROOT, d) for d in INCLUDES]
    out = os.path.join(dest, MODULES[name][1], name.rsplit(".", 1)[-1] + EXT_SUFFIX)
    cmd = ([CC, "-shared"] + COMMON_FLAGS + SANITIZERS[kind]["flags"]
           + ["-D%s=%s" % m for m in macros] + ["-I" + d for d in inc]
           + [csrc, "-o", out, "-lpthread"])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("%s build of %s failed:\n%s\n%s" % (kind, name, " ".join(cmd), r.stderr[-4000:]))
    return out


def build(*kinds):
    """Build (or find up to date) the sanitizer trees; {kind: directory}."""
    kinds = kinds or tuple(SANITIZERS)
    directives, macros = _options()
    os.makedirs(CACHE, exist_ok=True)
    cwd = os.getcwd()
    os.chdir(ROOT)                       # Cython names the C files after relative paths
    lock = open(os.path.join(CACHE, ".lock"), "w")
    fcntl.flock(lock, fcntl.LOCK_EX)     # two pytest runs must not build one tree at once
    try:
        dirs = {k: os.path.join(CACHE, "%s-%s" % (k, _fingerprint(k, (directives, macros)))) for k in kinds}
        todo = [k for k in kinds if not os.path.exists(os.path.join(dirs[k], ".complete"))]
        if not todo:
            return dirs
        cdir = os.path.join(CACHE, "c-" + _fingerprint(None, directives))
        csrc = _cythonize(directives, cdir)
        for old in glob.glob(os.path.join(CACHE, "c-*")):
            if old != cdir:
                shutil.rmtree(old, ignore_errors=True)
        jobs = []
        with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            for k in todo:
                shutil.rmtree(dirs[k], ignore_errors=True)
                _python_tree(dirs[k])
                # The engine first: it is the longest compile.
                for name in MODULES:
                    jobs.append(pool.submit(_compile, k, macros, name, csrc[name], dirs[k]))
            for j in jobs:
                j.result()
        for k in todo:
            open(os.path.join(dirs[k], ".complete"), "w").close()
            # Trees of older sources are never used again.
            for old in glob.glob(os.path.join(CACHE, k + "-*")):
                if os.path.isdir(old) and old != dirs[k]:
                    shutil.rmtree(old, ignore_errors=True)
        return dirs
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
        os.chdir(cwd)


SUPPRESSIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tsan.supp")


def child_env(kind, tree, extra_options=""):
    """Environment for a child python on the instrumented tree."""
    env = dict(os.environ)
    env.pop("PYTHONMALLOC", None)
    env["LD_PRELOAD"] = runtime(kind)
    env["PYTHONPATH"] = tree
    env["PYTHONNOUSERSITE"] = "1"
    if kind == "tsan":
        env["TSAN_OPTIONS"] = " ".join(filter(None, [
            "halt_on_error=0", "exitcode=66", "report_signal_unsafe=0",
            # The test's own fork children start threads (tct_native.child_exercise).
            "die_after_fork=0",
            "suppressions=" + SUPPRESSIONS, "print_suppressions=0", extra_options]))
    else:
        env["ASAN_OPTIONS"] = " ".join(filter(None, [
            # The interpreter keeps its objects to the end by design.
            "detect_leaks=0", "halt_on_error=1", "exitcode=66", extra_options]))
    return env


if __name__ == "__main__":
    for kind, d in build(*sys.argv[1:]).items():
        print(kind, d)
