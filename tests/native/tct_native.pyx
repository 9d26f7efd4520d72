# Test-only native helpers for the reliability tests (tests/test_fork.py,
# test_limits.py, test_invalid_free.py, test_model.py, test_thread_exit.py,
# test_soak.py). Not part of the public API.
#
# Everything goes through the public C API (capsule tcalloc._C_API), the way
# a C extension would use tcalloc, so the tests check the contract users get
# rather than engine internals. Threads are native pthreads that never touch
# the GIL: allocation under test runs the way it does in C code. Bookkeeping
# memory of this module (slot tables, pointer arrays) comes from the C
# library's malloc so it never mixes with the heap under test.
from libc.stdint cimport uint8_t, uint64_t, uintptr_t, int64_t
from libc.string cimport memset, memcmp
from libc.errno cimport ENOMEM, EINVAL
from libc.stdio cimport snprintf
cimport libc.stdlib as clib
from posix.unistd cimport fork, _exit, write
from posix.wait cimport waitpid, WNOHANG, WIFEXITED, WEXITSTATUS, WIFSIGNALED, WTERMSIG
from posix.types cimport pid_t

import tcalloc

include "harness.pxi"

cdef extern from "<signal.h>" nogil:
    enum: SIGKILL
    int kill(pid_t pid, int sig)

cdef extern from "<time.h>" nogil:
    cdef struct timespec:
        long tv_sec
        long tv_nsec
    int nanosleep(const timespec *req, timespec *rem)


cdef extern from "tc_platform.h" nogil:
    uint64_t tc_now_ns()

# Atomics the platform header does not offer (acquire/release on ints and an
# exchange of pointers for the cross-thread hand-off slots).
cdef extern from *:
    """
    #include <errno.h>
    #include <stdint.h>
    static inline int tn_load_int(const int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void tn_store_int(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline uint64_t tn_load_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    static inline void tn_add_u64(uint64_t *p, uint64_t v) { __atomic_add_fetch(p, v, __ATOMIC_RELAXED); }
    static inline void *tn_xchg_ptr(void **p, void *v) { return __atomic_exchange_n(p, v, __ATOMIC_ACQ_REL); }
    /* Targets for invalid frees: memory tcalloc never handed out. */
    static char tn_static_buf[64] __attribute__((aligned(16)));
    static inline void *tn_static_ptr(void) { return (void *)(tn_static_buf + 16); }
    /* Keep the compiler from proving a stack buffer dead or the free a no-op. */
    static inline void *tn_launder(void *p) { __asm__ volatile("" : "+r"(p)); return p; }
    /* A store the compiler cannot drop (the sanitizer control's overflow). */
    static inline void tn_poke(void *p, size_t i) { ((volatile char *)p)[i] = 1; }
    /* errno through functions: Cython would treat an assignment to the
       cimported name as a new local variable. */
    static inline void tn_set_errno(int e) { errno = e; }
    static inline int tn_get_errno(void) { return errno; }
    """
    int tn_load_int(const int *p) nogil
    void tn_store_int(int *p, int v) nogil
    uint64_t tn_load_u64(const uint64_t *p) nogil
    void tn_add_u64(uint64_t *p, uint64_t v) nogil
    void *tn_xchg_ptr(void **p, void *v) nogil
    void *tn_static_ptr() nogil
    void *tn_launder(void *p) nogil
    void tn_poke(void *p, size_t i) nogil
    void tn_set_errno(int e) nogil
    int tn_get_errno() nogil

ctypedef uint64_t u64

cdef TcallocCAPI *capi = h_tcalloc_api()

cdef size_t kMaxSmall = 262144
cdef u64 MAGIC = 0x7463616c6c6f6321ULL   # "tcalloc!": header of self-describing blocks

# =============================================================================
# Patterns. A block of n >= 16 bytes written with seed s is self-describing:
# a header (n ^ MAGIC, s), then the harness pattern of key s (h_fill); a
# shorter block holds the pattern alone. Any stray write, lost write, overlap
# with another live block or premature reuse shows up as a mismatch.
# =============================================================================

cdef void fill_block(void *p, size_t n, u64 seed) noexcept nogil:
    cdef u64 *w = <u64 *>p
    if n < 16:
        h_fill(p, n, seed)
        return
    w[0] = <u64>n ^ MAGIC
    w[1] = seed
    h_fill(<char *>p + 16, n - 16, seed)

cdef bint check_block(const void *p, size_t n, u64 seed, size_t upto) noexcept nogil:
    """Does p hold what fill_block(p, n, seed) wrote, in its first `upto`
    bytes (upto >= n: all of it)?"""
    cdef const u64 *w = <const u64 *>p
    cdef u64 head[2]
    cdef size_t lim = upto if upto < n else n
    if n < 16:
        return h_check(p, lim, seed)
    head[0] = <u64>n ^ MAGIC
    head[1] = seed
    if memcmp(p, head, lim if lim < 16 else 16) != 0:
        return 0
    return lim <= 16 or h_check(<const char *>p + 16, lim - 16, seed)

cdef bint check_self(void *p, size_t maxsize, size_t *n_out) noexcept nogil:
    """A self-describing block (n >= 16) handed over by another thread."""
    cdef u64 *w = <u64 *>p
    cdef size_t n = <size_t>(w[0] ^ MAGIC)
    n_out[0] = n
    if n < 16 or n > maxsize:
        return 0
    return check_block(p, n, w[1], n)

# =============================================================================
# Background workers: native threads allocating, verifying and freeing
# through the C API until told to stop, handing blocks to each other.
# =============================================================================

cdef enum:
    MAX_WORKERS = 64
    EXCH = 64                 # hand-off slots shared by all workers

ctypedef struct Slot:
    void *p
    size_t size
    u64 seed

ctypedef struct Shared:
    int stop
    int cross
    size_t max_size           # largest request
    int large_permille        # share of requests above 256 KiB (page-heap path)
    int nslots
    void *exch[EXCH]

ctypedef struct Worker:
    pthread_t th
    int started
    int id
    Shared *sh
    u64 rng
    Slot *slots
    u64 ops
    u64 allocs
    u64 frees
    u64 cross_frees
    u64 reallocs
    u64 corrupt
    u64 failed
    uintptr_t first_bad
    size_t first_bad_size

cdef size_t _pick_size(u64 *rng, size_t max_size, int large_permille) noexcept nogil:
    """Mostly small, some medium, `large_permille` per mille large (past
    256 KiB: the page heap)."""
    cdef u64 r = h_rand(rng) % 1000
    cdef size_t n
    if r < <u64>large_permille:
        n = kMaxSmall + 1 + h_rand(rng) % (3 * kMaxSmall)
    elif r < 700:
        n = 1 + h_rand(rng) % 512
    elif r < 950:
        n = 513 + h_rand(rng) % (32768 - 512)
    else:
        n = 32769 + h_rand(rng) % (kMaxSmall - 32768)
    if n > max_size:
        n = 1 + n % max_size
    return n

cdef void _bad(Worker *w, void *p, size_t n) noexcept nogil:
    if w.corrupt == 0:
        w.first_bad = <uintptr_t>p
        w.first_bad_size = n
    tn_add_u64(&w.corrupt, 1)

cdef void _worker_step(Worker *w) noexcept nogil:
    cdef Shared *sh = w.sh
    cdef Slot *b = &w.slots[h_rand(&w.rng) % <u64>sh.nslots]
    cdef u64 action
    cdef size_t n, keep, other_n
    cdef void *q
    cdef void *old
    cdef size_t align
    if b.p != NULL:
        if not check_block(b.p, b.size, b.seed, b.size):
            _bad(w, b.p, b.size)
        action = h_rand(&w.rng) % 8
        if action == 0 and sh.cross and b.size >= 16:
            # Hand the block to whichever thread takes this slot next; free
            # what was there (allocated, most likely, by another thread).
            old = tn_xchg_ptr(&sh.exch[h_rand(&w.rng) % EXCH], b.p)
            if old != NULL:
                if not check_self(old, sh.max_size, &other_n):
                    _bad(w, old, other_n)
                capi.free(old)
                tn_add_u64(&w.cross_frees, 1)
        elif action == 1:
            n = _pick_size(&w.rng, sh.max_size, sh.large_permille)
            q = capi.realloc(b.p, n)
            if q == NULL:
                tn_add_u64(&w.failed, 1)
                capi.free(b.p)
            else:
                keep = n if n < b.size else b.size
                if not check_block(q, b.size, b.seed, keep):
                    _bad(w, q, n)
                b.p = q
                b.size = n
                b.seed = h_rand(&w.rng)
                fill_block(q, n, b.seed)
                tn_add_u64(&w.reallocs, 1)
                return
        else:
            capi.free(b.p)
        tn_add_u64(&w.frees, 1)
        b.p = NULL
        return
    n = _pick_size(&w.rng, sh.max_size, sh.large_permille)
    action = h_rand(&w.rng) % 16
    if action == 0:
        q = capi.calloc(1, n)
        if q != NULL and not h_is_zero(q, n):
            _bad(w, q, n)
    elif action == 1:
        align = (<size_t>16) << (h_rand(&w.rng) % 9)        # 16 .. 4096
        q = capi.aligned_alloc(align, n)
        if q != NULL and (<uintptr_t>q & (align - 1)) != 0:
            _bad(w, q, n)
    else:
        q = capi.malloc(n)
    if q == NULL:
        tn_add_u64(&w.failed, 1)
        return
    b.p = q
    b.size = n
    b.seed = h_rand(&w.rng)
    fill_block(q, n, b.seed)
    tn_add_u64(&w.allocs, 1)

cdef void *_worker_main(void *arg) noexcept nogil:
    cdef Worker *w = <Worker *>arg
    cdef int i
    while not tn_load_int(&w.sh.stop):
        for i in range(64):
            _worker_step(w)
        tn_add_u64(&w.ops, 64)
    # Give everything back, checking it one last time.
    for i in range(w.sh.nslots):
        if w.slots[i].p != NULL:
            if not check_block(w.slots[i].p, w.slots[i].size, w.slots[i].seed, w.slots[i].size):
                _bad(w, w.slots[i].p, w.slots[i].size)
            capi.free(w.slots[i].p)
            w.slots[i].p = NULL
    return NULL

cdef class Workers:
    """Native threads allocating, verifying and freeing through the C API in
    the background. start_workers() makes and starts one; stop() joins the
    threads, frees every block and returns the counts."""
    cdef Shared *sh
    cdef Worker *w
    cdef int n
    cdef bint running
    cdef object _result

    def __cinit__(self, int nthreads, int nslots=512, u64 seed=1, bint cross=True,
                  size_t max_size=4 * 262144, int large_permille=5):
        cdef int i
        if nthreads < 1 or nthreads > MAX_WORKERS:
            raise ValueError("nthreads must be 1..%d" % MAX_WORKERS)
        if nslots < 1 or max_size < 1:
            raise ValueError("nslots and max_size must be positive")
        self.sh = <Shared *>clib.calloc(1, sizeof(Shared))
        self.w = <Worker *>clib.calloc(nthreads, sizeof(Worker))
        if self.sh == NULL or self.w == NULL:
            raise MemoryError()
        self.n = nthreads
        self.sh.cross = cross
        self.sh.max_size = max_size
        self.sh.nslots = nslots
        self.sh.large_permille = large_permille
        for i in range(nthreads):
            self.w[i].id = i
            self.w[i].sh = self.sh
            self.w[i].rng = seed * 1000003 + <u64>i
            self.w[i].slots = <Slot *>clib.calloc(nslots, sizeof(Slot))
            if self.w[i].slots == NULL:
                raise MemoryError()

    def start(self):
        cdef int i, err = 0
        if self.running or self._result is not None:
            raise RuntimeError("workers already started")
        with nogil:
            for i in range(self.n):
                if pthread_create(&self.w[i].th, NULL, _worker_main, &self.w[i]) != 0:
                    err = 1
                    break
                self.w[i].started = 1
        self.running = True
        if err:
            self.stop()
            raise OSError("pthread_create failed")
        return self

    def counts(self):
        """Progress so far (relaxed reads while the threads run)."""
        cdef int i
        ops = corrupt = failed = 0
        for i in range(self.n):
            ops += tn_load_u64(&self.w[i].ops)
            corrupt += tn_load_u64(&self.w[i].corrupt)
            failed += tn_load_u64(&self.w[i].failed)
        return {"ops": ops, "corrupt": corrupt, "failed": failed}

    def stop(self):
        """Stop and join the threads, free every block; the totals as a dict."""
        cdef int i
        cdef size_t n
        cdef void *p
        cdef u64 drained_bad = 0
        if self._result is not None:
            return self._result
        with nogil:
            tn_store_int(&self.sh.stop, 1)
            for i in range(self.n):
                if self.w[i].started:
                    pthread_join(self.w[i].th, NULL)
                    self.w[i].started = 0
            for i in range(EXCH):
                p = self.sh.exch[i]
                if p != NULL:
                    if not check_self(p, self.sh.max_size, &n):
                        drained_bad += 1
                    capi.free(p)
                    self.sh.exch[i] = NULL
        self.running = False
        res = {"threads": self.n, "ops": 0, "allocs": 0, "frees": 0, "cross_frees": 0,
               "reallocs": 0, "corrupt": drained_bad, "failed": 0, "first_bad": None}
        for i in range(self.n):
            res["ops"] += self.w[i].ops
            res["allocs"] += self.w[i].allocs
            res["frees"] += self.w[i].frees
            res["cross_frees"] += self.w[i].cross_frees
            res["reallocs"] += self.w[i].reallocs
            res["corrupt"] += self.w[i].corrupt
            res["failed"] += self.w[i].failed
            if self.w[i].corrupt and res["first_bad"] is None:
                res["first_bad"] = (hex(self.w[i].first_bad), self.w[i].first_bad_size)
        self._result = res
        return res

    def __dealloc__(self):
        cdef int i
        if self.sh != NULL and self.w != NULL:
            with nogil:
                tn_store_int(&self.sh.stop, 1)
                for i in range(self.n):
                    if self.w[i].started:
                        pthread_join(self.w[i].th, NULL)
        if self.w != NULL:
            for i in range(self.n):
                clib.free(self.w[i].slots)
            clib.free(self.w)
        clib.free(self.sh)

def start_workers(int nthreads=4, int nslots=512, u64 seed=1, bint cross=True,
                  size_t max_size=4 * 262144, int large_permille=5):
    """Start `nthreads` native threads that allocate, verify and free (with
    cross-thread frees if `cross`) until the returned handle's stop().
    `large_permille`: requests per 1000 above 256 KiB (the page-heap path)."""
    return Workers(nthreads, nslots, seed, cross, max_size, large_permille).start()

# =============================================================================
# Fork: what a child does, and a native fork loop.
# =============================================================================

cdef size_t g_class_sizes[256]
cdef int g_nclasses = 0

def _load_classes():
    global g_nclasses
    table = tcalloc.size_class_table()
    g_nclasses = 0
    for row in table[:256]:
        g_class_sizes[g_nclasses] = row[1]
        g_nclasses += 1

_load_classes()

cdef int _exercise(u64 seed) noexcept nogil:
    """Allocate through every size class (more blocks than a batch, so the
    transfer caches, central lists and page heap are all entered), some large
    and aligned blocks and a realloc chain; verify and free. Returns the
    number of errors (NULL results or corrupt blocks)."""
    cdef void *ptrs[40]
    cdef int errors = 0
    cdef int c, k
    cdef size_t n
    cdef void *p
    cdef void *q
    cdef u64 rng = seed
    for c in range(g_nclasses):
        n = g_class_sizes[c]
        for k in range(40):
            ptrs[k] = capi.malloc(n)
            if ptrs[k] == NULL:
                errors += 1
            else:
                fill_block(ptrs[k], n if n < 256 else 256, seed + <u64>k)
        for k in range(40):
            if ptrs[k] != NULL:
                if not check_block(ptrs[k], n if n < 256 else 256, seed + <u64>k, n):
                    errors += 1
                capi.free(ptrs[k])
    for k in range(8):
        n = kMaxSmall + 1 + <size_t>(h_rand(&rng) % (4 * kMaxSmall))
        p = capi.malloc(n)
        if p == NULL:
            errors += 1
            continue
        fill_block(p, n, seed)
        q = capi.realloc(p, n * 2)
        if q == NULL:
            errors += 1
            capi.free(p)
            continue
        if not check_block(q, n, seed, n):
            errors += 1
        capi.free(q)
    p = capi.aligned_alloc(65536, 1000)
    if p == NULL or (<uintptr_t>p & 65535):
        errors += 1
    capi.free(p)
    p = capi.calloc(1000, 1000)
    if p == NULL or not h_is_zero(p, 1000000):
        errors += 1
    capi.free(p)
    return errors

cdef void *_exercise_thread(void *arg) noexcept nogil:
    (<int *>arg)[0] = _exercise(7)
    return NULL

cdef int _child_body(bint new_thread=True) noexcept nogil:
    """A forked child: exercise the heap on this thread, then on a new thread
    (a new thread cache: the registry lock), then here again."""
    cdef int errors = _exercise(1)
    cdef int terr = 0
    cdef pthread_t th
    if not new_thread:
        return errors + _exercise(3)
    if pthread_create(&th, NULL, _exercise_thread, &terr) != 0:
        return errors + 1000
    pthread_join(th, NULL)
    return errors + terr + _exercise(3)

def child_exercise():
    """What a forked child runs (also callable from Python after os.fork()):
    the number of errors, 0 when the heap works."""
    cdef int r
    with nogil:
        r = _child_body()
    return r

cdef void _sleep_ms(long ms) noexcept nogil:
    cdef timespec ts
    ts.tv_sec = ms // 1000
    ts.tv_nsec = (ms % 1000) * 1000000
    nanosleep(&ts, NULL)

cdef int _wait_child(pid_t pid, double timeout_s, int *status) noexcept nogil:
    """1 if the child ended within the timeout, else 0 (it is then killed)."""
    cdef u64 deadline = tc_now_ns() + <u64>(timeout_s * 1e9)
    cdef pid_t r
    while True:
        r = waitpid(pid, status, WNOHANG)
        if r == pid:
            return 1
        if r < 0:
            status[0] = -1
            return 1
        if tc_now_ns() > deadline:
            kill(pid, SIGKILL)
            waitpid(pid, status, 0)
            return 0
        _sleep_ms(2)

def fork_children(int nforks, double timeout_s=30.0, int gap_ms=5, bint child_thread=True):
    """fork() `nforks` times from native code (whatever other threads are
    doing at that moment), each child running child_exercise() and exiting
    with 0 if the heap worked, 3 if not (`child_thread` False: the child
    stays on its one thread, for ThreadSanitizer, whose gcc 12 runtime
    aborts on a thread started in the child of a multi-threaded parent:
    "dup thread with used id"). A child still running after
    `timeout_s` is deadlocked: it is killed and reported in 'hung'.
    Returns {'forks', 'ok', 'hung': [i...], 'failed': [(i, how)...]}."""
    cdef int i, status = 0, done
    cdef pid_t pid
    ok = 0
    hung = []
    failed = []
    for i in range(nforks):
        with nogil:
            pid = fork()
            if pid == 0:
                _exit(0 if _child_body(child_thread) == 0 else 3)
        if pid < 0:
            failed.append((i, "fork() failed, errno %d" % tn_get_errno()))
            continue
        with nogil:
            done = _wait_child(pid, timeout_s, &status)
            _sleep_ms(gap_ms)       # let the parent's threads get going again
        if not done:
            hung.append(i)
        elif status == -1:
            failed.append((i, "waitpid failed"))
        elif WIFEXITED(status) and WEXITSTATUS(status) == 0:
            ok += 1
        elif WIFEXITED(status):
            failed.append((i, "exit status %d" % WEXITSTATUS(status)))
        elif WIFSIGNALED(status):
            failed.append((i, "killed by signal %d" % WTERMSIG(status)))
        else:
            failed.append((i, "status %d" % status))
    return {"forks": nforks, "ok": ok, "hung": hung, "failed": failed}

# =============================================================================
# Single C API calls for tests written in Python. errno is captured right
# after the call (Python code in between could change it): last_errno().
# =============================================================================

cdef int g_errno = 0

cdef extern from "<fcntl.h>" nogil:
    int c_open "open" (const char *path, int flags)
    enum: O_RDONLY

cdef extern from "<unistd.h>" nogil:
    ssize_t c_read "read" (int fd, void *buf, size_t n)
    int c_close "close" (int fd)


cdef int _os_threads() noexcept nogil:
    """This process's thread count, field 20 of /proc/self/stat, read with
    system calls only (no malloc, so no tcalloc slow path runs); -1 if
    unreadable."""
    cdef char buf[1024]
    cdef ssize_t n
    cdef int fd = c_open("/proc/self/stat", O_RDONLY)
    cdef int field = 2, i = 0, v = 0
    if fd < 0:
        return -1
    n = c_read(fd, buf, sizeof(buf) - 1)
    c_close(fd)
    if n <= 0:
        return -1
    # Fields after the command name, which ends at the last ')'.
    i = <int>n - 1
    while i > 0 and buf[i] != c')':
        i -= 1
    while i < n and field < 20:
        if buf[i] == c' ':
            field += 1
        i += 1
    while i < n and c'0' <= buf[i] <= c'9':
        v = v * 10 + (buf[i] - c'0')
        i += 1
    return v


def fork_thread_count():
    """fork() from native code and return the parent's thread count read
    right after fork() returns, before anything that could allocate, as
    CPython 3.12+ reads it to decide whether to warn. The child exits at
    once."""
    cdef pid_t pid
    cdef int status = 0, n
    with nogil:
        pid = fork()
        if pid == 0:
            _exit(0)
        n = _os_threads()
        if pid > 0:
            waitpid(pid, &status, 0)
    if pid < 0:
        raise OSError(tn_get_errno(), "fork() failed")
    return n


def last_errno():
    """errno as the previous wrapper call left it (0 before each call)."""
    return g_errno

def malloc(size_t n):
    global g_errno
    cdef void *p
    with nogil:
        tn_set_errno(0)
        p = capi.malloc(n)
        g_errno = tn_get_errno()
    return <uintptr_t>p

def calloc(size_t nmemb, size_t size):
    global g_errno
    cdef void *p
    with nogil:
        tn_set_errno(0)
        p = capi.calloc(nmemb, size)
        g_errno = tn_get_errno()
    return <uintptr_t>p

def realloc(uintptr_t p, size_t n):
    global g_errno
    cdef void *q
    with nogil:
        tn_set_errno(0)
        q = capi.realloc(<void *>p, n)
        g_errno = tn_get_errno()
    return <uintptr_t>q

def aligned_alloc(size_t alignment, size_t n):
    global g_errno
    cdef void *p
    with nogil:
        tn_set_errno(0)
        p = capi.aligned_alloc(alignment, n)
        g_errno = tn_get_errno()
    return <uintptr_t>p

def free(uintptr_t p):
    with nogil:
        capi.free(<void *>p)

def usable_size(uintptr_t p):
    cdef size_t n
    with nogil:
        n = capi.usable_size(<void *>p)
    return n

def fill(uintptr_t p, size_t n, u64 seed):
    """Write the test pattern for (n, seed) into the n bytes at p."""
    with nogil:
        fill_block(<void *>p, n, seed)

def check(uintptr_t p, size_t n, u64 seed):
    """True if the n bytes at p still hold the pattern fill() wrote."""
    cdef bint ok
    with nogil:
        ok = check_block(<void *>p, n, seed, n)
    return ok

def is_zero(uintptr_t p, size_t n):
    cdef bint ok
    with nogil:
        ok = h_is_zero(<void *>p, n)
    return ok

def touch(uintptr_t p, size_t n):
    """Write one byte per 4 KiB page so the pages are resident (RSS)."""
    cdef size_t i = 0
    cdef uint8_t *b = <uint8_t *>p
    with nogil:
        while i < n:
            b[i] = 1
            i += 4096
        if n:
            b[n - 1] = 1

# =============================================================================
# Running out: allocate until tcalloc says no (memory limit or RLIMIT_AS),
# with no Python allocation in between (the interpreter may be starved too).
# =============================================================================

def exhaust(size_t block_size, size_t max_blocks, bint verify=True, bint release=True,
            size_t small_size=0, size_t max_small=0):
    """Allocate `block_size` blocks until NULL (at most max_blocks), then
    (if small_size) `small_size` blocks until NULL too; check every block's
    pattern (every page of the large ones is written, so they are resident);
    free them all if `release`; then allocate the same sizes again to show
    the heap recovered. Returns a dict: counts, errno at the first failure,
    corrupt blocks, how many of the blocks could be allocated again."""
    cdef void **ptrs = <void **>clib.calloc(max_blocks + 1, sizeof(void *))
    cdef void **small = NULL
    cdef size_t got = 0, sgot = 0, again = 0, sagain = 0, i
    cdef int err_big = 0, err_small = 0
    cdef u64 corrupt = 0
    cdef void *p
    if ptrs == NULL:
        raise MemoryError()
    if max_small:
        small = <void **>clib.calloc(max_small + 1, sizeof(void *))
        if small == NULL:
            clib.free(ptrs)
            raise MemoryError()
    with nogil:
        while got < max_blocks:
            tn_set_errno(0)
            p = capi.malloc(block_size)
            if p == NULL:
                err_big = tn_get_errno()
                break
            fill_block(p, block_size, got)
            ptrs[got] = p
            got += 1
        while small_size and sgot < max_small:
            tn_set_errno(0)
            p = capi.malloc(small_size)
            if p == NULL:
                err_small = tn_get_errno()
                break
            fill_block(p, small_size, sgot + 7)
            small[sgot] = p
            sgot += 1
        if verify:
            for i in range(got):
                if not check_block(ptrs[i], block_size, i, block_size):
                    corrupt += 1
            for i in range(sgot):
                if not check_block(small[i], small_size, i + 7, small_size):
                    corrupt += 1
        if release:
            for i in range(got):
                capi.free(ptrs[i])
            for i in range(sgot):
                capi.free(small[i])
            # The same again: everything freed must be usable once more.
            while again < got:
                p = capi.malloc(block_size)
                if p == NULL:
                    break
                fill_block(p, block_size, again)
                ptrs[again] = p
                again += 1
            while sagain < sgot:
                p = capi.malloc(small_size)
                if p == NULL:
                    break
                small[sagain] = p
                sagain += 1
            for i in range(again):
                if not check_block(ptrs[i], block_size, i, block_size):
                    corrupt += 1
                capi.free(ptrs[i])
            for i in range(sagain):
                capi.free(small[i])
    held = None
    if not release:
        held = [<uintptr_t>ptrs[i] for i in range(got)] + [<uintptr_t>small[i] for i in range(sgot)]
    clib.free(ptrs)
    clib.free(small)
    return {"blocks": got, "errno": err_big, "small_blocks": sgot, "small_errno": err_small,
            "corrupt": corrupt, "again": again, "small_again": sagain, "held": held}

# =============================================================================
# Random sequences of C API calls against a model of the live blocks.
# =============================================================================

ctypedef struct Live:
    void *p
    size_t req          # requested size
    size_t usable       # usable_size() at allocation: all of it is written
    size_t align
    u64 seed

cdef bint _overlaps(Live *live, int nlive, uintptr_t p, size_t n, int skip) noexcept nogil:
    cdef int i
    cdef uintptr_t q
    for i in range(nlive):
        if i == skip:
            continue
        q = <uintptr_t>live[i].p
        if p < q + live[i].usable and q < p + n:
            return 1
    return 0

def model_run(u64 seed, int nops, sizes, aligns, int max_live=64):
    """Run `nops` random C API calls (malloc, calloc, realloc, aligned_alloc,
    free, usable_size, and calls that must fail) with sizes drawn from
    `sizes` and alignments from `aligns`, checking each result against a
    model of the live blocks: non-NULL on success, usable_size >= request,
    alignment, no overlap with any live block, contents kept (every live
    block is filled over its whole usable size and checked on free, realloc
    and periodically), calloc memory zero, realloc keeps the prefix, errno
    on the failures. Returns (mismatches: list of str, counts: dict)."""
    cdef Py_ssize_t nsizes = len(sizes), naligns = len(aligns)
    cdef size_t *sz = <size_t *>clib.malloc((nsizes + 1) * sizeof(size_t))
    cdef size_t *al = <size_t *>clib.malloc((naligns + 1) * sizeof(size_t))
    cdef Live *live = <Live *>clib.calloc(max_live + 1, sizeof(Live))
    cdef int nlive = 0, i, j, op
    cdef u64 rng = seed
    cdef size_t n, a, u, nmemb, each, keep, total
    cdef void *p
    cdef void *q
    cdef int e
    if sz == NULL or al == NULL or live == NULL:
        clib.free(sz); clib.free(al); clib.free(live)
        raise MemoryError()
    for i in range(nsizes):
        sz[i] = sizes[i]
    for i in range(naligns):
        al[i] = aligns[i]
    bad = []
    counts = dict.fromkeys(["malloc", "calloc", "realloc", "aligned_alloc", "free",
                            "usable_size", "expected_failures", "verify_all"], 0)

    def miss(msg):
        if len(bad) < 50:
            bad.append("op %d: %s" % (k, msg))

    def admit(uintptr_t addr, size_t req, size_t align, const char *what):
        # Checks every fresh block must pass; returns its usable size or 0.
        cdef size_t us
        if addr == 0:
            miss("%s(%d) returned NULL (errno %d)" % (what.decode(), req, tn_get_errno()))
            return 0
        if addr % align:
            miss("%s(%d) = %#x not aligned to %d" % (what.decode(), req, addr, align))
        us = capi.usable_size(<void *>addr)
        if us < req or us == 0:
            miss("%s(%d) = %#x: usable_size %d < request" % (what.decode(), req, addr, us))
            us = req if req else 1
        if _overlaps(live, nlive, addr, us, -1):
            miss("%s(%d) = %#x overlaps a live block" % (what.decode(), req, addr))
        return us

    for k in range(nops):
        op = <int>(h_rand(&rng) % 100)
        if nlive >= max_live and op < 60:
            op = 60 + op % 20          # full: free or realloc instead
        if op < 25:                                            # malloc
            n = sz[h_rand(&rng) % nsizes]
            p = capi.malloc(n)
            counts["malloc"] += 1
            a = 16 if n >= 16 else 8
            u = admit(<uintptr_t>p, n, a, b"malloc")
            if u:
                live[nlive].p = p; live[nlive].req = n; live[nlive].usable = u
                live[nlive].align = a; live[nlive].seed = h_rand(&rng)
                fill_block(p, u, live[nlive].seed)
                nlive += 1
        elif op < 35:                                          # calloc
            n = sz[h_rand(&rng) % nsizes]
            nmemb = (1, 2, 3, 7, 16)[h_rand(&rng) % 5]
            each = n // nmemb if n >= nmemb else n
            total = nmemb * each
            p = capi.calloc(nmemb, each)
            counts["calloc"] += 1
            a = 16 if total >= 16 else 8
            u = admit(<uintptr_t>p, total, a, b"calloc")
            if u:
                if not h_is_zero(p, total):
                    miss("calloc(%d, %d) = %#x not zeroed" % (nmemb, each, <uintptr_t>p))
                live[nlive].p = p; live[nlive].req = total; live[nlive].usable = u
                live[nlive].align = a; live[nlive].seed = h_rand(&rng)
                fill_block(p, u, live[nlive].seed)
                nlive += 1
        elif op < 50:                                          # aligned_alloc
            n = sz[h_rand(&rng) % nsizes]
            a = al[h_rand(&rng) % naligns]
            p = capi.aligned_alloc(a, n)
            counts["aligned_alloc"] += 1
            u = admit(<uintptr_t>p, n, a, b"aligned_alloc")
            if u:
                live[nlive].p = p; live[nlive].req = n; live[nlive].usable = u
                live[nlive].align = a; live[nlive].seed = h_rand(&rng)
                fill_block(p, u, live[nlive].seed)
                nlive += 1
        elif op < 55:                                          # realloc(NULL, n)
            n = sz[h_rand(&rng) % nsizes]
            p = capi.realloc(NULL, n)
            counts["realloc"] += 1
            a = 16 if n >= 16 else 8
            u = admit(<uintptr_t>p, n, a, b"realloc(NULL)")
            if u:
                live[nlive].p = p; live[nlive].req = n; live[nlive].usable = u
                live[nlive].align = a; live[nlive].seed = h_rand(&rng)
                fill_block(p, u, live[nlive].seed)
                nlive += 1
        elif op < 75:                                          # free
            if nlive:
                j = <int>(h_rand(&rng) % nlive)
                if not check_block(live[j].p, live[j].usable, live[j].seed, live[j].usable):
                    miss("block %#x (%d bytes) corrupt before free" % (<uintptr_t>live[j].p, live[j].req))
                capi.free(live[j].p)
                counts["free"] += 1
                nlive -= 1
                live[j] = live[nlive]
            else:
                capi.free(NULL)
        elif op < 88:                                          # realloc(p, n)
            if nlive:
                j = <int>(h_rand(&rng) % nlive)
                n = sz[h_rand(&rng) % nsizes]
                if not check_block(live[j].p, live[j].usable, live[j].seed, live[j].usable):
                    miss("block %#x corrupt before realloc" % <uintptr_t>live[j].p)
                q = capi.realloc(live[j].p, n)
                counts["realloc"] += 1
                if q == NULL:
                    miss("realloc(%#x, %d) returned NULL" % (<uintptr_t>live[j].p, n))
                    continue
                keep = n if n < live[j].req else live[j].req
                if not check_block(q, live[j].usable, live[j].seed, keep):
                    miss("realloc(%#x, %d) = %#x lost the first %d bytes"
                         % (<uintptr_t>live[j].p, n, <uintptr_t>q, keep))
                # realloc(p, 0) gives a minimal block: alignment of malloc(n)
                a = 16 if n >= 16 else 8
                if <uintptr_t>q % a:
                    miss("realloc(..., %d) = %#x not aligned to %d" % (n, <uintptr_t>q, a))
                u = capi.usable_size(q)
                if u < n:
                    miss("realloc(..., %d) = %#x: usable_size %d" % (n, <uintptr_t>q, u))
                    u = n if n else 1
                if _overlaps(live, nlive, <uintptr_t>q, u, j):
                    miss("realloc(..., %d) = %#x overlaps a live block" % (n, <uintptr_t>q))
                live[j].p = q; live[j].req = n; live[j].usable = u; live[j].align = a
                live[j].seed = h_rand(&rng)
                fill_block(q, u, live[j].seed)
        elif op < 93:                                          # usable_size
            if nlive:
                j = <int>(h_rand(&rng) % nlive)
                u = capi.usable_size(live[j].p)
                counts["usable_size"] += 1
                if u != live[j].usable:
                    miss("usable_size(%#x) changed from %d to %d" % (<uintptr_t>live[j].p, live[j].usable, u))
            if capi.usable_size(NULL) != 0:
                miss("usable_size(NULL) != 0")
        elif op < 97:                                          # calls that must fail
            counts["expected_failures"] += 1
            op = <int>(h_rand(&rng) % 4)
            tn_set_errno(0)
            if op == 0:
                p = capi.aligned_alloc(24 if h_rand(&rng) & 1 else 0, 64); e = tn_get_errno()
                if p != NULL or e != EINVAL:
                    miss("aligned_alloc(non power of two) = %#x errno %d, want NULL/EINVAL" % (<uintptr_t>p, e))
            elif op == 1:
                p = capi.calloc((<size_t>1) << 40, (<size_t>1) << 30); e = tn_get_errno()
                if p != NULL or e != ENOMEM:
                    miss("calloc overflow = %#x errno %d, want NULL/ENOMEM" % (<uintptr_t>p, e))
            elif op == 2:
                p = capi.malloc((<size_t>-1) - 4096); e = tn_get_errno()
                if p != NULL or e != ENOMEM:
                    miss("malloc(SIZE_MAX-4096) = %#x errno %d, want NULL/ENOMEM" % (<uintptr_t>p, e))
            else:
                if nlive:
                    # a failed realloc leaves the block untouched
                    j = <int>(h_rand(&rng) % nlive)
                    q = capi.realloc(live[j].p, (<size_t>-1) - 4096); e = tn_get_errno()
                    if q != NULL or e != ENOMEM:
                        miss("realloc(p, SIZE_MAX-4096) = %#x errno %d, want NULL/ENOMEM" % (<uintptr_t>q, e))
                    if not check_block(live[j].p, live[j].usable, live[j].seed, live[j].usable):
                        miss("failed realloc damaged block %#x" % <uintptr_t>live[j].p)
        else:                                                  # verify every live block
            counts["verify_all"] += 1
            for j in range(nlive):
                if not check_block(live[j].p, live[j].usable, live[j].seed, live[j].usable):
                    miss("block %#x (%d bytes, usable %d) corrupt"
                         % (<uintptr_t>live[j].p, live[j].req, live[j].usable))
    for j in range(nlive):
        if not check_block(live[j].p, live[j].usable, live[j].seed, live[j].usable):
            miss("block %#x corrupt at the end" % <uintptr_t>live[j].p)
        capi.free(live[j].p)
    clib.free(sz); clib.free(al); clib.free(live)
    return bad, counts

# =============================================================================
# Short-lived threads.
# =============================================================================

ctypedef struct Churn:
    void **inherit        # blocks left by the previous batch (threads that exited)
    size_t *inherit_size
    void **leave          # blocks this thread leaves for the next batch
    size_t *leave_size
    int n_inherit
    int n_leave
    int blocks
    u64 seed
    u64 corrupt
    u64 failed

cdef void *_churn_main(void *arg) noexcept nogil:
    cdef Churn *c = <Churn *>arg
    cdef void *mine[64]
    cdef size_t msz[64]
    cdef int i, nb = c.blocks if c.blocks < 64 else 64
    cdef u64 rng = c.seed
    # Free what threads that already exited left behind.
    for i in range(c.n_inherit):
        if c.inherit[i] != NULL:
            if not check_block(c.inherit[i], c.inherit_size[i], <u64>c.inherit_size[i], c.inherit_size[i]):
                c.corrupt += 1
            capi.free(c.inherit[i])
            c.inherit[i] = NULL
    for i in range(nb):
        msz[i] = 1 + <size_t>(h_rand(&rng) % 4096)
        if h_rand(&rng) % 16 == 0:
            msz[i] = 4096 + <size_t>(h_rand(&rng) % 60000)
        mine[i] = capi.malloc(msz[i])
        if mine[i] == NULL:
            c.failed += 1
        else:
            fill_block(mine[i], msz[i], <u64>msz[i])
    for i in range(nb):
        if mine[i] == NULL:
            continue
        if not check_block(mine[i], msz[i], <u64>msz[i], msz[i]):
            c.corrupt += 1
        if i < c.n_leave:
            c.leave[i] = mine[i]
            c.leave_size[i] = msz[i]
        else:
            capi.free(mine[i])
    return NULL

def thread_churn(int total, int batch=64, int blocks=16, int leave=4, u64 seed=1):
    """Run `total` short-lived native threads, `batch` at a time. Each thread
    frees the `leave` blocks a thread of the previous batch left behind (that
    thread has exited), allocates `blocks` blocks, checks them, frees all but
    `leave`, and exits. Returns {'threads', 'corrupt', 'failed', 'create_errors'}."""
    cdef int nb = batch, i, b, started, create_err = 0, done = 0
    cdef Churn *cs
    cdef pthread_t *th
    cdef void **slots_a
    cdef void **slots_b
    cdef size_t *size_a
    cdef size_t *size_b
    cdef void **tmp
    cdef size_t *tmps
    cdef pthread_attr_t attr
    cdef u64 corrupt = 0, failed = 0
    if leave > blocks or leave < 0 or blocks > 64 or batch < 1:
        raise ValueError("need 0 <= leave <= blocks <= 64 and batch >= 1")
    cs = <Churn *>clib.calloc(nb, sizeof(Churn))
    th = <pthread_t *>clib.calloc(nb, sizeof(pthread_t))
    slots_a = <void **>clib.calloc(nb * leave + 1, sizeof(void *))
    slots_b = <void **>clib.calloc(nb * leave + 1, sizeof(void *))
    size_a = <size_t *>clib.calloc(nb * leave + 1, sizeof(size_t))
    size_b = <size_t *>clib.calloc(nb * leave + 1, sizeof(size_t))
    if not (cs and th and slots_a and slots_b and size_a and size_b):
        raise MemoryError()
    with nogil:
        pthread_attr_init(&attr)
        pthread_attr_setstacksize(&attr, 256 * 1024)   # many threads: keep stacks small
        b = 0
        while done < total:
            started = 0
            for i in range(nb):
                if done + started >= total:
                    break
                cs[i].inherit = slots_a + i * leave
                cs[i].inherit_size = size_a + i * leave
                cs[i].leave = slots_b + i * leave
                cs[i].leave_size = size_b + i * leave
                cs[i].n_inherit = leave
                cs[i].n_leave = leave
                cs[i].blocks = blocks
                cs[i].seed = seed * 7919 + <u64>(done + i)
                if pthread_create(&th[i], &attr, _churn_main, &cs[i]) != 0:
                    create_err += 1
                    break
                started += 1
            for i in range(started):
                pthread_join(th[i], NULL)
                corrupt += cs[i].corrupt
                failed += cs[i].failed
                cs[i].corrupt = 0
                cs[i].failed = 0
            # Threads not started this round leave their inherited blocks:
            # free them here so nothing leaks between batches.
            for i in range(started * leave, nb * leave):
                if slots_a[i] != NULL:
                    capi.free(slots_a[i])
                    slots_a[i] = NULL
            tmp = slots_a; slots_a = slots_b; slots_b = tmp
            tmps = size_a; size_a = size_b; size_b = tmps
            done += started
            b += 1
            if started == 0:
                break
        for i in range(nb * leave):
            if slots_a[i] != NULL:
                if not check_block(slots_a[i], size_a[i], <u64>size_a[i], size_a[i]):
                    corrupt += 1
                capi.free(slots_a[i])
        pthread_attr_destroy(&attr)
    clib.free(cs); clib.free(th); clib.free(slots_a); clib.free(slots_b)
    clib.free(size_a); clib.free(size_b)
    return {"threads": done, "corrupt": corrupt, "failed": failed, "create_errors": create_err}

# =============================================================================
# Invalid frees, for subprocess tests: each prints "ptr=0x..." on stdout
# (written straight to fd 1, so it is out before the abort) and then does
# the bad thing. Reaching the end means tcalloc did not notice.
# =============================================================================

cdef void _announce(const void *p) noexcept nogil:
    cdef char buf[64]
    cdef int n = snprintf(buf, sizeof(buf), b"ptr=%#lx\n", <unsigned long>p)
    write(1, buf, n)

INVALID_FREE_CASES = (
    "stack", "static", "libc_malloc", "interior_small", "interior_large",
    "interior_large_page", "double_free_small", "double_free_small_warm",
    "double_free_small_later", "double_free_tiny", "double_free_tiny_warm",
    "double_free_large", "double_free_large_later", "realloc_libc",
    # realloc and usable_size take a pointer too
    "usable_size_libc", "realloc_freed_small", "usable_size_freed_small",
    "realloc_interior_small", "usable_size_interior_small", "realloc_freed_large",
    "usable_size_freed_large", "realloc_interior_large", "usable_size_interior_large",
)

def invalid_free(str case):
    """Do the invalid free (or realloc, or usable_size) named `case` (see
    INVALID_FREE_CASES); returns only if tcalloc did not detect it, saying
    what happened instead for the cases the normal path lets through."""
    cdef char stack_buf[64]
    cdef void *p = NULL
    cdef void *q = NULL
    cdef void *r = NULL
    cdef void *others[8]
    cdef int i, k
    cdef size_t n
    if case not in INVALID_FREE_CASES:
        raise ValueError("unknown case %r" % case)
    if case == "stack":
        p = tn_launder(<void *>&stack_buf[16])
        _announce(p)
        capi.free(p)
    elif case == "static":
        p = tn_launder(tn_static_ptr())
        _announce(p)
        capi.free(p)
    elif case == "libc_malloc":
        p = clib.malloc(48)
        _announce(p)
        capi.free(p)
    elif case == "realloc_libc":
        p = clib.malloc(48)
        _announce(p)
        capi.realloc(p, 100)
    elif case == "usable_size_libc":
        p = clib.malloc(48)
        _announce(p)
        n = capi.usable_size(p)
    elif case == "interior_small":
        p = capi.malloc(64)
        p = <void *>(<char *>p + 16)
        _announce(p)
        capi.free(p)
        if capi.malloc(64) == p:
            return "not detected: the next malloc returned the interior pointer"
    elif case in ("realloc_freed_small", "usable_size_freed_small"):
        # a neighbour stays allocated, so the span (and its class) stays
        p = capi.malloc(64)
        others[0] = capi.malloc(64)
        capi.free(p)
        _announce(p)
        if case == "usable_size_freed_small":
            return "not detected: usable_size %d" % capi.usable_size(p)
        q = capi.realloc(p, 64)
        r = capi.malloc(64)
        if q == p and r == p:
            return "not detected: realloc returned the freed block, the next malloc returned it again"
    elif case in ("realloc_interior_small", "usable_size_interior_small"):
        p = <void *>(<char *>capi.malloc(1024) + 16)
        _announce(p)
        if case == "usable_size_interior_small":
            return "not detected: usable_size %d" % capi.usable_size(p)
        if capi.realloc(p, 1000) == p:
            return "not detected: realloc returned the interior pointer"
    elif case in ("realloc_freed_large", "usable_size_freed_large"):
        p = capi.malloc(1 << 20)
        capi.free(p)
        _announce(p)
        if case == "usable_size_freed_large":
            n = capi.usable_size(p)
        else:
            capi.realloc(p, 100)
    elif case in ("realloc_interior_large", "usable_size_interior_large"):
        p = <void *>(<char *>capi.malloc(1 << 20) + 8192)
        _announce(p)
        if case == "usable_size_interior_large":
            n = capi.usable_size(p)
        else:
            capi.realloc(p, 100)
    elif case == "interior_large":
        p = capi.malloc(1 << 20)
        p = <void *>(<char *>p + 4096 + 64)
        _announce(p)
        capi.free(p)
    elif case == "interior_large_page":
        # page-aligned interior pointer: the pagemap has an entry for it
        p = capi.malloc(1 << 20)
        p = <void *>(<char *>p + 3 * 8192)
        _announce(p)
        capi.free(p)
    elif case in ("double_free_small", "double_free_tiny"):
        # tiny: malloc(1..8) shares the 16-byte class, which has room for
        # the free-block key like any other
        n = 64 if case == "double_free_small" else 1
        p = capi.malloc(n)
        _announce(p)
        capi.free(p)
        capi.free(p)
    elif case in ("double_free_small_warm", "double_free_tiny_warm"):
        # A used size class (its thread-cache list has grown): the block is
        # still on this thread's list when it is freed again, two frees later.
        n = 64 if case == "double_free_small_warm" else 8
        for k in range(200):
            for i in range(8):
                others[i] = capi.malloc(n)
            for i in range(8):
                capi.free(others[i])
        p = capi.malloc(n)
        others[0] = capi.malloc(n)
        others[1] = capi.malloc(n)
        _announce(p)
        capi.free(p)
        capi.free(others[0])
        capi.free(others[1])
        capi.free(p)
    elif case == "double_free_small_later":
        # other frees in between: the block is no longer the list head
        p = capi.malloc(64)
        for i in range(8):
            others[i] = capi.malloc(64)
        _announce(p)
        capi.free(p)
        for i in range(8):
            capi.free(others[i])
        capi.free(p)
    elif case == "double_free_large":
        p = capi.malloc(1 << 20)
        _announce(p)
        capi.free(p)
        capi.free(p)
    elif case == "double_free_large_later":
        p = capi.malloc(1 << 20)
        for i in range(4):
            others[i] = capi.malloc((i + 1) << 19)
        _announce(p)
        capi.free(p)
        for i in range(4):
            capi.free(others[i])
        capi.free(p)
    return "not detected: %s %#x" % (case, <uintptr_t>p)


# =============================================================================
# A C caller for the heap profile tests (tests/test_heapprof.py): a plain C
# function, exported and never inlined, so a sample's native stack names it
# (dladdr finds exported symbols only) and its return address sits in it.
# =============================================================================

cdef extern from *:
    """
    __attribute__((noinline, visibility("default")))
    void *tn_hold_chain(void *(*m)(size_t), size_t n, size_t size, size_t *got) {
        void **head = NULL, **p;
        size_t i;
        for (i = 0; i < n; i++) {
            p = (void **)m(size);
            if (p == NULL) break;
            p[0] = head;
            head = p;
        }
        *got = i;
        return head;
    }
    """
    void *tn_hold_chain(void *(*m)(size_t) noexcept nogil, size_t n, size_t size,
                        size_t *got) noexcept nogil


def free_chain(uintptr_t head):
    """Free a chain from hold_chain; returns how many blocks it freed."""
    cdef void **p = <void **>head
    cdef void **nxt
    cdef size_t count = 0
    with nogil:
        while p != NULL:
            nxt = <void **>p[0]
            capi.free(p)
            p = nxt
            count += 1
    return count


def hold_chain(size_t n, size_t size):
    """n blocks of `size` bytes malloc'd from C (tn_hold_chain, through the
    capsule, GIL released), each holding the previous one's address; returns
    the head for free_chain."""
    cdef void *head
    cdef size_t got = 0
    if size < sizeof(void *):
        raise ValueError("size must hold a pointer")
    with nogil:
        head = tn_hold_chain(capi.malloc, n, size, &got)
    if got != n:
        free_chain(<uintptr_t>head)
        raise MemoryError("tcalloc's malloc returned NULL after %d blocks" % got)
    return <uintptr_t>head


# =============================================================================
# Sanitizer controls (tests/test_sanitizers.py): a deliberate bug of each
# kind, so the sanitizer leg shows its sanitizer is live in this module. In a
# normal build both are harmless: the race only miscounts, the overflow
# writes into the C library's malloc slack.
# =============================================================================

cdef long g_race_counter = 0     # deliberately unsynchronised

cdef void *_race_main(void *arg) noexcept nogil:
    global g_race_counter
    cdef int i
    for i in range(1000):
        g_race_counter = <long>tn_launder(<void *>(g_race_counter + 1))
    return NULL

def sanitizer_control(str kind):
    """'race': two threads increment a plain global (a data race for
    ThreadSanitizer); 'overflow': a one-byte write past a 24-byte block of
    the C library's malloc (a heap overflow for AddressSanitizer)."""
    cdef pthread_t th[2]
    cdef int i
    cdef void *p
    if kind == "race":
        with nogil:
            for i in range(2):
                pthread_create(&th[i], NULL, _race_main, NULL)
            for i in range(2):
                pthread_join(th[i], NULL)
        return g_race_counter
    if kind == "overflow":
        p = clib.malloc(24)
        tn_poke(p, 24)
        clib.free(p)
        return 0
    raise ValueError("kind must be 'race' or 'overflow'")
