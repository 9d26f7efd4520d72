# Central free list: per size class, the spans lent to that class, and the
# free objects inside them. Objects leave in chains (singly linked through
# their first word); a span whose objects have all come back returns to the
# page heap.
#
# Thread safety: one spinlock per class (c.lock), taken inside the functions
# below. Lock order: the page-heap lock may be taken while holding it, but
# these functions drop it around page-heap calls anyway, so a central lock is
# never held across an mmap or madvise. Never hold two central locks.
from libc.stdint cimport uint32_t, uint64_t, int64_t, uintptr_t
from libc.string cimport memset

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

# ---- implementation --------------------------------------------------------

cdef enum:
    kCacheLine = 64
    # A thread cache's carve of never-used objects ends where a cache line
    # starts (central_remove_range's whole_lines) for objects below this
    # size; a bigger object covers four lines or more, and shares at most
    # the ones at its ends.
    kWholeLinesBelow = 256

cdef void central_init(CentralFreeList *c, uint32_t cl, uint32_t size, uint32_t pages,
                       uint32_t objects_per_span, PageHeap *heap) noexcept nogil:
    memset(c, 0, sizeof(CentralFreeList))
    tc_spinlock_init(&c.lock)
    c.cl = cl
    c.size = size
    c.pages = pages
    c.objects_per_span = objects_per_span
    c.heap = heap

cdef inline bint _exhausted(const Span *s) noexcept nogil:
    return s.freelist == NULL and s.bump >= s.limit

cdef bint _populate(CentralFreeList *c) noexcept nogil:
    """Get a new span from the page heap (lock dropped meanwhile). Called and
    returns with c.lock held."""
    cdef Span *s
    cdef uint64_t objects
    tc_spinlock_unlock(&c.lock)
    s = pageheap_new(c.heap, c.pages, c.cl)
    tc_spinlock_lock(&c.lock)
    if s == NULL:
        return 0
    # Objects are carved lazily from a bump pointer: a new span's pages are
    # not touched until its objects are used.
    objects = (s.npages << kPageShift) // c.size
    if c.wipe_new_spans and s.needzero:
        # Debug mode: the pages may hold another class's poison, which the
        # checks would take for a block of this class freed and overwritten.
        memset(<void *>span_addr(s), 0, s.npages << kPageShift)
    s.freelist = NULL
    s.refcount = 0
    s.bump = span_addr(s)
    s.limit = s.bump + objects * c.size
    span_list_push(&c.nonempty, s)
    c.nspans += 1
    c.span_bytes += s.npages << kPageShift
    c.spans_created += 1
    tc_store_u64(&c.total_objects, c.total_objects + objects)
    tc_store_u64(&c.free_objects, c.free_objects + objects)
    return 1

cdef int central_remove_range(CentralFreeList *c, void **head, void **tail, int n,
                              bint whole_lines) noexcept nogil:
    """Take up to n objects as a chain head..tail (with whole_lines, maybe
    a few more). Returns how many (0: out of memory; the chain is then
    untouched).

    whole_lines (a thread cache's refill): the objects carved from a span's
    never-used range run on to the next cache-line boundary, at most
    64 / gcd(size, 64) - 1 more than n, for objects below kWholeLinesBelow.
    Two thread caches' fresh objects then never share a line. Without it,
    the first object each of two threads fetched (slow start asks for one)
    sat side by side, and two threads writing their own objects bounced the
    line between their cores (the lab's cache-thrash)."""
    cdef int got = 0
    cdef int k
    cdef Span *s
    cdef void *obj
    cdef void *first = NULL
    cdef void *last = NULL
    cdef uintptr_t p, end
    cdef uintptr_t size = c.size
    tc_spinlock_lock(&c.lock)
    while got < n:
        s = c.nonempty
        if s == NULL:
            if not _populate(c):
                break
            continue
        k = 0
        if s.freelist != NULL:
            # The span's free list is already a chain: take its first
            # objects as they stand, reading one link each, writing none.
            obj = s.freelist
            k = 1
            while k < n - got and (<void **>obj)[0] != NULL:
                obj = (<void **>obj)[0]
                k += 1
            if last == NULL:
                first = s.freelist
            else:
                (<void **>last)[0] = s.freelist
            s.freelist = (<void **>obj)[0]
            last = obj
        if got + k < n and s.bump < s.limit:
            # Never-used objects: linked in one tight pass over the bump
            # range (the cold heap's path: one store per object, no branch
            # per object but the loop's).
            p = s.bump
            end = p + <uintptr_t>(n - got - k) * size
            if end > s.limit:
                end = s.limit
            if whole_lines and size < kWholeLinesBelow:
                while (end & (kCacheLine - 1)) != 0 and end + size <= s.limit:
                    end += size
                TC_ASSERT((end & (kCacheLine - 1)) == 0 or end + size > s.limit,
                          "central_remove_range: a refill's carve ends inside a cache line")
            if last == NULL:
                first = <void *>p
            else:
                (<void **>last)[0] = <void *>p
            k += <int>((end - p) // size)
            s.bump = end
            end -= size
            while p < end:
                (<void **>p)[0] = <void *>(p + size)
                p += size
            last = <void *>end
        s.refcount += <uint32_t>k
        TC_ASSERT(s.refcount <= (s.limit - span_addr(s)) // size,
                  "central_remove_range: a span lent more objects than it holds")
        got += k
        if _exhausted(s):
            span_list_remove(&c.nonempty, s)
            span_list_push(&c.full, s)
    if got:
        (<void **>last)[0] = NULL
        tc_store_u64(&c.free_objects, c.free_objects - got)
    tc_spinlock_unlock(&c.lock)
    head[0] = first
    tail[0] = last
    return got

cdef void central_insert_range(CentralFreeList *c, void *head, int n) noexcept nogil:
    """Take back a chain of n objects of this class (NULL-terminated or not:
    exactly n are read). Spans left with no object out go back to the page heap."""
    cdef void *obj = head
    cdef void *nxt
    cdef Span *s = NULL
    cdef Span *done = NULL
    cdef int i
    cdef uintptr_t off, page
    cdef int64_t freed = 0            # net change of c.free_objects, stored once
    tc_spinlock_lock(&c.lock)
    for i in range(n):
        nxt = (<void **>obj)[0]
        page = <uintptr_t>obj >> kPageShift
        # A chain's objects mostly come from one span in a row (carved
        # together, freed together): the pagemap is read, and the span
        # checked, only when an object leaves the last span.
        if s == NULL or page - s.start >= s.npages:
            s = pagemap_span(&c.heap.pagemap, page)
            if s == NULL or s.location != SPAN_IN_USE or s.sizeclass != c.cl:
                tc_spinlock_unlock(&c.lock)
                tc_fatal_ptr("free(): object does not belong to its size class; heap corrupted", obj)
        if TCALLOC_DEBUG:
            off = <uintptr_t>obj - span_addr(s)
            if off % c.size != 0 or <uintptr_t>obj >= s.limit or s.refcount == 0:
                tc_spinlock_unlock(&c.lock)
                tc_fatal_ptr("free(): invalid pointer (not the start of a block)", obj)
        if s.refcount == 0:
            # More objects coming back than went out: a double free that
            # slipped past the thread cache's checks.
            tc_spinlock_unlock(&c.lock)
            tc_fatal_ptr("double free detected (span has no object out)", obj)
        if _exhausted(s):
            span_list_remove(&c.full, s)
            span_list_push(&c.nonempty, s)
        (<void **>obj)[0] = s.freelist
        s.freelist = obj
        s.refcount -= 1
        if s.refcount == 0:
            # Every object is back: the span goes to the page heap after the
            # lock is dropped (chained through .next, which we own now).
            span_list_remove(&c.nonempty, s)
            c.nspans -= 1
            c.span_bytes -= s.npages << kPageShift
            c.spans_returned += 1
            freed -= <int64_t>(((s.limit - span_addr(s)) // c.size) - 1)
            tc_store_u64(&c.total_objects, c.total_objects - (s.limit - span_addr(s)) // c.size)
            s.next = done
            done = s
            s = NULL                  # no later object can be in it
        else:
            freed += 1
        obj = nxt
    tc_store_u64(&c.free_objects, <uint64_t>(<int64_t>c.free_objects + freed))
    TC_ASSERT(c.free_objects <= c.total_objects,
              "central_insert_range: more free objects than the spans hold")
    tc_spinlock_unlock(&c.lock)
    while done != NULL:
        s = done
        done = s.next
        pageheap_delete(c.heap, s)
