# ---- background release ------------------------------------------------------
# Memory goes back to the OS by itself in two ways while the release rate is
# not 0 (the default is kDefaultReleaseRate, _engine.pyx):
# - on free, the page heap keeps its free, backed memory under a cap
#   (pageheap.pxi, _trim_free): a burst's pages go back as it is freed;
# - a native thread releases what is left below the cap at the rate, so an
#   idle process ends with none. It starts lazily, at a slow-path call once
#   the heap has reached kBgStartHeap: a process that never allocates much
#   never gets the thread.
# Lock: g_bg_lock guards g_release_rate, g_bg_running and g_bg_wanted (taken
# alone, outermost); the releaser takes the page-heap lock per tick.

cdef void *_bg_main(void *arg) noexcept nogil:
    """Release free page-heap memory at g_release_rate bytes/s, 10 ticks a second."""
    global g_bg_running
    cdef timespec ts
    cdef int64_t credit = 0
    cdef uint64_t rate, done
    ts.tv_sec = 0
    ts.tv_nsec = 100000000
    while True:
        nanosleep(&ts, NULL)
        tc_spinlock_lock(&g_bg_lock)
        rate = g_release_rate
        if rate == 0:
            g_bg_running = 0
            tc_spinlock_unlock(&g_bg_lock)
            return NULL
        tc_spinlock_unlock(&g_bg_lock)
        credit += <int64_t>(rate // 10)
        if credit > <int64_t>rate:
            credit = <int64_t>rate      # idle ticks do not bank more than a second
        if credit > 0 and tc_load_u64(&g_heap.free_bytes) != 0:
            # Whole spans are released, so a tick may overshoot: the debt is
            # paid by later ticks and the long-run rate holds.
            done = pageheap_release(&g_heap, <size_t>credit, 1)
            credit -= <int64_t>done

cdef void _bg_start() noexcept nogil:
    """Start the releaser if a rate is set and none runs. Takes g_bg_lock."""
    global g_bg_running
    cdef pthread_t th
    tc_spinlock_lock(&g_bg_lock)
    tc_store_int(&g_bg_wanted, 0)
    if g_release_rate > 0 and not g_bg_running:
        # A failed pthread_create is not retried: memory still goes back on
        # free (the cap) and on release_free_memory().
        if pthread_create(&th, NULL, _bg_main, NULL) == 0:
            pthread_detach(th)
            g_bg_running = 1
    tc_spinlock_unlock(&g_bg_lock)

cdef inline void _bg_poll() noexcept nogil:
    """On slow paths: start the wanted releaser once the heap is big enough.
    Two plain loads while it is not wanted; no lock."""
    if TC_UNLIKELY(tc_load_int(&g_bg_wanted)) and tc_load_u64(&g_heap.system_bytes) >= kBgStartHeap:
        _bg_start()
