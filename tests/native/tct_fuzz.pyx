# Test-only primitives for the C-API fuzz target (tests/fuzz/fuzz_capi.py).
# Not part of the public API, never in the wheel.
#
# Each call goes through the public C API (capsule tcalloc._C_API), as a C
# extension would, and returns errno as it was right after the call: from
# Python (ctypes) errno can be changed by the interpreter between the call
# and the read. Fill and check run in C over the whole usable size, so a
# fuzz input can hold MiB-sized blocks and still run hundreds of times a
# second.
#
# Faults (set_fault) exist so that the fuzz test can show its checks fail:
# each one damages a result after the real call, the way a broken allocator
# would; 0 (the default) changes nothing.
from libc.stdint cimport uint64_t, uintptr_t
from tcalloc.capi cimport TcallocExtAPI, TcallocExtAPI_Import

include "harness.pxi"

cdef extern from *:
    """
    #include <errno.h>
    static inline void tf_set_errno(int e) { errno = e; }
    static inline int tf_get_errno(void) { return errno; }
    """
    void tf_set_errno(int e) nogil
    int tf_get_errno() nogil

cdef TcallocCAPI *capi = h_tcalloc_api()
cdef TcallocExtAPI *g_ext = TcallocExtAPI_Import()

cdef int g_fault = 0
FAULTS = {"none": 0, "realloc_prefix": 1, "calloc_dirty": 2}


def set_fault(name):
    """Damage results from now on: 'realloc_prefix' flips the first byte a
    moved realloc copied, 'calloc_dirty' leaves a non-zero byte in calloc
    memory. Both stay inside the block: the heap itself is never damaged."""
    global g_fault
    g_fault = FAULTS[name]


def malloc(size_t n):
    """(address, errno)."""
    cdef void *p
    cdef int e
    with nogil:
        tf_set_errno(0)
        p = capi.malloc(n)
        e = tf_get_errno()
    return <uintptr_t>p, e


def calloc(size_t nmemb, size_t size):
    cdef void *p
    cdef int e
    with nogil:
        tf_set_errno(0)
        p = capi.calloc(nmemb, size)
        e = tf_get_errno()
        if p != NULL and g_fault == 2 and nmemb * size > 0:
            (<unsigned char *>p)[nmemb * size - 1] = 1
    return <uintptr_t>p, e


def realloc(uintptr_t p, size_t n):
    cdef void *q
    cdef int e
    with nogil:
        tf_set_errno(0)
        q = capi.realloc(<void *>p, n)
        e = tf_get_errno()
        if q != NULL and g_fault == 1 and <uintptr_t>q != p and p != 0:
            (<unsigned char *>q)[0] ^= 0xFF
    return <uintptr_t>q, e


def aligned_alloc(size_t alignment, size_t n):
    cdef void *p
    cdef int e
    with nogil:
        tf_set_errno(0)
        p = capi.aligned_alloc(alignment, n)
        e = tf_get_errno()
    return <uintptr_t>p, e


def free(uintptr_t p):
    with nogil:
        capi.free(<void *>p)


def usable_size(uintptr_t p):
    cdef size_t n
    with nogil:
        n = capi.usable_size(<void *>p)
    return n


def fill(uintptr_t p, size_t n, uint64_t key):
    """Write key's pattern over the n bytes at p (any prefix checks against key)."""
    with nogil:
        h_fill(<void *>p, n, key)


def check(uintptr_t p, size_t n, uint64_t key):
    """Do the n bytes at p hold (a prefix of) key's pattern?"""
    cdef bint ok
    with nogil:
        ok = h_check(<void *>p, n, key)
    return ok


def is_zero(uintptr_t p, size_t n):
    cdef bint ok
    with nogil:
        ok = h_is_zero(<void *>p, n)
    return ok


def bytes_in_use():
    """tcalloc's bytes in use, from the extension capsule (cheap: no dict)."""
    return g_ext.bytes_in_use()
