# tcalloc's entry points for Cython code:
#
#     from tcalloc._engine cimport tc_malloc, tc_free
#     with nogil:
#         p = tc_malloc(64)
#         tc_free(p)
#
# Cython links the call through the module's C-API table (one indirect call),
# the same functions the capsule tcalloc._C_API points to. Every function is
# thread-safe, needs no GIL, and behaves as its C namesake (NULL + errno on
# failure). A free of a pointer tcalloc did not give out aborts with a
# message naming the pointer where the normal path can tell (docs/reliability.md:
# a pointer inside a small block is caught only with TCALLOC_DEBUG=1).

cdef void *tc_malloc(size_t size) noexcept nogil
cdef void tc_free(void *ptr) noexcept nogil
cdef void *tc_calloc(size_t nmemb, size_t size) noexcept nogil
cdef void *tc_realloc(void *ptr, size_t size) noexcept nogil
cdef void *tc_aligned_alloc(size_t alignment, size_t size) noexcept nogil
cdef size_t tc_usable_size(void *ptr) noexcept nogil
cdef bint tc_owns(const void *ptr) noexcept nogil
cdef bint tc_on_heap(const void *ptr) noexcept nogil
