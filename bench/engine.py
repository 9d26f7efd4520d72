"""Engine benchmark: tcalloc against glibc, gperftools tcmalloc, jemalloc and
mimalloc, with the same native loops (bench/_bench.pyx) for every backend.

    python -m bench.engine                  # full run, about a minute
    python -m bench.engine --quick          # smoke run, a few seconds
    python -m bench.engine --callgrind      # instructions per malloc+free, per size

Each (backend, row) runs in a fresh child process: tcalloc through its
capsule, the peers as libc malloc under LD_PRELOAD (jemalloc cannot be
dlopen'd, and preloading is how users deploy all three). Peak RSS of a child
is its own VmHWM (bench.own_peak_kib), reported above an import-only child
of the same backend. See bench/README.md for how to read the output.
"""
import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from bench import own_peak_kib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARK = "@@BENCH "           # prefix of the child's one result line on stdout

BACKENDS = ("tcalloc", "glibc", "gperftools", "jemalloc", "mimalloc")

ROWS = ("pairs", "batch", "xthread", "thrash", "large")
PAIR_SIZES = (16, 64, 4096, 32768)
# Operations per timed run, (full, --quick). Sized so the slowest backend
# (glibc on most rows, jemalloc on "large") still keeps a full run near a
# minute on 2 cores; every backend runs the same count.
ITERS = {
    "pairs": (5_000_000, 300_000),      # malloc+free pairs per size
    "batch": (2_000, 150),              # batches of 1000 malloc+free
    "xthread": (2_000_000, 150_000),    # blocks through the ring
    "thrash": (2_000_000, 150_000),     # blocks per thread
    "large": (200, 20),                 # 8 MiB rounds
}
BATCH = 1000
LARGE = 8 << 20

# Lines of the table: key, row that produces it, label, unit.
LINES = [(f"pair{s}", "pairs", f"malloc+free {s} B", "ns/pair") for s in PAIR_SIZES] + [
    ("batch", "batch", "1000 x 8..1024 B, random free", "ns/pair"),
    ("xthread", "xthread", "64 B: T1 mallocs, T2 frees", "ns/block"),
    ("thrash", "thrash", "16 B, 2 threads write their own", "ns/block"),
    ("large8m", "large", "8 MiB malloc+touch+free", "ns/op"),
]
ROW_LABELS = {"pairs": "malloc+free pairs", "batch": "random batches",
              "xthread": "cross-thread ring", "thrash": "false sharing",
              "large": "8 MiB touched"}
CALLGRIND_N = ((200_000, 1_200_000), (50_000, 300_000))   # (N1, N2) pairs, --quick
# Rows counted under callgrind: the pair sizes and the random batch (whose
# iterations are rounds of BATCH pairs).
CALLGRIND_ROWS = [f"pair{s}" for s in PAIR_SIZES] + ["batch"]


# ============================================================================
# child side
# ============================================================================

def _load_bench():
    """The native loops (bench/_bench.pyx, built by devbuild.py). Importing
    them does not import tcalloc, so children of the peer backends never
    load tcalloc's engine."""
    from bench import _bench
    return _bench


def _rss():
    try:
        import psutil
        return psutil.Process().memory_info().rss
    except ImportError:          # same figure, straight from the kernel
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _mapped(path):
    """True if the shared object is mapped in this process (LD_PRELOAD took)."""
    real = os.path.realpath(path)
    with open("/proc/self/maps") as f:
        return any(real in line for line in f)


def _engine_build():
    """Identity of the loaded engine binary: a rebuild in the middle of a run
    would otherwise mix two engines in one table."""
    import tcalloc._engine as e
    st = os.stat(e.__file__)
    return f"{os.path.basename(e.__file__)} {st.st_size} B mtime {st.st_mtime_ns}"


def _timed(fn, ops, repeat):
    fn()                                         # warm-up, discarded
    return {"ops": ops, "ns_per_op": [fn() / ops for _ in range(repeat)]}


def _stats_subset(stats):
    return {k: v for k, v in stats.items() if isinstance(v, int)}


def child_main(a):
    out = {}
    expect = os.environ.get("BENCH_EXPECT_PRELOAD")
    if expect:
        out["preload_ok"] = _mapped(expect)
    full = 1 if a.quick else 0
    what = a.child

    if what == "import_rss":
        # RSS added by `import tcalloc`, then by its first malloc (lazy init).
        r0 = _rss()
        import tcalloc
        r1 = _rss()
        b = _load_bench()
        b.use("tcalloc")
        r2 = _rss()
        b.pairs(64, 1)
        r3 = _rss()
        out.update(before=r0, after_import=r1, after_load_bench=r2, after_first_malloc=r3,
                   engine_build=_engine_build())
    else:
        b = _load_bench()
        b.use(a.alloc)
        if a.alloc == "tcalloc":
            out["engine_build"] = _engine_build()
        if what == "baseline":
            pass
        elif what == "pairs":
            n = a.iters or ITERS["pairs"][full]
            # Sizes interleaved run by run: a burst of background load then
            # costs every size one sample instead of one size its median.
            for size in PAIR_SIZES:
                b.pairs(size, n)                 # warm-up, discarded
            samples = {size: [] for size in PAIR_SIZES}
            for _ in range(a.repeat):
                for size in PAIR_SIZES:
                    samples[size].append(b.pairs(size, n) / n)
            for size in PAIR_SIZES:
                out[f"pair{size}"] = {"ops": n, "ns_per_op": samples[size]}
        elif what == "batch":
            rounds = a.iters or ITERS["batch"][full]
            out["batch"] = _timed(lambda: b.batch(rounds, BATCH), rounds * BATCH, a.repeat)
        elif what == "xthread":
            n = a.iters or ITERS["xthread"][full]
            out["xthread"] = _timed(lambda: b.xthread(n, 64), n, a.repeat)
        elif what == "thrash":
            n = a.iters or ITERS["thrash"][full]
            out["thrash"] = _timed(lambda: b.thrash(n, 16, 2), n, a.repeat)
        elif what == "large":
            n = a.iters or ITERS["large"][full]
            out["large8m"] = _timed(lambda: b.large(n, LARGE), n, a.repeat)
        elif what.startswith("callgrind:"):      # counted by valgrind, not timed
            row = what.split(":", 1)[1]
            if row == "batch":
                b.batch(a.iters, BATCH)
            else:
                b.pairs(int(row[len("pair"):]), a.iters)
        elif what == "metadata":
            # Live 64 B objects via the capsule; metadata and heap read at peak.
            import tcalloc
            mib = a.iters or (64 if a.quick else 256)
            n = (mib << 20) // 64
            s0 = tcalloc.stats()
            r0 = _rss()
            head = b.chain_alloc(n, 64)
            s1 = tcalloc.stats()
            r1 = _rss()
            b.chain_free(head)
            s2 = tcalloc.stats()
            out.update(objects=n, object_size=64, idle=_stats_subset(s0),
                       peak=_stats_subset(s1), after_free=_stats_subset(s2),
                       rss_idle=r0, rss_peak=r1)
        else:
            raise SystemExit(f"unknown child job {what!r}")
    out["vm_hwm_kib"] = own_peak_kib()
    sys.stdout.write(MARK + json.dumps(out) + "\n")
    sys.stdout.flush()


# ============================================================================
# parent side
# ============================================================================

def log(msg, end="\n"):
    sys.stderr.write(msg + end)
    sys.stderr.flush()


def find_libs(backends):
    """({peer: path} found, {peer: why} missing) for the peers in backends.
    The peer table is the lab's (tcalloc.stress.peers), imported here, on the
    parent side only: a child must not import tcalloc unless it measures it."""
    from tcalloc.stress.peers import PEERS, find_peers, why_missing
    found, missing = find_peers([p for p in PEERS if p in backends])
    return found, {p: why_missing(p) for p in missing}


def pkg_version(pkg):
    try:
        r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", pkg],
                           capture_output=True, text=True)
        return r.stdout.strip() or None
    except OSError:
        return None


def git_describe(path=REPO):
    """git describe of the checkout holding `path`, or None."""
    try:
        r = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=path,
                           capture_output=True, text=True)
        return r.stdout.strip() or None
    except OSError:
        return None


def backend_env(backend, libs):
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    env.pop("BENCH_EXPECT_PRELOAD", None)
    env["PYTHONHASHSEED"] = "0"       # same start-up work in every child
    if backend in libs:
        env["LD_PRELOAD"] = libs[backend]
        env["BENCH_EXPECT_PRELOAD"] = libs[backend]
    return env


def alloc_of(backend):
    return "tcalloc" if backend == "tcalloc" else "system"


def write_json(path, data):
    """--json FILE: every sample, as JSON (nothing without a path)."""
    if path:
        with open(path, "w") as f:
            json.dump(data, f, indent=1, default=str)
        log(f"wrote {path}")


def wait_child(argv, env, cwd, timeout):
    """Run a child to completion: (exit code, wall s, ru_maxrss KiB, stdout,
    stderr, timed out). wait4 rather than Popen.wait: the child's own rusage.
    Its ru_maxrss is at least this process's RSS at the fork (Linux keeps the
    parent's high-water mark across exec): run_child takes the child's own
    VmHWM from its result instead, and this figure only when there is none."""
    with tempfile.TemporaryFile("w+") as fout, tempfile.TemporaryFile("w+") as ferr:
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, env=env, cwd=cwd, stdout=fout, stderr=ferr)
        deadline = time.monotonic() + timeout
        timed_out = False
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                p.kill()
                pid, status, ru = os.wait4(p.pid, 0)
                timed_out = True
                break
            time.sleep(0.002)
        wall = time.perf_counter() - t0
        fout.seek(0)
        ferr.seek(0)
        return (os.waitstatus_to_exitcode(status), wall, ru.ru_maxrss, fout.read(), ferr.read(),
                timed_out)


def run_child(argv, env, timeout=900):
    """Run a child; returns (result dict or None, error text, peak RSS KiB:
    the child's own VmHWM, or its ru_maxrss if it gave no result)."""
    code, _, maxrss, out, err, timed_out = wait_child(argv, env, REPO, timeout)
    if timed_out:
        return None, f"timed out after {timeout} s", maxrss
    result = None
    for line in out.splitlines():
        if line.startswith(MARK):
            result = json.loads(line[len(MARK):])
    if code != 0 or result is None:
        tail = [l for l in err.strip().splitlines() if l.strip()][-1:]
        return None, f"exit {code}: " + (" | ".join(tail) or "no output"), maxrss
    if result.get("preload_ok") is False:
        return None, "LD_PRELOAD did not take effect", maxrss
    return result, None, result.pop("vm_hwm_kib", maxrss)


def child_argv(job, backend, a, iters=None):
    argv = [sys.executable, "-m", "bench.engine", "--child", job,
            "--alloc", alloc_of(backend), "--repeat", str(a.repeat)]
    if a.quick:
        argv.append("--quick")
    if iters:
        argv += ["--iters", str(iters)]
    return argv


def pick(samples, stat):
    return min(samples) if stat == "best" else statistics.median(samples)


def fmt_ns(v):
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 1000 else f"{v:.1f}"


def fmt_ratio(v):
    return "-" if v is None else f"{v:.2f}"


def table(header, rows, first_width=32):
    """Plain text table: first column left-aligned, the others right-aligned."""
    widths = [max(first_width, *(len(str(r[0])) for r in rows), len(header[0]))]
    for i in range(1, len(header)):
        widths.append(max(len(str(header[i])), *(len(str(r[i])) for r in rows)) if rows
                      else len(header[i]))
    def line(cells):
        return "  ".join([str(cells[0]).ljust(widths[0])] +
                         [str(c).rjust(w) for c, w in zip(cells[1:], widths[1:])])
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] +
                     [line(r) for r in rows])


def machine_info():
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        libc = None
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = None
    return {"cpu": cpu, "cpus": os.cpu_count(), "kernel": platform.release(),
            "loadavg_at_start": load,
            "python": platform.python_version(), "libc": libc,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def probe_backends(a, libs, missing):
    """Baseline children: check each backend starts, record its import-only
    peak RSS (median of 3)."""
    baseline = {}
    for be in list(a.backends):
        if be in missing:
            continue
        peaks = []
        for _ in range(3):
            res, err, peak = run_child(child_argv("baseline", be, a), backend_env(be, libs))
            if err:
                missing[be] = err
                break
            peaks.append(peak)
        if be not in missing:
            baseline[be] = statistics.median(peaks)
    return baseline


def measure(a):
    info = machine_info()
    libs, missing = find_libs(a.backends)
    log("peers found:   " + (", ".join(f"{k}={v}" for k, v in libs.items()) or "none"))

    baseline = probe_backends(a, libs, missing)
    log("peers missing: " + (", ".join(f"{k} ({v})" for k, v in missing.items()
                                       if k not in ("tcalloc", "glibc")) or "none"))
    if "tcalloc" in missing:
        log(f"tcalloc NOT measured: {missing['tcalloc']}")
    live = [b for b in a.backends if b not in missing]
    if not live:
        raise SystemExit("no backend could run: " + "; ".join(f"{k}: {v}" for k, v in missing.items()))

    results = {b: {} for b in live}
    peak_rss = {b: {} for b in live}
    errors = {}
    builds = set()
    t_start = time.monotonic()
    # Row-major: every backend runs a row close in time to the others, so
    # background load drifts across backends rather than against one.
    for row in a.rows:
        for be in live:
            log(f"  {row:8s} {be:11s}", end="")
            t0 = time.monotonic()
            res, err, peak = run_child(child_argv(row, be, a), backend_env(be, libs))
            log(f" {time.monotonic() - t0:5.1f} s" + (f"  ERROR {err}" if err else ""))
            if err:
                errors[(be, row)] = err
                continue
            res.pop("preload_ok", None)
            if "engine_build" in res:
                builds.add(res.pop("engine_build"))
            results[be].update(res)
            peak_rss[be][row] = peak - baseline[be]
    log(f"rows took {time.monotonic() - t_start:.0f} s")

    memory = {}
    if "tcalloc" in live:
        res, err, _ = run_child(child_argv("import_rss", "tcalloc", a),
                                backend_env("tcalloc", libs))
        memory["import_rss"] = res if res else {"error": err}
        res, err, _ = run_child(child_argv("metadata", "tcalloc", a),
                                backend_env("tcalloc", libs))
        memory["metadata"] = res if res else {"error": err}
        for r in memory.values():
            if "engine_build" in r:
                builds.add(r.pop("engine_build"))

    from tcalloc.stress.peers import PEERS
    versions = {peer: pkg_version(PEERS[peer][0]) for peer in libs}
    return {"meta": dict(info, stat=a.stat, repeat=a.repeat, quick=a.quick,
                         git=git_describe(), engine_builds=sorted(builds),
                         loadavg_at_end=" ".join(f"{x:.2f}" for x in os.getloadavg()),
                         iters={r: ITERS[r][1 if a.quick else 0] for r in a.rows},
                         peer_versions=versions),
            "backends": {b: {"measured": b in live, "lib": libs.get(b),
                             "reason": missing.get(b)} for b in a.backends},
            "results": results,
            "baseline_peak_rss_kib": baseline,
            "peak_rss_kib_above_baseline": peak_rss,
            "errors": {f"{b}/{r}": e for (b, r), e in errors.items()},
            "memory": memory}


def report(data, a):
    live = [b for b in a.backends if data["backends"][b]["measured"]]
    peers = [b for b in live if b != "tcalloc"]
    has_tc = "tcalloc" in live
    stat = a.stat
    res = data["results"]
    m = data["meta"]
    out = []
    out.append(f"tcalloc engine benchmark  {m['date']}  {m['cpu']}, {m['cpus']} CPUs, "
               f"Linux {m['kernel']}, Python {m['python']}, {m['libc']}")
    out.append("backends: " + ", ".join(
        b + (f" ({data['backends'][b]['lib']}"
             + (f", {m['peer_versions'].get(b)}" if m['peer_versions'].get(b) else "") + ")"
             if data['backends'][b]['lib'] else "")
        for b in live))
    out.append(f"load average at start {m.get('loadavg_at_start')}, at end "
               f"{m.get('loadavg_at_end')} (other work on the machine inflates and "
               "scatters the times)")
    if has_tc:
        out.append(f"tcalloc: git {m.get('git')}")
    if len(m.get("engine_builds", [])) > 1:
        out.append("WARNING: tcalloc's engine was rebuilt during this run; its rows mix "
                   "builds: " + "; ".join(m["engine_builds"]) + ". Rerun.")
    for b in a.backends:
        if b not in live:
            out.append(f"NOT MEASURED: {b}: {data['backends'][b]['reason']}")
    word = "median" if stat == "median" else "best"
    out.append(f"\nTime per operation, {word} of {a.repeat} runs (after 1 warm-up run), "
               "lower is better; each row in a fresh child process")

    vals = {}
    rows = []
    for key, row, label, unit in LINES:
        if row not in a.rows:
            continue
        cells = [label, unit]
        for b in live:
            r = res[b].get(key)
            v = pick(r["ns_per_op"], stat) if r else None
            vals[(b, key)] = v
            cells.append(fmt_ns(v))
        rows.append(cells)
        if key == "xthread":
            rows.append(["  same, as throughput", "M blocks/s"] +
                        ["-" if vals[(b, key)] is None else f"{1e3 / vals[(b, key)]:.1f}"
                         for b in live])
    out.append(table(["row", "unit"] + live, rows))

    ratios = {}
    if has_tc and peers:
        out.append("\nRatio tcalloc / peer (time; < 1 means tcalloc is faster)")
        rows = []
        for key, row, label, unit in LINES:
            if row not in a.rows:
                continue
            cells = [label]
            for p in peers:
                t, v = vals.get(("tcalloc", key)), vals.get((p, key))
                r = t / v if t is not None and v else None
                ratios.setdefault(p, {})[key] = r
                cells.append(fmt_ratio(r))
            rows.append(cells)
        out.append(table(["row"] + peers, rows))
    elif not has_tc:
        out.append("\n(no ratios: tcalloc was not measured in this run)")

    rss = data["peak_rss_kib_above_baseline"]
    out.append("\nPeak RSS of the row's child above an import-only child of the same backend, MiB"
               + ("; last columns: tcalloc minus peer (> 0 means tcalloc used more)"
                  if has_tc and peers else ""))
    rows = []
    for row in a.rows:
        cells = [ROW_LABELS[row]]
        for b in live:
            v = rss[b].get(row)
            cells.append("-" if v is None else f"{v / 1024:.2f}")
        if has_tc:
            for p in peers:
                t, v = rss["tcalloc"].get(row), rss[p].get(row)
                cells.append("-" if t is None or v is None else f"{(t - v) / 1024:+.2f}")
        rows.append(cells)
    base = data["baseline_peak_rss_kib"]
    rows.append(["(import-only child, absolute)"] + [f"{base[b] / 1024:.1f}" for b in live] +
                (["" for _ in peers] if has_tc else []))
    out.append(table(["row"] + live + ([f"tc-{p}" for p in peers] if has_tc else []), rows))

    # The same peaks, absolute: what the process really held. A preloaded
    # peer also serves the interpreter's own allocations, so its baseline
    # already holds a warm heap that the row reuses; the absolute figure is
    # the one a user of the process sees.
    out.append("\nPeak RSS of the row's child, absolute, MiB; last columns: tcalloc minus peer")
    rows = []
    for row in a.rows:
        cells = [ROW_LABELS[row]]
        absval = {}
        for b in live:
            v = rss[b].get(row)
            absval[b] = None if v is None else v + base[b]
            cells.append("-" if v is None else f"{(v + base[b]) / 1024:.1f}")
        if has_tc:
            for p in peers:
                t, v = absval.get("tcalloc"), absval.get(p)
                cells.append("-" if t is None or v is None else f"{(t - v) / 1024:+.1f}")
        rows.append(cells)
    out.append(table(["row"] + live + ([f"tc-{p}" for p in peers] if has_tc else []), rows))

    mem = data["memory"]
    if "import_rss" in mem:
        r = mem["import_rss"]
        if "error" in r:
            out.append(f"\nimport tcalloc RSS: ERROR {r['error']}")
        else:
            mib = 1 << 20
            out.append(f"\nRSS added by `import tcalloc` (fresh child, psutil): "
                       f"{(r['after_import'] - r['before']) / mib:.2f} MiB; "
                       f"+{(r['after_first_malloc'] - r['after_load_bench']) / mib:.2f} MiB "
                       f"more at the first malloc through the capsule")
    if "metadata" in mem:
        r = mem["metadata"]
        if "error" in r:
            out.append(f"tcalloc metadata: ERROR {r['error']}")
        else:
            obj = r["objects"] * r["object_size"]
            pk, idle = r["peak"], r["idle"]
            md = pk.get("metadata_bytes")
            if md is None:
                out.append("tcalloc metadata: stats() has no 'metadata_bytes'")
            else:
                gib = 1 << 30
                dmd = md - idle.get("metadata_bytes", 0)
                out.append(
                    f"tcalloc metadata with {obj >> 20} MiB of 64 B objects live: "
                    f"{md / 1024:,.0f} KiB in total ({md / obj * 100:.3f} % of the objects, "
                    f"{md * gib / obj / (1 << 20):.2f} MiB per GiB), "
                    f"{dmd / 1024:,.0f} KiB above the idle heap "
                    f"({dmd * gib / obj / (1 << 20):.2f} MiB per GiB)")
                if "heap_bytes" in pk:
                    out.append(f"  heap_bytes {pk['heap_bytes'] / (1 << 20):.1f} MiB "
                               f"({pk['heap_bytes'] / obj:.3f} x the objects), RSS "
                               f"{(r['rss_peak'] - r['rss_idle']) / (1 << 20):.1f} MiB above idle; "
                               f"after freeing: heap_bytes "
                               f"{r['after_free'].get('heap_bytes', 0) / (1 << 20):.1f} MiB, "
                               f"metadata {r['after_free'].get('metadata_bytes', 0) / 1024:,.0f} KiB")
    if data["errors"]:
        out.append("\nErrors:")
        for k, e in data["errors"].items():
            out.append(f"  {k}: {e}")
    data["ratios_tcalloc_over_peer"] = ratios
    return "\n".join(out)


def rounds_summary(rounds):
    """The per-round ratios tcalloc / peer (time) of --rounds, as median
    (min..max) per row and peer: the table to quote from a shared machine."""
    acc = {}
    for data in rounds:
        for peer, rows in data.get("ratios_tcalloc_over_peer", {}).items():
            for row, x in rows.items():
                if x is not None:
                    acc.setdefault(peer, {}).setdefault(row, []).append(x)
    if not acc:
        return "(no ratios: tcalloc or every peer missing)"
    order = ("pair16", "pair64", "pair4096", "pair32768", "batch", "xthread", "thrash", "large")
    rows = sorted({r for by in acc.values() for r in by},
                  key=lambda r: (order.index(r) if r in order else len(order), r))
    out = [f"Ratio tcalloc / peer (time), per round over {len(rounds)} rounds: "
           "median (min..max); < 1 means tcalloc is faster"]
    cells = []
    for peer, by in acc.items():
        line = [peer]
        for r in rows:
            xs = sorted(by.get(r, []))
            line.append("-" if not xs else
                        f"{statistics.median(xs):.2f} ({xs[0]:.2f}..{xs[-1]:.2f})")
        cells.append(line)
    out.append(table(["peer"] + rows, cells))
    return "\n".join(out)


# ---- callgrind --------------------------------------------------------------

_ANNOT = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*)$")


def _functions(outfile):
    """Self instruction counts per function from callgrind_annotate."""
    tool = shutil.which("callgrind_annotate")
    if not tool:
        return {}
    text = subprocess.run([tool, "--threshold=100", "--auto=no", outfile],
                          capture_output=True, text=True).stdout
    funcs = {}
    started = False
    for line in text.splitlines():
        if "file:function" in line:
            started = True
            continue
        m = _ANNOT.match(line) if started else None
        if m:
            name = m.group(2)
            # "path/file.c:func [lib]" -> "func": code inlined from a header
            # is listed under the header's file (and without the library),
            # so entries are merged by function name.
            lib = re.search(r"\[(.*)\]\s*$", name)
            fn = name[:lib.start()].strip() if lib else name
            fn = fn.rsplit(":", 1)[-1]
            funcs[fn] = funcs.get(fn, 0) + int(m.group(1).replace(",", ""))
    return funcs


def _total_ir(outfile):
    with open(outfile) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"no instruction total in {outfile}")


def _callgrind_row(a, vg, tmp, be, libs, row, n1, n2):
    """Instructions per pair for one backend and row, or an error string."""
    totals, funcs, builds = [], [], set()
    per_iter = BATCH if row == "batch" else 1
    for n in (n1, n2):
        iters = max(1, n // per_iter)
        f = os.path.join(tmp, f"{be}.{row}.{n}.out")
        argv = [vg, "--tool=callgrind", f"--callgrind-out-file={f}",
                sys.executable, "-m", "bench.engine", "--child", f"callgrind:{row}",
                "--alloc", alloc_of(be), "--iters", str(iters)]
        log(f"  {be:11s} {row:9s} N={n:<10,}", end="")
        t0 = time.monotonic()
        res, err, _ = run_child(argv, backend_env(be, libs))
        log(f" {time.monotonic() - t0:5.1f} s" + (f"  ERROR {err}" if err else ""))
        if err:
            return err
        totals.append(_total_ir(f))
        funcs.append(_functions(f))
        if res.get("engine_build"):
            builds.add(res["engine_build"])
    if len(builds) > 1:
        return "engine rebuilt between the N1 and N2 runs; rerun"
    pairs = (max(1, n2 // per_iter) - max(1, n1 // per_iter)) * per_iter
    diff = {k: (funcs[1].get(k, 0) - funcs[0].get(k, 0)) / pairs
            for k in set(funcs[0]) | set(funcs[1])}
    top = sorted(((v, k) for k, v in diff.items() if v >= 0.5), reverse=True)[:6]
    return {"ir_per_pair": (totals[1] - totals[0]) / pairs,
            "ir_total": dict(zip(("N1", "N2"), totals)),
            "functions_ir_per_pair": {k: v for v, k in top}}


def callgrind(a):
    vg = shutil.which("valgrind")
    if not vg:
        raise SystemExit("--callgrind needs valgrind on PATH")
    libs, missing = find_libs(a.backends)
    n1, n2 = CALLGRIND_N[1 if a.quick else 0]
    rows = a.cg_rows
    log(f"callgrind: rows {', '.join(rows)}, N1={n1:,} and N2={n2:,} pairs; "
        f"instructions per pair = (I(N2) - I(N1)) / (N2 - N1)")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            for be in a.backends:
                if be in missing:
                    continue
                r = _callgrind_row(a, vg, tmp, be, libs, row, n1, n2)
                if isinstance(r, str):
                    missing[be] = r
                else:
                    results.setdefault(be, {})[row] = r
    live = [b for b in a.backends if b in results]
    labels = {f"pair{s}": f"{s} B pair" for s in PAIR_SIZES}
    labels["batch"] = "batch"
    out = ["\nInstructions per malloc+free pair (callgrind, whole process, "
           f"(I(N2)-I(N1))/(N2-N1), N1={n1:,}, N2={n2:,} pairs). Each includes the "
           "benchmark loop's own instructions (the __pyx_..._bench_... entry below), the same "
           "for every backend. 'batch' is 1000 random 8..1024 B blocks freed in random order."]
    head = ["backend"] + [labels[r] for r in rows]
    body = [[b] + [f"{results[b][r]['ir_per_pair']:.1f}" if r in results[b] else "-"
                   for r in rows] for b in live]
    out.append(table(head, body, first_width=12))
    if "tcalloc" in results:
        out.append("tcalloc / peer (below 1.00: tcalloc runs fewer instructions):")
        ratio = [[b] + [f"{results['tcalloc'][r]['ir_per_pair'] / results[b][r]['ir_per_pair']:.2f}"
                        if r in results[b] and r in results["tcalloc"] else "-" for r in rows]
                 for b in live if b != "tcalloc"]
        out.append(table(head, ratio, first_width=12))
    for b in live:
        for r in rows:
            if r in results[b]:
                fs = results[b][r]["functions_ir_per_pair"]
                out.append(f"  {b} {r}: " + (", ".join(f"{k} {v:.1f}" for k, v in fs.items())
                                             or "-"))
    for b, why in missing.items():
        out.append(f"NOT MEASURED: {b}: {why}")
    return {"callgrind": {"N1": n1, "N2": n2, "results": results, "missing": missing,
                          "git": git_describe()}}, "\n".join(out)


# ---- command line -----------------------------------------------------------

def _names(kind, allowed):
    def parse(text):
        names = [s.strip() for s in text.split(",") if s.strip()]
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {kind} {', '.join(bad) or '(empty)'}; choose from {', '.join(allowed)}")
        return [n for n in allowed if n in names]     # canonical order
    return parse


def _positive(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}")
    if v < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return v


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m bench.engine",
        description="Compare tcalloc's engine with glibc, gperftools tcmalloc, jemalloc "
                    "and mimalloc: same native loops, one child process per backend and row.")
    p.add_argument("--rows", type=_names("row", ROWS), default=list(ROWS),
                   help=f"comma-separated rows to run (default: all of {','.join(ROWS)})")
    p.add_argument("--backends", type=_names("backend", BACKENDS), default=list(BACKENDS),
                   help=f"comma-separated backends (default: all of {','.join(BACKENDS)})")
    p.add_argument("--repeat", type=_positive, default=None,
                   help="timed runs per row, after one warm-up run (default 5, --quick 3)")
    p.add_argument("--rounds", type=_positive, default=1,
                   help="run the whole measurement this many times and add a table of the "
                        "per-round ratios (median, min..max): children of every backend "
                        "alternate round by round, so a slow spell of the shared machine "
                        "lands on each backend in turn (default 1)")
    p.add_argument("--stat", choices=("median", "best"), default="median",
                   help="statistic over the timed runs shown in the table (default median)")
    p.add_argument("--quick", action="store_true",
                   help="fewer iterations and runs: a smoke test, not a measurement")
    p.add_argument("--json", metavar="FILE", help="also write every sample to FILE as JSON")
    p.add_argument("--callgrind", action="store_true",
                   help="instead: count instructions per malloc+free pair under "
                        "valgrind --tool=callgrind for each backend and row")
    p.add_argument("--cg-rows", type=_names("callgrind row", CALLGRIND_ROWS),
                   default=list(CALLGRIND_ROWS),
                   help=f"with --callgrind: rows to count (default: all of "
                        f"{','.join(CALLGRIND_ROWS)})")
    # Internal: the parent re-invokes this module for each measurement.
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--alloc", choices=("system", "tcalloc"), default="system",
                   help=argparse.SUPPRESS)
    p.add_argument("--iters", type=_positive, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.repeat is None:
        a.repeat = 3 if a.quick else 5
    if a.json and not os.path.isdir(os.path.dirname(os.path.abspath(a.json))):
        p.error(f"--json: directory of {a.json} does not exist")
    return a


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    if a.child:
        child_main(a)
        return 0
    sys.path.insert(0, REPO)
    import devbuild
    devbuild.build("bench")
    t0 = time.monotonic()
    if a.callgrind:
        data, text = callgrind(a)
        data["meta"] = machine_info()
    else:
        rounds = []
        for i in range(a.rounds):
            data = measure(a)
            text = report(data, a)
            rounds.append(data)
            if a.rounds > 1:
                log(f"round {i + 1}/{a.rounds} done")
        if a.rounds > 1:
            text += "\n\n" + rounds_summary(rounds)
            data = {"rounds": rounds}
    print(text)
    log(f"total {time.monotonic() - t0:.0f} s")
    write_json(a.json, data)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
