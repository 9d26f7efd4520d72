"""Build of tcalloc's Cython extensions.

Every ``tcalloc/*.pyx`` is one extension module. Compiler directives are set
once, here. Environment switches for debugging:

  TCALLOC_CYTHON_CHECKS=1  bounds/wraparound/None checks back on in Cython code
  TCALLOC_DEBUG_BUILD=1    compile with TCALLOC_DEBUG=1 (full heap checks)
  TCALLOC_LOCK_STATS=0     compile the lock counters out
  TCALLOC_FREE_KEY=0       compile out the double-free key check (~1 ns per pair)
  TCALLOC_BUILD_ONLY=a,b   build only these modules (e.g. "_workloads")
"""
import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
INCLUDES = os.path.join("tcalloc", "includes")

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
          ("TCALLOC_FREE_KEY", os.environ.get("TCALLOC_FREE_KEY", "1"))]
# -fno-inline-functions-called-once: keep slow paths (large free, cache
# creation) out of the fast paths that call them once; inlined, they make
# every small free save and restore six registers.
cflags = ["-O3", "-fno-plt", "-fno-inline-functions-called-once",
          "-Wno-unused-function"]

only = {m for m in os.environ.get("TCALLOC_BUILD_ONLY", "").split(",") if m}
extensions = []
for path in sorted(glob.glob(os.path.join("tcalloc", "*.pyx"))):
    mod = os.path.splitext(os.path.basename(path))[0]
    if only and mod not in only:
        continue
    extensions.append(Extension(
        "tcalloc." + mod, [path],
        include_dirs=[INCLUDES],
        define_macros=macros,
        extra_compile_args=cflags,
        libraries=["pthread"],
    ))

setup(
    packages=["tcalloc"],
    package_data={"tcalloc": ["*.pxd", "*.pyx", "includes/*.h", "py.typed"]},
    ext_modules=cythonize(extensions, compiler_directives=directives,
                          include_path=["."], nthreads=os.cpu_count() or 1),
    zip_safe=False,
)
