# Thread cache: one per thread, a singly linked free list per size class.
# The pop/push below are the allocation fast path; everything else here is
# the slow path: refill from / release to the transfer cache in batches, a
# per-list max length that slow-starts and shrinks after repeated overflow,
# and a byte budget per thread drawn from an overall budget, enforced by
# scavenging half of each list's low-water mark (the periodic flush).
#
# Thread safety: a ThreadCache is owned by one thread and its lists are
# touched by that thread only, with no lock. stats() on other threads reads
# the lists' lengths and counters with relaxed loads; the owner writes them
# with relaxed stores (plain movs on x86-64 and AArch64: the fast path pays
# nothing), except FreeList.frees, the one benign race (see there). Other
# threads may lower `max_size` or set `flush_requested` while holding the
# registry lock (relaxed stores; the owner reads them with relaxed loads).
# ThreadSanitizer checks all of it (tests/test_sanitizers.py). The registry (list of
# caches, budgets, counters of exited threads) is under reg.lock, which is
# taken before any transfer/central lock, never after.
#
# Fork: every move of objects between a cache (or a cacheless caller) and
# the shared stores, counters included, runs inside the registry's fork gate
# (threadcache_gate_enter/exit), which fork() closes and waits out before it
# takes the locks: a batch popped from a shared list but not yet counted on
# a thread's list, or the reverse, cannot exist at the moment of fork(). A
# thread inside the gate holds or waits for no lock but the transfer,
# central, page-heap and arena locks, so it never waits on the forker. The
# fast path runs outside the gate; it publishes a pushed block only after
# linking it, so a child can follow every list of a thread frozen anywhere
# (threadcache_adopt_orphans).
from libc.stdint cimport int32_t, uint16_t, uint32_t, uint64_t, int64_t, uintptr_t
from libc.string cimport memset, memcpy

ctypedef struct FreeList:         # 64 bytes: one cache line per class
    void *head
    # Counters, owner-written, read by stats(). Each fast path changes one
    # word of its own: pop adds 1 to `mallocs`, push adds 1 to `frees`. The
    # list's length is derived (freelist_length): objects are conserved on
    # a list, so length = frees - mallocs + base, where `base` is what the
    # slow paths brought in less what they sent back. The list's limit is
    # kept as `room`, the limit less `base`, so that push's test, length >=
    # limit, is frees - mallocs >= room: two loads (one folded into a sub)
    # and a compare with memory. (Testing frees - mallocs + base against a
    # stored limit is one load and add more, and made the pair 0.4-0.5 ns
    # slower on the EPYC test machine, 10 interleaved runs.) The limit is
    # derived (freelist_max): a new limit changes `room` alone, and a fetch
    # or a release changes `base` and `room` together inside the fork gate,
    # so a fork child finds the three consistent whatever the thread was
    # doing.
    # Why not a length word: a malloc+free pair then changed one word twice
    # (subl in pop, addl in push), and each change waited for the other's
    # store to be forwarded, a chain through memory on every pair; pop's
    # and push's counters are each changed by one side only, and push only
    # reads mallocs, for a predicted branch. Measured: 16 B pairs 6.45 ns
    # with the length word, 5.35 without (bench/README.md, "the list's
    # length, derived").
    # `mallocs` and `frees` are the benign data races: the fast paths add
    # to them with a plain `addq` on memory (a relaxed load-add-store would
    # cost three instructions for one); their only readers on another
    # thread are freelist_mallocs_snapshot, freelist_frees_snapshot and
    # freelist_length_snapshot (stats()), which see the old or the new
    # value of an aligned word, never a torn one. Those readers are
    # suppressed for ThreadSanitizer (tests/sanitizers/tsan.supp). `base`
    # and `room` change on the owner's slow paths only, with relaxed stores.
    uint64_t mallocs              # pops (malloc fast path)
    uint64_t frees                # pushes (free fast path)
    int64_t room                  # the list's limit (max_length) - base: a push past it takes the slow path
    uint64_t base                 # objects brought in - objects sent back, wrapping
    uint32_t lowater              # lowest length since the last scavenge as the slow paths
                                  # saw it (0 after a fetch); the pops are folded in when a
                                  # scavenge asks (freelist_lowater), not counted per pop
    uint32_t size                 # object size of the class
    uint16_t batch
    uint16_t overages
    uint32_t released             # objects sent back, as a clock that wraps (freelist_drawn)
    uint32_t scavenged_at         # length after the last scavenge
    uint32_t drawn_at             # freelist_drawn() after the last scavenge

ctypedef struct ThreadCache:
    FreeList lists[kMaxClasses]
    # The byte budget is enforced on capacity, not on bytes held: capacity
    # is the sum over lists of max_length x object size, it changes only on
    # the slow path (when a max_length does), and a list never holds more
    # than its max_length, so bytes held <= capacity <= max_size without the
    # fast path counting bytes. Bytes held are summed when stats() asks.
    uint64_t capacity
    uint64_t max_size             # this thread's budget
    ThreadCache *next
    ThreadCache *prev
    ThreadCacheRegistry *reg      # NULL in the engine's empty cache (tc_tls.h)
    void *free_key                # copy of the registry's: one load less per free
    int64_t sample_left           # bytes to the next heap sample (engine/sampler.pxi)
    int num_classes
    int flush_requested
    uint64_t fetches
    uint64_t commits_seen         # *reg.heap_commits at this cache's last growth scavenge
    uint64_t scavenges
    uint64_t overflows            # pushes past max_length
    uint64_t budget_grows         # budget steps taken from the overall budget or other threads
    uint64_t refusals             # list growths the budget refused

ctypedef struct ThreadCacheRegistry:
    tc_spinlock_t lock
    ThreadCache *caches
    ThreadCache *free_caches      # recycled structs: metadata does not grow per thread
    ThreadCache *steal_cursor
    ThreadCache *orphans          # a fork child's caches of the threads it does not have,
                                  # not yet taken back (threadcache_adopt_orphans); linked
                                  # by .next, under the lock; read without it (relaxed)
    TransferCache *transfer       # indexed by class
    const SizeMap *sizemap
    MetaArena *arena
    void *free_key                # marks free blocks (second word); random per process
    int64_t unclaimed             # overall budget not handed to any thread; written under
                                  # the lock with relaxed stores: _grow_list reads it without
    uint64_t overall_max
    uint64_t per_thread_max
    uint64_t num_caches
    uint64_t caches_created
    uint64_t structs
    uint64_t retired_mallocs[kMaxClasses]   # counters of exited threads and
    uint64_t retired_frees[kMaxClasses]     # of cacheless allocations
    # Bytes out of the shared stores (in use, or in a thread's cache), and
    # the peak of that plus the large blocks in use (*large_bytes, the page
    # heap's counter; NULL for a private registry): updated on the slow path
    # with atomics, so the figure is exact at the granularity of batches.
    uint64_t out_bytes
    uint64_t peak_allocated
    const uint64_t *large_bytes
    # Bytes the page heap has committed afresh so far (its committed_taken;
    # NULL for a private registry): each 256 KiB of it makes every thread
    # scavenge at its next fetch (see threadcache_fetch).
    const uint64_t *heap_commits
    uint64_t transfer_drained_at  # *heap_commits when the transfer caches were last emptied
    # The fork gate (see the header): threads inside a move, and fork()s
    # between their prepare and parent/child handlers. A thread kept out
    # sleeps on gate_epoch, which each reopening bumps; what the waits cost
    # is reported as the "fork_gate" lock's (TCALLOC_LOCK_STATS builds).
    uint64_t movers
    uint64_t forks_pending
    int gate_epoch
    uint64_t gate_waits
    uint64_t gate_spins
    uint64_t gate_wait_ns

# The gate is a Dekker pair: each side writes its own word, then reads the
# other's, which needs sequentially consistent order (tc_atomic_* are relaxed).
cdef extern from *:
    """
    static inline void threadcache_gate_add_sc(uint64_t *p, int64_t v) { __atomic_add_fetch(p, (uint64_t)v, __ATOMIC_SEQ_CST); }
    static inline uint64_t threadcache_gate_load_sc(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
    static inline void threadcache_gate_bump_sc(int *p) { __atomic_add_fetch(p, 1, __ATOMIC_SEQ_CST); }
    static inline int threadcache_gate_epoch_sc(const int *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
    """
    void _gate_add "threadcache_gate_add_sc"(uint64_t *p, int64_t v) nogil
    uint64_t _gate_load "threadcache_gate_load_sc"(const uint64_t *p) nogil
    void _gate_bump "threadcache_gate_bump_sc"(int *p) nogil
    int _gate_epoch "threadcache_gate_epoch_sc"(const int *p) nogil

# A compiler-only fence (no instruction): keeps the push's counter updates,
# plain read-modify-writes the compiler could otherwise hoist, after the
# store that publishes the block (see threadcache_adopt_orphans).
cdef extern from *:
    """
    static inline void threadcache_compiler_fence(void) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
    """
    void _compiler_fence "threadcache_compiler_fence"() nogil

cdef inline void threadcache_gate_enter(ThreadCacheRegistry *reg) noexcept nogil:
    """Start a move (no lock held but the ones a move takes); waits while
    a fork() is in progress."""
    while True:
        _gate_add(&reg.movers, 1)
        if _gate_load(&reg.forks_pending) == 0:
            return
        _gate_add(&reg.movers, -1)
        _gate_wait(reg)

cdef void _gate_wait(ThreadCacheRegistry *reg) noexcept nogil:
    """Kept out by a fork() under way: spin a little (it may be ending on
    the other core), then sleep until the parent handler reopens the gate.
    A fork() takes milliseconds; a thread yielding in a loop for that long
    took the CPU the forking thread and the child needed (2 workers, a
    forking thread and its child on 2 cores). No lost wake-up: the epoch is
    read before forks_pending, and reopening lowers forks_pending before it
    bumps the epoch (all sequentially consistent), so a thread that saw the
    gate closed sleeps only on an epoch the reopening has yet to bump, and
    the kernel checks the epoch again as it queues the sleeper."""
    cdef uint64_t t0 = tc_now_ns() if TCALLOC_LOCK_STATS else 0
    cdef uint64_t spins = 0
    cdef int epoch
    while spins < TC_SPIN_LIMIT and _gate_load(&reg.forks_pending) != 0:
        tc_cpu_relax()
        spins += 1
    while True:
        epoch = _gate_epoch(&reg.gate_epoch)
        if _gate_load(&reg.forks_pending) == 0:
            break
        tc_futex_wait(&reg.gate_epoch, epoch)
    if TCALLOC_LOCK_STATS:
        tc_atomic_add_u64(&reg.gate_waits, 1)
        tc_atomic_add_u64(&reg.gate_spins, spins)
        tc_atomic_add_u64(&reg.gate_wait_ns, tc_now_ns() - t0)

cdef inline void threadcache_gate_exit(ThreadCacheRegistry *reg) noexcept nogil:
    _gate_add(&reg.movers, -1)

cdef void threadcache_gate_close(ThreadCacheRegistry *reg) noexcept nogil:
    """fork() prepare, before any lock: keep new moves out, wait for the
    ones under way to finish."""
    cdef uint64_t spins = 0
    _gate_add(&reg.forks_pending, 1)
    while _gate_load(&reg.movers) != 0:
        tc_spin_backoff(&spins, 64)

cdef void threadcache_gate_reopen(ThreadCacheRegistry *reg) noexcept nogil:
    """fork() parent, after the locks are released: wakes the threads kept
    out (one futex call per fork(), sleepers or not)."""
    _gate_add(&reg.forks_pending, -1)
    _gate_bump(&reg.gate_epoch)
    tc_futex_wake(&reg.gate_epoch, 0x7fffffff)

cdef void threadcache_gate_reset(ThreadCacheRegistry *reg) noexcept nogil:
    """fork() child: the other threads are gone, none is moving (one that
    was backing off the closed gate may have left its count behind)."""
    reg.movers = 0
    reg.forks_pending = 0

cdef inline uint64_t freelist_frees_snapshot(const FreeList *l) noexcept nogil:
    """l.frees read from any thread (the benign race: see FreeList)."""
    return tc_load_u64(&l.frees)

cdef inline uint64_t freelist_mallocs_snapshot(const FreeList *l) noexcept nogil:
    """l.mallocs read from any thread (the benign race: see FreeList)."""
    return tc_load_u64(&l.mallocs)

cdef inline uint32_t freelist_length(const FreeList *l) noexcept nogil:
    """Objects on the list, for its owner (see FreeList): exact."""
    return <uint32_t>(l.frees - l.mallocs + l.base)

cdef inline uint32_t freelist_max(const FreeList *l) noexcept nogil:
    """The list's limit, max_length (see FreeList): exact for the owner."""
    return <uint32_t>(<uint64_t>l.room + l.base)

cdef inline uint32_t freelist_length_snapshot(const FreeList *l) noexcept nogil:
    """The length as another thread sees it: exact once the owner is quiet.
    Read while the owner works, the words may come from different moments,
    off by the pops and pushes between the loads (mallocs is read first, so
    the figure errs high); never below 0."""
    cdef uint64_t m = freelist_mallocs_snapshot(l)
    cdef uint64_t f = freelist_frees_snapshot(l)
    cdef int32_t n = <int32_t>(f - m + tc_load_u64(&l.base))
    return <uint32_t>n if n > 0 else 0

cdef inline void _list_came(FreeList *l, uint32_t n) noexcept nogil:
    """A slow path put n objects on the list (a fetch)."""
    tc_store_u64(&l.base, l.base + n)
    tc_store_i64(&l.room, l.room - <int64_t>n)

cdef inline void _list_went(FreeList *l, uint32_t n) noexcept nogil:
    """A slow path took n objects off the list (a release)."""
    tc_store_u64(&l.base, l.base - n)
    tc_store_i64(&l.room, l.room + <int64_t>n)
    l.released += n

cdef inline uint32_t freelist_drawn(const FreeList *l) noexcept nogil:
    """Objects that have left the list, popped or released, as a clock that
    wraps at 2^32 (the owner's view)."""
    return <uint32_t>l.mallocs + l.released

cdef inline uint32_t freelist_lowater(const FreeList *l) noexcept nogil:
    """The list's low-water mark since the last scavenge, for its owner,
    derived so that pops need not track it: the length can have fallen at
    most by what was drawn from the list since then (scavenged_at - drawn),
    the slow paths recorded their own lows (a fetch: 0), and it is at most
    the length now. Exact for a list that was idle or only drained; for one
    pushed and popped in turns it is a lower bound, so a scavenge gives back
    no more than a tracked mark would have."""
    cdef uint32_t drawn = freelist_drawn(l) - l.drawn_at
    cdef uint32_t low = l.lowater
    cdef uint32_t bound = l.scavenged_at - drawn if drawn < l.scavenged_at else 0
    if bound < low:
        low = bound
    if freelist_length(l) < low:
        low = freelist_length(l)
    return low

cdef inline uint64_t threadcache_bytes(const ThreadCache *tc) noexcept nogil:
    """Bytes held in the lists (exact for the owner, or once it is quiet)."""
    cdef uint64_t total = 0
    cdef int cl
    for cl in range(1, tc.num_classes):
        total += <uint64_t>freelist_length_snapshot(&tc.lists[cl]) * tc.lists[cl].size
    return total

# ---- the fast path ------------------------------------------------------------
# Cost (x86-64, GCC -O3, inlined into the engine's malloc/free): pop is 6
# instructions (load head, test, load next, store it, addq on mallocs,
# clear the key), push 12 (load the head, the key and frees, subtract
# mallocs, compare-and-branch against room and on the block's second word,
# 3 stores, addq on frees). Neither keeps a
# length (see FreeList), counts bytes (see ThreadCache.capacity)
# nor tracks the low-water mark (see freelist_lowater) nor tests for a
# missing cache (the engine's empty cache fails both quietly).

cdef inline void *threadcache_try_pop(ThreadCache *tc, size_t cl) noexcept nogil:
    """An object from the list, or NULL when the list is empty."""
    return freelist_try_pop(&tc.lists[cl])

cdef inline void *freelist_try_pop(FreeList *l) noexcept nogil:
    """threadcache_try_pop on the list itself (the engine's malloc finds it
    by a byte offset into the cache: see g_list_offset)."""
    cdef void *p = l.head
    if TC_UNLIKELY(p == NULL):
        return NULL
    l.head = (<void **>p)[0]
    l.mallocs += 1                # plain: see FreeList
    if TCALLOC_FREE_KEY:
        (<void **>p)[1] = NULL    # drop the free-block key (see try_push)
    return p

cdef inline bint threadcache_try_push(ThreadCache *tc, size_t cl, void *p) noexcept nogil:
    """Push p; 0 (nothing done) when the list is full or p looks freed already."""
    return freelist_try_push(tc, &tc.lists[cl], p)

cdef inline bint freelist_try_push(ThreadCache *tc, FreeList *l, void *p) noexcept nogil:
    """threadcache_try_push on the list itself, one of tc's (the engine's
    free finds it by a byte offset into the cache)."""
    # Reads first, stores into the block last: a store through void** may
    # alias the cache's fields, and the compiler would reload them.
    cdef void *head = l.head
    cdef void *key = tc.free_key
    # Double free, cheaply (glibc's tcache does the same): a free block
    # carries the process's key in its second word and pop clears it, so a
    # block that already holds the key is probably on a free list: the slow
    # path looks. Every class is at least 16 bytes, so every block has a
    # second word.
    if TC_UNLIKELY(<int64_t>(l.frees - l.mallocs) >= l.room or (TCALLOC_FREE_KEY and (<void **>p)[1] == key)):
        return 0
    # The block is linked before it is published as the head (both void *
    # stores, so the compiler keeps their order): a fork child that finds
    # this thread frozen between them still walks an intact list.
    if TCALLOC_FREE_KEY:
        (<void **>p)[1] = key
    (<void **>p)[0] = head
    l.head = p
    _compiler_fence()
    l.frees += 1                  # plain: see FreeList
    return 1

cdef inline void *threadcache_pop(ThreadCache *tc, uint32_t cl) noexcept nogil:
    """An object of class cl, or NULL when even the central stores are out.
    tc is a real cache (not the engine's empty one)."""
    cdef void *p = threadcache_try_pop(tc, cl)
    if TC_UNLIKELY(p == NULL):
        return threadcache_fetch(tc, cl)
    return p

cdef inline void threadcache_push(ThreadCache *tc, uint32_t cl, void *p) noexcept nogil:
    """Free p into the cache. tc is a real cache (not the engine's empty one)."""
    if TC_UNLIKELY(not threadcache_try_push(tc, cl, p)):
        threadcache_push_slow(tc, cl, p)

# ---- implementation --------------------------------------------------------

cdef enum:
    kMaxDynamicFreeListLength = 1 << 20   # lists are bounded by the byte budget first
    kBigObject = 1024             # lists of bigger blocks hold at most ...
    kBigListBytes = 256 * 1024    # ... this many bytes, or
    kBigListObjects = 16          # ... this many blocks up to
    kMaxBigListBytes = 1024 * 1024  # ... this many bytes, or one batch (_list_limit)
    kMaxOverages = 3
    kScavengeEvery = 64           # refused growths between two scavenges
    kScavengePeriod = 256         # slow-path events (fetches + overflows) between scavenges
    kScavengeOnCommit = 256 << 10   # heap bytes committed afresh between growth scavenges
    kDrainOnCommit = 1 << 20      # ... and between two drains of the transfer caches
    kStealAmount = 64 * 1024
    kMinThreadCacheSize = 2 * kMaxSmallSize          # 512 KiB
    kDefaultPerThreadMax = 4 * 1024 * 1024
    kDefaultOverallMax = 32 * 1024 * 1024
    # A cache starts 1280 bytes into a 4 KiB page. The fast path stores
    # into the block (link, key) and then loads its list's head and length:
    # when the list's fields sit at the same offset within a page as the
    # block's first words (every block of a class whose size is a multiple
    # of 2 or 4 KiB sits at offset 0 or 2048), the CPU takes the load for
    # one that depends on the store ("4K aliasing") and waits. 1280 keeps
    # every such class's fields at least 224 bytes from those offsets (the
    # best of any 64-byte-aligned start; computed over the size classes).
    # Measured: malloc+free of 4 KiB and 32 KiB blocks 8 ns -> 5.2-5.4 ns
    # per pair, the 64 B pair unchanged.
    kCacheSkew = 1280

cdef int threadcache_registry_init(ThreadCacheRegistry *reg, const SizeMap *sizemap,
                                   TransferCache *transfer, MetaArena *arena) noexcept nogil:
    memset(reg, 0, sizeof(ThreadCacheRegistry))
    tc_spinlock_init(&reg.lock)
    reg.sizemap = sizemap
    reg.transfer = transfer
    reg.arena = arena
    reg.overall_max = kDefaultOverallMax
    reg.per_thread_max = kDefaultPerThreadMax
    reg.unclaimed = kDefaultOverallMax
    # Any value an application is unlikely to store: mixed from the
    # registry's address (ASLR) and the clock.
    reg.free_key = <void *>((<uintptr_t>reg * <uintptr_t>0x9E3779B97F4A7C15UL) ^ tc_now_ns() ^ 0x5A5A5A5A5A5A5A5AUL)
    return 0

# ---- the allocated-bytes meter ------------------------------------------------

cdef void threadcache_note_out(ThreadCacheRegistry *reg, uint64_t nbytes) noexcept nogil:
    """nbytes left the shared stores (nbytes 0: a large block was made):
    raise the peak if out_bytes + large blocks passed it. Lock-free."""
    cdef uint64_t cur = tc_atomic_add_u64(&reg.out_bytes, nbytes)
    if reg.large_bytes != NULL:
        cur += tc_load_u64(reg.large_bytes)
    tc_atomic_max_u64(&reg.peak_allocated, cur)

# ---- moving objects to the central stores ----------------------------------

cdef void _release(ThreadCache *tc, FreeList *l, uint32_t cl, uint32_t n) noexcept nogil:
    """Move n objects from the head of list l to the transfer cache, in
    batches of the class's batch size."""
    cdef void *head
    cdef void *tail
    cdef uint32_t k, i
    cdef TransferCache *t = &tc.reg.transfer[cl]
    if n > freelist_length(l):
        n = freelist_length(l)
    if n == 0:
        return
    threadcache_gate_enter(tc.reg)
    _list_went(l, n)
    tc_atomic_sub_u64(&tc.reg.out_bytes, <uint64_t>n * l.size)
    if freelist_length(l) < l.lowater:
        l.lowater = freelist_length(l)
    while n > 0:
        k = l.batch if n > l.batch else n
        head = l.head
        tail = head
        for i in range(k - 1):
            tail = (<void **>tail)[0]
        l.head = (<void **>tail)[0]
        (<void **>tail)[0] = NULL
        transfer_insert_range(t, head, tail, <int>k)
        n -= k
    threadcache_gate_exit(tc.reg)

# ---- list lengths and the byte budget -------------------------------------

cdef inline void _set_max_length(ThreadCache *tc, FreeList *l, uint32_t n) noexcept nogil:
    tc.capacity = tc.capacity - <uint64_t>freelist_max(l) * l.size + <uint64_t>n * l.size
    tc_store_i64(&l.room, l.room + (<int64_t>n - <int64_t>freelist_max(l)))

cdef void _increase_limit(ThreadCache *tc) noexcept nogil:
    """Grow this thread's budget by a step. From the unclaimed overall budget,
    up to the overall budget itself: a thread whose live set outgrows its
    cache (a single-threaded interpreter building and dropping 100k objects)
    gets what no other thread uses. Else, up to the per-thread maximum,
    stolen from another thread's budget (round robin). Takes reg.lock."""
    cdef ThreadCacheRegistry *reg = tc.reg
    cdef ThreadCache *other
    cdef int tries
    tc_spinlock_lock(&reg.lock)
    if reg.unclaimed >= kStealAmount and tc.max_size + kStealAmount <= reg.overall_max:
        tc_store_i64(&reg.unclaimed, reg.unclaimed - kStealAmount)
        tc_store_u64(&tc.max_size, tc.max_size + kStealAmount)
        tc.budget_grows += 1
    elif tc.max_size + kStealAmount <= reg.per_thread_max:
        for tries in range(10):
            other = reg.steal_cursor
            if other == NULL:
                other = reg.caches
            if other == NULL:
                break
            reg.steal_cursor = other.next
            if other != tc and tc_load_u64(&other.max_size) > kMinThreadCacheSize:
                # The other thread sees its smaller budget at its next
                # slow-path call (_fit_budget) and scavenges then.
                tc_store_u64(&other.max_size, other.max_size - kStealAmount)
                tc_store_u64(&tc.max_size, tc.max_size + kStealAmount)
                tc.budget_grows += 1
                break
    tc_spinlock_unlock(&reg.lock)

cdef void _scavenge(ThreadCache *tc, bint periodic) noexcept nogil:
    """Give back half of what each list did not use since the last scavenge
    (its low-water mark), and the capacity for it: at least a batch from a
    list longer than one. periodic (not over budget): a list being drained
    (shorter than after the last scavenge) keeps its objects one period
    more: they are the ones its next pops take, and giving them back would
    only fetch them again (an interpreter building new objects out of a
    list of freed ones). A list that stopped draining is scavenged the
    period after. Net shortening, not "at its low-water mark": the derived
    mark (freelist_lowater) falls below the length at the first push of the
    period, and a few frees among the pops (the collector's callbacks, say)
    then gave away half of a list that was being consumed."""
    cdef int cl
    cdef FreeList *l
    cdef uint32_t drop, newmax, low
    for cl in range(1, tc.num_classes):
        l = &tc.lists[cl]
        low = freelist_lowater(l)
        if low > 0 and not (periodic and freelist_length(l) < l.scavenged_at):
            drop = low // 2 if low > 1 else 1
            newmax = freelist_max(l) - drop if freelist_max(l) > drop else 0
            if freelist_max(l) > l.batch and newmax > freelist_max(l) - l.batch:
                newmax = freelist_max(l) - l.batch
            if freelist_length(l) > newmax + drop:
                drop = freelist_length(l) - newmax    # a list holds no more than its max_length
            _release(tc, l, cl, drop)
            _set_max_length(tc, l, newmax)
        l.lowater = freelist_length(l)
        l.scavenged_at = l.lowater
        l.drawn_at = freelist_drawn(l)
    tc_inc_owned(&tc.scavenges, 1)

cdef inline void _tick(ThreadCache *tc) noexcept nogil:
    """One slow-path event (a fetch or an overflow). Every kScavengePeriod of
    them, lists give back half of what they left unused since the last
    scavenge: a thread whose live set shrank, or moved to other size
    classes, stops parking objects that keep whole spans from going back to
    the page heap (where any class can reuse them)."""
    if ((tc.fetches + tc.overflows) & (kScavengePeriod - 1)) == 0:
        _scavenge(tc, 1)

cdef void threadcache_drain_transfers(ThreadCacheRegistry *reg) noexcept nogil:
    """Move every transfer cache's batches to the central lists, so spans
    they kept from emptying can go back to the page heap."""
    cdef uint32_t cl
    for cl in range(1, <uint32_t>reg.sizemap.num_classes):
        threadcache_gate_enter(reg)        # a drained batch is in flight (the fork gate)
        transfer_drain(&reg.transfer[cl])
        threadcache_gate_exit(reg)

cdef inline void _scavenge_on_growth(ThreadCache *tc) noexcept nogil:
    """The heap's resident size grew by kScavengeOnCommit since this cache
    last looked: give back what its lists left idle (a periodic scavenge),
    so that spans they kept from emptying go back to the page heap, where
    the next class that needs a span reuses them instead of the heap
    growing again. Without it a single-threaded interpreter parsing one
    file after another grew its heap by what its cache held of the last
    file's objects (pyflakes: 14 MiB cached at the peak, 29 MiB committed),
    where pymalloc reuses an empty pool for any class at once."""
    cdef ThreadCacheRegistry *reg = tc.reg
    cdef uint64_t c = tc_load_u64(reg.heap_commits)
    if c - tc.commits_seen < kScavengeOnCommit:
        return
    tc.commits_seen = c
    # Not threadcache_adopt_orphans: in a fork child the dead threads'
    # cached blocks sit on pages shared copy-on-write with the parent, and
    # taking them all back writes a link into every one of them, a page
    # copy each (the stress lab's fork workload: 740-830 faults and 6.4-7.1
    # ms of CPU per child, against 526-549 and 5.1-5.3 ms since; gperftools'
    # children 540-560 faults). A fetch takes them a chain at a time
    # instead (_take_orphaned), so only the pages the child uses are
    # copied; stats(), release_free_memory() and a failed allocation's
    # retry take back the rest.
    _scavenge(tc, 1)
    # The transfer caches' batches pin spans too; one thread per step
    # empties them (two that race both do: harmless, the second finds
    # little).
    if c - tc_load_u64(&reg.transfer_drained_at) >= kDrainOnCommit:
        tc_store_u64(&reg.transfer_drained_at, c)
        threadcache_drain_transfers(reg)

cdef void _fit_budget(ThreadCache *tc, FreeList *l) noexcept nogil:
    """Over budget (another thread took some of it): scavenge idle lists
    (a second pass finds every list idle that the first one did not see
    used: the low-water marks restart at each pass), then cut l if that
    was not enough."""
    cdef uint64_t over, cut
    cdef int i
    for i in range(4):
        _scavenge(tc, 0)
        if tc.capacity <= tc_load_u64(&tc.max_size):
            return
    if tc.capacity > tc_load_u64(&tc.max_size) and freelist_max(l) > 1:
        over = tc.capacity - tc_load_u64(&tc.max_size)
        cut = (over + l.size - 1) // l.size
        _set_max_length(tc, l, <uint32_t>(freelist_max(l) - cut) if cut < freelist_max(l) else 1)

cdef inline uint32_t _list_limit(const FreeList *l) noexcept nogil:
    """The most objects list l may hold. Blocks up to kBigObject (the
    interpreter's objects, whose live sets the cache follows) are bounded by
    the byte budget alone; bigger ones by kBigListBytes per list: a list of
    them parked in one thread is memory no other size can use (pyflakes
    ended a run with 7 MiB of free 9 KiB parser blocks in its cache). Lists
    of blocks over 16 KiB may still hold kBigListObjects, up to
    kMaxBigListBytes: at 256 KiB a list of 64 KiB blocks held 4, so a
    thread whose live count of them moved by more than that went to the
    transfer, central and page-heap locks every few operations (4.5 % of
    the stress lab's fork workload's operations), and a fork() under way
    stopped it at the fork gate once per fork. At least a batch."""
    cdef uint32_t n
    if l.size <= kBigObject:
        return kMaxDynamicFreeListLength
    n = kBigListBytes // l.size
    if n < kBigListObjects:
        n = kMaxBigListBytes // l.size
        if n > kBigListObjects:
            n = kBigListObjects
    return n if n > l.batch else l.batch

cdef void _grow_list(ThreadCache *tc, FreeList *l, uint32_t newmax) noexcept nogil:
    """Let list l hold newmax objects if the byte budget allows it: as it
    is, or after taking a step of budget, or after scavenging idle lists
    (at most every kScavengeEvery refusals: a hot list at the limit would
    otherwise pay a scan of every list on each refill). Else l stays as it is."""
    cdef uint64_t need = tc.capacity + <uint64_t>(newmax - freelist_max(l)) * l.size
    if need > tc_load_u64(&tc.max_size):
        if (tc_load_u64(&tc.max_size) + kStealAmount <= tc.reg.per_thread_max
                or tc_load_i64(&tc.reg.unclaimed) >= kStealAmount):
            _increase_limit(tc)     # takes reg.lock: only while a step can be had
        if need > tc_load_u64(&tc.max_size):
            tc.refusals += 1
            if tc.refusals % kScavengeEvery != 1:
                return
            _scavenge(tc, 0)
            if tc.capacity + <uint64_t>(newmax - freelist_max(l)) * l.size > tc_load_u64(&tc.max_size):
                return
    _set_max_length(tc, l, newmax)

# ---- the slow paths of pop and push ----------------------------------------

cdef inline void _install_chain(FreeList *l, void *head, uint32_t got) noexcept nogil:
    """Empty list l takes a NULL-terminated chain of `got` objects and
    hands out its first (which counts as a malloc)."""
    TC_ASSERT(got >= 1 and l.head == NULL, "_install_chain: no chain, or the list was not empty")
    TC_ASSERT(freelist_length(l) == 0, "_install_chain: an empty list's counters give it a length")
    l.head = (<void **>head)[0]
    if TCALLOC_FREE_KEY:
        (<void **>head)[1] = NULL
    _list_came(l, got)
    l.mallocs += 1
    l.lowater = 0                    # the list ran empty

cdef void *_take_orphaned(ThreadCache *tc, FreeList *l, uint32_t cl, uint32_t want) noexcept nogil:
    """In a fork child: fill empty list l with up to `want` objects of class
    cl from the cache of a thread that did not survive fork()
    (threadcache_orphan_others) and return one; NULL if none has any. The
    blocks sit on pages shared copy-on-write with the parent: taking a chain
    reads its links and writes one (the cut), so a page is copied when the
    child uses a block, not when it takes it. The whole move is under
    reg.lock, which fork()'s prepare takes, so a fork() in the child sees
    the chain on one list or the other. Each link is checked to be a block
    of the class, as threadcache_adopt_orphans does (a thread frozen in the
    fast path may have left its list's length off its links). The objects
    were out of the shared stores already: out_bytes does not change."""
    cdef ThreadCacheRegistry *reg = tc.reg
    cdef ThreadCache *o
    cdef FreeList *ol
    cdef void *first = NULL
    cdef void *last = NULL
    cdef uint32_t n = 0
    tc_spinlock_lock(&reg.lock)
    o = reg.orphans
    while o != NULL and n == 0:
        ol = &o.lists[cl]
        first = ol.head
        n = freelist_length(ol)
        n = _orphan_run(reg, cl, first, want if want < n else n, &last)
        if n:
            ol.head = (<void **>last)[0]
            _list_went(ol, n)        # the orphan's objects are conserved (see FreeList)
            (<void **>last)[0] = NULL
            _install_chain(l, first, n)
        o = o.next
    tc_spinlock_unlock(&reg.lock)
    return first if n else NULL

cdef void *threadcache_fetch(ThreadCache *tc, uint32_t cl) noexcept nogil:
    """List cl is empty: refill it with up to one batch, return one object."""
    cdef FreeList *l = &tc.lists[cl]
    cdef void *head
    cdef void *tail
    cdef uint32_t want, newmax
    cdef int got = 0
    if TC_UNLIKELY(tc_load_int(&tc.flush_requested)):
        threadcache_flush(tc)
    if TC_UNLIKELY(tc.capacity > tc_load_u64(&tc.max_size)):
        _fit_budget(tc, l)           # another thread took some of our budget
    want = freelist_max(l) if freelist_max(l) < l.batch else l.batch
    if want == 0:
        want = 1
    head = NULL
    if TC_UNLIKELY(tc_load_relaxed_ptr(<void **>&tc.reg.orphans) != NULL):
        head = _take_orphaned(tc, l, cl, want)     # a fork child: dead threads' blocks first
    if head == NULL:
        threadcache_gate_enter(tc.reg)
        got = transfer_remove_range(&tc.reg.transfer[cl], &head, &tail, <int>want, 1)
        if got == 0:
            threadcache_gate_exit(tc.reg)
            return NULL
        (<void **>tail)[0] = NULL
        _install_chain(l, head, <uint32_t>got)
        threadcache_gate_exit(tc.reg)
        threadcache_note_out(tc.reg, <uint64_t>got * l.size)
    tc_inc_owned(&tc.fetches, 1)
    _tick(tc)
    if tc.reg.heap_commits != NULL:
        _scavenge_on_growth(tc)
    # Slow start: grow by one per fetch up to a batch, then by a batch, up
    # to the class's limit (_list_limit).
    if freelist_max(l) < l.batch:
        newmax = freelist_max(l) + 1
    else:
        newmax = min(freelist_max(l) + l.batch, _list_limit(l))
        newmax -= newmax % l.batch
    if newmax < <uint32_t>got:
        # The carve ran on to a cache-line boundary: room for what it
        # brought, or the next free would send the line's other objects on
        # to another thread.
        newmax = <uint32_t>got
    if newmax > freelist_max(l):
        _grow_list(tc, l, newmax)
    return head

cdef void threadcache_push_slow(ThreadCache *tc, uint32_t cl, void *p) noexcept nogil:
    """try_push said no: the list is full, or p carries the free key."""
    cdef FreeList *l = &tc.lists[cl]
    cdef void *q
    cdef uint32_t i
    if TCALLOC_FREE_KEY and (<void **>p)[1] == tc.free_key:
        # On this thread's list: a double free. Elsewhere: the key was the
        # application's data, or the block is on another thread's list, which
        # the debug mode's checks find.
        q = l.head
        for i in range(freelist_length(l)):
            if q == p:
                tc_fatal_ptr("double free detected", p)
            q = (<void **>q)[0]
    (<void **>p)[0] = l.head
    if TCALLOC_FREE_KEY:
        (<void **>p)[1] = tc.free_key
    l.head = p
    tc_inc_owned(&l.frees, 1)
    if TC_UNLIKELY(tc_load_int(&tc.flush_requested)):
        threadcache_flush(tc)
        return
    if TC_UNLIKELY(tc.capacity > tc_load_u64(&tc.max_size)):
        _fit_budget(tc, l)           # another thread took some of our budget
    if freelist_length(l) > freelist_max(l):
        # Back to max_length, in whole batches (scavenging or the budget may
        # have cut the list to below its length).
        tc_inc_owned(&tc.overflows, 1)
        _release(tc, l, cl, l.batch if freelist_length(l) - freelist_max(l) <= l.batch
                 else freelist_length(l) - freelist_max(l))
        TC_ASSERT(freelist_length(l) <= freelist_max(l), "threadcache_push_slow: an overflow left the list past its limit")
        _tick(tc)
        if freelist_max(l) < l.batch:
            _grow_list(tc, l, freelist_max(l) + 1)
        elif freelist_max(l) > l.batch:
            # Repeatedly over: shrink, or this much memory stays parked here.
            l.overages += 1
            if l.overages > kMaxOverages:
                _set_max_length(tc, l, freelist_max(l) - l.batch)
                l.overages = 0

cdef void threadcache_flush(ThreadCache *tc) noexcept nogil:
    """Give every cached object back (release_free_memory, thread exit)."""
    cdef int cl
    tc_store_int(&tc.flush_requested, 0)
    for cl in range(1, tc.num_classes):
        _release(tc, &tc.lists[cl], cl, freelist_length(&tc.lists[cl]))
        tc.lists[cl].lowater = 0

# ---- lifetime ------------------------------------------------------------

cdef ThreadCache *threadcache_create(ThreadCacheRegistry *reg) noexcept nogil:
    """A cache for the calling thread, linked into the registry; NULL when
    metadata memory is out (the caller then allocates without a cache)."""
    cdef ThreadCache *tc
    cdef int cl
    tc_spinlock_lock(&reg.lock)
    tc = reg.free_caches
    if tc != NULL:
        reg.free_caches = tc.next
    else:
        tc = <ThreadCache *>arena_alloc(reg.arena, sizeof(ThreadCache) + kCacheSkew, 4096)
        if tc != NULL:
            tc = <ThreadCache *>(<char *>tc + kCacheSkew)
        if tc == NULL:
            tc_spinlock_unlock(&reg.lock)
            return NULL
        reg.structs += 1
    memset(tc, 0, sizeof(ThreadCache))
    tc.reg = reg
    if reg.heap_commits != NULL:
        tc.commits_seen = tc_load_u64(reg.heap_commits)
    tc.free_key = reg.free_key
    tc.num_classes = reg.sizemap.num_classes
    for cl in range(1, tc.num_classes):
        tc.lists[cl].size = reg.sizemap.class_to_size[cl]
        tc.lists[cl].batch = reg.sizemap.num_objects_to_move[cl]
        # room and base 0 (the memset): the list may hold nothing yet; it
        # grows on the first fetch or overflow
    # Start with one step of budget if the overall budget has it, else the
    # minimum (the overall budget then runs a deficit, as in gperftools).
    if reg.unclaimed >= kStealAmount:
        tc.max_size = kStealAmount
        tc_store_i64(&reg.unclaimed, reg.unclaimed - kStealAmount)
    else:
        tc.max_size = kMinThreadCacheSize
        tc_store_i64(&reg.unclaimed, reg.unclaimed - kMinThreadCacheSize)
    tc.prev = NULL
    tc.next = reg.caches
    if reg.caches != NULL:
        reg.caches.prev = tc
    reg.caches = tc
    reg.num_caches += 1
    reg.caches_created += 1
    tc_spinlock_unlock(&reg.lock)
    return tc

cdef void threadcache_destroy(ThreadCache *tc) noexcept nogil:
    """Thread exit: flush everything, fold the counters into the registry,
    return the budget, recycle the struct. Takes reg.lock after the flush
    (never across a move: see the fork gate)."""
    cdef ThreadCacheRegistry *reg = tc.reg
    cdef int cl
    threadcache_flush(tc)
    tc_spinlock_lock(&reg.lock)
    for cl in range(1, tc.num_classes):
        tc_atomic_add_u64(&reg.retired_mallocs[cl], freelist_mallocs_snapshot(&tc.lists[cl]))
        tc_atomic_add_u64(&reg.retired_frees[cl], tc.lists[cl].frees)
    tc_store_i64(&reg.unclaimed, reg.unclaimed + <int64_t>tc.max_size)
    if tc.prev != NULL:
        tc.prev.next = tc.next
    else:
        reg.caches = tc.next
    if tc.next != NULL:
        tc.next.prev = tc.prev
    if reg.steal_cursor == tc:
        reg.steal_cursor = tc.next
    reg.num_caches -= 1
    tc.next = reg.free_caches
    reg.free_caches = tc
    tc_spinlock_unlock(&reg.lock)

cdef bint _is_block_of(ThreadCacheRegistry *reg, uint32_t cl, const void *q) noexcept nogil:
    """Is q the start of a carved block of class cl in an in-use span?"""
    cdef Span *s = pagemap_span(&reg.transfer[cl].central.heap.pagemap, <uintptr_t>q >> kPageShift)
    return (s != NULL and s.location == SPAN_IN_USE and s.sizeclass == cl and <uintptr_t>q < s.bump
            and (<uintptr_t>q - span_addr(s)) % reg.sizemap.class_to_size[cl] == 0)

cdef uint32_t _orphan_run(ThreadCacheRegistry *reg, uint32_t cl, void *q, uint32_t limit,
                         void **last) noexcept nogil:
    """How many links from q on, at most limit, are blocks of class cl: an
    orphaned list (a thread frozen in the fast path may have left its
    length off its links) is followed only as far as it holds blocks.
    *last: the last of them (unchanged when none)."""
    cdef uint32_t n = 0
    while n < limit and q != NULL and _is_block_of(reg, cl, q):
        last[0] = q
        n += 1
        q = (<void **>q)[0]
    return n

cdef void threadcache_orphan_others(ThreadCacheRegistry *reg, ThreadCache *keep) noexcept nogil:
    """In a fork child (one thread, locks reset, gate open): the caches of
    the threads that did not survive fork() leave the registry's list for
    its orphans, and their budgets go back to the overall budget; `keep`
    (the forking thread's, or NULL) stays. O(threads): what they cached is
    handed out by the child's fetches (_take_orphaned), and taken back by
    threadcache_adopt_orphans when something needs all of it (stats(),
    release_free_memory(), a failed allocation), so a child that does
    a little and exits (or execs) does not walk megabytes of cached lists,
    and the parent, whose every first write to a page faults while the
    child lives, is not kept waiting (the stress lab's fork workload: 8 %
    more parent throughput)."""
    cdef ThreadCache *tc = reg.caches
    cdef ThreadCache *nxt
    reg.caches = NULL
    reg.steal_cursor = NULL
    while tc != NULL:
        nxt = tc.next
        if tc == keep:
            tc.prev = NULL
            tc.next = reg.caches
            reg.caches = tc
        else:
            tc_store_i64(&reg.unclaimed, reg.unclaimed + <int64_t>tc.max_size)
            tc_store_u64(&tc.max_size, 0)
            tc.next = reg.orphans
            tc_store_relaxed_ptr(<void **>&reg.orphans, <void *>tc)
            reg.num_caches -= 1
        tc = nxt

cdef void threadcache_adopt_orphans(ThreadCacheRegistry *reg) noexcept nogil:
    """Take back what the orphans of a fork (threadcache_orphan_others)
    cached, as if their threads had exited, and recycle their structs.
    Called with no lock held; cheap when there are none.

    The gate kept every move out of fork(), so `base` is exact; a thread
    may have been frozen in the fast path, though, with its counters not
    yet matching its links (a pop or a push half done). Each list is
    therefore walked to its end and `mallocs` set so that its length is
    what was found; objects in use stay exact because they depend on
    mallocs - frees only, which the walk fixes. A walk stops at a link that
    is no block of the class (never expected: push links before it
    publishes); the rest stays counted as in use rather than risk freeing
    live memory."""
    cdef ThreadCache *tc
    cdef FreeList *l
    cdef void *last
    cdef uint32_t n
    cdef int cl
    while tc_load_relaxed_ptr(<void **>&reg.orphans) != NULL:
        # One at a time back onto the registry's list, which
        # threadcache_destroy unlinks from (its budget is 0: nobody steals
        # from it meanwhile).
        tc_spinlock_lock(&reg.lock)
        tc = reg.orphans
        if tc == NULL:
            tc_spinlock_unlock(&reg.lock)
            return
        tc_store_relaxed_ptr(<void **>&reg.orphans, <void *>tc.next)
        tc.prev = NULL
        tc.next = reg.caches
        if reg.caches != NULL:
            reg.caches.prev = tc
        reg.caches = tc
        reg.num_caches += 1
        tc_spinlock_unlock(&reg.lock)
        for cl in range(1, tc.num_classes):
            l = &tc.lists[cl]
            n = _orphan_run(reg, cl, l.head, freelist_length(l) + 1, &last)
            l.mallocs += <uint64_t>(<int64_t>freelist_length(l) - <int64_t>n)   # the length becomes n
        threadcache_destroy(tc)

cdef void threadcache_request_flush_all(ThreadCacheRegistry *reg) noexcept nogil:
    """Ask every thread to flush its cache at its next slow-path call."""
    cdef ThreadCache *tc
    tc_spinlock_lock(&reg.lock)
    tc = reg.caches
    while tc != NULL:
        tc_store_int(&tc.flush_requested, 1)
        tc = tc.next
    tc_spinlock_unlock(&reg.lock)

cdef void threadcache_set_overall_max(ThreadCacheRegistry *reg, uint64_t nbytes) noexcept nogil:
    tc_spinlock_lock(&reg.lock)
    tc_store_i64(&reg.unclaimed, reg.unclaimed + <int64_t>nbytes - <int64_t>reg.overall_max)
    reg.overall_max = nbytes
    tc_spinlock_unlock(&reg.lock)

# ---- without a cache (thread exit in progress, metadata exhausted) --------

cdef void *threadcache_alloc_uncached(ThreadCacheRegistry *reg, uint32_t cl) noexcept nogil:
    cdef void *head
    cdef void *tail
    threadcache_gate_enter(reg)
    if transfer_remove_range(&reg.transfer[cl], &head, &tail, 1, 0) == 0:
        threadcache_gate_exit(reg)
        return NULL
    tc_atomic_add_u64(&reg.retired_mallocs[cl], 1)
    threadcache_gate_exit(reg)
    if TCALLOC_FREE_KEY:
        (<void **>head)[1] = NULL
    threadcache_note_out(reg, reg.sizemap.class_to_size[cl])
    return head

cdef void threadcache_free_uncached(ThreadCacheRegistry *reg, uint32_t cl, void *p) noexcept nogil:
    (<void **>p)[0] = NULL
    if TCALLOC_FREE_KEY:
        (<void **>p)[1] = reg.free_key
    threadcache_gate_enter(reg)
    transfer_insert_range(&reg.transfer[cl], p, p, 1)
    tc_atomic_add_u64(&reg.retired_frees[cl], 1)
    threadcache_gate_exit(reg)
    tc_atomic_sub_u64(&reg.out_bytes, reg.sizemap.class_to_size[cl])

# ---- address order after a burst of frees ------------------------------------
# The interpreter's garbage collector frees cyclic garbage in bursts, in an
# order that follows references, not addresses; pushed in that order, the
# next allocations pop the blocks scattered over many spans, and the trees
# built from them spread over pages (pyflakes over the stdlib: an AST of 12 k
# nodes on 670 pages instead of pymalloc's 112), which the collector's next
# traversal pays for. hook.pxi calls this after each collection.

cdef void threadcache_sort_addrs(uintptr_t *a, uintptr_t *tmp, uint32_t n) noexcept nogil:
    """Sort a[0:n] in ascending order; tmp is scratch for n entries. A radix
    sort, 8 bits a pass, over only the bits in which the addresses differ
    (2-3 passes for blocks within a few MiB, more for a list that spans
    regions of the heap far apart; each pass counts, then scatters, every
    entry): about 120 instructions per entry under the interpreter hook
    (deltablue: 4-5 passes on average), where libc's qsort, calling back per
    comparison, spent about 400. A run already in order costs the one pass
    that checks it; one in reverse (blocks freed in address order and
    pushed, so the newest is on top) is reversed."""
    cdef uint32_t count[256]
    cdef uint32_t i, j, sum, c
    cdef uintptr_t x, diff = 0
    cdef uintptr_t *src = a
    cdef uintptr_t *dst = tmp
    cdef uintptr_t *swap
    cdef int shift, top
    cdef bint up = 1, down = 1
    if n < 2:
        return
    for i in range(1, n):
        if a[i] < a[i - 1]:
            up = 0
        elif a[i] > a[i - 1]:
            down = 0
        diff |= a[i] ^ a[0]
    if up:
        return
    if down:
        for i in range(n // 2):
            x = a[i]
            a[i] = a[n - 1 - i]
            a[n - 1 - i] = x
        return
    if n <= 32:
        for i in range(1, n):
            x = a[i]
            j = i
            while j > 0 and a[j - 1] > x:
                a[j] = a[j - 1]
                j -= 1
            a[j] = x
        return
    # diff != 0 here: the run is neither ascending nor descending.
    shift = tc_ctz64(diff)
    top = 64 - tc_clz64(diff)
    while shift < top:
        memset(count, 0, sizeof(count))
        for i in range(n):
            count[(src[i] >> shift) & 255] += 1
        sum = 0
        for i in range(256):
            c = count[i]
            count[i] = sum
            sum += c
        for i in range(n):
            x = src[i]
            j = (x >> shift) & 255
            dst[count[j]] = x
            count[j] += 1
        swap = src
        src = dst
        dst = swap
        shift += 8
    if src != a:
        memcpy(a, src, <size_t>n * sizeof(uintptr_t))

cdef inline uint32_t _grown(const FreeList *l, uint32_t before) noexcept nogil:
    """How much list l grew since its length was `before` (0 if it shrank)."""
    cdef uint32_t n = freelist_length(l)
    return n - before if n > before else 0

cdef uint32_t threadcache_most_grown(const ThreadCache *tc, const uint32_t *before) noexcept nogil:
    """The most any list grew since `before` (threadcache_sort_tops' runs
    are at most this long: the size of the buffer it needs)."""
    cdef uint32_t most = 0, d
    cdef int cl
    for cl in range(1, tc.num_classes):
        d = _grown(&tc.lists[cl], before[cl])
        if d > most:
            most = d
    return most

cdef uint64_t threadcache_sort_tops(ThreadCache *tc, const uint32_t *before, void **buf,
                                    uint32_t cap, uint32_t min_run) noexcept nogil:
    """For each list that grew by min_run or more since `before` (its
    lengths then), put the objects on top of it (as many as it grew by, at
    most cap) in address order, lowest first, so pops walk them upwards.
    buf holds 2 * cap pointers (the second half: the sort's scratch).
    Owner thread only; a list is relinked inside the fork gate, so a fork
    child never sees one half relinked. Returns the objects reordered."""
    cdef int cl
    cdef uint32_t d, i
    cdef FreeList *l
    cdef void *p
    cdef uint64_t done = 0
    for cl in range(1, tc.num_classes):
        l = &tc.lists[cl]
        d = _grown(l, before[cl])
        if d < min_run:
            continue
        if d > cap:
            d = cap
        threadcache_gate_enter(tc.reg)
        p = l.head
        for i in range(d):
            buf[i] = p
            p = (<void **>p)[0]
        threadcache_sort_addrs(<uintptr_t *>buf, <uintptr_t *>(buf + cap), d)
        for i in range(d - 1):
            (<void **>buf[i])[0] = buf[i + 1]
        (<void **>buf[d - 1])[0] = p
        l.head = buf[0]
        threadcache_gate_exit(tc.reg)
        done += d
    return done
