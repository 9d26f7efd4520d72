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
# The wrapper stays in place for the rest of the process, because tcalloc
# blocks may still be alive in that domain and only the wrapper knows to send
# them back to tcalloc. uninstall() swaps its malloc and calloc for ones that
# call the previous allocator (free and realloc stay); a later install() swaps
# them back. The active entry points test no flag: whether a domain is active
# is which malloc sits in its struct (3 instructions fewer per malloc).
#
# CPython's debug hooks (PYTHONMALLOC=debug, -X dev) and tracemalloc stay on
# top: when they wrap a domain, tcalloc goes underneath them (the allocator
# they call becomes our "previous" one, and our entry points take its place
# inside their struct), so the hooks still catch buffer overruns and calls
# without the GIL, and tracemalloc still traces, on tcalloc's blocks and on
# older ones alike. tracemalloc.stop() puts back the struct it saved, which
# is now ours.
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

# The context of CPython's debug hooks (Objects/obmalloc.c, the same layout
# from 3.6 on): the domain's letter and the allocator the hooks wrap.
ctypedef struct _DebugAllocApi:
    char api_id
    PyMemAllocatorEx alloc

ctypedef struct HookDomain:
    PyMemAllocatorEx prev      # the allocator we wrap
    int active                 # new blocks come from tcalloc (the active entry points are
                               # in place); read by realloc and the Python API
    int wrapped                # our wrapper is (or was) installed for this domain

cdef HookDomain g_hook[3]
cdef PyMemAllocatorDomain _HOOK_DOMAINS[3]
_HOOK_DOMAINS[0] = PYMEM_DOMAIN_RAW
_HOOK_DOMAINS[1] = PYMEM_DOMAIN_MEM
_HOOK_DOMAINS[2] = PYMEM_DOMAIN_OBJ
_HOOK_NAMES = ("raw", "mem", "obj")
cdef char _HOOK_IDS[3]            # the debug hooks' api_id per domain
_HOOK_IDS[0] = b'r'
_HOOK_IDS[1] = b'm'
_HOOK_IDS[2] = b'o'

# ---- the wrappers ------------------------------------------------------------
#
# Written once over a HookDomain, then given one entry point per domain that
# names its HookDomain itself and ignores ctx. Ignoring ctx is what lets
# install() swap our functions into an allocator struct another layer holds
# (tracemalloc's saved allocator, the debug hooks' inner one) one pointer at a
# time, while other threads call through it (with the struct's ctx, which
# never changes). Our free and realloc take the previous allocator's blocks
# too, and the previous ones cannot take ours, so they go in first: from
# then on any mix of old and new malloc and calloc is a valid allocator.

cdef inline void *_h_malloc_off(HookDomain *d, size_t size) noexcept nogil:
    return d.prev.malloc(d.prev.ctx, size)

cdef inline void *_h_calloc_off(HookDomain *d, size_t nelem, size_t elsize) noexcept nogil:
    return d.prev.calloc(d.prev.ctx, nelem, elsize)

cdef void _h_free_other(void *dom, void *p) noexcept nogil:
    """Not a small tcalloc block: a large one, or the previous allocator's.
    dom: the HookDomain (void * for the noinline declaration in _engine.pyx)."""
    cdef HookDomain *d = <HookDomain *>dom
    cdef Span *s
    if p == NULL:
        return
    s = _large_span(p)
    if s != NULL:
        _free_large_span(p, s)
    elif tc_on_heap(p):
        # No block of the previous allocator's: a large block freed twice,
        # or a pointer into one. Said as tcalloc's own free says it, not
        # left to the other's crash.
        _fatal_bad_pointer(p, kOpFree)
    else:
        d.prev.free(d.prev.ctx, p)

cdef inline void _h_free(HookDomain *d, void *p) noexcept nogil:
    if TC_LIKELY(_free_small(p)):       # _engine.pyx
        return
    _h_free_other(d, p)

cdef void *_h_realloc(HookDomain *d, void *p, size_t size) noexcept nogil:
    cdef void *q
    cdef size_t old
    if p == NULL:
        return _malloc(size) if tc_load_int(&d.active) else _h_malloc_off(d, size)
    if pagemap_sizeclass(&g_heap.pagemap, <uintptr_t>p >> kPageShift) == 0 and _large_span(p) == NULL:
        if tc_on_heap(p):
            _fatal_bad_pointer(p, kOpRealloc)
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

# The entry points, domain by domain (index into g_hook: 0 raw, 1 mem, 2 obj).
# malloc(0): a unique non-NULL block, as CPython requires.
cdef void *_h_malloc_on(void *ctx, size_t n) noexcept nogil: return _malloc(n)
cdef void *_h_calloc_on(void *ctx, size_t m, size_t n) noexcept nogil: return tc_calloc(m, n)
cdef void *_h_malloc_raw(void *ctx, size_t n) noexcept nogil: return _h_malloc_off(&g_hook[0], n)
cdef void *_h_malloc_mem(void *ctx, size_t n) noexcept nogil: return _h_malloc_off(&g_hook[1], n)
cdef void *_h_malloc_obj(void *ctx, size_t n) noexcept nogil: return _h_malloc_off(&g_hook[2], n)
cdef void *_h_calloc_raw(void *ctx, size_t m, size_t n) noexcept nogil: return _h_calloc_off(&g_hook[0], m, n)
cdef void *_h_calloc_mem(void *ctx, size_t m, size_t n) noexcept nogil: return _h_calloc_off(&g_hook[1], m, n)
cdef void *_h_calloc_obj(void *ctx, size_t m, size_t n) noexcept nogil: return _h_calloc_off(&g_hook[2], m, n)
cdef void *_h_realloc_raw(void *ctx, void *p, size_t n) noexcept nogil: return _h_realloc(&g_hook[0], p, n)
cdef void *_h_realloc_mem(void *ctx, void *p, size_t n) noexcept nogil: return _h_realloc(&g_hook[1], p, n)
cdef void *_h_realloc_obj(void *ctx, void *p, size_t n) noexcept nogil: return _h_realloc(&g_hook[2], p, n)
cdef void _h_free_raw(void *ctx, void *p) noexcept nogil: _h_free(&g_hook[0], p)
cdef void _h_free_mem(void *ctx, void *p) noexcept nogil: _h_free(&g_hook[1], p)
cdef void _h_free_obj(void *ctx, void *p) noexcept nogil: _h_free(&g_hook[2], p)

# Domain i's entry points while inactive, filled once at import (ctx
# unused); active, malloc and calloc are _h_malloc_on/_h_calloc_on, shared.
cdef PyMemAllocatorEx _HOOK_ENTRY[3]
_HOOK_ENTRY[0].malloc, _HOOK_ENTRY[0].calloc = _h_malloc_raw, _h_calloc_raw
_HOOK_ENTRY[0].realloc, _HOOK_ENTRY[0].free = _h_realloc_raw, _h_free_raw
_HOOK_ENTRY[1].malloc, _HOOK_ENTRY[1].calloc = _h_malloc_mem, _h_calloc_mem
_HOOK_ENTRY[1].realloc, _HOOK_ENTRY[1].free = _h_realloc_mem, _h_free_mem
_HOOK_ENTRY[2].malloc, _HOOK_ENTRY[2].calloc = _h_malloc_obj, _h_calloc_obj
_HOOK_ENTRY[2].realloc, _HOOK_ENTRY[2].free = _h_realloc_obj, _h_free_obj

cdef void _hook_entry_points(int i, PyMemAllocatorEx *a, bint active) noexcept:
    """Store domain i's entry points (active: malloc and calloc from tcalloc)
    into a, one release store each, after g_hook[i] is filled (a may be
    live: see above). ctx is left as it is."""
    cdef PyMemAllocatorEx *e = &_HOOK_ENTRY[i]
    tc_store_release_ptr(<void **>&a.free, <void *>e.free)
    tc_store_release_ptr(<void **>&a.realloc, <void *>e.realloc)
    tc_store_release_ptr(<void **>&a.malloc, <void *>(_h_malloc_on if active else e.malloc))
    tc_store_release_ptr(<void **>&a.calloc, <void *>(_h_calloc_on if active else e.calloc))

cdef bint _hook_is_ours(int i, const PyMemAllocatorEx *a) noexcept:
    """Does a hold domain i's wrapper (active or not)?"""
    return a.free == _HOOK_ENTRY[i].free

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


# Both read once, when the engine is imported, so that install() and
# uninstall() read a domain's allocator and write it with no Python code
# between: bytecode there (an import, os.environ) let another thread run,
# and a tracemalloc.start() in that window had tcalloc write its wrapper
# over tracemalloc's hooks, which stop() then dropped (every tcalloc block
# then went to pymalloc's free: an abort). Reading PYTHONMALLOC once also
# keeps a program that changes it later (for its children, say) from
# moving tcalloc above the debug hooks, or uninstall() from looking for
# tcalloc in the wrong place.
cdef bint g_debug_hooks = _debug_hooks_on()
import _tracemalloc               # the C module: `tracemalloc` imports pickle and linecache
_tracemalloc_is_tracing = _tracemalloc.is_tracing     # a C function: no bytecode runs


cdef PyMemAllocatorEx *_tracemalloc_slot(int i) except NULL:
    """While tracemalloc traces, domain i's allocator is tracemalloc's hook,
    whose ctx points at the allocator it saved at start() and calls (and puts
    back at stop()). CPython keeps the three saved allocators together, in
    the order mem, raw, obj (Modules/_tracemalloc.c up to 3.11, the runtime
    state from 3.12): checked, so that anything else on top is refused rather
    than written into."""
    cdef PyMemAllocatorEx a[3]
    cdef char *mem
    PyMem_GetAllocator(PYMEM_DOMAIN_RAW, &a[0])
    PyMem_GetAllocator(PYMEM_DOMAIN_MEM, &a[1])
    PyMem_GetAllocator(PYMEM_DOMAIN_OBJ, &a[2])
    mem = <char *>a[1].ctx
    if (mem == NULL or a[1].malloc != a[2].malloc
            or <char *>a[0].ctx != mem + sizeof(PyMemAllocatorEx)
            or <char *>a[2].ctx != mem + 2 * sizeof(PyMemAllocatorEx)):
        raise RuntimeError("tcalloc.install(): tracemalloc is tracing, but the allocators in "
                           "place are not the ones tracemalloc installed (another layer sits "
                           "on top); install tcalloc before tracemalloc.start()")
    return <PyMemAllocatorEx *>a[i].ctx


cdef PyMemAllocatorEx *_base_slot(int i, PyMemAllocatorEx *cur) except? NULL:
    """The struct that holds domain i's base allocator (pymalloc or the C
    library's, or our wrapper once installed) when a layer sits on top:
    inside tracemalloc's saved allocator, inside the debug hooks' context.
    NULL when the domain's own allocator is the base. cur: the base
    allocator, as it is now."""
    cdef PyMemAllocatorEx *slot = NULL
    cdef _DebugAllocApi *dbg
    PyMem_GetAllocator(_HOOK_DOMAINS[i], cur)
    if _tracemalloc_is_tracing():
        slot = _tracemalloc_slot(i)
        cur[0] = slot[0]
    dbg = <_DebugAllocApi *>cur.ctx
    if g_debug_hooks and dbg != NULL and dbg.api_id == _HOOK_IDS[i]:
        slot = &dbg.alloc
        cur[0] = slot[0]
    return slot


cdef void _hook_switch(int i, bint active) except *:
    """Swap domain i's malloc and calloc for the active or the inactive
    ones, in the struct where our wrapper is now."""
    cdef PyMemAllocatorEx cur
    cdef PyMemAllocatorEx *slot = _base_slot(i, &cur)
    if not _hook_is_ours(i, &cur):
        raise RuntimeError("tcalloc: another allocator layer was installed over tcalloc's in "
                           "the %r domain; remove it before calling install() or uninstall()"
                           % _HOOK_NAMES[i])
    tc_store_int(&g_hook[i].active, active)
    _hook_place(i, slot, &cur, active)


cdef void _hook_place(int i, PyMemAllocatorEx *slot, PyMemAllocatorEx *cur, bint active) noexcept:
    """Put domain i's entry points where its base allocator is (see
    _base_slot): into slot, which a layer above calls through, or, when
    slot is NULL, into cur (its ctx kept), which becomes the domain's."""
    cdef PyMemAllocatorEx step
    if slot != NULL:
        _hook_entry_points(i, slot, active)
    else:
        # PyMem_SetAllocator copies the struct field by field, and threads
        # in the raw domain run without the GIL: one could take a block from
        # the new malloc and free it with the old free. So free and realloc
        # (ours handle any block) go in first, malloc and calloc after.
        step = cur[0]
        step.free = _HOOK_ENTRY[i].free
        step.realloc = _HOOK_ENTRY[i].realloc
        PyMem_SetAllocator(_HOOK_DOMAINS[i], &step)
        _hook_entry_points(i, cur, active)
        PyMem_SetAllocator(_HOOK_DOMAINS[i], cur)


# install() and uninstall() read a domain's allocator and write it with no
# Python code between (see g_debug_hooks), but a whole call does several
# domains and syncs the collector's hook: two calls at once take turns on
# this lock (`_thread`: built in).
import _thread
_hook_lock = _thread.allocate_lock()


def install(domains=("raw", "mem", "obj")):
    """Route the interpreter's allocations in ``domains`` through tcalloc.

    ``"raw"`` is PyMem_RawMalloc, ``"mem"`` PyMem_Malloc, ``"obj"``
    PyObject_Malloc (every object). Blocks allocated before the call stay with
    the allocator that made them. Idempotent. Call it early, with the GIL
    held; other threads may keep allocating meanwhile. tcalloc goes
    underneath the layers CPython puts on top of the allocator: its debug
    hooks (``PYTHONMALLOC=debug``, ``-X dev``) keep checking every block,
    and tracemalloc, if it is tracing, keeps tracing every block (and
    ``tracemalloc.stop()`` leaves tcalloc in place). Calls from several
    threads at once (of this and uninstall()) take turns.
    """
    cdef list todo = _hook_parse(domains)
    cdef PyMemAllocatorEx cur
    cdef PyMemAllocatorEx *slot
    cdef int i
    with _hook_lock:
        for i in todo:
            if g_hook[i].wrapped:
                if not tc_load_int(&g_hook[i].active):
                    _hook_switch(i, 1)
                continue
            slot = _base_slot(i, &cur)
            g_hook[i].prev = cur
            tc_store_int(&g_hook[i].active, 1)
            g_hook[i].wrapped = 1
            _hook_place(i, slot, &cur, 1)
        _gc_hook_sync()


def uninstall(domains=("raw", "mem", "obj")):
    """Stop new allocations in ``domains`` from coming from tcalloc.

    Blocks tcalloc already gave out stay valid and are still freed by
    tcalloc: the wrapper stays in place (see engine/hook.pxi), so after
    uninstall every free of another allocator's block costs one pagemap
    lookup more. Idempotent. Raises RuntimeError if another layer (not
    CPython's debug hooks or tracemalloc) was installed over tcalloc's.
    """
    cdef list todo = _hook_parse(domains)
    cdef int i
    with _hook_lock:
        for i in todo:
            if g_hook[i].wrapped and tc_load_int(&g_hook[i].active):
                _hook_switch(i, 0)
        _gc_hook_sync()


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


# ---- the garbage collector's frees, put in address order -------------------
# While tcalloc serves the obj domain, _gc_callback sits in gc.callbacks: at
# a collection's start it notes this thread's list lengths, at its stop it
# has the objects the collection freed put in address order
# (threadcache_sort_tops says why). A collection that freed fewer than
# kGcSortMin objects costs the two calls and the snapshot only.

cdef enum:
    kGcSortCap = 1 << 16         # objects reordered per list and collection at most
    kGcSortMin = 64              # a list must have grown by this much
cdef uint32_t g_gc_before[kMaxClasses]
cdef int g_gc_noted = 0          # g_gc_before is this collection's


def _gc_callback(phase, info):
    """gc.callbacks entry while tcalloc serves the obj domain (install())."""
    global g_gc_noted
    cdef ThreadCache *tc = <ThreadCache *>tc_tls_get()
    cdef int cl
    cdef uint32_t most
    cdef void **buf
    if tc.reg == NULL:              # no cache yet: nothing was freed into one
        g_gc_noted = 0
        return
    if phase == "start":
        for cl in range(tc.num_classes):
            g_gc_before[cl] = freelist_length(&tc.lists[cl])
        g_gc_noted = 1
        return
    if not g_gc_noted or info["collected"] < kGcSortMin:
        return
    g_gc_noted = 0
    most = threadcache_most_grown(tc, g_gc_before)
    if most < kGcSortMin:
        return
    if most > kGcSortCap:
        most = kGcSortCap
    # The sort's buffer (its run and its scratch) comes from the heap and
    # goes back to it at once, so the program reuses its pages: a buffer of
    # its own, from the metadata arena, kept what the largest sort touched
    # resident for good (1 MiB after one collection of 150k objects).
    # Taking it may pop one of the objects just freed (a list then has one
    # less to sort).
    buf = <void **>_malloc(2 * <size_t>most * sizeof(void *))
    if buf == NULL:
        return
    with nogil:
        tc_store_u64(&g_gc_sorted, g_gc_sorted
                     + threadcache_sort_tops(tc, g_gc_before, buf, most, kGcSortMin))
        _free(buf)


def _gc_hook_sync():
    """Keep _gc_callback in gc.callbacks exactly while the obj domain is ours
    (and TCALLOC_GC_SORT is not 0)."""
    import gc
    on = g_gc_sort and tc_load_int(&g_hook[2].active)
    if on and _gc_callback not in gc.callbacks:
        gc.callbacks.append(_gc_callback)
    elif not on and _gc_callback in gc.callbacks:
        gc.callbacks.remove(_gc_callback)
