# tcalloc's engine: one extension module, compiled from its parts.
#
# This file holds what a reader needs first: the global structures (their one
# owner), the allocation fast path, and the C-API table. Everything else is
# `include`d, in dependency order (a part may use what an earlier one defines):
#
#   components (each works on a struct passed in, so tests build private copies)
#     engine/span.pxi         Span: a run of pages; span lists
#     engine/sizemap.pxi      size -> class table, class sizes, pages, batches
#     engine/arena.pxi        metadata arena (mmap'd; never malloc)
#     engine/pagemap.pxi      radix tree: page -> span and size class
#     engine/pageheap.pxi     page heap: spans of pages, one global lock
#     engine/central.pxi      central free list per class, spinlock per class
#     engine/transfer.pxi     transfer cache per class, spinlock per class
#     engine/threadcache.pxi  per-thread caches (no lock) and their registry
#   the engine proper (uses the globals below)
#     engine/sampler.pxi      heap sampling: which blocks, their stacks, profiles' records
#     engine/slowpath.pxi     cache misses, large blocks, calloc/realloc/aligned
#     engine/debug.pxi        debug mode: checked frees, poisoning
#     engine/fork.pxi         fork handlers
#     engine/background.pxi   background release thread
#     engine/stats.pxi        stats(), stats_text()
#     engine/hook.pxi         the interpreter hook (PyMem_SetAllocator wrappers)
#     engine/api.pxi          the Python control API and the environment settings
#
# Naming rules and the lock discipline are written once, in common.pxd.
#
# Lock nesting (outermost first; a thread never takes an earlier lock while
# holding a later one, and holds at most one transfer or central lock):
#     bg_lock -> registry -> transfer[cl] -> central[cl] -> page heap -> arena
# In practice transfer[cl] is dropped before central[cl] is taken, and
# central[cl] before the page heap: only fork() holds them all at once.
# The fast path (thread cache pop/push, pagemap read) takes no lock.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t, uintptr_t
from libc.string cimport memset, memcpy
from libc.errno cimport ENOMEM, EINVAL, ENOSYS
from cpython.pycapsule cimport PyCapsule_New

from tcalloc.common cimport *
from tcalloc.capi cimport TcallocCAPI, TcallocExtAPI

include "engine/span.pxi"
include "engine/sizemap.pxi"
include "engine/arena.pxi"
include "engine/pagemap.pxi"
include "engine/pageheap.pxi"
include "engine/central.pxi"
include "engine/transfer.pxi"
include "engine/threadcache.pxi"

cdef extern from "tc_tls.h" nogil:
    enum: TC_EMPTY_CACHE_BYTES
    void *tc_tls_get()
    void *tc_tls_owner()
    void tc_tls_set(void *p, int fast)
    bint tc_tls_exiting()
    void tc_tls_set_exiting()

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned int pthread_key_t
    ctypedef unsigned long pthread_t
    int pthread_key_create(pthread_key_t *key, void (*destructor)(void *) noexcept nogil)
    int pthread_setspecific(pthread_key_t key, const void *value)
    int pthread_atfork(void (*prepare)() noexcept nogil, void (*parent)() noexcept nogil,
                       void (*child)() noexcept nogil)
    int pthread_create(pthread_t *thread, const void *attr, void *(*start)(void *) noexcept nogil, void *arg)
    int pthread_detach(pthread_t thread)
    int pthread_join(pthread_t thread, void **retval)
    pthread_t pthread_self()

cdef extern from "<signal.h>" nogil:
    ctypedef struct sigset_t:
        pass
    int SIG_SETMASK
    int sigfillset(sigset_t *set)
    int pthread_sigmask(int how, const sigset_t *set, sigset_t *oldset)

cdef size_t kMaxAllocBytes = (<size_t>1) << 46    # larger requests fail at once (ENOMEM)

# Slow paths the compiler must not inline into malloc and free: inlined,
# their register needs make every call save and restore registers. Cython has
# no noinline, so the attribute goes on C prototypes of the generated names
# (a renamed function loses it: the callgrind count in bench/ shows that).
cdef extern from *:
    """
    #define TC_ENGINE_NOINLINE(ret, name, args) static ret __pyx_f_7tcalloc_7_engine_##name args __attribute__((noinline));
    struct __pyx_t_7tcalloc_7_engine_Span;
    TC_ENGINE_NOINLINE(void *, _malloc_large, (size_t, size_t))
    TC_ENGINE_NOINLINE(void, _free_large, (void *))
    TC_ENGINE_NOINLINE(void *, _malloc_small_slow, (uint32_t, size_t))
    TC_ENGINE_NOINLINE(void, _free_small_slow, (void *, uint32_t))
    TC_ENGINE_NOINLINE(void, _free_small_slow_at, (void *, size_t))
    TC_ENGINE_NOINLINE(void, _h_free_other, (void *, void *))
    TC_ENGINE_NOINLINE(void *, _sample_small, (void *, size_t))
    """

# ---- the global structures ---------------------------------------------------

cdef SizeMap g_sizemap
cdef uint16_t g_list_offset[kClassArraySize]   # g_sizemap.class_array[i] * sizeof(FreeList)
cdef enum:
    kSmallOffsetMax = 1024                     # g_small_offset's sizes: the (size + 7) >> 3 range
# g_list_offset[(size + 7) >> 3] for each size <= kSmallOffsetMax: malloc
# indexes it by the size itself (no add, no shift: two instructions) for
# 2 KiB of table, of which a program touches the lines of the sizes it uses.
cdef uint16_t g_small_offset[kSmallOffsetMax + 1]
cdef MetaArena g_arena
cdef PageHeap g_heap
cdef CentralFreeList g_central[kMaxClasses]
cdef TransferCache g_transfer[kMaxClasses]
cdef ThreadCacheRegistry g_registry
cdef pthread_key_t g_key
cdef TcallocCAPI g_capi
cdef TcallocExtAPI g_ext
cdef int g_debug = 0
# Moving reallocs of large blocks that may still move pages (mremap) rather
# than copy them (engine/slowpath.pxi, _move_large). A move can split the
# heap's mappings, which the kernel need not merge back, so moves come in
# rounds of kPageMoveRound, each granted only while the process has fewer
# than kPageMoveMaps mappings: about 7,000 at most however many moves, well
# under the kernel's limit of 65,530. -1: off (TCALLOC_REALLOC_MOVE_PAGES=0,
# or the kernel lacks MREMAP_DONTUNMAP). Relaxed atomic loads/stores: a lost
# decrement only allows one more move.
cdef enum:
    kPageMoveRound = 1024
    kPageMoveMaps = 4096
cdef int64_t g_page_moves_left = kPageMoveRound
cdef uint64_t g_moved_bytes = 0      # bytes those moves carried (stats: realloc_moved_bytes)
cdef uint64_t g_gc_sorted = 0        # objects put in address order after collections (hook.pxi)
cdef int g_gc_sort = 1               # 0: TCALLOC_GC_SORT=0, the hook leaves gc.callbacks alone

# background release (engine/background.pxi; lock order: taken alone)
cdef enum:
    kDefaultReleaseRate = 8 << 20    # bytes per second (docs/architecture.md says why)
    # Heap size at which the releaser thread starts. 16 MiB, not 64: below
    # 64 MiB the free cap never applies, and pyflakes over the standard
    # library (a 24 MiB heap) kept free pages resident that the program
    # reused for blocks and spans it never wrote in full: peak RSS 39.4 MiB
    # at 64, 34.5 at 16 (plain python 33.0), time unchanged within noise.
    kBgStartHeap = 16 << 20
cdef tc_spinlock_t g_bg_lock
cdef uint64_t g_release_rate = kDefaultReleaseRate   # bytes per second; 0: release off.
                                     # Written under g_bg_lock, read by stats() without:
                                     # relaxed stores/loads
cdef int g_bg_running = 0
cdef pthread_t g_bg_thread           # the releaser while g_bg_running (joinable)
# 1 asks the releaser to exit now (fork's prepare handler): the word it sleeps
# on, as a futex, between ticks.
cdef int g_bg_stop = 0
cdef int g_bg_forked = 0             # prepare stopped a releaser: wanted again after
                                     # (tc_load_int/tc_store_int: two threads may fork at once)
# A rate is set but no releaser runs (at start-up, after fork): start one at
# the next slow path once the heap reaches kBgStartHeap. Written under
# g_bg_lock; the slow paths poll it without the lock (a relaxed load, so a
# thread that misses the change just calls _bg_start, which rechecks under
# the lock): tc_load_int/tc_store_int only.
cdef int g_bg_wanted = 0

# =============================================================================
# The hot path. Everything a small malloc or free does when its thread cache
# can serve it is in these two functions plus threadcache_pop/push
# (engine/threadcache.pxi) and pagemap_sizeclass (engine/pagemap.pxi), all
# inlined here.
# =============================================================================

# Cost, counted with callgrind (python -m bench.engine --callgrind): see
# bench/README.md for the per-size table. Per 64 B malloc (17 instructions
# with its return): the size test, the list-offset lookup (one table entry
# per size up to 1024: no rounding), the TLS load, the pop and the sample
# clock. Per free (26): the hot-leaf test and the class byte (no NULL-leaf
# test, no mask: pagemap_sizeclass_of), the TLS load and the push with its
# full-list and double-free key checks. No lock, no atomic read-modify-write
# (a list's mallocs and frees are plain owner-only adds on memory, read by
# stats() on other threads as benign races), no word that both malloc and
# free change (a list derives its length: see FreeList), no test for a
# missing cache, no byte counting.

cdef inline void *_malloc_at(size_t off, size_t size) noexcept nogil:
    """Pop from the calling thread's list at byte offset off (class off / sizeof(FreeList))."""
    cdef ThreadCache *tc = <ThreadCache *>tc_tls_get()
    cdef void *p = freelist_try_pop(<FreeList *>(<char *>tc + off))
    if TC_LIKELY(p != NULL):
        # Heap sampling: the thread's byte clock runs down to its next sample
        # (engine/sampler.pxi; never, when off). p: tc is a real cache.
        tc.sample_left -= <int64_t>size
        if TC_UNLIKELY(tc.sample_left < 0):
            return _sample_small(p, size)
        return p
    return _malloc_small_slow(<uint32_t>(off // sizeof(FreeList)), size)  # a tail call: the fast path saves no registers

cdef inline void *_malloc_class(uint32_t cl, size_t size) noexcept nogil:
    return _malloc_at(cl * sizeof(FreeList), size)

cdef inline void *_malloc(size_t size) noexcept nogil:
    # g_list_offset, not g_sizemap.class_array: the table holds the class's
    # byte offset in the cache, which saves the multiply (two instructions).
    cdef size_t off
    if TC_LIKELY(size <= kSmallOffsetMax):
        off = g_small_offset[size]
    elif size <= kMaxSmallSize:
        off = g_list_offset[sizemap_index(size)]
    else:
        return _malloc_large(size, 1)
    return _malloc_at(off, size)

cdef inline bint _free_small(void *p) noexcept nogil:
    """Free p if it is a small block (1), else leave it to the caller (0):
    the engine's free and the interpreter hook's (engine/hook.pxi) differ
    only in what they do with other pointers."""
    # off: the class's byte offset in the cache, 0 for none. The class is
    # recomputed from it only on the slow path (no register copy of cl).
    cdef size_t off = pagemap_sizeclass_of(&g_heap.pagemap, <uintptr_t>p) * sizeof(FreeList)
    cdef ThreadCache *tc
    if TC_LIKELY(off != 0):
        tc = <ThreadCache *>tc_tls_get()
        if TC_UNLIKELY(not freelist_try_push(tc, <FreeList *>(<char *>tc + off), p)):
            _free_small_slow_at(p, off)
        return 1
    return 0

cdef inline void _free(void *p) noexcept nogil:
    if TC_LIKELY(_free_small(p)):
        return
    _free_large(p)

# ---- the exported entry points (capsule and cimport) ---------------------------

cdef void *tc_malloc(size_t size) noexcept nogil:
    return _malloc(size)

cdef void tc_free(void *ptr) noexcept nogil:
    _free(ptr)

cdef void *_capi_malloc(size_t n) noexcept nogil:
    return _malloc(n)
cdef void _capi_free(void *p) noexcept nogil:
    _free(p)
cdef void *_capi_calloc(size_t n, size_t s) noexcept nogil:
    return tc_calloc(n, s)
cdef void *_capi_realloc(void *p, size_t n) noexcept nogil:
    return tc_realloc(p, n)
cdef void *_capi_aligned_alloc(size_t a, size_t n) noexcept nogil:
    return tc_aligned_alloc(a, n)
cdef size_t _capi_usable_size(void *p) noexcept nogil:
    return tc_usable_size(p)
cdef int _capi_owns(const void *p) noexcept nogil:
    return tc_owns(p)
cdef size_t _capi_bytes_in_use() noexcept nogil:
    cdef EngineStats st
    _collect(&st, NULL)
    return st.bytes_in_use

include "engine/sampler.pxi"
include "engine/slowpath.pxi"
include "engine/debug.pxi"
include "engine/fork.pxi"
include "engine/background.pxi"
include "engine/stats.pxi"
include "engine/hook.pxi"
include "engine/api.pxi"

# ---- start-up ------------------------------------------------------------------

cdef int _init() except -1:
    global g_debug, g_release_rate
    cdef int cl
    cdef size_t i
    if sizeof(ThreadCache) > TC_EMPTY_CACHE_BYTES:
        raise ImportError("tcalloc: tc_tls.h's empty cache is smaller than a ThreadCache")
    if sizemap_init(&g_sizemap) != 0:
        raise ImportError("tcalloc: size class table could not be built")
    if kPageShift + kPagemapLeafBits != 32:
        raise ImportError("tcalloc: a pagemap leaf must cover 4 GiB (pagemap_sizeclass_of)")
    if kMaxClasses * sizeof(FreeList) > 0xFFFF:
        raise ImportError("tcalloc: a ThreadCache's lists do not fit 16-bit offsets")
    for i in range(kClassArraySize):
        g_list_offset[i] = <uint16_t>(g_sizemap.class_array[i] * sizeof(FreeList))
    for i in range(kSmallOffsetMax + 1):
        g_small_offset[i] = g_list_offset[(i + 7) >> 3]
    arena_init(&g_arena)
    pageheap_init(&g_heap, &g_arena)
    for cl in range(1, g_sizemap.num_classes):
        central_init(&g_central[cl], cl, g_sizemap.class_to_size[cl], g_sizemap.class_to_pages[cl],
                     g_sizemap.objects_per_span[cl], &g_heap)
        if transfer_init(&g_transfer[cl], cl, g_sizemap.num_objects_to_move[cl],
                         g_sizemap.class_to_size[cl], &g_central[cl], &g_arena) != 0:
            raise MemoryError("tcalloc: no memory for the transfer caches")
    threadcache_registry_init(&g_registry, &g_sizemap, g_transfer, &g_arena)
    g_registry.large_bytes = &g_heap.large_bytes
    g_registry.heap_commits = &g_heap.committed_taken
    if pthread_key_create(&g_key, _thread_exit) != 0:
        raise ImportError("tcalloc: pthread_key_create failed")
    if pthread_atfork(_atfork_prepare, _atfork_parent, _atfork_child) != 0:
        raise ImportError("tcalloc: pthread_atfork failed")
    tc_spinlock_init(&g_bg_lock)
    tc_spinlock_init(&g_sampler.lock)
    _set_release_rate(kDefaultReleaseRate)  # its releaser and free cap; the environment may change them
    g_debug = 1 if TCALLOC_DEBUG else 0      # the build's switch; TCALLOC_DEBUG=1 below
    g_capi.abi_version = 1
    g_capi.malloc = _capi_malloc
    g_capi.free = _capi_free
    g_capi.calloc = _capi_calloc
    g_capi.realloc = _capi_realloc
    g_capi.aligned_alloc = _capi_aligned_alloc
    g_capi.usable_size = _capi_usable_size
    g_ext.abi_version = 1
    g_ext.owns = _capi_owns
    g_ext.bytes_in_use = _capi_bytes_in_use
    _apply_environment()
    return 0

_init()

_C_API = PyCapsule_New(<void *>&g_capi, b"tcalloc._C_API", NULL)
_MAX_ALLOC_BYTES = kMaxAllocBytes     # for MemoryError messages (tcalloc.buffer)
_C_API_EXT = PyCapsule_New(<void *>&g_ext, b"tcalloc._C_API_EXT", NULL)
