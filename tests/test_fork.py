"""Fork safety: tcalloc's pthread_atfork handlers take every lock before
fork() and release/reset them after, so a child never inherits a lock held by
a thread that does not exist in it.

Each scenario runs in a fresh interpreter (subprocess) so the global settings
it changes and the threads it starts do not leak into other tests; the
subprocess timeout is only a deadlock guard.
"""
import json
import os
import subprocess
import sys
import textwrap

import tcalloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(tcalloc.__file__)))


# Defined in every scenario's interpreter: wait for a forked child with a
# deadline (a child stuck on a lock held at fork time is what these look for).
CHILD_WAIT = """
def wait_child(pid, seconds=20):
    \"\"\"The child's exit code, or "hung" (it is killed) after `seconds`.\"\"\"
    import os, time
    deadline = time.monotonic() + seconds
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return "hung"
        time.sleep(0.005)
"""


def run_py(code, *, env=None, timeout=180):
    e = dict(os.environ)
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    for k in ("TCALLOC_DEBUG", "TCALLOC_MEMORY_LIMIT", "TCALLOC_MEMORY_LIMIT_HARD", "TCALLOC_RELEASE_RATE"):
        e.pop(k, None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-c", CHILD_WAIT + textwrap.dedent(code)], env=e,
                          capture_output=True, text=True, timeout=timeout)


def last_json(proc):
    assert proc.returncode == 0, "child failed (rc %s):\n%s\n%s" % (proc.returncode, proc.stdout, proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_50_native_forks_while_four_threads_allocate():
    # A thread-cache budget of 0 and 10 % page-heap-sized requests make the
    # workers take the transfer, central and page-heap locks all the time, so
    # a fork lands while one is held. Without the atfork handlers this
    # configuration leaves about one child in five deadlocked (measured
    # against an engine built without pthread_atfork), so 50 clean forks
    # are a real test. The child exercises every size class, large and
    # aligned blocks and a new thread (see tct_native.child_exercise) and
    # must exit 0 within 20 s, else it is killed and counted as hung.
    proc = run_py("""
        import json, tcalloc
        import tct_native as tn
        tcalloc.set_max_total_thread_cache_bytes(0)
        w = tn.start_workers(4, nslots=128, large_permille=100)
        r = tn.fork_children(50, timeout_s=20.0)
        r["workers"] = w.stop()
        print(json.dumps(r))
    """)
    r = last_json(proc)
    assert r["hung"] == [], "children deadlocked after fork (killed after 20 s): %s" % r["hung"]
    assert r["failed"] == [], "children failed: %s" % r["failed"]
    assert r["ok"] == 50
    assert r["workers"]["ops"] > 0
    assert r["workers"]["corrupt"] == 0, r["workers"]
    assert r["workers"]["failed"] == 0, r["workers"]


def test_python_os_fork_children_allocate_while_threads_run():
    # The same through os.fork(): the child runs Python code too, and the
    # parent's native threads keep allocating in the parent.
    proc = run_py("""
        import json, os, time, tcalloc
        import tct_native as tn
        tcalloc.set_max_total_thread_cache_bytes(0)
        w = tn.start_workers(4, nslots=128, large_permille=100)
        results = []
        for i in range(10):
            pid = os.fork()
            if pid == 0:
                errors = tn.child_exercise()
                p = tn.malloc(12345)
                tn.fill(p, 12345, 9)
                ok = tn.check(p, 12345, 9)
                tn.free(p)
                os._exit(0 if errors == 0 and ok else 3)
            results.append(wait_child(pid))
        print(json.dumps({"children": results, "workers": w.stop()}))
    """)
    r = last_json(proc)
    assert r["children"] == [0] * 10, "child exit codes ('hung' = deadlock): %s" % r["children"]
    assert r["workers"]["corrupt"] == 0, r["workers"]


def test_multiprocessing_fork_with_interpreter_hook():
    # With the hook installed every Python object lives in tcalloc; a fork
    # pool's workers must run, allocate and return results, while native
    # threads allocate in the parent.
    proc = run_py("""
        import json, multiprocessing, tcalloc
        import tct_native as tn
        tcalloc.install()
        assert tcalloc.installed()

        def work(i):
            data = [bytes([i % 256]) * (j * 37 % 5000) for j in range(2000)]
            d = {str(j): list(range(j % 50)) for j in range(3000)}
            assert tn.child_exercise() == 0
            return (i, sum(map(len, data)), len(d), tcalloc.installed())

        w = tn.start_workers(4, nslots=128)
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(4) as pool:
            got = pool.map_async(work, range(16)).get(timeout=90)
        r = {"got": got, "workers": w.stop()}
        tcalloc.uninstall()
        print(json.dumps(r))
    """)
    r = last_json(proc)
    want = [[i, sum(j * 37 % 5000 for j in range(2000)), 3000, True] for i in range(16)]
    assert r["got"] == want
    assert r["workers"]["corrupt"] == 0


# The stats identity (README): every byte of the heap is in exactly one pool.
POOLS = ("bytes_in_use", "page_heap_free_bytes", "page_heap_released_bytes", "central_free_bytes",
         "transfer_cache_free_bytes", "thread_cache_free_bytes", "span_overhead_bytes")
# Defined in the scenarios that fork children and check them:
# heap_gap(stats()) is 0 when the identity holds; child_report(make) forks,
# runs make() in the child and returns its exit code and the dict it made.
CHILD_REPORT = """
POOLS = %r
def heap_gap(s):
    return s["heap_bytes"] - sum(s[k] for k in POOLS)

def child_report(make):
    import json, os
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.write(w, json.dumps(make()).encode())
        except BaseException:
            os._exit(1)
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    return wait_child(pid), (json.loads(data) if data else {})
""" % (POOLS,)

FORK_UNDER_LOAD = """
    import json, tcalloc
    import tct_native as tn
    tn.free(tn.malloc(64))          # the forking thread has a cache of its own
    w = tn.start_workers(8, nslots=256, large_permille=20)
    while w.counts()["ops"] < 20000:
        pass
    def child():
        # The child: one thread. What the dead threads had cached must be
        # back in the shared stores, and every byte accounted for.
        s = tcalloc.stats()
        rep = {"caches": s["thread_caches"], "gap": heap_gap(s),
               "cached": s["thread_cache_free_bytes"]}
        tcalloc.release_free_memory()
        s = tcalloc.stats()
        rep["cached_after_release"] = s["thread_cache_free_bytes"] + s["transfer_cache_free_bytes"]
        rep["gap_after_release"] = heap_gap(s)
        rep["exercise_errors"] = tn.child_exercise()
        rep["gap_after_exercise"] = heap_gap(tcalloc.stats())
        return rep

    reports = []
    for i in range(%d):
        status, rep = child_report(child)
        reports.append({"status": status, **rep})
    print(json.dumps({"reports": reports, "workers": w.stop()}))
"""


def _fork_under_load(debug, nforks):
    proc = run_py(CHILD_REPORT + textwrap.dedent(FORK_UNDER_LOAD % nforks),
                  env={"TCALLOC_DEBUG": "1"} if debug else None)
    r = last_json(proc)
    assert r["workers"]["corrupt"] == 0 and r["workers"]["failed"] == 0, r["workers"]
    return r["reports"]


def test_children_of_a_fork_under_load_reclaim_dead_caches_and_add_up():
    # Eight native threads allocate, free across threads and realloc while
    # the main thread forks. fork() may land while a thread is moving a
    # batch between its cache and the shared lists, or half-way through a
    # fast-path push or pop; the child must still account for every block
    # and give the dead threads' caches back to the shared stores.
    reports = _fork_under_load(False, 24)
    assert all(r["status"] == 0 for r in reports), reports
    assert [r["gap"] for r in reports] == [0] * len(reports), reports
    assert [r["caches"] for r in reports] == [1] * len(reports), reports
    assert [r["cached_after_release"] for r in reports] == [0] * len(reports), reports
    assert all(r["gap_after_release"] == 0 and r["gap_after_exercise"] == 0 for r in reports), reports
    assert all(r["exercise_errors"] == 0 for r in reports), reports


def test_children_of_a_fork_under_load_add_up_in_debug_mode():
    # Debug mode has no thread caches: every block moves straight between
    # the caller and the central lists, in flight when fork() lands too.
    reports = _fork_under_load(True, 12)
    assert all(r["status"] == 0 for r in reports), reports
    assert [r["gap"] for r in reports] == [0] * len(reports), reports
    assert [r["caches"] for r in reports] == [0] * len(reports), reports
    assert all(r["gap_after_release"] == 0 and r["gap_after_exercise"] == 0 for r in reports), reports
    assert all(r["exercise_errors"] == 0 for r in reports), reports


def test_forks_while_threads_sort_what_their_collections_freed():
    # Under the hook, a collection's freed objects are put in address order
    # with the GIL released (engine/hook.pxi), so the main thread can fork
    # while another thread sorts. Each relink runs inside the fork gate: a
    # fork waits for it (and must not wait forever), and a child must find
    # every list whole. Each child walks every thread's lists (stats()
    # adopts the dead threads' caches), allocates, collects and checks its
    # objects. (A fork landing inside a relink is rare here: without the
    # gate, six runs of this test passed too; the test guards the gate's
    # enter/exit pairing and the children's heaps, not that timing.)
    proc = run_py("""
        import gc, json, os, threading, time, tcalloc
        tcalloc.install()
        stop = threading.Event()
        class N:
            __slots__ = ("ref", "x")
        def churn(seed):
            while not stop.is_set():
                objs = [N() for _ in range(3000)]
                for i, o in enumerate(objs):
                    o.ref = objs[(i * 7919 + seed) % len(objs)]
                del objs, o
                gc.collect()
        ths = [threading.Thread(target=churn, args=(s,)) for s in (1, 2)]
        for t in ths:
            t.start()
        results = []
        for _ in range(30):
            time.sleep(0.01)
            pid = os.fork()
            if pid == 0:
                st = tcalloc.stats()
                held = [[i] * 3 for i in range(20000)]
                gc.collect()
                ok = all(h == [i] * 3 for i, h in enumerate(held))
                os._exit(0 if ok and st["bytes_in_use"] > 0 else 3)
            results.append(wait_child(pid))
        stop.set()
        for t in ths:
            t.join()
        print(json.dumps({"children": results, "sorted": tcalloc.stats()["gc_sorted_objects"]}))
    """)
    r = last_json(proc)
    assert r["children"] == [0] * 30, "child exit codes ('hung' = deadlock): %s" % r["children"]
    assert r["sorted"] > 0, r


REUSE_ORPHANS = """
    import json, threading, time, tcalloc
    import tct_native as tn
    N, SIZE, THREADS = 6000, 512, 4
    ready, go = [], threading.Event()

    def worker():
        ps = [tn.malloc(SIZE) for _ in range(N)]
        for p in ps:
            tn.free(p)              # this thread's cache keeps them
        ready.append(1)
        go.wait()                   # alive at fork(): its cache is orphaned in the child

    ts = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in ts:
        t.start()
    while len(ready) < THREADS:
        time.sleep(0.01)
    s = tcalloc.stats()
    heap0, cached = s["heap_bytes"], s["thread_cache_free_bytes"]
    shared = s["central_free_bytes"] + s["transfer_cache_free_bytes"] + s["page_heap_free_bytes"]
    def child():
        # all the free memory of the shared stores, then most of what the
        # dead threads cached
        want = (shared + cached * 3 // 4) // SIZE
        ps = [tn.malloc(SIZE) for _ in range(want)]
        for i, p in enumerate(ps):
            tn.fill(p, SIZE, i)
        ok = all(tn.check(p, SIZE, i) for i, p in enumerate(ps))
        s = tcalloc.stats()
        rep = {"growth": s["heap_bytes"] - heap0, "bytes": want * SIZE, "ok": ok,
               "from_caches": want * SIZE - shared, "gap": heap_gap(s)}
        for p in ps:
            tn.free(p)
        rep["gap_after_free"] = heap_gap(tcalloc.stats())
        return rep

    code, rep = child_report(child)
    go.set()
    for t in ts:
        t.join()
    print(json.dumps({"cached": cached, "code": code, "child": rep}))
"""


def test_a_fork_child_reuses_the_blocks_dead_threads_cached():
    # Four threads each free 3 MiB of 512 B blocks, which their caches keep
    # (within their budgets), and are alive at fork(). The child, which has
    # none of those threads, allocates what the shared stores hold free and
    # three quarters of what the threads cached: it gets the dead threads'
    # blocks (taken a chain at a time, so only the pages it uses are
    # copied), and its heap does not grow by what it allocated.
    r = last_json(run_py(CHILD_REPORT + textwrap.dedent(REUSE_ORPHANS)))
    assert r["code"] == 0, r
    c = r["child"]
    assert c["from_caches"] >= 2 << 20, r         # the dead threads did hold that much
    assert c["ok"] and c["gap"] == 0 and c["gap_after_free"] == 0, r
    assert c["growth"] <= c["from_caches"] // 8, r


def test_fork_leaves_a_single_threaded_program_single_threaded():
    """The background releaser (started once the heap reaches 16 MiB) is
    stopped before fork() and is not there when fork() returns in the
    parent: a program with one thread of its own stays a single-threaded
    process across fork(), which CPython 3.12+ checks (a DeprecationWarning,
    an exception under -W error). The next allocation slow path starts a
    new releaser, in the parent as in the child."""
    out = last_json(run_py("""
        import json, os, sys, time, warnings
        import psutil
        import tcalloc
        import tct_native as tn

        def wait_threads(n):
            proc = psutil.Process()
            deadline = time.monotonic() + 10
            while proc.num_threads() != n and time.monotonic() < deadline:
                keep.append(tcalloc.alloc(1 << 20))     # slow paths start the releaser
                time.sleep(0.01)
            return proc.num_threads()

        keep = [tcalloc.alloc(1 << 20) for _ in range(24)]    # past the 16 MiB start
        before = wait_threads(2)
        after_fork = tn.fork_thread_count()
        restarted = wait_threads(2)
        warned = None
        if sys.version_info >= (3, 12):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                pid = os.fork()
                if pid == 0:
                    os._exit(0)
                warned = [str(w.message) for w in caught]
            wait_child(pid)
        print(json.dumps({"before": before, "after_fork": after_fork,
                          "restarted": restarted, "warned": warned}))
    """, env={"TCALLOC_RELEASE_RATE": "8M"}))
    assert out["before"] == 2, out              # this thread and the releaser
    assert out["after_fork"] == 1, out          # the releaser was stopped, not copied or left
    assert out["restarted"] == 2, out
    if sys.version_info >= (3, 12):
        assert out["warned"] == [], out
