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
from libc.stdint cimport uint32_t, uint64_t, int64_t
from tcalloc.common cimport (tc_spinlock_t, kMaxClasses, TC_UNLIKELY, tc_inc_owned, TCALLOC_FREE_KEY,
                             tc_store_u64, tc_load_u64, tc_load_u32, tc_load_int, tc_fatal_ptr)
from tcalloc.sizemap cimport SizeMap
from tcalloc.transfer cimport TransferCache
from tcalloc.arena cimport MetaArena

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

cdef void *threadcache_fetch(ThreadCache *tc, uint32_t cl) noexcept nogil
cdef void threadcache_overflow(ThreadCache *tc, uint32_t cl) noexcept nogil
cdef void threadcache_push_suspect(ThreadCache *tc, uint32_t cl, void *p) noexcept nogil

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

cdef int threadcache_registry_init(ThreadCacheRegistry *reg, const SizeMap *sizemap,
                                   TransferCache *transfer, MetaArena *arena) noexcept nogil
cdef ThreadCache *threadcache_create(ThreadCacheRegistry *reg) noexcept nogil
cdef void threadcache_destroy(ThreadCache *tc) noexcept nogil
cdef void threadcache_flush(ThreadCache *tc) noexcept nogil
cdef void threadcache_request_flush_all(ThreadCacheRegistry *reg) noexcept nogil
cdef void threadcache_set_overall_max(ThreadCacheRegistry *reg, uint64_t nbytes) noexcept nogil
cdef void *threadcache_alloc_uncached(ThreadCacheRegistry *reg, uint32_t cl) noexcept nogil
cdef void threadcache_free_uncached(ThreadCacheRegistry *reg, uint32_t cl, void *p) noexcept nogil
