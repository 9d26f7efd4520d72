"""Native stress workloads for the stress lab (``python -m stress``).

Every workload runs on native pthreads with the GIL released and touches no
Python object while its threads run. The allocator under test is a table of
libc-signature entry points (``tc_allocator_t``): the C library's malloc
("system"; inside a child process started with LD_PRELOAD that *is*
gperftools tcmalloc, jemalloc or mimalloc), tcalloc through its C-API capsule
("tcalloc"), or any table C code hands over in a "tcalloc.stress.allocator"
capsule (the tests use one to hand in a deliberately broken allocator and
prove that the verification catches it).

Verification: right after every allocation the whole block is filled with a
pattern derived from a key that is unique to that allocation (owner thread,
sequence number, run seed, block address and size), 64-bit words plus the
tail bytes, so every byte is covered. The whole block is checked before it is
freed or reallocated (cache-thrash and cache-scratch, which rewrite a block
over and over, check it as they rewrite it too), and after realloc the
copied prefix is checked against the old key. A block handed to two owners
is rewritten by the second with a different key, so the first owner's next
check fails: it shows as a corrupt block. Only owners whose uses do not
overlap (one's last check before the other's first fill) leave nothing to
see.

Sections: declarations - helpers (sizes, sleep) - block operations -
workloads - driver - Python API. The PRNG, the block pattern, the allocator
table and the pthread declarations are the shared harness (harness.pxi).
"""

include "harness.pxi"
from libc.stdint cimport int64_t, uint64_t, uintptr_t
from libc.string cimport memcpy, memset
from libc.stdlib cimport malloc as libc_malloc, free as libc_free, calloc as libc_calloc
from posix.resource cimport rusage, getrusage
from posix.unistd cimport fork, _exit
from posix.wait cimport waitpid, WNOHANG, WIFEXITED, WEXITSTATUS
from posix.types cimport pid_t

# ---------------------------------------------------------------------------
# Declarations
# ---------------------------------------------------------------------------

cdef extern from "<sched.h>" nogil:
    int sched_yield()

cdef extern from "<signal.h>" nogil:
    enum: SIGKILL
    int kill(pid_t pid, int sig)

cdef extern from "<malloc.h>" nogil:
    size_t malloc_usable_size(void *ptr)

cdef extern from "<sys/resource.h>" nogil:
    enum: RUSAGE_THREAD

cdef extern from "<time.h>" nogil:
    cdef struct timespec:
        long tv_sec
        long tv_nsec
    int nanosleep(const timespec *req, timespec *rem)

cdef extern from "tc_platform.h" nogil:
    void tc_spin_backoff(uint64_t *spins, uint64_t limit)
    ctypedef struct tc_spinlock_t:
        pass
    void tc_spinlock_init(tc_spinlock_t *l)
    void tc_spinlock_lock(tc_spinlock_t *l)
    void tc_spinlock_unlock(tc_spinlock_t *l)
    uint64_t tc_now_ns()
    uint64_t tc_load_u64(const uint64_t *p)
    uint64_t tc_atomic_add_u64(uint64_t *p, uint64_t v)
    int tc_load_int(const int *p)
    void tc_store_int(int *p, int v)
    void tc_cpu_relax()
    int tc_clz64(uint64_t x)
    int tc_mul_overflow(size_t a, size_t b, size_t *out)

# tc_platform.h has relaxed counters and acquire/release for pointers; the
# rings and the done-counters need acquire/release on integers and an atomic
# exchange of pointers, which it does not offer.
cdef extern from *:
    """
    static inline uint64_t wl_load_acq(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void wl_store_rel(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline uint64_t wl_add_rel(uint64_t *p, uint64_t v) { return __atomic_add_fetch(p, v, __ATOMIC_ACQ_REL); }
    static inline int wl_load_acq_int(const int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void wl_store_rel_int(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline void *wl_xchg_ptr(void **p, void *v) { return __atomic_exchange_n(p, v, __ATOMIC_ACQ_REL); }
    """
    uint64_t wl_load_acq(const uint64_t *p) nogil
    void wl_store_rel(uint64_t *p, uint64_t v) nogil
    uint64_t wl_add_rel(uint64_t *p, uint64_t v) nogil
    int wl_load_acq_int(const int *p) nogil
    void wl_store_rel_int(int *p, int v) nogil
    void *wl_xchg_ptr(void **p, void *v) nogil

cdef enum:
    WL_MAX_THREADS = 256
    WL_PROGRESS_EVERY = 256     # ops between updates of the shared progress counter,
    WL_PROGRESS_BYTES = 16 << 20  # or bytes: 256 ops of 1 GiB blocks take minutes
    WL_CLOCK_BYTES = 1 << 20    # duration mode: bytes written between clock reads, at most
    WL_LIVE_SLACK = 1 << 20     # bytes a thread's live-meter change may wait before it is added
    WL_BATCH = 32               # xmalloc: blocks per batch handed producer -> consumer
    WL_RING = 1024              # prodcons: ring capacity (power of two)
    WL_CHILD_BLOCKS = 64        # fork: blocks the child allocates per pass
    WL_INHERITED = 16           # fork: blocks the parent holds across each fork

cdef enum WlKind:
    K_LARSON, K_XMALLOC, K_PRODCONS, K_THRASH, K_SCRATCH, K_CHURN, K_MIXED, K_FORK

cdef enum WlRole:
    R_WORKER, R_PRODUCER, R_CONSUMER

ctypedef struct wl_block:
    char *p
    size_t n
    uint64_t key

# Per-thread counters, written only by their thread (read after join).
ctypedef struct wl_counts:
    uint64_t ops          # malloc/calloc/realloc calls that produced a block
    uint64_t allocs       # blocks that came into existence (malloc, calloc)
    uint64_t frees
    uint64_t reallocs
    uint64_t bytes
    uint64_t corrupt      # blocks whose contents were not what was written
    uint64_t misaligned   # < 8-byte aligned, or < 16 for sizes >= 16
    uint64_t failed       # NULL returns
    uint64_t cpu_user_ns
    uint64_t cpu_sys_ns
    uint64_t nvcsw
    uint64_t nivcsw
    uint64_t threads      # pthreads that ran as this worker (churn: one per round)

ctypedef struct wl_batch:
    int n
    wl_block b[WL_BATCH]

# Bounded queue of batch pointers under a spinlock (xmalloc).
ctypedef struct wl_queue:
    tc_spinlock_t lock
    wl_batch **items
    int cap
    int head
    int count

# Single-producer single-consumer ring; head and tail on their own lines.
ctypedef struct wl_ring:
    uint64_t tail
    char _pad1[56]
    uint64_t head
    char _pad2[56]
    uint64_t done
    char _pad3[56]
    wl_block slots[WL_RING]

cdef struct wl_shared
cdef struct wl_worker:
    wl_shared *sh
    int idx
    int role
    int expired           # duration mode: deadline seen
    uint64_t rng
    uint64_t seq
    uint64_t tick
    uint64_t unclocked    # bytes written since the clock was last read (duration mode)
    uint64_t unreported   # ops not yet added to the progress counter
    uint64_t unreported_bytes  # and the bytes they allocated
    int64_t live_delta    # bytes allocated minus freed, not yet added to the live meter
    wl_counts c
    wl_block *local       # this worker's slot array (larson, mixed, churn, fork)
    pthread_t tid
    char _pad[64]         # counters of neighbouring workers on other lines

cdef struct wl_shared:
    int kind
    int nthreads
    tc_allocator_t a
    uint64_t ops                # per worker; 0 = duration mode
    uint64_t duration_ns
    uint64_t deadline_ns
    size_t min_size
    size_t max_size
    uint64_t seed
    int slots
    int writes
    int survivors
    uint64_t round_ops
    int go                      # start gate: 0 wait, 1 run, -1 abort
    int fork_done
    uint64_t *progress
    uint64_t *live              # bytes the workers hold (the progress meter's; may be NULL)
    wl_worker **w
    wl_worker *driver           # the calling thread's own counters
    # larson: arrays exchanged between threads
    wl_block **pool
    # xmalloc
    wl_queue full
    wl_queue empty
    wl_batch *batches
    int nbatches
    uint64_t producers
    uint64_t producers_done
    # prodcons
    wl_ring **rings
    # scratch: one object per thread; churn: survivors of the previous round
    wl_block *objs
    int nobjs
    # fork
    uint64_t forks_wanted
    uint64_t fork_interval_ns
    uint64_t child_timeout_ns
    uint64_t forks
    uint64_t child_failures
    uint64_t child_hung
    uint64_t fork_ns              # the driver's time inside fork(), summed
    uint64_t child_ns             # fork() to the child reaped, summed over reaped children
    uint64_t children_reaped      # children that exited (failed ones too) and were reaped
    uint64_t rounds
    uint64_t elapsed_ns

# ---------------------------------------------------------------------------
# Helpers: sizes, sleep
# ---------------------------------------------------------------------------

cdef inline size_t wl_size(uint64_t *rng, size_t lo, size_t hi) noexcept nogil:
    # Log-uniform: a power-of-two band first, then a size inside it, so
    # 8 B .. 4 MiB gives as many small blocks as large ones per band.
    cdef uint64_t r
    cdef int lb, hb, k
    cdef size_t base, s
    if lo >= hi:
        return lo
    r = h_rand(rng)
    lb = 63 - tc_clz64(lo)
    hb = 63 - tc_clz64(hi)
    k = lb + <int>((r >> 32) % <uint64_t>(hb - lb + 1))
    base = (<size_t>1) << k
    s = base + <size_t>((r & 0xffffffffULL) % base)
    if s < lo:
        s = lo
    if s > hi:
        s = hi
    return s

cdef void wl_sleep_ns(uint64_t ns) noexcept nogil:
    cdef timespec ts
    ts.tv_sec = <long>(ns // 1000000000ULL)
    ts.tv_nsec = <long>(ns % 1000000000ULL)
    nanosleep(&ts, NULL)

# ---------------------------------------------------------------------------
# Block operations: every allocation is filled, every free is checked.
# ---------------------------------------------------------------------------

cdef inline void wl_count_op(wl_worker *w, size_t n) noexcept nogil:
    w.c.ops += 1
    w.c.bytes += n
    w.unreported += 1
    w.unreported_bytes += n
    w.unclocked += n
    if w.unreported >= WL_PROGRESS_EVERY or w.unreported_bytes >= WL_PROGRESS_BYTES:
        if w.sh.progress != NULL:
            tc_atomic_add_u64(w.sh.progress, w.unreported)
        w.unreported = 0
        w.unreported_bytes = 0

cdef inline void wl_note_live(wl_worker *w, int64_t d) noexcept nogil:
    # The live meter: what the workload holds, read beside RSS to tell the
    # allocator's overhead from the workload's own peak. Batched per thread
    # (a shared add per op would contend in the small-block workloads) and
    # flushed at WL_LIVE_SLACK bytes, so it is exact to that per thread.
    w.live_delta += d
    if w.live_delta >= WL_LIVE_SLACK or w.live_delta <= -WL_LIVE_SLACK:
        wl_flush_live(w)

cdef inline void wl_flush_live(wl_worker *w) noexcept nogil:
    """Add what w holds beyond the meter's last reading to it (a worker at its
    end, the driver after setting up or tearing down)."""
    if w.live_delta and w.sh.live != NULL:
        tc_atomic_add_u64(w.sh.live, <uint64_t>w.live_delta)
    w.live_delta = 0

cdef inline uint64_t wl_new_key(wl_worker *w, const void *p, size_t n) noexcept nogil:
    # (thread, sequence) is unique within the run; mixing in the seed,
    # address and size makes the pattern differ between any two blocks.
    cdef uint64_t tag = ((<uint64_t>(w.idx + 1)) << 48) ^ w.seq
    w.seq += 1
    return h_mix(tag ^ h_mix(w.sh.seed)) ^ h_mix((<uint64_t><uintptr_t>p) ^ ((<uint64_t>n) << 40))

cdef inline void wl_check_align(wl_worker *w, const void *p, size_t n) noexcept nogil:
    cdef uintptr_t a = <uintptr_t>p
    if (a & 7) or (n >= 16 and (a & 15)):
        w.c.misaligned += 1

cdef bint wl_alloc(wl_worker *w, wl_block *b, size_t n, bint zeroed) noexcept nogil:
    cdef char *p
    if zeroed:
        p = <char *>w.sh.a.calloc(1, n)
    else:
        p = <char *>w.sh.a.malloc(n)
    if p == NULL:
        w.c.failed += 1
        b.p = NULL
        return False
    wl_check_align(w, p, n)
    if zeroed and not h_is_zero(p, n):
        w.c.corrupt += 1
    wl_note_live(w, <int64_t>n)        # before the fill: RSS never leads the meter
    b.p = p
    b.n = n
    b.key = wl_new_key(w, p, n)
    h_fill(p, n, b.key)
    w.c.allocs += 1
    wl_count_op(w, n)
    return True

cdef void wl_release(wl_worker *w, wl_block *b) noexcept nogil:
    if b.p == NULL:
        return
    if not h_check(b.p, b.n, b.key):
        w.c.corrupt += 1
    wl_free_block(w, b)

cdef void wl_free_block(wl_worker *w, wl_block *b) noexcept nogil:
    # Free without the check: for a block already checked (and counted).
    w.sh.a.free(b.p)
    b.p = NULL
    w.c.frees += 1
    wl_note_live(w, -<int64_t>b.n)

cdef void wl_resize(wl_worker *w, wl_block *b, size_t m) noexcept nogil:
    cdef char *q
    cdef size_t keep = b.n if b.n < m else m
    if not h_check(b.p, b.n, b.key):
        w.c.corrupt += 1
    q = <char *>w.sh.a.realloc(b.p, m)
    if q == NULL:
        w.c.failed += 1         # the old block stays valid
        return
    wl_check_align(w, q, m)
    if not h_check(q, keep, b.key):
        w.c.corrupt += 1        # the copied prefix must be the old contents
    wl_note_live(w, <int64_t>m - <int64_t>b.n)
    b.p = q
    b.n = m
    b.key = wl_new_key(w, q, m)
    h_fill(q, m, b.key)
    w.c.reallocs += 1
    wl_count_op(w, m)

cdef inline bint wl_out_of_time(wl_worker *w) noexcept nogil:
    # Duration mode: read the clock once w.unclocked says enough was written.
    if w.unclocked >= WL_CLOCK_BYTES:
        w.unclocked = 0
        if tc_now_ns() >= w.sh.deadline_ns:
            w.expired = 1
    return w.expired

cdef inline bint wl_more(wl_worker *w) noexcept nogil:
    # Whether this worker should do another operation. The clock is read
    # every 16 operations, or sooner by bytes written: 16 operations on
    # blocks of a GiB take minutes, past the hang watchdog's limit.
    cdef wl_shared *sh = w.sh
    if sh.ops:
        return w.c.ops < sh.ops
    if w.expired:
        return False
    w.tick += 1
    if (w.tick & 15) == 0:
        w.unclocked = WL_CLOCK_BYTES
    return not wl_out_of_time(w)

cdef void wl_release_array(wl_worker *w, wl_block *arr, int n) noexcept nogil:
    cdef int i
    if arr == NULL:
        return
    for i in range(n):
        wl_release(w, &arr[i])

# ---------------------------------------------------------------------------
# Workloads. Each runs in one worker thread.
# ---------------------------------------------------------------------------

cdef void larson_worker(wl_worker *w) noexcept nogil:
    # Replace random slots; every `slots` replacements swap the whole array
    # with one parked in the shared pool, so the blocks in hand were mostly
    # allocated by other threads and most frees are cross-thread.
    cdef wl_shared *sh = w.sh
    cdef wl_block *arr = w.local
    cdef uint64_t since_swap = 0, r
    cdef wl_block *b
    while wl_more(w):
        r = h_rand(&w.rng)
        b = &arr[r % <uint64_t>sh.slots]
        wl_release(w, b)
        wl_alloc(w, b, wl_size(&w.rng, sh.min_size, sh.max_size), False)
        since_swap += 1
        if since_swap >= <uint64_t>sh.slots:
            since_swap = 0
            arr = <wl_block *>wl_xchg_ptr(<void **>&sh.pool[(r >> 32) % <uint64_t>sh.nthreads], arr)
    w.local = arr

cdef bint wl_queue_push(wl_queue *q, wl_batch *b) noexcept nogil:
    cdef bint ok = False
    tc_spinlock_lock(&q.lock)
    if q.count < q.cap:
        q.items[(q.head + q.count) % q.cap] = b
        q.count += 1
        ok = True
    tc_spinlock_unlock(&q.lock)
    return ok

cdef wl_batch *wl_queue_pop(wl_queue *q) noexcept nogil:
    cdef wl_batch *b = NULL
    tc_spinlock_lock(&q.lock)
    if q.count:
        b = q.items[q.head]
        q.head = (q.head + 1) % q.cap
        q.count -= 1
    tc_spinlock_unlock(&q.lock)
    return b

cdef void xmalloc_producer(wl_worker *w) noexcept nogil:
    # Only allocates; batches go to whichever consumer takes them.
    cdef wl_shared *sh = w.sh
    cdef wl_batch *b
    cdef bint running = True
    cdef uint64_t spins = 0
    while running:
        b = wl_queue_pop(&sh.empty)
        while b == NULL:        # consumers always hand batches back
            tc_spin_backoff(&spins, 64)
            b = wl_queue_pop(&sh.empty)
        b.n = 0
        while b.n < WL_BATCH:
            if not wl_more(w):
                running = False
                break
            if wl_alloc(w, &b.b[b.n], wl_size(&w.rng, sh.min_size, sh.max_size), False):
                b.n += 1
        while not wl_queue_push(&sh.full, b):   # cannot stay full: nbatches == cap
            tc_spin_backoff(&spins, 64)
    wl_add_rel(&sh.producers_done, 1)

cdef void xmalloc_consumer(wl_worker *w) noexcept nogil:
    # Only frees blocks other threads allocated.
    cdef wl_shared *sh = w.sh
    cdef wl_batch *b
    cdef uint64_t done
    cdef int j
    cdef uint64_t spins = 0
    while True:
        done = wl_load_acq(&sh.producers_done)
        b = wl_queue_pop(&sh.full)
        if b != NULL:
            for j in range(b.n):
                wl_release(w, &b.b[j])
            b.n = 0
            while not wl_queue_push(&sh.empty, b):
                tc_spin_backoff(&spins, 64)
        elif done == sh.producers:
            break               # every producer finished before the queue was seen empty
        else:
            tc_spin_backoff(&spins, 64)

cdef void prodcons_producer(wl_worker *w) noexcept nogil:
    cdef wl_shared *sh = w.sh
    cdef wl_ring *r = sh.rings[w.idx // 2]
    cdef uint64_t tail = 0
    cdef wl_block blk
    cdef uint64_t spins = 0
    while wl_more(w):
        if not wl_alloc(w, &blk, wl_size(&w.rng, sh.min_size, sh.max_size), False):
            continue
        while tail - wl_load_acq(&r.head) >= WL_RING:
            tc_spin_backoff(&spins, 64)
        r.slots[tail & (WL_RING - 1)] = blk
        tail += 1
        wl_store_rel(&r.tail, tail)
    wl_store_rel(&r.done, 1)

cdef void prodcons_consumer(wl_worker *w) noexcept nogil:
    cdef wl_shared *sh = w.sh
    cdef wl_ring *r = sh.rings[w.idx // 2]
    cdef uint64_t head = 0, tail
    cdef uint64_t spins = 0
    while True:
        tail = wl_load_acq(&r.tail)
        if tail != head:
            while head != tail:
                wl_release(w, &r.slots[head & (WL_RING - 1)])
                head += 1
                wl_store_rel(&r.head, head)
        elif wl_load_acq(&r.done) and wl_load_acq(&r.tail) == head:
            break
        else:
            tc_spin_backoff(&spins, 64)

cdef void thrash_loop(wl_worker *w) noexcept nogil:
    # Small objects written over and over: if the allocator puts two threads'
    # objects on one cache line, the line bounces between the cores. Each
    # rewrite checks the block as it goes (h_check_refill): a rewrite
    # erases what a second owner wrote, so a check before the free alone let
    # such a block pass. A bad block counts once. In duration mode the
    # rewrites stop at the deadline: one operation on a GiB block is seconds
    # of rewrites.
    cdef wl_shared *sh = w.sh
    cdef wl_block b
    cdef int k
    cdef bint bad
    while wl_more(w):
        if not wl_alloc(w, &b, wl_size(&w.rng, sh.min_size, sh.max_size), False):
            continue
        bad = False
        for k in range(sh.writes):
            if not h_check_refill(b.p, b.n, b.key, b.key + 1):
                bad = True
                break
            b.key += 1
            w.unclocked += b.n
            if not sh.ops and wl_out_of_time(w):
                break
        if bad:
            w.c.corrupt += 1
            wl_free_block(w, &b)
        else:
            wl_release(w, &b)

cdef void scratch_worker(wl_worker *w) noexcept nogil:
    # Passive false sharing: free the object the driver allocated for this
    # thread (next to the other threads' objects), then work like thrash; an
    # allocator that hands the freed block back to this thread reuses a line
    # the other threads are writing.
    wl_release(w, &w.sh.objs[w.idx])
    thrash_loop(w)

cdef void churn_worker(wl_worker *w) noexcept nogil:
    # One short-lived thread: free the survivors a thread of the previous
    # round left (allocated by a thread that no longer exists), work, and
    # leave survivors of its own for the next round.
    cdef wl_shared *sh = w.sh
    cdef wl_block *surv = &sh.objs[w.idx * sh.survivors]
    cdef wl_block *arr = w.local
    cdef uint64_t done = 0, r
    cdef wl_block *b
    cdef int j
    for j in range(sh.survivors):
        wl_release(w, &surv[j])
    while done < sh.round_ops and wl_more(w):
        r = h_rand(&w.rng)
        b = &arr[r % <uint64_t>sh.slots]
        wl_release(w, b)
        wl_alloc(w, b, wl_size(&w.rng, sh.min_size, sh.max_size), False)
        done += 1
    for j in range(sh.slots):
        if j < sh.survivors:
            surv[j] = arr[j]
            arr[j].p = NULL
        else:
            wl_release(w, &arr[j])

cdef void mixed_worker(wl_worker *w) noexcept nogil:
    # Sizes log-uniform over the whole range; an occupied slot is freed or
    # realloc'ed (mostly growing, so chains of reallocs build up large
    # blocks); a fourth of new blocks come from calloc and must read as zero.
    cdef wl_shared *sh = w.sh
    cdef wl_block *arr = w.local
    cdef wl_block *b
    cdef uint64_t r
    cdef size_t m
    while wl_more(w):
        r = h_rand(&w.rng)
        b = &arr[r % <uint64_t>sh.slots]
        if b.p == NULL:
            wl_alloc(w, b, wl_size(&w.rng, sh.min_size, sh.max_size), ((r >> 32) & 3) == 0)
        elif ((r >> 32) % 10) < 4:
            wl_release(w, b)
        else:
            if ((r >> 40) % 3) == 0:
                m = wl_size(&w.rng, sh.min_size, sh.max_size)
            else:
                m = b.n + b.n // 2 + 1 + <size_t>((r >> 44) % (b.n + 1))
                if m > sh.max_size:
                    m = sh.min_size + (b.n >> 3)
                    if m > sh.max_size:     # min_size above 7/8 of max_size
                        m = sh.max_size
            wl_resize(w, b, m)

cdef void fork_worker(wl_worker *w) noexcept nogil:
    # Duration mode: keep allocating and freeing until the driver has done
    # its forks and the time is up, so every fork happens mid-load. Ops mode:
    # exactly sh.ops operations, then wait for the forks holding the blocks
    # (more operations would be more than asked for, and their progress
    # would hide a fork() that never returns from the hang watchdog).
    cdef wl_shared *sh = w.sh
    cdef wl_block *arr = w.local
    cdef wl_block *b
    cdef uint64_t r
    while not (wl_load_acq_int(&sh.fork_done) and not wl_more(w)):
        if sh.ops and w.c.ops >= sh.ops:
            wl_sleep_ns(200000)
            continue
        r = h_rand(&w.rng)
        b = &arr[r % <uint64_t>sh.slots]
        wl_release(w, b)
        wl_alloc(w, b, wl_size(&w.rng, sh.min_size, sh.max_size), False)

cdef int fork_child(wl_shared *sh, wl_block *inherited) noexcept nogil:
    # In the child (one thread, locks as fork left them): free the blocks
    # inherited from the parent, then allocate, check and free some more.
    # Returns the exit status: 0 clean, 1 corrupt, 2 allocation failed.
    cdef wl_worker *w = sh.driver
    cdef wl_block blocks[WL_CHILD_BLOCKS]
    cdef int i, k
    cdef uint64_t corrupt0 = w.c.corrupt, failed0 = w.c.failed
    for i in range(WL_INHERITED):
        wl_release(w, &inherited[i])
    for k in range(4):
        for i in range(WL_CHILD_BLOCKS):
            wl_alloc(w, &blocks[i], wl_size(&w.rng, sh.min_size, sh.max_size), (i & 7) == 0)
        for i in range(WL_CHILD_BLOCKS):
            wl_release(w, &blocks[i])
    if w.c.corrupt != corrupt0 or w.c.misaligned:
        return 1
    if w.c.failed != failed0:
        return 2
    return 0

cdef void fork_driver(wl_shared *sh) noexcept nogil:
    # The calling thread forks while the workers run, waits for each child
    # with a time limit (a child stuck on a lock held at fork time is the
    # classic allocator bug) and counts failed and hung children.
    cdef wl_worker *d = sh.driver
    cdef wl_block inherited[WL_INHERITED]
    cdef pid_t pid, got
    cdef int i, status = 0
    cdef uint64_t t_end, start, t0
    memset(inherited, 0, sizeof(inherited))
    start = tc_now_ns()
    while True:
        # Each fork seen through is progress for the hang watchdog: in ops
        # mode the workers may be done and waiting, and a child killed after
        # child_timeout is not a hung run. A fork() that never returns adds
        # nothing: that run is hung.
        if sh.forks and sh.progress != NULL:
            tc_atomic_add_u64(sh.progress, 1)
        if sh.forks_wanted:
            if sh.forks >= sh.forks_wanted:
                break
        elif sh.forks > 0 and tc_now_ns() >= sh.deadline_ns:
            break
        wl_sleep_ns(sh.fork_interval_ns)
        for i in range(WL_INHERITED):
            wl_alloc(d, &inherited[i], wl_size(&d.rng, sh.min_size, sh.max_size), False)
        t0 = tc_now_ns()
        pid = fork()
        if pid == 0:
            _exit(fork_child(sh, inherited))
        sh.fork_ns += tc_now_ns() - t0
        for i in range(WL_INHERITED):
            wl_release(d, &inherited[i])
        if pid < 0:
            sh.child_failures += 1
            sh.forks += 1
            continue
        sh.forks += 1
        t_end = tc_now_ns() + sh.child_timeout_ns
        while True:
            got = waitpid(pid, &status, WNOHANG)
            if got == pid:
                sh.child_ns += tc_now_ns() - t0
                sh.children_reaped += 1
                if not WIFEXITED(status) or WEXITSTATUS(status) != 0:
                    sh.child_failures += 1
                break
            if got < 0:
                sh.child_failures += 1
                break
            if tc_now_ns() >= t_end:
                kill(pid, SIGKILL)
                waitpid(pid, &status, 0)
                sh.child_hung += 1
                break
            wl_sleep_ns(1000000)
    wl_store_rel_int(&sh.fork_done, 1)

# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------

cdef void *wl_thread_main(void *arg) noexcept nogil:
    cdef wl_worker *w = <wl_worker *>arg
    cdef wl_shared *sh = w.sh
    cdef rusage ru
    cdef int g
    while True:                 # start together, so the clock measures all
        g = wl_load_acq_int(&sh.go)
        if g != 0:
            break
        sched_yield()
    if g < 0:
        return NULL
    w.c.threads += 1
    if sh.kind == K_LARSON:
        larson_worker(w)
    elif sh.kind == K_XMALLOC:
        if w.role == R_PRODUCER:
            xmalloc_producer(w)
        else:
            xmalloc_consumer(w)
    elif sh.kind == K_PRODCONS:
        if w.role == R_PRODUCER:
            prodcons_producer(w)
        else:
            prodcons_consumer(w)
    elif sh.kind == K_THRASH:
        thrash_loop(w)
    elif sh.kind == K_SCRATCH:
        scratch_worker(w)
    elif sh.kind == K_CHURN:
        churn_worker(w)
    elif sh.kind == K_MIXED:
        mixed_worker(w)
    elif sh.kind == K_FORK:
        fork_worker(w)
    if w.unreported and sh.progress != NULL:
        tc_atomic_add_u64(sh.progress, w.unreported)
    w.unreported = 0
    wl_flush_live(w)
    # This thread's own CPU time and context switches (a churn worker slot
    # adds up the pthreads of all rounds).
    if getrusage(RUSAGE_THREAD, &ru) == 0:
        w.c.cpu_user_ns += <uint64_t>ru.ru_utime.tv_sec * 1000000000ULL + <uint64_t>ru.ru_utime.tv_usec * 1000ULL
        w.c.cpu_sys_ns += <uint64_t>ru.ru_stime.tv_sec * 1000000000ULL + <uint64_t>ru.ru_stime.tv_usec * 1000ULL
        w.c.nvcsw += <uint64_t>ru.ru_nvcsw
        w.c.nivcsw += <uint64_t>ru.ru_nivcsw
    return NULL

cdef wl_worker *wl_new_worker(wl_shared *sh, int idx, int local_slots) noexcept nogil:
    cdef void *mem = NULL
    cdef wl_worker *w
    mem = libc_calloc(1, sizeof(wl_worker) + 128)
    if mem == NULL:
        return NULL
    # Round up to a cache line: counters of different workers never share one.
    w = <wl_worker *>((<uintptr_t>mem + 63) & ~(<uintptr_t>63))
    (<void **>(<char *>w + sizeof(wl_worker)))[0] = mem
    w.sh = sh
    w.idx = idx
    w.rng = h_mix(sh.seed * <uint64_t>0x100000001b3ULL + <uint64_t>idx)
    if local_slots:
        w.local = <wl_block *>libc_calloc(local_slots, sizeof(wl_block))
        if w.local == NULL:
            libc_free(mem)
            return NULL
    return w

cdef void wl_free_worker(wl_worker *w) noexcept nogil:
    if w == NULL:
        return
    libc_free(w.local)
    libc_free((<void **>(<char *>w + sizeof(wl_worker)))[0])

cdef int wl_start(wl_shared *sh, int first, int n) noexcept nogil:
    # Create threads first..first+n-1; on failure the created ones are told
    # to abort at the gate and joined. Returns 0 or an errno value.
    cdef int i, j, err
    for i in range(first, first + n):
        err = pthread_create(&sh.w[i].tid, NULL, wl_thread_main, sh.w[i])
        if err:
            wl_store_rel_int(&sh.go, -1)
            for j in range(first, i):
                pthread_join(sh.w[j].tid, NULL)
            return err
    return 0

cdef void wl_join(wl_shared *sh, int first, int n) noexcept nogil:
    cdef int i
    for i in range(first, first + n):
        pthread_join(sh.w[i].tid, NULL)

cdef bint wl_churn_finished(wl_shared *sh) noexcept nogil:
    cdef int i
    if not sh.ops:
        return tc_now_ns() >= sh.deadline_ns
    for i in range(sh.nthreads):
        if sh.w[i].c.ops < sh.ops:
            return False
    return True

cdef int wl_setup(wl_shared *sh) noexcept nogil:
    # Everything the workers share, allocated before the clock starts, from
    # libc (inside a peer's child process that is the peer, as for any program).
    cdef int i, T = sh.nthreads, local = 0
    if sh.kind in (K_LARSON, K_MIXED, K_CHURN, K_FORK):
        local = sh.slots
    sh.w = <wl_worker **>libc_calloc(T, sizeof(wl_worker *))
    sh.driver = wl_new_worker(sh, T, 0)
    if sh.w == NULL or sh.driver == NULL:
        return 12
    for i in range(T):
        sh.w[i] = wl_new_worker(sh, i, local)
        if sh.w[i] == NULL:
            return 12
        sh.w[i].role = R_WORKER
    if sh.kind == K_LARSON:
        sh.pool = <wl_block **>libc_calloc(T, sizeof(wl_block *))
        if sh.pool == NULL:
            return 12
        for i in range(T):
            sh.pool[i] = <wl_block *>libc_calloc(sh.slots, sizeof(wl_block))
            if sh.pool[i] == NULL:
                return 12
    elif sh.kind == K_XMALLOC:
        # First half allocate, second half free.
        sh.producers = <uint64_t>(T // 2)
        for i in range(T):
            sh.w[i].role = R_PRODUCER if i < T // 2 else R_CONSUMER
        sh.nbatches = 4 * T
        sh.batches = <wl_batch *>libc_calloc(sh.nbatches, sizeof(wl_batch))
        sh.full.items = <wl_batch **>libc_calloc(sh.nbatches, sizeof(wl_batch *))
        sh.empty.items = <wl_batch **>libc_calloc(sh.nbatches, sizeof(wl_batch *))
        if sh.batches == NULL or sh.full.items == NULL or sh.empty.items == NULL:
            return 12
        tc_spinlock_init(&sh.full.lock)
        tc_spinlock_init(&sh.empty.lock)
        sh.full.cap = sh.nbatches
        sh.empty.cap = sh.nbatches
        for i in range(sh.nbatches):
            wl_queue_push(&sh.empty, &sh.batches[i])
    elif sh.kind == K_PRODCONS:
        # Pairs: 2k produces into ring k, 2k+1 consumes from it.
        sh.rings = <wl_ring **>libc_calloc(T // 2, sizeof(wl_ring *))
        if sh.rings == NULL:
            return 12
        for i in range(T // 2):
            sh.rings[i] = <wl_ring *>libc_calloc(1, sizeof(wl_ring) + 64)
            if sh.rings[i] == NULL:
                return 12
        for i in range(T):
            sh.w[i].role = R_PRODUCER if (i & 1) == 0 else R_CONSUMER
    elif sh.kind == K_SCRATCH:
        sh.nobjs = T
        sh.objs = <wl_block *>libc_calloc(T, sizeof(wl_block))
        if sh.objs == NULL:
            return 12
        for i in range(T):      # allocated back to back by one thread
            wl_alloc(sh.driver, &sh.objs[i], wl_size(&sh.driver.rng, sh.min_size, sh.max_size), False)
        wl_flush_live(sh.driver)
    elif sh.kind == K_CHURN:
        sh.nobjs = T * sh.survivors
        sh.objs = <wl_block *>libc_calloc(sh.nobjs, sizeof(wl_block))
        if sh.objs == NULL:
            return 12
    return 0

cdef void wl_teardown(wl_shared *sh) noexcept nogil:
    # Verify and free whatever the workload left live (the driver's frees),
    # then the harness's own memory.
    cdef int i, T = sh.nthreads
    cdef wl_worker *d = sh.driver
    if sh.w != NULL:
        for i in range(T):
            if sh.w[i] != NULL and d != NULL:
                wl_release_array(d, sh.w[i].local, sh.slots)
    if sh.pool != NULL:
        for i in range(T):
            if d != NULL:
                wl_release_array(d, sh.pool[i], sh.slots)
            libc_free(sh.pool[i])
        libc_free(sh.pool)
        sh.pool = NULL
    if sh.objs != NULL:
        if d != NULL:
            wl_release_array(d, sh.objs, sh.nobjs)
        libc_free(sh.objs)
        sh.objs = NULL
    if sh.batches != NULL and d != NULL:
        for i in range(sh.nbatches):
            wl_release_array(d, sh.batches[i].b, sh.batches[i].n)
    if d != NULL:
        wl_flush_live(d)        # the meter reads 0 after the run
    libc_free(sh.batches)
    libc_free(sh.full.items)
    libc_free(sh.empty.items)
    sh.batches = NULL
    if sh.rings != NULL:
        for i in range(T // 2):
            libc_free(sh.rings[i])
        libc_free(sh.rings)
        sh.rings = NULL

cdef void wl_free_workers(wl_shared *sh) noexcept nogil:
    cdef int i
    if sh.w != NULL:
        for i in range(sh.nthreads):
            wl_free_worker(sh.w[i])
        libc_free(sh.w)
        sh.w = NULL
    wl_free_worker(sh.driver)
    sh.driver = NULL

cdef int wl_run(wl_shared *sh) noexcept nogil:
    # Returns 0 or an errno value (nothing was left running in that case).
    cdef int err
    cdef uint64_t t0
    err = wl_setup(sh)
    if err:
        wl_teardown(sh)
        return err
    if sh.kind == K_CHURN:
        t0 = tc_now_ns()
        sh.deadline_ns = t0 + sh.duration_ns
        wl_store_rel_int(&sh.go, 1)
        while True:             # rounds of short-lived threads
            err = wl_start(sh, 0, sh.nthreads)
            if err:
                break
            wl_join(sh, 0, sh.nthreads)
            sh.rounds += 1
            if wl_churn_finished(sh):
                break
        sh.elapsed_ns = tc_now_ns() - t0
        wl_teardown(sh)
        return err
    err = wl_start(sh, 0, sh.nthreads)
    if err:
        wl_teardown(sh)
        return err
    t0 = tc_now_ns()
    sh.deadline_ns = t0 + sh.duration_ns
    wl_store_rel_int(&sh.go, 1)
    if sh.kind == K_FORK:
        fork_driver(sh)
    wl_join(sh, 0, sh.nthreads)
    sh.elapsed_ns = tc_now_ns() - t0
    wl_teardown(sh)
    return 0

# ---------------------------------------------------------------------------
# Python API
# ---------------------------------------------------------------------------

WORKLOADS = ("larson", "xmalloc", "prodcons", "cache-thrash", "cache-scratch",
             "churn", "mixed", "fork")
ALLOCATORS = ("system", "tcalloc")
MAX_THREADS = WL_MAX_THREADS

_KINDS = {"larson": K_LARSON, "xmalloc": K_XMALLOC, "prodcons": K_PRODCONS,
          "cache-thrash": K_THRASH, "cache-scratch": K_SCRATCH, "churn": K_CHURN,
          "mixed": K_MIXED, "fork": K_FORK}

DESCRIPTIONS = {
    "larson": "server simulation: random slot replacement, slot arrays passed between threads (cross-thread frees)",
    "xmalloc": "half the threads only allocate, half only free, batches through a locked queue",
    "prodcons": "producer/consumer pairs through lock-free single-producer rings",
    "cache-thrash": "active false sharing: each thread writes its own small objects over and over",
    "cache-scratch": "passive false sharing: threads free neighbouring objects allocated by one thread, then reuse",
    "churn": "rounds of short-lived threads; objects outlive their thread and are freed by the next round",
    "mixed": "8 B to several MiB, malloc/calloc/free and realloc chains",
    "fork": "fork() while threads allocate; the child frees inherited blocks, allocates, checks, exits",
}

# Per-workload defaults; any of them can be overridden by run()'s keywords.
DEFAULTS = {
    "larson": dict(min_size=16, max_size=1024, slots=1000),
    "xmalloc": dict(min_size=8, max_size=512),
    "prodcons": dict(min_size=16, max_size=256),
    "cache-thrash": dict(min_size=8, max_size=64, writes=64),
    "cache-scratch": dict(min_size=8, max_size=64, writes=64),
    "churn": dict(min_size=16, max_size=8192, slots=64, survivors=16, round_ops=2000),
    "mixed": dict(min_size=8, max_size=4 << 20, slots=32),
    "fork": dict(min_size=16, max_size=65536, slots=256, forks=0, fork_interval_ms=20.0,
                 child_timeout_s=10.0),
}

_PARAMS = {"slots", "writes", "survivors", "round_ops", "forks", "fork_interval_ms",
           "child_timeout_s"}


cdef class Progress:
    """A counter the workers add their operations to while a run is going
    (and fork's driver one per fork done); read ``ops`` from another Python
    thread to show progress."""
    cdef uint64_t count
    cdef uint64_t live

    @property
    def ops(self):
        return tc_load_u64(&self.count)

    @property
    def live_bytes(self):
        """Bytes the workers hold now (blocks allocated and not yet freed),
        exact to 1 MiB per thread; 0 once the run is over."""
        return <int64_t>tc_load_u64(&self.live)


def run(str workload, allocator="system", int threads=2, ops=0, duration=0.0,
        min_size=None, max_size=None, seed=1, Progress progress=None, **params):
    """Run one workload on native threads (GIL released) and return its counts.

    workload   one of WORKLOADS
    allocator  "system", "tcalloc", tcalloc's "tcalloc._C_API" capsule, or a
               "tcalloc.stress.allocator" capsule holding a tc_allocator_t *
    threads    worker threads (xmalloc and prodcons round up to an even number)
    ops        operations per worker thread (an operation = a malloc, calloc or
               realloc that produced a block; fork's workers then wait for
               the forks, holding their blocks); or
    duration   seconds to run (exactly one of ops/duration)
    min_size, max_size, and the workload's own parameters: see DEFAULTS.
    seed       0 <= seed < 2**64

    Returns a dict: ops, allocs, frees, reallocs, bytes, corrupt, lost,
    misaligned, failed, elapsed_ns, threads, per_thread (list of dicts), and
    for fork: forks, child_failures, child_hung, fork_ns (the parent's time
    inside fork(), summed), child_ns (fork() to the child reaped, summed
    over the children reaped) and children_reaped (those that exited, with
    any status; the hung ones are killed and not counted); for churn: rounds.
    lost = blocks allocated that the run never got back to free; corrupt and
    lost are bugs, always 0 for a correct allocator.
    """
    cdef wl_shared sh
    cdef wl_worker *w
    cdef wl_counts c
    cdef int err, i
    cdef object keep
    if workload not in _KINDS:
        raise ValueError("unknown workload %r; choose from %s" % (workload, ", ".join(WORKLOADS)))
    unknown = set(params) - _PARAMS
    if unknown:
        raise TypeError("unknown parameter(s): %s" % ", ".join(sorted(unknown)))
    cfg = dict(DEFAULTS[workload])
    cfg.update({k: v for k, v in params.items() if v is not None})
    if min_size is not None:
        cfg["min_size"] = min_size
    if max_size is not None:
        cfg["max_size"] = max_size
    ops = int(ops)
    duration = float(duration)
    if (ops > 0) == (duration > 0):
        raise ValueError("give exactly one of ops > 0 or duration > 0")
    if ops < 0 or duration < 0:
        raise ValueError("ops and duration must be positive")
    if not 1 <= threads <= WL_MAX_THREADS:
        raise ValueError("threads must be between 1 and %d" % WL_MAX_THREADS)
    if not 0 <= int(seed) < 1 << 64:
        raise ValueError("seed must be >= 0 and < 2**64, not %r" % (seed,))
    if workload in ("xmalloc", "prodcons"):
        threads = max(2, threads + (threads & 1))
        if threads > WL_MAX_THREADS:
            threads = WL_MAX_THREADS
    lo, hi = int(cfg["min_size"]), int(cfg["max_size"])
    if lo < 1:
        raise ValueError("min_size must be >= 1 (a 0-byte block has no contents to check)")
    if hi < lo:
        raise ValueError("max_size (%d) must be >= min_size (%d)" % (hi, lo))
    if hi > (1 << 30):
        raise ValueError("max_size must be <= 1 GiB")
    for name in ("slots", "writes", "survivors", "round_ops"):
        if name in cfg and int(cfg[name]) < 1:
            raise ValueError("%s must be >= 1" % name)
    if workload == "churn" and cfg["survivors"] > cfg["slots"]:
        raise ValueError("survivors must be <= slots")

    memset(&sh, 0, sizeof(sh))
    keep = h_allocator(allocator, &sh.a)
    sh.kind = _KINDS[workload]
    sh.nthreads = threads
    sh.ops = <uint64_t>ops
    sh.duration_ns = <uint64_t>(duration * 1e9)
    sh.min_size = lo
    sh.max_size = hi
    sh.seed = <uint64_t>int(seed)
    sh.slots = int(cfg.get("slots", 1))
    sh.writes = int(cfg.get("writes", 1))
    sh.survivors = int(cfg.get("survivors", 0))
    sh.round_ops = <uint64_t>int(cfg.get("round_ops", 0))
    sh.forks_wanted = <uint64_t>int(cfg.get("forks", 0))
    if workload == "fork" and ops and not sh.forks_wanted:
        sh.forks_wanted = 8     # ops mode has no clock to fork against
    sh.fork_interval_ns = <uint64_t>(float(cfg.get("fork_interval_ms", 0)) * 1e6)
    sh.child_timeout_ns = <uint64_t>(float(cfg.get("child_timeout_s", 10)) * 1e9)
    if progress is not None:
        sh.progress = &progress.count
        sh.live = &progress.live
    with nogil:
        err = wl_run(&sh)
    if err:
        wl_free_workers(&sh)
        import os
        raise OSError(err, "workload %s could not start: %s" % (workload, os.strerror(err)))

    per = []
    tot = {k: 0 for k in ("ops", "allocs", "frees", "reallocs", "bytes", "corrupt",
                          "misaligned", "failed")}
    for i in range(threads + 1):
        w = sh.w[i] if i < threads else sh.driver
        c = w.c
        d = dict(ops=c.ops, allocs=c.allocs, frees=c.frees, reallocs=c.reallocs,
                 bytes=c.bytes, corrupt=c.corrupt, misaligned=c.misaligned, failed=c.failed)
        for k in tot:
            tot[k] += d[k]
        if i < threads:
            d.update(role=("worker", "producer", "consumer")[w.role],
                     cpu_user_s=c.cpu_user_ns / 1e9, cpu_system_s=c.cpu_sys_ns / 1e9,
                     ctx_voluntary=c.nvcsw, ctx_involuntary=c.nivcsw, pthreads=c.threads)
            per.append(d)
        else:
            driver = d
    wl_free_workers(&sh)
    res = dict(workload=workload, allocator=(<bytes>sh.a.name).decode(),
               threads=threads, seed=int(seed), min_size=lo, max_size=hi,
               elapsed_ns=sh.elapsed_ns, per_thread=per, driver=driver, **tot)
    res["lost"] = res["allocs"] - res["frees"]
    if workload == "fork":
        res.update(forks=sh.forks, child_failures=sh.child_failures, child_hung=sh.child_hung,
                   fork_ns=sh.fork_ns, child_ns=sh.child_ns, children_reaped=sh.children_reaped)
    if workload == "churn":
        res["rounds"] = sh.rounds
        res["pthreads"] = sum(p["pthreads"] for p in per)
    res["params"] = {k: v for k, v in cfg.items() if k not in ("min_size", "max_size")}
    del keep
    return res
