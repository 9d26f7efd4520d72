# The engine: owns every global structure (size map, page heap with its
# pagemap, central free lists, transfer caches, thread-cache registry) and
# holds the allocation fast path, the C API and the Python API.
#
# Lock order (outermost first; a thread never takes an earlier lock while
# holding a later one, and holds at most one transfer or central lock):
#     registry  ->  transfer[cl]  ->  central[cl]  ->  page heap  ->  arena
# The fast path (thread cache pop/push, pagemap read) takes no lock.
# fork(): _atfork_prepare takes all of them in that order; the parent
# releases them, the child resets them (its other threads are gone).
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t, uintptr_t
from libc.string cimport memset, memcpy
from libc.stdlib cimport getenv, strtoull
from libc.errno cimport ENOMEM, EINVAL
from cpython.pycapsule cimport PyCapsule_New

from tcalloc.common cimport *
from tcalloc.sizemap cimport SizeMap, sizemap_init, sizemap_index, sizemap_class, sizemap_aligned_class
from tcalloc.arena cimport MetaArena, arena_init
from tcalloc.span cimport Span, SPAN_IN_USE, span_addr
from tcalloc.pagemap cimport pagemap_sizeclass, pagemap_span
from tcalloc.pageheap cimport (PageHeap, pageheap_init, pageheap_new, pageheap_new_aligned,
                               pageheap_delete, pageheap_resize, pageheap_release,
                               pageheap_set_limit, pageheap_free_histogram)
from tcalloc.central cimport CentralFreeList, central_init
from tcalloc.transfer cimport TransferCache, transfer_init, transfer_drain
from tcalloc.capi cimport TcallocCAPI, TcallocExtAPI
from tcalloc.threadcache cimport (ThreadCache, ThreadCacheRegistry, threadcache_registry_init,
                                  threadcache_create, threadcache_destroy, threadcache_flush,
                                  threadcache_pop, threadcache_push, threadcache_request_flush_all,
                                  threadcache_set_overall_max, threadcache_alloc_uncached,
                                  threadcache_free_uncached, freelist_mallocs)

cdef extern from "tc_tls.h" nogil:
    void *tc_tls_get()
    void *tc_tls_owner()
    void tc_tls_set(void *p, int fast)
    bint tc_tls_exiting()
    void tc_tls_set_exiting()

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned int pthread_key_t
    ctypedef unsigned long pthread_t
    int pthread_key_create(pthread_key_t *key, void (*destructor)(void *) noexcept nogil)
    int pthread_setspecific(pthread_key_t key, const void *value)
    int pthread_atfork(void (*prepare)() noexcept nogil, void (*parent)() noexcept nogil,
                       void (*child)() noexcept nogil)
    int pthread_create(pthread_t *thread, const void *attr, void *(*start)(void *) noexcept nogil, void *arg)
    int pthread_detach(pthread_t thread)

cdef extern from "<time.h>" nogil:
    struct timespec:
        long tv_sec
        long tv_nsec
    int nanosleep(const timespec *req, timespec *rem)

cdef size_t kMaxAllocBytes = (<size_t>1) << 46    # larger requests fail at once (ENOMEM)

# ---- the global structures ---------------------------------------------------

cdef SizeMap g_sizemap
cdef MetaArena g_arena
cdef PageHeap g_heap
cdef CentralFreeList g_central[kMaxClasses]
cdef TransferCache g_transfer[kMaxClasses]
cdef ThreadCacheRegistry g_registry
cdef pthread_key_t g_key
cdef TcallocCAPI g_capi
cdef TcallocExtAPI g_ext
cdef int g_debug = 0

# background release (lock order: taken alone)
cdef tc_spinlock_t g_bg_lock
cdef uint64_t g_release_rate = 0     # bytes per second; 0: no thread
cdef int g_bg_running = 0
cdef int g_bg_restart = 0            # set in a fork child whose parent had a releaser

# =============================================================================
# The hot path. Everything a small malloc or free does when its thread cache
# can serve it is in these two functions plus threadcache_pop/push
# (threadcache.pxd) and pagemap_sizeclass (pagemap.pxd), all inlined here.
# =============================================================================

cdef inline void *_malloc_class(uint32_t cl) noexcept nogil:
    cdef ThreadCache *tc = <ThreadCache *>tc_tls_get()
    cdef void *p
    if TC_LIKELY(tc != NULL):
        p = threadcache_pop(tc, cl)
        if TC_LIKELY(p != NULL):
            return p
    return _malloc_small_slow(cl)

cdef inline void *_malloc(size_t size) noexcept nogil:
    if TC_LIKELY(size <= kMaxSmallSize):
        return _malloc_class(g_sizemap.class_array[sizemap_index(size)])
    return _malloc_large(size, 1)

cdef inline void _free(void *p) noexcept nogil:
    cdef uint32_t cl = pagemap_sizeclass(&g_heap.pagemap, <uintptr_t>p >> kPageShift)
    cdef ThreadCache *tc
    # Every slow path below is a tail call, so the fast path saves no registers.
    if TC_LIKELY(cl != 0):
        tc = <ThreadCache *>tc_tls_get()
        if TC_LIKELY(tc != NULL):
            threadcache_push(tc, cl, p)
            return
        _free_small_slow(p, cl)
        return
    _free_large(p)

# ---- slow paths -------------------------------------------------------------

cdef ThreadCache *_cache_for_thread() noexcept nogil:
    """Create the calling thread's cache; NULL if metadata memory is out."""
    cdef ThreadCache *tc = threadcache_create(&g_registry)
    if tc != NULL:
        tc_tls_set(tc, not g_debug)
        pthread_setspecific(g_key, tc)
    if TC_UNLIKELY(g_bg_restart):
        _bg_start()
    return tc

cdef void _thread_exit(void *arg) noexcept nogil:
    """pthread key destructor: the thread's cache goes back to the central stores."""
    tc_tls_set(NULL, 0)
    tc_tls_set_exiting()
    threadcache_destroy(<ThreadCache *>arg)

cdef void _free_small_slow(void *p, uint32_t cl) noexcept nogil:
    """Debug checks, or no cache yet: a thread that only frees (consumer of
    a queue) needs one as much as one that allocates, or every free takes a
    central lock."""
    cdef ThreadCache *tc = <ThreadCache *>tc_tls_owner()
    if g_debug:
        _debug_free_small(p, cl)
        return
    if tc == NULL and not tc_tls_exiting():
        tc = _cache_for_thread()
    if tc != NULL:
        threadcache_push(tc, cl, p)
    else:
        threadcache_free_uncached(&g_registry, cl, p)

cdef void *_malloc_small_slow(uint32_t cl) noexcept nogil:
    cdef ThreadCache *tc = <ThreadCache *>tc_tls_owner()
    cdef void *p = NULL
    if g_debug:
        p = _debug_malloc_small(cl)
        if p == NULL:
            tc_set_errno(ENOMEM)
        return p
    if tc == NULL and not tc_tls_exiting():
        tc = _cache_for_thread()
    if tc != NULL:
        p = threadcache_pop(tc, cl)
    else:
        p = threadcache_alloc_uncached(&g_registry, cl)
    if p == NULL:
        # Memory parked in caches keeps spans from emptying: give it back
        # and try once more.
        _reclaim()
        p = threadcache_pop(tc, cl) if tc != NULL else threadcache_alloc_uncached(&g_registry, cl)
    if p == NULL:
        tc_set_errno(ENOMEM)
    return p

cdef void _reclaim() noexcept nogil:
    """Flush this thread's cache and the transfer caches, so spans they kept
    from emptying go back to the page heap: before the one retry of a failed
    allocation (the OS or a hard limit said no), and in release_free_memory."""
    cdef ThreadCache *tc = <ThreadCache *>tc_tls_owner()
    cdef int cl
    if tc != NULL:
        threadcache_flush(tc)
    for cl in range(1, g_sizemap.num_classes):
        transfer_drain(&g_transfer[cl])

cdef Span *_alloc_large_span(size_t size, size_t align_pages) noexcept nogil:
    cdef Span *s
    cdef size_t npages
    if TC_UNLIKELY(g_bg_restart):
        _bg_start()
    if size > kMaxAllocBytes:
        tc_set_errno(ENOMEM)
        return NULL
    if size == 0:
        size = 1
    npages = (size + kPageSize - 1) >> kPageShift
    s = pageheap_new_aligned(&g_heap, npages, align_pages)
    if s == NULL:
        _reclaim()
        s = pageheap_new_aligned(&g_heap, npages, align_pages)
    if s == NULL:
        tc_set_errno(ENOMEM)
    return s

cdef void *_malloc_large(size_t size, size_t align_pages) noexcept nogil:
    cdef Span *s = _alloc_large_span(size, align_pages)
    return <void *>span_addr(s) if s != NULL else NULL

cdef inline Span *_large_span(const void *p) noexcept nogil:
    """The in-use large span starting at p, or NULL if p is no such thing."""
    cdef uintptr_t page = <uintptr_t>p >> kPageShift
    cdef Span *s
    if <uintptr_t>p & (kPageSize - 1):
        return NULL
    s = pagemap_span(&g_heap.pagemap, page)
    if s == NULL or s.location != SPAN_IN_USE or s.sizeclass != 0 or s.start != page:
        return NULL
    return s

cdef void _free_large(void *p) noexcept nogil:
    cdef Span *s
    if p == NULL:
        return
    s = _large_span(p)
    if s == NULL:
        tc_fatal_ptr("free(): invalid pointer (not allocated by tcalloc, or already freed)", p)
    if g_debug:
        memset(p, kPoisonFree, s.npages << kPageShift)
    pageheap_delete(&g_heap, s)

# ---- debug mode (TCALLOC_DEBUG=1 or a TCALLOC_DEBUG build) ----------------------
# Small blocks bypass the thread and transfer caches: every free object is
# then either on its span's free list or never handed out, so a double free
# is found by looking there, on every path. Freed blocks are poisoned from
# byte 16 on (the first word is the free-list link, the second the free-block
# key); the poison is verified
# when the block is reused and when a neighbour is freed, which catches
# writes after free and overruns into free neighbours.

cdef enum:
    kPoisonFree = 0xDB          # in freed blocks
    kPoisonAlloc = 0xCD         # in new blocks (malloc, not calloc)
    kPoisonFrom = 16            # bytes before this hold the link and the key

cdef bint _on_span_freelist(Span *s, const void *p, size_t size) noexcept nogil:
    """Is p on span s's free list? Every link is checked before it is
    followed: an overrun may have overwritten one."""
    cdef void *q = s.freelist
    cdef uintptr_t base = span_addr(s)
    while q != NULL:
        if <uintptr_t>q < base or <uintptr_t>q >= s.bump or (<uintptr_t>q - base) % size != 0:
            tc_fatal_ptr("heap corruption: a free block's link was overwritten "
                         "(overrun or use after free) near", p)
        if q == p:
            return 1
        q = (<void **>q)[0]
    return 0

cdef bint _poison_intact(const void *p, size_t size) noexcept nogil:
    cdef const uint8_t *b = <const uint8_t *>p
    cdef size_t i
    for i in range(kPoisonFrom, size):
        if b[i] != kPoisonFree:
            return 0
    return 1

cdef void _debug_check_small(void *p, uint32_t cl) noexcept nogil:
    """p must be the start of a block handed out of its span, not free, and
    its free neighbours must still hold their poison."""
    cdef Span *s = pagemap_span(&g_heap.pagemap, <uintptr_t>p >> kPageShift)
    cdef size_t size = g_sizemap.class_to_size[cl]
    cdef CentralFreeList *c = &g_central[cl]
    cdef uintptr_t off, q
    cdef int k
    if s == NULL or s.location != SPAN_IN_USE or s.sizeclass != cl:
        tc_fatal_ptr("free(): invalid pointer (pagemap and span disagree)", p)
    off = <uintptr_t>p - span_addr(s)
    if off % size != 0 or <uintptr_t>p >= s.bump:
        tc_fatal_ptr("free(): invalid pointer (not the start of a block)", p)
    tc_spinlock_lock(&c.lock)
    if _on_span_freelist(s, p, size):
        tc_spinlock_unlock(&c.lock)
        tc_fatal_ptr("double free detected", p)
    if size > kPoisonFrom:
        for k in range(2):
            q = <uintptr_t>p - size if k == 0 else <uintptr_t>p + size
            if q >= span_addr(s) and q + size <= s.bump and _on_span_freelist(s, <void *>q, size):
                if not _poison_intact(<void *>q, size):
                    tc_spinlock_unlock(&c.lock)
                    tc_fatal_ptr("heap corruption: a free neighbour of this block was written "
                                 "(overrun or use after free)", p)
    tc_spinlock_unlock(&c.lock)

cdef void _debug_free_small(void *p, uint32_t cl) noexcept nogil:
    cdef size_t size = g_sizemap.class_to_size[cl]
    _debug_check_small(p, cl)
    if size > kPoisonFrom:
        memset(<uint8_t *>p + kPoisonFrom, kPoisonFree, size - kPoisonFrom)
    threadcache_free_uncached(&g_registry, cl, p)

cdef void *_debug_malloc_small(uint32_t cl) noexcept nogil:
    cdef size_t size = g_sizemap.class_to_size[cl]
    cdef void *p = threadcache_alloc_uncached(&g_registry, cl)
    cdef const uint8_t *b
    if p == NULL:
        return NULL
    b = <const uint8_t *>p
    # A block that was freed before carries the poison from byte 16 on; if
    # it starts with poison but is not poisoned throughout, it was written
    # after it was freed.
    if size > kPoisonFrom and b[kPoisonFrom] == kPoisonFree and not _poison_intact(p, size):
        tc_fatal_ptr("heap corruption: block written after it was freed", p)
    memset(p, kPoisonAlloc, size)
    return p

# ---- the exported entry points (capsule and cimport) ---------------------------

cdef void *tc_malloc(size_t size) noexcept nogil:
    return _malloc(size)

cdef void tc_free(void *ptr) noexcept nogil:
    _free(ptr)

cdef void *tc_calloc(size_t nmemb, size_t size) noexcept nogil:
    cdef size_t total
    cdef void *p
    cdef Span *s
    if tc_mul_overflow(nmemb, size, &total):
        tc_set_errno(ENOMEM)
        return NULL
    if total <= kMaxSmallSize:
        p = _malloc(total)
        if p != NULL:
            memset(p, 0, total)
        return p
    s = _alloc_large_span(total, 1)
    if s == NULL:
        return NULL
    p = <void *>span_addr(s)
    # Fresh or released pages read as zeros already.
    if s.needzero:
        memset(p, 0, total)
    s.needzero = 1
    return p

cdef inline size_t _block_size(void *ptr, uint32_t *cl, Span **large, const char *what) noexcept nogil:
    """Usable size of tcalloc block ptr, its class (0: large) and, for a
    large block, its span; aborts naming `what` if ptr is no block start."""
    cl[0] = pagemap_sizeclass(&g_heap.pagemap, <uintptr_t>ptr >> kPageShift)
    if cl[0] != 0:
        large[0] = NULL
        return g_sizemap.class_to_size[cl[0]]
    large[0] = _large_span(ptr)
    if large[0] == NULL:
        tc_fatal_ptr(what, ptr)
    return large[0].npages << kPageShift

cdef size_t tc_usable_size(void *ptr) noexcept nogil:
    cdef uint32_t cl
    cdef Span *s
    if ptr == NULL:
        return 0
    return _block_size(ptr, &cl, &s, "usable_size(): invalid pointer (not allocated by tcalloc)")

cdef void *tc_realloc(void *ptr, size_t size) noexcept nogil:
    cdef size_t old, want, npages
    cdef uint32_t cl
    cdef Span *s
    cdef void *q
    if ptr == NULL:
        return _malloc(size)
    if size == 0:
        size = 1          # like CPython's raw allocator: a minimal block, never NULL-on-success
    old = _block_size(ptr, &cl, &s, "realloc(): invalid pointer (not allocated by tcalloc)")
    if cl == 0 and size <= old and size > kMaxSmallSize:
        # A large block that stays large shrinks where it stands: its tail
        # pages go back to the page heap, nothing is copied.
        npages = (size + kPageSize - 1) >> kPageShift
        if npages < (old >> kPageShift):
            pageheap_resize(&g_heap, s, npages)
        return ptr
    if size <= old and (size > old // 2 or (cl != 0 and sizemap_class(&g_sizemap, size) == cl)):
        return ptr
    if cl == 0 and size > old and size <= kMaxAllocBytes:
        # A large block may grow in place when the pages after it are free.
        npages = (size + kPageSize - 1) >> kPageShift
        if pageheap_resize(&g_heap, s, npages):
            return ptr
    want = size
    if size > old and size - old < old // 4 and old + old // 4 <= kMaxAllocBytes:
        want = old + old // 4   # realloc chains: grow by at least 25 % to amortise copies
    q = _malloc(want)
    if q == NULL and want != size:
        q = _malloc(size)
    if q == NULL:
        return NULL       # the old block is untouched, as C requires
    memcpy(q, ptr, old if old < size else size)
    _free(ptr)
    return q

cdef void *tc_aligned_alloc(size_t alignment, size_t size) noexcept nogil:
    cdef uint32_t cl
    if not tc_is_pow2(alignment):
        tc_set_errno(EINVAL)
        return NULL
    if alignment <= 8 or (alignment == 16 and size > 8):
        return _malloc(size)
    if size <= kMaxSmallSize and alignment <= kPageSize:
        cl = sizemap_aligned_class(&g_sizemap, size, alignment)
        if cl != 0:
            return _malloc_class(cl)
    return _malloc_large(size, alignment >> kPageShift if alignment > kPageSize else 1)

cdef bint tc_owns(const void *ptr) noexcept nogil:
    """Is ptr a block start in tcalloc's heap (live or free)? Lock-free."""
    cdef uintptr_t page = <uintptr_t>ptr >> kPageShift
    cdef uint32_t cl = pagemap_sizeclass(&g_heap.pagemap, page)
    cdef Span *s
    if cl != 0:
        s = pagemap_span(&g_heap.pagemap, page)
        return s != NULL and (<uintptr_t>ptr - span_addr(s)) % g_sizemap.class_to_size[cl] == 0
    return _large_span(ptr) != NULL

cdef void *_capi_malloc(size_t n) noexcept nogil:
    return _malloc(n)
cdef void _capi_free(void *p) noexcept nogil:
    _free(p)
cdef void *_capi_calloc(size_t n, size_t s) noexcept nogil:
    return tc_calloc(n, s)
cdef void *_capi_realloc(void *p, size_t n) noexcept nogil:
    return tc_realloc(p, n)
cdef void *_capi_aligned_alloc(size_t a, size_t n) noexcept nogil:
    return tc_aligned_alloc(a, n)
cdef size_t _capi_usable_size(void *p) noexcept nogil:
    return tc_usable_size(p)
cdef int _capi_owns(const void *p) noexcept nogil:
    return tc_owns(p)
cdef size_t _capi_bytes_in_use() noexcept nogil:
    cdef EngineStats st
    _collect(&st, NULL)
    return st.bytes_in_use

# ---- fork ------------------------------------------------------------------

cdef void _atfork_prepare() noexcept nogil:
    cdef int cl
    tc_spinlock_lock(&g_bg_lock)
    tc_spinlock_lock(&g_registry.lock)
    for cl in range(1, g_sizemap.num_classes):
        tc_spinlock_lock(&g_transfer[cl].lock)
    for cl in range(1, g_sizemap.num_classes):
        tc_spinlock_lock(&g_central[cl].lock)
    tc_spinlock_lock(&g_heap.lock)
    tc_spinlock_lock(&g_arena.lock)

cdef void _atfork_parent() noexcept nogil:
    cdef int cl
    tc_spinlock_unlock(&g_arena.lock)
    tc_spinlock_unlock(&g_heap.lock)
    for cl in range(1, g_sizemap.num_classes):
        tc_spinlock_unlock(&g_central[cl].lock)
    for cl in range(1, g_sizemap.num_classes):
        tc_spinlock_unlock(&g_transfer[cl].lock)
    tc_spinlock_unlock(&g_registry.lock)
    tc_spinlock_unlock(&g_bg_lock)

cdef void _atfork_child() noexcept nogil:
    global g_bg_running, g_bg_restart
    cdef int cl
    tc_spinlock_reset(&g_arena.lock)
    tc_spinlock_reset(&g_heap.lock)
    for cl in range(1, g_sizemap.num_classes):
        tc_spinlock_reset(&g_central[cl].lock)
        tc_spinlock_reset(&g_transfer[cl].lock)
    tc_spinlock_reset(&g_registry.lock)
    tc_spinlock_reset(&g_bg_lock)
    # The releaser thread did not survive the fork; start a new one lazily
    # (creating threads inside fork() is not allowed).
    if g_bg_running:
        g_bg_running = 0
        g_bg_restart = 1

# ---- background release ------------------------------------------------------

cdef void *_bg_main(void *arg) noexcept nogil:
    """Release free page-heap memory at g_release_rate bytes/s, 10 ticks a second."""
    global g_bg_running
    cdef timespec ts
    cdef int64_t credit = 0
    cdef uint64_t rate, done
    ts.tv_sec = 0
    ts.tv_nsec = 100000000
    while True:
        nanosleep(&ts, NULL)
        tc_spinlock_lock(&g_bg_lock)
        rate = g_release_rate
        if rate == 0:
            g_bg_running = 0
            tc_spinlock_unlock(&g_bg_lock)
            return NULL
        tc_spinlock_unlock(&g_bg_lock)
        credit += <int64_t>(rate // 10)
        if credit > <int64_t>rate:
            credit = <int64_t>rate      # idle ticks do not bank more than a second
        if credit > 0:
            # Whole spans are released, so a tick may overshoot: the debt is
            # paid by later ticks and the long-run rate holds.
            done = pageheap_release(&g_heap, <size_t>credit, 1)
            credit -= <int64_t>done

cdef void _bg_start() noexcept nogil:
    global g_bg_running, g_bg_restart
    cdef pthread_t th
    tc_spinlock_lock(&g_bg_lock)
    g_bg_restart = 0
    if g_release_rate > 0 and not g_bg_running:
        if pthread_create(&th, NULL, _bg_main, NULL) == 0:
            pthread_detach(th)
            g_bg_running = 1
    tc_spinlock_unlock(&g_bg_lock)

# ---- statistics ------------------------------------------------------------------

cdef struct EngineStats:
    uint64_t bytes_in_use
    uint64_t small_in_use
    uint64_t heap_bytes
    uint64_t page_heap_free
    uint64_t released
    uint64_t central_free
    uint64_t transfer_free
    uint64_t thread_cache_free
    uint64_t span_overhead
    uint64_t metadata
    uint64_t metadata_mapped
    uint64_t released_background
    uint64_t released_total
    uint64_t large_in_use
    uint64_t large_allocs
    uint64_t large_frees
    uint64_t spans_in_use
    uint64_t thread_caches
    uint64_t thread_cache_structs

cdef struct ClassStats:
    uint64_t mallocs
    uint64_t frees
    uint64_t spans
    uint64_t span_bytes
    uint64_t central_objects
    uint64_t total_objects
    uint64_t transfer_objects

cdef void _collect(EngineStats *st, ClassStats *cs) noexcept nogil:
    """Gather the figures, each structure under its own lock in turn (a
    consistent total when no other thread is allocating)."""
    cdef int cl
    cdef int n = g_sizemap.num_classes
    cdef ThreadCache *tc
    cdef uint64_t m, f, size
    cdef ClassStats local[kMaxClasses]
    if cs == NULL:
        cs = local
    memset(st, 0, sizeof(EngineStats))
    memset(cs, 0, sizeof(ClassStats) * kMaxClasses)
    tc_spinlock_lock(&g_registry.lock)
    for cl in range(1, n):
        cs[cl].mallocs = tc_load_u64(&g_registry.retired_mallocs[cl])
        cs[cl].frees = tc_load_u64(&g_registry.retired_frees[cl])
    tc = g_registry.caches
    while tc != NULL:
        for cl in range(1, n):
            cs[cl].mallocs += freelist_mallocs(&tc.lists[cl])
            cs[cl].frees += tc_load_u64(&tc.lists[cl].frees)
        st.thread_cache_free += tc_load_u64(&tc.size)
        tc = tc.next
    st.thread_caches = g_registry.num_caches
    st.thread_cache_structs = g_registry.structs
    tc_spinlock_unlock(&g_registry.lock)
    for cl in range(1, n):
        size = g_sizemap.class_to_size[cl]
        tc_spinlock_lock(&g_transfer[cl].lock)
        cs[cl].transfer_objects = <uint64_t>g_transfer[cl].used * g_transfer[cl].batch
        tc_spinlock_unlock(&g_transfer[cl].lock)
        tc_spinlock_lock(&g_central[cl].lock)
        cs[cl].spans = g_central[cl].nspans
        cs[cl].span_bytes = g_central[cl].span_bytes
        cs[cl].central_objects = g_central[cl].free_objects
        cs[cl].total_objects = g_central[cl].total_objects
        tc_spinlock_unlock(&g_central[cl].lock)
        st.small_in_use += (cs[cl].mallocs - cs[cl].frees) * size
        st.transfer_free += cs[cl].transfer_objects * size
        st.central_free += cs[cl].central_objects * size
        st.span_overhead += cs[cl].span_bytes - cs[cl].total_objects * size
    tc_spinlock_lock(&g_heap.lock)
    st.heap_bytes = g_heap.system_bytes
    st.page_heap_free = g_heap.free_bytes
    st.released = g_heap.released_bytes
    st.released_background = g_heap.released_background
    st.released_total = g_heap.released_total
    st.large_in_use = g_heap.large_bytes
    st.large_allocs = g_heap.large_allocs
    st.large_frees = g_heap.large_frees
    st.spans_in_use = g_heap.small_spans + g_heap.large_spans
    tc_spinlock_unlock(&g_heap.lock)
    # In use: every arena allocation except pagemap leaves, plus the leaf
    # entries of heap pages (a class byte and a span pointer each). A leaf is
    # mapped whole (2.25 MiB for 2 GiB of address space) but only the entries
    # of pages the heap owns are ever written, so only those are resident.
    st.metadata = (tc_load_u64(&g_arena.used_bytes) - g_heap.pagemap.node_bytes
                   + (st.heap_bytes >> kPageShift) * (1 + sizeof(void *)))
    st.metadata_mapped = tc_load_u64(&g_arena.mapped_bytes)
    st.bytes_in_use = st.small_in_use + st.large_in_use

cdef dict _lock_dict(tc_spinlock_t *l):
    return {"acquisitions": tc_load_u64(&l.acquisitions), "contended": tc_load_u64(&l.contended),
            "spins": tc_load_u64(&l.spins), "wait_ns": tc_load_u64(&l.wait_ns)}

def stats():
    """A snapshot of the heap as a dict (see the README for every key).

    Thread-safe. The byte figures add up exactly when no thread is
    allocating: bytes_in_use + page_heap_free_bytes + page_heap_released_bytes
    + central_free_bytes + transfer_cache_free_bytes + thread_cache_free_bytes
    + span_overhead_bytes == heap_bytes.
    """
    cdef EngineStats st
    cdef ClassStats cs[kMaxClasses]
    cdef int cl
    with nogil:
        _collect(&st, cs)
    classes = []
    locks = {"page_heap": _lock_dict(&g_heap.lock), "thread_caches": _lock_dict(&g_registry.lock),
             "metadata": _lock_dict(&g_arena.lock)}
    for cl in range(1, g_sizemap.num_classes):
        size = g_sizemap.class_to_size[cl]
        classes.append({
            "class": cl, "size": size, "pages": g_sizemap.class_to_pages[cl],
            "batch": g_sizemap.num_objects_to_move[cl],
            "objects_per_span": g_sizemap.objects_per_span[cl],
            "objects_in_use": cs[cl].mallocs - cs[cl].frees,
            "mallocs": cs[cl].mallocs, "frees": cs[cl].frees, "spans": cs[cl].spans,
            "central_free_objects": cs[cl].central_objects,
            "transfer_free_objects": cs[cl].transfer_objects,
        })
        locks["central:%d" % size] = _lock_dict(&g_central[cl].lock)
        locks["transfer:%d" % size] = _lock_dict(&g_transfer[cl].lock)
    return {
        "bytes_in_use": st.bytes_in_use,
        "heap_bytes": st.heap_bytes,
        "page_heap_free_bytes": st.page_heap_free,
        "page_heap_released_bytes": st.released,
        "central_free_bytes": st.central_free,
        "transfer_cache_free_bytes": st.transfer_free,
        "thread_cache_free_bytes": st.thread_cache_free,
        "span_overhead_bytes": st.span_overhead,
        "metadata_bytes": st.metadata,
        "metadata_mapped_bytes": st.metadata_mapped,
        "thread_caches": st.thread_caches,
        "thread_cache_structs": st.thread_cache_structs,
        "spans_in_use": st.spans_in_use,
        "small_bytes_in_use": st.small_in_use,
        "large_bytes_in_use": st.large_in_use,
        "large_mallocs": st.large_allocs,
        "large_frees": st.large_frees,
        "memory_limit": g_heap.limit_bytes,
        "memory_limit_hard": bool(g_heap.limit_hard),
        "release_rate": g_release_rate,
        "background_released_bytes": st.released_background,
        "released_total_bytes": st.released_total,
        "size_classes": classes,
        "locks": locks,
    }

def _mib(n):
    return n / 1048576.0

def stats_text():
    """A readable report in the manner of TCMalloc's MallocExtension::GetStats."""
    cdef uint64_t normal[kMaxPages + 1]
    cdef uint64_t returned[kMaxPages + 1]
    s = stats()
    with nogil:
        pageheap_free_histogram(&g_heap, normal, returned)
    rows = [
        ("", "bytes_in_use", "Bytes in use by application"),
        ("+", "page_heap_free_bytes", "Bytes in page heap freelist"),
        ("+", "central_free_bytes", "Bytes in central cache freelist"),
        ("+", "transfer_cache_free_bytes", "Bytes in transfer cache freelist"),
        ("+", "thread_cache_free_bytes", "Bytes in thread cache freelists"),
        ("+", "span_overhead_bytes", "Bytes in span tails (no room for an object)"),
        ("+", "page_heap_released_bytes", "Bytes released to OS (aka unmapped)"),
    ]
    out = ["-" * 64]
    for sign, key, label in rows:
        out.append("MALLOC: %1s %15d (%9.1f MiB) %s" % (sign, s[key], _mib(s[key]), label))
    out.append("MALLOC:   ------------")
    out.append("MALLOC: = %15d (%9.1f MiB) Actual memory used (heap mapped from the OS)" % (s["heap_bytes"], _mib(s["heap_bytes"])))
    out.append("MALLOC:   %15d (%9.1f MiB) Bytes in malloc metadata (%.1f MiB mapped)"
               % (s["metadata_bytes"], _mib(s["metadata_bytes"]), _mib(s["metadata_mapped_bytes"])))
    out.append("MALLOC:   ------------")
    out.append("MALLOC:   %15d              Spans in use" % s["spans_in_use"])
    out.append("MALLOC:   %15d              Thread heaps in use" % s["thread_caches"])
    out.append("MALLOC:   %15d              Tcalloc page size" % kPageSize)
    if s["memory_limit"]:
        out.append("MALLOC:   %15d              Memory limit (%s)" % (s["memory_limit"], "hard" if s["memory_limit_hard"] else "soft"))
    out.append("-" * 64)
    out.append("Size classes in use (class, size, pages/span, batch, objects in use, mallocs, frees, spans):")
    for c in s["size_classes"]:
        if c["mallocs"] or c["spans"]:
            out.append("  class %3d [%7d B] %3d pg %3d batch %10d in use %12d mallocs %12d frees %6d spans"
                       % (c["class"], c["size"], c["pages"], c["batch"], c["objects_in_use"],
                          c["mallocs"], c["frees"], c["spans"]))
    out.append("-" * 64)
    out.append("Page heap free spans (pages: normal / returned):")
    for i in range(1, kMaxPages + 1):
        if normal[i] or returned[i]:
            out.append("  %4d pages: %6d normal %6d returned" % (i, normal[i], returned[i]))
    if normal[0] or returned[0]:
        out.append("  >%3d pages: %6d normal %6d returned" % (kMaxPages, normal[0], returned[0]))
    out.append("-" * 64)
    hot = sorted(s["locks"].items(), key=lambda kv: -kv[1]["wait_ns"])[:5]
    out.append("Locks by time waited (acquisitions, contended, spins, ms waited):")
    for name, d in hot:
        if d["acquisitions"]:
            out.append("  %-18s %12d %10d %12d %10.3f" % (name, d["acquisitions"], d["contended"],
                                                         d["spins"], d["wait_ns"] / 1e6))
    return "\n".join(out) + "\n"

# ---- control ---------------------------------------------------------------------

def release_free_memory():
    """Give free memory back to the OS; returns the bytes released.

    Flushes the calling thread's cache, moves every transfer cache's objects
    back to their spans (so spans that became empty return to the page heap),
    releases every free page-heap span with madvise(MADV_DONTNEED), and asks
    the other threads to flush their caches at their next slow-path call.
    """
    cdef size_t done
    with nogil:
        threadcache_request_flush_all(&g_registry)
        _reclaim()          # this thread's flush also clears its own request
        done = pageheap_release(&g_heap, <size_t>-1, 0)
    return done

def set_release_rate(bytes_per_second):
    """Release free page-heap memory in the background at this many bytes per
    second (0 stops it). The releaser thread starts only when a rate is set."""
    cdef uint64_t rate
    if isinstance(bytes_per_second, bool) or not isinstance(bytes_per_second, int):
        raise TypeError("release rate must be an int (bytes per second), not %s"
                        % type(bytes_per_second).__name__)
    if bytes_per_second < 0 or bytes_per_second >= 2 ** 63:
        raise ValueError("release rate must be between 0 and 2**63-1 bytes per second, got %d" % bytes_per_second)
    global g_release_rate
    rate = bytes_per_second
    with nogil:
        tc_spinlock_lock(&g_bg_lock)
        g_release_rate = rate
        tc_spinlock_unlock(&g_bg_lock)
        if rate:
            _bg_start()

def get_release_rate():
    """The background release rate in bytes per second (0: off)."""
    return g_release_rate

def set_memory_limit(nbytes, hard=False):
    """Limit the committed heap (mapped minus released bytes) to nbytes (0 or
    None: no limit). Soft: free memory is released to the OS first when the
    heap would pass it. Hard: allocations that would pass it fail (NULL and
    ENOMEM in C, MemoryError in Python)."""
    cdef uint64_t n
    if nbytes is None:
        nbytes = 0
    if isinstance(nbytes, bool) or not isinstance(nbytes, int):
        raise TypeError("memory limit must be an int number of bytes or None, not %s" % type(nbytes).__name__)
    if nbytes < 0 or nbytes >= 2 ** 63:
        raise ValueError("memory limit must be between 0 and 2**63-1 bytes, got %d" % nbytes)
    cdef int is_hard = 1 if hard else 0
    n = nbytes
    with nogil:
        pageheap_set_limit(&g_heap, n, is_hard)

def get_memory_limit():
    """(nbytes, hard): the current limit; nbytes 0 means none."""
    return (g_heap.limit_bytes, bool(g_heap.limit_hard))

def set_max_total_thread_cache_bytes(nbytes):
    """The budget shared by all thread caches (default 32 MiB)."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, int):
        raise TypeError("nbytes must be an int, not %s" % type(nbytes).__name__)
    if nbytes < 0 or nbytes >= 2 ** 62:
        raise ValueError("nbytes must be between 0 and 2**62-1, got %d" % nbytes)
    threadcache_set_overall_max(&g_registry, <uint64_t>nbytes)

def get_max_total_thread_cache_bytes():
    return g_registry.overall_max

def size_class_table():
    """[(class, size, pages, batch, objects_per_span)] for every size class."""
    return [(cl, g_sizemap.class_to_size[cl], g_sizemap.class_to_pages[cl],
             g_sizemap.num_objects_to_move[cl], g_sizemap.objects_per_span[cl])
            for cl in range(1, g_sizemap.num_classes)]

def size_class_of(size_t size):
    """The class (and its object size) a request of `size` bytes gets; (0, 0) if large."""
    if size > kMaxSmallSize:
        return (0, 0)
    cl = sizemap_class(&g_sizemap, size)
    return (cl, g_sizemap.class_to_size[cl])

def debug_enabled():
    """True when TCALLOC_DEBUG checks are on (build flag or environment)."""
    return bool(g_debug)

# ---- start-up ----------------------------------------------------------------------

cdef uint64_t _env_u64(const char *name, uint64_t dflt) noexcept nogil:
    cdef const char *v = getenv(name)
    if v == NULL or v[0] == 0:
        return dflt
    return strtoull(v, NULL, 0)

cdef int _init() except -1:
    global g_debug, g_release_rate
    cdef int cl
    cdef const char *dbg
    if sizemap_init(&g_sizemap) != 0:
        raise ImportError("tcalloc: size class table could not be built")
    arena_init(&g_arena)
    pageheap_init(&g_heap, &g_arena)
    for cl in range(1, g_sizemap.num_classes):
        central_init(&g_central[cl], cl, g_sizemap.class_to_size[cl], g_sizemap.class_to_pages[cl],
                     g_sizemap.objects_per_span[cl], &g_heap)
        if transfer_init(&g_transfer[cl], cl, g_sizemap.num_objects_to_move[cl],
                         g_sizemap.class_to_size[cl], &g_central[cl], &g_arena) != 0:
            raise MemoryError("tcalloc: no memory for the transfer caches")
    threadcache_registry_init(&g_registry, &g_sizemap, g_transfer, &g_arena)
    if pthread_key_create(&g_key, _thread_exit) != 0:
        raise ImportError("tcalloc: pthread_key_create failed")
    if pthread_atfork(_atfork_prepare, _atfork_parent, _atfork_child) != 0:
        raise ImportError("tcalloc: pthread_atfork failed")
    tc_spinlock_init(&g_bg_lock)
    dbg = getenv("TCALLOC_DEBUG")
    g_debug = 1 if (TCALLOC_DEBUG or (dbg != NULL and dbg[0] != 0 and dbg[0] != c'0')) else 0
    for cl in range(1, g_sizemap.num_classes):
        g_central[cl].wipe_new_spans = g_debug
    g_capi.abi_version = 1
    g_capi.malloc = _capi_malloc
    g_capi.free = _capi_free
    g_capi.calloc = _capi_calloc
    g_capi.realloc = _capi_realloc
    g_capi.aligned_alloc = _capi_aligned_alloc
    g_capi.usable_size = _capi_usable_size
    g_ext.abi_version = 1
    g_ext.owns = _capi_owns
    g_ext.bytes_in_use = _capi_bytes_in_use
    limit = _env_u64("TCALLOC_MEMORY_LIMIT", 0)
    if limit:
        pageheap_set_limit(&g_heap, limit, 1 if _env_u64("TCALLOC_MEMORY_LIMIT_HARD", 0) else 0)
    rate = _env_u64("TCALLOC_RELEASE_RATE", 0)
    if rate:
        g_release_rate = rate
        _bg_start()
    return 0

_init()

_C_API = PyCapsule_New(<void *>&g_capi, b"tcalloc._C_API", NULL)
_C_API_EXT = PyCapsule_New(<void *>&g_ext, b"tcalloc._C_API_EXT", NULL)
