"""RSS benchmark: does memory go back toward the live size by itself?

    python -m bench.rss                        # all three parts (~10 min on 2 cores)
    python -m bench.rss --parts burst,mixed    # a selection: numpy, mixed, burst
    python -m bench.rss --json out.json        # also every figure, as JSON

1. numpy: NumPy's own ``numpy._core`` test modules (MODULES) under pytest,
   once on NumPy's default handler and once with ``tcalloc.numpy.set_default()``
   (the plugin ``bench/np_tcalloc_plugin.py``); peak RSS of the pytest process.
   ``NPY_AVAILABLE_MEM`` is set to 1 GB for both, so NumPy's own
   ``requires_memory`` tests (several GiB each) are skipped in both modes.
2. mixed: the stress lab's mixed workload (``tcalloc.stress`` ``mixed``) at
   1 B..256 MiB, the same operations per thread and seed, on tcalloc and on
   glibc, each run in a child of its own, alternating round by round
   (``--mixed-repeat`` rounds, 7 by default), with two threads and with one.
   Besides the peak RSS, the child reads what the workload holds (the lab's
   live-bytes meter, ``Progress.live_bytes``) and RSS every 2 ms: the peak
   live bytes, and the overhead, the largest RSS above the live bytes at one
   moment. With two threads the workload's own peak moves with the threads'
   interleaving (each thread's sequence is fixed by the seed, their sum's
   peak is not); with one it is the same in every run.
3. burst: four threads allocate ~400 MiB of buffers (256 B..4 MiB, every page
   written), keep one in eight (~50 MiB) and free the rest; RSS right after,
   2 s later, and after ``release_free_memory()``, with the default release
   settings and with ``TCALLOC_RELEASE_RATE=0`` (release off).

Peak RSS is read from outside: a parent polls the child's RSS with psutil
every 10 ms and keeps the highest figure (``--interval``). Every figure is
from one run of this command; only the ratios within a run mean anything.
It is a benchmark, not a test: nothing here passes or fails.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1 << 20
MODULES = ("test_multiarray", "test_numeric", "test_umath", "test_ufunc", "test_dtype",
           "test_indexing", "test_shape_base", "test_function_base")
PARTS = ("numpy", "mixed", "burst")


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for k in [k for k in env if k.startswith("TCALLOC_")]:
        del env[k]
    env.update(extra)
    return env


def watch(cmd, env, interval=0.01, limit=6 << 30, cwd=None):
    """Run cmd, polling its RSS from outside; (returncode, peak RSS bytes,
    seconds, stdout). Kills the child past `limit` bytes (returncode None)."""
    t0 = time.monotonic()
    out = tempfile.TemporaryFile(mode="w+")
    p = subprocess.Popen(cmd, env=env, cwd=cwd or REPO, stdout=out, stderr=subprocess.STDOUT)
    proc = psutil.Process(p.pid)
    peak = 0
    killed = False
    while p.poll() is None:
        try:
            rss = proc.memory_info().rss
        except psutil.Error:
            break
        peak = max(peak, rss)
        if rss > limit:
            p.kill()
            killed = True
            break
        time.sleep(interval)
    rc = p.wait()
    out.seek(0)
    text = out.read()
    return (None if killed else rc), peak, time.monotonic() - t0, text


def _cmdline(cmd, env_keys):
    return " ".join(["%s=%s" % kv for kv in env_keys] + [c if " " not in c else repr(c) for c in cmd])


def part_numpy(args):
    import numpy
    mods = ["numpy._core.tests." + m for m in MODULES]
    base = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-x", "--pyargs"]
    rows = []
    for mode in ("default", "tcalloc"):
        cmd = list(base)
        extra = {"NPY_AVAILABLE_MEM": "1 GB"}
        stats_file = None
        if mode == "tcalloc":
            cmd[3:3] = ["-p", "bench.np_tcalloc_plugin"]
            stats_file = tempfile.NamedTemporaryFile(suffix=".json", delete=False).name
            extra["BENCH_RSS_STATS"] = stats_file
        cmd += mods
        rc, peak, secs, text = watch(cmd, _env(**extra), args.interval, cwd=tempfile.gettempdir())
        tail = text.strip().splitlines()[-1] if text.strip() else ""
        row = dict(mode=mode, rc=rc, peak_rss=peak, seconds=secs, summary=tail,
                   command=_cmdline(cmd, [("NPY_AVAILABLE_MEM", "'1 GB'")]))
        if stats_file:
            try:
                with open(stats_file) as f:
                    row["stats_at_end"] = json.load(f)
            except (OSError, ValueError):
                pass
            os.unlink(stats_file)
        rows.append(row)
        print("  numpy %-8s peak RSS %7.1f MiB  %5.0f s  rc=%s  %s"
              % (mode, peak / MIB, secs, rc, tail), flush=True)
    d, t = rows
    return dict(numpy=numpy.__version__, modules=list(MODULES), rows=rows,
                ratio=t["peak_rss"] / d["peak_rss"] if d["peak_rss"] else None)


MIXED = textwrap.dedent("""
    import json, os, sys, threading, time
    from tcalloc.stress import _workloads as wl
    alloc, threads, ops, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    PAGE = os.sysconf("SC_PAGE_SIZE")
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE
    prog = wl.Progress()
    box = {}
    def target():
        box["r"] = wl.run("mixed", alloc, threads=threads, ops=ops, min_size=1,
                          max_size=256 << 20, seed=seed, progress=prog)
    th = threading.Thread(target=target)
    peak = peak_live = over = 0
    th.start()
    while th.is_alive():
        r, live = rss(), prog.live_bytes
        peak, peak_live, over = max(peak, r), max(peak_live, live), max(over, r - live)
        time.sleep(0.002)
    th.join()
    res = box["r"]
    print("@@MIXED " + json.dumps(dict(peak=peak, peak_live=peak_live, overhead=over,
                                       ok=not res["corrupt"] and not res["failed"])))
""")


def part_mixed(args):
    """The lab's mixed workload (1 B..256 MiB, realloc chains) on tcalloc and
    on glibc, each run in a child of its own, the allocators alternating
    round by round (the order flips each round). With two threads the
    workload's own live peak depends on how the threads interleave (each
    thread's sequence is fixed by the seed, their sum's peak is not), so
    peak RSS is reported per allocator over the rounds (median, min..max)
    beside what the workload held at its peak, and the allocator's overhead
    (the largest RSS minus live bytes at one moment, polled in the child
    every 2 ms); with one thread the live sequence is the same for both and
    the peaks compare directly."""
    out = {}
    for threads in (args.mixed_threads, 1):
        by = {"tcalloc": [], "glibc": []}
        for i in range(args.mixed_repeat):
            order = ("tcalloc", "glibc") if i % 2 == 0 else ("glibc", "tcalloc")
            for name in order:
                alloc = "tcalloc" if name == "tcalloc" else "system"
                cmd = [sys.executable, "-c", MIXED, alloc, str(threads), str(args.mixed_ops), "1"]
                rc, peak, secs, text = watch(cmd, _env(), args.interval)
                line = [ln for ln in text.splitlines() if ln.startswith("@@MIXED ")]
                if rc != 0 or not line:
                    raise RuntimeError("mixed child failed (rc=%s):\n%s" % (rc, text))
                r = json.loads(line[-1][8:])
                r.update(outside_peak=peak, seconds=secs)
                by[name].append(r)
            t, g = by["tcalloc"][-1], by["glibc"][-1]
            print("  mixed  %d thread%s, round %d: peak RSS tcalloc %7.1f  glibc %7.1f MiB  "
                  "(live peak %6.1f / %6.1f; overhead %5.1f / %5.1f)%s"
                  % (threads, "s" if threads > 1 else "", i + 1, t["outside_peak"] / MIB,
                     g["outside_peak"] / MIB, t["peak_live"] / MIB, g["peak_live"] / MIB,
                     t["overhead"] / MIB, g["overhead"] / MIB,
                     "" if t["ok"] and g["ok"] else "  (a run failed its checks)"), flush=True)

        def med(name, key):
            v = sorted(r[key] for r in by[name])
            return v[len(v) // 2], v[0], v[-1]
        summary = {name: {k: med(name, k) for k in ("outside_peak", "peak_live", "overhead")}
                   for name in by}
        # Rounds whose two runs reached the same live peak (within 1 MiB):
        # there the peaks compare as directly as with one thread.
        same = sorted(t["outside_peak"] / g["outside_peak"]
                      for t, g in zip(by["tcalloc"], by["glibc"])
                      if abs(t["peak_live"] - g["peak_live"]) < MIB)
        out["threads_%d" % threads] = dict(
            runs=by, summary=summary,
            ratio=summary["tcalloc"]["outside_peak"][0] / summary["glibc"]["outside_peak"][0],
            overhead_ratio=summary["tcalloc"]["overhead"][0] / summary["glibc"]["overhead"][0],
            same_live_ratios=same)
    out["command"] = "python -m bench.rss --parts mixed --mixed-repeat %d --mixed-ops %d" % (
        args.mixed_repeat, args.mixed_ops)
    return out


BURST = textwrap.dedent("""
    import json, random, sys, threading, time
    import psutil, tcalloc
    MIB = 1 << 20
    proc = psutil.Process()

    def worker(seed, keep, total):
        rng = random.Random(seed)
        bufs, n = [], 0
        while n < total:
            size = int(2 ** rng.uniform(8, 22))         # 256 B .. 4 MiB, log-uniform
            b = tcalloc.alloc(size)
            memoryview(b)[::4096] = b"x" * len(range(0, size, 4096))   # every page resident
            bufs.append(b)
            n += size
        keep.extend(bufs[::8])                          # the live set: one in eight

    keep = []
    ths = [threading.Thread(target=worker, args=(i, keep, 100 * MIB)) for i in range(4)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()                                        # the other seven eighths are freed
    r = dict(live=sum(len(b) for b in keep), rss_after=proc.memory_info().rss)
    s = tcalloc.stats()
    r.update({k: s[k] for k in ("bytes_in_use", "page_heap_free_bytes", "central_free_bytes",
                                "transfer_cache_free_bytes", "thread_cache_free_bytes",
                                "span_overhead_bytes")})
    time.sleep(2.0)
    r["rss_2s"] = proc.memory_info().rss
    r["page_heap_free_2s"] = tcalloc.stats()["page_heap_free_bytes"]
    tcalloc.release_free_memory()
    r["rss_released"] = proc.memory_info().rss
    r["release_rate"] = tcalloc.get_release_rate()
    print("@@RSS " + json.dumps(r))
""")


def part_burst(args):
    rows = []
    for label, extra in (("default", {}), ("rate 0 (off)", {"TCALLOC_RELEASE_RATE": "0"})):
        cmd = [sys.executable, "-c", BURST]
        rc, peak, secs, text = watch(cmd, _env(**extra), args.interval)
        line = [ln for ln in text.splitlines() if ln.startswith("@@RSS ")]
        if rc != 0 or not line:
            raise RuntimeError("burst child failed (rc=%s):\n%s" % (rc, text))
        r = json.loads(line[-1][6:])
        r.update(label=label, peak_rss=peak, env=extra)
        rows.append(r)
        print("  burst  %-13s live %5.1f MiB  peak %6.1f  after %6.1f  2 s later %6.1f  "
              "after release_free_memory() %6.1f MiB" % (
                  label, r["live"] / MIB, peak / MIB, r["rss_after"] / MIB, r["rss_2s"] / MIB,
                  r["rss_released"] / MIB), flush=True)
    return dict(command="python -m bench.rss --parts burst  (the child script: bench/rss.py BURST)",
                rows=rows)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.rss", description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default=",".join(PARTS),
                    help="comma list of: %s (default all)" % ", ".join(PARTS))
    ap.add_argument("--interval", type=float, default=0.01, help="RSS poll interval, s")
    ap.add_argument("--mixed-ops", type=int, default=150, help="mixed: operations per thread")
    ap.add_argument("--mixed-threads", type=int, default=2, help="mixed: worker threads")
    ap.add_argument("--mixed-repeat", type=int, default=7, help="mixed: rounds per thread count")
    ap.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    a = ap.parse_args(argv)
    parts = [p.strip() for p in a.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        ap.error("unknown part(s): %s (choose from %s)" % (", ".join(bad), ", ".join(PARTS)))
    res = {}
    for p in parts:
        print("%s:" % p, flush=True)
        res[p] = globals()["part_" + p](a)
    print()
    if "numpy" in res:
        r = res["numpy"]
        print("numpy %s, %d _core test modules: peak RSS tcalloc / default handler = %.2f"
              % (r["numpy"], len(r["modules"]), r["ratio"] or 0))
        for row in r["rows"]:
            print("  %s" % row["command"])
    if "mixed" in res:
        r = res["mixed"]
        for key in sorted(k for k in r if k.startswith("threads_")):
            x = r[key]
            t, g = x["summary"]["tcalloc"], x["summary"]["glibc"]
            print("mixed 1 B..256 MiB, %s thread(s), %d rounds: peak RSS tcalloc %.1f MiB "
                  "(%.1f..%.1f), glibc %.1f MiB (%.1f..%.1f): median ratio %.2f; overhead "
                  "(RSS - live) %.1f vs %.1f MiB: %.2f"
                  % (key.split("_")[1], len(x["runs"]["tcalloc"]),
                     t["outside_peak"][0] / MIB, t["outside_peak"][1] / MIB,
                     t["outside_peak"][2] / MIB, g["outside_peak"][0] / MIB,
                     g["outside_peak"][1] / MIB, g["outside_peak"][2] / MIB, x["ratio"],
                     t["overhead"][0] / MIB, g["overhead"][0] / MIB, x["overhead_ratio"]))
            same = x["same_live_ratios"]
            if same and key != "threads_1":
                print("  rounds with the same live peak in both runs: %d, peak RSS ratio median "
                      "%.2f (%.2f..%.2f)" % (len(same), same[len(same) // 2], same[0], same[-1]))
        print("  " + r["command"])
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
