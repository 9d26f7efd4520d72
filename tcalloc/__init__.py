"""tcalloc: a TCMalloc-style concurrent memory allocator for Python.

The engine lives in tcalloc._engine (Cython, hot paths without the GIL).
C and Cython users reach it through the capsule ``tcalloc._C_API`` (header
``tcalloc.h`` in :func:`get_include`) or ``from tcalloc._engine cimport ...``.
"""
import os as _os

from tcalloc._engine import (
    _C_API, _C_API_EXT, stats, stats_text, release_free_memory, set_release_rate,
    get_release_rate, set_memory_limit, get_memory_limit, set_max_total_thread_cache_bytes,
    get_max_total_thread_cache_bytes, size_class_table, size_class_of, debug_enabled,
    reset_peaks, set_sample_rate, get_sample_rate,
)

__version__ = "0.1.0"


def get_include():
    """The directory holding tcalloc.h (the C API) and the shims it uses."""
    return _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "includes")


def get_pxd_dir():
    """The directory to add to Cython's include path to `cimport tcalloc...`."""
    return _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))

# The interpreter hook.
from tcalloc._engine import install, uninstall, installed

# Contention profiling of any code: lock counters and psutil figures. (Eager:
# `profile` is also the name of its module, which an import of
# tcalloc.profile would otherwise leave in its place.)
from tcalloc.profile import profile

# Buffer objects and pools (tcalloc.buffer) and sampled heap profiles
# (tcalloc.heapprof) load on first use, so that `import tcalloc`, which
# `python -m tcalloc run` does before the program starts, brings in no more
# than the engine: each module the program does not use is memory it pays.
_LAZY = {
    "Buffer": "tcalloc.buffer", "BufferPool": "tcalloc.buffer", "alloc": "tcalloc.buffer",
    "TRACEMALLOC_DOMAIN": "tcalloc.buffer",
    "heap_profile": "tcalloc.heapprof", "peak_heap_profile": "tcalloc.heapprof",
    "allocation_profile": "tcalloc.heapprof", "Profile": "tcalloc.heapprof",
    "Sample": "tcalloc.heapprof", "Frame": "tcalloc.heapprof",
}


def __getattr__(name):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'tcalloc' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
