# ---- background release ------------------------------------------------------
# Memory goes back to the OS by itself in two ways while the release rate is
# not 0 (the default is kDefaultReleaseRate, _engine.pyx):
# - on free, the page heap keeps its free, backed memory under a cap, beyond
#   what its recent peak of demand needs (pageheap.pxi, _trim_free);
# - a native thread releases the free memory recent demand does not need at
#   the rate, so an idle process ends with none, and turns the demand epoch
#   (0.5 s): a burst's pages past the cap go back within a second. It starts
#   lazily, at a slow-path call once the heap has reached kBgStartHeap: a
#   process that never allocates much never gets the thread.
# fork() stops it (_bg_stop_for_fork, from the prepare handler) and the next
# slow path after it, in the parent as in the child, starts another: the
# thread is not there when fork() returns, so a single-threaded program's
# fork() stays single-threaded (Python 3.12+ warns about fork() in a process
# with more than one thread, and -W error turns that into an exception).
# Lock: g_bg_lock guards g_release_rate, g_bg_running, g_bg_thread and
# g_bg_wanted (taken alone, outermost); the releaser takes the page-heap lock
# per tick.

cdef void *_bg_main(void *arg) noexcept nogil:
    """Release free page-heap memory at g_release_rate bytes/s, 10 ticks a
    second, and turn the page heap's demand epoch every kDemandEpochTicks.
    Exits when the rate is 0 (detaching itself) or when asked (g_bg_stop:
    whoever asked joins it)."""
    global g_bg_running
    cdef int64_t credit = 0
    cdef uint64_t rate, done
    cdef uint64_t ticks = 0
    cdef bint turn
    while True:
        tc_futex_wait_for(&g_bg_stop, 0, 100000000)
        if tc_load_int(&g_bg_stop):
            return NULL
        tc_spinlock_lock(&g_bg_lock)
        rate = g_release_rate
        if rate == 0:
            g_bg_running = 0
            pthread_detach(pthread_self())
            tc_spinlock_unlock(&g_bg_lock)
            return NULL
        tc_spinlock_unlock(&g_bg_lock)
        credit += <int64_t>(rate // 10)
        if credit > <int64_t>rate:
            credit = <int64_t>rate      # idle ticks do not bank more than a second
        ticks += 1
        turn = ticks % kDemandEpochTicks == 0
        if turn or (credit > 0 and tc_load_u64(&g_heap.free_bytes) != 0):
            # Whole spans are released, so a tick may overshoot: the debt is
            # paid by later ticks and the long-run rate holds. A release past
            # the cap can be far more than a tick's credit; the debt it
            # leaves is bounded by a second's worth.
            done = pageheap_release_idle(&g_heap, <size_t>credit if credit > 0 else 0, turn)
            credit -= <int64_t>done
            if credit < -<int64_t>rate:
                credit = -<int64_t>rate

cdef void _bg_start() noexcept nogil:
    """Start the releaser if a rate is set and none runs. Takes g_bg_lock."""
    global g_bg_running, g_bg_thread
    cdef pthread_t th
    cdef sigset_t all_signals, old
    tc_spinlock_lock(&g_bg_lock)
    tc_store_int(&g_bg_wanted, 0)
    if g_release_rate > 0 and not g_bg_running:
        # The thread starts with every signal blocked (it inherits the mask
        # set around pthread_create), so a signal sent to the process goes
        # to one of the program's threads: delivered here, it would not
        # interrupt the call the program is blocked in (an alarm meant to
        # break a read or a lock wait). jemalloc's background threads do
        # the same.
        sigfillset(&all_signals)
        pthread_sigmask(SIG_SETMASK, &all_signals, &old)
        # A failed pthread_create is not retried: memory still goes back on
        # free (the cap) and on release_free_memory().
        if pthread_create(&th, NULL, _bg_main, NULL) == 0:
            g_bg_thread = th
            g_bg_running = 1
        pthread_sigmask(SIG_SETMASK, &old, NULL)
    tc_spinlock_unlock(&g_bg_lock)

cdef bint _bg_stop_for_fork() noexcept nogil:
    """fork()'s prepare handler, before it takes any lock: make the releaser
    exit and wait for it (a tick at most: it may be releasing under the
    page-heap lock). Returns whether one ran. Takes g_bg_lock."""
    global g_bg_running
    cdef pthread_t th
    cdef int rc
    tc_spinlock_lock(&g_bg_lock)
    if not g_bg_running:
        tc_spinlock_unlock(&g_bg_lock)
        return 0
    g_bg_running = 0
    th = g_bg_thread
    tc_store_int(&g_bg_stop, 1)
    tc_spinlock_unlock(&g_bg_lock)
    tc_futex_wake(&g_bg_stop, 1)
    rc = pthread_join(th, NULL)
    TC_ASSERT(rc == 0, "fork: the releaser thread could not be joined")
    tc_store_int(&g_bg_stop, 0)
    return 1

cdef inline void _bg_poll() noexcept nogil:
    """On slow paths: start the wanted releaser once the heap is big enough.
    Two plain loads while it is not wanted; no lock."""
    if TC_UNLIKELY(tc_load_int(&g_bg_wanted)) and tc_load_u64(&g_heap.system_bytes) >= kBgStartHeap:
        _bg_start()
