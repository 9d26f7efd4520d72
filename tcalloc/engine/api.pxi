# ---- control ---------------------------------------------------------------------

def release_free_memory():
    """Give free memory back to the OS; returns the bytes released.

    Flushes the calling thread's cache, moves every transfer cache's objects
    back to their spans (so spans that became empty return to the page heap),
    releases every free page-heap span with madvise(MADV_DONTNEED), and asks
    the other threads to flush their caches at their next slow-path call.
    """
    cdef size_t done
    with nogil:
        threadcache_request_flush_all(&g_registry)
        _reclaim()          # this thread's flush also clears its own request
        done = pageheap_release(&g_heap, <size_t>-1)
    return done

def set_release_rate(bytes_per_second):
    """Return free memory to the OS by itself at this many bytes per second
    (default 8 MiB/s; 0: only release_free_memory() and a memory limit
    release). While the rate is not 0, a free also releases the largest free
    spans whenever free, backed page-heap memory passes 64 MiB, and a
    background thread releases the rest at the rate. Setting a rate starts
    the thread at once; the default starts it once the heap reaches 16 MiB."""
    cdef uint64_t rate
    if isinstance(bytes_per_second, bool) or not isinstance(bytes_per_second, int):
        raise TypeError("release rate must be an int (bytes per second), not %s"
                        % type(bytes_per_second).__name__)
    if bytes_per_second < 0 or bytes_per_second >= 2 ** 63:
        raise ValueError("release rate must be between 0 and 2**63-1 bytes per second, got %d" % bytes_per_second)
    rate = bytes_per_second
    with nogil:
        _set_release_rate(rate)
        if rate:
            _bg_start()

cdef void _set_release_rate(uint64_t rate) noexcept nogil:
    """The rate, the free cap that goes with it, and whether a releaser is
    wanted (started lazily by _bg_poll). Takes g_bg_lock, then the page heap's."""
    tc_spinlock_lock(&g_bg_lock)
    tc_store_u64(&g_release_rate, rate)
    tc_store_int(&g_bg_wanted, 1 if rate and not g_bg_running else 0)
    tc_spinlock_unlock(&g_bg_lock)
    pageheap_set_cap(&g_heap, 1 if rate else 0)

def reset_peaks():
    """Start the peaks in stats() (peak_heap_bytes, peak_allocated_bytes)
    and the peak heap profile over from the figures now."""
    with nogil:
        pageheap_reset_peak(&g_heap)
        tc_store_u64(&g_registry.peak_allocated,
                     tc_load_u64(&g_registry.out_bytes) + tc_load_u64(&g_heap.large_bytes))
        sampler_reset_peak()        # and the peak heap profile

def set_sample_rate(nbytes, seed=None):
    """Sample one allocation per `nbytes` allocated on average (0: off), with
    its Python and native stacks, for tcalloc.heap_profile() and friends.
    Samples are chosen by bytes at exponentially distributed intervals, so
    each stands for an unbiased estimate. `seed` (an int) makes the choice
    repeatable for a given order of threads; None: a fresh random seed."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, int):
        raise TypeError("sample rate must be an int number of bytes, not %s" % type(nbytes).__name__)
    if nbytes < 0 or nbytes >= 2 ** 62:
        raise ValueError("sample rate must be between 0 (off) and 2**62-1 bytes, got %d" % nbytes)
    if seed is None:
        seed = tc_now_ns() ^ <uintptr_t>&g_sampler
    elif isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError("seed must be an int or None, not %s" % type(seed).__name__)
    cdef uint64_t rate = nbytes
    cdef uint64_t s = seed & 0xFFFFFFFFFFFFFFFF
    with nogil:
        sampler_set_rate(rate, s)

def get_sample_rate():
    """Bytes between heap samples on average (0: sampling is off)."""
    return g_sampler.rate

def get_release_rate():
    """The release rate in bytes per second (0: memory is released only on
    request and under a memory limit)."""
    return tc_load_u64(&g_release_rate)

def set_memory_limit(nbytes, hard=False):
    """Limit the committed heap (mapped minus released bytes) to nbytes (0 or
    None: no limit). Soft: free memory is released to the OS first when the
    heap would pass it. Hard: allocations that would pass it fail (NULL and
    ENOMEM in C, MemoryError in Python)."""
    cdef uint64_t n
    if nbytes is None:
        nbytes = 0
    if isinstance(nbytes, bool) or not isinstance(nbytes, int):
        raise TypeError("memory limit must be an int number of bytes or None, not %s" % type(nbytes).__name__)
    if nbytes < 0 or nbytes >= 2 ** 63:
        raise ValueError("memory limit must be between 0 and 2**63-1 bytes, got %d" % nbytes)
    if not isinstance(hard, bool):
        raise TypeError("hard must be a bool, not %s" % type(hard).__name__)
    cdef int is_hard = 1 if hard else 0
    n = nbytes
    with nogil:
        pageheap_set_limit(&g_heap, n, is_hard)

def get_memory_limit():
    """(nbytes, hard): the current limit, or None when there is none."""
    cdef uint64_t n
    cdef int hard
    with nogil:
        tc_spinlock_lock(&g_heap.lock)      # set_memory_limit writes it under this lock, without the GIL
        n = g_heap.limit_bytes
        hard = g_heap.limit_hard
        tc_spinlock_unlock(&g_heap.lock)
    if n == 0:
        return None
    return (n, bool(hard))

def set_max_total_thread_cache_bytes(nbytes):
    """The budget shared by all thread caches (default 32 MiB)."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, int):
        raise TypeError("nbytes must be an int, not %s" % type(nbytes).__name__)
    if nbytes < 0 or nbytes >= 2 ** 62:
        raise ValueError("nbytes must be between 0 and 2**62-1, got %d" % nbytes)
    threadcache_set_overall_max(&g_registry, <uint64_t>nbytes)

def get_max_total_thread_cache_bytes():
    return g_registry.overall_max

def size_class_table():
    """[(class, size, pages, batch, objects_per_span)] for every size class."""
    return [(cl, g_sizemap.class_to_size[cl], g_sizemap.class_to_pages[cl],
             g_sizemap.num_objects_to_move[cl], g_sizemap.objects_per_span[cl])
            for cl in range(1, g_sizemap.num_classes)]

def size_class_of(size):
    """The class (and its object size) a request of `size` bytes gets; (0, 0) if large."""
    if isinstance(size, bool) or not hasattr(type(size), "__index__"):
        raise TypeError("size must be an int, not %s" % type(size).__name__)
    size = size.__index__()
    if size < 0:
        raise ValueError("size must be >= 0, got %d" % size)
    if size > kMaxSmallSize:
        return (0, 0)
    cl = sizemap_class(&g_sizemap, <size_t>size)
    return (cl, g_sizemap.class_to_size[cl])

def debug_enabled():
    """True when TCALLOC_DEBUG checks are on (build flag or environment)."""
    return bool(g_debug)

# ---- start-up ----------------------------------------------------------------------

cdef int _apply_environment() except -1:
    """Settings from TCALLOC_* variables, read once at import and validated
    by tcalloc._config (a bad value stops the import with a ValueError that
    names the variable and the value)."""
    global g_debug, g_page_moves_left, g_gc_sort
    from tcalloc import _config
    env = _config.applied = _config.read()
    if env.get("TCALLOC_DEBUG"):
        g_debug = 1
    for cl in range(1, g_sizemap.num_classes):
        g_central[cl].wipe_new_spans = g_debug
    if env.get("TCALLOC_REALLOC_MOVE_PAGES") is False:
        g_page_moves_left = -1
    if env.get("TCALLOC_GC_SORT") is False:
        g_gc_sort = 0
    if env.get("TCALLOC_MAX_TOTAL_THREAD_CACHE_BYTES") is not None:
        set_max_total_thread_cache_bytes(env["TCALLOC_MAX_TOTAL_THREAD_CACHE_BYTES"])
    if env.get("TCALLOC_MEMORY_LIMIT"):
        pageheap_set_limit(&g_heap, env["TCALLOC_MEMORY_LIMIT"],
                           1 if env.get("TCALLOC_MEMORY_LIMIT_HARD") else 0)
    if env.get("TCALLOC_SAMPLE_RATE"):
        set_sample_rate(env["TCALLOC_SAMPLE_RATE"])
    if env.get("TCALLOC_RELEASE_RATE") is not None:
        # 0 is a setting (release off), not an absent one. The thread still
        # starts lazily, at a heap of kBgStartHeap.
        _set_release_rate(env["TCALLOC_RELEASE_RATE"])
    return 0
