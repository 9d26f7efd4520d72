# ---- debug mode (TCALLOC_DEBUG=1 or a TCALLOC_DEBUG build) ----------------------
# Small blocks bypass the thread and transfer caches: every free object is
# then either on its span's free list or never handed out, so a double free
# is found by looking there, on every path. Freed blocks are poisoned from
# byte 16 on (the first word is the free-list link, the second the free-block
# key); the poison is verified
# when the block is reused and when a neighbour is freed, which catches
# writes after free and overruns into free neighbours. realloc and
# usable_size check their pointer the same way as free (slowpath.pxi).

cdef enum:
    kPoisonFree = 0xDB          # in freed blocks
    kPoisonAlloc = 0xCD         # in new blocks (malloc, not calloc)
    kPoisonFrom = 16            # bytes before this hold the link and the key

cdef enum:                      # which call is checking a pointer (its messages)
    kOpFree = 0
    kOpRealloc = 1
    kOpUsableSize = 2

cdef inline const char *_op_msg(int op, const char *on_free, const char *on_realloc,
                                const char *on_usable_size) noexcept nogil:
    return on_free if op == kOpFree else on_realloc if op == kOpRealloc else on_usable_size

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

cdef void _debug_check_small(void *p, uint32_t cl, int op) noexcept nogil:
    """p, passed to free, realloc or usable_size (op), must be the start of a
    block handed out of its span, not free, and its free neighbours must
    still hold their poison."""
    cdef Span *s = pagemap_span(&g_heap.pagemap, <uintptr_t>p >> kPageShift)
    cdef size_t size = g_sizemap.class_to_size[cl]
    cdef CentralFreeList *c = &g_central[cl]
    cdef uintptr_t off, q
    cdef int k
    if s == NULL or s.location != SPAN_IN_USE or s.sizeclass != cl:
        tc_fatal_ptr(_op_msg(op, "free(): invalid pointer (pagemap and span disagree)",
                             "realloc(): invalid pointer (pagemap and span disagree)",
                             "usable_size(): invalid pointer (pagemap and span disagree)"), p)
    off = <uintptr_t>p - span_addr(s)
    if off % size != 0 or <uintptr_t>p >= s.bump:
        tc_fatal_ptr(_op_msg(op, "free(): invalid pointer (not the start of a block)",
                             "realloc(): invalid pointer (not the start of a block)",
                             "usable_size(): invalid pointer (not the start of a block)"), p)
    tc_spinlock_lock(&c.lock)
    if _on_span_freelist(s, p, size):
        tc_spinlock_unlock(&c.lock)
        tc_fatal_ptr(_op_msg(op, "double free detected", "realloc(): block already freed",
                             "usable_size(): block already freed"), p)
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
    _debug_check_small(p, cl, kOpFree)
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

