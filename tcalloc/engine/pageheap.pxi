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
from libc.errno cimport ENOMEM
from libc.stdint cimport uint32_t, uint64_t, uintptr_t, uint8_t
from libc.string cimport memset

cdef enum:
    kMinGrowPages = 128            # grow the heap by at least 1 MiB per mmap
    kListWords = (kMaxPages + 64) // 64   # words of a free-list bitmap (lengths 0..kMaxPages)
    kReleaseAtFree = 16 << 20      # a freed large block this big is released at once (_trim_free says why)
    kFreeCap = 64 << 20            # free, backed memory kept beyond what recent demand needs
    kDemandEpochTicks = 5          # releaser ticks (100 ms) per demand epoch: a window of 0.5-1 s

ctypedef struct PageHeap:
    Pagemap pagemap               # first: free() indexes its root at offset 0
    tc_spinlock_t lock
    MetaArena *arena
    Span *normal[kMaxPages + 1]
    Span *returned[kMaxPages + 1]
    # Bit i of nonempty[r] is set while normal[i] (r 0) / returned[i] (r 1)
    # holds a span: a search finds the first fitting list with a ctz per
    # 64 lengths, not a load per length (a cold heap's every new span
    # scanned both arrays, ~800 instructions).
    uint64_t nonempty[2][kListWords]
    Span *large_normal            # best-fit trees (treaps) for > kMaxPages
    Span *large_returned
    Span *span_freelist           # recycled Span structs
    uint64_t system_bytes         # mapped from the OS for the heap
    uint64_t free_bytes           # free, backed ("page_heap_free_bytes")
    uint64_t released_bytes       # free, released to the OS
    uint64_t small_span_bytes     # spans lent to central free lists
    uint64_t large_bytes          # large allocations in use; written under the lock with
                                  # relaxed stores: the allocated-bytes meter reads it without
    uint64_t small_spans
    uint64_t large_spans
    uint64_t large_allocs
    uint64_t large_frees
    uint64_t span_structs         # Span structs made (metadata)
    uint64_t grows
    uint64_t committed_taken      # bytes handed out from returned or fresh pages: the
                                  # resident heap grew by them. Relaxed stores under the
                                  # lock; thread caches read it without (threadcache_fetch)
    uintptr_t last_grow           # lowest address mapped so far (growth goes down)
    uint64_t released_total       # bytes ever madvise'd away
    uint64_t released_background  # ... of which by the background releaser
    uint64_t limit_bytes          # 0: no limit (committed = system - released)
    uint64_t peak_committed       # highest committed heap since start or the last reset
    uint64_t released_on_free     # ... of released_total, by the free-memory cap
    # Demand: bytes in spans in use (large blocks, spans lent to size
    # classes). Its highest value in this epoch and the one before is the
    # "recent peak"; free memory up to (recent peak - demand) will likely be
    # taken again soon, so neither the cap nor the releaser gives it back.
    # The releaser thread turns the epoch (pageheap_release_idle).
    uint64_t demand_peak
    uint64_t demand_peak_prev
    int limit_hard
    int cap_free                  # 1: keep free, backed memory under kFreeCap (and recent demand)

# ---- implementation --------------------------------------------------------
# Lock discipline: every pageheap_* function takes h.lock; the helpers whose
# names start with an underscore expect it held.

cdef void pageheap_init(PageHeap *h, MetaArena *arena) noexcept nogil:
    """h must be zeroed memory (static or mmap'd): the pagemap root inside
    it is 1 MiB that stays untouched, so not resident, until the heap grows
    into its range. Clearing it here would make it all resident."""
    cdef Pagemap *pm = &h.pagemap
    memset(h, 0, <size_t>(<char *>pm - <char *>h))
    memset(<char *>pm + sizeof(Pagemap), 0, sizeof(PageHeap) - (<size_t>(<char *>pm - <char *>h) + sizeof(Pagemap)))
    tc_spinlock_init(&h.lock)
    h.arena = arena
    pagemap_init(&h.pagemap, arena)

# ---- Span structs ---------------------------------------------------------

cdef Span *_span_new(PageHeap *h, uintptr_t start, size_t npages) noexcept nogil:
    cdef Span *s = h.span_freelist
    if s != NULL:
        h.span_freelist = s.next
    else:
        s = <Span *>arena_alloc(h.arena, sizeof(Span), 16)
        if s == NULL:
            return NULL
        h.span_structs += 1
    memset(s, 0, sizeof(Span))
    s.start = start
    s.npages = npages
    return s

cdef inline void _span_free(PageHeap *h, Span *s) noexcept nogil:
    s.location = SPAN_DEAD
    s.next = h.span_freelist
    h.span_freelist = s

cdef inline void _record(PageHeap *h, Span *s) noexcept nogil:
    pagemap_set(&h.pagemap, s.start, s)
    if s.npages > 1:
        pagemap_set(&h.pagemap, s.start + s.npages - 1, s)

# ---- best-fit tree: a treap keyed by (npages, start), priority a hash of start

cdef inline bint _less(const Span *a, const Span *b) noexcept nogil:
    return a.npages < b.npages or (a.npages == b.npages and a.start < b.start)

cdef inline uint64_t _prio(const Span *s) noexcept nogil:
    cdef uint64_t x = <uint64_t>s.start + 0x9E3779B97F4A7C15UL
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9UL
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBUL
    return x ^ (x >> 31)

cdef void _split(Span *t, const Span *key, Span **l, Span **r) noexcept nogil:
    if t == NULL:
        l[0] = NULL
        r[0] = NULL
    elif _less(t, key):
        _split(t.right, key, &t.right, r)
        l[0] = t
    else:
        _split(t.left, key, l, &t.left)
        r[0] = t

cdef Span *_join(Span *a, Span *b) noexcept nogil:
    if a == NULL:
        return b
    if b == NULL:
        return a
    if _prio(a) > _prio(b):
        a.right = _join(a.right, b)
        return a
    b.left = _join(a, b.left)
    return b

cdef Span *_tree_insert(Span *t, Span *s) noexcept nogil:
    if t == NULL:
        s.left = NULL
        s.right = NULL
        return s
    if _prio(s) > _prio(t):
        _split(t, s, &s.left, &s.right)
        return s
    if _less(s, t):
        t.left = _tree_insert(t.left, s)
    else:
        t.right = _tree_insert(t.right, s)
    return t

cdef Span *_tree_remove(Span *t, Span *s) noexcept nogil:
    if t == s:
        return _join(t.left, t.right)
    if _less(s, t):
        t.left = _tree_remove(t.left, s)
    else:
        t.right = _tree_remove(t.right, s)
    return t

cdef inline Span *_tree_best_fit(Span *t, size_t n) noexcept nogil:
    """Smallest (npages, start) with npages >= n: best fit, lowest address."""
    cdef Span *best = NULL
    while t != NULL:
        if t.npages >= n:
            best = t
            t = t.left
        else:
            t = t.right
    return best

cdef inline Span *_tree_max(Span *t) noexcept nogil:
    if t != NULL:
        while t.right != NULL:
            t = t.right
    return t

# ---- free structures ---------------------------------------------------------

cdef inline Span **_list_head(PageHeap *h, size_t npages, bint returned) noexcept nogil:
    if returned:
        return &h.returned[npages]
    return &h.normal[npages]

cdef void _link_free(PageHeap *h, Span *s) noexcept nogil:
    cdef uint64_t nbytes = <uint64_t>s.npages << kPageShift
    cdef bint ret = s.location == SPAN_ON_RETURNED
    TC_ASSERT(s.npages > 0 and s.location != SPAN_IN_USE, "page heap: an empty or in-use span filed as free")
    if ret:
        h.released_bytes += nbytes
    else:
        tc_store_u64(&h.free_bytes, h.free_bytes + nbytes)   # read by the releaser without the lock
    if s.npages <= kMaxPages:
        s.in_tree = 0
        span_list_push(_list_head(h, s.npages, ret), s)
        h.nonempty[ret][s.npages >> 6] |= (<uint64_t>1) << (s.npages & 63)
    else:
        s.in_tree = 1
        if ret:
            h.large_returned = _tree_insert(h.large_returned, s)
        else:
            h.large_normal = _tree_insert(h.large_normal, s)

cdef void _unlink_free(PageHeap *h, Span *s) noexcept nogil:
    cdef uint64_t nbytes = <uint64_t>s.npages << kPageShift
    cdef bint ret = s.location == SPAN_ON_RETURNED
    TC_ASSERT((h.released_bytes if ret else h.free_bytes) >= nbytes,
              "page heap: a free span larger than the free bytes counted")
    if ret:
        h.released_bytes -= nbytes
    else:
        tc_store_u64(&h.free_bytes, h.free_bytes - nbytes)
    if s.in_tree:
        if ret:
            h.large_returned = _tree_remove(h.large_returned, s)
        else:
            h.large_normal = _tree_remove(h.large_normal, s)
        s.in_tree = 0
        s.left = NULL
        s.right = NULL
    else:
        span_list_remove(_list_head(h, s.npages, ret), s)
        if _list_head(h, s.npages, ret)[0] == NULL:
            h.nonempty[ret][s.npages >> 6] &= ~((<uint64_t>1) << (s.npages & 63))

cdef void _merge_free(PageHeap *h, Span *s) noexcept nogil:
    """Put unlinked free span `s` (location NORMAL or RETURNED) on the free
    structures, first merging it with free neighbours of the same kind."""
    cdef Span *other
    other = pagemap_span(&h.pagemap, s.start - 1)
    # The adjacency test rejects stale entries naming recycled structs.
    if other != NULL and other.location == s.location and other.start + other.npages == s.start:
        _unlink_free(h, other)
        s.start = other.start
        s.npages += other.npages
        s.needzero |= other.needzero
        _span_free(h, other)
    other = pagemap_span(&h.pagemap, s.start + s.npages)
    if other != NULL and other.location == s.location and other.start == s.start + s.npages:
        _unlink_free(h, other)
        s.npages += other.npages
        s.needzero |= other.needzero
        _span_free(h, other)
    _record(h, s)
    _link_free(h, s)

cdef Span *_find(PageHeap *h, size_t n, bint returned) noexcept nogil:
    """The shortest free span of at least n pages (best fit), on the normal
    or the returned structures."""
    cdef size_t w
    cdef uint64_t bits
    cdef Span **lists = &h.returned[0] if returned else &h.normal[0]
    if n <= kMaxPages:
        w = n >> 6
        bits = h.nonempty[returned][w] & (~(<uint64_t>0) << (n & 63))
        while True:
            if bits:
                return lists[(w << 6) + <size_t>tc_ctz64(bits)]
            w += 1
            if w == kListWords:
                break
            bits = h.nonempty[returned][w]
    return _tree_best_fit(h.large_returned if returned else h.large_normal, n)

cdef Span *_longest_normal(PageHeap *h) noexcept nogil:
    """A normal free span of the greatest length on the lists, or NULL."""
    cdef int w
    for w in range(kListWords - 1, -1, -1):
        if h.nonempty[0][w]:
            return h.normal[(w << 6) + 63 - tc_clz64(h.nonempty[0][w])]
    return NULL

cdef int _give_back(PageHeap *h, uintptr_t start, size_t npages, uint8_t location, uint8_t needzero) noexcept nogil:
    """Return pages [start, start+npages) cut from a span to the free
    structures. 0 if no Span struct could be made for them (metadata out)."""
    cdef Span *t = _span_new(h, start, npages)
    if t == NULL:
        return 0
    t.location = location
    t.needzero = needzero
    _merge_free(h, t)
    return 1

cdef inline uint64_t _demand(const PageHeap *h) noexcept nogil:
    return h.large_bytes + h.small_span_bytes

cdef inline void _note_peak(PageHeap *h) noexcept nogil:
    """The committed heap and the demand may have grown: pages were taken
    into use. Called by the public functions once the span they hand out is
    settled (an aligned one has given its slack back by then)."""
    cdef uint64_t committed = h.system_bytes - h.released_bytes
    cdef uint64_t d = _demand(h)
    if committed > h.peak_committed:
        tc_store_u64(&h.peak_committed, committed)
    if d > h.demand_peak:
        h.demand_peak = d

cdef inline uint64_t _free_needed(const PageHeap *h) noexcept nogil:
    """Free memory the recent peak of demand says the heap will take again."""
    cdef uint64_t peak = h.demand_peak if h.demand_peak > h.demand_peak_prev else h.demand_peak_prev
    cdef uint64_t d = _demand(h)
    return peak - d if peak > d else 0

cdef Span *_take(PageHeap *h, Span *s, size_t n) noexcept nogil:
    """Unlink free span `s`, keep its first n pages in use, give back the rest."""
    cdef uint8_t loc = s.location
    TC_ASSERT(s.npages >= n, "page heap: a span taken for more pages than it has")
    _unlink_free(h, s)
    if s.npages > n:
        # If metadata is exhausted the split does not happen and the whole
        # span is handed out (its usable size is the span's): never a failure.
        _split_tail(h, s, n, loc)
    s.location = SPAN_IN_USE
    s.sizeclass = 0
    s.freelist = NULL
    _record(h, s)
    return s

cdef void _split_tail(PageHeap *h, Span *s, size_t n, uint8_t loc) noexcept nogil:
    """Cut s to n pages and file the rest WITHOUT merging: only for s cut
    from a maximal free span, whose right neighbour cannot be mergeable."""
    cdef Span *nb
    cdef Span *t = _span_new(h, s.start + n, s.npages - n)
    if t == NULL:
        return
    t.location = loc
    t.needzero = s.needzero
    s.npages = n
    # The remainder's right neighbour cannot be a free span of the same kind
    # (it would have been merged already), so no merge is needed.
    if TCALLOC_ASSERTS:
        nb = pagemap_span(&h.pagemap, t.start + t.npages)
        TC_ASSERT(nb == NULL or nb.location != loc or nb.start != t.start + t.npages,
                  "page heap: a split left two adjacent free spans unmerged")
    _record(h, t)
    _link_free(h, t)

cdef int _release_span(PageHeap *h, Span *s) noexcept nogil:
    """madvise one unlinked normal span away and file it as returned."""
    cdef uint64_t nbytes = <uint64_t>s.npages << kPageShift
    if tc_os_release(<void *>(s.start << kPageShift), nbytes) != 0:
        s.location = SPAN_ON_NORMAL
        _merge_free(h, s)
        return 0
    s.location = SPAN_ON_RETURNED
    s.needzero = 0
    h.released_total += nbytes
    _merge_free(h, s)
    return 1

cdef size_t _release_locked(PageHeap *h, size_t nbytes) noexcept nogil:
    """Release normal free spans, largest first, until nbytes are released."""
    cdef size_t done = 0
    cdef Span *s
    cdef uint64_t sb
    while done < nbytes:
        s = _tree_max(h.large_normal)
        if s == NULL:
            s = _longest_normal(h)
            if s == NULL:
                break
        sb = <uint64_t>s.npages << kPageShift
        _unlink_free(h, s)
        if not _release_span(h, s):
            break
        done += sb
    return done

cdef inline size_t _over_cap(const PageHeap *h) noexcept nogil:
    """Bytes to release so that free, backed memory falls to
    _free_needed + kFreeCap / 2; 0 while it is at most _free_needed +
    kFreeCap (so the committed heap is within the cap of recent demand)."""
    cdef uint64_t needed
    if not h.cap_free or h.free_bytes <= kFreeCap:
        return 0
    needed = _free_needed(h)
    if h.free_bytes <= needed + kFreeCap:
        return 0
    return <size_t>(h.free_bytes - needed - kFreeCap // 2)

cdef inline void _trim_free(PageHeap *h) noexcept nogil:
    """After a free, or pages newly committed: past kFreeCap of free, backed
    memory beyond what the recent peak of demand needs (_free_needed), that
    is, a committed heap past the recent demand peak plus the cap, release
    the largest free spans to half the cap beyond it (as google/tcmalloc
    releases when over its limit), so each madvise returns at least 32 MiB
    and frees cannot madvise one by one.
    - The cap is flat, as glibc's trim threshold (at most 64 MiB) is: a cap
      of 1/8 of the memory in use kept 130 MiB resident at the peak of the
      stress lab's 1 B..256 MiB mixed workload (1.5 GiB in use), where
      glibc kept 15-35 MiB. 64 MiB, not 16: at 16 MiB a workload freeing
      and reusing tens of MiB of large blocks released and re-faulted them
      (the lab's default mixed workload at half speed).
    - Recent demand: that workload's live set swings between 20 and 60 MiB
      within a second. Capped at 64 MiB of free memory alone, each dip
      released 30+ MiB that the next rise faulted in again (2.3x
      gperftools' page faults). Memory the heap needed in the last 0.5-1 s
      stays; the releaser thread gives the rest back once the window has
      passed (a burst's pages within a second). The committed heap still
      stays within the cap of the demand peak, as before.
    - Blocks of kReleaseAtFree or more do not wait for the cap: their free
      releases them at once (pageheap_delete_large), as glibc unmaps the
      chunks it maps for blocks past its mmap threshold (32 MiB at most).
      Kept free, a few of them held up to the whole cap at the peak of the
      mixed workload with two threads (tcalloc 1289 MiB against glibc's
      1235 at the same live peak); reusing such a block faults its pages
      in again, which costs less than writing it does."""
    cdef size_t n = _over_cap(h)
    if n:
        h.released_on_free += _release_locked(h, n)

cdef bint _limit_allows(PageHeap *h, size_t n) noexcept nogil:
    """May n more pages become committed? Releases free memory first when the
    limit would be passed; with a hard limit, says no if that was not enough."""
    cdef uint64_t need = <uint64_t>n << kPageShift
    cdef uint64_t committed
    if h.limit_bytes == 0:
        return 1
    committed = h.system_bytes - h.released_bytes
    if committed + need <= h.limit_bytes:
        return 1
    _release_locked(h, committed + need - h.limit_bytes)
    committed = h.system_bytes - h.released_bytes
    return committed + need <= h.limit_bytes or not h.limit_hard

cdef int _grow(PageHeap *h, size_t n) noexcept nogil:
    """Map at least n more pages from the OS (filed as returned: not resident)."""
    cdef size_t ask = n if n > kMinGrowPages else kMinGrowPages
    cdef size_t nbytes, lead
    cdef uintptr_t raw, aligned
    cdef Span *s
    cdef int err
    if ask > n and h.limit_bytes != 0 and h.limit_hard:
        # Under a hard limit, map only what is needed: mapped-but-unused
        # address space is harmless, but keep the heap's footprint exact.
        ask = n
    nbytes = ask << kPageShift
    aligned = 0
    # First choice: right below the last growth (the kernel hands out
    # addresses top-down), so the new pages coalesce with the old.
    if h.last_grow > nbytes:
        err = tc_get_errno()
        aligned = <uintptr_t>tc_os_map_at(<void *>(h.last_grow - nbytes), nbytes)
        tc_set_errno(err)           # a hint refused (EEXIST) is no error of the caller's
    if aligned == 0:
        raw = <uintptr_t>tc_os_map(nbytes + kPageSize)
        if raw == 0 and ask > n:
            ask = n
            nbytes = ask << kPageShift
            raw = <uintptr_t>tc_os_map(nbytes + kPageSize)
        if raw == 0:
            return 0
        # mmap aligns to 4 KiB; trim to our 8 KiB pages.
        aligned = (raw + kPageSize - 1) & ~(<uintptr_t>kPageSize - 1)
        lead = aligned - raw
        if lead:
            tc_os_unmap(<void *>raw, lead)
        if kPageSize - lead:
            tc_os_unmap(<void *>(aligned + nbytes), kPageSize - lead)
    if pagemap_ensure(&h.pagemap, aligned >> kPageShift, ask) != 0:
        tc_os_unmap(<void *>aligned, nbytes)
        return 0
    s = _span_new(h, aligned >> kPageShift, ask)
    if s == NULL:
        tc_os_unmap(<void *>aligned, nbytes)
        return 0
    pagemap_mark_heap(&h.pagemap, s.start, ask)   # a bit per page (pagemap.pxi)
    s.location = SPAN_ON_RETURNED
    s.needzero = 0
    tc_store_u64(&h.system_bytes, h.system_bytes + nbytes)   # read by _bg_poll without the lock
    h.grows += 1
    if h.last_grow == 0 or aligned < h.last_grow:
        h.last_grow = aligned
    _merge_free(h, s)
    return 1

cdef enum:
    kForcedCoalesceInterval = 128 << 20

cdef bint _worth_forced_coalesce(PageHeap *h, size_t n) noexcept nogil:
    """Release every normal span to coalesce free runs, instead of growing?
    Only with both kinds of free memory, a quarter of the heap free, and at
    most once per 128 MiB of heap growth (gperftools' rule): without the
    limits, mixed large sizes released and re-faulted the whole free heap
    over and over (1.1 GiB madvise'd in 2 s on a 190 MiB heap)."""
    cdef uint64_t need = <uint64_t>n << kPageShift
    cdef uint64_t free_all = h.free_bytes + h.released_bytes
    if h.free_bytes == 0 or h.released_bytes == 0:
        return 0
    if free_all < need or free_all < h.system_bytes // 4:
        return 0
    return h.system_bytes // kForcedCoalesceInterval != (h.system_bytes + need) // kForcedCoalesceInterval

cdef Span *_alloc_locked(PageHeap *h, size_t n, size_t keep) noexcept nogil:
    """A span of n pages, of which the caller keeps `keep` in use (an
    aligned allocation gives the slack back at once, still released if it
    was): only those count against the memory limit."""
    cdef Span *s = _find(h, n, 0)
    if s != NULL:
        return _take(h, s, n)
    # Anything else commits new memory: check the limit first.
    if not _limit_allows(h, keep):
        return NULL
    s = _find(h, n, 1)
    if s == NULL and _worth_forced_coalesce(h, n):
        # Enough free pages, but split between normal and returned runs that
        # do not merge: release the normal ones so they coalesce, rather than
        # grow the heap.
        _release_locked(h, <size_t>-1)
        s = _find(h, n, 1)
    if s == NULL and _grow(h, n):
        s = _find(h, n, 1)
    if s == NULL:
        return NULL
    s = _take(h, s, n)
    s.needzero = 0          # returned or fresh: reads as zeros
    # Committing new pages while free ones exist (none fit) may leave the
    # heap past the cap of recent demand, as a free can: the same check.
    _trim_free(h)
    tc_store_u64(&h.committed_taken, h.committed_taken + (<uint64_t>n << kPageShift))
    return s

cdef inline void _count_large(PageHeap *h, Span *s) noexcept nogil:
    tc_store_u64(&h.large_bytes, h.large_bytes + (<uint64_t>s.npages << kPageShift))
    h.large_spans += 1
    h.large_allocs += 1

# ---- public ---------------------------------------------------------------

cdef Span *pageheap_new(PageHeap *h, size_t npages, uint32_t cl) noexcept nogil:
    """A span of npages in use; cl != 0 registers it for that size class on
    every page. NULL with errno ENOMEM when memory (or the limit) says no."""
    cdef Span *s
    cdef size_t i
    if npages == 0 or npages > (<size_t>1 << 35):
        tc_set_errno(ENOMEM)
        return NULL
    tc_spinlock_lock(&h.lock)
    s = _alloc_locked(h, npages, npages)
    if s != NULL:
        if cl != 0:
            s.sizeclass = <uint8_t>cl
            for i in range(s.npages):
                pagemap_set(&h.pagemap, s.start + i, s)
                pagemap_set_class(&h.pagemap, s.start + i, cl)
            h.small_span_bytes += <uint64_t>s.npages << kPageShift
            h.small_spans += 1
        else:
            _count_large(h, s)
        _note_peak(h)
    tc_spinlock_unlock(&h.lock)
    if s == NULL:
        tc_set_errno(ENOMEM)
    return s

cdef Span *pageheap_new_aligned(PageHeap *h, size_t npages, size_t align_pages) noexcept nogil:
    """A large span whose first page is a multiple of align_pages (a power of two)."""
    cdef Span *s
    cdef uintptr_t start
    cdef size_t skip, extra
    cdef uint8_t loc
    if align_pages <= 1:
        return pageheap_new(h, npages, 0)
    if npages == 0 or npages > (<size_t>1 << 35) or align_pages > (<size_t>1 << 30):
        tc_set_errno(ENOMEM)
        return NULL
    tc_spinlock_lock(&h.lock)
    s = _alloc_locked(h, npages + align_pages - 1, npages)
    if s != NULL:
        loc = SPAN_ON_RETURNED if s.needzero == 0 else SPAN_ON_NORMAL
        start = (s.start + align_pages - 1) & ~(<uintptr_t>align_pages - 1)
        skip = start - s.start
        extra = s.npages - skip - npages
        if skip and not _give_back(h, s.start, skip, loc, s.needzero):
            s.location = loc
            _merge_free(h, s)
            s = NULL
    if s != NULL:
        if skip:
            s.start = start
            s.npages -= skip
        # The tail's right neighbour may be the free remainder _take just
        # filed, so it goes back through the merging path. Without a struct
        # for it the span keeps the extra pages.
        if extra and _give_back(h, s.start + npages, extra, loc, s.needzero):
            s.npages = npages
        _record(h, s)
        _count_large(h, s)
        _note_peak(h)
    tc_spinlock_unlock(&h.lock)
    if s == NULL:
        tc_set_errno(ENOMEM)
    return s

cdef void pageheap_delete(PageHeap *h, Span *s) noexcept nogil:
    """Take back an in-use span (large, or small with all objects free)."""
    _delete(h, s, 0)

cdef void pageheap_delete_large(PageHeap *h, Span *s) noexcept nogil:
    """Take back an in-use large span. One that came from released or fresh
    pages (needzero still 0) and was never touched is filed as returned, not
    as backed free memory: the stats then match RSS, and a calloc of those
    pages skips the memset. mincore() runs before the lock, and only for
    such spans. mincore() also says "not resident" of pages swapped out, which
    may hold data: such a span is released for real (MADV_DONTNEED: one call,
    nearly free on pages never touched) before it is filed as zero pages.
    A block of kReleaseAtFree or more is released before the lock (while
    the free-memory cap is on)."""
    cdef void *p = <void *>span_addr(s)
    cdef size_t n = s.npages << kPageShift
    cdef bint big = n >= kReleaseAtFree and tc_load_int(&h.cap_free)
    cdef bint untouched = big or (s.needzero == 0 and not tc_os_any_resident(p, n))
    if untouched and tc_os_release(p, n) != 0:
        untouched = 0                # keep treating the pages as backed
    _delete(h, s, untouched, 2 if big and untouched else 0)

cdef void pageheap_delete_released(PageHeap *h, Span *s, bint count=1) noexcept nogil:
    """Take back an in-use large span whose pages the caller has released
    (every page madvise'd away) or moved elsewhere (count 0: the process
    gave nothing back): filed as returned, like untouched pages, and unless
    count is 0 counted in released_total."""
    _delete(h, s, 1, count)

cdef void _delete(PageHeap *h, Span *s, bint untouched, int released=0) noexcept nogil:
    """File in-use span s as free. released: 1 if the caller released its
    pages (counted in released_total), 2 if that was the release on free."""
    cdef size_t i
    cdef uint64_t nbytes = <uint64_t>s.npages << kPageShift
    tc_spinlock_lock(&h.lock)
    if released:
        h.released_total += nbytes
        if released == 2:
            h.released_on_free += nbytes
    if s.sizeclass != 0:
        for i in range(s.npages):
            pagemap_set_class(&h.pagemap, s.start + i, 0)
        h.small_span_bytes -= nbytes
        h.small_spans -= 1
    else:
        tc_store_u64(&h.large_bytes, h.large_bytes - nbytes)
        h.large_spans -= 1
        h.large_frees += 1
    s.sizeclass = 0
    s.freelist = NULL
    s.refcount = 0
    s.location = SPAN_ON_RETURNED if untouched else SPAN_ON_NORMAL
    s.needzero = 0 if untouched else 1
    _merge_free(h, s)
    _trim_free(h)
    tc_spinlock_unlock(&h.lock)

cdef Span *_free_after(PageHeap *h, Span *s, size_t extra) noexcept nogil:
    """The free span right after s if it has at least `extra` pages, else NULL."""
    cdef Span *nxt = pagemap_span(&h.pagemap, s.start + s.npages)
    if (nxt != NULL and nxt.start == s.start + s.npages and nxt.npages >= extra
            and (nxt.location == SPAN_ON_NORMAL or nxt.location == SPAN_ON_RETURNED)):
        return nxt
    return NULL

cdef int pageheap_resize(PageHeap *h, Span *s, size_t npages) noexcept nogil:
    """Shrink or grow a large in-use span where it stands. 1 if done, 0 if
    the following pages are not free (grow) or metadata ran out."""
    cdef Span *nxt
    cdef size_t extra
    cdef int ok = 0
    cdef bint fresh
    cdef uint64_t before
    tc_spinlock_lock(&h.lock)
    before = s.npages
    if npages == s.npages:
        ok = 1
    elif npages < s.npages:
        if _give_back(h, s.start + npages, s.npages - npages, SPAN_ON_NORMAL, 1):
            s.npages = npages
            _record(h, s)
            ok = 1
            _trim_free(h)
    else:
        extra = npages - s.npages
        nxt = _free_after(h, s, extra)
        if nxt != NULL and nxt.location == SPAN_ON_RETURNED:
            # Released pages count against the limit again; making room may
            # release and merge spans, so look at the neighbour again.
            nxt = _free_after(h, s, extra) if _limit_allows(h, extra) else NULL
        if nxt != NULL:
            fresh = nxt.location == SPAN_ON_RETURNED
            _unlink_free(h, nxt)
            if nxt.npages > extra:
                _split_tail(h, nxt, extra, nxt.location)
            if nxt.npages == extra:
                s.npages += extra
                _span_free(h, nxt)
                _record(h, s)
                ok = 1
                if fresh:
                    _trim_free(h)            # commits new pages: as _alloc_locked does
            else:
                _merge_free(h, nxt)
    if ok:
        tc_store_u64(&h.large_bytes, h.large_bytes + (<uint64_t>s.npages << kPageShift)
                     - (before << kPageShift))
        _note_peak(h)
    tc_spinlock_unlock(&h.lock)
    return ok

cdef size_t pageheap_release(PageHeap *h, size_t nbytes) noexcept nogil:
    """Release at least nbytes of free memory to the OS (all: (size_t)-1),
    recent demand or not. Returns the bytes released."""
    cdef size_t done
    tc_spinlock_lock(&h.lock)
    done = _release_locked(h, nbytes)
    tc_spinlock_unlock(&h.lock)
    return done

cdef inline void _turn_epoch(PageHeap *h) noexcept nogil:
    h.demand_peak_prev = h.demand_peak
    h.demand_peak = _demand(h)

cdef size_t pageheap_release_idle(PageHeap *h, size_t nbytes, bint turn) noexcept nogil:
    """The releaser thread's tick: release up to nbytes of the free memory
    recent demand does not need, and at once what is past the cap of it
    (the cap a free would have applied, had the window not held it).
    `turn`: start a new demand epoch first. Counted as the releaser's work
    under the lock, so stats never see pages gone but not yet counted."""
    cdef size_t done, n, over
    cdef uint64_t needed
    tc_spinlock_lock(&h.lock)
    if turn:
        _turn_epoch(h)
    needed = _free_needed(h)
    n = h.free_bytes - needed if h.free_bytes > needed else 0
    if n > nbytes:
        n = nbytes
    over = _over_cap(h)
    if over > n:
        n = over
    done = _release_locked(h, n) if n else 0
    h.released_background += done
    tc_spinlock_unlock(&h.lock)
    return done

cdef void pageheap_set_cap(PageHeap *h, int on) noexcept nogil:
    """Turn the free-memory cap (_trim_free) on or off; on applies it now,
    to everything past the cap (the demand window starts afresh)."""
    tc_spinlock_lock(&h.lock)
    tc_store_int(&h.cap_free, on)    # pageheap_delete_large reads it without the lock
    h.demand_peak_prev = 0
    h.demand_peak = _demand(h)
    _trim_free(h)
    tc_spinlock_unlock(&h.lock)

cdef void pageheap_set_limit(PageHeap *h, uint64_t nbytes, int hard) noexcept nogil:
    tc_spinlock_lock(&h.lock)
    h.limit_bytes = nbytes
    h.limit_hard = hard
    if nbytes and h.system_bytes - h.released_bytes > nbytes:
        _release_locked(h, h.system_bytes - h.released_bytes - nbytes)
    tc_spinlock_unlock(&h.lock)

cdef void _hist_tree(Span *t, uint64_t *out) noexcept nogil:
    if t != NULL:
        out[0] += 1
        _hist_tree(t.left, out)
        _hist_tree(t.right, out)

cdef void pageheap_free_histogram(PageHeap *h, uint64_t *normal, uint64_t *returned) noexcept nogil:
    """Count free spans per length (index 0: longer than kMaxPages)."""
    cdef size_t i
    cdef Span *s
    tc_spinlock_lock(&h.lock)
    for i in range(kMaxPages + 1):
        normal[i] = 0
        returned[i] = 0
    for i in range(1, kMaxPages + 1):
        s = h.normal[i]
        while s != NULL:
            normal[i] += 1
            s = s.next
        s = h.returned[i]
        while s != NULL:
            returned[i] += 1
            s = s.next
    _hist_tree(h.large_normal, &normal[0])
    _hist_tree(h.large_returned, &returned[0])
    tc_spinlock_unlock(&h.lock)

cdef void pageheap_reset_peak(PageHeap *h) noexcept nogil:
    """Start the peak over from the committed heap now. Takes h.lock."""
    tc_spinlock_lock(&h.lock)
    tc_store_u64(&h.peak_committed, h.system_bytes - h.released_bytes)
    tc_spinlock_unlock(&h.lock)
