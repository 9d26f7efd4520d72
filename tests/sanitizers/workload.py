"""The native multi-threaded workloads run under a sanitizer build.

    python tests/sanitizers/workload.py tsan|asan SCALE [NAME ...]

Run by tests/test_sanitizers.py in a child interpreter whose tcalloc,
tcalloc.stress and test modules are the instrumented ones (sanbuild.py's
child_env). SCALE multiplies the iteration counts (1: the default suite's
reduced set). Prints one line ``RESULT <json>`` per workload: its counters,
which the test checks (no corrupt block, no failed allocation); the
sanitizer's own reports go to stderr.
"""
import json
import os
import sys
import threading
import time

import tcalloc
import tct_components as comp
import tct_native as tn
from tcalloc.stress import _workloads

SCALE = 1
KIND = "tsan"


def n(x):
    return max(1, int(x * SCALE))


def ring():
    # Cross-thread frees through SPSC rings; large, aligned, calloc'd and
    # realloc'd blocks too.
    return comp.ring_workload(nthreads=4, iters=n(1500), seed=1, large_every=64)


def ring_small():
    return comp.ring_workload(nthreads=6, iters=n(800), seed=2, large_every=0, ring_capacity=32)


def short_lived():
    # Thread exit: caches flushed, counters folded into the registry.
    comp.short_lived_threads(total=n(48), concurrent=6, blocks=32, seed=3)
    return {"corrupt": 0, "failed": 0}


def thread_churn():
    # Each thread frees what an exited thread left behind.
    return tn.thread_churn(n(120), batch=12, blocks=16, leave=4, seed=4)


def workers_with_readers():
    # Four allocating threads (cross-thread frees, page-heap sized blocks)
    # while the main thread reads stats(), asks for release_free_memory()
    # (flush requests to every cache), runs the background releaser and
    # cuts the overall thread-cache budget, so threads take budget from
    # each other.
    limit = tcalloc.get_max_total_thread_cache_bytes()
    tcalloc.set_max_total_thread_cache_bytes(1 << 20)
    tcalloc.set_release_rate(64 << 20)
    # A second Python thread reads stats() and the memory limit while this
    # one sets the limit (a soft one: it releases memory, never fails).
    done = threading.Event()

    def reader():
        while not done.is_set():
            tcalloc.stats()
            tcalloc.get_memory_limit()
            time.sleep(0.002)

    th = threading.Thread(target=reader)
    w = tn.start_workers(4, nslots=128, seed=5, large_permille=50)
    th.start()
    try:
        for rounds in range(n(40)):
            _wait_ops(w, 200)
            tcalloc.stats()
            if rounds % 8 == 5:
                tcalloc.set_memory_limit(0 if rounds % 16 == 5 else 256 << 20)
            if rounds % 4 == 0:
                tcalloc.release_free_memory()
            if rounds % 8 == 3:
                # The releaser stops at its next tick; starting it again
                # clears the restart flag the slow paths poll.
                tcalloc.set_release_rate(0 if rounds % 16 == 3 else 64 << 20)
    finally:
        done.set()
        th.join()
        r = w.stop()
        tcalloc.set_release_rate(0)
        tcalloc.set_memory_limit(0)
        tcalloc.set_max_total_thread_cache_bytes(limit)
    r["rounds"] = rounds + 1
    return r


def _wait_ops(w, k):
    """Until the workers have done k more operations (a loaded machine may
    starve them; the readers must overlap with real work)."""
    start = w.counts()["ops"]
    deadline = time.monotonic() + 60
    while w.counts()["ops"] < start + k and time.monotonic() < deadline:
        time.sleep(0.001)


def fork_while_allocating():
    # fork() from native code while threads allocate. Under ASan the child
    # also allocates on a new thread and restarts the releaser (g_bg_wanted);
    # gcc 12's TSan aborts on any thread started in the child of a
    # multi-threaded parent ("dup thread with used id"), so there the child
    # stays on its one thread and the releaser is off.
    threads = KIND != "tsan"
    tcalloc.set_release_rate((64 << 20) if threads else 0)
    w = tn.start_workers(3, nslots=64, seed=6, large_permille=50)
    try:
        f = tn.fork_children(n(3), timeout_s=60.0, child_thread=threads)
    finally:
        r = w.stop()
        tcalloc.set_release_rate(0)
    r["forks_ok"] = f["ok"]
    r["fork_failures"] = len(f["hung"]) + len(f["failed"])
    return r


def central_transfer():
    # The transfer cache and central list of a private engine, batches moved
    # by several threads at once (component code, the engine's own source).
    eng = comp.PrivateEngine()
    out = {"corrupt": 0, "ops": 0}
    for size in (48, 1024, 40960):
        r = eng.central_stress(eng.class_of(size), nthreads=4, iters=n(600), seed=size)
        out["corrupt"] += r["corrupt"]
        out["ops"] += r["ops"]
    return out


def pagemap():
    r = comp.pagemap_concurrent(readers=2, writes=n(3000), seed=7)
    return {"corrupt": r["bad"], "reads": r["reads"]}


def lab():
    # The stress lab's native workloads on tcalloc.
    out = {"corrupt": 0, "lost": 0, "failed": 0, "misaligned": 0, "ops": 0}
    for wl in ("larson", "xmalloc", "prodcons", "cache-thrash", "cache-scratch", "churn", "mixed"):
        # mixed fills blocks of up to 4 MiB by default: 1 MiB keeps it to
        # seconds under TSan and still reaches the page heap.
        extra = {"max_size": 1 << 20} if wl == "mixed" else {}
        r = _workloads.run(wl, "tcalloc", threads=4, ops=n(300 if wl == "mixed" else 1500),
                           seed=8, **extra)
        for k in out:
            out[k] += r[k]
    return out


WORKLOADS = {f.__name__: f for f in (ring, ring_small, short_lived, thread_churn,
                                      workers_with_readers, fork_while_allocating,
                                      central_transfer, pagemap, lab)}


def main(argv):
    global SCALE, KIND
    KIND, SCALE = argv[0], float(argv[1])
    names = argv[2:] or list(WORKLOADS)
    assert os.path.dirname(tcalloc._engine.__file__) == os.path.dirname(tcalloc.__file__)
    print("ENGINE", tcalloc._engine.__file__, flush=True)
    with open("/proc/self/maps") as f:
        libs = sorted({line.split()[-1] for line in f if "san.so" in line})
    print("RUNTIME", " ".join(libs), flush=True)
    for name in names:
        t0 = time.monotonic()
        r = WORKLOADS[name]()
        r = {k: v for k, v in r.items() if isinstance(v, (int, float, str))}
        r["seconds"] = round(time.monotonic() - t0, 2)
        print("RESULT", json.dumps({"name": name, **r}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
