# Cython declarations of tcalloc's public C API (tcalloc.h), for code that
# reaches the engine through its capsules rather than by cimporting
# tcalloc._engine. Add tcalloc.get_include() to the C include path:
#
#     from tcalloc.capi cimport TcallocCAPI, TcallocCAPI_Import
#     cdef TcallocCAPI *tc = TcallocCAPI_Import()     # with the GIL, once
#     with nogil:
#         p = tc.malloc(64); tc.free(p)
#
# Every function in the tables is thread-safe and needs no GIL.

cdef extern from "tcalloc.h":
    enum:
        TCALLOC_CAPI_ABI_VERSION
        TCALLOC_EXT_ABI_VERSION
    const char *TCALLOC_CAPI_CAPSULE_NAME
    const char *TCALLOC_EXT_CAPSULE_NAME

    ctypedef struct TcallocCAPI:
        unsigned int abi_version
        void *(*malloc)(size_t) noexcept nogil
        void (*free)(void *) noexcept nogil
        void *(*calloc)(size_t, size_t) noexcept nogil
        void *(*realloc)(void *, size_t) noexcept nogil
        void *(*aligned_alloc)(size_t, size_t) noexcept nogil
        size_t (*usable_size)(void *) noexcept nogil
    ctypedef struct TcallocExtAPI:
        unsigned int abi_version
        int (*owns)(const void *) noexcept nogil
        size_t (*bytes_in_use)() noexcept nogil

    # NULL with a Python exception set (ImportError, ABI mismatch); need the GIL.
    TcallocCAPI *TcallocCAPI_Import() except NULL
    TcallocExtAPI *TcallocExtAPI_Import() except NULL
