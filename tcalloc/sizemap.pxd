# Size map: request size -> size class, and each class's object size, pages
# per span and batch size (objects moved between caches at once).
#
# Thread safety: filled once by sizemap_init() before any allocation, then
# read-only; reads need no lock.
from libc.stdint cimport uint8_t, uint32_t
from tcalloc.common cimport kMaxSmallSize, kMaxClasses

cdef enum:
    # Index space of the lookup table: 8-byte steps up to 1 KiB, then 128-byte
    # steps up to kMaxSmallSize (as TCMalloc's ClassIndex). 2169 entries.
    kClassArraySize = ((kMaxSmallSize + 127 + (120 << 7)) >> 7) + 1

ctypedef struct SizeMap:
    int num_classes                          # classes 1..num_classes-1; 0 is "not small"
    uint8_t class_array[kClassArraySize]
    uint32_t class_to_size[kMaxClasses]
    uint32_t class_to_pages[kMaxClasses]
    uint32_t num_objects_to_move[kMaxClasses]   # batch size
    uint32_t objects_per_span[kMaxClasses]

cdef inline size_t sizemap_index(size_t size) noexcept nogil:
    if size <= 1024:
        return (size + 7) >> 3
    return (size + 127 + (120 << 7)) >> 7

cdef inline uint32_t sizemap_class(const SizeMap *m, size_t size) noexcept nogil:
    """Class for a request of `size` bytes (0 < size <= kMaxSmallSize; 0 maps to the 8 B class)."""
    return m.class_array[sizemap_index(size)]

cdef int sizemap_init(SizeMap *m) noexcept nogil
cdef uint32_t sizemap_aligned_class(const SizeMap *m, size_t size, size_t alignment) noexcept nogil
