"""Memory goes back to the OS: by itself by default (the free-memory cap
beyond recent demand on every free, the background releaser at the default
rate), not at all with an explicit rate of 0 (until release_free_memory()),
and at a set rate. Each runs in a fresh interpreter so RSS, threads and the
release rate are its own."""
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FREE_CAP = 64 << 20     # the documented free cap: a free leaves at most this much free and backed


def _run(code, timeout=120, rate=None, argv=(), **extra_env):
    env = dict(os.environ, **extra_env)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("TCALLOC_RELEASE_RATE", None)
    env.pop("TCALLOC_MEMORY_LIMIT", None)
    if rate is not None:
        env["TCALLOC_RELEASE_RATE"] = rate
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *argv], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_512_mib_freed_and_released_drops_rss():
    # Release off, so the explicit call has it all to do.
    out = _run("""
        import psutil, tcalloc
        import tct_components as comp
        MIB = 1 << 20
        proc = psutil.Process()
        base = proc.memory_info().rss
        small = comp.BlockSet(256 * MIB, 16, 4096, seed=1)        # ~125k small blocks
        large = comp.BlockSet(256 * MIB, 300000, 4 * MIB, seed=2)  # large blocks
        peak = proc.memory_info().rss
        assert peak - base >= 0.9 * 512 * MIB, ("allocation not resident", base, peak)
        small.free_all()
        large.free_all()
        released = tcalloc.release_free_memory()
        end = proc.memory_info().rss
        s = tcalloc.stats()
        print(base, peak, end, released, s["page_heap_free_bytes"])
        assert peak - end >= 0.9 * 512 * MIB, ("RSS did not drop", base, peak, end)
        assert released >= 0.9 * 512 * MIB, released
        assert s["page_heap_free_bytes"] == 0
    """, rate="0")
    assert out.strip()


def test_background_release_at_a_set_rate():
    _run("""
        import time, tcalloc
        import tct_components as comp
        MIB = 1 << 20
        # 14 MiB: under the free cap's 64 MiB floor, so what goes back is
        # the releaser thread's work alone.
        blocks = comp.BlockSet(14 * MIB, 1 * MIB, 2 * MIB, seed=3)
        blocks.free_all()
        free0 = tcalloc.stats()["page_heap_free_bytes"]
        assert free0 >= 12 * MIB, free0
        assert tcalloc.get_release_rate() == 0              # TCALLOC_RELEASE_RATE=0
        tcalloc.set_release_rate(256 * MIB)
        assert tcalloc.get_release_rate() == 256 * MIB
        deadline = time.monotonic() + 60        # generous: "eventually"
        while tcalloc.stats()["page_heap_free_bytes"] > free0 // 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        s = tcalloc.stats()
        assert s["page_heap_free_bytes"] <= free0 // 10, (free0, s["page_heap_free_bytes"])
        assert s["background_released_bytes"] > 0
        tcalloc.set_release_rate(0)
    """, rate="0")


def test_untouched_large_block_is_not_counted_as_backed_memory():
    # A large block that the program never wrote comes back as released
    # memory: stats agree with RSS, release_free_memory() has nothing to
    # claim for it, and a calloc of the same pages needs no memset (it
    # stays non-resident). A written block comes back as backed free memory.
    out = _run("""
        import psutil, tcalloc
        MIB = 1 << 20
        proc = psutil.Process()
        tcalloc.release_free_memory()
        b = tcalloc.alloc(64 * MIB)
        rss0 = proc.memory_info().rss
        del b
        s = tcalloc.stats()
        assert s["page_heap_free_bytes"] < 8 * MIB, s["page_heap_free_bytes"]
        assert s["page_heap_released_bytes"] >= 64 * MIB, s["page_heap_released_bytes"]
        assert tcalloc.release_free_memory() < 8 * MIB
        z = tcalloc.alloc(64 * MIB, zero=True)
        assert proc.memory_info().rss - rss0 < 8 * MIB, "calloc touched the released pages"
        assert bytes(memoryview(z)[::4096]) == bytes(16384)
        del z
        w = tcalloc.alloc(64 * MIB)
        memoryview(w)[::4096] = b"x" * 16384           # every page written
        del w
        s = tcalloc.stats()
        assert s["page_heap_free_bytes"] >= 64 * MIB, s["page_heap_free_bytes"]
        assert tcalloc.release_free_memory() >= 64 * MIB
        print("ok")
    """, rate="0")
    assert out.strip().endswith("ok")


# A burst: 4 threads write ~256 MiB of 1..4 MiB buffers, keep one in eight
# and free the rest. Prints the figures the tests below judge, as JSON. The
# threads hold their buffers until all four have written theirs: on a
# loaded machine one could otherwise finish and free before another began,
# and the burst would never be 256 MiB at once.
BURST = """
    import json, threading, time, psutil, tcalloc
    MIB = 1 << 20
    proc = psutil.Process()
    threads0 = proc.num_threads()
    all_written = threading.Barrier(4)
    def work(i, keep):
        bufs = [tcalloc.alloc((1 + (i + k) % 4) * MIB) for k in range(26)]
        for b in bufs:
            memoryview(b)[::4096] = b"x" * (len(b) // 4096)
        keep.extend(bufs[::8])
        all_written.wait()
    keep = []
    ths = [threading.Thread(target=work, args=(i, keep)) for i in range(4)]
    for t in ths: t.start()
    for t in ths: t.join()
    s = tcalloc.stats()
    in_spans = s["heap_bytes"] - s["page_heap_free_bytes"] - s["page_heap_released_bytes"]
    r = dict(rate=tcalloc.get_release_rate(), free=s["page_heap_free_bytes"], in_spans=in_spans,
             live=sum(len(b) for b in keep), heap=s["heap_bytes"], rss=proc.memory_info().rss,
             released=s["released_total_bytes"], threads_added=proc.num_threads() - threads0)
    # "Soon": the burst's demand is recent for 0.5-1 s; give a loaded machine 5.
    t0 = time.monotonic()
    while (r["rate"] and time.monotonic() < t0 + 5.0
           and tcalloc.stats()["page_heap_free_bytes"] > (64 << 20)):
        time.sleep(0.02)
    s = tcalloc.stats()
    r.update(free_soon=s["page_heap_free_bytes"], released_soon=s["released_total_bytes"])
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and tcalloc.stats()["page_heap_free_bytes"]:
        time.sleep(0.05)
    s = tcalloc.stats()
    r.update(free_later=s["page_heap_free_bytes"], background=s["background_released_bytes"],
             threads_later=proc.num_threads() - threads0)
    print(json.dumps(r))
"""


def _burst(rate, wait):
    import json
    return json.loads(_run(BURST.replace("WAIT", repr(wait)), rate=rate).strip().splitlines()[-1])


def test_default_release_brings_a_burst_under_the_cap_soon_without_a_call():
    r = _burst(None, 30.0)
    mib = 1 << 20
    assert r["rate"] > 0, r                                    # release is on by default
    freed = r["heap"] - r["live"]
    assert freed >= 150 * mib, r                               # the burst did free most of it
    # Once the burst's demand is no longer recent, backed free memory is
    # brought to the cap without a call.
    assert r["free_soon"] <= FREE_CAP, r
    assert r["released_soon"] >= freed - FREE_CAP - 8 * mib, r
    # The heap passed 64 MiB, so the releaser runs and returns the rest in time.
    assert r["threads_later"] == 1, r
    assert r["free_later"] == 0 and r["background"] > 0, r


def test_an_explicit_rate_of_0_turns_release_off():
    r = _burst("0", 0.5)
    mib = 1 << 20
    assert r["rate"] == 0, r
    # Freed memory stays backed (no release on free, no releaser thread).
    assert r["free"] >= r["heap"] - r["live"] - 16 * mib, r      # all but cached blocks
    assert r["released"] == 0 and r["background"] == 0, r
    assert r["threads_later"] == 0, r
    assert r["free_later"] == r["free"], r


def test_set_release_rate_0_at_run_time_turns_the_cap_off_and_a_rate_back_on():
    out = _run("""
        import tcalloc
        MIB = 1 << 20
        tcalloc.set_release_rate(0)
        bufs = [tcalloc.alloc(4 * MIB) for _ in range(40)]
        for b in bufs:
            memoryview(b)[::4096] = b"x" * (len(b) // 4096)
        del bufs
        free = tcalloc.stats()["page_heap_free_bytes"]
        assert free >= 150 * MIB, free                      # kept: release is off
        tcalloc.set_release_rate(1)                         # on again: the cap applies at once
        s = tcalloc.stats()
        assert s["page_heap_free_bytes"] <= 64 * MIB, s["page_heap_free_bytes"]
        print("ok")
    """)
    assert out.strip().endswith("ok")


BG_START_HEAP = 16 << 20   # the documented heap size at which the releaser thread starts


def test_the_releaser_thread_does_not_start_for_a_small_heap():
    out = _run("""
        import threading, time, psutil, tcalloc
        MIB = 1 << 20
        proc = psutil.Process()
        n0 = proc.num_threads()
        for _ in range(3):
            bufs = [tcalloc.alloc(MIB) for _ in range(8)]   # an 8 MiB heap, well below 16 MiB
            for b in bufs:
                memoryview(b)[::4096] = b"x" * 256
            del bufs
        t = threading.Thread(target=lambda: tcalloc.alloc(1000)); t.start(); t.join()
        time.sleep(0.3)
        assert tcalloc.get_release_rate() > 0
        assert proc.num_threads() == n0, (n0, proc.num_threads())
        assert tcalloc.stats()["heap_bytes"] < START, tcalloc.stats()["heap_bytes"]
        print("ok")
    """.replace("START", str(BG_START_HEAP)))
    assert out.strip().endswith("ok")


def test_a_heap_under_the_free_cap_gives_its_free_pages_back_in_the_background():
    # 40 MiB: above the releaser's start, under the 64 MiB free cap, so
    # nothing goes back on free; the releaser returns it all (8 MiB/s).
    out = _run("""
        import time, psutil, tcalloc
        MIB = 1 << 20
        proc = psutil.Process()
        n0 = proc.num_threads()
        bufs = [tcalloc.alloc(MIB) for _ in range(40)]
        for b in bufs:
            memoryview(b)[::4096] = b"x" * 256
        del bufs
        s = tcalloc.stats()
        assert s["heap_bytes"] < CAP and s["page_heap_free_bytes"] >= 32 * MIB, s["page_heap_free_bytes"]
        assert s["released_on_free_bytes"] == 0, s["released_on_free_bytes"]
        deadline = time.monotonic() + 30
        while tcalloc.stats()["page_heap_free_bytes"] and time.monotonic() < deadline:
            time.sleep(0.1)
        s = tcalloc.stats()
        assert s["page_heap_free_bytes"] == 0, s["page_heap_free_bytes"]
        assert s["background_released_bytes"] >= 32 * MIB, s["background_released_bytes"]
        assert proc.num_threads() == n0 + 1, (n0, proc.num_threads())
        print("ok")
    """.replace("CAP", str(FREE_CAP)))
    assert out.strip().endswith("ok")


def test_untouched_calloc_block_is_not_counted_as_backed_memory():
    # The same for a calloc'd block: calloc skipped the memset (fresh
    # pages), so the block is as untouched as a malloc'd one. Filed as
    # backed free memory, the next calloc of those pages memset them all:
    # RSS grew by the block's size for memory the program never wrote.
    out = _run("""
        import psutil, tcalloc
        MIB = 1 << 20
        proc = psutil.Process()
        tcalloc.release_free_memory()
        rss0 = proc.memory_info().rss
        z = tcalloc.alloc(64 * MIB, zero=True)
        del z
        s = tcalloc.stats()
        assert s["page_heap_free_bytes"] < 8 * MIB, ("untouched calloc block filed as backed",
                                                    s["page_heap_free_bytes"])
        assert s["page_heap_released_bytes"] >= 64 * MIB, s["page_heap_released_bytes"]
        z = tcalloc.alloc(64 * MIB, zero=True)
        assert proc.memory_info().rss - rss0 < 8 * MIB, "the second calloc touched the pages"
        assert bytes(memoryview(z)[::4096]) == bytes(16384)
        memoryview(z)[::4096] = b"x" * 16384           # written now: backed when freed
        del z
        assert tcalloc.stats()["page_heap_free_bytes"] >= 64 * MIB
        z = tcalloc.alloc(64 * MIB, zero=True)          # dirty pages: calloc must zero them
        assert bytes(memoryview(z)[::4096]) == bytes(16384)
        print("ok")
    """, rate="0")                     # release off: the filing itself is under test
    assert out.strip().endswith("ok")


def test_debug_mode_free_of_an_untouched_large_block_commits_nothing():
    # Debug mode poisons freed memory so stale reads show. Poisoning every
    # page of a large block made its free write pages the program never
    # touched: a 1 GiB block never written, freed, grew RSS by 1 GiB (and
    # a 16 GiB one ran a fuzz input out of memory). Only pages that are
    # resident get the poison; the written one does.
    out = _run("""
        import psutil, tcalloc
        assert tcalloc.debug_enabled()
        MIB = 1 << 20
        proc = psutil.Process()
        b = tcalloc.alloc(1024 * MIB)
        memoryview(b)[:8] = b"written!"
        m = memoryview(b)
        m.release()
        rss0 = proc.memory_info().rss
        addr = b.address
        del b
        assert proc.memory_info().rss - rss0 < 64 * MIB, "free wrote the untouched pages"
        import ctypes
        assert ctypes.string_at(addr, 16) == bytes([0xDB]) * 16, "the written page is not poisoned"
        print("ok")
    """, rate="0", TCALLOC_DEBUG="1")  # release off: the free cap would release the page
    assert out.strip().endswith("ok")


def test_the_free_cap_does_not_grow_with_the_heap():
    # 1 GiB in use (never touched, so it costs no RSS) and 120 MiB of
    # written blocks freed: once their demand is no longer recent, the cap
    # is 64 MiB however large the heap is (a cap proportional to the memory
    # in use kept all 120 MiB resident).
    _run("""
        import time, tcalloc
        import tct_components as comp
        MIB = 1 << 20
        held = [tcalloc.alloc(64 * MIB) for _ in range(16)]
        blocks = comp.BlockSet(120 * MIB, 8 * MIB, 8 * MIB + 1, seed=4)   # every page written
        blocks.free_all()
        deadline = time.monotonic() + 5.0          # recent for 0.5-1 s; a loaded machine
        while time.monotonic() < deadline and tcalloc.stats()["page_heap_free_bytes"] > 64 * MIB:
            time.sleep(0.02)
        s = tcalloc.stats()
        assert s["large_bytes_in_use"] >= 1024 * MIB, s["large_bytes_in_use"]
        assert s["page_heap_free_bytes"] <= 64 * MIB, s["page_heap_free_bytes"]
        assert s["released_total_bytes"] >= 56 * MIB, s["released_total_bytes"]
        del held
    """)


def test_memory_the_heap_needed_a_moment_ago_stays_backed():
    # A live set that drops by 160 MiB and comes back at once (the lab's
    # mixed workload swings like this every fraction of a second) keeps its
    # pages: a cap on free memory alone released 96 MiB at the drop and
    # faulted it in again at the rise. Once the demand is no longer recent
    # (0.5-1 s), the releaser brings the free memory under the cap.
    out = _run("""
        import ctypes, time, psutil, tcalloc
        import tct_native as nat
        MIB = 1 << 20
        proc = psutil.Process()
        def fill():
            ps = [nat.malloc(4 * MIB) for _ in range(40)]
            t = time.monotonic()                   # the demand peak
            for p in ps:
                ctypes.memset(p, 1, 4 * MIB)
            return ps, t
        fig = lambda s: {k: s[k] for k in ("released_on_free_bytes", "page_heap_free_bytes",
                                           "peak_heap_bytes")}
        ps, t_peak = fill()
        for attempt in range(5):
            s0 = tcalloc.stats()
            for p in ps:
                nat.free(p)
            s1 = tcalloc.stats()
            ps, t_peak2 = fill()
            s2 = tcalloc.stats()
            # The peak counts for at least 0.5 s: a run whose frees came
            # later than that (a stalled machine) says nothing; do it again.
            if time.monotonic() - t_peak < 0.45:
                break
            t_peak = t_peak2
        # (The releaser may trickle other free memory away meanwhile.)
        assert s1["released_on_free_bytes"] == s0["released_on_free_bytes"], (fig(s0), fig(s1))
        assert s1["page_heap_free_bytes"] >= 150 * MIB, fig(s1)
        assert s2["released_on_free_bytes"] == s0["released_on_free_bytes"], (fig(s0), fig(s2))
        assert s2["peak_heap_bytes"] == s0["peak_heap_bytes"], (fig(s0), fig(s2))
        for p in ps:
            nat.free(p)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and tcalloc.stats()["page_heap_free_bytes"] > 64 * MIB:
            time.sleep(0.02)
        assert tcalloc.stats()["page_heap_free_bytes"] <= 64 * MIB, fig(tcalloc.stats())
        print("ok")
    """)
    assert out.strip().endswith("ok"), out


@pytest.mark.parametrize("rate", [None, "0"])
def test_a_freed_block_of_16_mib_or_more_goes_back_to_the_os_at_once(rate):
    # A written 32 MiB block's free releases its pages then and there, as
    # glibc unmaps a chunk past its mmap threshold, while a 4 MiB block
    # stays backed under the free cap for the next allocation. A rate of 0
    # (release off) keeps both.
    out = _run("""
        import ctypes, psutil, sys, tcalloc
        import tct_native as nat
        MIB = 1 << 20
        proc = psutil.Process()
        big, mid = nat.malloc(32 * MIB), nat.malloc(4 * MIB)
        ctypes.memset(big, 1, 32 * MIB)
        ctypes.memset(mid, 1, 4 * MIB)
        s0, rss0 = tcalloc.stats(), proc.memory_info().rss
        nat.free(big)
        nat.free(mid)
        s1, rss1 = tcalloc.stats(), proc.memory_info().rss
        on_free = s1["released_on_free_bytes"] - s0["released_on_free_bytes"]
        backed = s1["page_heap_free_bytes"] - s0["page_heap_free_bytes"]
        if tcalloc.get_release_rate():
            assert on_free == 32 * MIB and 4 * MIB <= backed < 32 * MIB, (on_free, backed)
            assert rss0 - rss1 >= 30 * MIB, (rss0, rss1)
        else:
            assert on_free == 0 and backed >= 36 * MIB, (on_free, backed)
            assert rss0 - rss1 < 8 * MIB, (rss0, rss1)
        print("ok")
    """, rate=rate)
    assert out.strip().endswith("ok"), out


@pytest.mark.parametrize("move_pages", ["1", "0"])
def test_a_moving_realloc_of_a_large_block_does_not_hold_both_copies(move_pages):
    # A written 96 MiB block in a fresh heap (its own mapping: nothing free
    # after it, so it cannot grow in place) grows to 192 MiB. Moving its
    # pages (mremap, the default) or copying 2 MiB at a time and releasing
    # each copied piece (TCALLOC_REALLOC_MOVE_PAGES=0), the process's peak
    # RSS (ru_maxrss, kernel-kept) rises by a chunk at most, not by another
    # 96 MiB; the contents arrive intact, the old span is filed as released
    # memory, not as free, backed memory, and the stats say which way it went.
    out = _run("""
        import ctypes, resource, sys, tcalloc
        import tct_native as nat
        MIB = 1 << 20
        move = sys.argv[1] == "1"
        tcalloc.set_release_rate(0)         # nothing else releases: what is released is the move's
        p = nat.malloc(96 * MIB)
        ctypes.memset(p, 0x5A, 96 * MIB)
        ctypes.memset(p + 96 * MIB - 1, 0xA5, 1)
        before = tcalloc.stats()
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        q = nat.realloc(p, 192 * MIB)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        after = tcalloc.stats()
        assert q != p, "grew in place: the pages after p were free"
        assert ctypes.string_at(q, 1) == b"\\x5a" and ctypes.string_at(q + 96 * MIB - 1, 1) == b"\\xa5"
        assert ctypes.string_at(q + 50 * MIB, 16) == b"\\x5a" * 16
        assert peak - rss_before <= 8 * MIB, (rss_before, peak)
        assert after["page_heap_released_bytes"] - before["page_heap_released_bytes"] >= 96 * MIB
        assert after["page_heap_free_bytes"] <= before["page_heap_free_bytes"] + 1 * MIB, (before, after)
        moved = after["realloc_moved_bytes"] - before["realloc_moved_bytes"]
        released = after["released_total_bytes"] - before["released_total_bytes"]
        if move:
            # Nothing went back to the OS: the pages are the new block's now.
            assert (moved, released) == (96 * MIB, 0), (moved, released)
        else:
            assert moved == 0 and released >= 96 * MIB, (moved, released)
        # The old range reads as zeros when the heap hands it out again.
        r = nat.malloc(96 * MIB)
        assert r == p and ctypes.string_at(r + 50 * MIB, 16) == bytes(16), (r, p)
        nat.free(r)
        nat.free(q)
        print("ok")
    """, argv=[move_pages], TCALLOC_REALLOC_MOVE_PAGES=move_pages)
    assert out.strip().endswith("ok"), out


def test_a_failed_page_move_leaves_no_hole_in_the_heap(comp):
    # Linux 5.7 to at least 6.6 unmap the destination of a page move before they check
    # the source, so a move that fails (EFAULT for a source across two
    # mappings: a block moved once and grown again) would leave a hole in the
    # heap, into which the fallback copy then wrote. The failure path maps
    # the hole again (zeros: the copy fills it), leaves a destination the
    # kernel did not touch alone, and reports a hole that another mapping
    # took part of (the caller aborts: those pages are the heap's).
    assert comp.restore_after_move("intact") == (0, True, (7, 7))
    assert comp.restore_after_move("hole") == (0, True, (0, 0))
    assert comp.restore_after_move("taken") == (-1, False, None)


def test_a_block_moved_twice_arrives_intact():
    # After a page move the block's pages are a mapping of their own, which
    # the kernel does not merge with the heap's: growing the block again
    # moves a range across two mappings (the case the kernels above refuse
    # after unmapping the destination). Every byte of each step arrives.
    out = _run("""
        import ctypes, tcalloc
        import tct_native as nat
        MIB = 1 << 20
        def fill(p, n, seed):
            ctypes.memmove(p, bytes((seed + i) & 255 for i in range(256)) * (n // 256), n)
        def check(p, n, seed):
            assert ctypes.string_at(p, n) == bytes((seed + i) & 255 for i in range(256)) * (n // 256)
        before = tcalloc.stats()["realloc_moved_bytes"]
        p = nat.malloc(6 * MIB)
        fill(p, 6 * MIB, 1)
        blocker = nat.malloc(64 << 10)       # keeps the block from growing in place
        q = nat.realloc(p, 7 * MIB)
        check(q, 6 * MIB, 1)
        fill(q + 6 * MIB, 1 * MIB, 2)
        blocker2 = nat.malloc(64 << 10)
        r = nat.realloc(q, 64 * MIB)
        check(r, 6 * MIB, 1)
        check(r + 6 * MIB, 1 * MIB, 2)
        moved = tcalloc.stats()["realloc_moved_bytes"] - before
        nat.free(r); nat.free(blocker); nat.free(blocker2)
        print("ok", moved // MIB)
    """)
    assert out.strip().startswith("ok"), out
    moved = int(out.split()[-1])
    if moved == 0:
        pytest.skip("this kernel cannot move pages (MREMAP_DONTUNMAP is Linux 5.7+)")
    # The first growth moved its 6 MiB (so the second one's source spans two
    # mappings); the second moved 7 MiB where the kernel moves such a source,
    # and was copied where it refuses one.
    assert moved in (6, 13), out


def test_moving_pages_never_runs_the_process_out_of_mappings():
    # Each page move may split the heap's mappings. Batches of 1000
    # neighbouring 4 MiB blocks, each grown to 5 MiB: the contents move
    # intact; pages move while the process has room (more than one round of
    # 1024 moves, so the count was granted again); once it has 4096
    # mappings, the round under way is the last (within two batches no page
    # moves), so the mappings stay far under the kernel's limit (65,530)
    # however many moves the program asks for. (A kernel that merges the
    # moved mappings back never reaches 4096: then pages keep moving.)
    out = _run("""
        import ctypes, tcalloc
        import tct_native as nat
        MIB = 1 << 20
        def maps():
            with open("/proc/self/maps") as f:
                return sum(1 for _ in f)
        moved, at_start = [], []
        for batch in range(8):
            ps = [nat.malloc(4 * MIB) for _ in range(1000)]
            for i, p in enumerate(ps):
                ctypes.memset(p, i & 255, 1)
            before = tcalloc.stats()["realloc_moved_bytes"]
            at_start.append(maps())
            qs = [nat.realloc(p, 5 * MIB) for p in ps]
            assert all(ctypes.string_at(q, 1)[0] == i & 255 for i, q in enumerate(qs))
            moved.append((tcalloc.stats()["realloc_moved_bytes"] - before) // (4 * MIB))
            for q in qs:
                nat.free(q)
            if batch >= 2 and at_start[batch - 2] >= 4096:
                assert moved[-1] == 0, (at_start, moved)
        assert sum(moved) > 1024, moved
        assert maps() < 4096 + 3 * 1024, (at_start, maps(), moved)
        print("ok", at_start, moved)
    """)
    assert out.strip().startswith("ok"), out


def test_a_growing_heap_takes_back_what_thread_caches_left_idle():
    # One thread frees 8 MiB of 64 B blocks (its cache keeps them: the
    # budget allows it), then allocates 8 MiB of 1 KiB blocks. Each 256 KiB the
    # heap commits afresh makes the cache give back half of what it left
    # idle, so the emptied spans serve the new class: the heap grows by a
    # fraction of the 8 MiB (without it: by all 8, next to 8 MiB cached).
    out = _run("""
        import tcalloc
        import tct_components as comp
        MIB = 1 << 20
        tcalloc.set_release_rate(0)         # nothing is released: committed only grows
        a = comp.BlockSet(8 * MIB, 64, 64, seed=1)
        a.free_all()
        s0 = tcalloc.stats()
        assert s0["thread_cache_free_bytes"] >= 6 * MIB, s0["thread_cache_free_bytes"]
        b = comp.BlockSet(8 * MIB, 1024, 1024, seed=2)
        s1 = tcalloc.stats()
        grew = (s1["heap_bytes"] - s1["page_heap_released_bytes"]) - (
            s0["heap_bytes"] - s0["page_heap_released_bytes"])
        assert grew <= 4 * MIB, grew
        b.free_all()
        print("ok")
    """)
    assert out.strip().endswith("ok"), out


def test_the_releaser_thread_blocks_signals_meant_for_the_program():
    # A signal sent to the process goes to a thread that does not block it.
    # Delivered to the releaser, an alarm meant to interrupt the program's
    # blocking call (a read, a lock wait) would interrupt nothing.
    out = _run("""
        import os, signal, threading, time, tcalloc
        tcalloc.set_release_rate(8 << 20)                  # starts the thread at once
        python_threads = {t.native_id for t in threading.enumerate()}
        deadline = time.monotonic() + 10
        while True:
            native = [int(t) for t in os.listdir("/proc/self/task") if int(t) not in python_threads]
            if native or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert len(native) == 1, native
        with open("/proc/self/task/%d/status" % native[0]) as f:
            blocked = int(next(l for l in f if l.startswith("SigBlk:")).split()[1], 16)
        for sig in (signal.SIGALRM, signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGCHLD):
            assert blocked & (1 << (sig - 1)), (sig, hex(blocked))
        print("ok")
    """)
    assert out.strip().endswith("ok")
