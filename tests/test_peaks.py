"""Peak figures in stats(): the committed heap's peak (exact) and the peak of
bytes allocated (in use or parked in thread caches, counted on the slow
path), since start or since reset_peaks()."""
import json
import subprocess
import sys
import textwrap

MiB = 1 << 20


def run_py(code):
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_peaks_follow_a_burst_and_reset():
    r = run_py("""
        import json, tcalloc
        MiB = 1 << 20
        def committed(s):
            return s["heap_bytes"] - s["page_heap_released_bytes"]
        big = [tcalloc.alloc(MiB) for _ in range(48)]
        small = [tcalloc.alloc(1000) for _ in range(16384)]       # 16 MiB of 1 KiB class
        during = tcalloc.stats()
        del big, small
        after = tcalloc.stats()
        tcalloc.release_free_memory()
        tcalloc.reset_peaks()
        reset = tcalloc.stats()
        print(json.dumps(dict(
            during_in_use=during["bytes_in_use"], during_committed=committed(during),
            after_peak_heap=after["peak_heap_bytes"], after_peak_alloc=after["peak_allocated_bytes"],
            after_in_use=after["bytes_in_use"],
            reset_peak_heap=reset["peak_heap_bytes"], reset_committed=committed(reset),
            reset_peak_alloc=reset["peak_allocated_bytes"])))
    """)
    # The peaks remember the burst after its memory was freed ...
    assert r["after_in_use"] < 8 * MiB
    assert r["after_peak_heap"] >= r["during_committed"] >= 64 * MiB
    assert r["after_peak_alloc"] >= r["during_in_use"] >= 64 * MiB
    assert r["after_peak_alloc"] <= r["after_peak_heap"]
    # ... and start over from the figures of the moment on reset.
    assert r["reset_peak_heap"] == r["reset_committed"] < 16 * MiB
    assert r["reset_peak_alloc"] < 16 * MiB


def test_peak_allocated_sees_threads_that_hold_memory_at_once():
    r = run_py("""
        import json, threading, tcalloc
        MiB = 1 << 20
        tcalloc.reset_peaks()
        base = tcalloc.stats()["peak_allocated_bytes"]
        held, gate = threading.Barrier(4), threading.Barrier(4)
        def work():
            blocks = [tcalloc.alloc(4096) for _ in range(2048)]    # 8 MiB each
            held.wait()
            gate.wait()
            del blocks
        ts = [threading.Thread(target=work) for _ in range(4)]
        for t in ts: t.start()
        for t in ts: t.join()
        print(json.dumps(tcalloc.stats()["peak_allocated_bytes"] - base))
    """)
    assert r >= 32 * MiB
