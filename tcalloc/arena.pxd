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
from tcalloc.common cimport tc_spinlock_t

ctypedef struct MetaArena:
    tc_spinlock_t lock
    char *cur
    size_t remaining
    uint64_t mapped_bytes      # all metadata mapped from the OS
    uint64_t used_bytes        # handed out by arena_alloc

cdef void arena_init(MetaArena *a) noexcept nogil
cdef void *arena_alloc(MetaArena *a, size_t nbytes, size_t align) noexcept nogil
