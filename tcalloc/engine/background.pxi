# ---- background release ------------------------------------------------------

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
        if credit > 0:
            # Whole spans are released, so a tick may overshoot: the debt is
            # paid by later ticks and the long-run rate holds.
            done = pageheap_release(&g_heap, <size_t>credit, 1)
            credit -= <int64_t>done

cdef void _bg_start() noexcept nogil:
    global g_bg_running
    cdef pthread_t th
    tc_spinlock_lock(&g_bg_lock)
    tc_store_int(&g_bg_restart, 0)
    if g_release_rate > 0 and not g_bg_running:
        if pthread_create(&th, NULL, _bg_main, NULL) == 0:
            pthread_detach(th)
            g_bg_running = 1
    tc_spinlock_unlock(&g_bg_lock)

