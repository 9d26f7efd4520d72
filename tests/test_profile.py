"""tcalloc.profile(): its figures against psutil / getrusage / tcalloc.stats()
read independently around the same block. No timing assertions: each check
compares a window with the window that encloses it."""

import resource
import threading
import time

import pytest

psutil = pytest.importorskip("psutil")


@pytest.fixture(scope="module")
def tc():
    try:
        import tcalloc
        from tcalloc.profile import Profile  # noqa: F401
    except ImportError as e:
        pytest.fail("tcalloc cannot be imported: %s" % e)
    return tcalloc


def _profile(tc, **kw):
    # tcalloc.profile is the function once tcalloc/__init__ re-exports it;
    # until then the name is the submodule.
    f = getattr(tc, "profile", None)
    if not callable(f):
        from tcalloc.profile import profile as f
    return f(**kw)


def _sleepers(n_threads, n_sleeps):
    def work():
        for _ in range(n_sleeps):
            time.sleep(0.001)
    ts = [threading.Thread(target=work) for _ in range(n_threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def test_ctx_switches_cover_all_threads(tc):
    proc = psutil.Process()
    ru0, ctx0 = resource.getrusage(resource.RUSAGE_SELF), proc.num_ctx_switches()
    with _profile(tc) as p:
        _sleepers(2, 40)
    ru1, ctx1 = resource.getrusage(resource.RUSAGE_SELF), proc.num_ctx_switches()
    d = p.as_dict()
    # Each sleep of the worker threads blocks at least once.
    assert d["ctx_voluntary"] >= 80
    assert d["ctx_voluntary"] <= ru1.ru_nvcsw - ru0.ru_nvcsw
    assert 0 <= d["ctx_involuntary"] <= ru1.ru_nivcsw - ru0.ru_nivcsw
    # psutil's own figure (main thread on Linux) is reported as such, inside the outer window.
    assert 0 <= d["ctx_main_thread"]["voluntary"] <= ctx1.voluntary - ctx0.voluntary


def test_page_faults_count_first_touches(tc):
    import mmap
    npages = 2048
    ps = mmap.PAGESIZE
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    with _profile(tc) as p:
        m = mmap.mmap(-1, npages * ps)      # fresh anonymous pages: none touched yet
        for i in range(0, npages * ps, ps):
            m[i] = 1                        # one first-touch fault per page
        m.close()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    d = p.as_dict()
    assert npages <= d["minor_faults"] <= ru1.ru_minflt - ru0.ru_minflt
    assert 0 <= d["major_faults"] <= ru1.ru_majflt - ru0.ru_majflt
    assert "page faults (all threads): minor %d" % d["minor_faults"] in p.report()


def test_cpu_matches_psutil(tc):
    proc = psutil.Process()
    outer0 = proc.cpu_times()
    with _profile(tc) as p:
        start = proc.cpu_times()
        x = 0
        # Burn at least 0.2 s of CPU as psutil measures it.
        while (lambda c: c.user + c.system)(proc.cpu_times()) - (start.user + start.system) < 0.2:
            for i in range(20000):
                x += i
    outer1 = proc.cpu_times()
    d = p.as_dict()
    inner = d["cpu_user_s"] + d["cpu_system_s"]
    outer = (outer1.user + outer1.system) - (outer0.user + outer0.system)
    tick = 0.02     # /proc cpu times have clock-tick resolution
    assert inner >= 0.2 - tick
    assert inner <= outer + tick
    assert d["cpu_percent"] > 0


def test_rss_peak_seen_by_sampler(tc):
    with _profile(tc, interval=0.01) as p:
        n0 = p.samples
        b = bytearray(64 << 20)
        for i in range(0, len(b), 4096):
            b[i] = 1
        deadline = time.monotonic() + 10
        while p.samples < n0 + 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        del b
    d = p.as_dict()
    assert d["samples"] >= 3
    assert d["rss_peak"] - d["rss_start"] >= 48 << 20
    assert d["uss_peak"] >= d["uss_start"] > 0
    assert d["rss_peak"] >= max(r for _, r in d["rss_series"])


def test_per_thread_cpu_lists_live_threads(tc):
    stop = threading.Event()
    done = threading.Event()

    def spin():
        t_end = time.process_time() + 0.1
        while time.process_time() < t_end:
            pass
        done.set()
        stop.wait(5)

    t = threading.Thread(target=spin, name="busy-one")
    with _profile(tc, interval=0.01) as p:
        t.start()
        done.wait(10)
        n = p.samples
        while p.samples < n + 2:
            time.sleep(0.005)
        stop.set()
        t.join()
    rows = {row["id"]: row for row in p.as_dict()["threads"]}
    assert t.native_id in rows
    assert rows[t.native_id]["name"] == "busy-one"
    assert rows[t.native_id]["cpu_user_s"] + rows[t.native_id]["cpu_system_s"] > 0


def test_lock_counters_match_stats(tc):
    from tcalloc.stress import _workloads as wl
    s0 = tc.stats()["locks"]
    with _profile(tc) as p:
        r = wl.run("xmalloc", "tcalloc", threads=2, ops=20000)
    s1 = tc.stats()["locks"]
    d = p.as_dict()
    assert r["corrupt"] == 0
    assert d["locks"], "an xmalloc run on tcalloc takes tcalloc's locks"
    for name, v in d["locks"].items():
        if name == "buffer_pool":        # not an engine lock: see the pool test below
            continue
        for k in ("acquisitions", "contended", "spins", "wait_ns"):
            outer = s1[name][k] - s0.get(name, {}).get(k, 0)
            assert 0 <= v[k] <= outer, (name, k)
    assert sum(v["acquisitions"] for v in d["locks"].values()) > 0
    for h in d["hottest_locks"]:
        assert h["wait_share"] == pytest.approx(h["wait_ns"] / (d["elapsed_s"] * 1e9), rel=1e-6)
    waits = [h["wait_ns"] for h in d["hottest_locks"]]
    assert waits == sorted(waits, reverse=True)
    assert "bytes_in_use" in d["stats_delta"]
    text = p.report()
    assert "context switches" in text
    assert [l for l in text.splitlines() if l.startswith(ENGINE_LINES)], text


# The report's lines from the engine's counters (lock waits, the heap's change).
ENGINE_LINES = ("tcalloc locks:", "hottest tcalloc locks", "tcalloc: bytes_in_use")


def test_without_engine_and_misuse(tc):
    from tcalloc.profile import Profile
    p = Profile(engine=False)
    with pytest.raises(RuntimeError):
        p.as_dict()
    with p:
        pass
    d = p.as_dict()
    assert "locks" not in d and d["engine"] is False
    # Not "tcalloc" anywhere: the profiler's own thread, named "tcalloc.profile
    # sampler", is in the per-thread table whenever a sample caught it running.
    assert not [l for l in p.report().splitlines() if l.startswith(ENGINE_LINES)], p.report()
    with pytest.raises(ValueError):
        Profile(interval=0)


@pytest.mark.parametrize("kw,exc,what", [
    # interval=nan was accepted and killed the sampler thread (OverflowError).
    (dict(interval=float("nan")), ValueError, "interval"),
    (dict(interval=float("inf")), ValueError, "interval"),
    (dict(interval=1e300), ValueError, "interval"),
    (dict(interval=-1), ValueError, "interval"),
    (dict(interval=0), ValueError, "interval"),
    (dict(interval=0.0001), ValueError, "interval"),
    # Past a float: float() raised OverflowError, not naming interval.
    (dict(interval=10 ** 400), ValueError, "interval"),
    (dict(interval=-10 ** 400), ValueError, "interval"),
    (dict(interval=10 ** 5000), ValueError, "interval"),    # no repr at all (4300 digits)
    (dict(interval="0.1"), TypeError, "interval"),
    (dict(interval=None), TypeError, "interval"),
    (dict(interval=True), TypeError, "interval"),
    (dict(interval=1j), TypeError, "interval"),
    (dict(engine="no"), TypeError, "engine"),
    (dict(engine=1), TypeError, "engine"),
    (dict(engine=None), TypeError, "engine"),
    (dict(top=-1), ValueError, "top"),
    (dict(top=1.5), TypeError, "top"),
    (dict(top=True), TypeError, "top"),
    (dict(top="5"), TypeError, "top"),
])
def test_arguments_checked_at_the_call(tc, kw, exc, what):
    from tcalloc.profile import Profile
    with pytest.raises(exc, match=what):
        _profile(tc, **kw)
    with pytest.raises(exc, match=what):
        Profile(**kw)


def test_argument_edges_accepted(tc):
    import fractions
    for interval in (0.001, 1, fractions.Fraction(1, 50), 3600):
        p = _profile(tc, interval=interval, engine=False, top=0)
        assert p.interval == float(interval)
    with _profile(tc, top=0) as p:
        tc.alloc(1 << 20).release()
    assert p.as_dict()["hottest_locks"] == []


def test_samples_before_start_is_zero(tc):
    from tcalloc.profile import Profile
    p = Profile()
    assert p.samples == 0
    with p:
        assert p.samples >= 1                       # the one at start
    assert p.samples >= 2


def test_contention_is_reported_whatever_top_lists(tc, monkeypatch):
    # The lock figures as the profile reads them, with one lock contended
    # inside the block (and waited on for longer than any real wait here):
    # top=0 lists no lock, and must not say "no contention" for it.
    import sys
    mod = sys.modules["tcalloc.profile"]        # tcalloc.profile is the function
    real = mod._engine_stats
    reads = []

    def contended_stats():
        st = real()
        reads.append(st)
        if len(reads) == 2:                        # stop()'s read
            lock = dict(st["locks"]["page_heap"])
            lock["acquisitions"] += 10
            lock["contended"] += 3
            lock["wait_ns"] += 5 * 10 ** 9
            st["locks"]["page_heap"] = lock
        return st
    monkeypatch.setattr(mod, "_engine_stats", contended_stats)
    for top in (0, 1, 5):
        del reads[:]
        with _profile(tc, top=top) as p:
            pass
        d = p.as_dict()
        assert d["locks"]["page_heap"]["contended"] >= 3, d["locks"]
        assert len(d["hottest_locks"]) <= top
        text = p.report()
        assert "no contention" not in text, text
        lines = [line for line in text.splitlines() if "tcalloc locks" in line]
        if top:
            assert d["hottest_locks"][0]["name"] == "page_heap"
            assert lines == ["hottest tcalloc locks (wait as a share of elapsed wall time):"], text
            assert any(line.split()[:1] == ["page_heap"] for line in text.splitlines()), text
        else:
            assert len(lines) == 1 and lines[0].startswith("tcalloc locks: "), text
            assert "contended" in lines[0] and "top=0" in lines[0], text


def _pool_threads(p, pool, n_threads, n_ops):
    # Python threads sharing a pool: each acquire and each release takes the
    # pool's lock; the Python work between them holds the GIL. They stay
    # alive until the profile's Python sampler has seen them (to know them
    # for Python threads).
    done = threading.Barrier(n_threads + 1)
    seen = threading.Event()

    def work():
        for i in range(n_ops):
            with pool.acquire() as b:
                memoryview(b)[0] = i & 0xFF
                sum(range(200))
        done.wait()
        seen.wait(30)
    ts = [threading.Thread(target=work) for _ in range(n_threads)]
    for t in ts:
        t.start()
    done.wait()
    n = p.samples
    deadline = time.monotonic() + 30
    while p.samples < n + 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    seen.set()
    for t in ts:
        t.join()


def _pool_block(tc):
    """Four Python threads on one pool inside a profile; the lock figures
    checked against the pool counters read around the block."""
    from tcalloc.buffer import _pool_lock_totals
    pool = tc.BufferPool(4096)
    gone = tc.BufferPool(4096)
    before = _pool_lock_totals()
    with _profile(tc) as p:
        _pool_threads(p, pool, 4, 10000)
        for _ in range(100):
            gone.acquire().release()
        del gone                     # a pool that dies inside the block still counts
    after = _pool_lock_totals()
    d = p.as_dict()
    got = d["locks"]["buffer_pool"]
    # acquire and release take the lock once each: 2 x (4 x 10000 + 100) at least.
    assert got["acquisitions"] >= 2 * (4 * 10000 + 100)
    for k in ("acquisitions", "contended", "spins", "wait_ns"):
        assert 0 <= got[k] <= after[k] - before[k], k
    assert pool.lock_stats()["acquisitions"] >= 2 * 4 * 10000
    v = d["serialisation"]
    # The GIL lets one Python thread run at a time: about one core at most.
    assert v["busy_python_threads"] >= 4, v          # the workers (and maybe the main thread)
    assert v["cores_used"] < 1.25, v
    return p, v


def test_pool_locks_are_in_the_report_and_the_gil_is_named(tc):
    # With another process busy on the second core (the suite's other
    # worker), the threads wait for a CPU more than for the GIL, and the
    # profile rightly says "machine". Then the block runs again: a run on
    # a machine that leaves a core free must name the GIL.
    for _ in range(4):
        p, v = _pool_block(tc)
        if v["cores_available"] < 2:
            return
        if v["verdict"] != "machine":
            break
    else:
        pytest.skip("every run found the machine busy: %r" % (v,))
    assert v["verdict"] == "gil", v
    assert "GIL" in p.report()


def test_native_threads_are_never_blamed_on_the_gil(tc):
    from tcalloc.stress import _workloads as wl
    with _profile(tc) as p:
        r = wl.run("xmalloc", "tcalloc", threads=2, ops=200000)
    assert r["corrupt"] == 0
    v = p.as_dict()["serialisation"]
    assert v["verdict"] != "gil", v
    assert v["busy_python_threads"] <= 1         # only the caller, waiting in run()


def test_a_short_block_is_sampled(tc):
    # The native clock ticks while the block holds the GIL (it needs none):
    # a block that lasts a few of its ticks gets its main thread's CPU.
    with _profile(tc) as p:
        clock = p._clock
        assert clock is not None, "the native clock runs on Linux"
        n = clock.ticks
        deadline = time.monotonic() + 30
        while clock.ticks < n + 3 and time.monotonic() < deadline:
            pass                                   # busy, with the GIL held
    d = p.as_dict()
    assert p.interval == 0.01
    me = {t["id"]: t for t in d["threads"]}[threading.get_native_id()]
    assert me["cpu_s"] > 0
    assert d["samples"] >= 2                        # start and end, at least


def test_thread_clock_counts_a_thread_the_python_sampler_never_saw(tc):
    # The native clock reads /proc without the GIL: a thread that starts and
    # ends between two Python samples is still counted, from zero CPU.
    from tcalloc._threadclock import ThreadClock
    clock = ThreadClock(0.002)
    clock.start()
    burnt = threading.Event()
    seen = threading.Event()

    def burn():
        t_end = time.thread_time() + 0.05
        while time.thread_time() < t_end:
            pass
        burnt.set()
        seen.wait(30)
    t = threading.Thread(target=burn)
    t.start()
    burnt.wait(30)
    n = clock.ticks
    deadline = time.monotonic() + 30
    while clock.ticks < n + 2 and time.monotonic() < deadline:
        time.sleep(0.002)
    seen.set()
    t.join()
    clock.stop()
    rows = {tid: (at_start, cpu) for tid, _, at_start, cpu, _ in clock.threads()}
    assert t.native_id in rows
    at_start, cpu = rows[t.native_id]
    assert not at_start
    assert 0.04 <= cpu < 5.0                   # its own 50 ms of CPU, at /proc's resolution
    assert threading.get_native_id() in rows and rows[threading.get_native_id()][0]
    assert clock.clock_thread_id not in rows
    assert clock.rss_peak > 0
    with pytest.raises(RuntimeError):
        clock.stop()


def test_a_python_thread_that_lives_between_two_samples_is_known_as_one(tc):
    # Ticks every 5 s: neither sampler sees the thread, which starts and
    # ends within the block. It is known to be a Python thread (and by its
    # name) from its start, as threads that keep the GIL busy are, whose
    # short lives the Python sampler may never see: they count in the GIL
    # verdict.
    with _profile(tc, interval=5.0) as p:
        t = threading.Thread(target=lambda: None, name="brief")
        t.start()
        t.join()
    assert t.native_id in p._python_ids
    assert p._names[t.native_id] == "brief"


def _threading_hook():
    # threading.getprofile() is 3.10+
    return getattr(threading, "getprofile", lambda: threading._profile_hook)()


def test_a_programs_own_threading_profile_hook_is_kept(tc):
    import sys
    calls = []

    def hook(frame, event, arg):
        calls.append((threading.current_thread().name, event))
        sys.setprofile(None)
    threading.setprofile(hook)
    try:
        with _profile(tc):
            assert _threading_hook() is not hook          # the profile's, for now
            t = threading.Thread(target=lambda: None, name="inside")
            t.start()
            t.join()
        assert _threading_hook() is hook
        t = threading.Thread(target=lambda: None, name="after")
        t.start()
        t.join()
    finally:
        threading.setprofile(None)
    # (the profile's own sampler thread gets it too, as any new thread does)
    assert [c[0] for c in calls if c[0] != "tcalloc.profile sampler"] == ["inside", "after"], calls


# The profile's sampler thread runs at the fork, on purpose: Python 3.12+ warns.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_fork_child_of_a_profiled_block_starts_threads_without_the_profile(tc):
    # The child has no profile running: no hook of the parent's profile, and
    # no wait on a lock the parent's sampler may have held at the fork.
    import os
    with _profile(tc) as p:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                t = threading.Thread(target=lambda: None)
                t.start()
                t.join(10)
                code = 0 if (not t.is_alive() and _threading_hook() is None
                             and t.native_id not in p._python_ids) else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
