"""The stress lab: every workload, verified, against tcalloc and the system
malloc; the verification against a broken allocator; the CLI.

Bounded: about 20 s of runs in all on 2 cores. No timing assertions.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKLOADS = ("larson", "xmalloc", "prodcons", "cache-thrash", "cache-scratch",
             "churn", "mixed", "fork")


@pytest.fixture(scope="module")
def wl():
    # The lab needs the engine: fail loudly (not skip) if it is not built.
    try:
        import tcalloc  # noqa: F401
        from tcalloc.stress import _workloads
    except ImportError as e:
        pytest.fail("tcalloc (engine and _workloads) cannot be imported: %s" % e)
    return _workloads


def _assert_clean(r):
    assert r["ops"] > 0
    assert r["corrupt"] == 0, r
    assert r["lost"] == 0, r
    assert r["misaligned"] == 0, r
    assert r["failed"] == 0, r
    assert r["allocs"] == r["frees"]
    for p in r["per_thread"]:
        # Every thread with work of its own took part. xmalloc's consumers
        # share one queue, so on a 2-core machine one of them may find it
        # drained every time it runs: only their total is the workload's.
        if p["role"] == "consumer" and r["workload"] == "xmalloc":
            continue
        assert p["ops"] + p["frees"] > 0, r["per_thread"]
    consumers = [p for p in r["per_thread"] if p["role"] == "consumer"]
    if consumers and r["workload"] == "xmalloc":
        assert sum(p["frees"] for p in consumers) == r["allocs"], r["per_thread"]


def _run_isolated(workload, allocator, timeout=120, **kw):
    # In a child process with a time limit: a deadlocked allocator fails the
    # test instead of hanging the test run (stuck threads cannot be stopped).
    code = ("import json, sys; from tcalloc.stress import _workloads as wl; "
            "print(json.dumps(wl.run(%r, %r, **%r)))" % (workload, allocator, kw))
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail("%s on %s did not finish in %d s: deadlock or lost wakeup"
                    % (workload, allocator, timeout))
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.splitlines()[-1])


@pytest.mark.parametrize("allocator", ["tcalloc", "system"])
@pytest.mark.parametrize("workload", WORKLOADS)
def test_workload_clean(wl, workload, allocator):
    if workload == "fork":
        r = _run_isolated(workload, allocator, threads=2, duration=0.25, seed=7)
    else:
        r = wl.run(workload, allocator, threads=2, duration=0.25, seed=7)
    _assert_clean(r)
    assert r["threads"] == 2
    if workload == "fork":
        assert r["forks"] >= 1
        assert r["child_failures"] == 0 and r["child_hung"] == 0
        assert r["children_reaped"] == r["forks"]
        # Every child was reaped after its fork() returned, timed from the same start.
        assert 0 < r["fork_ns"] <= r["child_ns"]
    if workload == "churn":
        assert r["rounds"] >= 1 and r["pthreads"] == 2 * r["rounds"]


@pytest.mark.parametrize("allocator", ["tcalloc", "system"])
def test_ops_mode_is_exact_per_thread(wl, allocator):
    r = wl.run("larson", allocator, threads=3, ops=4000, seed=3)
    _assert_clean(r)
    assert [p["ops"] for p in r["per_thread"]] == [4000, 4000, 4000]


def test_fork_ops_mode_is_exact_per_thread(wl):
    # --ops is operations per worker thread for fork too: its workers went
    # on allocating until the 8 forks were done (millions for --ops 1).
    r = _run_isolated("fork", "system", threads=2, ops=300, seed=3)
    _assert_clean(r)
    assert [p["ops"] for p in r["per_thread"]] == [300, 300]
    assert r["forks"] == 8 and r["child_failures"] == 0 and r["child_hung"] == 0


def test_mixed_never_grows_a_block_past_max_size(wl):
    # A realloc chain that would pass max_size fell back to min_size + 1/8
    # of the block, itself past max_size when min_size > 7/8 of it.
    r = wl.run("mixed", "system", threads=1, ops=2000, min_size=4096, max_size=4096, seed=1)
    _assert_clean(r)
    assert r["reallocs"] > 0 and r["bytes"] == 4096 * r["ops"], r["bytes"] / r["ops"]


def test_a_timed_run_of_large_blocks_stops_at_its_deadline(wl):
    # The clock was read every 16 operations: 16 cache-thrash operations on
    # 1 GiB blocks (64 rewrites each) took minutes and the lab called a
    # correct allocator hung. Now it is read by bytes written too, and the
    # rewrites stop at the deadline. One 64 MiB operation alone is 4 GiB of
    # rewrites, far past 0.05 s: the run must not start a 15th.
    r = wl.run("cache-thrash", "tcalloc", threads=1, duration=0.05, min_size=64 << 20,
               max_size=64 << 20, seed=1)
    _assert_clean(r)
    assert r["ops"] < 15, r["ops"]


def test_live_meter_follows_the_blocks_held(wl):
    # Progress.live_bytes is what the workers hold (bench/rss.py reads it
    # beside RSS): above 0 while blocks of 1-4 MiB are live, within what
    # the slots can hold, and exactly 0 once every block is freed.
    import threading
    import time
    prog = wl.Progress()
    seen = []
    box = {}
    th = threading.Thread(target=lambda: box.update(r=wl.run(
        "mixed", "tcalloc", threads=2, ops=3000, min_size=1 << 20, max_size=4 << 20, seed=5,
        progress=prog)))
    th.start()
    while th.is_alive():
        seen.append(prog.live_bytes)
        time.sleep(0.001)
    th.join()
    _assert_clean(box["r"])
    assert max(seen) >= 4 << 20, max(seen)
    # 2 threads x 32 slots x at most 4 MiB, plus the meter's 1 MiB slack per thread
    assert max(seen) <= 2 * 32 * (4 << 20) + (2 << 20), max(seen)
    assert min(seen) >= -(2 << 20), min(seen)
    assert prog.live_bytes == 0


def test_progress_moves_with_every_few_large_blocks(wl):
    # The hang watchdog reads this counter: a run of 32 MiB blocks (tens of
    # milliseconds an operation) must move it long before 256 operations.
    import threading
    import time
    prog = wl.Progress()
    box = {}
    th = threading.Thread(target=lambda: box.update(r=wl.run(
        "mixed", "system", threads=1, ops=24, min_size=32 << 20, max_size=32 << 20, seed=5,
        progress=prog)))
    th.start()
    seen = 0
    while th.is_alive() and not seen:
        seen = prog.ops
        time.sleep(0.001)
    th.join()
    _assert_clean(box["r"])
    assert 0 < seen < 24, "progress moved only at the end of the run"


@pytest.mark.parametrize("workload", WORKLOADS)
def test_live_meter_reads_zero_after_every_workload(wl, workload):
    # Small blocks too: what the driver allocates in setup and frees in
    # teardown (blocks the workers left live) goes through the meter as
    # well, so it ends at exactly 0 whatever the workload.
    prog = wl.Progress()
    r = wl.run(workload, "tcalloc", threads=2, ops=3000, seed=3, progress=prog)
    _assert_clean(r)
    assert prog.live_bytes == 0, (workload, prog.live_bytes)


def test_more_threads_than_cores(wl):
    r = wl.run("xmalloc", "tcalloc", threads=6, ops=3000)
    _assert_clean(r)
    roles = [p["role"] for p in r["per_thread"]]
    assert roles.count("producer") == 3 and roles.count("consumer") == 3
    assert sum(p["frees"] for p in r["per_thread"] if p["role"] == "consumer") == 9000


# Workloads whose blocks stay live while others are allocated: there the
# broken allocator really hands a live block out twice. cache-thrash and
# cache-scratch hold a block only while rewriting it: see the next test.
@pytest.mark.parametrize("workload,every", [("larson", 500), ("xmalloc", 500), ("prodcons", 500),
                                            ("churn", 500), ("mixed", 20)])
def test_broken_allocator_is_caught(wl, workload, every):
    import tct_broken
    prev = tct_broken.configure(every)
    try:
        before = tct_broken.doubled()
        r = wl.run(workload, tct_broken.allocator(), threads=2, duration=0.3)
        doubled = tct_broken.doubled() - before
    finally:
        tct_broken.configure(prev)
    assert r["allocator"] == "broken"
    assert doubled > 0, "the broken allocator never misbehaved; the test proves nothing"
    assert r["corrupt"] > 0, "a block handed out twice passed verification"


@pytest.mark.parametrize("workload", ["cache-thrash", "cache-scratch"])
def test_broken_allocator_is_caught_by_the_rewriting_workloads(wl, workload):
    # These hold a block only while rewriting it, so a block handed out
    # twice has two owners at once when one thread is switched out mid-
    # rewrite and the other is handed that block, rewrites and frees it.
    # On one CPU that happens at every switch between the two (on two it
    # depends on how the threads happen to line up). The thread switched
    # back in must see it at its next rewrite: checked only before the free,
    # about 5% were caught, as its own rewrites erased the other's. A few
    # cannot be seen by any check (switched out between malloc and the
    # first fill, or between the last check and the free): at least half.
    import tct_broken
    cpus = os.sched_getaffinity(0)
    prev = tct_broken.configure(1)
    try:
        os.sched_setaffinity(0, {min(cpus)})    # this thread, and the workers it starts
        before = tct_broken.doubled()
        r = wl.run(workload, tct_broken.allocator(), threads=2, duration=0.5, seed=3)
        doubled = tct_broken.doubled() - before
    finally:
        os.sched_setaffinity(0, cpus)
        tct_broken.configure(prev)
    assert doubled >= 4, "the broken allocator hardly misbehaved; the test proves little"
    assert 2 * r["corrupt"] >= doubled, (r["corrupt"], doubled)


def test_broken_allocator_when_behaving_is_clean(wl):
    # Control: the wrapper itself is sound, the corruption above is the bug.
    import tct_broken
    prev = tct_broken.configure(0)
    try:
        _assert_clean(wl.run("larson", tct_broken.allocator(), threads=2, ops=5000))
    finally:
        tct_broken.configure(prev)


@pytest.mark.parametrize("kwargs,err", [
    (dict(workload="nope", duration=0.1), ValueError),
    (dict(workload="larson"), ValueError),                       # neither ops nor duration
    (dict(workload="larson", ops=10, duration=0.1), ValueError),  # both
    (dict(workload="larson", ops=10, threads=0), ValueError),
    (dict(workload="larson", ops=10, min_size=0), ValueError),
    (dict(workload="larson", ops=10, min_size=100, max_size=10), ValueError),
    (dict(workload="larson", ops=10, allocator="nope"), ValueError),
    (dict(workload="larson", ops=10, allocator="broken"), ValueError),  # test-only, not a name
    (dict(workload="larson", ops=10, allocator=object()), ValueError),
    (dict(workload="larson", ops=10, bogus=1), TypeError),
    (dict(workload="larson", ops=10, seed=-1), ValueError),       # wrapped to 2**64-1
    (dict(workload="larson", ops=10, seed=1 << 64), ValueError),  # wrapped to 0
])
def test_run_rejects_bad_arguments(wl, kwargs, err):
    kw = dict(kwargs)
    name = kw.pop("workload")
    with pytest.raises(err):
        wl.run(name, **kw)


# ---- CLI ------------------------------------------------------------------

def _stress(*args, timeout=300):
    # The installed lab, as a user runs it, from outside the checkout.
    return subprocess.run([sys.executable, "-m", "tcalloc.stress", *args], cwd=tempfile.gettempdir(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args", [
    ["--threads", "0"], ["--threads", "two"], ["--workloads", "nope"], ["--backends", "dlmalloc"],
    ["--duration", "-1"], ["--ops", "0"], ["--min-size", "0"], ["--max-size", "lots"],
    ["--min-size", "100", "--max-size", "10"], ["--ops", "5", "--duration", "1"],
    ["--json", "/nonexistent-dir/x.json"], ["--plot", "/nonexistent-dir/x.png"],
    ["--plot", "x.svg"], ["--soak", "1", "--ops", "10"], ["--bogus"],
    # values that parse as floats but are no size or time (they gave a
    # traceback, or runs that all failed with exit 1)
    ["--max-size", "inf"], ["--min-size", "1e400"], ["--duration", "nan"],
    ["--duration", "inf"], ["--duration", "1e12"], ["--ops", "100000000000000000000000"],
    ["--soak", "nan"],
    # one bound past a workload's own other bound; a directory for --json
    ["--workloads", "cache-thrash", "--min-size", "100"], ["--json", "/"],
    # an empty file name was taken for "no file"; a size past 1 GiB
    ["--json", ""], ["--plot", ""], ["--max-size", "2G"],
    # seeds that wrapped silently onto another seed; --quick silently lost
    # to --duration or --ops (runs given so that the old lab ends quickly)
    ["--seed", "-1", "--workloads", "larson", "--backends", "system", "--duration", "0.05"],
    ["--seed", str(1 << 64), "--workloads", "larson", "--backends", "system", "--duration", "0.05"],
    ["--quick", "--duration", "0.05", "--workloads", "larson", "--backends", "system"],
    ["--quick", "--ops", "10", "--workloads", "larson", "--backends", "system"],
])
def test_cli_rejects_bad_options(wl, capsys, args):
    from tcalloc.stress.cli import main
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "error:" in err


def test_cli_bad_option_no_traceback():
    r = _stress("--threads", "-3")
    assert r.returncode == 2
    assert "usage:" in r.stderr and "Traceback" not in r.stderr


def test_cli_json_fields(wl, tmp_path):
    out = tmp_path / "r.json"
    r = _stress("--workloads", "larson,fork", "--backends", "tcalloc,system", "--duration", "0.2",
                "--json", str(out), "--isolate")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Summary" in r.stdout and "hottest lock" in r.stdout
    doc = json.loads(out.read_text())
    for k in ("version", "command", "machine", "config", "peers", "runs", "failures"):
        assert k in doc
    assert doc["failures"] == 0
    assert {(x["workload"], x["backend"]) for x in doc["runs"]} == {
        ("larson", "tcalloc"), ("larson", "system"), ("fork", "tcalloc"), ("fork", "system")}
    for run in doc["runs"]:
        for k in ("workload", "backend", "where", "threads", "ops", "corrupt", "lost", "elapsed_s",
                  "throughput_ops_s", "ratio_to_tcalloc", "per_thread", "cpu_user_s",
                  "cpu_system_s", "ctx_voluntary", "ctx_involuntary", "minor_faults",
                  "major_faults", "rss_peak", "uss_peak",
                  "rss_series", "thread_cpu", "locks", "hottest_locks", "ok"):
            assert k in run, k
        assert run["ok"] and run["ops"] > 0 and run["corrupt"] == 0 and run["lost"] == 0
        assert run["rss_peak"] >= run["rss_start"] > 0
        # Every block was written, so its pages were touched: the process faulted.
        assert run["minor_faults"] > 0 and run["major_faults"] >= 0
        assert run["minor_faults_per_kop"] == 1000.0 * run["minor_faults"] / run["ops"]
        if run["workload"] == "fork":
            assert run["forks"] >= 1 and 0 < run["fork_ms"] <= run["child_ms"]
        else:
            assert "fork_ms" not in run
        if run["backend"] == "tcalloc":
            assert run["ratio_to_tcalloc"] == 1.0
            assert run["locks"], "tcalloc runs report lock counters"
            assert any(v["acquisitions"] > 0 for v in run["locks"].values())
        else:
            assert run["locks"] is None


def test_cli_rows_of_runs_that_round_threads_up_keep_their_own_ratios(wl, tmp_path):
    # xmalloc runs pairs: asked for 1 thread, it runs 2. Both its rows said
    # "2", and the one tcalloc baseline per (workload, threads) was the last
    # run's, so tcalloc's own first row read 0.93x.
    out = tmp_path / "x.json"
    r = _stress("--workloads", "xmalloc", "--backends", "tcalloc,system", "--threads", "1,2",
                "--duration", "0.1", "--json", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 (ran 2)" in r.stdout, r.stdout
    runs = json.loads(out.read_text())["runs"]
    assert [(x["backend"], x["threads"], x["threads_run"]) for x in runs] == [
        ("tcalloc", 1, 2), ("system", 1, 2), ("tcalloc", 2, 2), ("system", 2, 2)]
    assert runs[0]["ratio_to_tcalloc"] == runs[2]["ratio_to_tcalloc"] == 1.0
    for t, s in ((runs[0], runs[1]), (runs[2], runs[3])):
        assert s["ratio_to_tcalloc"] == s["throughput_ops_s"] / t["throughput_ops_s"]


def test_soak_passes_are_compared_with_tcalloc_in_their_own_pass():
    from tcalloc.stress.report import add_ratios
    runs = [dict(workload="larson", backend=b, threads=2, throughput_ops_s=t, **{"pass": n})
            for n, (tc, sy) in enumerate(((100.0, 50.0), (200.0, 50.0)))
            for b, t in (("tcalloc", tc), ("system", sy))]
    add_ratios(runs)
    assert [x["ratio_to_tcalloc"] for x in runs] == [1.0, 0.5, 1.0, 0.25]


def test_peers_run_in_children_with_preload(wl, tmp_path):
    from tcalloc.stress.peers import find_peers
    found, missing = find_peers()
    if not found:
        pytest.skip("no peer allocator installed (%s)" % ", ".join(missing))
    out = tmp_path / "p.json"
    r = _stress("--workloads", "prodcons", "--backends", ",".join(["tcalloc"] + list(found)),
                "--duration", "0.2", "--json", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    for run in doc["runs"]:
        if run["backend"] in found:
            assert run["where"] == "child" and run["library"] == found[run["backend"]]
            assert run["preloaded"] is True
            assert run["ok"] and run["ratio_to_tcalloc"] is not None


def _preload_lib(tmp_path, name, code):
    """A shared library built from C code, to preload in a lab child."""
    src = tmp_path / (name + ".c")
    src.write_text(code)
    lib = tmp_path / ("lib%s.so" % name)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", str(lib), str(src)], check=True)
    return str(lib)


def test_fork_children_that_fail_count_in_their_mean_life(wl, tmp_path):
    # A preloaded malloc that fails in fork children for the one size the
    # workload asks for: every child exits 2 (allocation failed), is reaped,
    # and its life is in child_ns, so it is in child_ms's divisor too.
    from tcalloc.stress.runner import run_child
    lib = _preload_lib(tmp_path, "childfail", "#include <stddef.h>\n#include <unistd.h>\n"
                       "void *__libc_malloc(size_t);\n"
                       "static pid_t parent;\n"
                       "__attribute__((constructor)) static void init(void) { parent = getpid(); }\n"
                       "void *malloc(size_t n) {\n"
                       "    if (n == 12345 && getpid() != parent) return NULL;\n"
                       "    return __libc_malloc(n);\n}\n")
    rec = run_child(dict(workload="fork", backend="system", threads=1, ops=None, duration=0.3,
                         min_size=12345, max_size=12345, seed=1), lib)
    assert not rec["ok"] and rec["child_failures"] == rec["forks"] > 0, rec
    assert rec["children_reaped"] == rec["forks"] and rec["child_hung"] == 0, rec
    assert rec["child_ms"] is not None and rec["child_ms"] > 0


def test_a_peer_child_that_fails_after_its_result_is_not_a_clean_run(wl, tmp_path):
    # A child can print its result and then die at exit (heap corruption
    # found at shutdown, say): a preloaded library whose destructor exits 7
    # stands in for that. The run must be reported as failed, not ok.
    from tcalloc.stress.runner import run_child
    lib = _preload_lib(tmp_path, "exit7", "#include <unistd.h>\n"
                       "__attribute__((destructor)) static void bye(void) { _exit(7); }\n")
    rec = run_child(dict(workload="larson", backend="system", threads=1, duration=0.1, ops=None,
                         min_size=None, max_size=None, seed=1), str(lib))
    assert not rec["ok"], rec
    assert "after its result (exit 7)" in rec["problems"][0], rec["problems"]


def _sigint_default():
    # A suite started in the background by a shell without job control
    # (`pytest ... &`) inherits SIGINT ignored, and python then never raises
    # KeyboardInterrupt: the lab child gets SIGINT as a terminal gives it.
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _lab(tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "tcalloc.stress", *args], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_sigint_default)


def _interrupt_at(p, stream, at):
    """Ctrl-C to the lab p once a line of `stream` satisfies at(line); the
    lab must die by SIGINT, as python after an uncaught Ctrl-C (so a shell
    loop stops). Returns the rest of (stdout, stderr)."""
    import signal
    try:
        for line in stream:
            if at(line):
                break
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == -signal.SIGINT, stdout + stderr
    return stdout, stderr


def test_ctrl_c_reports_and_writes_the_runs_done(wl, tmp_path):
    out = tmp_path / "r.json"
    p = _lab(tmp_path, "--workloads", "larson", "--backends", "tcalloc,system", "--threads",
             "1,2", "--duration", "2", "--json", str(out))
    # the first run's line, then Ctrl-C in the second
    stdout, stderr = _interrupt_at(p, p.stderr, lambda line: line.strip().endswith(" ok"))
    assert "interrupted: 1 of 4 runs done" in stderr, stderr
    assert "Summary (1 runs" in stdout and "INTERRUPTED: 1 of 4 runs done" in stdout, stdout
    doc = json.loads(out.read_text())
    assert doc["interrupted"] is True and len(doc["runs"]) == 1 and doc["runs"][0]["ok"]


def test_ctrl_c_ends_a_running_child(wl, tmp_path):
    # SIGINT to the lab alone (not its process group, as `kill -INT` sends
    # it): the child of an isolated 20 s run must go at once too.
    import signal
    import psutil
    p = _lab(tmp_path, "--workloads", "larson", "--backends", "tcalloc", "--threads", "1",
             "--duration", "20", "--isolate")
    try:
        children, deadline = [], time.monotonic() + 30
        while not children and time.monotonic() < deadline:
            time.sleep(0.05)
            children = psutil.Process(p.pid).children()
        assert children, "the isolated run started no child"
        time.sleep(0.5)                 # past Popen: the lab is reading the child's progress
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=60)
        gone, alive = psutil.wait_procs(children, timeout=5)
    finally:
        p.kill()
    assert p.returncode == -signal.SIGINT, stdout + stderr
    assert not alive, alive
    assert "INTERRUPTED: 0 of 1 runs done" in stdout, stdout


def test_ctrl_c_in_a_soak_reports_the_passes_done(wl, tmp_path):
    out = tmp_path / "s.json"
    p = _lab(tmp_path, "--soak", "5", "--workloads", "larson", "--threads", "1", "--duration",
             "0.3", "--json", str(out))
    # the second pass's line, then Ctrl-C
    stdout, stderr = _interrupt_at(p, p.stdout, lambda line: line.startswith("pass   1"))
    assert "soak result: 2 passes" in stdout and "INTERRUPTED: after 2 passes" in stdout, stdout
    doc = json.loads(out.read_text())
    assert doc["interrupted"] is True and doc["soak"]["interrupted"] is True
    assert doc["soak"]["passes"] == 2 and doc["soak"]["corrupt"] == 0


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_watchdog_lets_a_long_run_of_ops_go_on_while_it_progresses():
    from tcalloc.stress.runner import STALL_S, Watchdog
    clock = _Clock()
    dog = Watchdog(dict(workload="larson", ops=10 ** 9), clock=clock)
    for i in range(1000):          # ten hours, progressing every 36 s
        clock.t += 36.0
        assert dog.check(i) is None, clock.t
    clock.t += STALL_S + 0.5
    assert dog.check(999) == "made no progress for %.0f s" % STALL_S


def test_watchdog_ends_a_timed_run_at_its_limit_and_a_stalled_one_early():
    from tcalloc.stress.runner import Watchdog
    clock = _Clock()
    dog = Watchdog(dict(workload="larson", duration=10.0), clock=clock)
    for i in range(99):            # 99 s of progress: within 60 s + 4 x 10 s
        clock.t += 1.0
        assert dog.check(i) is None
    clock.t += 2.0
    assert dog.check(100) == "did not finish within 100 s"
    dog = Watchdog(dict(workload="larson", duration=10.0, stall_s=2.0), clock=clock)
    assert dog.check(5) is None
    clock.t += 2.5
    assert dog.check(5) == "made no progress for 2 s"


def test_a_fork_that_never_returns_in_a_run_of_ops_is_reported_hung(wl, tmp_path):
    # A preloaded fork handler that blocks for ever stands in for an
    # allocator whose fork() deadlocks in the parent. The workers of a run of
    # --ops went on allocating until the forks were done, so progress never
    # stopped and the run was never called hung. Run in a process group of
    # its own: a lab that never ends must not outlive the test.
    import signal
    lib = _preload_lib(tmp_path, "forkhang", "#include <pthread.h>\n#include <unistd.h>\n"
                       "static void prepare(void) { for (;;) pause(); }\n"
                       "__attribute__((constructor)) static void init(void) "
                       "{ pthread_atfork(prepare, 0, 0); }\n")
    spec = dict(workload="fork", backend="system", threads=1, ops=1000, duration=None,
                min_size=None, max_size=None, seed=1, stall_s=1.0)
    code = ("import json, sys; from tcalloc.stress.runner import run_child; "
            "print(json.dumps(run_child(json.loads(sys.argv[1]), sys.argv[2])))")
    p = subprocess.Popen([sys.executable, "-c", code, json.dumps(spec), lib], cwd=str(tmp_path),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        stdout, stderr = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("a fork run of --ops whose fork() never returns was not reported hung")
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)   # whatever of it is left
        except ProcessLookupError:
            pass
        p.wait()
    assert p.returncode == 0, stderr
    rec = json.loads(stdout.splitlines()[-1])
    assert not rec["ok"], rec
    assert "fork on system made no progress for 1 s" in rec["problems"][0], rec["problems"]


def test_a_garbled_result_line_from_a_child_fails_that_run(wl, monkeypatch):
    # A child cut off mid-line (or a preloaded library writing into its
    # output) crashed the lab with a traceback.
    from tcalloc.stress import runner
    monkeypatch.setattr(runner, "CHILD_BOOT", "print('progress 12x'); print('result {\"work')")
    rec = runner.run_child(dict(workload="larson", backend="system", threads=1, ops=10,
                                duration=None, min_size=None, max_size=None, seed=1), None)
    assert not rec["ok"], rec
    assert "garbled result line" in rec["problems"][0], rec["problems"]


def test_a_child_whose_workers_are_stuck_is_reported_hung(wl, tmp_path):
    # A preloaded malloc that blocks for ever on one size, the only size the
    # workers ask for: their progress stops, the child's watchdog reports it
    # and ends the child, and the run fails with what it said.
    from tcalloc.stress.runner import run_child
    lib = _preload_lib(tmp_path, "stuck", "#include <stddef.h>\n#include <unistd.h>\n"
                       "void *__libc_malloc(size_t);\n"
                       "void *malloc(size_t n) {\n"
                       "    while (n == 12345) pause();\n"
                       "    return __libc_malloc(n);\n}\n")
    rec = run_child(dict(workload="larson", backend="system", threads=2, ops=10 ** 6,
                         duration=None, min_size=12345, max_size=12345, seed=1, stall_s=1.0),
                    str(lib))
    assert not rec["ok"], rec
    assert "larson on system made no progress for 1 s" in rec["problems"][0], rec["problems"]


def test_cli_plot(wl, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "p.png"
    r = _stress("--workloads", "larson", "--backends", "tcalloc,system", "--threads", "1,2",
                "--duration", "0.15", "--plot", str(png))
    assert r.returncode == 0, r.stdout + r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_soak_judges_a_heap_that_plateaus_flat_and_one_that_leaks_grown():
    from tcalloc.stress.cli import _heap_verdict
    MIB = 1 << 20
    # A mixed soak's passes, each with its own seed: a plateau whose first
    # pass happened to be low (it was judged "GREW by 10.2M" against it).
    warm, later, slack, flat = _heap_verdict([int(x * MIB) for x in (83.6, 92.2, 93.8, 89.9, 93.8)])
    assert flat is True and warm == int(93.8 * MIB)
    # A heap that grows 5 MiB a pass keeps growing into the second half.
    assert _heap_verdict([(80 + 5 * i) * MIB for i in range(6)])[3] is False
    # One pass: nothing to compare yet.
    assert _heap_verdict([90 * MIB])[1:] == (None, 9 * MIB, None)


def test_cli_soak_reports(wl, tmp_path):
    out = tmp_path / "s.json"
    r = _stress("--soak", "0.01", "--workloads", "larson,churn", "--duration", "0.2",
                "--json", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "soak result" in r.stdout
    soak = json.loads(out.read_text())["soak"]
    assert soak["passes"] >= 1 and soak["corrupt"] == 0 and soak["lost"] == 0
    assert soak["rss_warm_peak"] > 0
    # Judged on tcalloc's own figures: every block back, the heap measured.
    assert soak["tcalloc_leaked_bytes"] == 0
    assert soak["tcalloc_heap_warm_peak"] > 0 and soak["heap_flat"] in (True, None)


@pytest.mark.parametrize("args,seconds", [([], 2.0), (["--quick"], 0.25)])
def test_cli_soak_records_the_length_of_its_runs(wl, tmp_path, args, seconds):
    # A soak's runs are 2 s each unless told: the JSON said 1.5 (the suite's
    # default), and with --quick 0.25 while the runs took 2 s each.
    out = tmp_path / "s.json"
    r = _stress("--soak", "0.001", "--workloads", "larson", "--threads", "1", "--json", str(out),
                *args)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "runs per pass of %g s each" % seconds in r.stdout, r.stdout
    assert json.loads(out.read_text())["config"]["duration_s"] == seconds


def test_cli_soak_with_a_hung_run_reports_and_writes_what_it_has(wl, tmp_path):
    # A hung run ended the soak with os._exit(1) and nothing else: no
    # summary, no JSON. Now it is a failed run, reported like the suite's.
    out = tmp_path / "s.json"
    code = ("import sys\n"
            "from tcalloc.stress import cli, runner\n"
            "real, n = runner.execute, [0]\n"
            "def execute(spec, *a, **k):\n"
            "    n[0] += 1\n"
            "    if n[0] == 3:\n"
            "        raise runner.RunHung('larson on tcalloc made no progress (simulated)')\n"
            "    return real(spec, *a, **k)\n"
            "runner.execute = execute\n"
            "sys.exit(cli.main(sys.argv[1:]))\n")
    r = subprocess.run([sys.executable, "-c", code, "--soak", "5", "--duration", "0.1",
                        "--workloads", "larson", "--threads", "1", "--backends", "tcalloc",
                        "--json", str(out)], cwd=str(tmp_path), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "soak: HUNG during pass 2" in r.stdout and "soak result: 2 passes" in r.stdout
    assert "Summary (3 runs" in r.stdout, r.stdout
    doc = json.loads(out.read_text())
    assert doc["soak"]["hung"] is True and doc["soak"]["passes"] == 2
    assert [x["ok"] for x in doc["runs"]] == [True, True, False]
    assert doc["runs"][2]["error"].startswith("hung: larson on tcalloc made no progress")


def test_isolated_runs_measure_the_tcalloc_build_the_lab_runs_on(wl, tmp_path):
    # A build under test on PYTHONPATH (a copy of the package here) must be
    # what the isolated child measures, not the checkout the lab's code
    # sits in: with the child started in that checkout, `-m` put it first
    # on sys.path, and A/B runs of two builds measured one build twice.
    import shutil
    import tcalloc
    build = tmp_path / "build"
    shutil.copytree(os.path.dirname(os.path.abspath(tcalloc.__file__)), build / "tcalloc",
                    ignore=shutil.ignore_patterns("*.c", "__pycache__"))
    out = tmp_path / "r.json"
    env = dict(os.environ, PYTHONPATH=str(build))
    r = subprocess.run([sys.executable, "-m", "tcalloc", "stress", "--workloads", "larson",
                        "--backends", "tcalloc", "--duration", "0.2", "--isolate",
                        "--json", str(out)], cwd=str(tmp_path), env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    (run,) = json.loads(out.read_text())["runs"]
    assert run["ok"] and run["where"] == "child", run.get("error")
    assert run["tcalloc_dir"] == str(build / "tcalloc"), run["tcalloc_dir"]


def test_a_tcalloc_capi_capsule_given_is_the_table_used(wl):
    # A "tcalloc._C_API" capsule passed as the allocator is used as given
    # (e.g. another engine build's), not swapped for the imported tcalloc's.
    import ctypes
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.calloc.restype = ctypes.c_void_p
    libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
    libc.realloc.restype = ctypes.c_void_p
    libc.realloc.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    calls = {"malloc": 0, "free": 0}
    MALLOC = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_size_t)
    FREE = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
    CALLOC = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t)
    REALLOC = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
    USABLE = ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p)
    ALIGNED = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t)

    def m(n):
        calls["malloc"] += 1
        return libc.malloc(n)

    def f(p):
        calls["free"] += 1
        libc.free(p)

    class CAPI(ctypes.Structure):
        _fields_ = [("abi_version", ctypes.c_uint), ("malloc", MALLOC), ("free", FREE),
                    ("calloc", CALLOC), ("realloc", REALLOC), ("aligned_alloc", ALIGNED),
                    ("usable_size", USABLE)]
    table = CAPI(1, MALLOC(m), FREE(f), CALLOC(lambda n, s: libc.calloc(n, s)),
                 REALLOC(lambda p, n: libc.realloc(p, n)), ALIGNED(lambda a, n: None),
                 USABLE(lambda p: 0))
    new = ctypes.pythonapi.PyCapsule_New
    new.restype = ctypes.py_object
    new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    cap = new(ctypes.addressof(table), b"tcalloc._C_API", None)
    r = wl.run("cache-thrash", cap, threads=1, ops=200, seed=5)
    assert r["corrupt"] == 0 and r["lost"] == 0
    assert calls["malloc"] >= 200 and calls["free"] >= 200, calls


def test_cli_sizes_are_read_as_the_settings_read_them():
    # 4KiB and 1.5M, which TCALLOC_* settings take, were refused here.
    from tcalloc.stress.cli import _size
    assert _size("4KiB") == _size("4K") == _size("4096") == 4096
    assert _size("1.5M") == 3 << 19 and _size("64b") == 64
