# Buffer objects backed by tcalloc, and a recycling pool of them.
#
# The engine is reached only through its public C API (the capsule
# tcalloc._C_API, tcalloc.h), like any third-party extension would.
#
# Thread-safety: BufferPool guards its state with a C lock, so it is safe from
# any thread, with or without the GIL (free-threaded builds too) and from a
# Buffer finaliser. Buffer methods that change a buffer's block or export count
# run in a critical section on the buffer (a no-op with a GIL, a per-object
# lock on free-threaded builds), so two threads releasing the same buffer
# cannot both free it.
cimport cython
from cpython.buffer cimport PyBUF_FORMAT, PyBUF_ND, PyBUF_STRIDES
from libc.stdint cimport uintptr_t, uint64_t
from libc.string cimport memset, memcpy

from tcalloc.capi cimport TcallocCAPI, TcallocCAPI_Import
from tcalloc.common cimport (tc_spinlock_t, tc_spinlock_init, tc_spinlock_lock,
                             tc_spinlock_unlock, tc_spinlock_reset, tc_load_u64,
                             tc_atomic_add_u64)

import operator as _operator
import os as _os
import weakref as _weakref

# fork(): a pool lock held by another thread at that moment would stay held
# in the child, whose copy of that thread is gone; the child resets them.
# (With the GIL no pool lock is held across a GIL release, so a Python-level
# os.fork() cannot catch one held; a fork from native code, or a
# free-threaded build, can.)
_live_pools = _weakref.WeakSet()

# tcalloc refuses a larger block at once: a pool with max_bytes checks a
# request against it before it frees idle blocks to make room for it.
from tcalloc._engine import _MAX_ALLOC_BYTES
cdef size_t _max_block = _MAX_ALLOC_BYTES


# Lock counters of pools that are gone, so that the total over every pool
# (_pool_lock_totals, which profile() reports as "buffer_pool") never goes
# back. Added to with atomic adds: on a free-threaded build two pools may
# be deallocated at once.
cdef uint64_t _closed_lock[4]


def _pool_lock_totals():
    """The lock counters summed over every BufferPool made in this process:
    a dict like the entries of tcalloc.stats()['locks']."""
    cdef BufferPool pool
    cdef uint64_t t[4]
    cdef int i
    for i in range(4):
        t[i] = tc_load_u64(&_closed_lock[i])
    for pool in list(_live_pools):
        if pool._lock != NULL:
            t[0] += tc_load_u64(&pool._lock.acquisitions)
            t[1] += tc_load_u64(&pool._lock.contended)
            t[2] += tc_load_u64(&pool._lock.spins)
            t[3] += tc_load_u64(&pool._lock.wait_ns)
    return {"acquisitions": t[0], "contended": t[1], "spins": t[2], "wait_ns": t[3]}


def _reset_pool_locks_after_fork():
    cdef BufferPool pool
    for pool in list(_live_pools):
        if pool._lock != NULL:
            tc_spinlock_reset(pool._lock)
        # Acquires under way in other threads never finish in the child:
        # their reservations would hold part of max_bytes for good.
        pool._reserved = 0


if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=_reset_pool_locks_after_fork)

cdef extern from "Python.h":
    # Declared without an exception clause: overflow is handled by the caller.
    Py_ssize_t _long_as_ssize "PyLong_AsSsize_t" (object)
    bint PyLong_CheckExact(object)
    void PyErr_Clear()
    void *PyErr_Occurred()
    const Py_ssize_t PY_SSIZE_T_MAX
    # A call and a flag test while tracemalloc is not tracing.
    int PyTraceMalloc_Track(unsigned int domain, uintptr_t ptr, size_t size)
    int PyTraceMalloc_Untrack(unsigned int domain, uintptr_t ptr)

cdef TcallocCAPI *_tc = TcallocCAPI_Import()
cdef char *_FORMAT_B = b"B"

_DEFAULT_BUFFER_SIZE = 65536
cdef Py_ssize_t _DEFAULT_CACHED_BYTES = 16 << 20   # idle bytes a pool keeps by default
cdef Py_ssize_t _MAX_ALIGNMENT = 1 << 30

# ---- tracemalloc ------------------------------------------------------------
#
# Buffer memory comes from tcalloc's C API, not from the interpreter's
# allocator, so tracemalloc would not see it: it is reported to tracemalloc
# under a domain of its own (as NumPy does for array data), with the
# traceback of the code that allocated it. Traced: a Buffer's bytes (its
# length) from alloc() to release; a pooled buffer's block (what the pool's
# bytes_allocated() counts) from acquire() to release. Idle blocks a pool
# keeps are the pool's, not any line's, and are not traced.
TRACEMALLOC_DOMAIN = 0x7463616C          # "tcal"
cdef unsigned int _TRACE_DOMAIN = TRACEMALLOC_DOMAIN

cdef inline void _trace(void *p, size_t n) noexcept:
    PyTraceMalloc_Track(_TRACE_DOMAIN, <uintptr_t>p, n)   # -2 (not tracing) or -1: nothing to do

cdef inline void _untrace(void *p) noexcept:
    PyTraceMalloc_Untrack(_TRACE_DOMAIN, <uintptr_t>p)


# ---- argument checks ---------------------------------------------------------
#
# Sizes and counts are integers (int or anything with __index__) but never
# bool: alloc(True) is a flag passed where a size belongs. Flags are bools
# only: zero='no' or zero=1 are mistakes, not requests to zero.

cdef object _as_int(object v, str what):
    """v as a Python int; TypeError for bool and non-integers."""
    if isinstance(v, bool) or not hasattr(type(v), "__index__"):
        raise TypeError(f"{what} must be an integer, not {type(v).__name__}")
    return _operator.index(v)


cdef object _as_nonneg(object v, str what):
    """v as a Python int >= 0: TypeError, ValueError (negative)."""
    v = _as_int(v, what)
    if v < 0:
        raise ValueError(f"{what} must be >= 0, got {v}")
    return v


cdef Py_ssize_t _as_size_slow(object size, str what) except -1:
    v = _as_nonneg(size, what)
    if v > PY_SSIZE_T_MAX:
        raise MemoryError(f"cannot allocate {_human(v)} ({v} bytes): more than the address space")
    return v


cdef inline Py_ssize_t _as_size(object size, str what) except -1:
    """An allocation size as a Py_ssize_t: TypeError, ValueError (negative),
    MemoryError (more than the address space)."""
    cdef Py_ssize_t n
    if PyLong_CheckExact(size):
        n = _long_as_ssize(size)
        if n >= 0:
            return n
        PyErr_Clear()          # OverflowError, or just negative: the slow path says which
    return _as_size_slow(size, what)


cdef Py_ssize_t _as_setting(object value, str what) except -1:
    """A pool setting (bytes or a count): as _as_size, but a value past
    2**63-1 is a ValueError: nothing is allocated yet."""
    v = _as_nonneg(value, what)
    if v > PY_SSIZE_T_MAX:
        raise ValueError(f"{what} must be at most {PY_SSIZE_T_MAX}, got {v}")
    return v


cdef inline bint _as_flag(object flag, str what) except -1:
    if flag is True:
        return 1
    if flag is False:
        return 0
    raise TypeError(f"{what} must be True or False, not {type(flag).__name__}")


cdef size_t _as_alignment(object alignment) except? 0:
    if alignment is None:
        return 0
    a = _as_int(alignment, "alignment")
    if a <= 0 or (a & (a - 1)) != 0:
        raise ValueError(f"alignment must be a power of two, got {a}")
    if a > _MAX_ALIGNMENT:
        raise ValueError(f"alignment must be at most {_MAX_ALIGNMENT} (1 GiB), got {a}")
    return <size_t>a


# ---- MemoryError messages ------------------------------------------------------

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
cdef Py_ssize_t _PAGE_SIZE = 8192     # the engine's page: spans come in whole pages


def _human(n):
    """A byte count for a message: '100 bytes', '1.5 MiB'."""
    if n < 1024:
        return f"{n} bytes"
    v = n / 1024.0
    for unit in _UNITS:         # (no negative indexing: wraparound is off)
        if v < 1024.0 or unit == "EiB":
            break
        v /= 1024.0
    return f"{v:.1f} {unit}"


def _hard_limit():
    """tcalloc's hard memory limit in bytes, or 0. get_memory_limit() returns
    (nbytes, hard) with nbytes 0 for none, or (newer engines) None."""
    import tcalloc
    lim = tcalloc.get_memory_limit()
    if lim is None:
        return 0
    nbytes, hard = lim
    return nbytes if hard else 0


def _pages_needed(n, align):
    """Bytes of new span the engine must commit to serve this request."""
    import tcalloc
    need = n + (align if align > 16 else 0)
    cl, _ = tcalloc.size_class_of(n) if not align else (0, 0)
    if cl:
        need = max(need, tcalloc.size_class_table()[cl - 1][2] * _PAGE_SIZE)
    return -(-need // _PAGE_SIZE) * _PAGE_SIZE


def _nomem_message(n, align):
    size = _human(n)
    exact = f" ({n} bytes)" if n >= 1024 else ""
    aligned = f" aligned to {align}" if align else ""
    try:
        if n > _MAX_ALLOC_BYTES:
            return (f"cannot allocate {size}{exact}{aligned}: more than tcalloc's largest "
                    f"block ({_human(_MAX_ALLOC_BYTES)})")
        limit = _hard_limit()
        if limit:
            import tcalloc
            s = tcalloc.stats()
            committed = s["heap_bytes"] - s["page_heap_released_bytes"]
            if committed + _pages_needed(n, align) > limit:
                return (f"cannot allocate {size}{aligned}: tcalloc's hard memory limit of "
                        f"{_human(limit)} is reached ({_human(committed)} committed)")
            return (f"cannot allocate {size}{exact}{aligned}; tcalloc's hard memory limit of "
                    f"{_human(limit)} is not reached ({_human(committed)} committed)")
        return f"cannot allocate {size}{exact}{aligned}: the operating system refused the memory"
    except Exception:
        pass            # no memory left for the details either: say what failed
    return f"cannot allocate {size}{exact}{aligned}"


cdef object _nomem(Py_ssize_t n, size_t align):
    # Only on the failure path: looks up the limit and the heap's figures.
    return MemoryError(_nomem_message(n, align))


cdef inline void *_raw_alloc(Py_ssize_t n, bint zero, size_t align) noexcept nogil:
    cdef void *p
    if align:
        p = _tc.aligned_alloc(align, <size_t>n)
        if p != NULL and zero:
            memset(p, 0, <size_t>n)
        return p
    if zero:
        return _tc.calloc(1, <size_t>n)
    return _tc.malloc(<size_t>n)


# ---- Buffer ------------------------------------------------------------------

# no_gc_clear: a pooled buffer referenced from a reference cycle is freed by
# the cyclic GC, which calls tp_clear on every object of the garbage before
# the last reference goes. A generated tp_clear would set _pool to None
# first, and __dealloc__ would then free the block to tcalloc without giving
# it back to the pool's accounting (with max_bytes, capacity leaked for
# good). The pool reference is still reported by tp_traverse, so a cycle
# through a pool (a subclass with a __dict__ holding its buffers) is still
# found and broken at the pool; a Buffer holds no other object, so it never
# needs to be the one that breaks a cycle.
@cython.no_gc_clear
@cython.freelist(32)
@cython.embedsignature(False)
cdef class Buffer:
    """Buffer(size, *, zero=False, alignment=None)
--

A block of tcalloc memory exposed through the writable buffer protocol.

    ``Buffer(size, *, zero=False, alignment=None)`` is the same as
    :func:`tcalloc.alloc`. The buffer is one-dimensional, contiguous, format
    ``'B'``: ``memoryview(buf)``, ``numpy.frombuffer(buf, ...)``,
    ``sock.recv_into(buf)`` and ``f.readinto(buf)`` use it without a copy.

    The block is freed by :meth:`release`, by leaving a ``with`` block, or by
    the finaliser when the object is collected. While a memoryview (or any
    other export) of it is alive, ``release()`` and ``resize()`` raise
    ``BufferError``, as ``bytearray`` does. A released buffer raises
    ``ValueError`` on use. A buffer from a :class:`BufferPool` goes back to
    its pool instead of being freed.

    Thread-safety: safe to share between threads; release and resize are
    atomic with respect to each other and to new exports.
    """

    def __init__(self, size, *, zero=False, alignment=None):
        # The arguments first: their __index__ / __bool__ is Python code,
        # which could call __init__ on this buffer itself. The check and the
        # fill then follow with no Python code between them.
        cdef Py_ssize_t n = _as_size(size, "size")
        cdef bint z = _as_flag(zero, "zero")
        cdef size_t align = _as_alignment(alignment)
        if self._ptr != NULL or self._pool is not None:
            raise TypeError("Buffer.__init__ called on a buffer that already holds memory")
        _fill(self, n, z, align)

    cdef int _check(self) except -1:
        if self._ptr == NULL:
            raise ValueError("operation on a released tcalloc.Buffer")
        return 0

    cdef int _free_now(self) except -1:
        """Give the block back (to the pool or to tcalloc). Caller checked exports."""
        cdef void *p = self._ptr
        cdef BufferPool pool = self._pool
        self._ptr = NULL
        self._size = 0
        if p != NULL:
            _untrace(p)
        if pool is not None:
            self._pool = None
            pool._put(p, self._block)
        elif p != NULL:
            _tc.free(p)
        return 0

    def __dealloc__(self):
        # No export can be alive here: every export holds a reference.
        cdef void *p = self._ptr
        if p == NULL:
            return
        self._ptr = NULL
        _untrace(p)
        if self._pool is not None:
            self._pool._put(p, self._block)
        else:
            _tc.free(p)

    def __len__(self):
        self._check()
        return self._size

    @property
    def address(self):
        """The address of the first byte, as an int."""
        self._check()
        return <uintptr_t>self._ptr

    @property
    def capacity(self):
        """Usable bytes of the underlying block (>= len(buf))."""
        # Under the buffer's lock, as release() and resize() take it: on a
        # free-threaded build the block could otherwise be freed between the
        # check and the read of its size (an abort in usable_size).
        cdef size_t cap
        with cython.critical_section(self):
            self._check()
            cap = _tc.usable_size(self._ptr)
        return cap

    @property
    def released(self):
        """True once the memory has been given back."""
        return self._ptr == NULL

    @property
    def pool(self):
        """The BufferPool this buffer returns to, or None."""
        return self._pool

    def release(self):
        """Free the memory now (or return it to its pool). Idempotent.

        Raises BufferError while a memoryview or other export is alive.
        """
        with cython.critical_section(self):
            if self._ptr != NULL:
                if self._exports:
                    raise BufferError(
                        f"cannot release a tcalloc.Buffer while {self._exports} export(s) "
                        f"of it (memoryview, numpy array, ...) are alive")
                self._free_now()

    def resize(self, size):
        """Change the length to ``size`` bytes, keeping the contents up to the
        smaller of the two lengths (realloc). Bytes added are zero if the
        buffer was created with ``zero=True``, unspecified otherwise; the
        alignment asked for is kept. Raises BufferError while an export is
        alive, MemoryError if the memory cannot be had (the buffer is then
        unchanged), TypeError/ValueError for a size as ``alloc`` does."""
        cdef Py_ssize_t n = _as_size(size, "size")
        with cython.critical_section(self):
            self._check()
            if self._exports:
                raise BufferError(
                    f"cannot resize a tcalloc.Buffer while {self._exports} export(s) "
                    f"of it (memoryview, numpy array, ...) are alive")
            _resize(self, n)

    def __enter__(self):
        self._check()
        return self

    def __exit__(self, *exc):
        self.release()
        return False

    def __getbuffer__(self, Py_buffer *view, int flags):
        with cython.critical_section(self):
            self._check()
            self._exports += 1
        view.buf = self._ptr
        view.obj = self
        view.len = self._size
        view.readonly = 0
        view.itemsize = 1
        view.format = NULL
        if (flags & PyBUF_FORMAT) == PyBUF_FORMAT:
            view.format = _FORMAT_B
        view.ndim = 1
        # shape/strides point into the object: they stay valid because the
        # buffer cannot be resized or released while this export is alive.
        view.shape = &self._size if (flags & PyBUF_ND) == PyBUF_ND else NULL
        view.strides = &self._itemsize if (flags & PyBUF_STRIDES) == PyBUF_STRIDES else NULL
        view.suboffsets = NULL
        view.internal = NULL

    def __releasebuffer__(self, Py_buffer *view):
        with cython.critical_section(self):
            self._exports -= 1

    def __reduce__(self):
        # Pickles by value; the copy is an ordinary (unpooled) Buffer.
        self._check()
        return (_from_bytes, (bytes(self), self._zero, self._align or None))

    def __repr__(self):
        cdef uintptr_t addr
        cdef size_t cap = 0
        cdef Py_ssize_t size
        with cython.critical_section(self):     # see capacity
            addr = <uintptr_t>self._ptr
            size = self._size
            if addr:
                cap = _tc.usable_size(self._ptr)
        if not addr:
            return "<tcalloc.Buffer released>"
        return (f"<tcalloc.Buffer size={size} capacity={cap} "
                f"address={addr:#x}{' pooled' if self._pool is not None else ''}>")


cdef int _fill(Buffer b, Py_ssize_t n, bint zero, size_t align) except -1:
    cdef void *p = _raw_alloc(n, zero, align)
    if p == NULL:
        raise _nomem(n, align)
    b._ptr = <char *>p
    b._size = n
    b._itemsize = 1
    b._align = align
    b._zero = zero
    _trace(p, <size_t>n)
    return 0


cdef int _resize(Buffer b, Py_ssize_t n) except -1:
    cdef Py_ssize_t old = b._size
    cdef size_t cap = _tc.usable_size(b._ptr)
    cdef void *q
    if n == old:
        return 0
    if b._pool is not None:
        # Past the block the pool counts, even inside its capacity (the size
        # class's rounding): a pool counts what its buffers hold, so that
        # max_bytes bounds the bytes its buffers can reach.
        if n > b._block:
            b._pool._grow(b, n)      # accounts, reallocs, or raises
    elif b._align:
        if <size_t>n > cap:
            q = _tc.aligned_alloc(b._align, <size_t>n)
            if q == NULL:
                raise _nomem(n, b._align)
            memcpy(q, b._ptr, <size_t>old)
            _untrace(b._ptr)
            _tc.free(b._ptr)
            b._ptr = <char *>q
    else:
        q = _tc.realloc(b._ptr, <size_t>n)
        if q == NULL:
            raise _nomem(n, 0)
        if q != b._ptr:
            _untrace(b._ptr)
        b._ptr = <char *>q
    if b._zero and n > old:
        memset(b._ptr + old, 0, <size_t>(n - old))
    b._size = n
    if b._pool is None:
        _trace(b._ptr, <size_t>n)         # the new length (and address, if moved)
    return 0


def _from_bytes(data, zero, alignment):
    # Sized by the buffer it copies, not by len(data): an object whose
    # __len__ says less than its buffer holds would overrun the block.
    cdef const unsigned char[::1] src = data
    cdef Buffer b = alloc(src.shape[0], zero=zero, alignment=alignment)
    if src.shape[0]:
        memcpy(b._ptr, &src[0], <size_t>src.shape[0])
    return b


def alloc(size, *, zero=False, alignment=None):
    """Allocate ``size`` bytes from tcalloc and return them as a :class:`Buffer`.

    ``zero=True`` gives zeroed memory (free for fresh pages). ``alignment``
    (a power of two, up to 1 GiB) aligns the first byte; by default blocks of
    16 bytes or more are 16-byte aligned. Raises TypeError for a size or
    alignment that is not an integer (bool included) and for a ``zero`` that
    is not True or False, ValueError for a negative size or a bad alignment,
    MemoryError when the memory cannot be had (naming tcalloc's hard memory
    limit and the committed heap when that limit is why). Thread-safe; the
    allocation itself takes no lock on the fast path.
    """
    cdef Py_ssize_t n = _as_size(size, "size")
    cdef bint z = _as_flag(zero, "zero")
    cdef size_t align = 0 if alignment is None else _as_alignment(alignment)
    cdef Buffer b = Buffer.__new__(Buffer)
    _fill(b, n, z, align)
    return b


# ---- BufferPool --------------------------------------------------------------

@cython.embedsignature(False)
cdef class BufferPool:
    """BufferPool(buffer_size=65536, *, max_bytes=None, zero=False, max_cached=None)
--

A thread-safe pool of tcalloc buffers of ``buffer_size`` bytes.

    ``acquire(size=None)`` hands out a :class:`Buffer` of ``size`` bytes
    (``buffer_size`` by default) backed by a block of at least
    ``buffer_size`` bytes; ``buf.release()`` or leaving ``with buf:`` gives
    it back, and the block is kept for the next ``acquire`` (up to
    ``max_cached`` idle blocks; larger requests get a block of their own
    that is freed on release, unless tcalloc's size class for it is
    ``buffer_size``'s). A block is never recycled while a memoryview
    of it is alive: ``release()`` raises ``BufferError`` then.

    ``max_bytes`` bounds the bytes handed out (and, with the idle blocks, what
    the pool holds): ``acquire`` past it raises ``MemoryError`` naming the
    limit and the current use, and leaves buffers already out untouched. A
    buffer counts its block, or the largest length ``resize()`` gave it if
    more (also when that fits in the block's capacity), so a grow past the
    limit raises the same way and leaves the buffer as it was.
    ``zero=True`` zeroes every buffer handed out.

    Accounting follows pyarrow's ``MemoryPool``: ``bytes_allocated()``,
    ``max_memory()``, ``total_bytes_allocated()``, ``num_allocations()``,
    ``release_unused()``, ``backend_name``. Only what was handed out counts:
    a refused acquire or grow counts nothing, and a buffer freed by the
    garbage collector (inside a reference cycle too) comes back exactly as
    if released. ``get_buffer(sizehint)`` serves ``asyncio.BufferedProtocol``.

    Thread-safety: every method may be called from any thread at once; the
    state is under a C lock (not the GIL), so free-threaded builds are safe.
    """
    # The lock is a spinlock and not reentrant, and a Buffer's finaliser
    # takes it (Buffer.__dealloc__ -> _put). Any allocation of a container
    # object may run the cyclic GC, which may finalise a pooled buffer of
    # this pool in the same thread: so no Python object is made, and no
    # Python code runs, while the lock is held.

    def __cinit__(self, *args, **kwargs):
        # Only the lock, so that a subclass's constructor may take arguments
        # of its own: the settings are __init__'s.
        self._lock = <tc_spinlock_t *>_tc.aligned_alloc(64, sizeof(tc_spinlock_t))
        if self._lock == NULL:
            raise MemoryError("tcalloc: cannot allocate the pool's lock")
        tc_spinlock_init(self._lock)
        _live_pools.add(self)

    def __init__(self, buffer_size=_DEFAULT_BUFFER_SIZE, *, max_bytes=None, zero=False,
                 max_cached=None):
        cdef Py_ssize_t bs, mc, limit = -1
        cdef bint z
        # The arguments are converted first (their __index__ is Python code,
        # which could call __init__ on this pool itself); the once-only check
        # and the allocation then follow with no Python code between them.
        v = _as_int(buffer_size, "buffer_size")
        if v <= 0:
            raise ValueError(f"buffer_size must be > 0, got {v}")
        bs = _as_setting(v, "buffer_size")
        z = _as_flag(zero, "zero")
        if max_bytes is not None:
            limit = _as_setting(max_bytes, "max_bytes")
        if max_cached is None:
            mc = _DEFAULT_CACHED_BYTES // bs
            mc = 4 if mc < 4 else (1024 if mc > 1024 else mc)
        else:
            mc = _as_setting(max_cached, "max_cached")
            if mc > (1 << 24):
                raise ValueError(f"max_cached must be at most {1 << 24}, got {mc}")
        if self._cache != NULL:
            raise TypeError("BufferPool.__init__ may be called only once")
        self._cache = <void **>_tc.malloc(<size_t>(mc if mc else 1) * sizeof(void *))
        if self._cache == NULL:
            raise MemoryError("tcalloc: cannot allocate the pool's bookkeeping")
        self._limit = limit
        self.buffer_size = bs
        self.max_cached = mc
        self.zero = z

    cdef int _check_init(self) except -1:
        if self._cache == NULL:
            raise TypeError(f"{type(self).__name__}: BufferPool.__init__ was not called "
                            "(a subclass's __init__ must call super().__init__(...))")
        return 0

    def __dealloc__(self):
        # Buffers out hold a reference to the pool, so none is out now.
        cdef Py_ssize_t i
        if self._cache != NULL:
            for i in range(self._ncached):
                _tc.free(self._cache[i])
            _tc.free(self._cache)
        if self._lock != NULL:
            tc_atomic_add_u64(&_closed_lock[0], self._lock.acquisitions)
            tc_atomic_add_u64(&_closed_lock[1], self._lock.contended)
            tc_atomic_add_u64(&_closed_lock[2], self._lock.spins)
            tc_atomic_add_u64(&_closed_lock[3], self._lock.wait_ns)
            _tc.free(self._lock)

    @property
    def max_bytes(self):
        """The limit on bytes handed out, or None."""
        return None if self._limit < 0 else self._limit

    @property
    def backend_name(self):
        """The allocator behind the pool: ``"tcalloc"`` (pyarrow's name)."""
        return "tcalloc"

    def acquire(self, size=None):
        """A Buffer of ``size`` bytes (default ``buffer_size``), recycled when possible.

        Give it back with ``buf.release()`` or ``with pool.acquire() as buf:``.
        Raises MemoryError past ``max_bytes`` or when tcalloc has no memory
        (nothing is then counted as handed out; with ``max_bytes`` set, idle
        blocks the pool freed to make room within it stay freed), TypeError
        for a non-integer size, ValueError for a negative one.
        """
        self._check_init()
        return self._acquire(self.buffer_size if size is None else _as_size(size, "size"))

    def get_buffer(self, sizehint=-1):
        """``asyncio.BufferedProtocol.get_buffer``: a Buffer of ``buffer_size``
        bytes, or of ``sizehint`` bytes if that is larger. -1 (what asyncio
        passes), 0 or None: any size, so ``buffer_size``."""
        cdef Py_ssize_t h
        self._check_init()
        if sizehint is None:
            return self._acquire(self.buffer_size)
        if PyLong_CheckExact(sizehint):      # fast path: asyncio calls this per read
            h = _long_as_ssize(sizehint)
            if h >= -1 and not (h == -1 and PyErr_Occurred() != NULL):
                return self._acquire(self.buffer_size if h <= self.buffer_size else h)
            PyErr_Clear()
        hint = _as_int(sizehint, "sizehint")
        if hint < -1:
            raise ValueError(f"sizehint must be -1 (any size) or >= 0, got {hint}")
        if hint <= self.buffer_size:
            return self._acquire(self.buffer_size)
        return self._acquire(_as_size(hint, "sizehint"))

    # Accounting. bytes_allocated() and the figures derived from it count
    # only what was handed out: an acquire or grow first reserves its bytes
    # (when there is a limit, so that racing threads cannot pass it
    # together), asks tcalloc outside the lock, then either commits the
    # reservation or drops it. A refused request leaves no trace.

    cdef int _refuse(self, Py_ssize_t nbytes, Py_ssize_t grown_from) except -1:
        """Raise the pool-limit MemoryError for an acquire of nbytes (or a grow
        to nbytes from grown_from > 0). Called with the lock held; unlocks
        before making any Python object (see the class comment)."""
        cdef Py_ssize_t used = self._out_bytes, count = self._out_count
        cdef Py_ssize_t pending = self._reserved, limit = self._limit
        tc_spinlock_unlock(self._lock)
        doing = (f"growing a buffer of {grown_from} bytes to" if grown_from
                 else "acquiring")
        raise MemoryError(
            f"BufferPool limit reached: {doing} {nbytes} bytes would exceed "
            f"max_bytes={limit}; {used} bytes are in use in {count} buffer(s)"
            + (f" and {pending} bytes are being acquired" if pending else ""))

    @cython.nonecheck(False)     # self is never None in a method; nogil needs no check
    cdef void _trim_to_limit(self) noexcept nogil:
        """Free idle blocks until what the pool holds (out + under way + idle)
        is within max_bytes (lock held, a limit set)."""
        while self._ncached and self._out_bytes + self._reserved + \
                self._ncached * self.buffer_size > self._limit:
            self._ncached -= 1
            _tc.free(self._cache[self._ncached])

    @cython.nonecheck(False)     # self is never None in a method; nogil needs no check
    cdef void _commit(self, Py_ssize_t nbytes) noexcept nogil:
        """Count nbytes as handed out (lock held)."""
        self._out_bytes += nbytes
        if self._out_bytes > self._peak:
            self._peak = self._out_bytes
        self._total_bytes += nbytes

    @cython.nonecheck(False)     # self is never None in a method; nogil needs no check
    cdef void _commit_acquire(self, Py_ssize_t block, bint fresh) noexcept nogil:
        """Count a successful acquire of a block (lock held)."""
        self._commit(block)
        self._out_count += 1
        self._nacquire += 1
        self._nfresh += fresh

    cdef Buffer _acquire(self, Py_ssize_t n):
        cdef Py_ssize_t block = self.buffer_size if n <= self.buffer_size else n
        cdef Py_ssize_t limit = self._limit
        cdef void *p = NULL
        # Made first: once a block is taken nothing may fail before it is owned.
        cdef Buffer b = Buffer.__new__(Buffer)
        tc_spinlock_lock(self._lock)
        if limit >= 0 and block > limit - self._out_bytes - self._reserved:
            self._refuse(block, 0)
        if block == self.buffer_size and self._ncached:
            self._ncached -= 1
            p = self._cache[self._ncached]
            self._commit_acquire(block, 0)
            tc_spinlock_unlock(self._lock)
            if self.zero:
                memset(p, 0, <size_t>n)
        else:
            if limit >= 0:
                if <size_t>block > _max_block:
                    # tcalloc refuses it whatever is freed: free no idle block for it.
                    tc_spinlock_unlock(self._lock)
                    raise _nomem(block, 0)
                self._reserved += block
                self._trim_to_limit()
            tc_spinlock_unlock(self._lock)
            p = _raw_alloc(block, self.zero, 0)
            tc_spinlock_lock(self._lock)
            if limit >= 0:
                self._reserved -= block
            if p != NULL:
                self._commit_acquire(block, 1)
                if block == self.buffer_size and self._std_usable == 0:
                    self._std_usable = _tc.usable_size(p)
            tc_spinlock_unlock(self._lock)
            if p == NULL:
                raise _nomem(block, 0)
        b._ptr = <char *>p
        b._size = n
        b._itemsize = 1
        b._zero = self.zero
        b._pool = self
        b._block = block
        _trace(p, <size_t>block)
        return b

    cdef void _put(self, void *p, Py_ssize_t block) noexcept:
        """Take a block back from a released buffer (`block`: the bytes it
        counted): keep it if it is a buffer_size block (a buffer that grew
        inside its capacity still has one), or free it."""
        cdef size_t usable = _tc.usable_size(p)
        tc_spinlock_lock(self._lock)
        self._out_bytes -= block
        self._out_count -= 1
        if p != NULL and usable == self._std_usable and self._ncached < self.max_cached and \
                (self._limit < 0 or self._out_bytes + self._reserved +
                 (self._ncached + 1) * self.buffer_size <= self._limit):
            self._cache[self._ncached] = p
            self._ncached += 1
            p = NULL
        tc_spinlock_unlock(self._lock)
        if p != NULL:
            _tc.free(p)

    cdef int _grow(self, Buffer b, Py_ssize_t n) except -1:
        """Resize a pooled buffer past its block: reserve, realloc, then count."""
        cdef Py_ssize_t delta = n - b._block if n > b._block else 0
        cdef Py_ssize_t limit = self._limit
        cdef void *q
        if limit >= 0:
            tc_spinlock_lock(self._lock)
            if delta > limit - self._out_bytes - self._reserved:
                self._refuse(n, b._block)
            if <size_t>n > _max_block:
                # tcalloc refuses it whatever is freed: free no idle block for it.
                tc_spinlock_unlock(self._lock)
                raise _nomem(n, 0)
            self._reserved += delta
            self._trim_to_limit()
            tc_spinlock_unlock(self._lock)
        q = _tc.realloc(b._ptr, <size_t>n)
        tc_spinlock_lock(self._lock)
        if limit >= 0:
            self._reserved -= delta
        if q != NULL:
            self._commit(delta)
        tc_spinlock_unlock(self._lock)
        if q == NULL:
            raise _nomem(n, 0)
        if q != b._ptr:
            _untrace(b._ptr)
        b._ptr = <char *>q
        # The block is no longer buffer_size bytes: on release it is freed.
        b._block += delta
        _trace(q, <size_t>b._block)
        return 0

    def bytes_allocated(self):
        """Bytes in buffers handed out and not yet released (block sizes)."""
        return self._locked_read(0)

    def max_memory(self):
        """Peak of bytes_allocated() since the pool was made."""
        return self._locked_read(1)

    def total_bytes_allocated(self):
        """Bytes handed out over the pool's life (every acquire counts)."""
        return self._locked_read(2)

    def num_allocations(self):
        """Number of successful acquire()/get_buffer() calls."""
        return self._locked_read(3)

    def cached_bytes(self):
        """Bytes in idle blocks the pool keeps for reuse."""
        return self._locked_read(4)

    cdef Py_ssize_t _locked_read(self, int which) noexcept:
        cdef Py_ssize_t v
        tc_spinlock_lock(self._lock)
        if which == 0:
            v = self._out_bytes
        elif which == 1:
            v = self._peak
        elif which == 2:
            v = self._total_bytes
        elif which == 3:
            v = self._nacquire
        else:
            v = self._ncached * self.buffer_size
        tc_spinlock_unlock(self._lock)
        return v

    def stats(self):
        """A consistent snapshot of the pool's counters, as a dict."""
        cdef Py_ssize_t out, count, peak, total, nacq, nfresh, ncached
        tc_spinlock_lock(self._lock)
        out, count, peak, total = self._out_bytes, self._out_count, self._peak, self._total_bytes
        nacq, nfresh, ncached = self._nacquire, self._nfresh, self._ncached
        tc_spinlock_unlock(self._lock)
        # Built after unlocking: see the class comment on the lock.
        return dict(bytes_allocated=out, buffers_out=count, max_memory=peak,
                    total_bytes_allocated=total, num_allocations=nacq,
                    fresh_allocations=nfresh, cached_buffers=ncached,
                    cached_bytes=ncached * self.buffer_size)

    def lock_stats(self):
        """The counters of the pool's lock, as in ``tcalloc.stats()['locks']``:
        acquisitions, contended acquisitions, spins and nanoseconds waited
        (this call's own acquisition included)."""
        cdef tc_spinlock_t lk
        tc_spinlock_lock(self._lock)
        lk = self._lock[0]
        tc_spinlock_unlock(self._lock)
        return dict(acquisitions=lk.acquisitions, contended=lk.contended,
                    spins=lk.spins, wait_ns=lk.wait_ns)

    def release_unused(self):
        """Free the idle blocks, then ask tcalloc to return free pages to the
        OS (as pyarrow's ``release_unused``; costly, for tests and tuning).
        Returns the bytes the pool dropped."""
        cdef Py_ssize_t n, i
        tc_spinlock_lock(self._lock)
        n = self._ncached
        for i in range(n):
            _tc.free(self._cache[i])
        self._ncached = 0
        tc_spinlock_unlock(self._lock)
        import tcalloc
        tcalloc.release_free_memory()
        return n * self.buffer_size

    def __repr__(self):
        st = self.stats()
        return (f"<tcalloc.BufferPool buffer_size={self.buffer_size} max_bytes={self.max_bytes} "
                f"out={st['bytes_allocated']} cached={st['cached_bytes']}>")
