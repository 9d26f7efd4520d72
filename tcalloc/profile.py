"""``tcalloc.profile()``: what a block of code cost the process and tcalloc.

    with tcalloc.profile() as p:
        run_my_code()
    print(p.report())
    figures = p.as_dict()

Collected over the block:

- tcalloc's lock counters (acquisitions, contended acquisitions, spins,
  nanoseconds waited) as deltas, for every lock tcalloc takes: the engine's
  (``tcalloc.stats()['locks']``) and the BufferPools' (summed over all pools
  as ``buffer_pool``; ``BufferPool.lock_stats()`` has one pool's), and the
  hottest locks with their wait as a share of the elapsed wall time (N
  threads waiting at once can add up to N x 100%);
- a verdict on what serialised the threads, if anything: when two or more
  threads were busy but the process used about one core while more were
  free, whether tcalloc's locks were the cause (their wait is a large share
  of the busy threads' time) or the GIL (the busy threads are Python threads
  and tcalloc's locks cost them little), or something else;
- deltas of tcalloc.stats()' integer figures, and their values at the end;
- the process (psutil): user and system CPU, RSS and USS at start, end and
  peak (RSS sampled by a background thread every ``interval`` seconds, 10 ms
  by default, plus at start and end; USS, which costs about a millisecond to
  read, at most every 100 ms);
- CPU per thread, and the time each waited for a CPU while runnable, read
  every ``interval`` by a native thread that needs no GIL
  (``tcalloc._threadclock``): a thread that lived for a few ticks is counted
  even when the Python sampler never got the GIL while it ran; the peak RSS
  is read there too;
- context switches, voluntary and involuntary, of all threads of the
  process from getrusage(RUSAGE_SELF). psutil's num_ctx_switches() reads
  /proc/PID/status, which on Linux counts the main thread only; it is
  reported too, as ``ctx_main_thread``;
- page faults, minor and major, of all threads, from the same getrusage:
  a minor fault is a page touched for the first time, or written for the
  first time after a fork() (copy-on-write), where the kernel's work is
  often what a memory-heavy workload spends its system time on.

The samplers' own (small) CPU time is part of the process totals and left
out of the verdict. A thread that starts and ends between two native ticks
is only in the process totals. Threads started through ``threading``
during the profile are known to be Python threads from their start (a
``threading.setprofile`` hook that runs once per new thread and then puts
back the program's own hook, if any).
"""

from __future__ import annotations

import _thread
import math
import os
import resource
import time

from tcalloc._config import shown

# `import tcalloc` runs this module (tcalloc.profile is re-exported), and
# `python -m tcalloc run` imports tcalloc before the program: what is
# imported here is memory every run pays. typing, threading and numbers
# (with re, enum and functools behind typing) were 1.5 MiB on top of a
# fresh interpreter's 8.7: they are imported where they are used, and the
# annotations are not evaluated.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Tuple

__all__ = ["Profile", "profile"]

_MIB = 1024.0 * 1024.0

# Sampling interval bounds, in seconds. One sample (psutil's memory_full_info
# and thread list) costs about a millisecond of the sampler's CPU, so below
# 1 ms the sampler would measure mostly itself; above a day the wait would
# reach threading.TIMEOUT_MAX territory and sampling means nothing anyway.
MIN_INTERVAL = 0.001
MAX_INTERVAL = 86400.0


def _check_interval(interval: object) -> float:
    import numbers
    if isinstance(interval, bool) or not isinstance(interval, numbers.Real):
        raise TypeError("interval must be a number of seconds, not %s" % type(interval).__name__)
    try:
        v = float(interval)
    except OverflowError:           # an int or Fraction beyond a float: far above the bound
        v = math.inf
    if not math.isfinite(v) or not MIN_INTERVAL <= v <= MAX_INTERVAL:
        raise ValueError("interval must be between %g and %g seconds, got %s"
                         % (MIN_INTERVAL, MAX_INTERVAL, shown(interval)))
    return v


def _check_flag(flag: object, what: str) -> bool:
    if not isinstance(flag, bool):
        raise TypeError("%s must be True or False, not %s" % (what, type(flag).__name__))
    return flag


def _check_top(top: object) -> int:
    import numbers
    if isinstance(top, bool) or not isinstance(top, numbers.Integral):
        raise TypeError("top must be an int, not %s" % type(top).__name__)
    if top < 0:
        raise ValueError("top must be >= 0, got %d" % top)
    return int(top)


DEFAULT_INTERVAL = 0.01
# USS (psutil's memory_full_info reads /proc/PID/smaps_rollup) costs about
# 1 ms; RSS and the thread list about 0.1 ms: USS is read at most this often.
USS_EVERY = 0.1


def _engine_stats() -> Dict[str, Any]:
    # Lazy: importing tcalloc loads the engine. Read as a plain dict: the
    # deltas below go over its keys generically. The pools' locks are the
    # buffer module's; they join the engine's here.
    import tcalloc
    from tcalloc.buffer import _pool_lock_totals
    from typing import cast
    st = cast("Dict[str, Any]", tcalloc.stats())
    st["locks"]["buffer_pool"] = _pool_lock_totals()
    return st


def _usable_cpus() -> int:
    try:
        import os
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        import os
        return os.cpu_count() or 1


# What serialised the threads. A thread is busy when it used at least 10% of
# the busiest thread's CPU (and at least 5 ms). Two or more busy threads,
# with two or more cores for them, ran in parallel when the process used at
# least a quarter of the extra cores on top of one; otherwise something held
# them back, and the report says what, in this order:
# - tcalloc's locks, when the busy threads spent 20% of their time waiting
#   on them (tcalloc's own counters);
# - the GIL, when two or more busy threads are Python threads and the
#   profile's Python sampler spent a quarter of the block or more asleep
#   waiting for the GIL: its time less its timer's sleeps, its CPU and its
#   time runnable without a CPU (the native clock's schedstat figures for
#   it). The sampler wants the GIL only briefly per tick, so that wait is
#   near zero unless other threads keep the GIL busy, and then it is most of
#   the sampler's time;
# - the machine, when the native clock itself woke up late by a tenth of the
#   interval on average, or the busy threads spent 30% of their time
#   runnable without a CPU (schedstat): other processes had the CPUs;
# - something else (another lock, I/O).
_BUSY_SHARE = 0.10
_BUSY_MIN_S = 0.005
_SERIAL_EFFICIENCY = 0.25
_TCALLOC_WAIT_SHARE = 0.20
_GIL_WAIT_SHARE = 0.25
_MACHINE_LATE_SHARE = 0.10
_MACHINE_RUNQ_SHARE = 0.30


def _verdict(threads: List[Dict[str, Any]], cpu_s: float, elapsed_s: float,
             wait_ns: int, engine: bool, python_ids: "set[int]", hottest: Optional[str],
             gil_late_s: Optional[float], gil_wait_s: Optional[float],
             cpu_late_s: Optional[float], interval: float) -> Dict[str, Any]:
    """What held the busy threads back, if anything (see above). `threads`
    leaves the samplers out; `cpu_s` is the process's CPU without theirs;
    `gil_late_s` and `cpu_late_s` the mean lateness of the Python sampler
    beyond the native clock's, and of the native clock; `gil_wait_s` the
    Python sampler's time asleep waiting for the GIL (None: unknown)."""
    cpu = {t["id"]: t["cpu_s"] for t in threads}
    top = max(cpu.values(), default=0.0)
    busy = [i for i, c in cpu.items() if c >= max(_BUSY_MIN_S, _BUSY_SHARE * top)]
    busy_py = [i for i in busy if i in python_ids]
    avail = min(len(busy), _usable_cpus())
    cores = cpu_s / elapsed_s if elapsed_s > 0 else 0.0
    busy_s = sum(cpu[i] for i in busy)
    runq = [t["cpu_wait_s"] for t in threads if t["id"] in busy]
    runq_s = sum(runq) if runq and None not in runq else None
    # A thread waiting on a lock uses no CPU: its wait against the time it ran.
    wait_share = (wait_ns / 1e9) / (wait_ns / 1e9 + busy_s) if busy_s or wait_ns else 0.0
    runq_share = runq_s / (runq_s + busy_s) if runq_s is not None and (runq_s or busy_s) else None
    v: Dict[str, Any] = dict(
        busy_threads=len(busy), busy_python_threads=len(busy_py), cores_used=round(cores, 3),
        cores_available=avail, tcalloc_wait_share=round(wait_share, 4),
        gil_wait_per_tick_s=None if gil_late_s is None else round(gil_late_s, 6),
        cpu_wait_per_tick_s=None if cpu_late_s is None else round(cpu_late_s, 6),
        cpu_wait_share=None if runq_share is None else round(runq_share, 4))
    gil_share = (gil_wait_s / elapsed_s if gil_wait_s is not None and elapsed_s > 0 else None)
    v["gil_wait_share"] = None if gil_share is None else round(gil_share, 4)
    gil_bound = len(busy_py) >= 2 and gil_share is not None and gil_share >= _GIL_WAIT_SHARE
    starved = ((cpu_late_s is not None and cpu_late_s >= _MACHINE_LATE_SHARE * interval)
               or (runq_share is not None and runq_share >= _MACHINE_RUNQ_SHARE))
    if len(busy) < 2:
        v["verdict"], v["text"] = "single", "one thread busy: nothing to serialise"
    elif avail < 2:
        v["verdict"] = "one_core"
        v["text"] = "%d threads busy on one usable core: they could only take turns" % len(busy)
    elif (cores - 1.0) / (avail - 1) >= _SERIAL_EFFICIENCY:
        v["verdict"] = "parallel"
        v["text"] = "%d threads busy ran in parallel: %.2f of %d cores used" % (
            len(busy), cores, avail)
    elif engine and wait_share >= _TCALLOC_WAIT_SHARE:
        v["verdict"] = "tcalloc"
        v["text"] = ("serialised by tcalloc's locks: %d threads busy used %.2f of %d cores and "
                     "spent %.0f%% of their time waiting on tcalloc's locks%s"
                     % (len(busy), cores, avail, 100 * wait_share,
                        " (hottest: %s)" % hottest if hottest else ""))
    elif gil_bound:
        v["verdict"] = "gil"
        v["text"] = ("serialised by the GIL%s: %d Python threads busy used %.2f of %d cores, "
                     "and a thread asking for the GIL spent %.0f%% of the time waiting for it%s"
                     % (", not by tcalloc" if engine else "", len(busy_py), cores, avail,
                        100 * (gil_share or 0.0),
                        "; tcalloc's locks cost them %.1f%% of their time" % (100 * wait_share)
                        if engine else ""))
    elif starved:
        v["verdict"] = "machine"
        v["text"] = ("held back by a busy machine: %d threads busy used %.2f of %d cores; "
                     "a thread that needed only a CPU waited %.1f ms for one%s"
                     % (len(busy), cores, avail, 1e3 * (cpu_late_s or 0.0),
                        " and the busy threads were runnable without a CPU %.0f%% of the "
                        "time" % (100 * runq_share) if runq_share is not None else ""))
    else:
        v["verdict"] = "other"
        v["text"] = ("serialised outside tcalloc and the GIL: %d threads busy (%d of them "
                     "Python threads) used %.2f of %d cores: another lock, or I/O"
                     % (len(busy), len(busy_py), cores, avail))
    return v


def _lock_delta(before: Dict[str, Dict[str, int]],
                after: Dict[str, Dict[str, int]]) -> Dict[str, Dict[str, int]]:
    out = {}
    for name, a in after.items():
        b = before.get(name, {})
        d = {k: int(a.get(k, 0)) - int(b.get(k, 0))
             for k in ("acquisitions", "contended", "spins", "wait_ns")}
        if any(d.values()):
            out[name] = d
    return out


def _thread_names() -> Dict[int, str]:
    import threading
    names = {}
    for t in threading.enumerate():
        tid = getattr(t, "native_id", None)
        if tid is not None:
            names[tid] = t.name
    return names


# Threads started through `threading` while a profile runs: each one, as it
# starts, is known to be a Python thread by its native id, even if it ends
# before the Python sampler (which needs the GIL those threads keep busy)
# ever sees it in threading.enumerate(). A threading profile hook does it:
# it runs once in each new thread, records it, and puts back the hook that
# was there before (the program's own, or none). _starts_lock guards
# _active and _prev_hook. A fork() child has no profile running: it starts
# with none active and the hook taken back.
_active: "set[Profile]" = set()
_prev_hook: Any = None
_starts_lock = _thread.allocate_lock()


def _threading_hook() -> Any:
    import threading
    if hasattr(threading, "getprofile"):         # 3.10+
        return threading.getprofile()
    return getattr(threading, "_profile_hook", None)


def _unhook() -> None:
    """Put back the hook that was there before the first profile, unless
    the program has set another since."""
    if _threading_hook() is _on_thread_start:
        import threading
        threading.setprofile(_prev_hook)


def _forget_profiles_in_child() -> None:
    global _starts_lock
    _starts_lock = _thread.allocate_lock()       # the parent's may have been held
    if _active:
        _active.clear()
        _unhook()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_profiles_in_child)


def _on_thread_start(frame: Any, event: str, arg: Any) -> Any:
    import sys
    import threading
    t = threading.current_thread()
    prev = _prev_hook
    for p in list(_active):
        p._note_thread(t.native_id, t.name)
    sys.setprofile(prev)
    if prev is not None:
        return prev(frame, event, arg)
    return None


def _watch_thread_starts(p: "Profile", on: bool) -> None:
    global _prev_hook
    import threading
    with _starts_lock:
        if on:
            if not _active:
                _prev_hook = _threading_hook()
                threading.setprofile(_on_thread_start)
            _active.add(p)
        else:
            _active.discard(p)
            if not _active:
                _unhook()


def _comm(tid: int) -> str:
    try:
        with open("/proc/self/task/%d/comm" % tid) as f:
            return f.read().strip()
    except OSError:
        return ""


class Profile:
    """``Profile(interval=0.01, engine=True, top=5)``: a context manager
    (or ``start()`` / ``stop()``) collecting the figures in the module
    docstring; ``as_dict()`` and ``report()`` give them once stopped.

    ``interval``: seconds between the sampler's readings, a real number
    from 0.001 to 86400. ``engine=False`` leaves tcalloc out (psutil figures
    only), e.g. for a process whose malloc is another allocator. ``top``:
    how many of the hottest locks to list (an int >= 0). Bad arguments raise
    TypeError or ValueError here, not later in the sampler thread."""

    interval: float
    engine: bool
    top: int

    def __init__(self, interval: float = DEFAULT_INTERVAL, engine: bool = True,
                 top: int = 5) -> None:
        self.interval = _check_interval(interval)
        self.engine = _check_flag(engine, "engine")
        self.top = _check_top(top)
        self._running = False
        self._result: Optional[Dict[str, Any]] = None
        self._samples = 0               # none taken until start()

    # -- collection ------------------------------------------------------
    def __enter__(self) -> "Profile":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> "Profile":
        """Start collecting; RuntimeError if already running."""
        import threading

        import psutil
        if self._running:
            raise RuntimeError("profile already running")
        self._proc = psutil.Process()
        self._stats0 = _engine_stats() if self.engine else None
        self._ru0 = resource.getrusage(resource.RUSAGE_SELF)
        self._cpu0 = self._proc.cpu_times()
        self._ctx0 = self._proc.num_ctx_switches()
        self._thr0 = {t.id: (t.user_time, t.system_time) for t in self._proc.threads()}
        self._thr_last = dict(self._thr0)
        self._names: Dict[int, str] = {}
        self._python_ids = set(_thread_names())
        mem = self._proc.memory_full_info()
        self._uss_at = time.monotonic()
        self._rss0, self._uss0 = mem.rss, mem.uss
        self._rss_peak, self._uss_peak = mem.rss, mem.uss
        self._series: List[Tuple[float, int]] = []
        self._samples = 0
        self._late, self._sleeps, self._timer_s = 0.0, 0, 0.0
        self._loop_t0 = self._loop_t1 = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._t0 = time.perf_counter_ns()
        self._record(mem.rss, mem.uss)
        self._clock = None
        try:
            from tcalloc._threadclock import ThreadClock
            self._clock = ThreadClock(self.interval)
            self._clock.start()
        except (ImportError, OSError):     # not Linux: psutil's per-thread figures only
            self._clock = None
        _watch_thread_starts(self, True)
        self._sampler = threading.Thread(target=self._sample_loop,
                                         name="tcalloc.profile sampler", daemon=True)
        self._running = True
        self._result = None
        self._sampler.start()
        return self

    @property
    def samples(self) -> int:
        """Samples taken so far (start, each sampler tick, end)."""
        return self._samples

    def _record(self, rss: int, uss: Optional[int]) -> None:
        with self._lock:
            self._samples += 1
            self._rss_peak = max(self._rss_peak, rss)
            if uss is not None:
                self._uss_peak = max(self._uss_peak, uss)
            self._series.append(((time.perf_counter_ns() - self._t0) / 1e9, rss))

    def _note_thread(self, tid: Optional[int], name: str) -> None:
        """A Python thread that started during the profile (in that thread)."""
        if tid is None:
            return
        with self._lock:
            self._python_ids.add(tid)
            self._names[tid] = name

    def _sample_once(self, full: bool = False) -> None:
        now = time.monotonic()
        uss: Optional[int] = None
        if full or now - self._uss_at >= USS_EVERY:
            mem = self._proc.memory_full_info()
            rss, uss = mem.rss, mem.uss
            self._uss_at = now
        else:
            rss = self._proc.memory_info().rss
        try:
            threads = self._proc.threads()
        except Exception:
            threads = []
        names = _thread_names()
        with self._lock:
            self._python_ids.update(names)
            for t in threads:
                self._thr_last[t.id] = (t.user_time, t.system_time)
                if names.get(t.id):          # threading's name, once it has one
                    self._names[t.id] = names[t.id]
                elif t.id not in self._names:
                    self._names[t.id] = _comm(t.id)
        self._record(rss, uss)

    def _sample_loop(self) -> None:
        self._loop_t0 = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            if self._stop.wait(self.interval):
                self._timer_s += time.perf_counter() - t0
                self._loop_t1 = time.perf_counter()
                return
            self._timer_s += self.interval
            # Woken late: waiting for a CPU, as the native clock is, plus
            # waiting for the GIL, which only this thread needs.
            self._late += max(0.0, time.perf_counter() - t0 - self.interval)
            self._sleeps += 1
            try:
                self._sample_once()
            except Exception:       # the process is going away; keep what we have
                return

    def stop(self) -> "Profile":
        """Stop collecting and compute the figures; RuntimeError if not running."""
        if not self._running:
            raise RuntimeError("profile not running")
        self._stop.set()
        self._sampler.join()
        _watch_thread_starts(self, False)
        self._sample_once(full=True)
        if self._clock is not None:
            self._clock.stop()
        elapsed_ns = time.perf_counter_ns() - self._t0
        cpu1 = self._proc.cpu_times()
        ctx1 = self._proc.num_ctx_switches()
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        mem = self._proc.memory_full_info()
        stats1 = _engine_stats() if self.engine else None
        self._running = False
        self._result = self._build(elapsed_ns, cpu1, ctx1, ru1, mem, stats1)
        return self

    # -- results ---------------------------------------------------------
    def _build(self, elapsed_ns: int, cpu1: Any, ctx1: Any, ru1: Any, mem: Any,
               stats1: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        import threading
        me = threading.get_native_id()
        clock = self._clock
        samplers = {self._sampler.native_id}
        seen = {}
        if clock is not None:
            samplers.add(clock.clock_thread_id)
            seen = {tid: (comm, cpu, wait) for tid, comm, _, cpu, wait in clock.threads()}
        threads = []
        for tid in sorted(set(self._thr_last) | set(seen)):
            name = self._names.get(tid) or (seen[tid][0] if tid in seen else "") or _comm(tid)
            if tid == me and not name:
                name = "main"
            row: Dict[str, Any] = dict(id=tid, name=name, cpu_user_s=None, cpu_system_s=None)
            if tid in self._thr_last:
                (u, s), (u0, s0) = self._thr_last[tid], self._thr0.get(tid, (0.0, 0.0))
                row.update(cpu_user_s=round(u - u0, 6), cpu_system_s=round(s - s0, 6))
            if tid in seen:
                row["cpu_s"] = round(seen[tid][1], 6)
                row["cpu_wait_s"] = (round(seen[tid][2], 6)
                                     if clock is not None and clock.has_wait else None)
            else:
                row["cpu_s"] = round(row["cpu_user_s"] + row["cpu_system_s"], 6)
                row["cpu_wait_s"] = None
            row["sampler"] = tid in samplers
            threads.append(row)
        d = dict(
            elapsed_s=elapsed_ns / 1e9,
            cpu_user_s=cpu1.user - self._cpu0.user,
            cpu_system_s=cpu1.system - self._cpu0.system,
            ctx_voluntary=ru1.ru_nvcsw - self._ru0.ru_nvcsw,
            ctx_involuntary=ru1.ru_nivcsw - self._ru0.ru_nivcsw,
            ctx_main_thread=dict(voluntary=ctx1.voluntary - self._ctx0.voluntary,
                                 involuntary=ctx1.involuntary - self._ctx0.involuntary),
            minor_faults=ru1.ru_minflt - self._ru0.ru_minflt,
            major_faults=ru1.ru_majflt - self._ru0.ru_majflt,
            rss_start=self._rss0, rss_end=mem.rss,
            rss_peak=max(self._rss_peak, mem.rss, clock.rss_peak if clock is not None else 0),
            uss_start=self._uss0, uss_end=mem.uss, uss_peak=max(self._uss_peak, mem.uss),
            samples=self._samples,
            rss_series=[[round(t, 4), r] for t, r in self._series],
            threads=threads,
            engine=self.engine,
        )
        cpu = d["cpu_user_s"] + d["cpu_system_s"]
        d["cpu_percent"] = 100.0 * cpu / d["elapsed_s"] if elapsed_ns else 0.0
        stats0 = self._stats0
        hot: List[Tuple[str, Dict[str, int]]] = []        # the contended locks, hottest first
        if stats0 is not None and stats1 is not None:       # engine=True
            locks = _lock_delta(stats0.get("locks", {}), stats1.get("locks", {}))
            hot = sorted(((n, v) for n, v in locks.items() if v["contended"] or v["wait_ns"]),
                         key=lambda kv: (kv[1]["wait_ns"], kv[1]["contended"]), reverse=True)
            d["locks"] = locks
            d["lock_wait_ns"] = sum(v["wait_ns"] for v in locks.values())
            d["hottest_locks"] = [
                dict(name=n, wait_share=v["wait_ns"] / elapsed_ns if elapsed_ns else 0.0, **v)
                for n, v in hot[: self.top]]
            d["stats_delta"] = {k: v - stats0.get(k, 0) for k, v in stats1.items()
                                if isinstance(v, int) and isinstance(stats0.get(k, 0), int)}
            d["stats_end"] = {k: v for k, v in stats1.items() if isinstance(v, int)}
        py_late = self._late / self._sleeps if self._sleeps else None
        cpu_late = self._clock.mean_lateness if self._clock is not None else None
        # The Python sampler's life: asleep on its timer, running, runnable
        # without a CPU, or asleep waiting for the GIL (for each tick and for
        # every call inside a sample that gives the GIL up): the rest.
        gil_wait = None
        me_row = [t for t in threads if t["id"] == self._sampler.native_id]
        if clock is not None and me_row and self._loop_t1 > self._loop_t0:
            runq = me_row[0]["cpu_wait_s"]
            if runq is None:
                runq = self._sleeps * (cpu_late or 0.0)
            gil_wait = max(0.0, (self._loop_t1 - self._loop_t0) - self._timer_s
                           - me_row[0]["cpu_s"] - runq)
        d["serialisation"] = _verdict(
            [t for t in threads if not t["sampler"]],
            cpu - sum(t["cpu_s"] for t in threads if t["sampler"]),
            d["elapsed_s"], d.get("lock_wait_ns", 0), self.engine, self._python_ids,
            hot[0][0] if hot else None,         # named even when `top` lists none
            None if py_late is None or cpu_late is None else max(0.0, py_late - cpu_late),
            gil_wait, cpu_late, self.interval)
        return d

    def as_dict(self) -> Dict[str, Any]:
        """All figures as a dict of plain values (JSON-ready)."""
        if self._result is None:
            raise RuntimeError("profile has not finished (use it as a context manager)")
        return self._result

    def report(self) -> str:
        """The figures as text, hottest locks first."""
        d = self.as_dict()
        out = []
        out.append("elapsed %.3f s   cpu user %.3f s  system %.3f s  (%.0f%% of one core)"
                   % (d["elapsed_s"], d["cpu_user_s"], d["cpu_system_s"], d["cpu_percent"]))
        out.append("context switches (all threads): voluntary %d  involuntary %d"
                   % (d["ctx_voluntary"], d["ctx_involuntary"]))
        out.append("page faults (all threads): minor %d  major %d"
                   % (d["minor_faults"], d["major_faults"]))
        out.append("rss  start %.1f MiB  peak %.1f MiB  end %.1f MiB   uss peak %.1f MiB   (%d samples)"
                   % (d["rss_start"] / _MIB, d["rss_peak"] / _MIB, d["rss_end"] / _MIB,
                      d["uss_peak"] / _MIB, d["samples"]))
        out.append("threads: " + d["serialisation"]["text"])
        busy = [t for t in d["threads"] if t["cpu_s"] > 0]
        if busy:
            out.append("cpu per thread:")
            for t in sorted(busy, key=lambda t: -t["cpu_s"])[:8]:
                out.append("  %-8d %-28s cpu %.3f s%s%s"
                           % (t["id"], t["name"][:28], t["cpu_s"],
                              "  waited for a cpu %.3f s" % t["cpu_wait_s"]
                              if t["cpu_wait_s"] is not None else "",
                              "  (profiler)" if t["sampler"] else ""))
        if d["engine"]:
            # Contention is told from every lock, not from the `top` listed:
            # top=0 lists none of them.
            contended = [v for v in d["locks"].values() if v["contended"] or v["wait_ns"]]
            if contended and not d["hottest_locks"]:
                out.append("tcalloc locks: %d contended (%d contended acquisitions, "
                           "%.3f ms waited; top=%d lists none)"
                           % (len(contended), sum(v["contended"] for v in contended),
                              sum(v["wait_ns"] for v in contended) / 1e6, self.top))
            elif contended:
                out.append("hottest tcalloc locks (wait as a share of elapsed wall time):")
                out.append("  %-22s %12s %10s %12s %12s %8s"
                           % ("lock", "acquisitions", "contended", "spins", "wait ms", "share"))
                for h in d["hottest_locks"]:
                    out.append("  %-22s %12d %10d %12d %12.3f %7.2f%%"
                               % (h["name"], h["acquisitions"], h["contended"], h["spins"],
                                  h["wait_ns"] / 1e6, 100.0 * h["wait_share"]))
            else:
                busiest = sorted(d["locks"].items(), key=lambda kv: -kv[1]["acquisitions"])[:1]
                out.append("tcalloc locks: no contention"
                           + (" (busiest: %s, %d acquisitions)" % (busiest[0][0], busiest[0][1]["acquisitions"])
                              if busiest else " (no lock taken)"))
            sd = d["stats_delta"]
            out.append("tcalloc: bytes_in_use %+d  heap_bytes %+d  (now %.1f MiB in use, %.1f MiB heap)"
                       % (sd.get("bytes_in_use", 0), sd.get("heap_bytes", 0),
                          d["stats_end"].get("bytes_in_use", 0) / _MIB,
                          d["stats_end"].get("heap_bytes", 0) / _MIB))
        return "\n".join(out)


def profile(interval: float = DEFAULT_INTERVAL, engine: bool = True, top: int = 5) -> Profile:
    """``with tcalloc.profile(interval=0.01, engine=True, top=5) as p: ...``;
    the arguments are checked here (see :class:`Profile`)."""
    return Profile(interval=interval, engine=engine, top=top)
