"""Test-only access to tcalloc's components (not part of the public API).

Two kinds of hooks for tests/:

* PRIVATE instances of each component (PrivatePagemap, PrivateHeap,
  PrivateEngine with its own size map, central lists, transfer caches and
  thread-cache registry), built from the same cdef functions the engine uses
  but never touching the global allocator, so tests can drive and inspect
  them (free lists, counters, invariants) deterministically.
* Native workloads on pthreads WITHOUT the GIL, through the public capsule
  tcalloc._C_API only (what an outside C user sees): every block is filled
  with a pattern derived from a unique key and verified before it is freed.

Nothing here is thread-safe from Python: one test drives one instance.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t, uintptr_t
from libc.string cimport memset
from libc.stdlib cimport calloc as libc_calloc, free as libc_free
from cpython.pycapsule cimport PyCapsule_GetPointer

from tcalloc.common cimport *
from tcalloc.capi cimport TcallocExtAPI, TcallocExtAPI_Import

# A private copy of every component, compiled from the engine's own parts.
include "span.pxi"
include "sizemap.pxi"
include "arena.pxi"
include "pagemap.pxi"
include "pageheap.pxi"
include "central.pxi"
include "transfer.pxi"
include "threadcache.pxi"


include "harness.pxi"

cdef extern from "<sched.h>" nogil:
    int sched_yield()

cdef extern from "<sys/mman.h>" nogil:
    int munmap(void *addr, size_t length)

# Small C helpers: an SPSC ring with acquire/release
# indices, and mincore() for per-range residency (exact, unlike process RSS).
cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #include <stdlib.h>
    #include <unistd.h>
    #include <sys/mman.h>
    #include <errno.h>

    typedef struct { void *p; size_t n; uint64_t key; } tct_item;
    typedef struct {
        tct_item *slots;
        uint64_t cap;
        uint64_t head __attribute__((aligned(64)));   /* consumer */
        uint64_t tail __attribute__((aligned(64)));   /* producer */
        int closed __attribute__((aligned(64)));
    } tct_ring;
    static int tct_ring_push(tct_ring *r, const tct_item *it) {
        uint64_t t = __atomic_load_n(&r->tail, __ATOMIC_RELAXED);
        if (t - __atomic_load_n(&r->head, __ATOMIC_ACQUIRE) >= r->cap) return 0;
        r->slots[t % r->cap] = *it;
        __atomic_store_n(&r->tail, t + 1, __ATOMIC_RELEASE);
        return 1;
    }
    static int tct_ring_pop(tct_ring *r, tct_item *out) {
        uint64_t h = __atomic_load_n(&r->head, __ATOMIC_RELAXED);
        if (h == __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE)) return 0;
        *out = r->slots[h % r->cap];
        __atomic_store_n(&r->head, h + 1, __ATOMIC_RELEASE);
        return 1;
    }
    static void tct_ring_close(tct_ring *r) { __atomic_store_n(&r->closed, 1, __ATOMIC_RELEASE); }
    static int tct_ring_is_closed(tct_ring *r) { return __atomic_load_n(&r->closed, __ATOMIC_ACQUIRE); }

    static inline void tct_store_ptr(void **p, void *v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline int tct_load_int(int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void tct_add_long(long *p, long v) { __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
    static inline void tct_set_errno(int e) { errno = e; }
    static inline int tct_get_errno(void) { return errno; }
    static inline void tct_store_int(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

    /* Resident OS pages in [addr, addr+len) (addr page aligned), -1 on error. */
    static long tct_resident(void *addr, size_t len) {
        long os = sysconf(_SC_PAGESIZE);
        size_t n = (len + os - 1) / os, i;
        long count = 0;
        unsigned char *vec = (unsigned char *)malloc(n ? n : 1);
        if (!vec) return -1;
        if (mincore(addr, len, vec) != 0) { free(vec); return -1; }
        for (i = 0; i < n; i++) count += vec[i] & 1;
        free(vec);
        return count;
    }
    """
    ctypedef struct tct_item:
        void *p
        size_t n
        uint64_t key
    ctypedef struct tct_ring:
        tct_item *slots
        uint64_t cap
        uint64_t head
        uint64_t tail
        int closed
    int tct_ring_push(tct_ring *r, const tct_item *it) nogil
    int tct_ring_pop(tct_ring *r, tct_item *out) nogil
    void tct_ring_close(tct_ring *r) nogil
    int tct_ring_is_closed(tct_ring *r) nogil
    void tct_store_ptr(void **p, void *v) nogil
    int tct_load_int(int *p) nogil
    void tct_add_long(long *p, long v) nogil
    void tct_set_errno(int e) nogil
    int tct_get_errno() nogil
    void tct_store_int(int *p, int v) nogil
    long tct_resident(void *addr, size_t len) nogil



LOCATION_NAMES = {SPAN_IN_USE: "in_use", SPAN_ON_NORMAL: "normal", SPAN_ON_RETURNED: "returned", 3: "dead"}
PAGE_SIZE = kPageSize
MAX_PAGES = kMaxPages
MAX_SMALL_SIZE = kMaxSmallSize
PAGEMAP_LEAF_PAGES = kPagemapLeafLen      # pages covered by one pagemap leaf

# =============================================================================
# Raw memory helpers (addresses as ints; tests own the memory they name)
# =============================================================================

def fill(uintptr_t addr, size_t n, uint64_t key):
    """Write the pattern of `key` over n bytes at addr."""
    with nogil:
        h_fill(<void *>addr, n, key)

def check(uintptr_t addr, size_t n, uint64_t key):
    """True if the n bytes at addr hold the pattern of `key`."""
    cdef int ok
    with nogil:
        ok = h_check(<void *>addr, n, key)
    return bool(ok)

def is_zero(uintptr_t addr, size_t n):
    cdef int ok
    with nogil:
        ok = h_is_zero(<void *>addr, n)
    return bool(ok)

def resident_bytes(uintptr_t addr, size_t n):
    """Bytes of [addr, addr+n) resident in RAM (mincore), -1 on error."""
    cdef long pages = tct_resident(<void *>addr, n)
    if pages < 0:
        return -1
    import mmap
    return pages * mmap.PAGESIZE

def restore_after_move(str case):
    """tc_os_restore_after_move (includes/tc_platform.h) on a 16-page range
    dst, left as a failed page move may leave it: "intact" (still mapped,
    holding 7s), "hole" (unmapped, as Linux 5.7 to at least 6.6 leave the destination
    of a move whose source spans two mappings), or "taken" (unmapped, then
    its second half mapped by someone else). Returns (result, whether dst is
    wholly mapped afterwards, dst's first and last bytes or None)."""
    cdef size_t n = 16 * 4096
    cdef char *region = <char *>tc_os_map(3 * n)     # dst in the middle, mapped neighbours
    cdef char *dst
    cdef int rc
    if region == NULL:
        raise MemoryError()
    dst = region + n
    memset(dst, 7, n)
    if case == "hole" or case == "taken":
        tc_os_unmap(dst, n)
    if case == "taken" and tc_os_map_at(dst + n // 2, n // 2) == NULL:
        tc_os_unmap(region, 3 * n)
        raise OSError("could not map the second half of the hole")
    try:
        rc = tc_os_restore_after_move(dst, n)
        mapped = tc_os_range_mapped(dst, n) == 0
        return rc, mapped, ((dst[0], dst[n - 1]) if mapped else None)
    finally:
        tc_os_unmap(region, 3 * n)

def sort_addrs(list values):
    """threadcache_sort_addrs on a copy of values (ints below 2**64): the
    sorted list, and whether the scratch half was written past n."""
    cdef uint32_t n = len(values)
    cdef uint32_t i
    cdef uintptr_t *buf = <uintptr_t *>libc_calloc(2 * n + 2, sizeof(uintptr_t))
    if buf == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            buf[i] = values[i]
        buf[2 * n] = buf[2 * n + 1] = 0xA5A5A5A5A5A5A5A5     # guards after the scratch
        threadcache_sort_addrs(buf, buf + n, n)
        return ([buf[i] for i in range(n)],
                buf[2 * n] != 0xA5A5A5A5A5A5A5A5 or buf[2 * n + 1] != 0xA5A5A5A5A5A5A5A5)
    finally:
        libc_free(buf)

# =============================================================================
# Size map
# =============================================================================

def sizemap_private():
    """A freshly generated private size map: dict with 'classes'
    [(cl, size, pages, batch, objects_per_span)], 'lookup' (bytes: class of
    every request size 0..kMaxSmallSize, by table lookup) and 'aligned'
    (function (size, alignment) -> class)."""
    cdef SizeMap *m = <SizeMap *>libc_calloc(1, sizeof(SizeMap))
    cdef size_t size
    cdef bytearray lookup = bytearray(kMaxSmallSize + 1)
    cdef int cl
    if m == NULL:
        raise MemoryError()
    try:
        if sizemap_init(m) != 0:
            raise AssertionError("sizemap_init reported an inconsistent table")
        for size in range(kMaxSmallSize + 1):
            lookup[size] = sizemap_class(m, size)
        classes = [(cl, m.class_to_size[cl], m.class_to_pages[cl], m.num_objects_to_move[cl],
                    m.objects_per_span[cl]) for cl in range(1, m.num_classes)]
        aligned = {}
        for a in (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192):
            for size in (1, 7, 8, 9, 15, 16, 17, 100, 1000, 4000, 5000, 8192, 20000, 65536, 200000, kMaxSmallSize):
                aligned[(size, a)] = sizemap_aligned_class(m, size, a)
        return {"num_classes": m.num_classes, "classes": classes, "lookup": bytes(lookup),
                "aligned": aligned}
    finally:
        libc_free(m)

# =============================================================================
# Pagemap
# =============================================================================

cdef class PrivatePagemap:
    """A pagemap with its own metadata arena. Values are opaque integers
    (never dereferenced), so any page id can be tested."""
    cdef MetaArena *arena
    cdef Pagemap *pm

    def __cinit__(self):
        self.arena = <MetaArena *>libc_calloc(1, sizeof(MetaArena))
        self.pm = <Pagemap *>libc_calloc(1, sizeof(Pagemap))
        if self.arena == NULL or self.pm == NULL:
            raise MemoryError()
        arena_init(self.arena)
        pagemap_init(self.pm, self.arena)

    def __dealloc__(self):
        # Nodes stay in the (leaked) arena: the arena never unmaps by design.
        libc_free(self.pm)
        libc_free(self.arena)

    def ensure(self, uintptr_t start, size_t npages):
        return pagemap_ensure(self.pm, start, npages)

    def has_leaf(self, uintptr_t page):
        return pagemap_leaf(self.pm, page) != NULL

    def set(self, uintptr_t page, uintptr_t value, uint32_t cl=0):
        if pagemap_leaf(self.pm, page) == NULL:
            raise KeyError("no leaf for page %#x (call ensure first)" % page)
        pagemap_set(self.pm, page, <Span *>value)
        pagemap_set_class(self.pm, page, cl)

    def get(self, uintptr_t page):
        """(value, class); (0, 0) where no node exists."""
        return (<uintptr_t>pagemap_span(self.pm, page), pagemap_sizeclass(self.pm, page))

    def class_of(self, uintptr_t addr):
        """The class as free() reads it, from an address (pagemap_sizeclass_of)."""
        return pagemap_sizeclass_of(self.pm, addr)

    @property
    def hot_index(self):
        """The root index of the hot leaf free() tries first (-1: none yet)."""
        cdef uintptr_t i = _hot_index(_hot_load(&self.pm.hot), _leaf_index_offset())
        return -1 if i == <uintptr_t>-1 else <long>i

    def mark_heap(self, uintptr_t start, size_t npages):
        if pagemap_ensure(self.pm, start, npages) != 0:
            raise MemoryError()
        pagemap_mark_heap(self.pm, start, npages)

    def is_heap(self, uintptr_t page):
        return bool(pagemap_is_heap(self.pm, page))

    @property
    def node_bytes(self):
        return self.pm.node_bytes

    @property
    def arena_mapped_bytes(self):
        return self.arena.mapped_bytes

ctypedef struct PMShared:
    Pagemap *pm
    int stop
    uint64_t seed
    long writes
    long reads
    long bad
    long seen

cdef inline uintptr_t _pm_domain_page(uint64_t r) noexcept nogil:
    # 8 leaves' worth of pages: leaves appear while readers read
    return (((r >> 40) & 7) << kPagemapLeafBits) | (r & (kPagemapLeafLen - 1))

cdef inline uintptr_t _pm_value(uintptr_t page) noexcept nogil:
    return (page << 4) | 8

cdef void *_pm_writer(void *arg) noexcept nogil:
    cdef PMShared *sh = <PMShared *>arg
    cdef uint64_t s = sh.seed
    cdef long i
    cdef uintptr_t page
    for i in range(sh.writes):
        page = _pm_domain_page(h_rand(&s))
        if pagemap_ensure(sh.pm, page, 1) != 0:
            tct_add_long(&sh.bad, 1)
            continue
        pagemap_set(sh.pm, page, <Span *>_pm_value(page))
        pagemap_set_class(sh.pm, page, <uint32_t>(page % 200 + 1))
    tct_store_int(&sh.stop, 1)
    return NULL

cdef void *_pm_reader(void *arg) noexcept nogil:
    cdef PMShared *sh = <PMShared *>arg
    cdef uint64_t s = sh.seed ^ <uintptr_t>&s
    cdef uintptr_t page, v
    cdef uint32_t cl, cl_free
    cdef long bad = 0, seen = 0, n = 0
    while not tct_load_int(&sh.stop) or n < 1000:
        page = _pm_domain_page(h_rand(&s))
        v = <uintptr_t>pagemap_span(sh.pm, page)
        cl = pagemap_sizeclass(sh.pm, page)
        cl_free = pagemap_sizeclass_of(sh.pm, (page << kPageShift) | (n & (kPageSize - 1)))
        if v != 0 and v != _pm_value(page):
            bad += 1
        if cl != 0 and cl != page % 200 + 1:
            bad += 1
        if cl_free != 0 and cl_free != page % 200 + 1:
            bad += 1
        if v != 0:
            seen += 1
        n += 1
    tct_add_long(&sh.bad, bad)
    tct_add_long(&sh.seen, seen)
    tct_add_long(&sh.reads, n)
    return NULL

def pagemap_concurrent(int readers=3, long writes=20000, uint64_t seed=1):
    """One writer creates nodes and entries of a private pagemap while
    `readers` threads read random pages without a lock. Returns
    {'reads', 'bad', 'seen'}: bad counts values that were neither empty nor
    what the writer stored (a torn or unpublished node)."""
    cdef PrivatePagemap pm = PrivatePagemap()
    cdef PMShared sh
    cdef pthread_t th[17]
    cdef int i, started = 0
    if readers < 1 or readers > 16:
        raise ValueError("readers must be 1..16")
    memset(&sh, 0, sizeof(sh))
    sh.pm = pm.pm
    sh.seed = seed
    sh.writes = writes
    with nogil:
        for i in range(readers):
            if pthread_create(&th[started], NULL, _pm_reader, &sh) == 0:
                started += 1
        if pthread_create(&th[started], NULL, _pm_writer, &sh) == 0:
            started += 1
        else:
            tct_store_int(&sh.stop, 1)
        for i in range(started):
            pthread_join(th[i], NULL)
    if started != readers + 1:
        raise RuntimeError("pthread_create failed")
    return {"reads": sh.reads, "bad": sh.bad, "seen": sh.seen}

# =============================================================================
# Page heap
# =============================================================================

cdef void _tree_inorder(Span *t, list out, int depth) except *:
    if t == NULL:
        return
    if depth > 10000:
        raise AssertionError("best-fit tree deeper than 10000: cycle?")
    _tree_inorder(t.left, out, depth + 1)
    out.append(<uintptr_t>t)
    _tree_inorder(t.right, out, depth + 1)

cdef list _heap_free_spans(PageHeap *h, list errs):
    """Every span on the heap's free structures: [(start_page, npages, location, handle)]."""
    cdef Span *s
    cdef Span *prev
    cdef size_t i
    cdef int ret
    cdef long guard
    out = []
    for i in range(1, kMaxPages + 1):
        for ret in range(2):
            s = h.returned[i] if ret else h.normal[i]
            if ((h.nonempty[ret][i >> 6] >> (i & 63)) & 1) != (s != NULL):
                errs.append("free-list bitmap says the %d-page %s list is %s" % (
                    i, "returned" if ret else "normal", "empty" if s != NULL else "non-empty"))
            prev = NULL
            guard = 0
            while s != NULL:
                guard += 1
                if guard > 10000000:
                    errs.append("free list %d (%s) has a cycle" % (i, "returned" if ret else "normal"))
                    break
                if s.npages != i:
                    errs.append("span %#x of %d pages on the %d-page %s list" % (span_addr(s), s.npages, i, "returned" if ret else "normal"))
                if s.location != (SPAN_ON_RETURNED if ret else SPAN_ON_NORMAL):
                    errs.append("span %#x on a %s list has location %s" % (span_addr(s), "returned" if ret else "normal", LOCATION_NAMES.get(s.location, s.location)))
                if s.in_tree:
                    errs.append("span %#x on a list is flagged in_tree" % span_addr(s))
                if s.prev != prev:
                    errs.append("span %#x: broken prev link" % span_addr(s))
                out.append((s.start, s.npages, s.location, <uintptr_t>s))
                prev = s
                s = s.next
    for ret in range(2):
        nodes = []
        _tree_inorder(h.large_returned if ret else h.large_normal, nodes, 0)
        last = None
        for handle in nodes:
            s = <Span *><uintptr_t>handle
            if s.npages <= kMaxPages:
                errs.append("span %#x of %d pages in the best-fit tree" % (span_addr(s), s.npages))
            if not s.in_tree:
                errs.append("span %#x in a tree is not flagged in_tree" % span_addr(s))
            if s.location != (SPAN_ON_RETURNED if ret else SPAN_ON_NORMAL):
                errs.append("span %#x in the %s tree has location %s" % (span_addr(s), "returned" if ret else "normal", LOCATION_NAMES.get(s.location, s.location)))
            key = (s.npages, s.start)
            if last is not None and not last < key:
                errs.append("best-fit tree out of order at span %#x" % span_addr(s))
            last = key
            out.append((s.start, s.npages, s.location, handle))
    return out

cdef list _heap_check(PageHeap *h, object live, bint live_complete):
    """Invariants of a quiescent page heap; `live` are the in-use spans the
    caller knows of (all of them when live_complete). Returns messages."""
    cdef Span *s
    cdef Span *ps
    cdef uintptr_t page
    errs = []
    free = _heap_free_spans(h, errs)
    normal = sum(n for (_, n, loc, _) in free if loc == SPAN_ON_NORMAL) << kPageShift
    returned = sum(n for (_, n, loc, _) in free if loc == SPAN_ON_RETURNED) << kPageShift
    if normal != h.free_bytes:
        errs.append("free_bytes %d but normal free spans hold %d" % (h.free_bytes, normal))
    if returned != h.released_bytes:
        errs.append("released_bytes %d but returned free spans hold %d" % (h.released_bytes, returned))
    # Free spans are recorded at both ends; same-kind neighbours are merged.
    for (start, n, loc, handle) in free:
        s = <Span *><uintptr_t>handle
        if <uintptr_t>pagemap_span(&h.pagemap, start) != handle or <uintptr_t>pagemap_span(&h.pagemap, start + n - 1) != handle:
            errs.append("free span %#x (%d pages): pagemap does not name it at both ends" % (start << kPageShift, n))
    large = 0
    small = 0
    everything = [(st, n, loc) for (st, n, loc, _) in free]
    for handle in live:
        s = <Span *><uintptr_t>handle
        if s.location != SPAN_IN_USE:
            errs.append("live span %#x has location %s" % (span_addr(s), LOCATION_NAMES.get(s.location, s.location)))
        if <uintptr_t>pagemap_span(&h.pagemap, s.start) != handle or <uintptr_t>pagemap_span(&h.pagemap, s.start + s.npages - 1) != handle:
            errs.append("live span %#x: pagemap does not name it at both ends" % span_addr(s))
        if s.sizeclass:
            small += s.npages << kPageShift
            for page in range(s.start, s.start + s.npages):
                if pagemap_sizeclass(&h.pagemap, page) != s.sizeclass or pagemap_span(&h.pagemap, page) != s:
                    errs.append("small span %#x: page %#x not mapped to it with class %d" % (span_addr(s), page << kPageShift, s.sizeclass))
                    break
        else:
            large += s.npages << kPageShift
            if pagemap_sizeclass(&h.pagemap, s.start) != 0:
                errs.append("large span %#x has a size class in the pagemap" % span_addr(s))
        everything.append((s.start, s.npages, SPAN_IN_USE))
    everything.sort()
    for a, b in zip(everything, everything[1:]):
        if a[0] + a[1] > b[0]:
            errs.append("spans overlap: %#x+%d pages (%s) and %#x (%s)" % (a[0] << kPageShift, a[1], LOCATION_NAMES[a[2]], b[0] << kPageShift, LOCATION_NAMES[b[2]]))
        elif a[0] + a[1] == b[0] and a[2] == b[2] and a[2] != SPAN_IN_USE:
            errs.append("adjacent free spans not coalesced: %#x+%d and %#x+%d pages, both %s" % (a[0] << kPageShift, a[1], b[0] << kPageShift, b[1], LOCATION_NAMES[a[2]]))
    if h.system_bytes != h.free_bytes + h.released_bytes + h.large_bytes + h.small_span_bytes:
        errs.append("system_bytes %d != free %d + released %d + large %d + small %d" % (h.system_bytes, h.free_bytes, h.released_bytes, h.large_bytes, h.small_span_bytes))
    if live_complete:
        if large != h.large_bytes:
            errs.append("large_bytes %d but live large spans hold %d" % (h.large_bytes, large))
        if small != h.small_span_bytes:
            errs.append("small_span_bytes %d but live small spans hold %d" % (h.small_span_bytes, small))
        total = sum(n for (_, n, _) in everything) << kPageShift
        if total != h.system_bytes:
            errs.append("spans cover %d bytes, system_bytes is %d" % (total, h.system_bytes))
    return errs


cdef class PrivateHeap:
    """A page heap (with its pagemap and metadata arena) of its own.
    Spans are named by handles (the Span struct's address as an int); the
    heap remembers which are live so a wrong handle raises, not crashes."""
    cdef MetaArena *arena
    cdef PageHeap *heap
    cdef set live
    cdef public int last_errno

    def __cinit__(self, *args, **kwargs):
        self.arena = <MetaArena *>libc_calloc(1, sizeof(MetaArena))
        self.heap = <PageHeap *>libc_calloc(1, sizeof(PageHeap))
        if self.arena == NULL or self.heap == NULL:
            raise MemoryError()
        arena_init(self.arena)
        pageheap_init(self.heap, self.arena)
        self.live = set()
        self.last_errno = 0

    def __dealloc__(self):
        # Give the heap's address space back: free spans and spans still in
        # use tile everything it mapped. (Metadata chunks are leaked.)
        cdef Span *s
        if self.heap != NULL:
            try:
                spans = [(st, n) for (st, n, _, _) in _heap_free_spans(self.heap, [])]
                for handle in self.live:
                    s = <Span *><uintptr_t>handle
                    spans.append((s.start, s.npages))
                for st, n in spans:
                    munmap(<void *>(<uintptr_t>st << kPageShift), <size_t>n << kPageShift)
            except BaseException:
                pass
        libc_free(self.heap)
        libc_free(self.arena)

    cdef Span *_span(self, handle) except NULL:
        if handle not in self.live:
            raise KeyError("not a live span of this heap: %r" % (handle,))
        return <Span *><uintptr_t>handle

    cdef object _took(self, Span *s, int e):
        if s == NULL:
            self.last_errno = e
            return None
        self.live.add(<uintptr_t>s)
        return <uintptr_t>s

    def new(self, size_t npages, uint32_t cl=0):
        """A span of npages in use (cl != 0: a small-object span of that
        class); None when the heap says no (last_errno holds errno)."""
        cdef Span *s
        cdef int e
        with nogil:
            tct_set_errno(0)
            s = pageheap_new(self.heap, npages, cl)
            e = tct_get_errno()
        return self._took(s, e)

    def new_aligned(self, size_t npages, size_t align_pages):
        cdef Span *s
        cdef int e
        with nogil:
            tct_set_errno(0)
            s = pageheap_new_aligned(self.heap, npages, align_pages)
            e = tct_get_errno()
        return self._took(s, e)

    def delete(self, handle):
        cdef Span *s = self._span(handle)
        self.live.discard(handle)
        with nogil:
            pageheap_delete(self.heap, s)

    def resize(self, handle, size_t npages):
        cdef Span *s = self._span(handle)
        cdef int ok
        with nogil:
            ok = pageheap_resize(self.heap, s, npages)
        return bool(ok)

    def release(self, nbytes=None):
        """Release at least nbytes (None: all) of free memory; bytes released."""
        cdef size_t n = <size_t>-1 if nbytes is None else <size_t>nbytes
        cdef size_t done
        with nogil:
            done = pageheap_release(self.heap, n)
        return done

    def set_limit(self, uint64_t nbytes, bint hard=False):
        with nogil:
            pageheap_set_limit(self.heap, nbytes, 1 if hard else 0)

    def span(self, handle):
        cdef Span *s = self._span(handle)
        return {"addr": span_addr(s), "start": s.start, "npages": s.npages,
                "location": LOCATION_NAMES.get(s.location, s.location), "needzero": s.needzero,
                "sizeclass": s.sizeclass, "nbytes": s.npages << kPageShift}

    def lookup(self, uintptr_t addr):
        """(span handle or 0, size class) the pagemap gives for addr's page."""
        cdef uintptr_t page = addr >> kPageShift
        return (<uintptr_t>pagemap_span(&self.heap.pagemap, page), pagemap_sizeclass(&self.heap.pagemap, page))

    def counters(self):
        cdef PageHeap *h = self.heap
        return {"system_bytes": h.system_bytes, "free_bytes": h.free_bytes,
                "released_bytes": h.released_bytes, "large_bytes": h.large_bytes,
                "small_span_bytes": h.small_span_bytes, "large_spans": h.large_spans,
                "small_spans": h.small_spans, "grows": h.grows, "released_total": h.released_total,
                "span_structs": h.span_structs, "limit_bytes": h.limit_bytes,
                "limit_hard": h.limit_hard, "pagemap_node_bytes": h.pagemap.node_bytes,
                "metadata_bytes": self.arena.mapped_bytes}

    def free_spans(self):
        """[(addr, npages, 'normal'|'returned')] sorted by address."""
        errs = []
        spans = _heap_free_spans(self.heap, errs)
        if errs:
            raise AssertionError("; ".join(errs))
        return sorted((st << kPageShift, n, LOCATION_NAMES[loc]) for (st, n, loc, _) in spans)

    def check(self):
        """Invariant violations (empty list: consistent)."""
        return _heap_check(self.heap, self.live, True)

    def fill(self, handle, uint64_t key):
        cdef Span *s = self._span(handle)
        with nogil:
            h_fill(<void *>span_addr(s), s.npages << kPageShift, key)

    def verify(self, handle, uint64_t key):
        cdef Span *s = self._span(handle)
        cdef int ok
        with nogil:
            ok = h_check(<void *>span_addr(s), s.npages << kPageShift, key)
        return bool(ok)

    def reads_zero(self, handle):
        cdef Span *s = self._span(handle)
        cdef int ok
        with nogil:
            ok = h_is_zero(<void *>span_addr(s), s.npages << kPageShift)
        return bool(ok)

    def resident(self, uintptr_t addr, size_t nbytes):
        return resident_bytes(addr, nbytes)

    def model_run(self, uint64_t seed, int steps, int check_every=64, int max_live=128, bint aligned=True):
        """Random new/new_aligned/delete/resize/release natively, each live
        span tagged at its first and last word (an overlap overwrites a tag),
        fresh or released memory checked to read as zeros, and the heap's
        invariants checked every check_every steps and at the end (after
        freeing everything). Returns the violations found."""
        cdef uint64_t rs = seed
        cdef uint64_t r
        cdef Span **spans = <Span **>libc_calloc(max_live, sizeof(Span *))
        cdef uint64_t *tags = <uint64_t *>libc_calloc(max_live, sizeof(uint64_t))
        cdef int nlive = 0, idx, step, op
        cdef size_t n, align, newn, oldn
        cdef uintptr_t oldstart, a
        cdef Span *s
        cdef int ok
        if spans == NULL or tags == NULL:
            libc_free(spans)
            libc_free(tags)
            raise MemoryError()
        out = []
        try:
            for step in range(steps):
                r = h_rand(&rs)
                op = r % 100
                if (op < 45 and nlive < max_live) or nlive == 0:
                    r = h_rand(&rs)
                    if r % 10 < 7:
                        n = 1 + (r >> 8) % 16
                    elif r % 10 < 9:
                        n = 17 + (r >> 8) % 112
                    else:
                        n = 129 + (r >> 8) % 400
                    align = 1
                    if aligned and (r >> 40) % 8 == 0:
                        align = <size_t>1 << ((r >> 44) % 8)
                        s = pageheap_new_aligned(self.heap, n, align)
                    else:
                        s = pageheap_new(self.heap, n, 0)
                    if s == NULL:
                        out.append("step %d: new(%d, align %d) failed without a limit" % (step, n, align))
                        break
                    if s.npages != n:
                        out.append("step %d: asked %d pages, got %d" % (step, n, s.npages))
                    if s.start % align:
                        out.append("step %d: span %#x not aligned to %d pages" % (step, span_addr(s), align))
                    a = span_addr(s)
                    if s.needzero == 0 and ((<uint64_t *>a)[0] != 0 or (<uint64_t *>(a + (s.npages << kPageShift) - 8))[0] != 0):
                        out.append("step %d: span %#x marked as reading zeros holds data" % (step, a))
                    spans[nlive] = s
                    tags[nlive] = h_mix(seed ^ (<uint64_t>step << 20))
                    (<uint64_t *>a)[0] = tags[nlive]
                    (<uint64_t *>(a + (s.npages << kPageShift) - 8))[0] = ~tags[nlive]
                    self.live.add(<uintptr_t>s)
                    nlive += 1
                elif op < 80:
                    idx = <int>((r >> 8) % nlive)
                    s = spans[idx]
                    a = span_addr(s)
                    if (<uint64_t *>a)[0] != tags[idx] or (<uint64_t *>(a + (s.npages << kPageShift) - 8))[0] != ~tags[idx]:
                        out.append("step %d: span %#x (%d pages) tags overwritten: another span overlaps it" % (step, a, s.npages))
                    self.live.discard(<uintptr_t>s)
                    pageheap_delete(self.heap, s)
                    nlive -= 1
                    spans[idx] = spans[nlive]
                    tags[idx] = tags[nlive]
                elif op < 93:
                    idx = <int>((r >> 8) % nlive)
                    s = spans[idx]
                    oldn = s.npages
                    oldstart = s.start
                    newn = 1 + (r >> 24) % (2 * oldn + 4)
                    ok = pageheap_resize(self.heap, s, newn)
                    if ok and (s.npages != newn or s.start != oldstart):
                        out.append("step %d: resize %d -> %d reported success, span is %d pages at %#x (was %#x)" % (step, oldn, newn, s.npages, span_addr(s), oldstart << kPageShift))
                    if not ok and s.npages != oldn:
                        out.append("step %d: failed resize changed the span" % step)
                    if not ok and newn <= oldn:
                        out.append("step %d: shrink %d -> %d pages failed" % (step, oldn, newn))
                    a = span_addr(s)
                    if (<uint64_t *>a)[0] != tags[idx]:
                        out.append("step %d: span %#x head tag lost in resize" % (step, a))
                    (<uint64_t *>(a + (s.npages << kPageShift) - 8))[0] = ~tags[idx]
                elif op < 98:
                    pageheap_release(self.heap, ((r >> 8) % 64 + 1) << kPageShift)
                else:
                    pageheap_release(self.heap, <size_t>-1)
                if check_every > 0 and (step + 1) % check_every == 0:
                    for e in _heap_check(self.heap, self.live, True):
                        out.append("step %d: %s" % (step, e))
                if len(out) > 20:
                    break
            while nlive > 0:
                nlive -= 1
                s = spans[nlive]
                self.live.discard(<uintptr_t>s)
                pageheap_delete(self.heap, s)
            for e in _heap_check(self.heap, self.live, True):
                out.append("after freeing all: %s" % e)
            # All free and coalesced: one span per contiguous run of each kind.
            if self.heap.large_bytes or self.heap.small_span_bytes:
                out.append("after freeing all: bytes still in use")
        finally:
            while nlive > 0:
                nlive -= 1
                self.live.discard(<uintptr_t>spans[nlive])
            libc_free(spans)
            libc_free(tags)
        return out

# =============================================================================
# Size map + page heap + central lists + transfer caches + thread caches
# =============================================================================

cdef class PrivateEngine(PrivateHeap):
    """Every component, privately: the same wiring as the engine, but driven
    explicitly by the test (thread caches are handles, not TLS)."""
    cdef SizeMap *sizemap
    cdef CentralFreeList *central
    cdef TransferCache *transfer
    cdef ThreadCacheRegistry *reg
    cdef set caches

    def __cinit__(self, *args, **kwargs):
        cdef int cl
        self.sizemap = <SizeMap *>libc_calloc(1, sizeof(SizeMap))
        self.central = <CentralFreeList *>libc_calloc(kMaxClasses, sizeof(CentralFreeList))
        self.transfer = <TransferCache *>libc_calloc(kMaxClasses, sizeof(TransferCache))
        self.reg = <ThreadCacheRegistry *>libc_calloc(1, sizeof(ThreadCacheRegistry))
        if self.sizemap == NULL or self.central == NULL or self.transfer == NULL or self.reg == NULL:
            raise MemoryError()
        if sizemap_init(self.sizemap) != 0:
            raise AssertionError("sizemap_init failed")
        for cl in range(1, self.sizemap.num_classes):
            central_init(&self.central[cl], cl, self.sizemap.class_to_size[cl], self.sizemap.class_to_pages[cl],
                         self.sizemap.objects_per_span[cl], self.heap)
            if transfer_init(&self.transfer[cl], cl, self.sizemap.num_objects_to_move[cl],
                             self.sizemap.class_to_size[cl], &self.central[cl], self.arena) != 0:
                raise MemoryError()
        threadcache_registry_init(self.reg, self.sizemap, self.transfer, self.arena)
        self.caches = set()

    def __dealloc__(self):
        # Spans lent to central lists are in use as far as the heap knows:
        # hand them to the base class's unmapping through `live`.
        cdef int cl
        cdef Span *s
        if self.central != NULL and self.sizemap != NULL:
            for cl in range(1, self.sizemap.num_classes):
                for head in (<uintptr_t>self.central[cl].nonempty, <uintptr_t>self.central[cl].full):
                    s = <Span *><uintptr_t>head
                    while s != NULL:
                        self.live.add(<uintptr_t>s)
                        s = s.next
        libc_free(self.sizemap)
        libc_free(self.central)
        libc_free(self.transfer)
        libc_free(self.reg)

    cdef int _cl(self, int cl) except -1:
        if cl < 1 or cl >= self.sizemap.num_classes:
            raise ValueError("no size class %d" % cl)
        return cl

    def classes(self):
        return [(cl, self.sizemap.class_to_size[cl], self.sizemap.class_to_pages[cl],
                 self.sizemap.num_objects_to_move[cl], self.sizemap.objects_per_span[cl])
                for cl in range(1, self.sizemap.num_classes)]

    def class_of(self, size_t size):
        if size > kMaxSmallSize:
            return 0
        return sizemap_class(self.sizemap, size)

    def class_size(self, int cl):
        return self.sizemap.class_to_size[self._cl(cl)]

    def batch(self, int cl):
        return self.sizemap.num_objects_to_move[self._cl(cl)]

    # ---- central free list and transfer cache ----------------------------

    cdef list _chain(self, void *head, void *tail, int got):
        """The chain head..tail as a list, checking its length and end."""
        cdef void *p = head
        cdef int i
        out = []
        for i in range(got):
            if p == NULL:
                raise AssertionError("chain shorter (%d) than the count returned (%d)" % (i, got))
            out.append(<uintptr_t>p)
            if i == got - 1:
                if p != tail:
                    raise AssertionError("chain's last object is not the tail returned")
                break
            p = (<void **>p)[0]
        return out

    cdef void *_link(self, list addrs) except? NULL:
        cdef int i
        cdef void *p
        for i in range(len(addrs)):
            p = <void *><uintptr_t>addrs[i]
            (<void **>p)[0] = <void *><uintptr_t>addrs[i + 1] if i + 1 < len(addrs) else NULL
        return <void *><uintptr_t>addrs[0] if addrs else NULL

    def central_remove(self, int cl, int n, bint whole_lines=False):
        """Up to n objects from the central list (a list of addresses)."""
        cdef void *head = NULL
        cdef void *tail = NULL
        cdef int got
        cdef CentralFreeList *c = &self.central[self._cl(cl)]
        with nogil:
            got = central_remove_range(c, &head, &tail, n, whole_lines)
        if got and (<void **>tail)[0] != NULL:
            raise AssertionError("central_remove_range: chain not NULL-terminated")
        return self._chain(head, tail, got)

    def central_insert(self, int cl, list addrs):
        cdef CentralFreeList *c = &self.central[self._cl(cl)]
        cdef void *head = self._link(addrs)
        cdef int n = len(addrs)
        with nogil:
            central_insert_range(c, head, n)

    def transfer_remove(self, int cl, int n, bint whole_lines=False):
        cdef void *head = NULL
        cdef void *tail = NULL
        cdef int got
        cdef TransferCache *t = &self.transfer[self._cl(cl)]
        with nogil:
            got = transfer_remove_range(t, &head, &tail, n, whole_lines)
        return self._chain(head, tail, got)

    def transfer_insert(self, int cl, list addrs):
        cdef TransferCache *t = &self.transfer[self._cl(cl)]
        cdef void *head = self._link(addrs)
        cdef void *tail = <void *><uintptr_t>addrs[len(addrs) - 1] if addrs else NULL
        cdef int n = len(addrs)
        with nogil:
            transfer_insert_range(t, head, tail, n)

    def invariant_control(self, int cl):
        """The sanitizer legs' control for TC_ASSERT (TCALLOC_ASSERTS builds
        only): break a transfer cache's slot count, then take a batch; the
        engine's check must abort, naming the invariant."""
        cdef TransferCache *t = &self.transfer[self._cl(cl)]
        cdef void *head = NULL
        cdef void *tail = NULL
        if not TCALLOC_ASSERTS:
            raise RuntimeError("built without TCALLOC_ASSERTS: the control would corrupt memory")
        t.used = t.capacity + 1
        with nogil:
            transfer_remove_range(t, &head, &tail, <int>t.batch, 0)
        raise AssertionError("TC_ASSERT did not fire")

    def transfer_drain(self, int cl):
        cdef TransferCache *t = &self.transfer[self._cl(cl)]
        with nogil:
            transfer_drain(t)

    def central_info(self, int cl):
        cdef CentralFreeList *c = &self.central[self._cl(cl)]
        cdef Span *s
        nonempty = []
        full = []
        for lst, head in ((nonempty, <uintptr_t>c.nonempty), (full, <uintptr_t>c.full)):
            s = <Span *>head
            while s != NULL:
                lst.append((span_addr(s), s.npages, s.refcount, s.sizeclass, s.location))
                s = s.next
        return {"size": c.size, "pages": c.pages, "objects_per_span": c.objects_per_span,
                "nspans": c.nspans, "span_bytes": c.span_bytes, "free_objects": c.free_objects,
                "total_objects": c.total_objects, "spans_created": c.spans_created,
                "spans_returned": c.spans_returned, "nonempty": nonempty, "full": full}

    def transfer_info(self, int cl):
        cdef TransferCache *t = &self.transfer[self._cl(cl)]
        return {"used": t.used, "capacity": t.capacity, "batch": t.batch,
                "insert_hits": t.insert_hits, "insert_misses": t.insert_misses,
                "remove_hits": t.remove_hits, "remove_misses": t.remove_misses}

    def span_lent(self):
        """Every span lent to a central list, as heap 'live' spans for check()."""
        cdef int cl
        cdef Span *s
        out = []
        for cl in range(1, self.sizemap.num_classes):
            for head in (<uintptr_t>self.central[cl].nonempty, <uintptr_t>self.central[cl].full):
                s = <Span *>head
                while s != NULL:
                    out.append(<uintptr_t>s)
                    s = s.next
        return out

    def check(self):
        """Page-heap invariants, counting the central lists' spans as live."""
        return _heap_check(self.heap, list(self.live) + self.span_lent(), True)

    # ---- thread caches (handles instead of TLS) ----------------------------

    cdef ThreadCache *_tc(self, handle) except NULL:
        if handle not in self.caches:
            raise KeyError("not a live cache: %r" % (handle,))
        return <ThreadCache *><uintptr_t>handle

    def cache_create(self):
        cdef ThreadCache *tc = threadcache_create(self.reg)
        if tc == NULL:
            raise MemoryError()
        self.caches.add(<uintptr_t>tc)
        return <uintptr_t>tc

    def cache_destroy(self, handle):
        cdef ThreadCache *tc = self._tc(handle)
        self.caches.discard(handle)
        threadcache_destroy(tc)

    def cache_flush(self, handle):
        threadcache_flush(self._tc(handle))

    def cache_alloc(self, handle, size_t size):
        cdef ThreadCache *tc = self._tc(handle)
        cdef void *p
        if size > kMaxSmallSize:
            raise ValueError("thread caches hold small objects only")
        p = threadcache_pop(tc, sizemap_class(self.sizemap, size))
        return <uintptr_t>p

    def cache_free(self, handle, uintptr_t addr):
        cdef ThreadCache *tc = self._tc(handle)
        cdef uint32_t cl = pagemap_sizeclass(&self.heap.pagemap, addr >> kPageShift)
        if cl == 0:
            raise ValueError("%#x is not a small object of this engine" % addr)
        threadcache_push(tc, cl, <void *>addr)

    def cache_alloc_many(self, handle, size_t size, long n):
        """n objects of `size` natively; list of addresses (0 where it failed)."""
        cdef ThreadCache *tc = self._tc(handle)
        cdef uint32_t cl = sizemap_class(self.sizemap, size)
        cdef uintptr_t *buf = <uintptr_t *>libc_calloc(n if n > 0 else 1, sizeof(uintptr_t))
        cdef long i
        if buf == NULL:
            raise MemoryError()
        with nogil:
            for i in range(n):
                buf[i] = <uintptr_t>threadcache_pop(tc, cl)
        out = [buf[i] for i in range(n)]
        libc_free(buf)
        return out

    def cache_free_many(self, handle, list addrs):
        """Free natively; returns the largest cache size (bytes) seen after a
        free, and the largest list length minus its max_length."""
        cdef ThreadCache *tc = self._tc(handle)
        cdef long n = len(addrs), i
        cdef uintptr_t *buf = <uintptr_t *>libc_calloc(n if n > 0 else 1, sizeof(uintptr_t))
        cdef uint32_t cl
        cdef uint64_t peak = 0
        cdef int64_t over = -(1 << 30)
        cdef FreeList *l
        if buf == NULL:
            raise MemoryError()
        for i in range(n):
            buf[i] = addrs[i]
            if pagemap_sizeclass(&self.heap.pagemap, buf[i] >> kPageShift) == 0:
                bad = buf[i]
                libc_free(buf)
                raise ValueError("%#x is not a small object of this engine" % bad)
        with nogil:
            for i in range(n):
                cl = pagemap_sizeclass(&self.heap.pagemap, buf[i] >> kPageShift)
                threadcache_push(tc, cl, <void *>buf[i])
                if threadcache_bytes(tc) > peak:
                    peak = threadcache_bytes(tc)
                l = &tc.lists[cl]
                if <int64_t>freelist_length(l) - <int64_t>freelist_max(l) > over:
                    over = <int64_t>freelist_length(l) - <int64_t>freelist_max(l)
        libc_free(buf)
        return {"peak_size": peak, "max_over_length": over}

    def cache_scavenge(self, handle, bint periodic=True):
        """Run one scavenge now (the periodic kind by default)."""
        _scavenge(self._tc(handle), periodic)

    def cache_list(self, handle, int cl):
        """A list's fields; `links`: its chain walked to the end (the length
        is derived from counters: see FreeList)."""
        cdef ThreadCache *tc = self._tc(handle)
        cdef FreeList *l = &tc.lists[self._cl(cl)]
        cdef void *q = l.head
        cdef long links = 0
        while q != NULL:
            links += 1
            q = (<void **>q)[0]
        return {"length": freelist_length(l), "links": links, "lowater": freelist_lowater(l), "max_length": freelist_max(l),
                "overages": l.overages, "size": l.size, "batch": l.batch,
                "mallocs": freelist_mallocs_snapshot(l), "frees": l.frees}

    def cache_info(self, handle):
        cdef ThreadCache *tc = self._tc(handle)
        return {"size": threadcache_bytes(tc), "capacity": tc.capacity, "max_size": tc.max_size, "fetches": tc.fetches,
                "scavenges": tc.scavenges, "flush_requested": tc.flush_requested,
                "overflows": tc.overflows}

    def registry_info(self):
        return {"unclaimed": self.reg.unclaimed, "overall_max": self.reg.overall_max,
                "per_thread_max": self.reg.per_thread_max, "num_caches": self.reg.num_caches,
                "caches_created": self.reg.caches_created, "structs": self.reg.structs}

    def set_overall_max(self, uint64_t nbytes):
        threadcache_set_overall_max(self.reg, nbytes)

    def set_per_thread_max(self, uint64_t nbytes):
        self.reg.per_thread_max = nbytes

    def byte_pools(self):
        """The figures the engine's stats() sums, for this private engine."""
        cdef int cl
        cdef ThreadCache *tc
        cdef uint64_t size
        tcache = 0
        transfer = 0
        central = 0
        overhead = 0
        for handle in self.caches:
            tc = <ThreadCache *><uintptr_t>handle
            tcache += threadcache_bytes(tc)
        for cl in range(1, self.sizemap.num_classes):
            size = self.sizemap.class_to_size[cl]
            transfer += <uint64_t>self.transfer[cl].used * self.transfer[cl].batch * size
            central += self.central[cl].free_objects * size
            overhead += self.central[cl].span_bytes - self.central[cl].total_objects * size
        h = self.counters()
        return {"thread_cache_free_bytes": tcache, "transfer_cache_free_bytes": transfer,
                "central_free_bytes": central, "span_overhead_bytes": overhead,
                "page_heap_free_bytes": h["free_bytes"], "page_heap_released_bytes": h["released_bytes"],
                "large_bytes": h["large_bytes"], "small_span_bytes": h["small_span_bytes"],
                "heap_bytes": h["system_bytes"]}

    def central_stress(self, int cl, int nthreads, long iters, uint64_t seed=1):
        """nthreads native threads move batches through this class's transfer
        cache and central list, filling and verifying every object. Returns
        {'corrupt', 'duplicates', 'ops'}."""
        cdef CStress sh
        cdef CWorker *w
        cdef pthread_t th[64]
        cdef int i, started = 0
        self._cl(cl)
        if nthreads < 1 or nthreads > 64:
            raise ValueError("nthreads must be 1..64")
        w = <CWorker *>libc_calloc(nthreads, sizeof(CWorker))
        if w == NULL:
            raise MemoryError()
        memset(&sh, 0, sizeof(sh))
        sh.t = &self.transfer[cl]
        sh.size = self.sizemap.class_to_size[cl]
        sh.batch = self.sizemap.num_objects_to_move[cl]
        with nogil:
            for i in range(nthreads):
                w[i].sh = &sh
                w[i].index = i
                w[i].iters = iters
                w[i].seed = seed * 1000 + i
                if pthread_create(&th[started], NULL, _central_worker, &w[i]) == 0:
                    started += 1
            for i in range(started):
                pthread_join(th[i], NULL)
        corrupt = sum(w[i].corrupt for i in range(nthreads))
        ops = sum(w[i].ops for i in range(nthreads))
        libc_free(w)
        if started != nthreads:
            raise RuntimeError("pthread_create failed")
        return {"corrupt": corrupt, "ops": ops}

ctypedef struct CStress:
    TransferCache *t
    size_t size
    int batch

ctypedef struct CWorker:
    CStress *sh
    int index
    long iters
    uint64_t seed
    long corrupt
    long ops

cdef inline void _give(CStress *sh, void *head, int n) noexcept nogil:
    cdef void *tail = head
    cdef int j
    for j in range(n - 1):
        tail = (<void **>tail)[0]
    transfer_insert_range(sh.t, head, tail, n)

cdef void *_central_worker(void *arg) noexcept nogil:
    # Hold up to 8 chains; each object carries its owner's key in its first
    # 8 bytes plus the pattern after it (the first word is the link while the
    # object sits in the central stores).
    cdef CWorker *w = <CWorker *>arg
    cdef CStress *sh = w.sh
    cdef void *heads[8]
    cdef int counts[8]
    cdef uint64_t keys[8]
    cdef uint64_t rs = w.seed
    cdef uint64_t r
    cdef long it
    cdef int k, j, n, got
    cdef void *p
    cdef void *tail
    cdef void *head
    for k in range(8):
        heads[k] = NULL
        counts[k] = 0
    for it in range(w.iters):
        r = h_rand(&rs)
        k = <int>(r % 8)
        if heads[k] != NULL:
            # verify, relink, give back
            p = heads[k]
            tail = NULL
            for j in range(counts[k]):
                if not h_check(<char *>p + 8, sh.size - 8, keys[k] + j):
                    w.corrupt += 1
                p = (<void **>p)[0]
            _give(sh, heads[k], counts[k])
            heads[k] = NULL
            counts[k] = 0
        else:
            n = sh.batch if (r >> 8) % 2 == 0 else 1 + <int>((r >> 16) % <uint64_t>sh.batch)
            # Half the refills as a thread cache asks (whole cache lines: may bring more than n)
            got = transfer_remove_range(sh.t, &head, &tail, n, <bint>((r >> 32) & 1))
            if got == 0:
                continue
            keys[k] = h_mix(w.seed ^ <uint64_t>it)
            p = head
            for j in range(got):
                # the link word stays; pattern after it
                h_fill(<char *>p + 8, sh.size - 8, keys[k] + j)
                if j < got - 1:
                    p = (<void **>p)[0]
            (<void **>tail)[0] = NULL
            heads[k] = head
            counts[k] = got
        w.ops += 1
    for k in range(8):
        if heads[k] != NULL:
            _give(sh, heads[k], counts[k])
    return NULL

# =============================================================================
# The public C API, through the capsule, from native threads
# =============================================================================

cdef TcallocCAPI *_api() except NULL:
    return h_tcalloc_api()

cdef struct ChurnShared:
    TcallocCAPI *api
    size_t size
    int stop

cdef void *_churn_main(void *arg) noexcept nogil:
    cdef ChurnShared *sh = <ChurnShared *>arg
    cdef char *p
    while not tct_load_int(&sh.stop):
        p = <char *>sh.api.malloc(sh.size)
        if p != NULL:
            p[0] = 1
            sh.api.free(p)
    return NULL

def ext_bytes_in_use_while_churning(size_t size, long polls):
    """Read TcallocExtAPI.bytes_in_use() `polls` times while a native thread
    mallocs and frees one block of `size` in a loop. Returns every reading
    above 2**48 (more than tcalloc can map): a figure that wrapped."""
    cdef TcallocCAPI *api = _api()
    cdef TcallocExtAPI *ext = TcallocExtAPI_Import()
    cdef ChurnShared sh
    cdef pthread_t th
    cdef long i, nbad = 0
    cdef size_t v
    cdef size_t bad[16]
    sh.api = api
    sh.size = size
    sh.stop = 0
    with nogil:
        if pthread_create(&th, NULL, _churn_main, &sh) != 0:
            nbad = -1
        else:
            for i in range(polls):
                v = ext.bytes_in_use()
                if v > (<size_t>1 << 48) and nbad < 16:
                    bad[nbad] = v
                    nbad += 1
            tct_store_int(&sh.stop, 1)
            pthread_join(th, NULL)
    if nbad < 0:
        raise RuntimeError("pthread_create failed")
    return [bad[i] for i in range(nbad)]

def capi_call_errno(str fn, a=0, b=0):
    """Call one C API function with errno cleared first: (result, errno).
    fn: malloc(size) / calloc(n, size) / realloc(ptr, size) /
    aligned_alloc(alignment, size) / free(ptr)."""
    cdef TcallocCAPI *api = _api()
    cdef size_t x = a
    cdef size_t y = b
    cdef void *p = NULL
    cdef int e
    cdef int code = ("malloc", "calloc", "realloc", "aligned_alloc", "free").index(fn)
    with nogil:
        tct_set_errno(0)
        if code == 0:
            p = api.malloc(x)
        elif code == 1:
            p = api.calloc(x, y)
        elif code == 2:
            p = api.realloc(<void *>x, y)
        elif code == 3:
            p = api.aligned_alloc(x, y)
        else:
            api.free(<void *>x)
        e = tct_get_errno()
    return (<uintptr_t>p, e)

ctypedef struct RingWorker:
    TcallocCAPI *api
    int index
    long iters
    uint64_t seed
    int large_every          # one block in this many is large (0: never)
    int corrupt_every        # inject: spoil one handed-over block in this many (0: never)
    int kinds                # bit 0 realloc, 1 calloc, 2 aligned_alloc (malloc always)
    tct_ring *inbox
    tct_ring *outbox
    # results
    long blocks
    long handed
    long received
    long corrupt
    long injected
    long bad_usable
    long bad_zero
    long bad_align
    long failed
    long reallocs

cdef inline size_t _pick_size(uint64_t r, int large_every) noexcept nogil:
    cdef int bits
    if large_every > 0 and (r >> 32) % <uint64_t>large_every == 0:
        return kMaxSmallSize - 4096 + <size_t>((r >> 8) % (1 << 20))     # around and over the small limit
    # log-uniform 1..8 KiB, with some up to 64 KiB
    bits = <int>((r >> 40) % 13) + 1 + (3 if (r >> 56) % 16 == 0 else 0)
    return 1 + <size_t>((r >> 8) % (<uint64_t>1 << bits))

cdef inline bint _usable_ok(RingWorker *w, void *p, size_t n) noexcept nogil:
    return w.api.usable_size(p) >= n

cdef void _verify_free(RingWorker *w, tct_item *it) noexcept nogil:
    if not h_check(it.p, it.n, it.key):
        w.corrupt += 1
    w.api.free(it.p)

cdef void *_ring_main(void *arg) noexcept nogil:
    cdef RingWorker *w = <RingWorker *>arg
    cdef tct_item held[64]
    cdef tct_item it, got
    cdef uint64_t rs = w.seed
    cdef uint64_t r
    cdef long i
    cdef int kind, slot, k
    cdef size_t size, align, keep
    cdef void *p
    for k in range(64):
        held[k].p = NULL
    for i in range(w.iters):
        r = h_rand(&rs)
        size = _pick_size(h_rand(&rs), w.large_every)
        kind = <int>(r % 16)
        slot = <int>((r >> 8) % 64)
        if kind == 0 and held[slot].p != NULL and w.kinds & 1:
            # realloc a held block: the prefix must survive
            it = held[slot]
            p = w.api.realloc(it.p, size)
            if p == NULL:
                w.failed += 1
                continue
            keep = it.n if it.n < size else size
            if not h_check(p, keep, it.key):
                w.corrupt += 1
            if not _usable_ok(w, p, size):
                w.bad_usable += 1
            held[slot].p = p
            held[slot].n = size
            held[slot].key = h_mix(w.seed ^ (<uint64_t>w.index << 48) ^ <uint64_t>i)
            h_fill(p, size, held[slot].key)
            w.reallocs += 1
            continue
        if kind == 1 and w.kinds & 2:
            p = w.api.calloc(1, size)
            if p != NULL and not h_is_zero(p, size):
                w.bad_zero += 1
        elif kind == 2 and w.kinds & 4:
            align = <size_t>1 << (3 + (r >> 20) % 14)      # 8 B .. 64 KiB
            p = w.api.aligned_alloc(align, size)
            if p != NULL and (<uintptr_t>p) % align != 0:
                w.bad_align += 1
        else:
            p = w.api.malloc(size)
        if p == NULL:
            w.failed += 1
            continue
        if not _usable_ok(w, p, size):
            w.bad_usable += 1
        w.blocks += 1
        it.p = p
        it.n = size
        it.key = h_mix(w.seed ^ (<uint64_t>w.index << 48) ^ <uint64_t>i)
        h_fill(p, size, it.key)
        if (r >> 16) % 3 != 0:
            # hand it to the next thread
            if w.corrupt_every > 0 and w.handed % w.corrupt_every == 0:
                (<unsigned char *>p)[size // 2] ^= 0x5A
                w.injected += 1
            if tct_ring_push(w.outbox, &it):
                w.handed += 1
            elif w.corrupt_every > 0 and w.handed % w.corrupt_every == 0:
                (<unsigned char *>p)[size // 2] ^= 0x5A        # not handed: undo
                w.injected -= 1
                _verify_free(w, &it)
            else:
                _verify_free(w, &it)
        else:
            if held[slot].p != NULL:
                _verify_free(w, &held[slot])
            held[slot] = it
        k = 0
        while k < 8 and tct_ring_pop(w.inbox, &got):
            _verify_free(w, &got)
            w.received += 1
            k += 1
    for k in range(64):
        if held[k].p != NULL:
            _verify_free(w, &held[k])
    tct_ring_close(w.outbox)
    while True:
        if tct_ring_pop(w.inbox, &got):
            _verify_free(w, &got)
            w.received += 1
        elif tct_ring_is_closed(w.inbox):
            # the producer closed after its last push: one more look
            if not tct_ring_pop(w.inbox, &got):
                break
            _verify_free(w, &got)
            w.received += 1
        else:
            sched_yield()
    return NULL

def ring_workload(int nthreads=8, long iters=20000, uint64_t seed=1, int large_every=256,
                  int corrupt_every=0, int ring_capacity=1024, int kinds=7):
    """nthreads pthreads, without the GIL, through the capsule: malloc /
    calloc / aligned_alloc / realloc blocks of 1 B .. 1.2 MiB, fill every
    byte with a per-block pattern, hand two thirds to the next thread
    through an SPSC ring (it verifies and frees them), keep the rest a while
    and verify them before freeing. Returns summed counters; 'corrupt' must
    be 0 unless corrupt_every injects damage (then it equals 'injected')."""
    cdef TcallocCAPI *api = _api()
    cdef RingWorker *w
    cdef tct_ring *rings
    cdef pthread_t *th
    cdef int i, started = 0
    if nthreads < 1 or nthreads > 256:
        raise ValueError("nthreads must be 1..256")
    w = <RingWorker *>libc_calloc(nthreads, sizeof(RingWorker))
    rings = <tct_ring *>libc_calloc(nthreads, sizeof(tct_ring))
    th = <pthread_t *>libc_calloc(nthreads, sizeof(pthread_t))
    if w == NULL or rings == NULL or th == NULL:
        libc_free(w); libc_free(rings); libc_free(th)
        raise MemoryError()
    try:
        for i in range(nthreads):
            rings[i].cap = ring_capacity
            rings[i].slots = <tct_item *>libc_calloc(ring_capacity, sizeof(tct_item))
            if rings[i].slots == NULL:
                raise MemoryError()
        with nogil:
            for i in range(nthreads):
                w[i].api = api
                w[i].index = i
                w[i].iters = iters
                w[i].seed = seed * 7919 + i
                w[i].large_every = large_every
                w[i].corrupt_every = corrupt_every
                w[i].kinds = kinds
                w[i].inbox = &rings[i]
                w[i].outbox = &rings[(i + 1) % nthreads]
            for i in range(nthreads):
                if pthread_create(&th[i], NULL, _ring_main, &w[i]) != 0:
                    break
                started += 1
            if started < nthreads:
                # close the rings the missing threads would have closed
                for i in range(started, nthreads):
                    tct_ring_close(&rings[(i + 1) % nthreads])
            for i in range(started):
                pthread_join(th[i], NULL)
        if started < nthreads:
            raise RuntimeError("pthread_create failed after %d threads" % started)
        out = {}
        for key in ("blocks", "handed", "received", "corrupt", "injected", "bad_usable",
                    "bad_zero", "bad_align", "failed", "reallocs"):
            out[key] = 0
        for i in range(nthreads):
            out["blocks"] += w[i].blocks
            out["handed"] += w[i].handed
            out["received"] += w[i].received
            out["corrupt"] += w[i].corrupt
            out["injected"] += w[i].injected
            out["bad_usable"] += w[i].bad_usable
            out["bad_zero"] += w[i].bad_zero
            out["bad_align"] += w[i].bad_align
            out["failed"] += w[i].failed
            out["reallocs"] += w[i].reallocs
        return out
    finally:
        for i in range(nthreads):
            libc_free(rings[i].slots)
        libc_free(w); libc_free(rings); libc_free(th)

ctypedef struct ShortWorker:
    TcallocCAPI *api
    uint64_t seed
    int blocks
    long corrupt
    long failed

cdef void *_short_main(void *arg) noexcept nogil:
    # A short life: a few dozen blocks (small and one large), verified and
    # freed in a shuffled order; the cache this thread built must be flushed
    # by the engine's thread-exit destructor.
    cdef ShortWorker *w = <ShortWorker *>arg
    cdef tct_item items[64]
    cdef uint64_t rs = w.seed
    cdef int i, j, n = w.blocks if w.blocks <= 64 else 64
    cdef tct_item tmp
    for i in range(n):
        items[i].n = 1 + <size_t>(h_rand(&rs) % 4096) if i else 300000
        items[i].key = h_mix(w.seed + <uint64_t>i)
        items[i].p = w.api.malloc(items[i].n)
        if items[i].p == NULL:
            w.failed += 1
            items[i].n = 0
            continue
        h_fill(items[i].p, items[i].n, items[i].key)
    for i in range(n - 1, 0, -1):
        j = <int>(h_rand(&rs) % <uint64_t>(i + 1))
        tmp = items[i]
        items[i] = items[j]
        items[j] = tmp
    for i in range(n):
        if items[i].n:
            if not h_check(items[i].p, items[i].n, items[i].key):
                w.corrupt += 1
            w.api.free(items[i].p)
    return NULL

def short_lived_threads(int total=1000, int concurrent=16, int blocks=32, uint64_t seed=1):
    """`total` pthreads, `concurrent` at a time, each allocating, verifying
    and freeing `blocks` blocks and exiting. Joined before returning (so their
    exit destructors have run). Returns {'threads', 'corrupt', 'failed'}."""
    cdef TcallocCAPI *api = _api()
    cdef ShortWorker *w = <ShortWorker *>libc_calloc(concurrent, sizeof(ShortWorker))
    cdef pthread_t *th = <pthread_t *>libc_calloc(concurrent, sizeof(pthread_t))
    cdef int done = 0, i, started, created = 0
    cdef long corrupt = 0, failed = 0
    if w == NULL or th == NULL:
        libc_free(w); libc_free(th)
        raise MemoryError()
    with nogil:
        while done < total:
            started = 0
            for i in range(concurrent):
                if done + i >= total:
                    break
                w[i].api = api
                w[i].seed = seed * 100003 + <uint64_t>(done + i)
                w[i].blocks = blocks
                w[i].corrupt = 0
                w[i].failed = 0
                if pthread_create(&th[i], NULL, _short_main, &w[i]) != 0:
                    break
                started += 1
            for i in range(started):
                pthread_join(th[i], NULL)
                corrupt += w[i].corrupt
                failed += w[i].failed
            if started == 0:
                break
            created += started
            done += started
    libc_free(w)
    libc_free(th)
    return {"threads": created, "corrupt": corrupt, "failed": failed}

def churn(size_t size, long count, bint free_all=True):
    """On the calling thread, without the GIL: malloc `count` blocks of
    `size`, write each, then (free_all) free them all. Returns the blocks'
    addresses when they are kept (free_all False) so the caller frees them
    with free_blocks()."""
    cdef TcallocCAPI *api = _api()
    cdef void **buf = <void **>libc_calloc(count if count > 0 else 1, sizeof(void *))
    cdef long i, failed = 0
    if buf == NULL:
        raise MemoryError()
    with nogil:
        for i in range(count):
            buf[i] = api.malloc(size)
            if buf[i] == NULL:
                failed += 1
            else:
                memset(buf[i], 0xC3, size if size < 64 else 64)
        if free_all:
            for i in range(count):
                api.free(buf[i])
    out = None if free_all else [<uintptr_t>buf[i] for i in range(count)]
    libc_free(buf)
    if failed:
        raise MemoryError("%d of %d allocations failed" % (failed, count))
    return out

def free_blocks(list addrs):
    cdef TcallocCAPI *api = _api()
    cdef uintptr_t a
    for a in addrs:
        api.free(<void *>a)

cdef class BlockSet:
    """Many blocks held natively (for RSS tests): every byte written so the
    memory is resident."""
    cdef void **blocks
    cdef long n
    cdef readonly uint64_t nbytes

    def __cinit__(self, uint64_t total_bytes, size_t min_size, size_t max_size, uint64_t seed=1):
        cdef TcallocCAPI *api = _api()
        cdef uint64_t rs = seed
        cdef uint64_t done = 0
        cdef size_t size
        cdef long cap = <long>(total_bytes // min_size) + 1
        cdef long n = 0
        cdef void **blocks
        cdef void *p
        self.blocks = <void **>libc_calloc(cap, sizeof(void *))
        if self.blocks == NULL:
            raise MemoryError()
        self.n = 0
        blocks = self.blocks            # no attribute access (and None check) without the GIL
        with nogil:
            while done < total_bytes and n < cap:
                size = min_size + <size_t>(h_rand(&rs) % <uint64_t>(max_size - min_size + 1))
                p = api.malloc(size)
                if p == NULL:
                    break
                memset(p, 0xA5, size)
                blocks[n] = p
                n += 1
                done += size
        self.n = n
        self.nbytes = done
        if done < total_bytes:
            self.free_all()
            raise MemoryError("allocation failed after %d bytes" % done)

    def __len__(self):
        return self.n

    def free_all(self):
        cdef TcallocCAPI *api = _api()
        cdef long i
        with nogil:
            for i in range(self.n):
                api.free(self.blocks[i])
        self.n = 0

    def __dealloc__(self):
        if self.n:
            self.free_all()
        libc_free(self.blocks)
