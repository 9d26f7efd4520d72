# A deliberately broken allocator for the stress lab's tests
# (tests/test_stress_lab.py): the C library's malloc, except that every N-th
# malloc returns the most recently allocated block while it is still live (a
# block handed out twice). The lab runs it through the same allocator table
# as any allocator (a "tcalloc.stress.allocator" capsule), which proves that
# its verification catches a block with two owners. Test-only: it never goes
# into the wheel.
#
# The duplicate is tracked so that the two frees it will receive free it
# once, and libc itself is never corrupted: the only damage is the one the
# workloads must detect. Serialised by one lock; it exists to fail.
from libc.stdint cimport uint64_t
from libc.string cimport memcpy, memset
from libc.stdlib cimport malloc as libc_malloc, free as libc_free, realloc as libc_realloc
from cpython.pycapsule cimport PyCapsule_New
include "harness.pxi"

cdef extern from "<malloc.h>" nogil:
    size_t malloc_usable_size(void *ptr)

cdef extern from "tc_platform.h" nogil:
    ctypedef struct tc_spinlock_t:
        pass
    void tc_spinlock_init(tc_spinlock_t *l)
    void tc_spinlock_lock(tc_spinlock_t *l)
    void tc_spinlock_unlock(tc_spinlock_t *l)
    uint64_t tc_load_u64(const uint64_t *p)
    int tc_mul_overflow(size_t a, size_t b, size_t *out)

cdef enum:
    BROKEN_DUPS = 64

cdef tc_spinlock_t g_broken_lock
cdef uint64_t g_broken_every = 0     # 0: behave
cdef uint64_t g_broken_calls = 0
cdef uint64_t g_broken_doubled = 0   # blocks handed out twice so far
cdef void *g_broken_last = NULL      # most recent live block from malloc
cdef size_t g_broken_last_n = 0
cdef void *g_broken_dup[BROKEN_DUPS] # blocks with a second owner outstanding
tc_spinlock_init(&g_broken_lock)
memset(g_broken_dup, 0, sizeof(g_broken_dup))

cdef void *broken_malloc(size_t n) noexcept nogil:
    global g_broken_calls, g_broken_last, g_broken_last_n, g_broken_doubled
    cdef void *p = NULL
    cdef int i
    tc_spinlock_lock(&g_broken_lock)
    g_broken_calls += 1
    if (g_broken_every and g_broken_calls % g_broken_every == 0
            and g_broken_last != NULL and g_broken_last_n >= n):
        for i in range(BROKEN_DUPS):
            if g_broken_dup[i] == NULL:
                g_broken_dup[i] = g_broken_last
                p = g_broken_last
                g_broken_last = NULL    # never more than two owners
                g_broken_doubled += 1
                break
    if p == NULL:
        p = libc_malloc(n)
        g_broken_last = p
        g_broken_last_n = n
    tc_spinlock_unlock(&g_broken_lock)
    return p

cdef bint broken_forget(void *p) noexcept nogil:
    # Lock held. True when p still has another owner: this free is absorbed.
    global g_broken_last
    cdef int i
    if p == g_broken_last:
        g_broken_last = NULL
    for i in range(BROKEN_DUPS):
        if g_broken_dup[i] == p:
            g_broken_dup[i] = NULL
            return True
    return False

cdef void broken_free(void *p) noexcept nogil:
    if p == NULL:
        return
    tc_spinlock_lock(&g_broken_lock)
    if not broken_forget(p):
        libc_free(p)
    tc_spinlock_unlock(&g_broken_lock)

cdef void *broken_calloc(size_t m, size_t n) noexcept nogil:
    cdef size_t total
    cdef void *p
    if tc_mul_overflow(m, n, &total):
        return NULL
    p = broken_malloc(total)
    if p != NULL:
        memset(p, 0, total)
    return p

cdef void *broken_realloc(void *p, size_t n) noexcept nogil:
    cdef void *q
    cdef size_t old
    if p == NULL:
        return broken_malloc(n)
    tc_spinlock_lock(&g_broken_lock)
    if broken_forget(p):
        # The other owner keeps p: move this owner's copy to a new block.
        old = malloc_usable_size(p)
        q = libc_malloc(n)
        if q != NULL:
            memcpy(q, p, old if old < n else n)
    else:
        q = libc_realloc(p, n)
    tc_spinlock_unlock(&g_broken_lock)
    return q

cdef tc_allocator_t broken_allocator() noexcept nogil:
    cdef tc_allocator_t a
    a.name = "broken"
    a.malloc = broken_malloc
    a.free = broken_free
    a.calloc = broken_calloc
    a.realloc = broken_realloc
    return a

cdef tc_allocator_t g_table = broken_allocator()


def allocator():
    """The broken allocator as a "tcalloc.stress.allocator" capsule, for
    ``tcalloc.stress._workloads.run``."""
    return PyCapsule_New(&g_table, TC_ALLOCATOR_CAPSULE, NULL)


def configure(every):
    """Hand a live block out again on every ``every``-th malloc (0: behave
    like libc). Returns the previous value."""
    global g_broken_every
    every = int(every)
    if every < 0:
        raise ValueError("every must be >= 0")
    prev = g_broken_every
    g_broken_every = every
    return prev


def doubled():
    """How many blocks have been handed out twice so far."""
    return tc_load_u64(&g_broken_doubled)
