# NEP 49 memory handler: NumPy array data from tcalloc.
#
# Built without NumPy: the handler struct is declared here with NumPy's
# layout (numpy/ndarraytypes.h, PyDataMem_Handler version 1), and
# PyDataMem_SetHandler / PyDataMem_GetHandler are reached at run time through
# NumPy's C-API table (slots 304 and 305 since NumPy 1.22), which is how
# numpy's own import_array() finds them.
#
# The four functions touch no Python object and take no lock of their own:
# NumPy may call them without the GIL, from any thread.
from libc.stdint cimport uint8_t
from libc.string cimport strncpy
from cpython.ref cimport PyObject
from cpython.pycapsule cimport PyCapsule_New, PyCapsule_GetPointer, PyCapsule_CheckExact

from tcalloc.capi cimport TcallocCAPI, TcallocCAPI_Import

ctypedef struct PyDataMemAllocator:
    void *ctx
    void *(*malloc)(void *ctx, size_t size) noexcept nogil
    void *(*calloc)(void *ctx, size_t nelem, size_t elsize) noexcept nogil
    void *(*realloc)(void *ctx, void *ptr, size_t new_size) noexcept nogil
    void (*free)(void *ctx, void *ptr, size_t size) noexcept nogil

ctypedef struct PyDataMem_Handler:
    char name[127]
    uint8_t version
    PyDataMemAllocator allocator

ctypedef object (*set_handler_t)(PyObject *)
ctypedef object (*get_handler_t)()

cdef TcallocCAPI *_tc = TcallocCAPI_Import()
cdef PyDataMem_Handler _handler
cdef void **_np_api = NULL

cdef void *_np_malloc(void *ctx, size_t size) noexcept nogil:
    return _tc.malloc(size)

cdef void *_np_calloc(void *ctx, size_t nelem, size_t elsize) noexcept nogil:
    return _tc.calloc(nelem, elsize)

cdef void *_np_realloc(void *ctx, void *ptr, size_t new_size) noexcept nogil:
    return _tc.realloc(ptr, new_size)

cdef void _np_free(void *ctx, void *ptr, size_t size) noexcept nogil:
    # `size` may differ from the size asked for (NEP 49); tcalloc knows the
    # block's size from its pagemap and needs none.
    _tc.free(ptr)

strncpy(_handler.name, b"tcalloc", 127)
_handler.version = 1
_handler.allocator.ctx = NULL
_handler.allocator.malloc = _np_malloc
_handler.allocator.calloc = _np_calloc
_handler.allocator.realloc = _np_realloc
_handler.allocator.free = _np_free

#: The NEP 49 capsule ("mem_handler") whose handler is named "tcalloc".
handler = PyCapsule_New(&_handler, b"mem_handler", NULL)


cdef void **_numpy_api() except NULL:
    global _np_api
    cdef unsigned int feature
    if _np_api != NULL:
        return _np_api
    try:
        import numpy._core._multiarray_umath as mu
    except ImportError:
        try:
            import numpy.core._multiarray_umath as mu
        except ImportError:
            raise ImportError("tcalloc.numpy needs NumPy (pip install 'tcalloc[numpy]')") from None
    cap = mu._ARRAY_API
    if not PyCapsule_CheckExact(cap):
        raise ImportError("numpy's _ARRAY_API is not a capsule")
    api = <void **>PyCapsule_GetPointer(cap, NULL)
    feature = (<unsigned int (*)() noexcept>api[211])()
    if feature < 0x0f:       # NPY_1_22_API_VERSION: the first with NEP 49
        raise ImportError("tcalloc.numpy needs NumPy >= 1.22 (NEP 49 memory handlers)")
    _np_api = api
    return api


def set_handler(new_handler):
    """PyDataMem_SetHandler: make ``new_handler`` (a "mem_handler" capsule, or
    None for NumPy's default) the handler of the current context; returns the
    previous one."""
    cdef void **api = _numpy_api()
    if new_handler is not None and not PyCapsule_CheckExact(new_handler):
        raise TypeError(f"handler must be a 'mem_handler' capsule or None, "
                        f"not {type(new_handler).__name__}")
    if new_handler is None:
        return (<set_handler_t>api[304])(NULL)              # NULL: NumPy's default
    PyCapsule_GetPointer(new_handler, b"mem_handler")        # raises if misnamed
    return (<set_handler_t>api[304])(<PyObject *>new_handler)


def get_handler():
    """PyDataMem_GetHandler: the current context's handler capsule."""
    cdef void **api = _numpy_api()
    return (<get_handler_t>api[305])()
