# The interpreter hook: tcalloc under PyMem_RawMalloc / PyMem_Malloc /
# PyObject_Malloc, in the engine itself so its wrappers inline the fast path
# (no call through the C-API table, one pagemap lookup per free).
#
# CPython forbids swapping an allocator out from under live blocks, so each
# domain gets a wrapper around the allocator that was there before (the
# "previous" allocator, usually pymalloc or the C library):
#
#   malloc/calloc   active: tcalloc           inactive: previous
#   free            tcalloc's block: tcalloc   else: previous
#   realloc         tcalloc's block: tcalloc (active) or moved to the previous
#                   allocator (inactive); else: previous
#
# A block is tcalloc's when the pagemap names a small-object class for its
# page (every pointer into a small span is a block tcalloc gave out, or heap
# corruption the debug mode catches) or when it starts a large in-use span.
# The previous allocator's blocks never share a page with tcalloc's, since
# tcalloc maps its own pages.
#
# uninstall() only clears "active": the wrapper stays in place for the rest of
# the process, because tcalloc blocks may still be alive in that domain and
# only the wrapper knows to send them back to tcalloc. A later install() of
# the same domain just sets "active" again.
#
# CPython's debug hooks (PYTHONMALLOC=debug, -X dev) stay on top: when they
# wrap a domain, tcalloc goes underneath them (their inner allocator becomes
# our "previous" one, and PyMem_SetupDebugHooks() puts them back above us),
# so they still catch buffer overruns and calls without the GIL, on tcalloc's
# blocks and on older ones alike.
#
# Everything here is called with and without the GIL (the RAW domain is, and
# every domain on free-threaded builds): the wrappers touch no Python object
# and take no lock; "active" is read with a relaxed load.

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
    void PyMem_SetupDebugHooks()

# The context of CPython's debug hooks (Objects/obmalloc.c, the same layout
# from 3.6 on): the domain's letter and the allocator the hooks wrap.
ctypedef struct _DebugAllocApi:
    char api_id
    PyMemAllocatorEx alloc

ctypedef struct HookDomain:
    PyMemAllocatorEx prev      # the allocator we wrap
    int active                 # new blocks come from tcalloc
    int wrapped                # our wrapper is (or was) installed for this domain

cdef HookDomain g_hook[3]
cdef PyMemAllocatorDomain _HOOK_DOMAINS[3]
_HOOK_DOMAINS[0] = PYMEM_DOMAIN_RAW
_HOOK_DOMAINS[1] = PYMEM_DOMAIN_MEM
_HOOK_DOMAINS[2] = PYMEM_DOMAIN_OBJ
_HOOK_NAMES = ("raw", "mem", "obj")

# ---- the wrappers ------------------------------------------------------------

cdef void *_h_malloc(void *ctx, size_t size) noexcept nogil:
    cdef HookDomain *d = <HookDomain *>ctx
    if TC_LIKELY(tc_load_int(&d.active)):
        return _malloc(size)             # malloc(0): unique non-NULL, as CPython requires
    return d.prev.malloc(d.prev.ctx, size)

cdef void *_h_calloc(void *ctx, size_t nelem, size_t elsize) noexcept nogil:
    cdef HookDomain *d = <HookDomain *>ctx
    if tc_load_int(&d.active):
        return tc_calloc(nelem, elsize)
    return d.prev.calloc(d.prev.ctx, nelem, elsize)

cdef void _h_free_other(void *ctx, void *p) noexcept nogil:
    """Not a small tcalloc block: a large one, or the previous allocator's."""
    cdef HookDomain *d = <HookDomain *>ctx
    cdef Span *s
    if p == NULL:
        return
    s = _large_span(p)
    if s != NULL:
        _free_large_span(p, s)
    else:
        d.prev.free(d.prev.ctx, p)

cdef void _h_free(void *ctx, void *p) noexcept nogil:
    cdef uint32_t cl = pagemap_sizeclass(&g_heap.pagemap, <uintptr_t>p >> kPageShift)
    if TC_LIKELY(cl != 0):
        if TC_LIKELY(threadcache_try_push(<ThreadCache *>tc_tls_get(), cl, p)):
            return
        _free_small_slow(p, cl)
        return
    _h_free_other(ctx, p)

cdef void *_h_realloc(void *ctx, void *p, size_t size) noexcept nogil:
    cdef HookDomain *d = <HookDomain *>ctx
    cdef void *q
    cdef size_t old
    if p == NULL:
        return _h_malloc(ctx, size)
    if pagemap_sizeclass(&g_heap.pagemap, <uintptr_t>p >> kPageShift) == 0 and _large_span(p) == NULL:
        return d.prev.realloc(d.prev.ctx, p, size)
    if tc_load_int(&d.active):
        return tc_realloc(p, size)
    # Uninstalled: move the block out so tcalloc stops growing.
    q = d.prev.malloc(d.prev.ctx, size)
    if q != NULL:
        old = tc_usable_size(p)
        memcpy(q, p, old if old < size else size)
        _free(p)
    return q

# ---- the Python API -----------------------------------------------------------

cdef list _hook_parse(domains):
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
        if name not in _HOOK_NAMES:
            raise ValueError(f"unknown allocator domain {item!r}; expected 'raw', 'mem' or 'obj'")
        i = _HOOK_NAMES.index(name)
        if i not in out:
            out.append(i)
    if not out:
        raise ValueError("no allocator domain given")
    return out


def _debug_hooks_on():
    """Did CPython install its debug hooks at start-up (PYTHONMALLOC=debug,
    malloc_debug, pymalloc_debug, or -X dev without another PYTHONMALLOC)?"""
    import os
    import sys
    name = os.environ.get("PYTHONMALLOC", "") if not sys.flags.ignore_environment else ""
    if name:
        return name.endswith("debug")
    return bool(sys.flags.dev_mode)


def install(domains=("raw", "mem", "obj")):
    """Route the interpreter's allocations in ``domains`` through tcalloc.

    ``"raw"`` is PyMem_RawMalloc, ``"mem"`` PyMem_Malloc, ``"obj"``
    PyObject_Malloc (every object). Blocks allocated before the call stay with
    the allocator that made them. Idempotent. Call it early, with the GIL
    held; other threads may keep allocating meanwhile. Under CPython's debug
    hooks (``PYTHONMALLOC=debug``, ``-X dev``) tcalloc goes underneath them,
    and they keep checking every block. Refused while tracemalloc is tracing:
    tracemalloc.stop() would put back the allocator it saw at start() and
    unhook tcalloc while tcalloc blocks are alive.
    """
    cdef list todo = _hook_parse(domains)
    cdef PyMemAllocatorEx mine, cur
    cdef _DebugAllocApi *dbg
    cdef int i
    cdef bint under_debug = False
    import tracemalloc
    if tracemalloc.is_tracing():
        raise RuntimeError("tcalloc.install(): stop tracemalloc first (it may be started "
                           "again afterwards; it then wraps tcalloc)")
    debug_hooks = _debug_hooks_on()
    for i in todo:
        if not g_hook[i].wrapped:
            PyMem_GetAllocator(_HOOK_DOMAINS[i], &cur)
            dbg = <_DebugAllocApi *>cur.ctx
            if debug_hooks and dbg != NULL and dbg.api_id == ord(_HOOK_NAMES[i][0]):
                g_hook[i].prev = dbg.alloc       # what the debug hooks wrap
                under_debug = True
            else:
                g_hook[i].prev = cur
            mine.ctx = &g_hook[i]
            mine.malloc = _h_malloc
            mine.calloc = _h_calloc
            mine.realloc = _h_realloc
            mine.free = _h_free
            tc_store_int(&g_hook[i].active, 1)
            g_hook[i].wrapped = 1
            PyMem_SetAllocator(_HOOK_DOMAINS[i], &mine)
        else:
            tc_store_int(&g_hook[i].active, 1)
    if under_debug:
        # Back on top of every domain that no longer has them: their context
        # (the same static struct) now wraps tcalloc's wrapper.
        PyMem_SetupDebugHooks()


def uninstall(domains=("raw", "mem", "obj")):
    """Stop new allocations in ``domains`` from coming from tcalloc.

    Blocks tcalloc already gave out stay valid and are still freed by
    tcalloc: the wrapper stays in place (see engine/hook.pxi), so after
    uninstall every free of another allocator's block costs one pagemap
    lookup more. Idempotent.
    """
    cdef int i
    for i in _hook_parse(domains):
        tc_store_int(&g_hook[i].active, 0)


def installed():
    """True if tcalloc serves new allocations in at least one domain."""
    cdef int i
    for i in range(3):
        if tc_load_int(&g_hook[i].active):
            return True
    return False


def active_domains():
    """The domains whose new allocations come from tcalloc, e.g. ('raw', 'mem', 'obj')."""
    return tuple(_HOOK_NAMES[i] for i in range(3) if tc_load_int(&g_hook[i].active))
