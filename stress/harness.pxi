# The allocator table the stress lab and the benchmarks run against
# (includes/tc_allocator.h): tcalloc through its capsule, the C library's
# malloc (a preloaded peer in a child process), or a deliberately broken one.
cdef extern from "tc_harness.h" nogil:
    ctypedef struct tc_allocator_t:
        const char *name
        void *(*malloc)(size_t) noexcept nogil
        void (*free)(void *) noexcept nogil
        void *(*calloc)(size_t, size_t) noexcept nogil
        void *(*realloc)(void *, size_t) noexcept nogil
    tc_allocator_t tc_allocator_system()
