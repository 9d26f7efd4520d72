# The interpreter hook: tcalloc under PyMem_RawMalloc / PyMem_Malloc /
# PyObject_Malloc.
#
# CPython forbids swapping an allocator out from under live blocks, so each
# domain gets a wrapper around the allocator that was there before (the
# "previous" allocator, usually pymalloc or the C library):
#
#   malloc/calloc   active: tcalloc           inactive: previous
#   free            owns(p): tcalloc           else: previous
#   realloc         owns(p): tcalloc (active)  or moved to the previous allocator (inactive)
#                   else: previous
#
# uninstall() only clears "active": the wrapper stays in place for the rest of
# the process, because tcalloc blocks may still be alive in that domain and
# only the wrapper knows to send them back to tcalloc. What uninstall() costs
# afterwards is one ownership test (a lock-free pagemap read) per free. A
# later install() of the same domain just sets "active" again.
#
# Everything here is called with and without the GIL (the RAW domain is, and
# every domain on free-threaded builds): the wrappers touch no Python object
# and take no lock; "active" is read with a relaxed atomic load.
from libc.string cimport memcpy

from tcalloc.capi cimport TcallocCAPI, TcallocExtAPI, TcallocCAPI_Import, TcallocExtAPI_Import

cdef extern from "Python.h":
    ctypedef enum PyMemAllocatorDomain:
        PYMEM_DOMAIN_RAW
        PYMEM_DOMAIN_MEM
        PYMEM_DOMAIN_OBJ
    ctypedef struct PyMemAllocatorEx:
        void *ctx
        void *(*malloc)(void *ctx, size_t size) noexcept nogil
        void *(*calloc)(void *ctx, size_t nelem, size_t elsize) noexcept nogil
        void *(*realloc)(void *ctx, void *ptr, size_t new_size) noexcept nogil
        void (*free)(void *ctx, void *ptr) noexcept nogil
    void PyMem_GetAllocator(PyMemAllocatorDomain domain, PyMemAllocatorEx *allocator)
    void PyMem_SetAllocator(PyMemAllocatorDomain domain, PyMemAllocatorEx *allocator)

cdef extern from *:
    """
    static inline int tch_load(const int *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    static inline void tch_store(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
    """
    int tch_load(const int *p) nogil
    void tch_store(int *p, int v) nogil

ctypedef struct HookDomain:
    PyMemAllocatorEx prev      # the allocator we wrap
    int active                 # new blocks come from tcalloc
    int wrapped                # our wrapper is (or was) installed for this domain

cdef TcallocCAPI *_tc = TcallocCAPI_Import()
cdef TcallocExtAPI *_ext = TcallocExtAPI_Import()
cdef HookDomain _dom[3]

_NAMES = ("raw", "mem", "obj")
cdef PyMemAllocatorDomain _DOMAINS[3]
_DOMAINS[0] = PYMEM_DOMAIN_RAW
_DOMAINS[1] = PYMEM_DOMAIN_MEM
_DOMAINS[2] = PYMEM_DOMAIN_OBJ


cdef void *_h_malloc(void *ctx, size_t size) noexcept nogil:
    cdef HookDomain *d = <HookDomain *>ctx
    if tch_load(&d.active):
        return _tc.malloc(size)          # malloc(0): unique non-NULL, as CPython requires
    return d.prev.malloc(d.prev.ctx, size)


cdef void *_h_calloc(void *ctx, size_t nelem, size_t elsize) noexcept nogil:
    cdef HookDomain *d = <HookDomain *>ctx
    if tch_load(&d.active):
        return _tc.calloc(nelem, elsize)
    return d.prev.calloc(d.prev.ctx, nelem, elsize)


cdef void *_h_realloc(void *ctx, void *ptr, size_t size) noexcept nogil:
    cdef HookDomain *d = <HookDomain *>ctx
    cdef void *q
    cdef size_t old
    if ptr == NULL:
        return _h_malloc(ctx, size)
    if _ext.owns(ptr):
        if tch_load(&d.active):
            return _tc.realloc(ptr, size)
        # Uninstalled: move the block out so tcalloc stops growing.
        q = d.prev.malloc(d.prev.ctx, size)
        if q != NULL:
            old = _tc.usable_size(ptr)
            memcpy(q, ptr, old if old < size else size)
            _tc.free(ptr)
        return q
    return d.prev.realloc(d.prev.ctx, ptr, size)


cdef void _h_free(void *ctx, void *ptr) noexcept nogil:
    cdef HookDomain *d = <HookDomain *>ctx
    if ptr == NULL:
        return
    if _ext.owns(ptr):
        _tc.free(ptr)
    else:
        d.prev.free(d.prev.ctx, ptr)


cdef list _parse(domains):
    if isinstance(domains, str):
        domains = (domains,)
    try:
        items = list(domains)
    except TypeError:
        raise TypeError(f"domains must be an iterable of 'raw', 'mem', 'obj', "
                        f"not {type(domains).__name__}") from None
    out = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"a domain must be a str, not {type(item).__name__}")
        name = item.lower()
        if name not in _NAMES:
            raise ValueError(f"unknown allocator domain {item!r}; expected 'raw', 'mem' or 'obj'")
        i = _NAMES.index(name)
        if i not in out:
            out.append(i)
    if not out:
        raise ValueError("no allocator domain given")
    return out


def install(domains=("raw", "mem", "obj")):
    """Route the interpreter's allocations in ``domains`` through tcalloc.

    ``"raw"`` is PyMem_RawMalloc, ``"mem"`` PyMem_Malloc, ``"obj"``
    PyObject_Malloc (every object). Blocks allocated before the call stay with
    the allocator that made them. Idempotent. Call it early, with the GIL
    held; other threads may keep allocating meanwhile. Refused while
    tracemalloc is tracing: tracemalloc.stop() would put back the allocator it
    saw at start() and unhook tcalloc while tcalloc blocks are alive.
    """
    cdef list todo = _parse(domains)
    cdef PyMemAllocatorEx mine
    cdef int i
    import tracemalloc
    if tracemalloc.is_tracing():
        raise RuntimeError("tcalloc.install(): stop tracemalloc first (it may be started "
                           "again afterwards; it then wraps tcalloc)")
    for i in todo:
        if not _dom[i].wrapped:
            PyMem_GetAllocator(_DOMAINS[i], &_dom[i].prev)
            mine.ctx = &_dom[i]
            mine.malloc = _h_malloc
            mine.calloc = _h_calloc
            mine.realloc = _h_realloc
            mine.free = _h_free
            tch_store(&_dom[i].active, 1)
            _dom[i].wrapped = 1
            PyMem_SetAllocator(_DOMAINS[i], &mine)
        else:
            tch_store(&_dom[i].active, 1)


def uninstall(domains=("raw", "mem", "obj")):
    """Stop new allocations in ``domains`` from coming from tcalloc.

    Blocks tcalloc already gave out stay valid and are still freed by
    tcalloc: the wrapper stays in place (see the module comment), so after
    uninstall every free costs one extra ownership test. Idempotent.
    """
    cdef int i
    for i in _parse(domains):
        tch_store(&_dom[i].active, 0)


def installed():
    """True if tcalloc serves new allocations in at least one domain."""
    cdef int i
    for i in range(3):
        if tch_load(&_dom[i].active):
            return True
    return False


def active_domains():
    """The domains whose new allocations come from tcalloc, e.g. ('raw', 'mem', 'obj')."""
    return tuple(_NAMES[i] for i in range(3) if tch_load(&_dom[i].active))
