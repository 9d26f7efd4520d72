"""Native loops of the engine benchmark (driven by ``python -m bench.engine``).

Every loop takes a ``tc_allocator_t`` and calls ``malloc``/``free`` through
its function pointers, so tcalloc (through its capsule) and the C library's
malloc (glibc, or gperftools/jemalloc/mimalloc under LD_PRELOAD) run exactly
the same machine code; only the call targets differ. Harness buffers (ring,
size tables) come from mmap so they never touch the allocator under test.
"""
from libc.stdint cimport uint32_t, uint64_t, uintptr_t
include "harness.pxi"

cdef extern from "tc_platform.h" nogil:
    uint64_t tc_now_ns()
    void tc_spin_backoff(uint64_t *spins, uint64_t limit)
    void *tc_load_acquire_ptr(void **p)
    void tc_store_release_ptr(void **p, void *v)
    void tc_cpu_relax()
    void *tc_os_map(size_t size)
    int tc_os_unmap(void *p, size_t size)

cdef extern from "<sched.h>" nogil:
    int sched_yield()

ctypedef void *(*malloc_fn)(size_t) noexcept nogil
ctypedef void (*free_fn)(void *) noexcept nogil

# Returned by a timed loop when malloc gave NULL.
cdef uint64_t FAILED = <uint64_t>-1

cdef tc_allocator_t _alloc
cdef bint _ready = False
cdef object _capsule = None     # keeps tcalloc's capsule (and module) alive


def use(backend):
    """Select the allocator the loops call: "system" (libc malloc, or whatever
    LD_PRELOAD put in front of it), "tcalloc" (the capsule's table), or a
    capsule the harness accepts (harness.pxi, h_allocator)."""
    global _alloc, _ready, _capsule
    _capsule = h_allocator(backend, &_alloc)
    _ready = True


cdef inline const tc_allocator_t *_get() except NULL:
    if not _ready:
        raise RuntimeError("call _bench.use() first")
    return &_alloc


cdef inline object _check(uint64_t ns):
    if ns == FAILED:
        raise MemoryError("allocator under test returned NULL")
    return ns


# ---- row 1: malloc+free pairs ----------------------------------------------
cdef uint64_t _pairs(const tc_allocator_t *a, size_t size, uint64_t n) noexcept nogil:
    # Pointers copied to locals: the loop is two indirect calls and one store.
    cdef malloc_fn m = a.malloc
    cdef free_fn f = a.free
    cdef uint64_t i
    cdef char *p
    cdef uint64_t t0 = tc_now_ns()
    for i in range(n):
        p = <char *>m(size)
        if p == NULL:
            return FAILED
        p[0] = <char>i          # the block is used, not just handed back
        f(p)
    return tc_now_ns() - t0


def pairs(size_t size, uint64_t n):
    """ns for n malloc(size)+free pairs on this thread."""
    cdef const tc_allocator_t *a = _get()
    cdef uint64_t ns
    with nogil:
        ns = _pairs(a, size, n)
    return _check(ns)


# ---- row 2: batches of random sizes freed in random order --------------------
cdef uint64_t _batch(const tc_allocator_t *a, const uint32_t *sizes,
                     const uint32_t *order, void **slots, uint64_t nsets,
                     uint64_t per, uint64_t rounds) noexcept nogil:
    cdef malloc_fn m = a.malloc
    cdef free_fn f = a.free
    cdef uint64_t r, i
    cdef const uint32_t *sz
    cdef const uint32_t *od
    cdef char *p
    cdef uint64_t t0 = tc_now_ns()
    for r in range(rounds):
        sz = sizes + (r % nsets) * per
        od = order + (r % nsets) * per
        for i in range(per):
            p = <char *>m(sz[i])
            if p == NULL:
                return FAILED
            p[0] = <char>i
            slots[i] = p
        for i in range(per):
            f(slots[od[i]])
    return tc_now_ns() - t0


def batch(uint64_t rounds, uint64_t per=1000, uint64_t nsets=8,
          uint32_t lo=8, uint32_t hi=1024, uint64_t seed=12345):
    """ns for `rounds` batches of `per` mallocs of random sizes in [lo, hi],
    each batch freed in a random order. `nsets` different (sizes, order)
    pairs are precomputed outside the timed loop and cycled."""
    cdef const tc_allocator_t *a = _get()
    cdef size_t tab = nsets * per * sizeof(uint32_t)
    cdef uint32_t *sizes = <uint32_t *>tc_os_map(tab)
    cdef uint32_t *order = <uint32_t *>tc_os_map(tab)
    cdef void **slots = <void **>tc_os_map(per * sizeof(void *))
    cdef uint64_t s = seed, k, i, j, ns
    cdef uint32_t t
    try:
        if sizes == NULL or order == NULL or slots == NULL:
            raise MemoryError("mmap failed")
        for k in range(nsets):
            for i in range(per):
                sizes[k * per + i] = lo + <uint32_t>(h_rand(&s) % (hi - lo + 1))
                order[k * per + i] = <uint32_t>i
            # Fisher-Yates shuffle of the free order.
            for i in range(per - 1, 0, -1):
                j = h_rand(&s) % (i + 1)
                t = order[k * per + i]
                order[k * per + i] = order[k * per + j]
                order[k * per + j] = t
        with nogil:
            ns = _batch(a, sizes, order, slots, nsets, per, rounds)
        return _check(ns)
    finally:
        if sizes != NULL: tc_os_unmap(sizes, tab)
        if order != NULL: tc_os_unmap(order, tab)
        if slots != NULL: tc_os_unmap(slots, per * sizeof(void *))


# ---- row 3: one thread allocates, another frees ------------------------------
# Single-producer/single-consumer ring whose slots are NULL when empty
# (FastForward style): each side only polls the slot it needs, so no shared
# head/tail counters bounce between the cores.
cdef struct ring_t:
    void **slots
    uint64_t mask
    uint64_t n
    size_t size
    const tc_allocator_t *a
    void *go            # non-NULL: start
    uint64_t failed


cdef void *_producer(void *arg) noexcept nogil:
    cdef ring_t *r = <ring_t *>arg
    cdef malloc_fn m = r.a.malloc
    cdef uint64_t i, spins = 0
    cdef uint64_t *p
    cdef void **slot
    while tc_load_acquire_ptr(&r.go) == NULL:
        tc_spin_backoff(&spins, 2048)   # spin briefly, then yield: a preempted peer needs the CPU
    for i in range(r.n):
        p = <uint64_t *>m(r.size)
        if p == NULL:
            r.failed += 1
            p = <uint64_t *>1   # marker: consumer counts it, does not free
        else:
            p[0] = i            # consumer checks it: the block really crossed
        slot = &r.slots[i & r.mask]
        spins = 0
        while tc_load_acquire_ptr(slot) != NULL:
            tc_spin_backoff(&spins, 2048)
        tc_store_release_ptr(slot, p)
    return NULL


cdef uint64_t _consume(ring_t *r, uint64_t *bad) noexcept nogil:
    cdef free_fn f = r.a.free
    cdef uint64_t i, spins = 0
    cdef uint64_t *p
    cdef void **slot
    for i in range(r.n):
        slot = &r.slots[i & r.mask]
        spins = 0
        p = <uint64_t *>tc_load_acquire_ptr(slot)
        while p == NULL:
            tc_spin_backoff(&spins, 2048)
            p = <uint64_t *>tc_load_acquire_ptr(slot)
        tc_store_release_ptr(slot, NULL)
        if p == <uint64_t *>1:
            continue
        if p[0] != i:
            bad[0] += 1
        f(p)
    return 0


def xthread(uint64_t n, size_t size=64, uint64_t ring_slots=1024):
    """ns for n blocks of `size` bytes malloc'd on a new thread and freed on
    this one, passed through a ring of `ring_slots` (a power of two)."""
    cdef const tc_allocator_t *a = _get()
    cdef ring_t r
    cdef pthread_t th
    cdef uint64_t t0, ns, bad = 0
    cdef int rc
    if ring_slots == 0 or (ring_slots & (ring_slots - 1)):
        raise ValueError("ring_slots must be a power of two")
    r.slots = <void **>tc_os_map(ring_slots * sizeof(void *))   # zero = empty
    if r.slots == NULL:
        raise MemoryError("mmap failed")
    r.mask = ring_slots - 1
    r.n = n
    r.size = size
    r.a = a
    r.go = NULL
    r.failed = 0
    try:
        with nogil:
            rc = pthread_create(&th, NULL, _producer, &r)
            if rc == 0:
                # The clock starts once the producer thread exists.
                t0 = tc_now_ns()
                tc_store_release_ptr(&r.go, <void *>1)
                _consume(&r, &bad)
                pthread_join(th, NULL)
                ns = tc_now_ns() - t0
        if rc != 0:
            raise OSError(rc, "pthread_create failed")
        if r.failed:
            raise MemoryError("allocator under test returned NULL")
        if bad:
            raise RuntimeError(f"{bad} blocks arrived corrupted")
        return ns
    finally:
        tc_os_unmap(r.slots, ring_slots * sizeof(void *))


# ---- row 5: threads writing their own small blocks ----------------------------
# Each thread mallocs a block, writes its first 8 bytes 64 times and checks
# them, frees it, and again: the active false sharing of Hoard's
# cache-thrash. If the allocator hands two threads blocks on one cache line,
# the line bounces between the cores on every write.
cdef extern from *:
    """
    static int bench_write_own(void *p) {
        volatile unsigned char *q = (volatile unsigned char *)p;
        int k;
        for (k = 0; k < 8; k++) q[k] = 0;
        for (k = 0; k < 64; k++) q[k & 7]++;
        for (k = 0; k < 8; k++) if (q[k] != 8) return 0;
        return 1;
    }
    """
    int bench_write_own(void *p) nogil

cdef struct thrash_t:
    const tc_allocator_t *a
    size_t size
    uint64_t n
    void **go
    uint64_t failed
    uint64_t bad


cdef void *_thrash_worker(void *arg) noexcept nogil:
    cdef thrash_t *t = <thrash_t *>arg
    cdef malloc_fn m = t.a.malloc
    cdef free_fn f = t.a.free
    cdef uint64_t i, spins = 0
    cdef void *p
    while tc_load_acquire_ptr(t.go) == NULL:
        tc_spin_backoff(&spins, 2048)
    for i in range(t.n):
        p = m(t.size)
        if p == NULL:
            t.failed += 1
            continue
        if not bench_write_own(p):
            t.bad += 1
        f(p)
    return NULL


def thrash(uint64_t n, size_t size=16, int threads=2):
    """ns for `threads` new threads to each malloc, write and free n blocks
    of `size` bytes (wall time: they run at once)."""
    cdef const tc_allocator_t *a = _get()
    cdef thrash_t t[8]
    cdef pthread_t th[8]
    cdef void *go = NULL
    cdef uint64_t t0 = 0, ns = 0
    cdef int i, started = 0, rc = 0
    if not 1 <= threads <= 8:
        raise ValueError("threads must be 1..8")
    if size < 8:
        raise ValueError("size must be at least 8 (the loop writes 8 bytes)")
    with nogil:
        for i in range(threads):
            t[i].a = a
            t[i].size = size
            t[i].n = n
            t[i].go = &go
            t[i].failed = t[i].bad = 0
            rc = pthread_create(&th[i], NULL, _thrash_worker, &t[i])
            if rc != 0:
                break
            started += 1
        t0 = tc_now_ns()
        tc_store_release_ptr(&go, <void *>1)
        for i in range(started):
            pthread_join(th[i], NULL)
        ns = tc_now_ns() - t0
    if rc != 0:
        raise OSError(rc, "pthread_create failed")
    for i in range(threads):
        if t[i].failed:
            raise MemoryError("allocator under test returned NULL")
        if t[i].bad:
            raise RuntimeError(f"{t[i].bad} blocks did not keep what their thread wrote")
    return ns


# ---- row 4: large blocks, every page touched --------------------------------
cdef uint64_t _large(const tc_allocator_t *a, size_t size, uint64_t n) noexcept nogil:
    cdef malloc_fn m = a.malloc
    cdef free_fn f = a.free
    cdef uint64_t i
    cdef size_t off
    cdef char *p
    cdef uint64_t t0 = tc_now_ns()
    for i in range(n):
        p = <char *>m(size)
        if p == NULL:
            return FAILED
        # One byte per 4 KiB page: every page is faulted in unless the
        # allocator hands back memory that is still mapped.
        off = 0
        while off < size:
            p[off] = <char>i
            off += 4096
        f(p)
    return tc_now_ns() - t0


def large(uint64_t n, size_t size=8 << 20):
    """ns for n rounds of malloc(size), write one byte per 4 KiB, free."""
    cdef const tc_allocator_t *a = _get()
    cdef uint64_t ns
    with nogil:
        ns = _large(a, size, n)
    return _check(ns)


# ---- memory overhead: a chain of live blocks --------------------------------
def chain_alloc(uint64_t n, size_t size=64):
    """Allocate n blocks of `size` bytes, each holding a pointer to the
    previous one (so no side table is needed); returns the head as an int."""
    cdef const tc_allocator_t *a = _get()
    cdef malloc_fn m = a.malloc
    cdef void **head = NULL
    cdef void **p
    cdef uint64_t i
    cdef bint failed = False
    if size < sizeof(void *):
        raise ValueError("size must hold a pointer")
    with nogil:
        for i in range(n):
            p = <void **>m(size)
            if p == NULL:
                failed = True
                break
            p[0] = head
            head = p
    if failed:
        chain_free(<uintptr_t>head)
        raise MemoryError("allocator under test returned NULL")
    return <uintptr_t>head


def chain_free(uintptr_t head):
    """Free a chain made by chain_alloc; returns how many blocks it freed."""
    cdef const tc_allocator_t *a = _get()
    cdef free_fn f = a.free
    cdef void **p = <void **>head
    cdef void **nxt
    cdef uint64_t count = 0
    with nogil:
        while p != NULL:
            nxt = <void **>p[0]
            f(p)
            p = nxt
            count += 1
    return count
