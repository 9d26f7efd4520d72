# Pagemap. Lock discipline: writers hold the page-heap lock; readers none.
from libc.string cimport memset
from tcalloc.common cimport tc_store_release_ptr
from tcalloc.arena cimport arena_alloc

cdef void pagemap_init(Pagemap *pm, MetaArena *arena) noexcept nogil:
    memset(pm, 0, sizeof(Pagemap))
    pm.arena = arena

cdef int pagemap_ensure(Pagemap *pm, uintptr_t start, size_t npages) noexcept nogil:
    """Create the nodes covering pages [start, start+npages). 0, or -1 if the
    range is beyond 48-bit addresses or metadata memory ran out."""
    cdef uintptr_t page = start
    cdef uintptr_t end = start + npages
    cdef uintptr_t i1, i2
    cdef PagemapMid *mid
    cdef PagemapLeaf *leaf
    if npages == 0:
        return 0
    if (end - 1) >> (kPagemapLeafBits + kPagemapMidBits) >= kPagemapRootLen:
        return -1
    while page < end:
        i1 = page >> (kPagemapLeafBits + kPagemapMidBits)
        i2 = (page >> kPagemapLeafBits) & (kPagemapMidLen - 1)
        mid = pm.root[i1]
        if mid == NULL:
            mid = <PagemapMid *>arena_alloc(pm.arena, sizeof(PagemapMid))
            if mid == NULL:
                return -1
            pm.node_bytes += sizeof(PagemapMid)
            tc_store_release_ptr(<void **>&pm.root[i1], mid)
        if mid.leaf[i2] == NULL:
            leaf = <PagemapLeaf *>arena_alloc(pm.arena, sizeof(PagemapLeaf))
            if leaf == NULL:
                return -1
            pm.node_bytes += sizeof(PagemapLeaf)
            tc_store_release_ptr(<void **>&mid.leaf[i2], leaf)
        # next leaf boundary
        page = ((page >> kPagemapLeafBits) + 1) << kPagemapLeafBits
    return 0
