# Metadata arena: bump allocation of tcalloc's own bookkeeping (spans, thread
# caches, pagemap nodes, transfer-cache slots) from mmap'd chunks, so tcalloc
# never calls malloc or PyMem and can itself be the interpreter's allocator.
# Memory is never returned; components recycle their structs through free
# lists of their own.
#
# Thread safety: arena_alloc takes the arena's own spinlock (the innermost
# lock: taken under the page-heap and thread-cache registry locks, never the
# other way round).
from libc.stdint cimport uint64_t

ctypedef struct MetaArena:
    tc_spinlock_t lock
    char *cur
    size_t remaining
    uint64_t mapped_bytes      # all metadata mapped from the OS
    uint64_t used_bytes        # handed out by arena_alloc

# ---- implementation --------------------------------------------------------

cdef enum:
    kChunkBytes = 256 * 1024

cdef void arena_init(MetaArena *a) noexcept nogil:
    tc_spinlock_init(&a.lock)
    a.cur = NULL
    a.remaining = 0
    a.mapped_bytes = 0
    a.used_bytes = 0

cdef void *arena_alloc(MetaArena *a, size_t nbytes, size_t align) noexcept nogil:
    """Zeroed memory aligned to `align` (a power of two, at most 4096), or
    NULL when the OS refuses. Spans ask for 16 (they are 80 bytes: rounding
    them to a cache line would cost 60 % more metadata); thread caches ask
    for a page, and start at a set offset into it (threadcache.pxi,
    kCacheSkew)."""
    cdef char *p
    cdef size_t chunk, pad
    nbytes = (nbytes + 15) & ~(<size_t>15)
    tc_spinlock_lock(&a.lock)
    pad = (align - (<size_t>a.cur & (align - 1))) & (align - 1)
    if pad and pad <= a.remaining:
        a.cur += pad
        a.remaining -= pad
    if nbytes > a.remaining or (<size_t>a.cur & (align - 1)):
        chunk = kChunkBytes if nbytes <= kChunkBytes // 4 else (nbytes + kPageSize - 1) & ~(<size_t>kPageSize - 1)
        p = <char *>tc_os_map(chunk)
        if p == NULL:
            tc_spinlock_unlock(&a.lock)
            return NULL
        tc_inc_owned(&a.mapped_bytes, chunk)
        if chunk != kChunkBytes:
            # A big request gets a mapping of its own; keep the current chunk.
            tc_inc_owned(&a.used_bytes, nbytes)
            tc_spinlock_unlock(&a.lock)
            return p
        a.cur = p
        a.remaining = chunk
    p = a.cur
    a.cur += nbytes
    a.remaining -= nbytes
    tc_inc_owned(&a.used_bytes, nbytes)
    tc_spinlock_unlock(&a.lock)
    return p
