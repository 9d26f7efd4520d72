# ---- slow paths -------------------------------------------------------------

cdef ThreadCache *_cache_for_thread() noexcept nogil:
    """Create the calling thread's cache; NULL if metadata memory is out."""
    cdef ThreadCache *tc = threadcache_create(&g_registry)
    if tc != NULL:
        tc_tls_set(tc, not g_debug)
        pthread_setspecific(g_key, tc)
    return tc

cdef void _thread_exit(void *arg) noexcept nogil:
    """pthread key destructor: the thread's cache goes back to the central stores."""
    tc_tls_set(NULL, 0)
    tc_tls_set_exiting()
    threadcache_destroy(<ThreadCache *>arg)

cdef void _free_small_slow(void *p, uint32_t cl) noexcept nogil:
    """The push was refused: the list is full, the block carries the free
    key, debug checks are on, or the thread has no cache yet. A thread that
    only frees (the consumer of a queue) needs a cache as much as one that
    allocates, or every free takes a central lock."""
    cdef ThreadCache *tc = <ThreadCache *>tc_tls_owner()
    if g_debug:
        _debug_free_small(p, cl)
    elif tc != NULL:
        threadcache_push_slow(tc, cl, p)
    elif not tc_tls_exiting() and _cache_for_thread() != NULL:
        threadcache_push(<ThreadCache *>tc_tls_owner(), cl, p)
    else:
        threadcache_free_uncached(&g_registry, cl, p)

cdef void _free_small_slow_at(void *p, size_t off) noexcept nogil:
    """_free_small_slow for the class at byte offset off in a cache: _free
    passes the offset it has, so it keeps no copy of the class."""
    _free_small_slow(p, <uint32_t>(off // sizeof(FreeList)))

cdef void *_malloc_small_slow(uint32_t cl, size_t size) noexcept nogil:
    """The pop found nothing: the list is empty, debug checks are on, or
    the thread has no cache yet."""
    cdef ThreadCache *tc = <ThreadCache *>tc_tls_owner()
    cdef void *p = NULL
    cdef int err = tc_get_errno()   # a malloc that succeeds leaves errno alone: a
                                    # refill the OS or a limit refused set it
    if g_debug:
        p = _debug_malloc_small(cl)
        if p == NULL:
            tc_set_errno(ENOMEM)
            return p
        tc_set_errno(err)
        return sampler_tick_slow(NULL, p, size)
    if tc == NULL and not tc_tls_exiting():
        tc = _cache_for_thread()
    _bg_poll()
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
    tc_set_errno(err)
    return sampler_tick_slow(tc, p, size)

cdef void _reclaim() noexcept nogil:
    """Flush this thread's cache and the transfer caches, so spans they kept
    from emptying go back to the page heap: before the one retry of a failed
    allocation (the OS or a hard limit said no), and in release_free_memory."""
    cdef ThreadCache *tc = <ThreadCache *>tc_tls_owner()
    threadcache_adopt_orphans(&g_registry)   # after a fork: what dead threads had cached
    if tc != NULL:
        threadcache_flush(tc)
    threadcache_drain_transfers(&g_registry)

cdef Span *_alloc_large_span(size_t size, size_t align_pages) noexcept nogil:
    cdef Span *s
    cdef size_t npages
    cdef int err = tc_get_errno()   # kept on success, as in _malloc_small_slow
    _bg_poll()
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
    else:
        tc_set_errno(err)
        threadcache_note_out(&g_registry, 0)     # the peak of bytes allocated
    return s

cdef void *_malloc_large(size_t size, size_t align_pages) noexcept nogil:
    cdef Span *s = _alloc_large_span(size, align_pages)
    if s == NULL:
        return NULL
    if TC_UNLIKELY(tc_load_u64(&g_sampler.rate) != 0):
        _sample_large(<void *>span_addr(s), size)
    return <void *>span_addr(s)

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
        _fatal_bad_pointer(p, kOpFree)
    _free_large_span(p, s)

cdef void _fatal_bad_pointer(const void *p, int op) noexcept nogil:
    """Abort naming p, passed to free, realloc or usable_size (op, see
    debug.pxi), saying what the pagemap knows of its page. Interior
    pages of a free span may map to a recycled Span struct (only a free
    span's end pages are kept exact), so "already free" is said only when
    the span found is free and covers p's page; anything else is an invalid
    pointer. A page of the heap with no span (inside a large block, or
    inside free pages) is tcalloc's all the same: not "not allocated"."""
    cdef uintptr_t page = <uintptr_t>p >> kPageShift
    cdef Span *s = pagemap_span(&g_heap.pagemap, page)
    if s == NULL and not pagemap_is_heap(&g_heap.pagemap, page):
        tc_fatal_ptr(_op_msg(op, "free(): invalid pointer (not allocated by tcalloc)",
                             "realloc(): invalid pointer (not allocated by tcalloc)",
                             "usable_size(): invalid pointer (not allocated by tcalloc)"), p)
    if s != NULL and s.location != SPAN_IN_USE and s.start <= page < s.start + s.npages:
        tc_fatal_ptr(_op_msg(op, "double free detected (free(): the block's pages are already free)",
                             "realloc(): block already freed (its pages are free)",
                             "usable_size(): block already freed (its pages are free)"), p)
    tc_fatal_ptr(_op_msg(op, "free(): invalid pointer (not the start of a block tcalloc handed out, "
                             "or already freed)",
                             "realloc(): invalid pointer (not the start of a block tcalloc handed out, "
                             "or already freed)",
                             "usable_size(): invalid pointer (not the start of a block tcalloc handed "
                             "out, or already freed)"), p)

cdef void _free_large_span(void *p, Span *s) noexcept nogil:
    """Free large block p, whose in-use span _large_span(p) found as s."""
    if TC_UNLIKELY(tc_load_u64(&g_sampler.nlive) != 0):
        _sampler_drop(p)        # a sampled block (small ones have pages of their own too)
    if g_debug:
        # Only resident pages can hold stale data: poisoning the others
        # would commit every page of a block the program never touched.
        tc_os_fill_resident(p, s.npages << kPageShift, kPoisonFree)
    pageheap_delete_large(&g_heap, s)

cdef enum:
    kMoveChunk = 2 << 20            # release-behind step of a moving realloc
    kMoveReleaseMin = 4 << 20       # ... done for large blocks from this size
    # A realloc that grows a block to this size or more moves it to a span of
    # its own (a large block), not to a size-class block: see tc_realloc.
    kReallocSpanFrom = 32 << 10

cdef void _move_large(char *dst, char *src, Span *s) noexcept nogil:
    """Move large block src (span s, about to be freed) into dst, whose span
    is at least as long. Where the kernel can (Linux 5.7+), its pages move
    to dst without a copy, as glibc's realloc of a mapped chunk does with
    mremap: no time spent copying, no second copy resident. Otherwise it is
    copied a chunk at a time, each copied chunk of the source released at
    once, so resident memory grows by one chunk during the move instead of
    by the whole block. Either way the source span then goes back as
    released pages, which nothing has to release again."""
    cdef size_t n = s.npages << kPageShift
    cdef size_t off = 0, step
    cdef bint released = 1
    cdef int err, rc
    cdef long maps
    cdef int64_t left = tc_load_i64(&g_page_moves_left)
    if TC_UNLIKELY(tc_load_u64(&g_sampler.nlive) != 0):
        _sampler_drop(src)
    err = tc_get_errno()            # a realloc that succeeds leaves errno alone
    if left == 0:
        maps = tc_os_mapping_count()
        if maps >= 0 and maps < kPageMoveMaps:
            left = kPageMoveRound   # a new round: the mappings have room
    if left > 0:
        rc = tc_os_move(src, dst, n)
        if rc == 0:
            tc_store_i64(&g_page_moves_left, left - 1)
            tc_atomic_add_u64(&g_moved_bytes, n)
            pageheap_delete_released(&g_heap, s, 0)
            return
        if rc == -2:
            tc_fatal_ptr("realloc(): a failed page move unmapped heap pages that another "
                         "mapping then took", dst)
        if tc_get_errno() == EINVAL or tc_get_errno() == ENOSYS:
            tc_store_i64(&g_page_moves_left, -1)  # the kernel lacks the flag
        # Else (EFAULT from a kernel that moves one mapping at a time, or
        # ENOMEM): dst is mapped again, and the copy below does the move.
    tc_set_errno(err)
    while off < n:
        step = n - off if n - off < kMoveChunk else kMoveChunk
        memcpy(dst + off, src + off, step)
        if tc_os_release(src + off, step) != 0:
            released = 0            # the rest stays resident: filed as backed below
        off += step
    if released:
        pageheap_delete_released(&g_heap, s)
    else:
        pageheap_delete_large(&g_heap, s)   # not debug mode: nothing to poison


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
    if TC_UNLIKELY(tc_load_u64(&g_sampler.rate) != 0):
        _sample_large(p, total)
    # Fresh or released pages read as zeros already. needzero stays as it
    # was: 0 tells the free that the pages may still be untouched (it asks
    # mincore), so a calloc'd block never written goes back as released
    # memory, not as backed memory the next calloc would memset.
    if s.needzero:
        memset(p, 0, total)
    return p

cdef inline size_t _block_size(void *ptr, uint32_t *cl, Span **large, int op) noexcept nogil:
    """Usable size of tcalloc block ptr, its class (0: large) and, for a
    large block, its span; aborts naming ptr if it is no live block start
    (for a small block, only debug mode can tell: the normal path trusts
    the page's class). op: the caller, for the message (debug.pxi)."""
    cl[0] = pagemap_sizeclass(&g_heap.pagemap, <uintptr_t>ptr >> kPageShift)
    if cl[0] != 0:
        if TC_UNLIKELY(g_debug):
            _debug_check_small(ptr, cl[0], op)
        large[0] = NULL
        return g_sizemap.class_to_size[cl[0]]
    large[0] = _large_span(ptr)
    if large[0] == NULL:
        _fatal_bad_pointer(ptr, op)
    return large[0].npages << kPageShift

cdef size_t tc_usable_size(void *ptr) noexcept nogil:
    cdef uint32_t cl
    cdef Span *s
    if ptr == NULL:
        return 0
    return _block_size(ptr, &cl, &s, kOpUsableSize)

cdef inline void _shrink_large(Span *s, size_t old, size_t size) noexcept nogil:
    """Give the pages of large block s (old bytes) past `size` back."""
    cdef size_t npages = (size + kPageSize - 1) >> kPageShift
    if npages < (old >> kPageShift):
        pageheap_resize(&g_heap, s, npages)

cdef void *tc_realloc(void *ptr, size_t size) noexcept nogil:
    cdef size_t old, want, npages
    cdef bint span
    cdef uint32_t cl
    cdef Span *s
    cdef void *q
    cdef int err
    if ptr == NULL:
        return _malloc(size)
    err = tc_get_errno()  # a realloc that succeeds leaves errno as it was
    if size == 0:
        size = 1          # like CPython's raw allocator: a minimal block, never NULL-on-success
    old = _block_size(ptr, &cl, &s, kOpRealloc)
    if cl == 0 and size <= old and size > kMaxSmallSize:
        # A large block that stays large shrinks where it stands: its tail
        # pages go back to the page heap, nothing is copied.
        _shrink_large(s, old, size)
        tc_set_errno(err)
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
    # A growing block leaves size classes from kReallocSpanFrom on. Moved
    # through classes, a buffer grown step by step (a StringIO, a JSON
    # writer) left one freed block in every class it passed, parked in this
    # thread's cache where no other size can use it: 0.73 MiB for a chain
    # from 32 to 256 KiB. A span grows in place when the pages after it are
    # free, and the one it leaves goes back to the page heap, where it
    # merges and any size reuses it.
    span = size > old and want >= kReallocSpanFrom
    q = _malloc_large(want, 1) if span else _malloc(want)
    if q == NULL and want != size:
        q = _malloc_large(size, 1) if span else _malloc(size)
    if q == NULL:
        if size <= old:
            # A shrink that found no room for the smaller block keeps the
            # one it has, which is big enough: shrinking never fails. A
            # large one gives back the pages past the new size.
            if cl == 0:
                _shrink_large(s, old, size)
            tc_set_errno(err)
            return ptr
        return NULL       # the old block is untouched, as C requires
    tc_set_errno(err)     # the 25 % more may have failed before the size itself did not
    if cl == 0 and size > old and old >= kMoveReleaseMin and not g_debug:
        _move_large(<char *>q, <char *>ptr, s)
        return q
    memcpy(q, ptr, old if old < size else size)
    _free(ptr)
    return q

cdef void *tc_aligned_alloc(size_t alignment, size_t size) noexcept nogil:
    cdef uint32_t cl
    if not tc_is_pow2(alignment):
        tc_set_errno(EINVAL)
        return NULL
    if alignment <= 16:
        return _malloc(size)          # every class is 16-byte aligned
    if size <= kMaxSmallSize and alignment <= kPageSize:
        cl = sizemap_aligned_class(&g_sizemap, size, alignment)
        if cl != 0:
            return _malloc_class(cl, size)
    return _malloc_large(size, alignment >> kPageShift if alignment > kPageSize else 1)

cdef bint tc_owns(const void *ptr) noexcept nogil:
    """Is ptr a block start in tcalloc's heap (live or free)? Lock-free."""
    cdef uintptr_t page = <uintptr_t>ptr >> kPageShift
    cdef uint32_t cl = pagemap_sizeclass(&g_heap.pagemap, page)
    cdef Span *s
    cdef uintptr_t off
    if cl != 0:
        s = pagemap_span(&g_heap.pagemap, page)
        if s == NULL:
            return 0
        # A block start, and a whole block before the span's end (not the
        # tail a span's size leaves past its last block).
        off = <uintptr_t>ptr - span_addr(s)
        return (off % g_sizemap.class_to_size[cl] == 0
                and off + g_sizemap.class_to_size[cl] <= (s.npages << kPageShift))
    return _large_span(ptr) != NULL

cdef bint tc_on_heap(const void *ptr) noexcept nogil:
    """Is ptr on a page of tcalloc's heap (mapped for it and never unmapped:
    pagemap.pxi), a block start or not? A pointer there that tc_owns denies
    (a large block freed twice, a pointer into a block) is no other
    allocator's: the hook and the NumPy handler, which route frees by owner,
    send it to tcalloc, which reports it. Lock-free."""
    return pagemap_is_heap(&g_heap.pagemap, <uintptr_t>ptr >> kPageShift)

