# Page heap: whole spans of pages. Free spans sit on exact-length lists
# (1..kMaxPages pages) or, above that, in a best-fit tree ordered by
# (length, address); each in a "normal" (backed by memory) and a "returned"
# (released to the OS with madvise) variant. Allocation splits, free merges
# with both neighbours of the same kind. Memory fresh from mmap starts out as
# "returned": it is not resident until touched, so the stats match RSS.
#
# Thread safety: ONE global spinlock (h.lock), taken inside every function
# below. Lock order: a central free list's lock may be held while calling in
# here; nothing in here takes any lock but the metadata arena's.
from libc.stdint cimport uint32_t, uint64_t, uintptr_t
from tcalloc.common cimport tc_spinlock_t, kMaxPages
from tcalloc.span cimport Span
from tcalloc.pagemap cimport Pagemap
from tcalloc.arena cimport MetaArena

cdef enum:
    kMinGrowPages = 128            # grow the heap by at least 1 MiB per mmap

ctypedef struct PageHeap:
    tc_spinlock_t lock
    Pagemap pagemap
    MetaArena *arena
    Span *normal[kMaxPages + 1]
    Span *returned[kMaxPages + 1]
    Span *large_normal            # best-fit trees (treaps) for > kMaxPages
    Span *large_returned
    Span *span_freelist           # recycled Span structs
    uint64_t system_bytes         # mapped from the OS for the heap
    uint64_t free_bytes           # free, backed ("page_heap_free_bytes")
    uint64_t released_bytes       # free, released to the OS
    uint64_t small_span_bytes     # spans lent to central free lists
    uint64_t large_bytes          # large allocations in use
    uint64_t small_spans
    uint64_t large_spans
    uint64_t large_allocs
    uint64_t large_frees
    uint64_t span_structs         # Span structs made (metadata)
    uint64_t grows
    uintptr_t last_grow           # lowest address mapped so far (growth goes down)
    uint64_t released_total       # bytes ever madvise'd away
    uint64_t released_background  # ... of which by the background releaser
    uint64_t limit_bytes          # 0: no limit (committed = system - released)
    int limit_hard
    int _pad

cdef void pageheap_init(PageHeap *h, MetaArena *arena) noexcept nogil
cdef Span *pageheap_new(PageHeap *h, size_t npages, uint32_t cl) noexcept nogil
cdef Span *pageheap_new_aligned(PageHeap *h, size_t npages, size_t align_pages) noexcept nogil
cdef void pageheap_delete(PageHeap *h, Span *s) noexcept nogil
cdef int pageheap_resize(PageHeap *h, Span *s, size_t npages) noexcept nogil
cdef size_t pageheap_release(PageHeap *h, size_t nbytes, bint background) noexcept nogil
cdef void pageheap_set_limit(PageHeap *h, uint64_t nbytes, int hard) noexcept nogil
cdef void pageheap_free_histogram(PageHeap *h, uint64_t *normal, uint64_t *returned) noexcept nogil
