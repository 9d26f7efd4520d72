# Size map: request size -> size class, and each class's object size, pages
# per span and batch size (objects moved between caches at once).
#
# Thread safety: filled once by sizemap_init() before any allocation, then
# read-only; reads need no lock.
from libc.stdint cimport uint8_t, uint32_t
from libc.string cimport memset

cdef enum:
    # Index space of the lookup table: 8-byte steps up to 1 KiB, then 128-byte
    # steps up to kMaxSmallSize (as TCMalloc's ClassIndex). 2169 entries.
    kClassArraySize = ((kMaxSmallSize + 127 + (120 << 7)) >> 7) + 1
    # Requests above kCoarseFrom up to kCoarseTo get 4 classes per power of
    # two, not 8 (sizemap_init says why): at most 20 % of such a block is slack.
    kCoarseFrom = 16384
    kCoarseTo = 65536

ctypedef struct SizeMap:
    int num_classes                          # classes 1..num_classes-1; 0 is "not small"
    uint8_t class_array[kClassArraySize]
    uint32_t class_to_size[kMaxClasses]
    uint32_t class_to_pages[kMaxClasses]
    uint32_t num_objects_to_move[kMaxClasses]   # batch size
    uint32_t objects_per_span[kMaxClasses]

cdef inline size_t sizemap_index(size_t size) noexcept nogil:
    if size <= 1024:
        return (size + 7) >> 3
    return (size + 127 + (120 << 7)) >> 7

cdef inline uint32_t sizemap_class(const SizeMap *m, size_t size) noexcept nogil:
    """Class for a request of `size` bytes (size <= kMaxSmallSize; 0 maps to the 16 B class)."""
    return m.class_array[sizemap_index(size)]

# ---- implementation --------------------------------------------------------
# Classes: every 16 B from 16 to 128, then 8 classes per power of two (step
# 2^k/8) up to 256 KiB: a request never gets more than max(15 B, 1/8 of its
# block) of slack. Every power of two is a class, so aligned allocation up to
# the page size can pick a class whose objects are naturally aligned.
# One more class, kPageSize + kPageHeaderSlack: a page-sized buffer with a
# header of its own is common, and CPython's compiler arena (PyArena) is
# made of 8192 + 32 B blocks. The arena of a script run as `python
# script.py` lives until the script ends (pythonrun.c frees it after
# running the module), so a big script keeps hundreds of them: 685 in
# pyperformance's regex_v8, where the 9216 B class they took before left
# 0.65 MiB of slack beside glibc's exact fit.
# Pages per span: the fewest pages (at least 2, so span metadata stays under
# 1 % of the heap) whose tail left over after the last object is at most 1/8
# of the span, 1/32 for blocks of one to two pages: there 1/8 let the 9216 B
# class leave 4 KiB of every 5-page span of 4 (regex_v8 peaked with 0.76
# MiB of span tails), and it would give the 8448 B class a 7-page span of 6.
# A bigger span of fresh pages costs no more memory: its objects are
# carved as they are used (central.pxi); one made of freed pages holds them
# all. With this table xml_etree_generate's worker, run alone, peaked 0.2-0.3
# MiB higher, while every worker under pyperf peaked lower (bench/README.md).
# Batch: 64 KiB worth of objects, clamped to 2..64 (64, not gperftools' 32:
# a cold heap, an interpreter building new objects, fetches every object it
# allocates, and each fetch costs ~550 instructions of locking and
# bookkeeping besides the objects; 64 halves that share).

cdef enum:
    kMinSpanPages = 2
    kPageHeaderSlack = 256      # the class after kPageSize (see above)
    kBatchBytes = 65536
    kMaxBatch = 64
    kMinBatch = 2

cdef inline uint32_t _batch_for(uint32_t size) noexcept nogil:
    cdef uint32_t n = kBatchBytes // size
    if n < kMinBatch:
        n = kMinBatch
    if n > kMaxBatch:
        n = kMaxBatch
    return n

cdef inline uint32_t _pages_for(uint32_t size) noexcept nogil:
    cdef size_t pages = kMinSpanPages
    cdef size_t span_bytes
    cdef int tail_shift = 5 if kPageSize < size < 2 * kPageSize else 3
    while True:
        span_bytes = pages << kPageShift
        if span_bytes >= size and (span_bytes % size) <= (span_bytes >> tail_shift):
            return <uint32_t>pages
        pages += 1

cdef int sizemap_init(SizeMap *m) noexcept nogil:
    """Fill the tables. Returns 0, or -1 if the generated table is inconsistent."""
    cdef uint32_t sizes[kMaxClasses]
    cdef int n = 1          # class 0 is reserved
    cdef uint32_t s, step, base, per
    cdef int i, cl
    cdef size_t req, idx
    memset(m, 0, sizeof(SizeMap))
    # 16-byte steps to 128. No 8-byte class: every block has the second
    # word the free-block key lives in (double-free detection on every
    # class), and is 16-byte aligned, as C's malloc promises on x86-64.
    # Each write checks the bound first: a table edited to more classes than
    # kMaxClasses fails init instead of writing past `sizes`.
    s = 16
    while s <= 128:
        if n >= kMaxClasses:
            return -1
        sizes[n] = s
        n += 1
        s += 16
    # Then 8 classes per power of two, but 4 from 16 to 64 KiB (as gperftools
    # and google/tcmalloc have there): each class parks free blocks of its
    # own in every thread's cache and in its transfer and central lists, so
    # threads churning blocks of many sizes cycle through more pages with
    # more classes. With 8 in that range, the stress lab's fork workload
    # (16 B..64 KiB) wrote 4,092 distinct pages per fork against
    # gperftools' 3,596, and every page written after a fork() faults;
    # with 4, 3,658, and its ops/s went from 0.88x gperftools' to level.
    base = 128
    while base < kMaxSmallSize:
        per = 4 if kCoarseFrom <= base < kCoarseTo else 8
        step = base // per
        for i in range(1, per + 1):
            if n >= kMaxClasses:
                return -1
            sizes[n] = base + i * step
            n += 1
            if sizes[n - 1] == kPageSize:
                if n >= kMaxClasses:
                    return -1
                sizes[n] = kPageSize + kPageHeaderSlack
                n += 1
        base *= 2
    if sizes[n - 1] != kMaxSmallSize:
        return -1
    m.num_classes = n
    for cl in range(1, n):
        m.class_to_size[cl] = sizes[cl]
        m.class_to_pages[cl] = _pages_for(sizes[cl])
        m.num_objects_to_move[cl] = _batch_for(sizes[cl])
        m.objects_per_span[cl] = (m.class_to_pages[cl] << kPageShift) // sizes[cl]
    # Lookup table: each index covers a range of request sizes; give it the
    # smallest class that holds the largest size of the range.
    cl = 1
    idx = 0
    while idx < kClassArraySize:
        # the largest request mapping to idx:
        if idx <= 128:
            req = idx << 3
        else:
            req = (idx << 7) - (120 << 7)
        if req > kMaxSmallSize:
            req = kMaxSmallSize
        while cl < n and m.class_to_size[cl] < req:
            cl += 1
        if cl >= n:
            return -1
        m.class_array[idx] = <uint8_t>cl
        idx += 1
    return 0

cdef uint32_t sizemap_aligned_class(const SizeMap *m, size_t size, size_t alignment) noexcept nogil:
    """Smallest class holding `size` whose object size is a multiple of
    `alignment` (a power of two <= page size), so every object of a
    page-aligned span is aligned. 0 if none (then use the page heap)."""
    cdef uint32_t cl
    if size == 0:
        size = 1
    if size > kMaxSmallSize:
        return 0
    cl = sizemap_class(m, size)
    while cl < <uint32_t>m.num_classes:
        if m.class_to_size[cl] % alignment == 0:
            return cl
        cl += 1
    return 0
