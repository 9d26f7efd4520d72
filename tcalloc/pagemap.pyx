# Pagemap. Lock discipline: writers hold the page-heap lock; readers none.
from libc.string cimport memset
from tcalloc.common cimport tc_store_release_ptr
from tcalloc.arena cimport arena_alloc

cdef void pagemap_init(Pagemap *pm, MetaArena *arena) noexcept nogil:
    """pm must be zeroed memory: the root is not cleared here, so that its
    untouched pages stay non-resident."""
    pm.arena = arena
    pm.node_bytes = 0

cdef int pagemap_ensure(Pagemap *pm, uintptr_t start, size_t npages) noexcept nogil:
    """Create the leaves covering pages [start, start+npages). 0, or -1 if the
    range is beyond 48-bit addresses or metadata memory ran out."""
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
        if pm.root[i] == NULL:
            leaf = <PagemapLeaf *>arena_alloc(pm.arena, sizeof(PagemapLeaf), 4096)
            if leaf == NULL:
                return -1
            pm.node_bytes += sizeof(PagemapLeaf)
            tc_store_release_ptr(<void **>&pm.root[i], leaf)
    return 0
