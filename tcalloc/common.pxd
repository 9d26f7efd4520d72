# Shared declarations: the platform shims (includes/tc_platform.h) and the
# constants every component agrees on. Declarations only; no state.
#
# Naming rules, for every part of the engine (tcalloc/engine/*.pxi):
#   tc_*          C shims from includes/*.h (atomics, spinlock, OS calls)
#   <part>_*      a part's interface: sizemap_, arena_, pagemap_, pageheap_,
#                 central_, transfer_, threadcache_, span_, freelist_
#   _name         private to the part that defines it
#   *_locked      the caller holds the lock of the structure passed in; every
#                 other function takes the locks it needs itself, and its
#                 docstring or its part's header says which; one exception,
#                 said at its top: pageheap.pxi's private _helpers all run
#                 under the page-heap lock its public functions take
#   kName         a constant (cdef enum); g_name a global, owned by _engine.pyx
#   try_*         a fast-path step that may decline (returns NULL/0) and never
#                 takes a lock; the caller then takes the slow path
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t, uintptr_t

cdef extern from "tc_platform.h" nogil:
    enum:
        TCALLOC_DEBUG
        TCALLOC_LOCK_STATS
        TCALLOC_FREE_KEY
        TCALLOC_ASSERTS
    ctypedef struct tc_spinlock_t:
        int state
        uint64_t acquisitions
        uint64_t contended
        uint64_t spins
        uint64_t wait_ns
    void tc_spinlock_init(tc_spinlock_t *l)
    void tc_spinlock_lock(tc_spinlock_t *l)
    void tc_spinlock_unlock(tc_spinlock_t *l)
    void tc_spinlock_reset(tc_spinlock_t *l)

    bint TC_LIKELY(bint x)
    bint TC_UNLIKELY(bint x)
    uint64_t tc_load_u64(const uint64_t *p)
    void tc_store_u64(uint64_t *p, uint64_t v)
    void tc_store_i64(int64_t *p, int64_t v)
    void tc_store_u32(uint32_t *p, uint32_t v)
    void tc_inc_owned(uint64_t *p, uint64_t v)
    uint64_t tc_atomic_add_u64(uint64_t *p, uint64_t v)
    int64_t tc_load_i64(const int64_t *p)
    void tc_atomic_max_u64(uint64_t *p, uint64_t v)
    uint64_t tc_atomic_sub_u64(uint64_t *p, uint64_t v)
    uint32_t tc_load_u32(const uint32_t *p)
    int tc_load_int(const int *p)
    void tc_store_int(int *p, int v)
    void *tc_load_acquire_ptr(void * const *p)
    void *tc_load_relaxed_ptr(void * const *p)
    void tc_store_release_ptr(void **p, void *v)
    void tc_store_relaxed_ptr(void **p, void *v)
    uint8_t tc_load_u8(const uint8_t *p)
    void tc_store_u8(uint8_t *p, uint8_t v)
    void tc_prefetch(const void *p)
    uint64_t tc_now_ns()
    void tc_spin_backoff(uint64_t *spins, uint64_t limit)
    void tc_cpu_relax()
    void tc_futex_wait(int *addr, int val)
    void tc_futex_wait_for(int *addr, int val, long ns)
    void tc_futex_wake(int *addr, int n)
    enum:
        TC_SPIN_LIMIT

    void *tc_os_map(size_t size)
    void *tc_os_map_at(void *hint, size_t size)
    int tc_os_unmap(void *p, size_t size)
    int tc_os_release(void *p, size_t size)
    int tc_os_move(void *src, void *dst, size_t size)
    int tc_os_range_mapped(void *p, size_t size)
    int tc_os_restore_after_move(void *dst, size_t size)
    long tc_os_mapping_count()
    bint tc_os_any_resident(void *p, size_t size)
    void tc_os_fill_resident(void *p, size_t size, int byte)
    void tc_fatal_ptr(const char *what, const void *ptr)
    # An internal invariant: checked in TCALLOC_ASSERTS builds, compiled
    # away (cond not evaluated) otherwise. cond must be a plain C expression.
    void TC_ASSERT(bint cond, const char *what)

    bint tc_is_pow2(size_t x)
    int tc_ctz64(uint64_t x)
    int tc_clz64(uint64_t x)
    bint tc_mul_overflow(size_t a, size_t b, size_t *out)
    void tc_set_errno(int e)
    int tc_get_errno()

cdef enum:
    kPageShift = 13                 # 8 KiB pages
    kPageSize = 8192
    kMaxSmallSize = 262144          # objects above this go straight to the page heap
    kMaxClasses = 128               # room for the class table (uint8 class ids)
    kMaxPages = 128                 # page-heap exact free lists cover 1..128 pages (1 MiB)
    kAddressBits = 48
