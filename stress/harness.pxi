# The harness every native workload shares: the lab's workloads
# (stress/_workloads.pyx) include it, and so do the test and benchmark
# natives (tests/native/*.pyx, bench/_bench.pyx), so one block pattern, one
# PRNG, one way to name an allocator and one set of pthread declarations
# serve them all.
#
#   allocator table   tc_allocator_t (tc_harness.h), h_allocator(): from
#                     "system", "tcalloc", tcalloc's C-API capsule, or a
#                     TC_ALLOCATOR_CAPSULE capsule built by C code
#   threads           pthread declarations
#   numbers           h_mix (splitmix64 finaliser), h_rand (its stream)
#   block pattern     h_fill / h_check / h_check_refill / h_is_zero
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_IsValid, PyCapsule_CheckExact
from libc.stdint cimport uint64_t
from libc.string cimport memcpy
from tcalloc.capi cimport TcallocCAPI, TCALLOC_CAPI_ABI_VERSION, TCALLOC_CAPI_CAPSULE_NAME

cdef extern from "tc_harness.h" nogil:
    const char *TC_ALLOCATOR_CAPSULE
    ctypedef struct tc_allocator_t:
        const char *name
        void *(*malloc)(size_t) noexcept nogil
        void (*free)(void *) noexcept nogil
        void *(*calloc)(size_t, size_t) noexcept nogil
        void *(*realloc)(void *, size_t) noexcept nogil
    tc_allocator_t tc_allocator_system()

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    ctypedef struct pthread_attr_t:
        pass
    int pthread_attr_init(pthread_attr_t *attr)
    int pthread_attr_destroy(pthread_attr_t *attr)
    int pthread_attr_setstacksize(pthread_attr_t *attr, size_t size)
    int pthread_create(pthread_t *thread, const pthread_attr_t *attr,
                       void *(*start)(void *) noexcept nogil, void *arg)
    int pthread_join(pthread_t thread, void **retval)


cdef TcallocCAPI *h_tcalloc_api(object cap=None) except NULL:
    """The C-API table of the capsule `cap` (default: the imported tcalloc's),
    checked the way a C extension checks it."""
    if cap is None:
        import tcalloc
        cap = tcalloc._C_API
    if not PyCapsule_IsValid(cap, TCALLOC_CAPI_CAPSULE_NAME):
        raise ImportError("tcalloc._C_API is not a capsule named %s"
                          % TCALLOC_CAPI_CAPSULE_NAME.decode())
    cdef TcallocCAPI *api = <TcallocCAPI *>PyCapsule_GetPointer(cap, TCALLOC_CAPI_CAPSULE_NAME)
    if api.abi_version != TCALLOC_CAPI_ABI_VERSION:
        raise ImportError("tcalloc C API ABI %d, this module expects %d"
                          % (api.abi_version, TCALLOC_CAPI_ABI_VERSION))
    return api


cdef object h_allocator(object allocator, tc_allocator_t *out):
    """Fill *out from "system", "tcalloc", tcalloc's C-API capsule, or a
    capsule named TC_ALLOCATOR_CAPSULE holding a tc_allocator_t *. Returns
    the object that must stay alive while the table is in use."""
    cdef TcallocCAPI *api
    if isinstance(allocator, str) and allocator == "system":
        out[0] = tc_allocator_system()
        return None
    if PyCapsule_CheckExact(allocator) and PyCapsule_IsValid(allocator, TC_ALLOCATOR_CAPSULE):
        out[0] = (<tc_allocator_t *>PyCapsule_GetPointer(allocator, TC_ALLOCATOR_CAPSULE))[0]
        if (out.name == NULL or out.malloc == NULL or out.free == NULL
                or out.calloc == NULL or out.realloc == NULL):
            raise ValueError("the %s capsule's table has an empty entry"
                             % TC_ALLOCATOR_CAPSULE.decode())
        return allocator
    if isinstance(allocator, str) and allocator == "tcalloc":
        import tcalloc
        allocator = tcalloc._C_API
    elif not (PyCapsule_CheckExact(allocator)
              and PyCapsule_IsValid(allocator, TCALLOC_CAPI_CAPSULE_NAME)):
        raise ValueError('allocator must be "system", "tcalloc", a %s capsule or a %s '
                         'capsule, not %r' % (TCALLOC_CAPI_CAPSULE_NAME.decode(),
                                              TC_ALLOCATOR_CAPSULE.decode(), allocator))
    api = h_tcalloc_api(allocator)     # this capsule's engine, not necessarily the imported one
    out.name = "tcalloc"
    out.malloc = api.malloc
    out.free = api.free
    out.calloc = api.calloc
    out.realloc = api.realloc
    return allocator


cdef inline uint64_t h_mix(uint64_t z) noexcept nogil:
    # splitmix64 finaliser: a bijection, so distinct inputs give distinct keys.
    z = (z ^ (z >> 30)) * <uint64_t>0xbf58476d1ce4e5b9ULL
    z = (z ^ (z >> 27)) * <uint64_t>0x94d049bb133111ebULL
    return z ^ (z >> 31)

cdef inline uint64_t h_rand(uint64_t *s) noexcept nogil:
    # splitmix64 stream: deterministic per seed, any seed (0 included) works.
    s[0] += <uint64_t>0x9e3779b97f4a7c15ULL
    return h_mix(s[0])

cdef void h_fill(void *dst, size_t n, uint64_t key) noexcept nogil:
    # Word i holds key + i*golden; the tail bytes are the low bytes of the
    # next word, so any prefix of a filled block checks against the same key
    # (what realloc must keep). memcpy keeps it defined for any alignment and
    # compiles to plain stores.
    cdef char *p = <char *>dst
    cdef size_t nw = n >> 3, i
    cdef uint64_t v = key
    for i in range(nw):
        memcpy(p + (i << 3), &v, 8)
        v += <uint64_t>0x9e3779b97f4a7c15ULL
    if n & 7:
        memcpy(p + (nw << 3), &v, n & 7)

cdef bint h_check(const void *src, size_t n, uint64_t key) noexcept nogil:
    # Does [src, src+n) hold what h_fill(src, >= n, key) wrote? Scans the
    # whole range (no early exit) so the loop vectorises.
    cdef const char *p = <const char *>src
    cdef size_t nw = n >> 3, i
    cdef uint64_t v = key, w, diff = 0
    for i in range(nw):
        memcpy(&w, p + (i << 3), 8)
        diff |= w ^ v
        v += <uint64_t>0x9e3779b97f4a7c15ULL
    if n & 7:
        w = 0
        memcpy(&w, p + (nw << 3), n & 7)
        diff |= w ^ (v & ((<uint64_t>1 << ((n & 7) * 8)) - 1))
    return diff == 0

cdef bint h_check_refill(void *dst, size_t n, uint64_t key, uint64_t new_key) noexcept nogil:
    # h_check(dst, n, key) and h_fill(dst, n, new_key) in one pass, word by
    # word: a second owner's write is erased unseen only if it lands between
    # the read and the rewrite of that word, not anywhere between a
    # whole-block check and a whole-block fill (a wide window for a thread
    # switched out).
    cdef char *p = <char *>dst
    cdef size_t nw = n >> 3, i
    cdef uint64_t v = key, u = new_key, w, diff = 0
    for i in range(nw):
        memcpy(&w, p + (i << 3), 8)
        diff |= w ^ v
        memcpy(p + (i << 3), &u, 8)
        v += <uint64_t>0x9e3779b97f4a7c15ULL
        u += <uint64_t>0x9e3779b97f4a7c15ULL
    if n & 7:
        w = 0
        memcpy(&w, p + (nw << 3), n & 7)
        diff |= w ^ (v & ((<uint64_t>1 << ((n & 7) * 8)) - 1))
        memcpy(p + (nw << 3), &u, n & 7)
    return diff == 0

cdef bint h_is_zero(const void *src, size_t n) noexcept nogil:
    cdef const unsigned char *p = <const unsigned char *>src
    cdef size_t i
    cdef unsigned char acc = 0
    for i in range(n):
        acc |= p[i]
    return acc == 0
