# Central free list: per size class, the spans lent to that class, and the
# free objects inside them. Objects leave in chains (singly linked through
# their first word); a span whose objects have all come back returns to the
# page heap.
#
# Thread safety: one spinlock per class (c.lock), taken inside the functions
# below. Lock order: the page-heap lock may be taken while holding it, but
# these functions drop it around page-heap calls anyway, so a central lock is
# never held across an mmap or madvise. Never hold two central locks.
from libc.stdint cimport uint32_t, uint64_t
from tcalloc.common cimport tc_spinlock_t
from tcalloc.span cimport Span
from tcalloc.pageheap cimport PageHeap

ctypedef struct CentralFreeList:
    tc_spinlock_t lock
    uint32_t cl
    uint32_t size
    uint32_t pages
    uint32_t objects_per_span
    int wipe_new_spans            # debug mode: clear a span's pages when it is carved
    PageHeap *heap
    Span *nonempty                # spans with free or never-used objects
    Span *full                    # spans with every object handed out
    uint64_t nspans
    uint64_t span_bytes
    uint64_t free_objects         # free (listed or never used) in its spans
    uint64_t total_objects        # objects its spans hold in all
    uint64_t spans_created
    uint64_t spans_returned

cdef void central_init(CentralFreeList *c, uint32_t cl, uint32_t size, uint32_t pages,
                       uint32_t objects_per_span, PageHeap *heap) noexcept nogil
cdef int central_remove_range(CentralFreeList *c, void **head, void **tail, int n) noexcept nogil
cdef void central_insert_range(CentralFreeList *c, void *head, int n) noexcept nogil
