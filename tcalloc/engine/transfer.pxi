# Transfer cache: per size class, a small stack of whole batches (pre-linked
# chains of exactly `batch` objects) passed between thread caches without
# touching spans: one thread frees a batch, another takes it, each at O(1)
# under the lock. When it is full or empty, batches go to / come from the
# central free list.
#
# Thread safety: one spinlock per class (t.lock), held only for the O(1) slot
# operation and never while calling the central free list.
from libc.stdint cimport uint32_t, uint64_t

ctypedef struct TransferBatch:
    void *head
    void *tail

ctypedef struct TransferCache:
    tc_spinlock_t lock
    uint32_t cl
    uint32_t batch
    int used                      # batches held
    int capacity
    TransferBatch *slots          # from the metadata arena
    CentralFreeList *central
    uint64_t insert_hits
    uint64_t insert_misses
    uint64_t remove_hits
    uint64_t remove_misses

# ---- implementation --------------------------------------------------------

cdef enum:
    kTransferBytes = 512 * 1024   # per class: at most this much parked here...
    kMaxSlots = 64                # ...and at most this many batches
    kMinSlots = 2

cdef int transfer_init(TransferCache *t, uint32_t cl, uint32_t batch, uint32_t size,
                       CentralFreeList *central, void *arena) noexcept nogil:
    cdef long cap = kTransferBytes // (<long>batch * size)
    if cap < kMinSlots:
        cap = kMinSlots
    if cap > kMaxSlots:
        cap = kMaxSlots
    tc_spinlock_init(&t.lock)
    t.cl = cl
    t.batch = batch
    t.used = 0
    t.capacity = <int>cap
    t.central = central
    t.insert_hits = t.insert_misses = t.remove_hits = t.remove_misses = 0
    t.slots = <TransferBatch *>arena_alloc(<MetaArena *>arena, sizeof(TransferBatch) * cap, 16)
    if t.slots == NULL:
        t.capacity = 0
        return -1
    return 0

cdef int transfer_remove_range(TransferCache *t, void **head, void **tail, int n,
                               bint whole_lines) noexcept nogil:
    """Up to n objects as a chain; a whole batch in O(1) when one is parked.
    whole_lines: see central_remove_range (a thread cache's refill)."""
    if n == <int>t.batch:
        tc_spinlock_lock(&t.lock)
        TC_ASSERT(0 <= t.used <= t.capacity, "transfer cache: slot count out of range")
        if t.used > 0:
            t.used -= 1
            head[0] = t.slots[t.used].head
            tail[0] = t.slots[t.used].tail
            tc_inc_owned(&t.remove_hits, 1)
            tc_spinlock_unlock(&t.lock)
            return n
        tc_inc_owned(&t.remove_misses, 1)
        tc_spinlock_unlock(&t.lock)
    return central_remove_range(t.central, head, tail, n, whole_lines)

cdef void transfer_insert_range(TransferCache *t, void *head, void *tail, int n) noexcept nogil:
    """Give back a chain of n objects."""
    if n == <int>t.batch:
        tc_spinlock_lock(&t.lock)
        TC_ASSERT(0 <= t.used <= t.capacity, "transfer cache: slot count out of range")
        if t.used < t.capacity:
            t.slots[t.used].head = head
            t.slots[t.used].tail = tail
            t.used += 1
            tc_inc_owned(&t.insert_hits, 1)
            tc_spinlock_unlock(&t.lock)
            return
        tc_inc_owned(&t.insert_misses, 1)
        tc_spinlock_unlock(&t.lock)
    central_insert_range(t.central, head, n)

cdef void transfer_drain(TransferCache *t) noexcept nogil:
    """Move every parked batch to the central free list (so spans can empty)."""
    cdef TransferBatch b
    while True:
        tc_spinlock_lock(&t.lock)
        if t.used == 0:
            tc_spinlock_unlock(&t.lock)
            return
        t.used -= 1
        b = t.slots[t.used]
        tc_spinlock_unlock(&t.lock)
        central_insert_range(t.central, b.head, t.batch)
