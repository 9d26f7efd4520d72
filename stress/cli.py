"""``python -m tcalloc.stress``: argument parsing, the suite, the soak run."""

import argparse
import json
import os
import platform
import sys
import time

from . import JSON_VERSION
from .peers import PEERS, find_peers, install_hint
from .report import ProgressLine, add_ratios, fmt_mib, fmt_rate, plot, profile_lines, summary_table

BACKENDS = ("tcalloc", "system") + tuple(PEERS)
DEFAULT_DURATION = 1.5      # seconds per run: 8 workloads x 5 backends ~ 75 s on 2 cores
QUICK_DURATION = 0.25
SOAK_DURATION = 2.0         # seconds per run of a soak without --duration or --quick
MAX_SIZE_LIMIT = 1 << 30


def _workloads():
    from . import _workloads as wl
    return wl


def _size(text):
    # The same sizes the TCALLOC_* settings take (64, 4K, 4KiB, 1.5M: exact,
    # whole bytes), from 1 byte to 1 GiB.
    from tcalloc._config import parse_size
    try:
        v = parse_size(text, "size", MAX_SIZE_LIMIT)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))
    if v < 1:
        raise argparse.ArgumentTypeError("size must be at least 1 byte, not %r" % text)
    return v


def _list_of(choices):
    def parse(text):
        items = [x.strip() for x in text.split(",") if x.strip()]
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        if "all" in items:
            return list(choices)
        bad = [x for x in items if x not in choices]
        if bad:
            raise argparse.ArgumentTypeError("unknown: %s (choose from %s)"
                                             % (", ".join(bad), ", ".join(choices)))
        return list(dict.fromkeys(items))
    return parse


def _threads(text):
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("not a comma-separated list of integers: %r" % text)
    if not vals or any(not 1 <= v <= 256 for v in vals):
        raise argparse.ArgumentTypeError("thread counts must be between 1 and 256")
    return list(dict.fromkeys(vals))


def _positive(kind, most):
    def parse(text):
        try:
            v = kind(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError("not a number: %r" % text)
        if not 0 < v <= most:                   # also refuses nan
            raise argparse.ArgumentTypeError("must be > 0 and at most %g, not %r" % (most, text))
        return v
    return parse


def _seed(text):
    # The workloads' PRNG seed is 64 bits: a value outside would wrap onto
    # another seed's runs.
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not an integer: %r" % text)
    if not 0 <= v < 1 << 64:
        raise argparse.ArgumentTypeError("must be >= 0 and < 2**64, not %s" % text)
    return v


WORKLOAD_NAMES = ("larson", "xmalloc", "prodcons", "cache-thrash", "cache-scratch",
                  "churn", "mixed", "fork")


def build_parser(prog=None):
    p = argparse.ArgumentParser(
        prog=prog or "python -m tcalloc.stress",
        description="tcalloc stress lab: multi-threaded workloads with every block checked, "
                    "tcalloc side by side with the system malloc and the peers found "
                    "(gperftools, jemalloc, mimalloc via LD_PRELOAD), and a contention profile.",
        epilog="Exit status: 0 all runs clean, 1 a run failed (corrupt/lost block, failed "
               "fork child, error), 2 bad usage.")
    p.add_argument("--workloads", type=_list_of(WORKLOAD_NAMES), default=list(WORKLOAD_NAMES),
                   metavar="LIST", help="comma list of: %s, or all (default all)"
                   % ", ".join(WORKLOAD_NAMES))
    p.add_argument("--backends", type=_list_of(BACKENDS), default=None, metavar="LIST",
                   help="comma list of: %s (default: tcalloc, system and every peer found)"
                   % ", ".join(BACKENDS))
    p.add_argument("--threads", type=_threads, default=[2], metavar="N[,N...]",
                   help="worker thread counts (default 2); xmalloc and prodcons run "
                        "producer/consumer pairs, so they round an odd count up (shown as "
                        "'1 (ran 2)')")
    # One way to set the length of the runs: --quick with --duration or --ops
    # was silently ignored.
    g = p.add_mutually_exclusive_group()
    g.add_argument("--duration", type=_positive(float, 86400), default=None, metavar="SECONDS",
                   help="seconds per run (default %.1f, with --soak %.1f)"
                        % (DEFAULT_DURATION, SOAK_DURATION))
    g.add_argument("--ops", type=_positive(int, 10 ** 12), default=None, metavar="N",
                   help="operations per worker thread instead of a duration (fork's "
                        "workers then wait for its forks, holding their blocks; no time "
                        "limit: a run is hung only once it makes no progress for 60 s)")
    p.add_argument("--min-size", type=_size, default=None, metavar="BYTES",
                   help="smallest block (default: per workload, e.g. 8 for mixed)")
    p.add_argument("--max-size", type=_size, default=None, metavar="BYTES",
                   help="largest block (default: per workload, e.g. 4M for mixed)")
    p.add_argument("--seed", type=_seed, default=1, help="PRNG seed, 0 to 2**64-1 (default 1)")
    p.add_argument("--json", metavar="FILE", help="write all results as JSON")
    p.add_argument("--plot", metavar="FILE.png",
                   help="draw throughput against threads and RSS over time (needs matplotlib)")
    p.add_argument("--soak", type=_positive(float, 7 * 24 * 60), default=None, metavar="MINUTES",
                   help="long run on tcalloc (or --backends): report corrupt blocks and whether "
                        "RSS stays flat once warm")
    g.add_argument("--quick", action="store_true",
                   help="short runs (%.2f s each, with --soak too)" % QUICK_DURATION)
    p.add_argument("--isolate", action="store_true",
                   help="run tcalloc and system in child processes too (fresh heap per run)")
    p.add_argument("--list", action="store_true", help="list workloads and peers, then exit")
    return p


def _check_args(p, a, found, missing):
    if a.min_size is not None and a.max_size is not None and a.max_size < a.min_size:
        p.error("--max-size (%d) is smaller than --min-size (%d)" % (a.max_size, a.min_size))
    if (a.min_size is None) != (a.max_size is None):
        # One bound given: the other is each workload's own.
        defaults = _workloads().DEFAULTS
        for w in a.workloads:
            lo = defaults[w]["min_size"] if a.min_size is None else a.min_size
            hi = defaults[w]["max_size"] if a.max_size is None else a.max_size
            if hi < lo:
                p.error("%s would run sizes %d..%d (its own are %d..%d); give both "
                        "--min-size and --max-size" % (w, lo, hi, defaults[w]["min_size"],
                                                       defaults[w]["max_size"]))
    if a.backends is not None:
        absent = [b for b in a.backends if b in PEERS and b not in found]
        if absent:
            p.error("backend(s) not installed: %s (%s)" % (", ".join(absent), install_hint(absent)))
    for opt, path in (("--json", a.json), ("--plot", a.plot)):
        if path == "":
            p.error("%s: give a file name" % opt)
        if path:
            d = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(d):
                p.error("%s: directory %s does not exist" % (opt, d))
            if os.path.isdir(path) or not os.access(d, os.W_OK):
                p.error("%s: cannot write %s (a directory, or in one not writable)" % (opt, path))
    if a.plot:
        if not a.plot.lower().endswith(".png"):
            p.error("--plot writes a PNG file; give a name ending in .png")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            p.error("--plot needs matplotlib, which is not installed "
                    "(pip install matplotlib, or pip install tcalloc[plot])")
    if a.soak is not None and a.ops is not None:
        p.error("--soak runs for a time; use --duration for the length of each run, not --ops")


def _hung_record(progress, spec, e):
    """The failed run a hung one is reported as (its threads are still stuck)."""
    from .runner import finish
    progress.done("  HUNG: %s" % e)
    return finish(dict(workload=spec["workload"], backend=spec["backend"],
                       threads=spec["threads"], error="hung: %s" % e))


def _run_duration(a):
    """Seconds per run (None: runs of --ops), the one figure the runs, the
    soak's header and the JSON config all use."""
    if a.ops:
        return None
    if a.duration:
        return a.duration
    if a.quick:
        return QUICK_DURATION
    return SOAK_DURATION if a.soak is not None else DEFAULT_DURATION


def _specs(a, backends):
    dur = _run_duration(a)
    for w in a.workloads:
        for t in a.threads:
            for b in backends:
                yield dict(workload=w, backend=b, threads=t, duration=dur, ops=a.ops,
                           min_size=a.min_size, max_size=a.max_size, seed=a.seed)


def _label(spec):
    return "%-13s %-10s %2d thr" % (spec["workload"], spec["backend"], spec["threads"])


def _run_spec(spec, found, isolate, progress):
    """One run; its line is the caller's to print (_run_line), once the run
    is counted: a Ctrl-C after the line must not lose the run."""
    from .runner import run_child, run_in_process
    label = _label(spec)

    def on_progress(ops, elapsed):
        progress.update("  %s  %6.1f s  %s ops" % (label, elapsed, fmt_rate(ops)))

    progress.update("  %s  starting" % label)
    if spec["backend"] in PEERS:
        rec = run_child(spec, found[spec["backend"]], on_progress)
    elif isolate:
        rec = run_child(spec, None, on_progress)
    else:
        rec = run_in_process(spec, on_progress)
    return rec


def _run_line(progress, spec, rec):
    progress.done("  %s  %s ops/s  peak RSS %s  %s" % (
        _label(spec), fmt_rate(rec.get("throughput_ops_s")), fmt_mib(rec.get("rss_peak")),
        "ok" if rec["ok"] else "FAIL: " + "; ".join(rec["problems"])))


def _halves(values):
    """The peak of the first half of the passes (its warm level: the first
    pass alone is no level, as every pass runs other seeds) and of the
    second half (None while there is one pass; 0 and None with none, a soak
    interrupted in its first pass)."""
    w = (len(values) + 1) // 2
    return max(values[:w], default=0), (max(values[w:]) if values[w:] else None)


def _heap_verdict(heaps):
    """(warm peak, later peak, slack, flat) of tcalloc's heap, one value per
    pass: flat while the later peak stays within max(8 MiB, 10 %) of the
    warm one; None with one pass. A heap that leaks keeps growing into the
    second half; one that plateaus (a plateau that varies with the seed
    included) does not."""
    warm, later = _halves(heaps)
    slack = max(8 << 20, int(0.10 * warm))
    return warm, later, slack, (None if later is None else later <= warm + slack)


def _soak(a, backends, found, progress, out):
    """Cycle through the workloads until the time is up, and judge tcalloc by
    its own figures, not by the process's RSS (which the lab's own run
    records grow): after every run, the bytes tcalloc has in use must be back
    where they were (no block lost), and the heap tcalloc holds from the OS
    in the second half of the passes must stay within max(8 MiB, 10 %) of
    its peak in the first half (_heap_verdict). Process RSS is reported, not
    judged."""
    from .runner import RunHung
    minutes = a.soak
    per_run = _run_duration(a)
    end = time.monotonic() + minutes * 60.0
    specs = list(_specs(a, backends))
    runs, passes = [], 0
    heaps, rsss = [], []
    print("soak: %.1f min, %d runs per pass of %g s each, backends %s"
          % (minutes, len(specs), per_run, ", ".join(backends)), file=out)
    interrupted = hung = False
    pass_runs = []
    try:
        while time.monotonic() < end or passes == 0:
            for s in specs:
                try:
                    rec = _run_spec(dict(s, seed=(a.seed + passes) % (1 << 64)), found, a.isolate,
                                    progress)
                except RunHung as e:
                    # Its threads are stuck in this process: the soak ends
                    # here, and is reported like an interrupted one.
                    rec = _hung_record(progress, s, e)
                    print("soak: HUNG during pass %d: %s" % (passes, e), file=out)
                    hung = True
                rec["pass"] = passes
                pass_runs.append(rec)
                if hung:
                    break
                _run_line(progress, s, rec)
            if hung:
                break
            heap = max([r["tc_committed"] for r in pass_runs if "tc_committed" in r] or [0])
            rss = max(r.get("rss_peak") or 0 for r in pass_runs)
            # One assignment: a Ctrl-C lands before or after it, never
            # between the pass's figures.
            runs, heaps, rsss, done, pass_runs, passes = (
                runs + pass_runs, heaps + [heap], rsss + [rss], pass_runs, [], passes + 1)
            print("pass %3d  %5.1f min  ops %s  corrupt %d  lost %d  tcalloc blocks leaked %d B  "
                  "failed runs %d  tcalloc heap %s (warm %s)  process RSS peak %s"
                  % (passes - 1, minutes - max(0.0, end - time.monotonic()) / 60.0,
                     fmt_rate(sum(r.get("ops", 0) for r in done)),
                     sum(r.get("corrupt", 0) for r in done),
                     sum(r.get("lost", 0) for r in done),
                     sum(r.get("tc_in_use_delta", 0) for r in done),
                     sum(not r["ok"] for r in done), fmt_mib(heap), fmt_mib(_halves(heaps)[0]),
                     fmt_mib(rss)), file=out)
            out.flush()
    except KeyboardInterrupt:
        # Ctrl-C: the passes done are judged and reported; the runs of the
        # unfinished pass are reported, not judged.
        progress.done("  interrupted during pass %d: its runs are not judged" % passes)
        interrupted = True
    # The runs of a pass cut short (Ctrl-C, a hung run) are reported, not judged.
    runs += pass_runs
    judged = any("tc_committed" in r for r in runs)
    warm_heap, later_heap, slack, flat = _heap_verdict(heaps)
    leaked = sum(r.get("tc_in_use_delta", 0) for r in runs)
    warm_rss, later_rss = _halves(rsss)
    verdict = dict(minutes=minutes, passes=passes, runs=len(runs), interrupted=interrupted,
                   hung=hung,
                   corrupt=sum(r.get("corrupt", 0) for r in runs),
                   lost=sum(r.get("lost", 0) for r in runs),
                   failed_runs=sum(not r["ok"] for r in runs),
                   tcalloc_leaked_bytes=leaked, tcalloc_heap_warm_peak=warm_heap,
                   tcalloc_heap_later_peak=later_heap, heap_slack=slack, heap_flat=flat,
                   rss_warm_peak=warm_rss, rss_later_peak=later_rss)
    print("soak result: %d passes, corrupt %d, lost %d, failed runs %d; tcalloc blocks "
          "leaked %d B; tcalloc heap warm peak %s, later peak %s: %s; process RSS warm peak %s, "
          "later peak %s (not judged: it holds the lab's own records)"
          % (passes, verdict["corrupt"], verdict["lost"], verdict["failed_runs"], leaked,
             fmt_mib(warm_heap), fmt_mib(later_heap),
             "no tcalloc run to judge" if not judged else
             "too short to judge (one pass)" if flat is None else
             ("flat (within %s)" % fmt_mib(slack)) if flat else
             ("GREW by %s (allowed %s)" % (fmt_mib(later_heap - warm_heap), fmt_mib(slack))),
             fmt_mib(warm_rss), fmt_mib(later_rss)),
          file=out)
    return runs, verdict


def main(argv=None, out=None, prog=None):
    out = out or sys.stdout
    p = build_parser(prog)
    a = p.parse_args(argv)
    found, missing = find_peers()
    _check_args(p, a, found, missing)
    try:
        wl = _workloads()
    except ImportError as e:
        print("stress: cannot import tcalloc (%s). Build and install it first: "
              "pip install -e .  (from the repository root)" % e, file=sys.stderr)
        return 2
    if a.list:
        for name in WORKLOAD_NAMES:
            print("%-14s %s" % (name, wl.DESCRIPTIONS[name]), file=out)
        for name in PEERS:
            print("peer %-10s %s" % (name, found.get(name, "missing (%s)" % install_hint([name]))),
                  file=out)
        return 0
    if a.backends is None:
        backends = ["tcalloc", "system"] + [b for b in PEERS if b in found]
    else:
        backends = a.backends
    if a.soak is not None and a.backends is None:
        backends = ["tcalloc"]

    print("peers found: %s; missing: %s" % (
        ", ".join("%s (%s)" % (n, path) for n, path in found.items()) or "none",
        ", ".join(missing) + " (" + install_hint(missing) + ")" if missing else "none"), file=out)
    progress = ProgressLine()
    t0 = time.monotonic()
    soak = None
    hung = False
    interrupted = False
    if a.soak is not None:
        runs, soak = _soak(a, backends, found, progress, out)
        interrupted, hung = soak["interrupted"], soak["hung"]
    else:
        specs = list(_specs(a, backends))
        dur = specs[0]["duration"] if specs else None
        print("running %d runs (%s workloads x %s backends x threads %s), %s each"
              % (len(specs), len(a.workloads), len(backends), ",".join(map(str, a.threads)),
                 "%.2f s" % dur if dur else "%d ops per thread" % a.ops), file=out)
        out.flush()
        runs = []
        from .runner import RunHung
        for i, spec in enumerate(specs):
            progress.update("[%d/%d]" % (i + 1, len(specs)))
            try:
                runs.append(_run_spec(spec, found, a.isolate, progress))
                _run_line(progress, spec, runs[-1])
            except RunHung as e:
                # Its threads are stuck in this process: report and end the suite.
                runs.append(_hung_record(progress, spec, e))
                hung = True
                break
            except KeyboardInterrupt:
                # Ctrl-C: what finished is reported and written, as usual.
                progress.done("  interrupted: %d of %d runs done" % (len(runs), len(specs)))
                interrupted = True
                break
    add_ratios(runs)
    wall = time.monotonic() - t0
    failures = sum(not r["ok"] for r in runs)

    print("\nContention profile (tcalloc lock counters; psutil/getrusage process figures):",
          file=out)
    for r in runs:
        for line in profile_lines(r):
            print(line, file=out)
    print("\nSummary (%d runs in %.0f s; ops = blocks allocated, filled, checked and freed):"
          % (len(runs), wall), file=out)
    print(summary_table(runs), file=out)
    if failures:
        print("\n%d run(s) FAILED" % failures, file=out)
    if interrupted:
        print("\nINTERRUPTED: %s" % ("after %d passes" % soak["passes"] if soak is not None
                                     else "%d of %d runs done" % (len(runs), len(specs))),
              file=out)
    if a.json:
        doc = dict(version=JSON_VERSION, command=[sys.executable, "-m", "tcalloc.stress"] + list(
                       sys.argv[1:] if argv is None else argv),
                   machine=dict(cpus=os.cpu_count(), platform=platform.platform(),
                                python=platform.python_version()),
                   config=dict(workloads=a.workloads, backends=backends, threads=a.threads,
                               duration_s=_run_duration(a),
                               ops=a.ops, min_size=a.min_size, max_size=a.max_size,
                               seed=a.seed, isolate=a.isolate),
                   peers=dict(found=found, missing=missing),
                   runs=runs, failures=failures, interrupted=interrupted)
        if soak is not None:
            doc["soak"] = soak
        # Whole or not at all: a second Ctrl-C must not leave half a file.
        tmp = "%s.%d.tmp" % (a.json, os.getpid())
        try:
            with open(tmp, "w") as f:
                json.dump(doc, f, indent=1)
            os.replace(tmp, a.json)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        print("results written to %s" % a.json, file=out)
    if a.plot:
        plot(runs, a.plot)
        print("plot written to %s" % a.plot, file=out)
    if hung or interrupted:
        out.flush()
        sys.stderr.flush()
        if interrupted and not hung:
            # Die by SIGINT, as python does after an uncaught Ctrl-C: a shell
            # running the lab in a loop stops too (an exit status of 130
            # would mean the program handled it).
            import signal
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        # Stuck threads, or an interrupted run's, would block a normal
        # interpreter exit.
        os._exit(1 if hung else 130)
    if soak is not None and (soak["heap_flat"] is False or soak["corrupt"] or soak["lost"]
                             or soak["tcalloc_leaked_bytes"]):
        return 1
    return 1 if failures else 0
