"""Memory goes back to the OS: an explicit release after freeing 512 MiB,
and the background releaser at a set rate. Each runs in a fresh interpreter
so RSS and the release rate are its own."""
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code, timeout=120, **extra_env):
    env = dict(os.environ, **extra_env)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("TCALLOC_RELEASE_RATE", None)
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_512_mib_freed_and_released_drops_rss():
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
    """)
    assert out.strip()


def test_background_release_at_a_set_rate():
    _run("""
        import time, tcalloc
        import tct_components as comp
        MIB = 1 << 20
        blocks = comp.BlockSet(64 * MIB, 1 * MIB, 2 * MIB, seed=3)
        blocks.free_all()
        free0 = tcalloc.stats()["page_heap_free_bytes"]
        assert free0 >= 60 * MIB, free0
        assert tcalloc.get_release_rate() == 0
        tcalloc.set_release_rate(256 * MIB)
        assert tcalloc.get_release_rate() == 256 * MIB
        deadline = time.monotonic() + 60        # generous: "eventually"
        while tcalloc.stats()["page_heap_free_bytes"] > free0 // 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        s = tcalloc.stats()
        assert s["page_heap_free_bytes"] <= free0 // 10, (free0, s["page_heap_free_bytes"])
        assert s["background_released_bytes"] > 0
        tcalloc.set_release_rate(0)
    """)


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
    """)
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
    """)
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
    """, TCALLOC_DEBUG="1")
    assert out.strip().endswith("ok")
