# Span: a run of contiguous pages, either one large allocation, or carved into
# objects of one size class, or free in the page heap.
#
# Thread safety: a span's fields belong to whoever owns the span: the page
# heap (under its lock) while it is free or being split/merged; its central
# free list (under that list's lock) while it holds small objects; nobody
# writes a large in-use span except the page heap when it is freed.
from libc.stdint cimport uint8_t, uint32_t, uintptr_t

cdef enum:
    SPAN_IN_USE = 0
    SPAN_ON_NORMAL = 1        # free, pages still backed by memory
    SPAN_ON_RETURNED = 2      # free, pages released to the OS (read as zeros)
    SPAN_DEAD = 3             # struct recycled; any pagemap entry still naming it is stale

ctypedef struct Span:
    uintptr_t start           # first page id (address >> kPageShift)
    size_t npages
    Span *next                # list links (page-heap free list or central list)
    Span *prev
    Span *left                # best-fit tree links (large free spans only)
    Span *right
    void *freelist            # small: freed objects of this span
    uintptr_t bump            # small: next never-used object (carved lazily, so
    uintptr_t limit           #   a new span's pages are not touched up front)
    uint32_t refcount         # small: objects handed out of the span
    uint8_t sizeclass         # 0: large or free
    uint8_t location          # SPAN_*
    uint8_t needzero          # 0: every byte reads as zero (fresh or released)
    uint8_t in_tree           # 1: in a page-heap best-fit tree, else in a list

cdef inline uintptr_t span_addr(const Span *s) noexcept nogil:
    return s.start << 13

cdef inline bint span_contains(const Span *s, uintptr_t page) noexcept nogil:
    return s.start <= page < s.start + s.npages

# Doubly linked span lists (NULL-terminated), used by the page heap's free
# lists and the central free lists; the caller holds the list owner's lock.
cdef inline void span_list_push(Span **head, Span *s) noexcept nogil:
    s.prev = NULL
    s.next = head[0]
    if head[0] != NULL:
        head[0].prev = s
    head[0] = s

cdef inline void span_list_remove(Span **head, Span *s) noexcept nogil:
    if s.prev != NULL:
        s.prev.next = s.next
    else:
        head[0] = s.next
    if s.next != NULL:
        s.next.prev = s.prev
    s.next = NULL
    s.prev = NULL
