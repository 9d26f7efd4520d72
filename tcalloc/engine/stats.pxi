# ---- statistics ------------------------------------------------------------------

cdef struct EngineStats:
    uint64_t bytes_in_use
    uint64_t small_in_use
    uint64_t heap_bytes
    uint64_t page_heap_free
    uint64_t released
    uint64_t central_free
    uint64_t transfer_free
    uint64_t thread_cache_free
    uint64_t span_overhead
    uint64_t metadata
    uint64_t metadata_mapped
    uint64_t released_background
    uint64_t released_on_free
    uint64_t released_total
    uint64_t large_in_use
    uint64_t large_allocs
    uint64_t large_frees
    uint64_t spans_in_use
    uint64_t thread_caches
    uint64_t thread_cache_structs
    uint64_t tc_fetches               # thread-cache slow-path events, live caches
    uint64_t tc_overflows
    uint64_t tc_scavenges
    uint64_t tc_budget_bytes          # sum of the live caches' budgets
    uint64_t limit_bytes              # the memory limit, read under the page-heap lock
    int limit_hard

cdef struct ClassStats:
    uint64_t mallocs
    uint64_t frees
    uint64_t in_use                   # mallocs - frees, or 0 (see _collect)
    uint64_t spans
    uint64_t span_bytes
    uint64_t central_objects
    uint64_t total_objects
    uint64_t transfer_objects
    uint64_t transfer_hits            # batches handed over in O(1)
    uint64_t transfer_misses          # ... or not (the central list did the work)

cdef void _collect(EngineStats *st, ClassStats *cs) noexcept nogil:
    """Gather the figures, each structure under its own lock in turn (a
    consistent total when no other thread is allocating)."""
    cdef int cl
    cdef int n = g_sizemap.num_classes
    cdef ThreadCache *tc
    cdef uint64_t m, f, size, node_bytes
    cdef ClassStats local[kMaxClasses]
    if cs == NULL:
        cs = local
    threadcache_adopt_orphans(&g_registry)   # a fork child's figures include its dead threads' caches
    memset(st, 0, sizeof(EngineStats))
    memset(cs, 0, sizeof(ClassStats) * kMaxClasses)
    tc_spinlock_lock(&g_registry.lock)
    for cl in range(1, n):
        cs[cl].mallocs = tc_load_u64(&g_registry.retired_mallocs[cl])
        cs[cl].frees = tc_load_u64(&g_registry.retired_frees[cl])
    tc = g_registry.caches
    while tc != NULL:
        for cl in range(1, n):
            # Frees first: a malloc+free pair the owner makes between the
            # two reads then counts as one block out, not one free too many.
            cs[cl].frees += freelist_frees_snapshot(&tc.lists[cl])
            cs[cl].mallocs += freelist_mallocs_snapshot(&tc.lists[cl])
        st.thread_cache_free += threadcache_bytes(tc)
        st.tc_fetches += tc_load_u64(&tc.fetches)
        st.tc_overflows += tc_load_u64(&tc.overflows)
        st.tc_scavenges += tc_load_u64(&tc.scavenges)
        st.tc_budget_bytes += tc_load_u64(&tc.max_size)
        tc = tc.next
    st.thread_caches = g_registry.num_caches
    st.thread_cache_structs = g_registry.structs
    tc_spinlock_unlock(&g_registry.lock)
    for cl in range(1, n):
        size = g_sizemap.class_to_size[cl]
        tc_spinlock_lock(&g_transfer[cl].lock)
        cs[cl].transfer_objects = <uint64_t>g_transfer[cl].used * g_transfer[cl].batch
        cs[cl].transfer_hits = g_transfer[cl].insert_hits + g_transfer[cl].remove_hits
        cs[cl].transfer_misses = g_transfer[cl].insert_misses + g_transfer[cl].remove_misses
        tc_spinlock_unlock(&g_transfer[cl].lock)
        tc_spinlock_lock(&g_central[cl].lock)
        cs[cl].spans = g_central[cl].nspans
        cs[cl].span_bytes = g_central[cl].span_bytes
        cs[cl].central_objects = g_central[cl].free_objects
        cs[cl].total_objects = g_central[cl].total_objects
        tc_spinlock_unlock(&g_central[cl].lock)
        # The lists are read one after another while their owners run, so a
        # block handed from one thread to another can be counted freed but
        # not yet allocated: the difference may then come out below zero,
        # which unsigned arithmetic would turn into 16 EiB.
        cs[cl].in_use = cs[cl].mallocs - cs[cl].frees if cs[cl].mallocs > cs[cl].frees else 0
        st.small_in_use += cs[cl].in_use * size
        st.transfer_free += cs[cl].transfer_objects * size
        st.central_free += cs[cl].central_objects * size
        st.span_overhead += cs[cl].span_bytes - cs[cl].total_objects * size
    tc_spinlock_lock(&g_heap.lock)
    st.heap_bytes = g_heap.system_bytes
    st.page_heap_free = g_heap.free_bytes
    st.released = g_heap.released_bytes
    st.released_background = g_heap.released_background
    st.released_on_free = g_heap.released_on_free
    st.released_total = g_heap.released_total
    st.large_in_use = g_heap.large_bytes
    st.large_allocs = g_heap.large_allocs
    st.large_frees = g_heap.large_frees
    st.spans_in_use = g_heap.small_spans + g_heap.large_spans
    node_bytes = g_heap.pagemap.node_bytes     # pagemap writers hold the page-heap lock
    st.limit_bytes = g_heap.limit_bytes
    st.limit_hard = g_heap.limit_hard
    tc_spinlock_unlock(&g_heap.lock)
    # In use: every arena allocation except pagemap leaves, plus the leaf
    # entries of heap pages (a class byte, a span pointer and a heap bit
    # each). A leaf is mapped whole (4.56 MiB for 4 GiB of address space) but
    # only the entries of pages the heap owns are ever written, so only
    # those are resident.
    st.metadata = (tc_load_u64(&g_arena.used_bytes) - node_bytes
                   + (st.heap_bytes >> kPageShift) * (1 + sizeof(void *))
                   + (st.heap_bytes >> kPageShift) // 8)
    st.metadata_mapped = tc_load_u64(&g_arena.mapped_bytes)
    st.bytes_in_use = st.small_in_use + st.large_in_use

cdef dict _lock_dict(tc_spinlock_t *l):
    return {"acquisitions": tc_load_u64(&l.acquisitions), "contended": tc_load_u64(&l.contended),
            "spins": tc_load_u64(&l.spins), "wait_ns": tc_load_u64(&l.wait_ns)}

def stats():
    """A snapshot of the heap as a dict (see the README for every key).

    Thread-safe. The byte figures add up exactly when no thread is
    allocating: bytes_in_use + page_heap_free_bytes + page_heap_released_bytes
    + central_free_bytes + transfer_cache_free_bytes + thread_cache_free_bytes
    + span_overhead_bytes == heap_bytes.
    """
    cdef EngineStats st
    cdef ClassStats cs[kMaxClasses]
    cdef int cl
    with nogil:
        _collect(&st, cs)
    classes = []
    locks = {"page_heap": _lock_dict(&g_heap.lock), "thread_caches": _lock_dict(&g_registry.lock),
             "metadata": _lock_dict(&g_arena.lock), "heap_sampler": _lock_dict(&g_sampler.lock),
             "background": _lock_dict(&g_bg_lock),
             # Not a lock: moves between a thread cache and the shared stores
             # that waited for a fork() under way (threadcache_gate_enter).
             "fork_gate": {"acquisitions": tc_load_u64(&g_registry.gate_waits),
                           "contended": tc_load_u64(&g_registry.gate_waits),
                           "spins": tc_load_u64(&g_registry.gate_spins),
                           "wait_ns": tc_load_u64(&g_registry.gate_wait_ns)}}
    for cl in range(1, g_sizemap.num_classes):
        size = g_sizemap.class_to_size[cl]
        classes.append({
            "class": cl, "size": size, "pages": g_sizemap.class_to_pages[cl],
            "batch": g_sizemap.num_objects_to_move[cl],
            "objects_per_span": g_sizemap.objects_per_span[cl],
            "objects_in_use": cs[cl].in_use,
            "mallocs": cs[cl].mallocs, "frees": cs[cl].frees, "spans": cs[cl].spans,
            "central_free_objects": cs[cl].central_objects,
            "transfer_free_objects": cs[cl].transfer_objects,
            "transfer_hits": cs[cl].transfer_hits,
            "transfer_misses": cs[cl].transfer_misses,
        })
        locks["central:%d" % size] = _lock_dict(&g_central[cl].lock)
        locks["transfer:%d" % size] = _lock_dict(&g_transfer[cl].lock)
    return {
        "bytes_in_use": st.bytes_in_use,
        "heap_bytes": st.heap_bytes,
        "page_heap_free_bytes": st.page_heap_free,
        "page_heap_released_bytes": st.released,
        "central_free_bytes": st.central_free,
        "transfer_cache_free_bytes": st.transfer_free,
        "thread_cache_free_bytes": st.thread_cache_free,
        "span_overhead_bytes": st.span_overhead,
        "metadata_bytes": st.metadata,
        "metadata_mapped_bytes": st.metadata_mapped,
        "thread_caches": st.thread_caches,
        "thread_cache_structs": st.thread_cache_structs,
        "peak_heap_bytes": tc_load_u64(&g_heap.peak_committed),
        "peak_allocated_bytes": tc_load_u64(&g_registry.peak_allocated),
        "thread_cache_budget_bytes": st.tc_budget_bytes,
        "thread_cache_fetches": st.tc_fetches,
        "thread_cache_overflows": st.tc_overflows,
        "thread_cache_scavenges": st.tc_scavenges,
        "spans_in_use": st.spans_in_use,
        "small_bytes_in_use": st.small_in_use,
        "large_bytes_in_use": st.large_in_use,
        "large_mallocs": st.large_allocs,
        "large_frees": st.large_frees,
        "memory_limit": st.limit_bytes,
        "memory_limit_hard": bool(st.limit_hard),
        "release_rate": tc_load_u64(&g_release_rate),
        "background_released_bytes": st.released_background,
        "released_on_free_bytes": st.released_on_free,
        "released_total_bytes": st.released_total,
        "realloc_moved_bytes": tc_load_u64(&g_moved_bytes),
        "gc_sorted_objects": tc_load_u64(&g_gc_sorted),
        "size_classes": classes,
        "locks": locks,
    }

def _mib(n):
    return n / 1048576.0

def stats_text():
    """A readable report in the manner of TCMalloc's MallocExtension::GetStats."""
    cdef uint64_t normal[kMaxPages + 1]
    cdef uint64_t returned[kMaxPages + 1]
    s = stats()
    with nogil:
        pageheap_free_histogram(&g_heap, normal, returned)
    rows = [
        ("", "bytes_in_use", "Bytes in use by application"),
        ("+", "page_heap_free_bytes", "Bytes in page heap freelist"),
        ("+", "central_free_bytes", "Bytes in central cache freelist"),
        ("+", "transfer_cache_free_bytes", "Bytes in transfer cache freelist"),
        ("+", "thread_cache_free_bytes", "Bytes in thread cache freelists"),
        ("+", "span_overhead_bytes", "Bytes in span tails (no room for an object)"),
        ("+", "page_heap_released_bytes", "Bytes released to OS (aka unmapped)"),
    ]
    out = ["-" * 64]
    for sign, key, label in rows:
        out.append("MALLOC: %1s %15d (%9.1f MiB) %s" % (sign, s[key], _mib(s[key]), label))
    out.append("MALLOC:   ------------")
    out.append("MALLOC: = %15d (%9.1f MiB) Actual memory used (heap mapped from the OS)" % (s["heap_bytes"], _mib(s["heap_bytes"])))
    out.append("MALLOC:   %15d (%9.1f MiB) Peak committed heap (mapped minus released)"
               % (s["peak_heap_bytes"], _mib(s["peak_heap_bytes"])))
    out.append("MALLOC:   %15d (%9.1f MiB) Peak bytes allocated (in use or in thread caches)"
               % (s["peak_allocated_bytes"], _mib(s["peak_allocated_bytes"])))
    out.append("MALLOC:   %15d (%9.1f MiB) Bytes in malloc metadata (%.1f MiB mapped)"
               % (s["metadata_bytes"], _mib(s["metadata_bytes"]), _mib(s["metadata_mapped_bytes"])))
    out.append("MALLOC:   ------------")
    out.append("MALLOC:   %15d              Spans in use" % s["spans_in_use"])
    out.append("MALLOC:   %15d              Thread heaps in use" % s["thread_caches"])
    out.append("MALLOC:   %15d              Tcalloc page size" % kPageSize)
    if s["memory_limit"]:
        out.append("MALLOC:   %15d              Memory limit (%s)" % (s["memory_limit"], "hard" if s["memory_limit_hard"] else "soft"))
    out.append("-" * 64)
    out.append("Size classes in use (class, size, pages/span, batch, objects in use, mallocs, frees, spans):")
    for c in s["size_classes"]:
        if c["mallocs"] or c["spans"]:
            out.append("  class %3d [%7d B] %3d pg %3d batch %10d in use %12d mallocs %12d frees %6d spans"
                       % (c["class"], c["size"], c["pages"], c["batch"], c["objects_in_use"],
                          c["mallocs"], c["frees"], c["spans"]))
    out.append("-" * 64)
    out.append("Page heap free spans (pages: normal / returned):")
    for i in range(1, kMaxPages + 1):
        if normal[i] or returned[i]:
            out.append("  %4d pages: %6d normal %6d returned" % (i, normal[i], returned[i]))
    if normal[0] or returned[0]:
        out.append("  >%3d pages: %6d normal %6d returned" % (kMaxPages, normal[0], returned[0]))
    out.append("-" * 64)
    hot = sorted(s["locks"].items(), key=lambda kv: -kv[1]["wait_ns"])[:5]
    out.append("Locks by time waited (acquisitions, contended, spins, ms waited):")
    for name, d in hot:
        if d["acquisitions"]:
            out.append("  %-18s %12d %10d %12d %10.3f" % (name, d["acquisitions"], d["contended"],
                                                         d["spins"], d["wait_ns"] / 1e6))
    return "\n".join(out) + "\n"

