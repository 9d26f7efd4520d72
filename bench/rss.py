"""RSS benchmark: does memory go back toward the live size by itself?

    python -m bench.rss                        # all three parts (~10 min on 2 cores)
    python -m bench.rss --parts burst,mixed    # a selection: numpy, mixed, burst
    python -m bench.rss --json out.json        # also every figure, as JSON

1. numpy: NumPy's own ``numpy._core`` test modules (MODULES) under pytest,
   once on NumPy's default handler and once with ``tcalloc.numpy.set_default()``
   (the plugin ``bench/np_tcalloc_plugin.py``); peak RSS of the pytest process.
   ``NPY_AVAILABLE_MEM`` is set to 1 GB for both, so NumPy's own
   ``requires_memory`` tests (several GiB each) are skipped in both modes.
2. mixed: the stress lab's mixed workload at 1 B..256 MiB on tcalloc and on
   glibc, each in a child (``python -m tcalloc stress --isolate``), the same
   operation count per thread and seed; peak RSS from the lab's own record
   (psutil, every 50 ms, in the child); three lab runs, the median ratio.
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


def part_mixed(args):
    """The lab's mixed workload, tcalloc and glibc in one lab run, repeated:
    peak RSS moves with the threads' interleaving, so each run's ratio is
    kept and the median is the figure."""
    runs = []
    cmd = [sys.executable, "-m", "tcalloc", "stress", "--workloads", "mixed", "--min-size", "1",
           "--max-size", "256M", "--backends", "tcalloc,system", "--isolate",
           "--threads", str(args.mixed_threads), "--ops", str(args.mixed_ops), "--seed", "1"]
    for i in range(args.mixed_repeat):
        res = tempfile.NamedTemporaryFile(suffix=".json", delete=False).name
        rc, peak, secs, text = watch(cmd + ["--json", res], _env(), args.interval)
        with open(res) as f:
            data = json.load(f)
        os.unlink(res)
        by = {r["backend"]: r for r in data["runs"]}
        t, g = by["tcalloc"], by["system"]
        r = dict(tcalloc_peak_rss=t["rss_peak"], glibc_peak_rss=g["rss_peak"],
                 ok=bool(t["ok"] and g["ok"]), rc=rc)
        r["ratio"] = r["tcalloc_peak_rss"] / r["glibc_peak_rss"]
        runs.append(r)
        print("  mixed  run %d: tcalloc %7.1f MiB  glibc %7.1f MiB  ratio %.2f%s"
              % (i + 1, r["tcalloc_peak_rss"] / MIB, r["glibc_peak_rss"] / MIB, r["ratio"],
                 "" if r["ok"] else "  (a run failed: %s)" % rc), flush=True)
    ratios = sorted(r["ratio"] for r in runs)
    return dict(command=_cmdline(cmd, []), runs=runs, ratio=ratios[len(ratios) // 2])


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
    ap.add_argument("--mixed-repeat", type=int, default=3, help="mixed: lab runs (median ratio)")
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
        print("mixed 1 B..256 MiB: peak RSS tcalloc / glibc = %.2f (median of %d runs)\n  %s"
              % (r["ratio"], len(r["runs"]), r["command"]))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
