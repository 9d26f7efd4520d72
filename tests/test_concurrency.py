"""Native threads without the GIL through the capsule: cross-thread frees,
every byte verified; the stats identity at rest and after churn."""
import pytest

import tcalloc

POOLS = ("bytes_in_use", "page_heap_free_bytes", "page_heap_released_bytes", "central_free_bytes",
         "transfer_cache_free_bytes", "thread_cache_free_bytes", "span_overhead_bytes")


def _identity(s):
    return sum(s[k] for k in POOLS), s["heap_bytes"]


def test_stats_identity_at_rest():
    total, heap = _identity(tcalloc.stats())
    assert total == heap


def test_ring_workload_many_threads_every_byte_verified(comp):
    base = tcalloc.stats()["bytes_in_use"]
    r = comp.ring_workload(nthreads=8, iters=15000, seed=11, large_every=200)
    assert r["corrupt"] == 0, r
    assert r["bad_usable"] == r["bad_zero"] == r["bad_align"] == r["failed"] == 0, r
    assert r["handed"] > 10000 and r["received"] == r["handed"], r
    assert r["reallocs"] > 0
    s = tcalloc.stats()
    assert s["bytes_in_use"] == base, "everything was freed"
    total, heap = _identity(s)
    assert total == heap, "stats identity after multi-threaded churn"


def test_ring_workload_small_blocks_only_more_threads(comp):
    r = comp.ring_workload(nthreads=16, iters=8000, seed=12, large_every=0, ring_capacity=64)
    assert r["corrupt"] == 0 and r["bad_usable"] == 0 and r["failed"] == 0, r
    assert r["received"] == r["handed"] > 0


def test_verification_catches_injected_corruption(comp):
    # The check must be able to fail: spoil one handed-over block in 50.
    r = comp.ring_workload(nthreads=4, iters=3000, seed=13, large_every=0, corrupt_every=50)
    assert r["injected"] > 0
    assert r["corrupt"] == r["injected"], r


def test_bytes_in_use_back_to_baseline_after_threads(comp):
    s0 = tcalloc.stats()
    comp.short_lived_threads(total=64, concurrent=8, blocks=64, seed=5)
    comp.ring_workload(nthreads=4, iters=4000, seed=14)
    s1 = tcalloc.stats()
    assert s1["bytes_in_use"] == s0["bytes_in_use"]
    assert s1["large_bytes_in_use"] == s0["large_bytes_in_use"]
    for c0, c1 in zip(s0["size_classes"], s1["size_classes"]):
        assert c1["objects_in_use"] == c0["objects_in_use"], c1["size"]
        assert c1["mallocs"] - c0["mallocs"] == c1["frees"] - c0["frees"]
    total, heap = _identity(s1)
    assert total == heap


def test_release_after_churn_keeps_identity(comp):
    comp.ring_workload(nthreads=4, iters=3000, seed=15)
    tcalloc.release_free_memory()
    s = tcalloc.stats()
    total, heap = _identity(s)
    assert total == heap
    assert s["page_heap_free_bytes"] == 0
