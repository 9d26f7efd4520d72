"""One run of one workload on one backend, with its profile.

tcalloc and the system malloc run in this process (``execute``); a peer
runs in a child process with LD_PRELOAD (``run_child``), which calls
``execute`` with the "system" allocator, i.e. the preloaded library.
"""

import ctypes
import json
import os
import queue
import subprocess
import sys
import threading
import time

IN_PROCESS = ("tcalloc", "system")


def _reset_heap():
    # Start each in-process run from a clean slate: free memory left cached
    # by earlier runs goes back to the OS, so RSS figures are this run's.
    try:
        import tcalloc
        tcalloc.release_free_memory()
    except Exception:
        pass
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):
        pass


def _verdict(rec):
    bad = []
    for k in ("corrupt", "lost", "misaligned", "failed", "child_failures", "child_hung"):
        if rec.get(k):
            bad.append("%d %s" % (rec[k], k.replace("_", " ")))
    return bad


class RunHung(RuntimeError):
    """A run did not finish in time: its threads are stuck (a deadlock or a
    lost wakeup in the allocator). They cannot be stopped from Python, so the
    caller reports what it has and ends the process."""


# A run whose workers complete no operation for this long is hung. The
# counter moves every 256 operations or 16 MiB allocated per worker, and
# with every fork the fork driver sees through (a hung child is killed after
# 10 s and counted): only a fork() that never returns stalls a fork run
# whose workers are done with their --ops and wait for the forks.
STALL_S = 60.0


class Watchdog:
    """When a run counts as hung: no progress for spec["stall_s"] (default
    STALL_S) seconds, or, for a timed run, no end within 60 s plus four times
    its duration. A run of a number of operations has no time limit of its
    own: on a slow machine, or with many operations, it may take hours.
    `slack` seconds are added to both (a parent watching a child that has
    its own watchdog). `clock` is for tests."""

    def __init__(self, spec, slack=0.0, clock=time.monotonic):
        self.clock = clock
        self.start = self.moved = clock()
        self.ops = None
        self.stall = (spec.get("stall_s") or STALL_S) + slack
        self.limit = None if spec.get("ops") else 60.0 + 4 * (spec.get("duration") or 30.0) + slack

    def check(self, ops):
        """None while the run is alive, else why it is hung."""
        now = self.clock()
        if ops != self.ops:
            self.ops, self.moved = ops, now
        if self.limit is not None and now - self.start > self.limit:
            return "did not finish within %.0f s" % self.limit
        if now - self.moved > self.stall:
            return "made no progress for %.0f s" % self.stall
        return None


def execute(spec, allocator, engine, on_progress=None, poll=0.2):
    """Run spec (dict: workload, threads, duration or ops, min_size, max_size,
    seed) with the given allocator under a Profile; returns the run record.
    Raises RunHung when the run is hung (see Watchdog)."""
    from . import _workloads as wl
    from tcalloc.profile import Profile

    prog = wl.Progress()
    box = {}

    def target():
        try:
            box["r"] = wl.run(spec["workload"], allocator, threads=spec["threads"],
                              ops=spec.get("ops") or 0, duration=spec.get("duration") or 0.0,
                              min_size=spec.get("min_size"), max_size=spec.get("max_size"),
                              seed=spec.get("seed", 1), progress=prog)
        except Exception as e:      # reported in the record, the suite goes on
            box["e"] = "%s: %s" % (type(e).__name__, e)

    if engine:
        import tcalloc
        before = tcalloc.stats()
    t0 = time.monotonic()
    with Profile(interval=0.05, engine=engine) as p:
        th = threading.Thread(target=target, name="stress " + spec["workload"], daemon=True)
        th.start()
        dog = Watchdog(spec)
        while th.is_alive():
            th.join(poll)
            ops = prog.ops
            if on_progress:
                on_progress(ops, time.monotonic() - t0)
            why = dog.check(ops)
            if why:
                raise RunHung("%s on %s %s (stuck at %d ops: deadlock or lost wakeup in "
                              "the allocator?)" % (spec["workload"], spec["backend"], why, ops))
    prof = p.as_dict()
    rec = dict(workload=spec["workload"], backend=spec["backend"], threads=spec["threads"],
               error=box.get("e"))
    r = box.get("r")
    if r is not None:
        # threads stays the count asked for (the run's key: xmalloc and
        # prodcons round an odd count up, and two runs must not share one);
        # threads_run is how many ran.
        rec.update({k: v for k, v in r.items()
                    if k not in ("workload", "allocator", "elapsed_ns", "fork_ns", "child_ns",
                                 "threads")})
        rec["threads_run"] = r["threads"]
        if "fork_ns" in r:
            reaped = r["children_reaped"]   # child_ns sums these, failed ones too
            rec["fork_ms"] = r["fork_ns"] / r["forks"] / 1e6 if r["forks"] else None
            rec["child_ms"] = r["child_ns"] / reaped / 1e6 if reaped > 0 else None
        rec["elapsed_s"] = r["elapsed_ns"] / 1e9
        rec["throughput_ops_s"] = r["ops"] / rec["elapsed_s"] if r["elapsed_ns"] else 0.0
    for k in ("cpu_user_s", "cpu_system_s", "ctx_voluntary", "ctx_involuntary", "ctx_main_thread",
              "minor_faults", "major_faults",
              "rss_start", "rss_peak", "rss_end", "uss_start", "uss_peak", "rss_series", "samples"):
        rec[k] = prof[k]
    rec["minor_faults_per_kop"] = (1000.0 * rec["minor_faults"] / rec["ops"]
                                   if rec["minor_faults"] is not None and rec.get("ops") else None)
    rec["thread_cpu"] = prof["threads"]
    if engine:
        # tcalloc's own figures, which the lab's Python records do not touch
        # (the lab's Python heap is not on tcalloc): blocks left in use by the
        # run (every workload frees what it allocates: 0), and the heap held
        # from the OS afterwards.
        after = tcalloc.stats()
        rec["tc_in_use_delta"] = after["bytes_in_use"] - before["bytes_in_use"]
        rec["tc_committed"] = after["heap_bytes"] - after["page_heap_released_bytes"]
        rec["locks"] = prof["locks"]
        rec["lock_wait_ns"] = prof["lock_wait_ns"]
        el = rec.get("elapsed_s") or prof["elapsed_s"]
        hot = []
        for h in prof["hottest_locks"]:
            h = dict(h)
            ran = rec.get("threads_run", rec["threads"])
            h["wait_share_threads"] = h["wait_ns"] / (el * 1e9 * ran) if el else 0.0
            hot.append(h)
        rec["hottest_locks"] = hot
    else:
        rec["locks"] = None
        rec["hottest_locks"] = None
    return rec


def finish(rec):
    """Fill in ok/problems once the record is complete."""
    problems = _verdict(rec)
    if rec.get("error"):
        problems.insert(0, rec["error"])
    rec["problems"] = problems
    rec["ok"] = not problems
    return rec


def run_in_process(spec, on_progress=None):
    _reset_heap()
    rec = execute(spec, spec["backend"], engine=(spec["backend"] == "tcalloc"),
                  on_progress=on_progress)
    rec["where"] = "in-process"
    rec["library"] = None
    return finish(rec)


# The child's command line. `-c`, not `-m`: `-m` puts the working directory
# first on sys.path, where a checkout's tcalloc/ would win over the one under
# test; `-c` puts "" there, which the child drops before any import.
CHILD_BOOT = ("import sys\n"
              "if sys.path and sys.path[0] == '':\n"
              "    del sys.path[0]\n"
              "from tcalloc.stress._child import main\n"
              "sys.exit(main(sys.argv[1:]))\n")


def _in_site_dirs(path):
    import site
    dirs = list(getattr(site, "getsitepackages", lambda: [])())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    real = os.path.realpath(path)
    return any(os.path.realpath(d) == real for d in dirs)


def child_env(library):
    """The environment of a child run: LD_PRELOAD is the peer library or
    nothing, and the child imports the tcalloc this process runs. A build
    under test (on PYTHONPATH, a checkout) goes first on the child's path:
    the directory that holds the tcalloc package, never the package's own
    directory, where tcalloc/numpy.py and tcalloc/profile.py would be the
    child's `numpy` and `profile`. An installed tcalloc is in a site
    directory, which the child has on its path anyway, after the standard
    library: putting it on PYTHONPATH would move it ahead."""
    import tcalloc
    tc_root = os.path.dirname(os.path.dirname(os.path.abspath(tcalloc.__file__)))
    env = dict(os.environ)
    if not _in_site_dirs(tc_root):
        env["PYTHONPATH"] = os.pathsep.join(
            [tc_root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    if library:
        env["LD_PRELOAD"] = library
    else:
        env.pop("LD_PRELOAD", None)
    return env


def run_child(spec, library, on_progress=None):
    """Run spec in a child process (CHILD_BOOT, tcalloc.stress._child), with
    LD_PRELOAD=library when given."""
    import tcalloc
    tc_dir = os.path.dirname(os.path.abspath(tcalloc.__file__))
    env = child_env(library)
    # The child's own watchdog reports a hang; this one, 10 s later, kills a
    # child too stuck to report (or stuck after its result, in teardown).
    dog = Watchdog(spec, slack=10.0)
    proc = subprocess.Popen([sys.executable, "-c", CHILD_BOOT, json.dumps(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines = queue.Queue()

    def reader():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    errs = []
    t0 = time.monotonic()
    rec = None
    garbled = None
    killed = None
    ops = 0
    try:
        threading.Thread(target=reader, daemon=True).start()
        err_reader = threading.Thread(target=lambda: errs.append(proc.stderr.read()), daemon=True)
        err_reader.start()
        while True:
            killed = dog.check(ops)   # on every line too: a chatty child cannot outlive it
            if killed:
                proc.kill()
                break
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                break
            if line.startswith("progress "):
                try:
                    ops = int(line.split()[1])
                except (IndexError, ValueError):
                    continue        # a garbled progress line is no progress
                if on_progress:
                    on_progress(ops, time.monotonic() - t0)
            elif line.startswith("result "):
                # A cut or garbled result (a child killed mid-write, a
                # preloaded library printing into it) fails this run, not the lab.
                try:
                    rec = json.loads(line[len("result "):])
                except ValueError:
                    rec = None
                if not isinstance(rec, dict):
                    rec, garbled = None, line.strip()
        rc = proc.wait()
        err_reader.join(5.0)      # the child's stderr to its end, for the error below
    except BaseException:
        proc.kill()               # Ctrl-C in the parent: the child goes too
        proc.wait()
        raise
    tail = (errs[0] if errs else "").strip().splitlines()[-3:]
    how = "killed: it " + killed if killed else "failed"
    said = (": " + " | ".join(tail)) if tail else ""
    if rec is None:
        if garbled and not killed:
            how = "printed a garbled result line %r" % (
                garbled[:60] + ("..." if len(garbled) > 60 else ""))
        rec = dict(workload=spec["workload"], backend=spec["backend"], threads=spec["threads"],
                   error="child process %s (exit %s)%s" % (how, rc, said))
    elif (rc != 0 or killed) and not rec.get("error"):
        # The result line came, but the child did not end cleanly after it
        # (heap corruption found at exit, a hang in teardown): not a clean run.
        rec["error"] = "child process %s after its result (exit %s)%s" % (how, rc, said)
    rec["where"] = "child"
    rec["library"] = library
    if library and rec.get("preloaded") is False and not rec.get("error"):
        rec["error"] = "LD_PRELOAD=%s had no effect in the child" % library
    if rec.get("tcalloc_dir", tc_dir) != tc_dir and not rec.get("error"):
        rec["error"] = "the child ran the tcalloc in %s, not this process's (%s)" % (
            rec["tcalloc_dir"], tc_dir)
    return finish(rec)
