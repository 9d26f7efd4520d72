# Pagemap: radix tree from page id (48-bit address >> 13 = 35 bits) to the
# Span that holds the page and, for small-object spans, the size class.
# Two levels, 16 + 19 bits: free() pays two dependent loads, or one for an
# address in the pagemap's hot leaf (below). The root is
# embedded (512 KiB of zero pages, untouched until used); a leaf (4.56 MiB,
# covering 4 GiB of address space) comes from the metadata arena when the
# heap first grows there, and only its touched pages become resident. 4 GiB
# so that free() finds the page in the leaf with a 32-bit shift, no mask;
# and a root entry for no leaf reads as an all-zero leaf (Pagemap.zero_leaf),
# so free() does not test for one (pagemap_sizeclass_of).
#
# Thread safety: readers need no lock (free() reads it on every call). Writers
# hold the page-heap lock. Nodes are published with release stores and never
# freed, so a reader sees either NULL or a whole node. Entries for a span's
# interior pages may be stale once it is freed: only boundary pages of free
# and large spans, and every page of small-object spans, are kept current.
# A bit per page marks the pages the heap has mapped (set when it grows,
# never cleared: heap pages are never unmapped), so any address is known for
# tcalloc's or not, even inside a block or on a page never used: the
# interpreter hook sends frees of the others to the allocator it wraps.
#
# The hot leaf: the leaf the heap last grew into (Pagemap.hot). free() tests
# the address against it first, with loads that do not depend on the
# address, so that for its blocks the class costs one load that does (the
# byte in the leaf), not two (root entry, then the byte). That chain runs
# from free's pointer to the address of the list head it stores, which the
# next malloc loads, and it is most of what a malloc+free pair costs beyond
# its list operations. Measured (bench/_bench.pyx pairs, 20 interleaved
# children of 25 runs each on the 2-core EPYC VM, mean ns per 16 / 64 B
# pair): two dependent loads 6.9 / 7.1, the hot leaf 5.9 / 6.0, the class
# from a constant (the ablation, not a design) 4.8 / 4.8.
# A leaf's `index` (its root index) never changes, and `hot` is published
# with a release store after the leaf's, so a reader that finds its
# address's index in the hot leaf reads that leaf's bytes, whatever thread
# moved `hot` meanwhile. Frees of blocks in other leaves (a heap that grew
# across a 4 GiB boundary) and of foreign pointers (the hook) take the two
# loads as before, after one predicted-not-taken test.
from libc.stdint cimport uint8_t, uint32_t, uint64_t, uintptr_t
from libc.string cimport memset

cdef enum:
    kPagemapLeafBits = 19
    kPagemapRootBits = 16          # 16 + 19 = 35 = 48 - 13
    kPagemapLeafLen = 1 << kPagemapLeafBits
    kPagemapRootLen = 1 << kPagemapRootBits
    kPagemapHeapBytes = 1 << (kPagemapLeafBits - 3)   # a leaf's heap bits

ctypedef struct PagemapLeaf:
    uint8_t sizeclass[kPagemapLeafLen]    # first: free() reads only this
    Span *span[kPagemapLeafLen]
    uint8_t heap[kPagemapHeapBytes]       # bit per page: mapped for the heap
    uintptr_t index                       # its root index (address >> 32), set before it is published

ctypedef struct Pagemap:
    # A leaf's address, less zero_leaf's: 0 (the zeroed root) for no leaf
    # reads as zero_leaf, whose size classes are all 0, so free() finds a
    # class without testing the leaf for NULL (pagemap_sizeclass_of).
    void *root[kPagemapRootLen]
    # The hot leaf (see the header), as an address: never 0. Before the heap
    # has a leaf it is no_index's address less the offset of a leaf's
    # index, so free() reads UINTPTR_MAX there, which no address >> 32 is.
    uintptr_t hot
    uintptr_t no_index
    MetaArena *arena
    uint64_t node_bytes
    uint8_t zero_leaf[kPagemapLeafLen]    # never written (zero pages, never resident)

# free()'s loads: the hot leaf's address and index, or the root entry e
# (acquire), then the class byte at leaf + i (relaxed). On x86-64 every load
# is an acquire load and each is one mov, but GCC folds addresses into the
# operands of plain loads only (the atomic spelling costs two adds more), so
# there, outside ThreadSanitizer builds, they are written as plain loads of
# words that are only ever stored whole (the hot word with a release store,
# a leaf's index before the leaf is published).
cdef extern from *:
    """
    static inline uint8_t pagemap_byte_at(uintptr_t leaf, uint32_t i) {
    #if defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
        return *(const uint8_t *)(leaf + i);
    #else
        return __atomic_load_n((const uint8_t *)(leaf + i), __ATOMIC_RELAXED);
    #endif
    }
    static inline uint8_t pagemap_class_at(const uint8_t *zero, void *const *root, uintptr_t i1, uint32_t i) {
    #if defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
        uintptr_t e = (uintptr_t)root[i1];
    #else
        uintptr_t e = (uintptr_t)__atomic_load_n((void **)&root[i1], __ATOMIC_ACQUIRE);
    #endif
        return pagemap_byte_at((uintptr_t)zero + e, i);
    }
    static inline uintptr_t pagemap_hot_load(const uintptr_t *hot) {
    #if defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
        return *hot;
    #else
        return __atomic_load_n(hot, __ATOMIC_ACQUIRE);
    #endif
    }
    static inline uintptr_t pagemap_hot_index(uintptr_t leaf, size_t off) {
        return *(const uintptr_t *)(leaf + off);
    }
    """
    uint8_t _byte_at "pagemap_byte_at"(uintptr_t leaf, uint32_t i) nogil
    uint8_t _class_at "pagemap_class_at"(const uint8_t *zero, void *const *root, uintptr_t i1, uint32_t i) nogil
    uintptr_t _hot_load "pagemap_hot_load"(const uintptr_t *hot) nogil
    uintptr_t _hot_index "pagemap_hot_index"(uintptr_t leaf, size_t off) nogil

cdef inline size_t _leaf_index_offset() noexcept nogil:
    return <size_t>&(<PagemapLeaf *>NULL).index      # offsetof, folded by the compiler

cdef inline uintptr_t _pagemap_entry(const Pagemap *pm, uintptr_t i1) noexcept nogil:
    return <uintptr_t>tc_load_acquire_ptr(<void **>&pm.root[i1])

cdef inline PagemapLeaf *pagemap_leaf(const Pagemap *pm, uintptr_t page) noexcept nogil:
    cdef uintptr_t i1 = page >> kPagemapLeafBits
    cdef uintptr_t e
    if i1 >= kPagemapRootLen:
        return NULL
    e = _pagemap_entry(pm, i1)
    if e == 0:
        return NULL
    return <PagemapLeaf *>(<uintptr_t>pm.zero_leaf + e)

cdef inline uint32_t pagemap_sizeclass(const Pagemap *pm, uintptr_t page) noexcept nogil:
    """Size class of the small-object span holding `page`, 0 if none."""
    cdef PagemapLeaf *leaf = pagemap_leaf(pm, page)
    if leaf == NULL:
        return 0
    return tc_load_u8(&leaf.sizeclass[page & (kPagemapLeafLen - 1)])

cdef inline uint32_t pagemap_sizeclass_of(const Pagemap *pm, uintptr_t addr) noexcept nogil:
    """pagemap_sizeclass of the page holding addr, for free(): a leaf covers
    exactly 4 GiB (kPageShift + kPagemapLeafBits == 32, checked at import),
    so the index in it is the page of addr's low 32 bits: a 32-bit shift,
    no mask."""
    cdef uintptr_t i1 = addr >> (kPageShift + kPagemapLeafBits)
    cdef uintptr_t hot = _hot_load(&pm.hot)
    # The hot leaf first: its loads do not wait for addr (see the header).
    # sizeclass is its first field, so the byte is at hot + the page.
    if TC_LIKELY(_hot_index(hot, _leaf_index_offset()) == i1):
        return _byte_at(hot, <uint32_t>addr >> kPageShift)
    if i1 >= kPagemapRootLen:
        return 0
    # leaf.sizeclass (its first field) [the page in the leaf], summed first
    # so that the compiler folds zero_leaf's address into the load
    return _class_at(pm.zero_leaf, pm.root, i1, <uint32_t>addr >> kPageShift)

cdef inline Span *pagemap_span(const Pagemap *pm, uintptr_t page) noexcept nogil:
    """Span recorded for `page` (may be stale for interior pages, see above)."""
    cdef PagemapLeaf *leaf = pagemap_leaf(pm, page)
    if leaf == NULL:
        return NULL
    return <Span *>tc_load_relaxed_ptr(<void **>&leaf.span[page & (kPagemapLeafLen - 1)])

cdef inline void pagemap_set(Pagemap *pm, uintptr_t page, Span *s) noexcept nogil:
    """Record `s` for `page`. The nodes must exist (pagemap_ensure)."""
    cdef PagemapLeaf *leaf = pagemap_leaf(pm, page)
    tc_store_relaxed_ptr(<void **>&leaf.span[page & (kPagemapLeafLen - 1)], s)

cdef inline void pagemap_set_class(Pagemap *pm, uintptr_t page, uint32_t cl) noexcept nogil:
    cdef PagemapLeaf *leaf = pagemap_leaf(pm, page)
    tc_store_u8(&leaf.sizeclass[page & (kPagemapLeafLen - 1)], <uint8_t>cl)

cdef inline bint pagemap_is_heap(const Pagemap *pm, uintptr_t page) noexcept nogil:
    """Has the heap mapped `page` (pagemap_mark_heap)?"""
    cdef PagemapLeaf *leaf = pagemap_leaf(pm, page)
    cdef uintptr_t i = page & (kPagemapLeafLen - 1)
    if leaf == NULL:
        return 0
    return (tc_load_u8(&leaf.heap[i >> 3]) >> (i & 7)) & 1

cdef void pagemap_mark_heap(Pagemap *pm, uintptr_t start, size_t npages) noexcept nogil:
    """Mark pages [start, start+npages) as the heap's, for good. The nodes
    must exist (pagemap_ensure). Writers hold the page-heap lock; a reader
    racing with the marking asks about pages nobody has been given yet."""
    cdef uintptr_t page = start
    cdef uintptr_t end = start + npages
    cdef uintptr_t i, n
    cdef PagemapLeaf *leaf
    while page < end:
        leaf = pagemap_leaf(pm, page)
        i = page & (kPagemapLeafLen - 1)
        if (i & 7) == 0 and end - page >= 8:
            n = (end - page) >> 3                 # whole bytes, within this leaf
            if n > (kPagemapLeafLen - i) >> 3:
                n = (kPagemapLeafLen - i) >> 3
            memset(&leaf.heap[i >> 3], 0xFF, n)
            page += n << 3
        else:
            tc_store_u8(&leaf.heap[i >> 3], tc_load_u8(&leaf.heap[i >> 3]) | <uint8_t>(1 << (i & 7)))
            page += 1

# ---- implementation --------------------------------------------------------

cdef void pagemap_init(Pagemap *pm, MetaArena *arena) noexcept nogil:
    """pm must be zeroed memory: the root is not cleared here, so that its
    untouched pages stay non-resident."""
    pm.arena = arena
    pm.node_bytes = 0
    pm.no_index = <uintptr_t>-1
    pm.hot = <uintptr_t>&pm.no_index - _leaf_index_offset()

cdef int pagemap_ensure(Pagemap *pm, uintptr_t start, size_t npages) noexcept nogil:
    """Create the leaves covering pages [start, start+npages) and make the
    leaf of `start` the hot one (writers hold the page-heap lock). 0, or -1
    if the range is beyond 48-bit addresses or metadata memory ran out."""
    cdef uintptr_t i
    cdef uintptr_t first = start >> kPagemapLeafBits
    cdef uintptr_t last
    cdef PagemapLeaf *leaf
    if npages == 0:
        return 0
    last = (start + npages - 1) >> kPagemapLeafBits
    if last >= kPagemapRootLen:
        return -1
    for i in range(first, last + 1):
        if pm.root[i] == NULL:               # a leaf is never at zero_leaf
            leaf = <PagemapLeaf *>arena_alloc(pm.arena, sizeof(PagemapLeaf), 4096)
            if leaf == NULL:
                return -1
            pm.node_bytes += sizeof(PagemapLeaf)
            leaf.index = i
            tc_store_release_ptr(<void **>&pm.root[i], <void *>(<uintptr_t>leaf - <uintptr_t>pm.zero_leaf))
    leaf = pagemap_leaf(pm, start)
    if <uintptr_t>leaf != pm.hot:
        tc_store_release_ptr(<void **>&pm.hot, <void *>leaf)
    return 0
