"""Thread caches: slow start, per-list limits, byte budgets (private
registry, exact), and the global engine's behaviour with many short-lived
threads (stats)."""
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import tcalloc


@pytest.fixture
def eng(comp):
    return comp.PrivateEngine()


def test_slow_start_grows_max_length_one_by_one_then_by_batches(eng):
    tc = eng.cache_create()
    cl = eng.class_of(64)
    batch = eng.batch(cl)
    # A new list may hold nothing: its capacity counts against the budget.
    assert eng.cache_list(tc, cl)["max_length"] == 0
    p = eng.cache_alloc(tc, 64)
    assert p and eng.cache_list(tc, cl)["length"] == 0, "first fetch brings one object, not a batch"
    maxes = [eng.cache_list(tc, cl)["max_length"]]
    for _ in range(3000):
        assert eng.cache_alloc(tc, 64)
        maxes.append(eng.cache_list(tc, cl)["max_length"])
    steps = [b - a for a, b in zip(maxes, maxes[1:]) if b != a]
    assert all(s == 1 for s in steps[:batch - 2]), steps[:40]
    assert all(s % batch == 0 for s in steps[batch:]), steps
    assert maxes[-1] > batch
    assert max(maxes) <= 8192


def test_list_length_bounded_and_shrinks_after_repeated_overflow(eng):
    tc = eng.cache_create()
    eng.set_per_thread_max(64 << 20)       # keep the byte budget out of the way
    eng.set_overall_max(64 << 20)
    size = 64
    cl = eng.class_of(size)
    objs = eng.cache_alloc_many(tc, size, 4000)
    peak_max = eng.cache_list(tc, cl)["max_length"]
    r = eng.cache_free_many(tc, objs)
    assert r["max_over_length"] <= 1, "a push never leaves the list longer than max_length + 1"
    after = eng.cache_list(tc, cl)
    assert after["max_length"] < peak_max, "repeated overflow shrinks max_length"
    assert after["length"] <= after["max_length"] + 1


def test_thread_budget_bounds_the_cache(eng):
    # A lone thread may grow past the per-thread maximum into the unclaimed
    # overall budget (its live set is what it caches), never past the
    # overall budget.
    eng.set_overall_max(8 << 20)
    tc = eng.cache_create()
    objs = eng.cache_alloc_many(tc, 1024, 20000)       # 20 MiB
    assert all(objs)
    r = eng.cache_free_many(tc, objs)
    info = eng.cache_info(tc)
    assert info["max_size"] <= 8 << 20
    assert r["peak_size"] <= (8 << 20) + 262144, r
    assert info["size"] <= info["capacity"] <= info["max_size"]
    assert info["max_size"] > eng.registry_info()["per_thread_max"], "took the unclaimed budget"
    p = eng.byte_pools()
    assert p["thread_cache_free_bytes"] == info["size"]


def test_a_list_of_big_blocks_is_bounded(eng):
    # 3 MiB of 9 KiB blocks freed by one thread: its list keeps at most
    # 256 KiB of them (or one batch), the rest goes to the shared lists,
    # where its spans can return to the page heap for any size. Blocks over
    # 16 KiB: 16 of them, up to 1 MiB (a list of 4 made a thread that churns
    # them take the shared lists' locks every few operations). Of 3 MiB of
    # 1 KiB blocks, the interpreter's kind of object, the list keeps more:
    # only the byte budget and its overflow rule bound it.
    eng.set_overall_max(32 << 20)
    for size, cap in ((9216, 256 * 1024), (16384, 256 * 1024), (20480, 16 * 20480),
                      (65536, 1 << 20), (262144, 1 << 20), (1024, None)):
        tc = eng.cache_create()
        cl = eng.class_of(size)
        assert eng.class_size(cl) == size
        blocks = eng.cache_alloc_many(tc, size, (3 << 20) // size)
        grown = eng.cache_list(tc, cl)["max_length"]      # fetches grew the list to its limit
        eng.cache_free_many(tc, blocks)
        lst = eng.cache_list(tc, cl)
        held = lst["length"] * size
        if cap is None:
            assert held > 256 * 1024, (size, lst)
        else:
            bound = max(cap, eng.batch(cl) * size)
            assert held <= bound and max(grown, lst["max_length"]) * size <= bound, (size, lst)
        if size == 65536:
            assert grown == 16, grown       # more than 256 KiB of them
        eng.cache_destroy(tc)


def test_hot_thread_takes_budget_from_idle_one_which_shrinks_back(eng):
    # Cache A grows to hold a big live set, then goes idle; cache B needs
    # budget once none is unclaimed: it takes A's, and A gives its memory
    # back at its next slow-path call.
    eng.set_overall_max(8 << 20)
    a, b = eng.cache_create(), eng.cache_create()
    eng.cache_free_many(a, eng.cache_alloc_many(a, 1024, 12000))
    a_before = eng.cache_info(a)
    assert a_before["max_size"] > eng.registry_info()["per_thread_max"]
    assert eng.registry_info()["unclaimed"] < 64 * 1024
    eng.cache_free_many(b, eng.cache_alloc_many(b, 512, 12000))
    assert eng.cache_info(b)["max_size"] > 64 * 1024, "B got budget"
    assert eng.cache_info(a)["max_size"] < a_before["max_size"], "taken from the idle A"
    # A's next slow path: a push past a list's length, of another class.
    eng.cache_free_many(a, eng.cache_alloc_many(a, 64, 2))
    a_after = eng.cache_info(a)
    assert a_after["capacity"] <= a_after["max_size"]
    assert a_after["size"] < a_before["size"], "A shrank back"


def test_overall_budget_is_shared(eng):
    eng.set_overall_max(1 << 20)
    caches = [eng.cache_create() for _ in range(8)]
    for tc in caches:
        eng.cache_free_many(tc, eng.cache_alloc_many(tc, 1024, 6000))
    total = sum(eng.cache_info(tc)["size"] for tc in caches)
    # each cache may run the budget a minimum (512 KiB) into deficit
    assert total <= (1 << 20) + len(caches) * 512 * 1024
    assert sum(eng.cache_info(tc)["max_size"] for tc in caches) <= (1 << 20) + len(caches) * 512 * 1024


def test_destroy_flushes_and_recycles(eng):
    reg0 = eng.registry_info()
    tc = eng.cache_create()
    eng.cache_free_many(tc, eng.cache_alloc_many(tc, 100, 500))
    assert eng.cache_info(tc)["size"] > 0
    eng.cache_destroy(tc)
    assert eng.byte_pools()["thread_cache_free_bytes"] == 0
    reg = eng.registry_info()
    assert reg["num_caches"] == reg0["num_caches"]
    assert reg["unclaimed"] == reg0["unclaimed"], "the budget comes back"
    for c in range(1, len(eng.classes()) + 1):
        eng.transfer_drain(c)
    assert eng.counters()["small_span_bytes"] == 0, "every object reached its span again"
    for _ in range(20):
        eng.cache_destroy(eng.cache_create())
    assert eng.registry_info()["structs"] == reg["structs"], "cache structs are recycled"
    assert eng.check() == []


# ---- the global engine ---------------------------------------------------------

def _in_fresh_thread(fn):
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:      # re-raised in the caller
            out["error"] = e
    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_global_first_malloc_of_a_thread_fetches_one_object(comp):
    def work():
        before = tcalloc.stats()["thread_cache_free_bytes"]
        blocks = comp.churn(64, 1, free_all=False)
        after = tcalloc.stats()["thread_cache_free_bytes"]
        comp.free_blocks(blocks)
        return before, after
    before, after = _in_fresh_thread(work)
    assert after == before, "slow start: a new thread's first malloc must not prefetch a batch"


def test_two_threads_first_objects_never_share_a_cache_line(eng):
    # Slow start fetches one object at a time: carved side by side, two
    # threads' first objects would share a line, and two threads writing
    # their own objects would bounce it between cores (false sharing).
    a, b = eng.cache_create(), eng.cache_create()
    sizes = [eng.class_size(cl) for cl in sorted({eng.class_of(s) for s in range(8, 257, 8)})]
    held = {a: [], b: []}
    for size in sizes:
        for tc in (a, b, a, b):
            held[tc].append((eng.cache_alloc(tc, size), size))
    lines = {tc: {x // 64 for p, size in held[tc] for x in (p, p + size - 1)} for tc in held}
    assert not (lines[a] & lines[b]), sorted(lines[a] & lines[b])
    # What a carve brought beyond the one object asked for stays in the
    # thread's list: freeing the objects back overflows nothing.
    for tc in held:
        for p, size in held[tc]:
            eng.cache_free(tc, p)
        assert eng.cache_info(tc)["overflows"] == 0
        for size in sizes:
            lst = eng.cache_list(tc, eng.class_of(size))
            assert lst["length"] <= lst["max_length"], (size, lst)
    eng.cache_destroy(a)
    eng.cache_destroy(b)
    assert eng.check() == []


def test_global_threads_objects_apart_by_cache_lines():
    # The same through the global engine's malloc, from real threads, in a
    # fresh process (a pytest worker's heap has recycled objects, which
    # come back in any order).
    code = textwrap.dedent("""
        import ctypes, threading
        import tcalloc
        sizes = list(range(8, 256, 8))
        got = {}
        def work(k):
            bufs = [tcalloc.alloc(n) for n in sizes]
            got[k] = [(ctypes.addressof(ctypes.c_char.from_buffer(b)), len(b)) for b in bufs]
            held.wait()                    # all four hold their blocks
            held.wait()                    # until the main thread has looked
        held = threading.Barrier(5)
        ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in ts:
            t.start()
        held.wait()
        lines = {k: {x // 64 for p, n in v for x in (p, p + n - 1)} for k, v in got.items()}
        shared = [(i, j) for i in lines for j in lines if i < j and lines[i] & lines[j]]
        held.wait()
        for t in ts:
            t.join()
        print(shared)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout


def test_global_thread_cache_stays_within_overall_budget(comp):
    def work():
        base = tcalloc.stats()["thread_cache_free_bytes"]
        comp.churn(1024, 60000)            # 60 MiB through this thread's cache
        return tcalloc.stats()["thread_cache_free_bytes"] - base
    grown = _in_fresh_thread(work)
    assert grown <= tcalloc.get_max_total_thread_cache_bytes() + 262144


def test_global_1000_short_lived_native_threads():
    # In a fresh process: in a pytest worker, threads left by other tests may
    # exit (destroying their caches) or allocate while this one runs, and the
    # exact before/after comparison below would measure them too.
    code = textwrap.dedent("""
        import tcalloc
        import tct_components as comp
        s0 = tcalloc.stats()
        r = comp.short_lived_threads(total=1000, concurrent=16, blocks=32, seed=3)
        assert r == {"threads": 1000, "corrupt": 0, "failed": 0}, r
        s1 = tcalloc.stats()
        assert s1["thread_caches"] == s0["thread_caches"], ("exited threads' caches must be destroyed", s0["thread_caches"], s1["thread_caches"])
        assert s1["thread_cache_free_bytes"] <= s0["thread_cache_free_bytes"], "and flushed"
        assert s1["bytes_in_use"] == s0["bytes_in_use"], (s0["bytes_in_use"], s1["bytes_in_use"])
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_global_short_lived_python_threads(comp):
    s0 = tcalloc.stats()

    def work():
        comp.churn(200, 300)
    for _ in range(10):
        ts = [threading.Thread(target=work) for _ in range(20)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    # Thread.join() returns before the pthread runs its key destructors:
    # wait (bounded) for the caches to go.
    deadline = time.monotonic() + 30
    while tcalloc.stats()["thread_caches"] > s0["thread_caches"] and time.monotonic() < deadline:
        time.sleep(0.01)
    s1 = tcalloc.stats()
    assert s1["thread_caches"] == s0["thread_caches"]
    assert s1["thread_cache_free_bytes"] <= s0["thread_cache_free_bytes"]


def _scavenged_full_list(eng, n):
    """A private cache whose 64 B list took n freed blocks (the byte budget
    out of the way), then a scavenge: a period that starts with it full."""
    eng.set_per_thread_max(64 << 20)
    eng.set_overall_max(64 << 20)
    tc = eng.cache_create()
    cl = eng.class_of(64)
    eng.cache_free_many(tc, eng.cache_alloc_many(tc, 64, n))
    eng.cache_scavenge(tc)
    return tc, cl


def test_a_list_being_drained_keeps_its_objects_at_a_periodic_scavenge(eng):
    # An interpreter builds new objects out of a list of freed ones. A
    # periodic scavenge then must not give that list away, even when a few
    # frees of the same class come between the pops (the collector's
    # callbacks allocate and free a dict). Once the list stops draining, the
    # next scavenge gives back half of what lay idle.
    tc, cl = _scavenged_full_list(eng, 8000)
    full = eng.cache_list(tc, cl)["length"]
    assert full > 4000
    live = []
    for i in range(2000):
        live.append(eng.cache_alloc(tc, 64))
        if i % 100 == 0:                    # a short-lived object among the new ones
            eng.cache_free(tc, eng.cache_alloc(tc, 64))
    drained = eng.cache_list(tc, cl)["length"]
    assert drained == full - 2000
    fetches = eng.cache_info(tc)["fetches"]
    eng.cache_scavenge(tc)
    assert eng.cache_list(tc, cl)["length"] == drained, "a list being drained was scavenged"
    eng.cache_scavenge(tc)                 # a period with no use at all
    assert eng.cache_list(tc, cl)["length"] <= drained // 2 + 1, "an idle list kept its objects"
    assert eng.cache_info(tc)["fetches"] == fetches
    eng.cache_free_many(tc, live)


def test_a_scavenge_leaves_no_list_longer_than_its_limit(eng):
    # A list that was nearly emptied and filled again since the last
    # scavenge has a low-water mark of 2: the scavenge gives back one object
    # but lowers the limit by a batch. It must give back down to the new
    # limit too: the byte budget holds because a list never holds more than
    # its max_length (threadcache.pxi, ThreadCache.capacity).
    tc, cl = _scavenged_full_list(eng, 3000)
    full = eng.cache_list(tc, cl)
    assert full["length"] > full["max_length"] - eng.batch(cl) + 1, full
    eng.cache_free_many(tc, eng.cache_alloc_many(tc, 64, full["length"] - 2))
    assert eng.cache_list(tc, cl)["length"] == full["length"]
    eng.cache_scavenge(tc)
    after = eng.cache_list(tc, cl)
    assert after["max_length"] < full["max_length"], after
    assert after["length"] <= after["max_length"], after


def test_address_sort_after_a_collection_orders_every_kind_of_run(comp):
    # The sort the interpreter hook runs on the blocks a collection freed:
    # runs in order and in reverse take shortcuts, short runs an insertion
    # sort, the rest a radix sort over the bits that differ. Each must give
    # exactly sorted(), and the radix sort must stay inside its scratch.
    import random
    rng = random.Random(11)
    base = 0x7F3A_1200_0000
    cases = [[], [base], [base + 16, base], list(range(base, base + 64 * 1000, 64)),
             list(range(base + 48 * 999, base - 1, -48)), [base] * 40,
             [rng.randrange(2 ** 64) for _ in range(500)],       # every bit differs
             [base + rng.randrange(1 << 12) * 16 for _ in range(31)],
             [base + rng.randrange(1 << 12) * 16 for _ in range(33)]]
    for n in (100, 4096, 65536):
        blocks = [base + i * 96 for i in range(n)]
        rng.shuffle(blocks)
        cases.append(blocks)
        # Mostly in order with a few out of place (a list with frees among pops).
        near = sorted(blocks)
        for _ in range(5):
            i, j = rng.randrange(n), rng.randrange(n)
            near[i], near[j] = near[j], near[i]
        cases.append(near)
    cases.append([base + rng.randrange(1 << 30) * 16 for _ in range(3000)] + [base] * 3)
    for values in cases:
        got, overran = comp.sort_addrs(values)
        assert got == sorted(values), (len(values), values[:5])
        assert not overran


def test_a_lists_length_counted_from_its_counters_matches_its_links(eng):
    # A list keeps no length: it is derived from the pops and pushes the
    # fast paths count and what the slow paths moved (threadcache.pxi,
    # FreeList). Random work on three caches under a tight budget runs
    # every path that moves objects: fetches, overflows, scavenges,
    # budget steals, flushes, and frees of blocks another cache handed out
    # (whose list then frees far more than it ever popped). After each
    # step every list's length must be its chain's, within its limit, and
    # the caches' bytes what the engine reports.
    import random
    rng = random.Random(20261207)
    eng.set_overall_max(512 << 10)
    eng.set_per_thread_max(256 << 10)
    caches = [eng.cache_create() for _ in range(3)]
    sizes = (16, 64, 1024, 9216)
    classes = [eng.class_of(s) for s in sizes]
    live = []
    for step in range(1500):
        tc = rng.choice(caches)
        op = rng.random()
        if op < 0.45 or not live:
            size = rng.choice(sizes)
            live.extend(a for a in eng.cache_alloc_many(tc, size, rng.randint(1, 300)) if a)
        elif op < 0.9:
            rng.shuffle(live)
            k = rng.randint(1, min(len(live), 400))
            eng.cache_free_many(tc, live[:k])       # many of them from other caches
            del live[:k]
        elif op < 0.97:
            eng.cache_scavenge(tc, rng.random() < 0.5)
        else:
            eng.cache_flush(tc)
        cached = 0
        for c in caches:
            for cl, size in zip(classes, sizes):
                lst = eng.cache_list(c, cl)
                assert lst["length"] == lst["links"], (step, size, lst)
                assert lst["length"] <= lst["max_length"], (step, size, lst)
                cached += lst["length"] * size
        assert eng.byte_pools()["thread_cache_free_bytes"] == cached, step
    eng.cache_free_many(caches[0], live)
    for c in caches:
        eng.cache_destroy(c)
    assert eng.byte_pools()["thread_cache_free_bytes"] == 0
