# Heap sampling: one allocation per ~rate bytes keeps a record with its
# stacks (native return addresses and Python frames), so a live process can
# say which code holds its memory (as TCMalloc and Go's MemProfileRate do).
#
# Choosing samples. Each allocation of n bytes (as requested) is sampled
# with probability p(n) = 1 - exp(-n/rate), independently of every other:
# the byte clock of a Poisson process of mean interval `rate`, as in
# TCMalloc. A sample stands for 1/p allocations and n/p bytes (Go's and
# pprof's unsampling: count and bytes scaled by 1/(1 - exp(-size/rate))), an
# unbiased estimate whatever the sizes. Each thread's clock holds the bytes
# left to its next sample, an Exp(rate) draw; an allocation that takes it
# below zero is sampled and a fresh draw starts (memoryless, so the next
# allocation's chance is p(n) again):
#   small blocks  ThreadCache.sample_left, run down by the fast path (one
#                 subtraction and one branch in _malloc_class, _engine.pyx)
#                 and by the small slow path; off, it starts at INT64_MAX
#   otherwise     large blocks and threads without a cache (debug mode,
#                 exiting threads) run a per-thread clock in TLS.
# A sampled small block is handed out as a page of its own (a large span,
# as TCMalloc does), so its free takes the large path, where one relaxed
# load of the live-sample count decides whether to look it up: the free
# fast path is unchanged. The stand-in small block goes back to the cache.
#
# Turning sampling on or changing the rate bumps `gen` and sets every live
# cache's clock to -1 (under the registry lock: a racy store into a field
# the owner writes; a lost store is caught at the owner's next cache miss,
# which compares its generation too), so each thread's next allocation
# draws afresh.
#
# Records, the address -> record table, interned strings and the peak and
# allocation-log arrays live in mmap'd memory (records and strings from the
# metadata arena, arrays straight from the OS): never malloc, never a
# Python object. Capturing runs outside the lock with a per-thread busy
# flag, so nothing it calls can sample again.
#
# Python frames: the allocating thread's own frames, read from its thread
# state without taking the GIL and without creating frame objects (the
# frames of a thread that is in C code do not change under it, and the code
# objects and strings they name stay alive while it is there; tracemalloc
# reads the same fields). CPython 3.11-3.13 (mirrored _PyInterpreterFrame)
# and 3.10 (PyFrameObject); other versions record native stacks only.
#
# Thread safety: g_sampler.lock guards everything below except the per-thread
# state; it nests inside no engine lock and only the arena's lock nests in it.
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t, uintptr_t, INT64_MAX
from libc.string cimport memset, memcpy, memcmp

cdef extern from * nogil:
    """
    #include <execinfo.h>
    #include <math.h>
    #include <dlfcn.h>
    #if PY_VERSION_HEX >= 0x030A0000 && PY_VERSION_HEX < 0x030B0000
    #include <frameobject.h>
    #endif
    static __thread uint64_t tc_smp_rng __attribute__((tls_model("initial-exec")));
    static __thread int64_t tc_smp_left __attribute__((tls_model("initial-exec")));
    static __thread uint32_t tc_smp_gen_cache __attribute__((tls_model("initial-exec")));
    static __thread uint32_t tc_smp_gen_bytes __attribute__((tls_model("initial-exec")));
    static __thread int tc_smp_busy __attribute__((tls_model("initial-exec")));
    static inline uint64_t *tc_smp_rng_p(void) { return &tc_smp_rng; }
    static inline int64_t *tc_smp_left_p(void) { return &tc_smp_left; }
    static inline uint32_t *tc_smp_gen_cache_p(void) { return &tc_smp_gen_cache; }
    static inline uint32_t *tc_smp_gen_bytes_p(void) { return &tc_smp_gen_bytes; }
    static inline int *tc_smp_busy_p(void) { return &tc_smp_busy; }

    typedef struct { PyObject *file; PyObject *name; int line; } tc_rawframe;

    #if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
    /* CPython 3.11's _PyInterpreterFrame (Include/internal/pycore_frame.h),
     * which public headers only declare. */
    typedef struct tc_iframe311 {
        PyObject *f_func, *f_globals, *f_builtins, *f_locals;
        PyCodeObject *f_code;
        PyObject *frame_obj;
        struct tc_iframe311 *previous;
        _Py_CODEUNIT *prev_instr;
        int stacktop;
        char is_entry;
        char owner;
    } tc_iframe311;
    #elif PY_VERSION_HEX >= 0x030C0000 && PY_VERSION_HEX < 0x030E0000
    /* CPython 3.12's and 3.13's _PyInterpreterFrame (internal/pycore_frame.h)
     * up to `owner`. 3.12 calls the first field f_code and the instruction
     * pointer prev_instr (the unit before the next instruction); 3.13 calls
     * them f_executable (a code object, or None in a C-stack shim) and
     * instr_ptr (the instruction executing). Either gives the line the same
     * way, as PyUnstable_InterpreterFrame_GetLine does. Code units are 2
     * bytes (_Py_CODEUNIT, which 3.13 no longer declares in public). */
    typedef struct tc_iframe312 {
        PyObject *f_executable;
        struct tc_iframe312 *previous;
        PyObject *f_funcobj, *f_globals, *f_builtins, *f_locals;
        PyObject *frame_obj;
        uint16_t *instr;
        int stacktop;
        uint16_t return_offset;
        char owner;
    } tc_iframe312;
    #endif

    /* The calling thread's Python frames, innermost first; 0 without a
     * thread state or on a CPython whose frames we do not read. Allocates
     * nothing, takes no lock, needs no GIL (see sampler.pxi). */
    static int tc_smp_pyframes(tc_rawframe *out, int max) {
        int n = 0;
    #if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
        PyThreadState *ts = PyGILState_GetThisThreadState();
        tc_iframe311 *f;
        if (ts == NULL || ts->cframe == NULL) return 0;
        for (f = (tc_iframe311 *)ts->cframe->current_frame; f != NULL && n < max; f = f->previous) {
            PyCodeObject *co = f->f_code;
            /* incomplete: pushed, not yet started (_PyFrame_IsIncomplete) */
            if (f->owner != 1 && f->prev_instr < _PyCode_CODE(co) + co->_co_firsttraceable) continue;
            out[n].file = co->co_filename;
            out[n].name = co->co_qualname;
            out[n].line = PyCode_Addr2Line(co, (int)((f->prev_instr - _PyCode_CODE(co)) * (int)sizeof(_Py_CODEUNIT)));
            n++;
        }
    #elif PY_VERSION_HEX >= 0x030C0000 && PY_VERSION_HEX < 0x030E0000
        PyThreadState *ts = PyGILState_GetThisThreadState();
        tc_iframe312 *f;
        PyCodeObject *co;
        uint16_t *first;
        if (ts == NULL) return 0;
    #if PY_VERSION_HEX < 0x030D0000
        if (ts->cframe == NULL) return 0;
        f = (tc_iframe312 *)ts->cframe->current_frame;
    #else
        f = (tc_iframe312 *)ts->current_frame;
    #endif
        for (; f != NULL && n < max; f = f->previous) {
            /* FRAME_OWNED_BY_CSTACK: the shim an entry into the interpreter
             * pushes, not Python code */
            if (f->owner == 3 || f->f_executable == NULL || !PyCode_Check(f->f_executable)) continue;
            co = (PyCodeObject *)f->f_executable;
            first = (uint16_t *)co->co_code_adaptive;
            /* incomplete: pushed, not yet started (_PyFrame_IsIncomplete) */
            if (f->owner != 1 && f->instr < first + co->_co_firsttraceable) continue;
            out[n].file = co->co_filename;
            out[n].name = co->co_qualname;
            out[n].line = PyCode_Addr2Line(co, (int)((f->instr - first) * (int)sizeof(uint16_t)));
            n++;
        }
    #elif PY_VERSION_HEX >= 0x030A0000 && PY_VERSION_HEX < 0x030B0000
        PyThreadState *ts = PyGILState_GetThisThreadState();
        PyFrameObject *f;
        if (ts == NULL) return 0;
        for (f = ts->frame; f != NULL && n < max; f = f->f_back) {
            out[n].file = f->f_code->co_filename;
            out[n].name = f->f_code->co_name;
            out[n].line = PyFrame_GetLineNumber(f);
            n++;
        }
    #endif
        return n;
    }

    /* UTF-8 of str s into out (at most cap-1 bytes, NUL-terminated), read
     * from the string's own storage: no allocation (PyUnicode_AsUTF8 may). */
    static size_t tc_smp_utf8(PyObject *s, char *out, size_t cap) {
        size_t n = 0;
        Py_ssize_t i, len;
        int kind;
        const void *data;
        if (s == NULL || !PyUnicode_Check(s) || !PyUnicode_IS_READY(s)) { out[0] = '?'; out[1] = 0; return 1; }
        kind = PyUnicode_KIND(s);
        data = PyUnicode_DATA(s);
        len = PyUnicode_GET_LENGTH(s);
        for (i = 0; i < len; i++) {
            Py_UCS4 c = PyUnicode_READ(kind, data, i);
            if (c < 0x80) { if (n + 1 >= cap) break; out[n++] = (char)c; }
            else if (c < 0x800) { if (n + 2 >= cap) break; out[n++] = (char)(0xC0 | (c >> 6)); out[n++] = (char)(0x80 | (c & 0x3F)); }
            else if (c < 0x10000) { if (n + 3 >= cap) break; out[n++] = (char)(0xE0 | (c >> 12)); out[n++] = (char)(0x80 | ((c >> 6) & 0x3F)); out[n++] = (char)(0x80 | (c & 0x3F)); }
            else { if (n + 4 >= cap) break; out[n++] = (char)(0xF0 | (c >> 18)); out[n++] = (char)(0x80 | ((c >> 12) & 0x3F)); out[n++] = (char)(0x80 | ((c >> 6) & 0x3F)); out[n++] = (char)(0x80 | (c & 0x3F)); }
        }
        out[n] = 0;
        return n;
    }
    """
    ctypedef struct tc_rawframe:
        void *file
        void *name
        int line
    uint64_t *tc_smp_rng_p()
    int64_t *tc_smp_left_p()
    uint32_t *tc_smp_gen_cache_p()
    uint32_t *tc_smp_gen_bytes_p()
    int *tc_smp_busy_p()
    int tc_smp_pyframes(tc_rawframe *out, int max) nogil
    size_t tc_smp_utf8(void *s, char *out, size_t cap) nogil
    int backtrace(void **buf, int size) nogil
    double log(double x) nogil
    double expm1(double x) nogil
    ctypedef struct Dl_info:
        const char *dli_fname
        void *dli_fbase
        const char *dli_sname
        void *dli_saddr
    int dladdr(const void *addr, Dl_info *info) nogil

cdef enum:
    kSampleNative = 32          # native return addresses kept per sample
    kSamplePy = 48              # Python frames kept per sample
    kSampleNameMax = 512        # bytes kept of a file or function name
    kDefaultSampleRate = 2 * 1024 * 1024

ctypedef struct SampleFrame:
    const char *file            # interned, never freed
    const char *func
    int line

ctypedef struct SampleRec:
    SampleRec *next             # live list, or the free list
    SampleRec *prev
    uintptr_t addr
    uint64_t size               # bytes handed out: class size, or the large block's pages
    double weight               # allocations this sample stands for: 1 / p(size)
    uint64_t alloc_ns
    uint64_t free_ns            # 0 while live
    uint32_t refs               # live list, peak snapshot, allocation log, readers
    int nnative
    int npy
    void *native[kSampleNative]
    SampleFrame py[kSamplePy]

ctypedef struct StrEntry:
    uint64_t hash
    const char *s

ctypedef struct Sampler:
    tc_spinlock_t lock
    uint64_t rate               # bytes; 0: off
    uint64_t seed
    uint64_t threads            # RNG streams handed out since the last seed
    uint32_t gen                # bumped when the rate or the seed changes
    SampleRec *live
    uint64_t nlive              # read without the lock by the large free path
    uint64_t taken              # samples recorded since start
    SampleRec *free_recs
    SampleRec **table           # address -> record, linear probing
    size_t table_cap
    size_t table_used           # records and tombstones
    StrEntry *strs
    size_t strs_cap
    size_t strs_used
    SampleRec **peak            # the live samples when their estimate was highest
    size_t peak_n
    size_t peak_cap
    double live_estimate        # estimated bytes of the live samples' allocations
    double peak_estimate        # live_estimate at the peak snapshot
    SampleRec **log             # every sample while an allocation profile is open
    size_t log_n
    size_t log_cap
    int collectors

cdef Sampler g_sampler

cdef SampleRec *kTombstone = <SampleRec *>1

# ---- randomness --------------------------------------------------------------

cdef inline uint64_t _smp_mix(uint64_t x) noexcept nogil:
    """splitmix64's finaliser: one well-mixed word from any word."""
    x = (x ^ (x >> 30)) * <uint64_t>0xBF58476D1CE4E5B9UL
    x = (x ^ (x >> 27)) * <uint64_t>0x94D049BB133111EBUL
    return x ^ (x >> 31)

cdef double _smp_exp1() noexcept nogil:
    """An Exp(1) variate from the thread's xorshift64* stream, seeded per
    thread from the sampler's seed and the thread's turn."""
    cdef uint64_t *st = tc_smp_rng_p()
    cdef uint64_t x = st[0]
    if x == 0:
        x = _smp_mix(g_sampler.seed + 0x9E3779B97F4A7C15UL * (tc_atomic_add_u64(&g_sampler.threads, 1)))
        if x == 0:
            x = 1
    x ^= x >> 12
    x ^= x << 25
    x ^= x >> 27
    st[0] = x
    # 53 random bits in (0, 1]: log never sees 0.
    return -log(<double>(((x * <uint64_t>0x2545F4914F6CDD1DUL) >> 11) + 1) * (1.0 / 9007199254740992.0))

cdef inline int64_t _smp_draw(uint64_t rate) noexcept nogil:
    """Bytes to the next sample: Exp(rate), at least 1."""
    cdef double d = _smp_exp1() * <double>rate
    return <int64_t>d + 1 if d < 4.0e18 else <int64_t>4000000000000000000

cdef bint _smp_tick_bytes(uint64_t nbytes) noexcept nogil:
    """The per-thread byte clock: is an allocation of nbytes sampled?"""
    cdef uint64_t rate = tc_load_u64(&g_sampler.rate)
    cdef int64_t *left = tc_smp_left_p()
    cdef uint32_t gen = tc_load_u32(&g_sampler.gen)
    if rate == 0 or tc_smp_busy_p()[0]:
        return 0
    if tc_smp_gen_bytes_p()[0] != gen:
        tc_smp_gen_bytes_p()[0] = gen
        left[0] = _smp_draw(rate)
    left[0] -= <int64_t>nbytes
    if left[0] >= 0:
        return 0
    left[0] = _smp_draw(rate)
    return 1

# ---- mmap'd arrays -------------------------------------------------------------

cdef void *_smp_grow(void *old, size_t old_bytes, size_t new_bytes) noexcept nogil:
    """A zeroed mapping of new_bytes holding old's contents; old is unmapped.
    NULL (old kept) when the OS refuses."""
    cdef void *p = tc_os_map(new_bytes)
    if p == NULL:
        return NULL
    if old != NULL:
        memcpy(p, old, old_bytes)
        tc_os_unmap(old, old_bytes)
    return p

cdef bint _smp_reserve(SampleRec ***arr, size_t *cap, size_t need) noexcept nogil:
    cdef size_t n = cap[0] if cap[0] else 512
    cdef void *p
    if need <= cap[0]:
        return 1
    while n < need:
        n *= 2
    p = _smp_grow(arr[0], cap[0] * sizeof(void *), n * sizeof(void *))
    if p == NULL:
        return 0
    arr[0] = <SampleRec **>p
    cap[0] = n
    return 1

# ---- records (under g_sampler.lock) -------------------------------------------

cdef inline void _smp_unref_locked(SampleRec *r) noexcept nogil:
    r.refs -= 1
    if r.refs == 0:
        r.next = g_sampler.free_recs
        g_sampler.free_recs = r

cdef inline size_t _smp_slot(uintptr_t addr, size_t cap) noexcept nogil:
    return <size_t>(_smp_mix(addr) & (cap - 1))

cdef bint _smp_table_insert_locked(SampleRec *r) noexcept nogil:
    cdef size_t i, cap, newcap
    cdef SampleRec **old
    cdef SampleRec *e
    if (g_sampler.table_used + 1) * 2 > g_sampler.table_cap:
        # Rehash into a table sized for the live records (drops tombstones).
        newcap = 1024
        while newcap < (g_sampler.nlive + 1) * 4:
            newcap *= 2
        old = g_sampler.table
        cap = g_sampler.table_cap
        g_sampler.table = <SampleRec **>tc_os_map(newcap * sizeof(void *))
        if g_sampler.table == NULL:
            g_sampler.table = old
            return 0
        g_sampler.table_cap = newcap
        g_sampler.table_used = 0
        for i in range(cap):
            e = old[i]
            if e != NULL and e != kTombstone:
                _smp_table_insert_locked(e)
        if old != NULL:
            tc_os_unmap(old, cap * sizeof(void *))
    i = _smp_slot(r.addr, g_sampler.table_cap)
    while g_sampler.table[i] != NULL and g_sampler.table[i] != kTombstone:
        i = (i + 1) & (g_sampler.table_cap - 1)
    if g_sampler.table[i] == NULL:
        g_sampler.table_used += 1
    g_sampler.table[i] = r
    return 1

cdef SampleRec *_smp_table_take_locked(uintptr_t addr) noexcept nogil:
    """Remove and return addr's record (NULL: addr was not sampled)."""
    cdef size_t i
    cdef SampleRec *e
    if g_sampler.table_cap == 0:
        return NULL
    i = _smp_slot(addr, g_sampler.table_cap)
    while True:
        e = g_sampler.table[i]
        if e == NULL:
            return NULL
        if e != kTombstone and e.addr == addr:
            g_sampler.table[i] = kTombstone
            return e
        i = (i + 1) & (g_sampler.table_cap - 1)

cdef const char *_smp_intern_locked(void *pystr) noexcept nogil:
    """The interned UTF-8 copy of a Python str (arena memory, kept forever:
    names are few, and a record may outlive its code object)."""
    cdef char buf[kSampleNameMax]
    cdef size_t n = tc_smp_utf8(pystr, buf, kSampleNameMax)
    cdef uint64_t h = 0xCBF29CE484222325UL
    cdef size_t i, j, newcap
    cdef StrEntry *old
    cdef char *s
    for i in range(n):
        h = (h ^ <uint8_t>buf[i]) * <uint64_t>0x100000001B3UL
    if (g_sampler.strs_used + 1) * 2 > g_sampler.strs_cap:
        newcap = g_sampler.strs_cap * 2 if g_sampler.strs_cap else 4096
        old = g_sampler.strs
        g_sampler.strs = <StrEntry *>tc_os_map(newcap * sizeof(StrEntry))
        if g_sampler.strs == NULL:
            g_sampler.strs = old
            return "?"
        for i in range(g_sampler.strs_cap):
            if old[i].s != NULL:
                j = <size_t>(old[i].hash & (newcap - 1))
                while g_sampler.strs[j].s != NULL:
                    j = (j + 1) & (newcap - 1)
                g_sampler.strs[j] = old[i]
        if old != NULL:
            tc_os_unmap(old, g_sampler.strs_cap * sizeof(StrEntry))
        g_sampler.strs_cap = newcap
    i = <size_t>(h & (g_sampler.strs_cap - 1))
    while g_sampler.strs[i].s != NULL:
        if g_sampler.strs[i].hash == h and memcmp(g_sampler.strs[i].s, buf, n + 1) == 0:
            return g_sampler.strs[i].s
        i = (i + 1) & (g_sampler.strs_cap - 1)
    s = <char *>arena_alloc(&g_arena, n + 1, 16)
    if s == NULL:
        return "?"
    memcpy(s, buf, n + 1)
    g_sampler.strs[i].hash = h
    g_sampler.strs[i].s = s
    g_sampler.strs_used += 1
    return s

cdef void _smp_snapshot_peak_locked() noexcept nogil:
    """The live samples become the peak profile (references counted)."""
    cdef size_t i, n = 0
    cdef SampleRec *r
    if not _smp_reserve(&g_sampler.peak, &g_sampler.peak_cap, g_sampler.nlive):
        return
    for i in range(g_sampler.peak_n):
        _smp_unref_locked(g_sampler.peak[i])
    r = g_sampler.live
    while r != NULL:
        r.refs += 1
        g_sampler.peak[n] = r
        n += 1
        r = r.next
    g_sampler.peak_n = n

# ---- taking and dropping samples ------------------------------------------------

cdef void _smp_record(void *p, uint64_t size) noexcept nogil:
    """Record the block p of size bytes as a sample, with the calling
    thread's stacks. The caller set the busy flag."""
    cdef void *native[kSampleNative]
    cdef tc_rawframe raw[kSamplePy]
    cdef int nnative = backtrace(native, kSampleNative)
    cdef int npy = tc_smp_pyframes(raw, kSamplePy)
    cdef uint64_t rate = tc_load_u64(&g_sampler.rate)
    cdef SampleRec *r
    cdef int i
    if nnative < 0:
        nnative = 0
    tc_spinlock_lock(&g_sampler.lock)
    r = g_sampler.free_recs
    if r != NULL:
        g_sampler.free_recs = r.next
    else:
        r = <SampleRec *>arena_alloc(&g_arena, sizeof(SampleRec), 16)
    if r == NULL:
        tc_spinlock_unlock(&g_sampler.lock)
        return
    r.addr = <uintptr_t>p
    r.size = size
    # -expm1(-x) = 1 - exp(-x), exact for small x (a 16-byte block at 2 MiB).
    r.weight = 1.0 / -expm1(-<double>size / <double>rate) if rate else 1.0
    r.alloc_ns = tc_now_ns()
    r.free_ns = 0
    r.refs = 1
    r.nnative = nnative
    memcpy(r.native, native, nnative * sizeof(void *))
    r.npy = npy
    for i in range(npy):
        r.py[i].file = _smp_intern_locked(raw[i].file)
        r.py[i].func = _smp_intern_locked(raw[i].name)
        r.py[i].line = raw[i].line
    if not _smp_table_insert_locked(r):
        _smp_unref_locked(r)
        tc_spinlock_unlock(&g_sampler.lock)
        return
    r.prev = NULL
    r.next = g_sampler.live
    if r.next != NULL:
        r.next.prev = r
    g_sampler.live = r
    tc_store_u64(&g_sampler.nlive, g_sampler.nlive + 1)
    g_sampler.taken += 1
    if g_sampler.collectors and _smp_reserve(&g_sampler.log, &g_sampler.log_cap, g_sampler.log_n + 1):
        r.refs += 1
        g_sampler.log[g_sampler.log_n] = r
        g_sampler.log_n += 1
    # The peak is the highest estimate of live bytes, as TCMalloc's peak
    # tracker keeps: the committed heap stays high after frees until memory
    # is released, so its next small growth would replace the snapshot with
    # whatever is live then.
    g_sampler.live_estimate += r.size * r.weight
    if g_sampler.live_estimate > g_sampler.peak_estimate:
        g_sampler.peak_estimate = g_sampler.live_estimate
        _smp_snapshot_peak_locked()
    tc_spinlock_unlock(&g_sampler.lock)

cdef void _sampler_drop(void *p) noexcept nogil:
    """A large block is being freed: drop its record if it was sampled."""
    cdef SampleRec *r
    tc_spinlock_lock(&g_sampler.lock)
    r = _smp_table_take_locked(<uintptr_t>p)
    if r != NULL:
        if r.prev != NULL:
            r.prev.next = r.next
        else:
            g_sampler.live = r.next
        if r.next != NULL:
            r.next.prev = r.prev
        r.free_ns = tc_now_ns()
        g_sampler.live_estimate -= r.size * r.weight
        tc_store_u64(&g_sampler.nlive, g_sampler.nlive - 1)
        _smp_unref_locked(r)
    tc_spinlock_unlock(&g_sampler.lock)

cdef void *_smp_sampled_block(uint64_t size) noexcept nogil:
    """A page-backed block standing in for a sampled small one, recorded;
    NULL (errno as it was: the caller hands out its block instead) when
    there is no memory for it."""
    cdef int *busy = tc_smp_busy_p()
    cdef Span *s
    cdef void *q
    cdef int err = tc_get_errno()
    busy[0] = 1
    s = _alloc_large_span(size, 1)
    q = <void *>span_addr(s) if s != NULL else NULL
    if q != NULL:
        _smp_record(q, size)
    busy[0] = 0
    tc_set_errno(err)
    return q

cdef void *_sample_small(void *p, size_t size) noexcept nogil:
    """The calling thread's clock went below zero as its cache handed out p
    for `size` bytes: take the sample (p goes back to the cache and a page
    of its own is returned), or start the clock afresh if the rate changed."""
    cdef ThreadCache *tc = <ThreadCache *>tc_tls_owner()
    cdef uint64_t rate = tc_load_u64(&g_sampler.rate)
    cdef void *q
    if tc_smp_gen_cache_p()[0] != tc_load_u32(&g_sampler.gen):
        # A clock set to -1 by set_sample_rate: a fresh draw, counting p.
        tc_smp_gen_cache_p()[0] = tc_load_u32(&g_sampler.gen)
        tc.sample_left = _smp_draw(rate) - <int64_t>size if rate else INT64_MAX
        if tc.sample_left >= 0:
            return p
    if rate == 0 or size == 0:
        tc.sample_left = INT64_MAX if rate == 0 else _smp_draw(rate)
        return p
    tc.sample_left = _smp_draw(rate)
    if tc_smp_busy_p()[0]:
        return p
    q = _smp_sampled_block(size)
    if q == NULL:
        return p
    _free(p)
    return q

cdef void *_sample_small_uncached(void *p, size_t size) noexcept nogil:
    """The same for a thread without a cache (debug mode, thread exit): the
    per-thread TLS clock decides."""
    cdef void *q
    if not _smp_tick_bytes(size):
        return p
    q = _smp_sampled_block(size)
    if q == NULL:
        return p
    _free(p)
    return q

cdef void _sample_large(void *p, uint64_t nbytes) noexcept nogil:
    """A large block was made: sample it by the per-thread byte clock."""
    cdef int err
    if _smp_tick_bytes(nbytes):
        err = tc_get_errno()        # the record's stack walk and arrays are not the caller's
        tc_smp_busy_p()[0] = 1
        _smp_record(p, nbytes)
        tc_smp_busy_p()[0] = 0
        tc_set_errno(err)

cdef void _sampler_restart_caches(uint64_t rate) noexcept nogil:
    """Make every live cache's next allocation draw its clock afresh (see
    the header for the racy store)."""
    cdef ThreadCache *tc
    tc_spinlock_lock(&g_registry.lock)
    tc = g_registry.caches
    while tc != NULL:
        tc.sample_left = -1
        tc = tc.next
    tc_spinlock_unlock(&g_registry.lock)

# ---- the Python side (with the GIL; records are read after the lock is dropped) ----

cdef int sampler_set_rate(uint64_t rate, uint64_t seed) noexcept nogil:
    cdef void *probe[4]
    if rate:
        backtrace(probe, 4)     # its first call loads the unwinder (which mallocs): not inside the engine
    tc_spinlock_lock(&g_sampler.lock)
    g_sampler.seed = seed
    g_sampler.threads = 0
    tc_store_u64(&g_sampler.rate, rate)
    g_sampler.gen += 1
    tc_spinlock_unlock(&g_sampler.lock)
    tc_smp_rng_p()[0] = 0          # this thread reseeds first: turn 0 with a fixed seed
    _sampler_restart_caches(rate)
    return 0

cdef list _smp_take_refs(SampleRec **src, size_t n):
    """Python tuples for n records (each referenced by the caller under the
    lock), then drop the references."""
    cdef size_t i
    cdef int k
    cdef SampleRec *r
    out = []
    for i in range(n):
        r = src[i]
        native = tuple([<uintptr_t>r.native[k] for k in range(r.nnative)])
        frames = tuple([(<uintptr_t>r.py[k].file, <uintptr_t>r.py[k].func, r.py[k].line)
                        for k in range(r.npy)])
        out.append((r.size, r.weight, r.alloc_ns, tc_load_u64(&r.free_ns), native, frames))
    with nogil:
        tc_spinlock_lock(&g_sampler.lock)
        for i in range(n):
            _smp_unref_locked(src[i])
        tc_spinlock_unlock(&g_sampler.lock)
    return out

cdef list _smp_collect(int which, size_t start):
    """Records as tuples: 0 the live samples, 1 the peak snapshot, 2 the
    allocation log from `start` (which also closes that collector)."""
    cdef SampleRec **refs = NULL
    cdef size_t cap = 0, n = 0, i
    cdef SampleRec *r
    cdef bint ok = 1
    with nogil:
        tc_spinlock_lock(&g_sampler.lock)
        if which == 0:
            ok = _smp_reserve(&refs, &cap, g_sampler.nlive + 1)
            r = g_sampler.live
            while ok and r != NULL:
                r.refs += 1
                refs[n] = r
                n += 1
                r = r.next
        elif which == 1:
            ok = _smp_reserve(&refs, &cap, g_sampler.peak_n + 1)
            for i in range(g_sampler.peak_n if ok else 0):
                g_sampler.peak[i].refs += 1
                refs[n] = g_sampler.peak[i]
                n += 1
        else:
            ok = _smp_reserve(&refs, &cap, g_sampler.log_n + 1)
            for i in range(start, g_sampler.log_n if ok else start):
                g_sampler.log[i].refs += 1
                refs[n] = g_sampler.log[i]
                n += 1
            g_sampler.collectors -= 1
            if g_sampler.collectors == 0:
                for i in range(g_sampler.log_n):
                    _smp_unref_locked(g_sampler.log[i])
                g_sampler.log_n = 0
        tc_spinlock_unlock(&g_sampler.lock)
    if not ok:
        raise MemoryError("tcalloc: no memory to copy the samples")
    try:
        return _smp_take_refs(refs, n)
    finally:
        if refs != NULL:
            tc_os_unmap(refs, cap * sizeof(void *))

def _sampler_live():
    return _smp_collect(0, 0)

def _sampler_peak():
    return _smp_collect(1, 0)

def _sampler_log_open():
    """Start an allocation log; returns the position to pass to _sampler_log_close."""
    cdef size_t start
    with nogil:
        tc_spinlock_lock(&g_sampler.lock)
        g_sampler.collectors += 1
        start = g_sampler.log_n
        tc_spinlock_unlock(&g_sampler.lock)
    return start

def _sampler_log_close(size_t start):
    return _smp_collect(2, start)

def _sampler_string(uintptr_t s):
    """The interned name a frame tuple refers to."""
    return (<const char *>s).decode("utf-8", "replace")

def _sampler_symbol(uintptr_t addr):
    """(object file, symbol or None, offset) for a native return address."""
    cdef Dl_info info
    if dladdr(<void *>addr, &info) == 0:
        return ("?", None, 0)
    fname = info.dli_fname.decode("utf-8", "replace") if info.dli_fname != NULL else "?"
    if info.dli_sname == NULL:
        return (fname, None, addr - <uintptr_t>info.dli_fbase)
    return (fname, info.dli_sname.decode("utf-8", "replace"), addr - <uintptr_t>info.dli_saddr)

cdef extern from "Python.h":
    void Py_IncRef(object o)

def _sampler_python_address():
    """The address of a function of the interpreter's own (Py_IncRef): the
    object file it is in is the interpreter's, whose frames profiles fold
    into the Python ones."""
    return <uintptr_t><void *>Py_IncRef

def _sampler_info():
    return {"rate": g_sampler.rate, "live": g_sampler.nlive, "taken": g_sampler.taken,
            "peak_samples": g_sampler.peak_n, "live_estimate": g_sampler.live_estimate,
            "peak_estimate": g_sampler.peak_estimate}

cdef void sampler_reset_peak() noexcept nogil:
    """reset_peaks(): the peak profile starts over from the live samples."""
    tc_spinlock_lock(&g_sampler.lock)
    g_sampler.peak_estimate = g_sampler.live_estimate
    _smp_snapshot_peak_locked()
    tc_spinlock_unlock(&g_sampler.lock)

cdef inline void *sampler_tick_slow(ThreadCache *tc, void *p, size_t size) noexcept nogil:
    """The slow path served p: it runs the clock as the fast path does, and
    catches a clock restart that was lost."""
    if tc == NULL:
        return _sample_small_uncached(p, size) if tc_load_u64(&g_sampler.rate) else p
    if tc_smp_gen_cache_p()[0] != tc_load_u32(&g_sampler.gen):
        tc.sample_left = -1
    tc.sample_left -= <int64_t>size
    if TC_UNLIKELY(tc.sample_left < 0):
        return _sample_small(p, size)
    return p
