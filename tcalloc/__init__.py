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

# Buffer objects, buffer pools and the interpreter hook.
from tcalloc.buffer import Buffer, BufferPool, alloc, TRACEMALLOC_DOMAIN
from tcalloc._engine import install, uninstall, installed

# Contention profiling of any code: lock counters and psutil figures.
from tcalloc.profile import profile

# Sampled heap profiles: which code holds the memory.
from tcalloc.heapprof import (heap_profile, peak_heap_profile, allocation_profile, Profile,
                              Sample, Frame)
