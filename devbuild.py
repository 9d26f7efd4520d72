"""Build the test and benchmark native modules in place (never into the wheel).

    python devbuild.py            # tests/native/*.pyx and bench/_bench.pyx
    python devbuild.py tests      # only the test modules

The test suite calls this from tests/conftest.py before any test runs, and
the engine benchmark calls it before it starts, so nobody has to remember.
The modules use the same compiler directives and macros as the product
(setup.py's ``build_options``), include the engine's own parts
(``tcalloc/engine/*.pxi``) where they test components on private instances,
and the lab's harness (``stress/harness.pxi``, ``stress/tc_harness.h``).
Up-to-date modules are not rebuilt. A lock file keeps two concurrent runs
(pytest on two checkouts' terminals, or pytest and the benchmark) from
compiling the same module at once.
"""
import fcntl
import glob
import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))

TARGETS = {
    "tests": ("tests/native", "tests/native/*.pyx"),
    "bench": ("bench", "bench/*.pyx"),
}


def _stale(src, out_dir, name, deps):
    built = glob.glob(os.path.join(out_dir, name + ".*.so"))
    if not built:
        return True
    t = min(os.path.getmtime(b) for b in built)
    return any(os.path.getmtime(d) > t for d in [src, *deps])


def build(*targets, quiet=True):
    """Build the named targets (default: all); returns the built module paths."""
    sys.path.insert(0, ROOT)
    try:
        from setup import build_options, extension
    finally:
        sys.path.pop(0)
    from Cython.Build import cythonize
    from setuptools import Distribution
    from setuptools.command.build_ext import build_ext

    targets = targets or tuple(TARGETS)
    deps = (glob.glob(os.path.join(ROOT, "tcalloc", "engine", "*.pxi"))
            + glob.glob(os.path.join(ROOT, "tcalloc", "includes", "*.h"))
            + glob.glob(os.path.join(ROOT, "tcalloc", "*.pxd"))
            + glob.glob(os.path.join(ROOT, "stress", "*.pxi"))
            + glob.glob(os.path.join(ROOT, "stress", "*.h")))
    cwd = os.getcwd()
    os.chdir(ROOT)
    lock = open(os.path.join(ROOT, ".devbuild.lock"), "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        exts = []
        for t in targets:
            out_dir, pattern = TARGETS[t]
            for src in sorted(glob.glob(pattern)):
                name = os.path.splitext(os.path.basename(src))[0]
                if _stale(src, out_dir, name, deps):
                    exts.append((out_dir, extension(name, src, include_dirs=[out_dir])))
        for out_dir, ext in exts:
            # A bare Distribution: no pyproject.toml, no packages, just the build.
            cmd = build_ext(Distribution({"ext_modules": cythonize(
                [ext], compiler_directives=build_options()[0], quiet=quiet,
                include_path=[".", "stress", os.path.join("tcalloc", "engine")])}))
            cmd.build_lib = out_dir
            cmd.build_temp = os.path.join("build", "devbuild")
            cmd.ensure_finalized()
            cmd.run()
        return [ext.name for _, ext in exts]
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
        os.chdir(cwd)


if __name__ == "__main__":
    built = build(*sys.argv[1:], quiet=False)
    print("built:", ", ".join(built) if built else "nothing (up to date)")
