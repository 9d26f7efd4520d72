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
from libc.stdint cimport uintptr_t
from libc.string cimport memset, memcpy

from tcalloc.capi cimport TcallocCAPI, TcallocCAPI_Import

import operator as _operator
import os as _os
import weakref as _weakref

# fork(): a pool lock held by another thread at that moment would stay held
# in the child, whose copy of that thread is gone; the child resets them.
# (With the GIL no pool lock is held across a GIL release, so a Python-level
# os.fork() cannot catch one held; a fork from native code, or a
# free-threaded build, can.)
_live_pools = _weakref.WeakSet()


def _reset_pool_locks_after_fork():
    cdef BufferPool pool
    for pool in list(_live_pools):
        if pool._lock != NULL:
            tc_spinlock_reset(pool._lock)


if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=_reset_pool_locks_after_fork)

cdef extern from "tc_platform.h" nogil:
    void tc_spinlock_init(tc_spinlock_t *l)
    void tc_spinlock_lock(tc_spinlock_t *l)
    void tc_spinlock_unlock(tc_spinlock_t *l)
    void tc_spinlock_reset(tc_spinlock_t *l)

cdef extern from "Python.h":
    # Declared without an exception clause: overflow is handled by the caller.
    Py_ssize_t _long_as_ssize "PyLong_AsSsize_t" (object)
    bint PyLong_CheckExact(object)
    void PyErr_Clear()
    const Py_ssize_t PY_SSIZE_T_MAX

cdef TcallocCAPI *_tc = TcallocCAPI_Import()
cdef char *_FORMAT_B = b"B"

DEF_BUFFER_SIZE = 65536
cdef Py_ssize_t _DEFAULT_CACHED_BYTES = 16 << 20   # idle bytes a pool keeps by default
cdef Py_ssize_t _MAX_ALIGNMENT = 1 << 30


# ---- argument checks ---------------------------------------------------------

cdef Py_ssize_t _as_size_slow(object size, str what) except -1:
    if isinstance(size, float) or not hasattr(type(size), "__index__"):
        raise TypeError(f"{what} must be an integer, not {type(size).__name__}")
    v = _operator.index(size)
    if v < 0:
        raise ValueError(f"{what} must be >= 0, got {v}")
    if v > PY_SSIZE_T_MAX:
        raise MemoryError(f"cannot allocate {v} bytes: more than the address space")
    return v


cdef inline Py_ssize_t _as_size(object size, str what) except -1:
    """size as a non-negative Py_ssize_t: TypeError, ValueError, MemoryError."""
    cdef Py_ssize_t n
    if PyLong_CheckExact(size):
        n = _long_as_ssize(size)
        if n >= 0:
            return n
        PyErr_Clear()          # OverflowError, or just negative: the slow path says which
    return _as_size_slow(size, what)


cdef size_t _as_alignment(object alignment) except? 0:
    cdef Py_ssize_t a
    if alignment is None:
        return 0
    a = _as_size(alignment, "alignment")
    if a == 0 or (a & (a - 1)) != 0:
        raise ValueError(f"alignment must be a power of two, got {alignment}")
    if a > _MAX_ALIGNMENT:
        raise ValueError(f"alignment must be at most {_MAX_ALIGNMENT}, got {alignment}")
    return <size_t>a


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


cdef object _nomem(Py_ssize_t n, size_t align):
    if align:
        return MemoryError(f"tcalloc: cannot allocate {n} bytes aligned to {align}")
    return MemoryError(f"tcalloc: cannot allocate {n} bytes")


# ---- Buffer ------------------------------------------------------------------

@cython.freelist(32)
cdef class Buffer:
    """A block of tcalloc memory exposed through the writable buffer protocol.

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
        if self._ptr != NULL or self._pool is not None:
            raise TypeError("Buffer.__init__ called on a buffer that already holds memory")
        _fill(self, _as_size(size, "size"), bool(zero), _as_alignment(alignment))

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
        self._check()
        return _tc.usable_size(self._ptr)

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
        unchanged)."""
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
        if self._ptr == NULL:
            return "<tcalloc.Buffer released>"
        return (f"<tcalloc.Buffer size={self._size} capacity={_tc.usable_size(self._ptr)} "
                f"address={<uintptr_t>self._ptr:#x}{' pooled' if self._pool is not None else ''}>")


cdef int _fill(Buffer b, Py_ssize_t n, bint zero, size_t align) except -1:
    cdef void *p = _raw_alloc(n, zero, align)
    if p == NULL:
        raise _nomem(n, align)
    b._ptr = <char *>p
    b._size = n
    b._itemsize = 1
    b._align = align
    b._zero = zero
    return 0


cdef int _resize(Buffer b, Py_ssize_t n) except -1:
    cdef Py_ssize_t old = b._size
    cdef size_t cap = _tc.usable_size(b._ptr)
    cdef void *q
    if n == old:
        return 0
    if b._pool is not None:
        if <size_t>n > cap:
            b._pool._grow(b, n)      # accounts, reallocs, or raises
    elif b._align:
        if <size_t>n > cap:
            q = _tc.aligned_alloc(b._align, <size_t>n)
            if q == NULL:
                raise _nomem(n, b._align)
            memcpy(q, b._ptr, <size_t>old)
            _tc.free(b._ptr)
            b._ptr = <char *>q
    else:
        q = _tc.realloc(b._ptr, <size_t>n)
        if q == NULL:
            raise _nomem(n, 0)
        b._ptr = <char *>q
    if b._zero and n > old:
        memset(b._ptr + old, 0, <size_t>(n - old))
    b._size = n
    return 0


def _from_bytes(data, zero, alignment):
    cdef const unsigned char[::1] src = data
    cdef Buffer b = alloc(len(data), zero=zero, alignment=alignment)
    if src.shape[0]:
        memcpy(b._ptr, &src[0], <size_t>src.shape[0])
    return b


def alloc(size, *, zero=False, alignment=None):
    """Allocate ``size`` bytes from tcalloc and return them as a :class:`Buffer`.

    ``zero=True`` gives zeroed memory (free for fresh pages). ``alignment``
    (a power of two, up to 1 GiB) aligns the first byte; by default blocks of
    16 bytes or more are 16-byte aligned. Raises TypeError for a non-integer
    size, ValueError for a negative one or a bad alignment, MemoryError when
    the memory cannot be had. Thread-safe; the allocation itself takes no lock
    on the fast path.
    """
    cdef Py_ssize_t n = _as_size(size, "size")
    cdef size_t align = 0 if alignment is None else _as_alignment(alignment)
    cdef Buffer b = Buffer.__new__(Buffer)
    _fill(b, n, zero is True or (zero is not False and bool(zero)), align)
    return b


# ---- BufferPool --------------------------------------------------------------

cdef class BufferPool:
    """A thread-safe pool of tcalloc buffers of ``buffer_size`` bytes.

    ``acquire(size=None)`` hands out a :class:`Buffer` of ``size`` bytes
    (``buffer_size`` by default) backed by a block of at least
    ``buffer_size`` bytes; ``buf.release()`` or leaving ``with buf:`` gives
    it back, and the block is kept for the next ``acquire`` (up to
    ``max_cached`` idle blocks; larger requests get a block of their own
    that is freed on release). A block is never recycled while a memoryview
    of it is alive: ``release()`` raises ``BufferError`` then.

    ``max_bytes`` bounds the bytes handed out (and, with the idle blocks, what
    the pool holds): ``acquire`` past it raises ``MemoryError`` naming the
    limit and the current use, and leaves buffers already out untouched.
    ``zero=True`` zeroes every buffer handed out.

    Accounting follows pyarrow's ``MemoryPool``: ``bytes_allocated()``,
    ``max_memory()``, ``total_bytes_allocated()``, ``num_allocations()``,
    ``release_unused()``, ``backend_name``. ``get_buffer(sizehint)`` serves
    ``asyncio.BufferedProtocol``.

    Thread-safety: every method may be called from any thread at once; the
    state is under a C lock (not the GIL), so free-threaded builds are safe.
    """

    def __cinit__(self, buffer_size=DEF_BUFFER_SIZE, *, max_bytes=None, zero=False,
                  max_cached=None):
        cdef Py_ssize_t bs = _as_size(buffer_size, "buffer_size")
        cdef Py_ssize_t mc
        if bs == 0:
            raise ValueError("buffer_size must be > 0")
        self._limit = -1
        if max_bytes is not None:
            self._limit = _as_size(max_bytes, "max_bytes")
        if max_cached is None:
            mc = _DEFAULT_CACHED_BYTES // bs
            mc = 4 if mc < 4 else (1024 if mc > 1024 else mc)
        else:
            mc = _as_size(max_cached, "max_cached")
            if mc > (1 << 24):
                raise ValueError(f"max_cached must be at most {1 << 24}, got {mc}")
        self.buffer_size = bs
        self.max_cached = mc
        self.zero = bool(zero)
        self._lock = <tc_spinlock_t *>_tc.aligned_alloc(64, sizeof(tc_spinlock_t))
        self._cache = <void **>_tc.malloc(<size_t>(mc if mc else 1) * sizeof(void *))
        if self._lock == NULL or self._cache == NULL:
            raise MemoryError("tcalloc: cannot allocate the pool's bookkeeping")
        tc_spinlock_init(self._lock)
        _live_pools.add(self)

    def __dealloc__(self):
        # Buffers out hold a reference to the pool, so none is out now.
        cdef Py_ssize_t i
        if self._cache != NULL:
            for i in range(self._ncached):
                _tc.free(self._cache[i])
            _tc.free(self._cache)
        if self._lock != NULL:
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
        Raises MemoryError past ``max_bytes``.
        """
        return self._acquire(self.buffer_size if size is None else _as_size(size, "size"))

    def get_buffer(self, sizehint=-1):
        """``asyncio.BufferedProtocol.get_buffer``: a Buffer of at least
        ``buffer_size`` bytes, or ``sizehint`` if larger (-1/0: any size)."""
        if sizehint is None or sizehint <= self.buffer_size:
            return self._acquire(self.buffer_size)
        return self._acquire(_as_size(sizehint, "sizehint"))

    cdef Buffer _acquire(self, Py_ssize_t n):
        cdef Py_ssize_t block = self.buffer_size if n <= self.buffer_size else n
        cdef Py_ssize_t used, count, limit = self._limit
        cdef void *p = NULL
        cdef Buffer b
        tc_spinlock_lock(self._lock)
        if limit >= 0 and block > limit - self._out_bytes:
            used = self._out_bytes
            count = self._out_count
            tc_spinlock_unlock(self._lock)
            raise MemoryError(
                f"BufferPool limit reached: acquiring {block} bytes would exceed "
                f"max_bytes={limit}; {used} bytes are in use in {count} buffer(s)")
        if block == self.buffer_size and self._ncached:
            self._ncached -= 1
            p = self._cache[self._ncached]
        else:
            self._nfresh += 1
            # Keep what the pool holds (out + idle) within the limit.
            while limit >= 0 and self._ncached and \
                    self._out_bytes + block + self._ncached * self.buffer_size > limit:
                self._ncached -= 1
                _tc.free(self._cache[self._ncached])
        self._out_bytes += block
        self._out_count += 1
        if self._out_bytes > self._peak:
            self._peak = self._out_bytes
        self._total_bytes += block
        self._nacquire += 1
        tc_spinlock_unlock(self._lock)
        if p == NULL:
            p = _raw_alloc(block, self.zero, 0)
            if p == NULL:
                tc_spinlock_lock(self._lock)
                self._out_bytes -= block
                self._out_count -= 1
                tc_spinlock_unlock(self._lock)
                raise _nomem(block, 0)
        elif self.zero:
            memset(p, 0, <size_t>n)
        b = Buffer.__new__(Buffer)
        b._ptr = <char *>p
        b._size = n
        b._itemsize = 1
        b._zero = self.zero
        b._pool = self
        b._block = block
        return b

    cdef void _put(self, void *p, Py_ssize_t block) noexcept:
        """Take a block back from a released buffer: keep it or free it."""
        tc_spinlock_lock(self._lock)
        self._out_bytes -= block
        self._out_count -= 1
        if block == self.buffer_size and self._ncached < self.max_cached and \
                (self._limit < 0 or
                 self._out_bytes + (self._ncached + 1) * self.buffer_size <= self._limit):
            self._cache[self._ncached] = p
            self._ncached += 1
            p = NULL
        tc_spinlock_unlock(self._lock)
        if p != NULL:
            _tc.free(p)

    cdef int _grow(self, Buffer b, Py_ssize_t n) except -1:
        """Resize a pooled buffer past its block: account first, then realloc."""
        cdef Py_ssize_t delta = n - b._block if n > b._block else 0
        cdef Py_ssize_t used, limit = self._limit
        cdef void *q
        tc_spinlock_lock(self._lock)
        if limit >= 0 and delta > limit - self._out_bytes:
            used = self._out_bytes
            tc_spinlock_unlock(self._lock)
            raise MemoryError(
                f"BufferPool limit reached: growing a buffer to {n} bytes would exceed "
                f"max_bytes={limit}; {used} bytes are in use in {self._out_count} buffer(s)")
        self._out_bytes += delta
        if self._out_bytes > self._peak:
            self._peak = self._out_bytes
        self._total_bytes += delta
        tc_spinlock_unlock(self._lock)
        q = _tc.realloc(b._ptr, <size_t>n)
        if q == NULL:
            tc_spinlock_lock(self._lock)
            self._out_bytes -= delta
            tc_spinlock_unlock(self._lock)
            raise _nomem(n, 0)
        b._ptr = <char *>q
        # The block is no longer buffer_size bytes: on release it is freed.
        b._block += delta
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
        tc_spinlock_lock(self._lock)
        d = dict(bytes_allocated=self._out_bytes, buffers_out=self._out_count,
                 max_memory=self._peak, total_bytes_allocated=self._total_bytes,
                 num_allocations=self._nacquire, fresh_allocations=self._nfresh,
                 cached_buffers=self._ncached, cached_bytes=self._ncached * self.buffer_size)
        tc_spinlock_unlock(self._lock)
        return d

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
