# ---- fork ------------------------------------------------------------------
# prepare closes the fork gate (threadcache.pxi) and waits for the moves
# under way, then takes every lock in the documented order; the parent
# releases them and reopens the gate; the child resets them and sets aside
# the caches of the threads it does not have (threadcache_orphan_others),
# whose blocks its fetches take first, a chain at a time, and whose contents
# go back to the shared stores as soon as anything asks (stats(),
# release_free_memory(), a failed allocation), so its figures add up and
# release_free_memory() reaches what those threads had cached.

cdef void _atfork_prepare() noexcept nogil:
    cdef int cl
    # Set only by the fork() that stopped one (parent and child clear it): a
    # second thread's fork() at the same moment finds none to stop and must
    # not undo the first one's flag.
    if _bg_stop_for_fork():
        tc_store_int(&g_bg_forked, 1)
    threadcache_gate_close(&g_registry)
    tc_spinlock_lock(&g_bg_lock)
    tc_spinlock_lock(&g_registry.lock)
    for cl in range(1, g_sizemap.num_classes):
        tc_spinlock_lock(&g_transfer[cl].lock)
    for cl in range(1, g_sizemap.num_classes):
        tc_spinlock_lock(&g_central[cl].lock)
    tc_spinlock_lock(&g_heap.lock)
    tc_spinlock_lock(&g_sampler.lock)     # nests only the arena's
    tc_spinlock_lock(&g_arena.lock)

cdef void _atfork_parent() noexcept nogil:
    cdef int cl
    tc_spinlock_unlock(&g_arena.lock)
    tc_spinlock_unlock(&g_sampler.lock)
    tc_spinlock_unlock(&g_heap.lock)
    for cl in range(1, g_sizemap.num_classes):
        tc_spinlock_unlock(&g_central[cl].lock)
    for cl in range(1, g_sizemap.num_classes):
        tc_spinlock_unlock(&g_transfer[cl].lock)
    tc_spinlock_unlock(&g_registry.lock)
    if tc_load_int(&g_bg_forked):
        tc_store_int(&g_bg_forked, 0)
        tc_store_int(&g_bg_wanted, 1)     # a new releaser at the next slow path
    tc_spinlock_unlock(&g_bg_lock)
    threadcache_gate_reopen(&g_registry)

cdef void _atfork_child() noexcept nogil:
    cdef int cl
    tc_spinlock_reset(&g_arena.lock)
    tc_spinlock_reset(&g_sampler.lock)
    tc_spinlock_reset(&g_heap.lock)
    for cl in range(1, g_sizemap.num_classes):
        tc_spinlock_reset(&g_central[cl].lock)
        tc_spinlock_reset(&g_transfer[cl].lock)
    tc_spinlock_reset(&g_registry.lock)
    tc_spinlock_reset(&g_bg_lock)
    threadcache_gate_reset(&g_registry)
    threadcache_orphan_others(&g_registry, <ThreadCache *>tc_tls_owner())
    # prepare stopped the releaser; a new one starts lazily, at the child's
    # first slow path with a heap of kBgStartHeap (creating threads inside
    # fork() is not allowed), as in the parent.
    if tc_load_int(&g_bg_forked):
        tc_store_int(&g_bg_forked, 0)
        tc_store_int(&g_bg_wanted, 1)

