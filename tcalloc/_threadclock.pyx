# Per-thread CPU time and peak RSS, read by a native thread that needs no GIL.
#
# tcalloc.profile()'s own sampler is a Python thread: while other Python
# threads compete for the GIL it gets a turn only every few switch
# intervals, and a thread that starts and ends between two of its turns
# leaves no trace (Linux drops a thread's CPU figures from /proc when it
# exits, folding them into the process's). This clock runs beside it, in C:
# every `interval` it reads each thread's /proc/self/task/TID/schedstat (time
# on a CPU and time runnable but waiting for one, in ns; where the kernel has
# no schedstat, the clock-tick CPU times of .../stat, and no wait) and
# /proc/self/statm, and keeps, per thread seen, those figures when first and
# last seen, and the highest RSS. A thread born while the clock runs starts
# from zero.
#
# Linux only (it reads /proc); start() raises OSError elsewhere.
# Cost per tick: about 3 us per thread (open, read, close) plus the statm read.
from libc.stdint cimport uint64_t
from libc.stdlib cimport calloc, free, strtoull
from libc.string cimport memcpy, memset

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    ctypedef struct pthread_mutex_t:
        pass
    int pthread_create(pthread_t *thread, const void *attr, void *(*start)(void *) noexcept nogil, void *arg)
    int pthread_join(pthread_t thread, void **ret)
    int pthread_mutex_init(pthread_mutex_t *m, const void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)

cdef extern from "<dirent.h>" nogil:
    ctypedef struct DIR:
        pass
    struct dirent:
        char d_name[256]
    DIR *opendir(const char *name)
    dirent *readdir(DIR *d)
    int closedir(DIR *d)

cdef extern from "<fcntl.h>" nogil:
    int open(const char *path, int flags)
    enum: O_RDONLY

cdef extern from "<unistd.h>" nogil:
    ssize_t read(int fd, void *buf, size_t n)
    int close(int fd)
    long sysconf(int name)
    long syscall(long number, ...)
    enum: _SC_CLK_TCK
    enum: _SC_PAGESIZE

cdef extern from "<sys/syscall.h>" nogil:
    enum: SYS_gettid

cdef extern from "<stdio.h>" nogil:
    int snprintf(char *buf, size_t n, const char *fmt, ...)

cdef extern from "<time.h>" nogil:
    struct timespec:
        long tv_sec
        long tv_nsec
    int nanosleep(const timespec *req, timespec *rem)
    int clock_gettime(int clk, timespec *ts)
    enum: CLOCK_MONOTONIC


cdef inline uint64_t _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec

ctypedef struct Entry:
    int tid
    int at_start             # alive at the first tick
    uint64_t first           # CPU ns when first seen (0 if born later)
    uint64_t last            # ... when last seen
    uint64_t wait_first      # ns runnable, waiting for a CPU, when first seen
    uint64_t wait_last
    char comm[16]

ctypedef struct Clock:
    pthread_mutex_t lock     # guards everything below but `stop`
    int stop                 # read by the clock thread without the lock: atomic
    int self_tid             # the clock's own thread, left out of the table
    long interval_ns
    int schedstat            # 1: schedstat figures; 0: stat's clock ticks, no wait
    uint64_t ns_per_tick     # stat's clock tick, in ns (sysconf, read once)
    uint64_t page_size
    uint64_t ticks
    uint64_t rss_peak        # bytes
    uint64_t dropped         # threads not recorded: the table was full
    uint64_t late_ns         # summed over ticks: how much later than asked each woke up
    uint64_t sleeps
    int n
    int cap
    Entry *e
    int *slot                # open addressing on tid: index into e, or -1
    int nslot


cdef int _find(Clock *c, int tid, bint *added) noexcept nogil:
    """The entry of tid (added if absent; *added says so), or -1 when the
    table is full. Lock held."""
    cdef unsigned int h = (<unsigned int>tid * 2654435761u) & <unsigned int>(c.nslot - 1)
    while c.slot[h] >= 0:
        if c.e[c.slot[h]].tid == tid:
            return c.slot[h]
        h = (h + 1) & <unsigned int>(c.nslot - 1)
    if c.n == c.cap:
        c.dropped += 1
        return -1
    c.slot[h] = c.n
    memset(&c.e[c.n], 0, sizeof(Entry))
    c.e[c.n].tid = tid
    c.n += 1
    added[0] = True
    return c.n - 1


cdef ssize_t _read_file(const char *path, char *buf, size_t cap) noexcept nogil:
    cdef int fd = open(path, O_RDONLY)
    cdef ssize_t n
    if fd < 0:
        return -1
    n = read(fd, buf, cap - 1)
    close(fd)
    if n >= 0:
        buf[n] = 0
    return n


cdef bint _thread_schedstat(const char *s, uint64_t *cpu, uint64_t *wait) noexcept nogil:
    cdef char *end
    cpu[0] = strtoull(s, &end, 10)
    if end == s:
        return False
    wait[0] = strtoull(end, NULL, 10)
    return True


cdef bint _thread_cpu(const char *stat, uint64_t ns_per_tick, uint64_t *out) noexcept nogil:
    """utime + stime (fields 14 and 15 of /proc/.../stat), after the last ')'
    (the name in field 2 may hold spaces and parentheses)."""
    cdef const char *p = NULL
    cdef const char *q = stat
    cdef char *end
    cdef int field = 2
    cdef uint64_t ut
    while q[0]:
        if q[0] == b')':
            p = q
        q += 1
    if p == NULL:
        return False
    p += 1
    while p[0] and field < 13:      # skip to the space before field 14
        p += 1
        if p[0] == b' ':
            field += 1
    if not p[0]:
        return False
    ut = strtoull(p, &end, 10)
    if end == p:
        return False
    out[0] = (ut + strtoull(end, NULL, 10)) * ns_per_tick
    return True


cdef void _tick(Clock *c, bint first) noexcept nogil:
    cdef DIR *d
    cdef dirent *ent
    cdef char path[64]
    cdef char buf[1024]
    cdef char *endp
    cdef int tid, i
    cdef bint added
    cdef uint64_t cpu, rss, wait = 0
    cdef ssize_t n
    d = opendir(b"/proc/self/task")
    if d == NULL:
        return
    pthread_mutex_lock(&c.lock)
    while True:
        ent = readdir(d)
        if ent == NULL:
            break
        if ent.d_name[0] < b'0' or ent.d_name[0] > b'9':
            continue
        tid = <int>strtoull(ent.d_name, NULL, 10)
        if tid == c.self_tid:
            continue
        if c.schedstat:
            snprintf(path, sizeof(path), b"/proc/self/task/%d/schedstat", tid)
            if _read_file(path, buf, sizeof(buf)) <= 0 or not _thread_schedstat(buf, &cpu, &wait):
                continue             # gone since readdir
        else:
            snprintf(path, sizeof(path), b"/proc/self/task/%d/stat", tid)
            if _read_file(path, buf, sizeof(buf)) <= 0 or not _thread_cpu(buf, c.ns_per_tick, &cpu):
                continue

        added = False
        i = _find(c, tid, &added)
        if i < 0:
            continue
        if added:
            # First sight: its name, and its start value if it was already alive.
            c.e[i].at_start = first
            c.e[i].first = cpu if first else 0
            c.e[i].wait_first = wait if first else 0
            snprintf(path, sizeof(path), b"/proc/self/task/%d/comm", tid)
            n = _read_file(path, buf, sizeof(buf))
            if n > 0:
                if buf[n - 1] == b'\n':
                    buf[n - 1] = 0
                memcpy(c.e[i].comm, buf, 15)
                c.e[i].comm[15] = 0
            else:
                c.e[i].comm[0] = b'?'
        c.e[i].last = cpu
        c.e[i].wait_last = wait
    closedir(d)
    if _read_file(b"/proc/self/statm", buf, sizeof(buf)) > 0:
        strtoull(buf, &endp, 10)                     # size, then resident pages
        rss = strtoull(endp, NULL, 10) * c.page_size
        if rss > c.rss_peak:
            c.rss_peak = rss
    c.ticks += 1
    pthread_mutex_unlock(&c.lock)


cdef void *_main(void *arg) noexcept nogil:
    cdef Clock *c = <Clock *>arg
    cdef timespec ts
    cdef uint64_t t0, slept
    ts.tv_sec = c.interval_ns // 1000000000
    ts.tv_nsec = c.interval_ns % 1000000000
    pthread_mutex_lock(&c.lock)
    c.self_tid = <int>syscall(SYS_gettid)
    pthread_mutex_unlock(&c.lock)
    while not __atomic_load_int(&c.stop):
        t0 = _now_ns()
        nanosleep(&ts, NULL)
        slept = _now_ns() - t0
        # Woken late: the CPUs were busy (this thread needs no lock or GIL).
        pthread_mutex_lock(&c.lock)
        if slept > <uint64_t>c.interval_ns:
            c.late_ns += slept - <uint64_t>c.interval_ns
        c.sleeps += 1
        pthread_mutex_unlock(&c.lock)
        _tick(c, False)
    return NULL

cdef extern from *:
    """
    static inline int __atomic_load_int(int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void __atomic_store_int(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    """
    int __atomic_load_int(int *p) nogil
    void __atomic_store_int(int *p, int v) nogil


cdef class ThreadClock:
    """ThreadClock(interval_s, max_threads=16384): start() it, stop() it,
    then read threads() and rss_peak. One use; not thread-safe itself (the
    profile that owns it calls it from one thread)."""
    cdef Clock *_c
    cdef pthread_t _th
    cdef bint _started, _stopped

    def __cinit__(self, double interval_s, int max_threads=16384):
        cdef int nslot = 1
        cdef char buf[128]
        if not 0.0005 <= interval_s <= 86400.0:
            raise ValueError("interval_s must be between 0.0005 and 86400, got %r" % interval_s)
        if max_threads < 1:
            raise ValueError("max_threads must be >= 1")
        while nslot < 2 * max_threads:
            nslot <<= 1
        self._c = <Clock *>calloc(1, sizeof(Clock))
        if self._c == NULL:
            raise MemoryError()
        self._c.e = <Entry *>calloc(max_threads, sizeof(Entry))
        self._c.slot = <int *>calloc(nslot, sizeof(int))
        if self._c.e == NULL or self._c.slot == NULL:
            raise MemoryError()
        memset(self._c.slot, 0xFF, nslot * sizeof(int))      # all -1
        self._c.nslot = nslot
        self._c.cap = max_threads
        self._c.interval_ns = <long>(interval_s * 1e9)
        self._c.self_tid = -1
        self._c.schedstat = _read_file(b"/proc/self/schedstat", buf, sizeof(buf)) > 0
        self._c.ns_per_tick = 1000000000 // <uint64_t>sysconf(_SC_CLK_TCK)
        self._c.page_size = <uint64_t>sysconf(_SC_PAGESIZE)
        pthread_mutex_init(&self._c.lock, NULL)

    def __init__(self, double interval_s, int max_threads=16384):
        pass                         # __cinit__ did the work; this gives the signature

    def start(self):
        """Read every live thread now (their start values), then keep reading
        in a native thread."""
        if self._started:
            raise RuntimeError("ThreadClock already started")
        with nogil:
            _tick(self._c, True)
        if self._c.ticks == 0:
            raise OSError("cannot read /proc/self/task and /proc/self/statm")
        if pthread_create(&self._th, NULL, _main, self._c) != 0:
            raise OSError("cannot start the ThreadClock thread")
        self._started = True

    def stop(self):
        """A last reading, then the thread ends."""
        if not self._started or self._stopped:
            raise RuntimeError("ThreadClock not running")
        __atomic_store_int(&self._c.stop, 1)
        with nogil:
            pthread_join(self._th, NULL)
            _tick(self._c, False)
        self._stopped = True

    @property
    def has_wait(self):
        """True if the kernel reports time spent waiting for a CPU (schedstat)."""
        return bool(self._c.schedstat)

    @property
    def mean_lateness(self):
        """Seconds the clock's thread woke up later than asked, on average:
        how long a thread that needs only a CPU waited for one."""
        return self._c.late_ns / 1e9 / self._c.sleeps if self._c.sleeps else 0.0

    @property
    def ticks(self):
        return self._c.ticks

    @property
    def rss_peak(self):
        """The highest RSS read, in bytes."""
        return self._c.rss_peak

    @property
    def dropped(self):
        """Threads seen but not recorded (more than max_threads)."""
        return self._c.dropped

    @property
    def clock_thread_id(self):
        """The native id of the clock's own thread (-1 before it ran)."""
        return self._c.self_tid

    def threads(self):
        """[(native id, comm, alive at start, CPU seconds, seconds runnable
        but waiting for a CPU)] while the clock ran, for every thread seen
        (the clock's own left out)."""
        cdef int i, n
        cdef Entry *copy
        # Copied under the lock, turned into objects after it (a Python
        # allocation may run the GC, and with it anything).
        with nogil:
            pthread_mutex_lock(&self._c.lock)
            n = self._c.n
            copy = <Entry *>calloc(n if n else 1, sizeof(Entry))
            if copy != NULL:
                memcpy(copy, self._c.e, n * sizeof(Entry))
            pthread_mutex_unlock(&self._c.lock)
        if copy == NULL:
            raise MemoryError()
        try:
            return [(copy[i].tid, (<char *>copy[i].comm).decode("utf-8", "replace"),
                     bool(copy[i].at_start),
                     (copy[i].last - copy[i].first) / 1e9,
                     (copy[i].wait_last - copy[i].wait_first) / 1e9)
                    for i in range(n)]
        finally:
            free(copy)

    def __dealloc__(self):
        if self._c == NULL:
            return
        if self._started and not self._stopped:
            __atomic_store_int(&self._c.stop, 1)
            with nogil:
                pthread_join(self._th, NULL)
        pthread_mutex_destroy(&self._c.lock)
        free(self._c.e)
        free(self._c.slot)
        free(self._c)
