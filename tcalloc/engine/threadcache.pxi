# Thread cache: one per thread, a singly linked free list per size class.
# The pop/push below are the allocation fast path; everything else here is
# the slow path: refill from / release to the transfer cache in batches, a
# per-list max length that slow-starts and shrinks after repeated overflow,
# and a byte budget per thread drawn from an overall budget, enforced by
# scavenging half of each list's low-water mark (the periodic flush).
#
# Thread safety: a ThreadCache is owned by one thread and its lists are
# touched by that thread only, with no lock. stats() on other threads reads
# `size` and the malloc/free counters with relaxed loads while the owner
# writes them with plain stores: aligned 8-byte accesses are single
# instructions on every 64-bit target, so a reader sees an old or a new
# value, never a torn one, and the fast path pays nothing for it (gperftools
# reads its per-thread stats the same way). Other threads may lower
# `max_size` or set `flush_requested` while holding the registry lock. The registry (list of
# caches, budgets, counters of exited threads) is under reg.lock, which is
# taken before any transfer/central lock, never after.
from libc.stdint cimport uint32_t, uint64_t, int64_t, uintptr_t
from libc.string cimport memset

ctypedef struct FreeList:         # 64 bytes: one cache line per class
    void *head
    uint32_t length
    uint32_t lowater              # lowest length since the last scavenge
    uint32_t max_length
    uint32_t overages
    uint32_t size                 # object size of the class
    uint32_t batch
    # Counters, owner-written, read by stats(). Objects are conserved on a
    # list: length = fetched + frees - mallocs - released, so mallocs is
    # derived (freelist_mallocs) and the malloc fast path counts nothing.
    uint64_t frees                # pushes (free fast path)
    uint64_t fetched              # objects brought in from the transfer cache
    uint64_t released             # objects sent back to it
    uint64_t _pad

ctypedef struct ThreadCache:
    FreeList lists[kMaxClasses]
    uint64_t size                 # bytes held in the lists
    uint64_t max_size             # this thread's budget
    ThreadCache *next
    ThreadCache *prev
    ThreadCacheRegistry *reg
    void *free_key                # copy of the registry's: one load less per free
    int num_classes
    int flush_requested
    uint64_t fetches
    uint64_t scavenges

ctypedef struct ThreadCacheRegistry:
    tc_spinlock_t lock
    ThreadCache *caches
    ThreadCache *free_caches      # recycled structs: metadata does not grow per thread
    ThreadCache *steal_cursor
    TransferCache *transfer       # indexed by class
    const SizeMap *sizemap
    MetaArena *arena
    void *free_key                # marks free blocks (second word); random per process
    int64_t unclaimed             # overall budget not handed to any thread
    uint64_t overall_max
    uint64_t per_thread_max
    uint64_t num_caches
    uint64_t caches_created
    uint64_t structs
    uint64_t retired_mallocs[kMaxClasses]   # counters of exited threads and
    uint64_t retired_frees[kMaxClasses]     # of cacheless allocations

cdef inline uint64_t freelist_mallocs(const FreeList *l) noexcept nogil:
    """Objects this list has handed out (exact for the owner; for another
    thread, exact once the owner is quiet)."""
    return (tc_load_u64(&l.fetched) + tc_load_u64(&l.frees)
            - tc_load_u64(&l.released) - tc_load_u32(&l.length))


cdef inline void *threadcache_pop(ThreadCache *tc, uint32_t cl) noexcept nogil:
    """An object of class cl, or NULL when even the central stores are out."""
    cdef FreeList *l = &tc.lists[cl]
    cdef void *p = l.head
    if TC_UNLIKELY(p == NULL):
        return threadcache_fetch(tc, cl)
    l.head = (<void **>p)[0]
    if TCALLOC_FREE_KEY and l.size > 8:
        (<void **>p)[1] = NULL    # drop the free-block key (see push)
    l.length -= 1
    if l.length < l.lowater:
        l.lowater = l.length
    tc.size -= l.size
    return p

cdef inline void threadcache_push(ThreadCache *tc, uint32_t cl, void *p) noexcept nogil:
    # Reads first, stores into the block last: a store through void** may
    # alias the cache's pointer fields, and the compiler would reload them.
    cdef FreeList *l = &tc.lists[cl]
    cdef void *head = l.head
    cdef uint32_t length = l.length + 1
    cdef uint32_t objsize = l.size
    cdef uint64_t size = tc.size + objsize
    cdef void *key = tc.free_key
    # Double free, cheaply (glibc's tcache does the same): a free block
    # carries the process's key in its second word and pop clears it, so a
    # block that already holds the key is probably on a free list: look.
    # Blocks of the 8-byte class have no second word; for them only the
    # block freed last is checked.
    if TC_UNLIKELY(p == head or (TCALLOC_FREE_KEY and objsize > 8 and (<void **>p)[1] == key)):
        threadcache_push_suspect(tc, cl, p)     # a tail call: no registers saved here
        return
    l.head = p
    l.length = length
    l.frees += 1
    tc.size = size
    if TCALLOC_FREE_KEY and objsize > 8:
        (<void **>p)[1] = key
    (<void **>p)[0] = head
    if TC_UNLIKELY(length > l.max_length or size > tc.max_size):
        threadcache_overflow(tc, cl)

# ---- implementation --------------------------------------------------------

cdef enum:
    kMaxDynamicFreeListLength = 8192
    kMaxOverages = 3
    kStealAmount = 64 * 1024
    kMinThreadCacheSize = 2 * kMaxSmallSize          # 512 KiB
    kDefaultPerThreadMax = 4 * 1024 * 1024
    kDefaultOverallMax = 32 * 1024 * 1024

cdef int threadcache_registry_init(ThreadCacheRegistry *reg, const SizeMap *sizemap,
                                   TransferCache *transfer, MetaArena *arena) noexcept nogil:
    memset(reg, 0, sizeof(ThreadCacheRegistry))
    tc_spinlock_init(&reg.lock)
    reg.sizemap = sizemap
    reg.transfer = transfer
    reg.arena = arena
    reg.overall_max = kDefaultOverallMax
    reg.per_thread_max = kDefaultPerThreadMax
    reg.unclaimed = kDefaultOverallMax
    # Any value an application is unlikely to store: mixed from the
    # registry's address (ASLR) and the clock.
    reg.free_key = <void *>((<uintptr_t>reg * <uintptr_t>0x9E3779B97F4A7C15UL) ^ tc_now_ns() ^ 0x5A5A5A5A5A5A5A5AUL)
    return 0

# ---- moving objects to the central stores ----------------------------------

cdef void _release(ThreadCache *tc, FreeList *l, uint32_t cl, uint32_t n) noexcept nogil:
    """Move n objects from the head of list l to the transfer cache, in
    batches of the class's batch size."""
    cdef void *head
    cdef void *tail
    cdef uint32_t k, i
    cdef TransferCache *t = &tc.reg.transfer[cl]
    if n > l.length:
        n = l.length
    if n == 0:
        return
    l.length -= n
    l.released += n
    if l.length < l.lowater:
        l.lowater = l.length
    tc.size -= <uint64_t>n * l.size
    while n > 0:
        k = l.batch if n > l.batch else n
        head = l.head
        tail = head
        for i in range(k - 1):
            tail = (<void **>tail)[0]
        l.head = (<void **>tail)[0]
        (<void **>tail)[0] = NULL
        transfer_insert_range(t, head, tail, <int>k)
        n -= k

cdef void threadcache_push_suspect(ThreadCache *tc, uint32_t cl, void *p) noexcept nogil:
    """p is the list head or carries the free key: abort if it is on this
    thread's list (a double free); otherwise the key was the application's
    data, so clear it and push normally."""
    cdef FreeList *l = &tc.lists[cl]
    cdef void *q = l.head
    cdef uint32_t i
    for i in range(l.length):
        if q == p:
            tc_fatal_ptr("double free detected", p)
        q = (<void **>q)[0]
    (<void **>p)[1] = NULL
    threadcache_push(tc, cl, p)

cdef void *threadcache_fetch(ThreadCache *tc, uint32_t cl) noexcept nogil:
    """List cl is empty: refill it with up to one batch, return one object."""
    cdef FreeList *l = &tc.lists[cl]
    cdef void *head
    cdef void *tail
    cdef uint32_t want, newmax
    cdef int got
    if TC_UNLIKELY(tc_load_int(&tc.flush_requested)):
        threadcache_flush(tc)
    want = l.max_length if l.max_length < l.batch else l.batch
    got = transfer_remove_range(&tc.reg.transfer[cl], &head, &tail, <int>want)
    if got == 0:
        return NULL
    (<void **>tail)[0] = NULL
    l.head = (<void **>head)[0]
    if TCALLOC_FREE_KEY and l.size > 8:
        (<void **>head)[1] = NULL
    l.length = <uint32_t>got - 1
    l.fetched += <uint64_t>got       # the one returned counts as a malloc (see freelist_mallocs)
    tc.size += <uint64_t>(got - 1) * l.size
    tc.fetches += 1
    # Slow start: grow by one per fetch up to a batch, then by a batch.
    if l.max_length < l.batch:
        l.max_length += 1
    else:
        newmax = l.max_length + l.batch
        if newmax > kMaxDynamicFreeListLength:
            newmax = kMaxDynamicFreeListLength
        newmax -= newmax % l.batch
        l.max_length = newmax
    return head

cdef void _list_too_long(ThreadCache *tc, FreeList *l, uint32_t cl) noexcept nogil:
    _release(tc, l, cl, l.batch)
    if l.max_length < l.batch:
        l.max_length += 1
    elif l.max_length > l.batch:
        # Repeatedly over: shrink, or this much memory stays parked here.
        l.overages += 1
        if l.overages > kMaxOverages:
            l.max_length -= l.batch
            l.overages = 0

cdef void _increase_limit(ThreadCache *tc) noexcept nogil:
    """Grow this thread's budget by a step: from the unclaimed overall budget,
    else stolen from another thread's (round robin)."""
    cdef ThreadCacheRegistry *reg = tc.reg
    cdef ThreadCache *other
    cdef int tries
    tc_spinlock_lock(&reg.lock)
    if tc.max_size + kStealAmount <= reg.per_thread_max:
        if reg.unclaimed >= kStealAmount:
            reg.unclaimed -= kStealAmount
            tc_store_u64(&tc.max_size, tc.max_size + kStealAmount)
        else:
            for tries in range(10):
                other = reg.steal_cursor
                if other == NULL:
                    other = reg.caches
                if other == NULL:
                    break
                reg.steal_cursor = other.next
                if other != tc and tc_load_u64(&other.max_size) > kMinThreadCacheSize:
                    tc_store_u64(&other.max_size, other.max_size - kStealAmount)
                    tc_store_u64(&tc.max_size, tc.max_size + kStealAmount)
                    break
    tc_spinlock_unlock(&reg.lock)

cdef void _scavenge(ThreadCache *tc) noexcept nogil:
    """Over budget: give back half of what each list did not use since the
    last scavenge (its low-water mark)."""
    cdef int cl
    cdef FreeList *l
    cdef uint32_t drop
    for cl in range(1, tc.num_classes):
        l = &tc.lists[cl]
        if l.lowater > 0:
            drop = l.lowater // 2 if l.lowater > 1 else 1
            _release(tc, l, cl, drop)
            if l.max_length > l.batch:
                l.max_length = l.max_length - l.batch if l.max_length - l.batch > l.batch else l.batch
        l.lowater = l.length
    tc.scavenges += 1
    _increase_limit(tc)

cdef void threadcache_overflow(ThreadCache *tc, uint32_t cl) noexcept nogil:
    cdef FreeList *l = &tc.lists[cl]
    if TC_UNLIKELY(tc_load_int(&tc.flush_requested)):
        threadcache_flush(tc)
        return
    if l.length > l.max_length:
        _list_too_long(tc, l, cl)
    if tc.size > tc_load_u64(&tc.max_size):
        _scavenge(tc)

cdef void threadcache_flush(ThreadCache *tc) noexcept nogil:
    """Give every cached object back (release_free_memory, thread exit)."""
    cdef int cl
    tc_store_int(&tc.flush_requested, 0)
    for cl in range(1, tc.num_classes):
        _release(tc, &tc.lists[cl], cl, tc.lists[cl].length)
        tc.lists[cl].lowater = 0

# ---- lifetime ------------------------------------------------------------

cdef ThreadCache *threadcache_create(ThreadCacheRegistry *reg) noexcept nogil:
    """A cache for the calling thread, linked into the registry; NULL when
    metadata memory is out (the caller then allocates without a cache)."""
    cdef ThreadCache *tc
    cdef int cl
    tc_spinlock_lock(&reg.lock)
    tc = reg.free_caches
    if tc != NULL:
        reg.free_caches = tc.next
    else:
        tc = <ThreadCache *>arena_alloc(reg.arena, sizeof(ThreadCache), 64)
        if tc == NULL:
            tc_spinlock_unlock(&reg.lock)
            return NULL
        reg.structs += 1
    memset(tc, 0, sizeof(ThreadCache))
    tc.reg = reg
    tc.free_key = reg.free_key
    tc.num_classes = reg.sizemap.num_classes
    for cl in range(1, tc.num_classes):
        tc.lists[cl].size = reg.sizemap.class_to_size[cl]
        tc.lists[cl].batch = reg.sizemap.num_objects_to_move[cl]
        tc.lists[cl].max_length = 1
    # Start with one step of budget if the overall budget has it, else the
    # minimum (the overall budget then runs a deficit, as in gperftools).
    if reg.unclaimed >= kStealAmount:
        tc.max_size = kStealAmount
        reg.unclaimed -= kStealAmount
    else:
        tc.max_size = kMinThreadCacheSize
        reg.unclaimed -= kMinThreadCacheSize
    tc.prev = NULL
    tc.next = reg.caches
    if reg.caches != NULL:
        reg.caches.prev = tc
    reg.caches = tc
    reg.num_caches += 1
    reg.caches_created += 1
    tc_spinlock_unlock(&reg.lock)
    return tc

cdef void threadcache_destroy(ThreadCache *tc) noexcept nogil:
    """Thread exit: flush everything, fold the counters into the registry,
    return the budget, recycle the struct."""
    cdef ThreadCacheRegistry *reg = tc.reg
    cdef int cl
    threadcache_flush(tc)
    tc_spinlock_lock(&reg.lock)
    for cl in range(1, tc.num_classes):
        tc_atomic_add_u64(&reg.retired_mallocs[cl], freelist_mallocs(&tc.lists[cl]))
        tc_atomic_add_u64(&reg.retired_frees[cl], tc.lists[cl].frees)
    reg.unclaimed += <int64_t>tc.max_size
    if tc.prev != NULL:
        tc.prev.next = tc.next
    else:
        reg.caches = tc.next
    if tc.next != NULL:
        tc.next.prev = tc.prev
    if reg.steal_cursor == tc:
        reg.steal_cursor = tc.next
    reg.num_caches -= 1
    tc.next = reg.free_caches
    reg.free_caches = tc
    tc_spinlock_unlock(&reg.lock)

cdef void threadcache_request_flush_all(ThreadCacheRegistry *reg) noexcept nogil:
    """Ask every thread to flush its cache at its next slow-path call."""
    cdef ThreadCache *tc
    tc_spinlock_lock(&reg.lock)
    tc = reg.caches
    while tc != NULL:
        tc_store_int(&tc.flush_requested, 1)
        tc = tc.next
    tc_spinlock_unlock(&reg.lock)

cdef void threadcache_set_overall_max(ThreadCacheRegistry *reg, uint64_t nbytes) noexcept nogil:
    tc_spinlock_lock(&reg.lock)
    reg.unclaimed += <int64_t>nbytes - <int64_t>reg.overall_max
    reg.overall_max = nbytes
    tc_spinlock_unlock(&reg.lock)

# ---- without a cache (thread exit in progress, metadata exhausted) --------

cdef void *threadcache_alloc_uncached(ThreadCacheRegistry *reg, uint32_t cl) noexcept nogil:
    cdef void *head
    cdef void *tail
    if transfer_remove_range(&reg.transfer[cl], &head, &tail, 1) == 0:
        return NULL
    if TCALLOC_FREE_KEY and reg.sizemap.class_to_size[cl] > 8:
        (<void **>head)[1] = NULL
    tc_atomic_add_u64(&reg.retired_mallocs[cl], 1)
    return head

cdef void threadcache_free_uncached(ThreadCacheRegistry *reg, uint32_t cl, void *p) noexcept nogil:
    (<void **>p)[0] = NULL
    if TCALLOC_FREE_KEY and reg.sizemap.class_to_size[cl] > 8:
        (<void **>p)[1] = reg.free_key
    transfer_insert_range(&reg.transfer[cl], p, p, 1)
    tc_atomic_add_u64(&reg.retired_frees[cl], 1)
