"""Build of tcalloc's extensions: the product, and nothing else.

The wheel holds three extensions: the engine (``tcalloc._engine``, one module
compiled from ``tcalloc/engine/*.pxi``, the interpreter hook included), the
buffer objects (``tcalloc.buffer``) and the NumPy handler
(``tcalloc._numpy_handler``); and the stress lab, whose source is the
top-level ``stress/`` directory, installed as ``tcalloc.stress`` with its
native workloads (``tcalloc.stress._workloads``). Test and benchmark modules
are built by ``devbuild.py`` in place, never into the wheel.

Compiler directives and macros are set once, in ``build_options()``, which
``devbuild.py`` uses too. Environment switches for debugging:

  TCALLOC_CYTHON_CHECKS=1  bounds/wraparound/None checks back on in Cython code
  TCALLOC_DEBUG_BUILD=1    compile with TCALLOC_DEBUG=1 (full heap checks)
  TCALLOC_LOCK_STATS=0     compile the lock counters out
  TCALLOC_FREE_KEY=0       compile out the double-free key check
  TCALLOC_ASSERTS=1        check the engine's internal invariants (TC_ASSERT)
  TCALLOC_BUILD_ONLY=a,b   build only these extensions (e.g. "_engine")
"""
import os

from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
INCLUDES = os.path.join("tcalloc", "includes")

# extension name -> source
PRODUCT = {
    "tcalloc._engine": "tcalloc/_engine.pyx",
    "tcalloc.buffer": "tcalloc/buffer.pyx",
    "tcalloc._numpy_handler": "tcalloc/_numpy_handler.pyx",
    "tcalloc._threadclock": "tcalloc/_threadclock.pyx",
    "tcalloc.stress._workloads": "stress/_workloads.pyx",
}


def build_options():
    """(compiler directives, macros, cflags) shared by every native module."""
    checks = os.environ.get("TCALLOC_CYTHON_CHECKS", "0") == "1"
    directives = {
        "language_level": 3,
        "boundscheck": checks,
        "wraparound": checks,
        "initializedcheck": checks,
        "nonecheck": checks,
        "cdivision": True,
        "embedsignature": True,
    }
    macros = [("TCALLOC_DEBUG", "1" if os.environ.get("TCALLOC_DEBUG_BUILD") == "1" else "0"),
              ("TCALLOC_LOCK_STATS", os.environ.get("TCALLOC_LOCK_STATS", "1")),
              ("TCALLOC_FREE_KEY", os.environ.get("TCALLOC_FREE_KEY", "1")),
              ("TCALLOC_ASSERTS", os.environ.get("TCALLOC_ASSERTS", "0"))]
    # -fno-inline-functions-called-once: keep slow paths (large free, cache
    # creation) out of the fast paths that call them once; inlined, they make
    # every small free save and restore six registers.
    # -fno-tree-slp-vectorize: GCC otherwise merges the free path's two
    # stores into the block (link and key) through an SSE register, four
    # instructions for two.
    # -g0: the interpreter's CFLAGS usually carry -g, which made the
    # installed modules 5.7 MB where their code is 1.1 MB; symbols stay (heap
    # profiles, perf and callgrind name functions from them).
    # TCALLOC_DEBUG_INFO=1 keeps the debug information, for gdb and line-level
    # profiles.
    cflags = ["-O3", "-fno-plt", "-fno-inline-functions-called-once", "-fno-tree-slp-vectorize",
              "-Wno-unused-function"]
    if os.environ.get("TCALLOC_DEBUG_INFO") != "1":
        cflags.append("-g0")
    return directives, macros, cflags


def extension(name, source, include_dirs=()):
    _, macros, cflags = build_options()
    return Extension(name, [source], include_dirs=[INCLUDES, "stress", *include_dirs],
                     define_macros=macros, extra_compile_args=cflags, libraries=["pthread"])


if __name__ == "__main__":
    from Cython.Build import cythonize

    only = {m for m in os.environ.get("TCALLOC_BUILD_ONLY", "").split(",") if m}
    exts = [extension(name, src) for name, src in PRODUCT.items()
            if not only or name.rsplit(".", 1)[1] in only]
    # Packages and package data: pyproject.toml.
    setup(
        ext_modules=cythonize(exts, compiler_directives=build_options()[0],
                              include_path=[".", "tcalloc", "stress"], nthreads=os.cpu_count() or 1),
        zip_safe=False,
    )
