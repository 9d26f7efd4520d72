# Buffer and BufferPool, declared so other Cython modules can cimport them
# and reach their fields without Python attribute look-ups.
from tcalloc.capi cimport TcallocCAPI
from tcalloc.common cimport tc_spinlock_t


cdef class BufferPool


cdef class Buffer:
    cdef char *_ptr              # NULL once released
    cdef Py_ssize_t _size        # len(); also shape[0] of every export
    cdef Py_ssize_t _itemsize    # 1; strides[0] of every export
    cdef Py_ssize_t _exports     # live buffer-protocol exports (memoryviews, ...)
    cdef size_t _align           # alignment asked for, 0 for the default
    cdef bint _zero              # grown bytes are zeroed
    cdef BufferPool _pool        # owning pool, or None
    cdef Py_ssize_t _block       # bytes this buffer accounts for in its pool: its block, or the
                                 # largest length resize() gave it

    cdef int _check(self) except -1
    cdef int _free_now(self) except -1


cdef class BufferPool:
    cdef readonly Py_ssize_t buffer_size
    cdef readonly Py_ssize_t max_cached
    cdef readonly bint zero
    cdef Py_ssize_t _limit       # -1: no limit
    cdef tc_spinlock_t *_lock    # C lock: works without the GIL (free-threaded builds, __dealloc__)
    cdef void **_cache           # idle blocks of buffer_size bytes
    cdef Py_ssize_t _ncached
    cdef Py_ssize_t _out_bytes   # bytes in buffers handed out
    cdef Py_ssize_t _reserved    # bytes of acquires/grows under way (with a limit only)
    cdef Py_ssize_t _out_count
    cdef Py_ssize_t _peak
    cdef Py_ssize_t _total_bytes
    cdef Py_ssize_t _nacquire
    cdef Py_ssize_t _nfresh      # acquisitions that needed a new block from tcalloc
    cdef size_t _std_usable      # usable size of a buffer_size block (0 until one is made):
                                 # a released block of that size is kept, however it was counted
    cdef object __weakref__      # the fork handler keeps a weak set of live pools

    cdef int _check_init(self) except -1
    cdef int _refuse(self, Py_ssize_t nbytes, Py_ssize_t grown_from) except -1
    cdef void _trim_to_limit(self) noexcept nogil
    cdef void _commit(self, Py_ssize_t nbytes) noexcept nogil
    cdef void _commit_acquire(self, Py_ssize_t block, bint fresh) noexcept nogil
    cdef Buffer _acquire(self, Py_ssize_t n)
    cdef void _put(self, void *p, Py_ssize_t block) noexcept
    cdef int _grow(self, Buffer b, Py_ssize_t n) except -1
    cdef Py_ssize_t _locked_read(self, int which) noexcept
