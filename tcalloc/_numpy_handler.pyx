# NEP 49 memory handler: NumPy array data from tcalloc.
#
# Built without NumPy: the handler struct is declared here with NumPy's
# layout (numpy/ndarraytypes.h, PyDataMem_Handler version 1), and
# PyDataMem_SetHandler / PyDataMem_GetHandler are reached at run time through
# NumPy's C-API table (slots 304 and 305 since NumPy 1.22), which is how
# numpy's own import_array() finds them.
#
# The handler functions touch no Python object and take no lock of their own:
# NumPy may call them without the GIL, from any thread.
#
# Every thread at once (enable_default): NumPy's handler is a context
# variable, and a context that never set one (every new thread, including
# threads made in C) falls back to NumPy's default-handler capsule. So the
# functions of the struct behind that capsule (NumPy's global
# `default_handler`, writable data) are replaced in place. Arrays keep a
# reference to the capsule they were allocated with and free through it,
# so the replaced free and realloc must still serve blocks made before the
# switch: a block tcalloc does not own (pagemap look-up, lock-free) goes to
# NumPy's original function. For the same reason disable_default() puts
# back malloc and calloc only; free and realloc keep dispatching for the
# rest of the process, as the interpreter hook does after uninstall().
from libc.stdint cimport uint8_t, uintptr_t
from libc.string cimport strncpy, strcmp
from cpython.ref cimport PyObject
from cpython.pycapsule cimport PyCapsule_New, PyCapsule_GetPointer, PyCapsule_CheckExact

from tcalloc.capi cimport TcallocCAPI, TcallocCAPI_Import, TcallocExtAPI, TcallocExtAPI_Import
from tcalloc._engine cimport tc_on_heap

import contextvars as _contextvars

cdef extern from "tc_platform.h" nogil:
    void tc_store_release_ptr(void **p, void *v)

# The leading fields of NumPy's PyArrayObject_fields (ndarraytypes.h), the
# same in NumPy 1.22+ and 2.x; mem_handler is NULL for arrays that do not
# own their data.
cdef extern from *:
    """
    typedef struct {
        PyObject_HEAD
        char *data;
        int nd;
        void *dimensions;
        void *strides;
        PyObject *base;
        void *descr;
        int flags;
        PyObject *weakreflist;
        void *_buffer_info;
        PyObject *mem_handler;
    } tc_np_array_fields;
    """
    ctypedef struct tc_np_array_fields:
        char *data
        int flags
        PyObject *base
        PyObject *mem_handler

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
cdef TcallocExtAPI *_ext = TcallocExtAPI_Import()
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


# ---- NumPy's default handler, switched to tcalloc in place ----------------------

cdef PyDataMem_Handler *_default = NULL     # NumPy's default_handler, once found
cdef PyDataMemAllocator _orig               # its functions as NumPy made them
cdef bint _enabled = 0


cdef inline bint _tcallocs(const void *ptr) noexcept nogil:
    """Does ptr go to tcalloc: a block of tcalloc's, or any pointer on its
    heap's pages (a block freed twice, a pointer into one), which tcalloc
    reports and aborts on? NumPy's free would take such a pointer into its
    cache of small blocks and hand it out again."""
    return _ext.owns(ptr) or tc_on_heap(ptr)


cdef void *_dflt_realloc(void *ctx, void *ptr, size_t new_size) noexcept nogil:
    # A block stays with the allocator that made it (tcalloc's realloc moves
    # nothing out; NumPy's keeps its own).
    if ptr != NULL and not _tcallocs(ptr):
        return _orig.realloc(_orig.ctx, ptr, new_size)
    return _tc.realloc(ptr, new_size)


cdef void _dflt_free(void *ctx, void *ptr, size_t size) noexcept nogil:
    if ptr != NULL and _tcallocs(ptr):
        _tc.free(ptr)
    else:
        _orig.free(_orig.ctx, ptr, size)


cdef int _find_default() except -1:
    global _default, _orig
    if _default != NULL:
        return 0
    _numpy_api()
    # A fresh context never set a handler: NumPy hands out its default capsule.
    cap = _contextvars.Context().run(get_handler)
    cdef PyDataMem_Handler *h = <PyDataMem_Handler *>PyCapsule_GetPointer(cap, b"mem_handler")
    if h.version != 1 or strcmp(h.name, b"default_allocator") != 0:
        raise RuntimeError(f"NumPy's default memory handler is {h.name!r} version "
                           f"{h.version}, not NumPy's own: tcalloc leaves it alone")
    _orig = h.allocator
    _default = h
    return 0


def enable_default():
    """Make NumPy's default handler allocate from tcalloc, for every thread
    and context that has not set a handler of its own."""
    global _enabled
    _find_default()
    if _enabled:
        return
    # free and realloc first: from then on any block, whoever made it, is
    # freed by the right allocator; only then may malloc hand out tcalloc's.
    tc_store_release_ptr(<void **>&_default.allocator.free, <void *>_dflt_free)
    tc_store_release_ptr(<void **>&_default.allocator.realloc, <void *>_dflt_realloc)
    tc_store_release_ptr(<void **>&_default.allocator.malloc, <void *>_np_malloc)
    tc_store_release_ptr(<void **>&_default.allocator.calloc, <void *>_np_calloc)
    _enabled = 1


def disable_default():
    """New arrays of the default handler come from NumPy's allocator again;
    tcalloc's blocks still go back to tcalloc."""
    global _enabled
    if not _enabled:
        return
    tc_store_release_ptr(<void **>&_default.allocator.malloc, <void *>_orig.malloc)
    tc_store_release_ptr(<void **>&_default.allocator.calloc, <void *>_orig.calloc)
    _enabled = 0


def default_enabled():
    """True while NumPy's default handler allocates from tcalloc."""
    return bool(_enabled)


# ---- which allocator holds an array's data -------------------------------------

cdef object _ndarray = None


cdef tc_np_array_fields *_as_array(object arr) except NULL:
    global _ndarray
    if _ndarray is None:
        _numpy_api()
        import numpy
        _ndarray = numpy.ndarray
    if not isinstance(arr, _ndarray):
        raise TypeError(f"expected a numpy.ndarray, not {type(arr).__name__}")
    return <tc_np_array_fields *><PyObject *>arr


cdef object _root(object arr):
    """The array at the end of arr's chain of ndarray bases (views of views)."""
    cdef tc_np_array_fields *a = _as_array(arr)
    while a.base != NULL and isinstance(<object>a.base, _ndarray):
        arr = <object>a.base
        a = <tc_np_array_fields *><PyObject *>arr
    return arr


def owns(arr):
    """True if arr's data lives in tcalloc: allocated by a tcalloc handler
    (``use()``, ``set_default()``), for arr or the array it is a view of, or
    a view of a ``tcalloc.Buffer`` (``numpy.frombuffer``)."""
    from tcalloc.buffer import Buffer
    root = _root(arr)
    cdef tc_np_array_fields *a = <tc_np_array_fields *><PyObject *>root
    if a.mem_handler != NULL:
        return bool(_ext.owns(a.data))
    base = <object>a.base if a.base != NULL else None
    if isinstance(base, memoryview):
        base = base.obj
    return isinstance(base, Buffer)


def handler_name(arr):
    """The name of the allocator holding arr's data: ``"tcalloc"`` when
    :func:`owns` is true, else the name of the NumPy handler that allocated
    it (for arr or the array it views), or None for memory NumPy did not
    allocate. Same answer on NumPy 1.22+ and 2.x; unlike NumPy's
    ``get_handler_name`` it sees through views and through ``set_default()``
    (whose arrays are made by NumPy's default handler, now on tcalloc)."""
    if owns(arr):
        return "tcalloc"
    root = _root(arr)
    cdef tc_np_array_fields *a = <tc_np_array_fields *><PyObject *>root
    if a.mem_handler == NULL:
        return None
    cdef PyDataMem_Handler *h = <PyDataMem_Handler *>PyCapsule_GetPointer(
        <object>a.mem_handler, b"mem_handler")
    return h.name.decode("utf-8", "replace")


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
