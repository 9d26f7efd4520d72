# Transfer cache: per size class, a small stack of whole batches (pre-linked
# chains of exactly `batch` objects) passed between thread caches without
# touching spans: one thread frees a batch, another takes it, each at O(1)
# under the lock. When it is full or empty, batches go to / come from the
# central free list.
#
# Thread safety: one spinlock per class (t.lock), held only for the O(1) slot
# operation and never while calling the central free list.
from libc.stdint cimport uint32_t, uint64_t
from tcalloc.common cimport tc_spinlock_t
from tcalloc.central cimport CentralFreeList

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

cdef int transfer_init(TransferCache *t, uint32_t cl, uint32_t batch, uint32_t size,
                       CentralFreeList *central, void *arena) noexcept nogil
cdef int transfer_remove_range(TransferCache *t, void **head, void **tail, int n) noexcept nogil
cdef void transfer_insert_range(TransferCache *t, void *head, void *tail, int n) noexcept nogil
cdef void transfer_drain(TransferCache *t) noexcept nogil
