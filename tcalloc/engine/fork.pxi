# ---- fork ------------------------------------------------------------------

cdef void _atfork_prepare() noexcept nogil:
    cdef int cl
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
    tc_spinlock_unlock(&g_bg_lock)

cdef void _atfork_child() noexcept nogil:
    global g_bg_running, g_bg_restart
    cdef int cl
    tc_spinlock_reset(&g_arena.lock)
    tc_spinlock_reset(&g_sampler.lock)
    tc_spinlock_reset(&g_heap.lock)
    for cl in range(1, g_sizemap.num_classes):
        tc_spinlock_reset(&g_central[cl].lock)
        tc_spinlock_reset(&g_transfer[cl].lock)
    tc_spinlock_reset(&g_registry.lock)
    tc_spinlock_reset(&g_bg_lock)
    # The releaser thread did not survive the fork; start a new one lazily
    # (creating threads inside fork() is not allowed).
    if g_bg_running:
        g_bg_running = 0
        g_bg_restart = 1

