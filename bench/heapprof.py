"""Heap profiler benchmark: how close the estimates are, and what sampling costs.

    python -m bench.heapprof                        # every part (~35 min on 2 shared cores)
    python -m bench.heapprof --parts accuracy --seeds 1,2,3,4,5
    python -m bench.heapprof --parts callgrind,wall --rounds 5
    python -m bench.heapprof --quick                # smoke run; not a measurement

1. accuracy: a synthetic program whose sites are known, at the default rate
   (2 MiB). Each site runs in a child of its own (one at a time, about 1 GiB
   live at most), once per seed (tcalloc.set_sample_rate(rate, seed=...)),
   freeing everything between seeds; the estimate is the sum of the live
   samples' bytes whose innermost Python frame is the site's function.
   Reported per site: the true bytes (requested), the estimate per seed, the
   error's median and extremes over the seeds, and the error the statistics
   predict (one standard deviation, sqrt((1 - p) / (N p)) for N blocks of
   size s, p = 1 - exp(-s / rate)).
2. callgrind: whole-process instruction counts of the same programs under
   ``python -m tcalloc run`` with sampling off and at TCALLOC_SAMPLE_RATE=2M
   (the tuple/dict workload of bench/interpreter.py, its n=0 run subtracted;
   pyflakes over a few stdlib files). Off is deterministic; on varies a
   little with the random samples.
3. wall: wall-clock time of the tuple/dict workload and of pyflakes over the
   standard library, modes interleaved round by round: plain python,
   ``-X tracemalloc``, memray (``python -m memray run``, and with
   ``--trace-python-allocators``, which sees every Python object), and ``python -m
   tcalloc run`` with sampling off, at 2 MiB, and with tracemalloc started by
   the program (measured when install() still refused to start under a
   tracing tracemalloc; since then ``-X tracemalloc`` with ``tcalloc run``
   works too and traces the same blocks). Each
   profiler's ratio is against its own baseline in the same round: sampling
   against tcalloc with sampling off; tracemalloc and memray against plain
   python (memray intercepts malloc and mmap, so under tcalloc's hook it
   would see tcalloc's spans, not the program's objects).

memray is a benchmark-only dependency (pip install memray); without it the
wall part says so and runs the other modes. pyflakes too (pip install
pyflakes). See bench/README.md, "Heap profiles".

This file is also the child of the wall and callgrind parts (``python
bench/heapprof.py --workload ...``), which imports only the standard library,
pyflakes and ``bench/__init__.py`` (one function, no imports), so every mode
runs the same code.
"""
import json
import os
import sys

from bench import own_peak_kib      # a child has the repository on PYTHONPATH (_env)

MARK = "@@HEAPPROF "
THIS = os.path.abspath(__file__)
REPO = os.path.dirname(os.path.dirname(THIS))
RATE = 2 << 20          # tcalloc.heapprof.DEFAULT_SAMPLE_RATE, repeated to keep the child light


# ============================================================================
# child side of the wall and callgrind parts: stdlib (and pyflakes) only
# ============================================================================

def _tuples_dicts(n, rounds):
    """bench/interpreter.py's callgrind workload, `rounds` times."""
    for _ in range(rounds):
        t = [(i, i) for i in range(n)]
        del t
        d = [{i: i} for i in range(n)]
        del d


def _probe():
    """What the process ran on: tcalloc's hook, its rate and samples taken,
    tracemalloc, and its own peak RSS; the parent voids a run that was not
    on its mode."""
    rec = {"tcalloc": None, "tracemalloc": False, "vm_hwm_kib": own_peak_kib()}
    tc = sys.modules.get("tcalloc")
    if tc is not None:
        info = tc._engine._sampler_info()
        rec["tcalloc"] = {"installed": bool(tc.installed()), "rate": info["rate"],
                          "samples": info["taken"]}
    import tracemalloc      # -X tracemalloc starts tracing without importing the module
    rec["tracemalloc"] = tracemalloc.is_tracing()
    sys.stderr.write(MARK + json.dumps(rec) + "\n")


def workload_main(argv):
    """--workload tuples N ROUNDS | --workload pyflakes FILE... ; with
    --tracemalloc first, tracemalloc is started before the work."""
    if argv and argv[0] == "--tracemalloc":
        import tracemalloc
        tracemalloc.start()
        argv = argv[1:]
    kind, args = argv[0], argv[1:]
    try:
        if kind == "tuples":
            _tuples_dicts(int(args[0]), int(args[1]))
        elif kind == "pyflakes":
            import runpy
            sys.argv = ["pyflakes", *args]
            try:
                runpy.run_module("pyflakes", run_name="__main__", alter_sys=True)
            except SystemExit as e:
                if e.code not in (0, 1, None):      # 1: pyflakes found something to say
                    raise
        else:
            raise SystemExit("unknown workload %r" % kind)
    finally:
        _probe()


# ============================================================================
# child side of the accuracy part (imports tcalloc)
# ============================================================================

# name: (blocks, requested bytes per block, threads, how it allocates)
SITES = {
    "interp":    (2_500_000, None, 1, "bytes(400) under the interpreter hook (python -m tcalloc run)"),
    "buffers":   (250_000, 4096, 1, "tcalloc.alloc(4096)"),
    "numpy":     (4096, 256 << 10, 1, "np.empty(32768) (256 KiB) in tcalloc.numpy.use()"),
    "threads":   (1_000_000, 1024, 4, "tcalloc.alloc(1024), 4 Python threads at one site"),
    "c_caller":  (2_000_000, 512, 1, "malloc(512) from C through the capsule, GIL released"),
    "c_threads": (4_000_000, 256, 4, "malloc(256) from C through the capsule, 4 threads, no GIL"),
    "large":     (64, 8 << 20, 1, "tcalloc.alloc(8 MiB)"),
}
QUICK_DIV = 16          # --quick: blocks / 16 (large: / 8)


# The site functions: each allocates and keeps `n` blocks; the accuracy
# child attributes a sample to a site by its innermost Python frame's function.

def site_interp(keep):
    for i in range(len(keep)):
        keep[i] = bytes(400)


def site_buffers(n, size):
    import tcalloc
    return [tcalloc.alloc(size) for _ in range(n)]


def site_numpy(n, size):
    import numpy as np
    import tcalloc.numpy
    with tcalloc.numpy.use():
        return [np.empty(size // 8) for _ in range(n)]


def site_threads(n, size, out):
    import tcalloc
    out.extend(tcalloc.alloc(size) for _ in range(n))


def site_c(n, size, out):
    from bench import _bench
    out.append(_bench.chain_alloc(n, size))


def _site_bytes(prof, func):
    names = {func, func + ".<locals>.<listcomp>", func + ".<locals>.<genexpr>"}
    site = [s for s in prof.samples if s.python_stack and s.python_stack[0].file == THIS
            and s.python_stack[0].function in names]
    return sum(s.bytes for s in site), site


def accuracy_child(name, seeds, quick):
    import threading
    import time
    import tcalloc
    from tcalloc.heapprof import DEFAULT_SAMPLE_RATE
    n, size, nthreads, _ = SITES[name]
    if quick:
        n = max(8, n // (8 if name == "large" else QUICK_DIV))
    if name == "interp":
        if not tcalloc.installed():
            raise SystemExit("the interp site must run under python -m tcalloc run")
        size = sys.getsizeof(bytes(400))      # what PyObject_Malloc is asked for
    if name.startswith("c_"):
        from bench import _bench
        _bench.use("tcalloc")
    out = []
    for seed in seeds:
        tcalloc.set_sample_rate(DEFAULT_SAMPLE_RATE, seed=seed)
        t0 = time.perf_counter()
        if name == "interp":
            keep = [None] * n
            site_interp(keep)
            func = "site_interp"
        elif name in ("buffers", "large"):
            keep = site_buffers(n, size)
            func = "site_buffers"
        elif name == "numpy":
            keep = site_numpy(n, size)
            func = "site_numpy"
        else:
            keep = []
            target = site_threads if name == "threads" else site_c
            func = target.__name__
            ts = [threading.Thread(target=target, args=(n // nthreads, size, keep))
                  for _ in range(nthreads)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
        took = time.perf_counter() - t0
        prof = tcalloc.heap_profile()
        est, site = _site_bytes(prof, func)
        rec = {"site": name, "seed": seed, "blocks": n, "size": size, "true_bytes": n * size,
               "estimate": est, "samples": len(site), "seconds": took,
               "stack": [str(f) for f in site[0].stack[:6]] if site else [],
               "maxrss_kib": own_peak_kib()}
        if name.startswith("c_"):
            from bench import _bench
            for head in keep:
                _bench.chain_free(head)
        del keep, prof, site
        tcalloc.set_sample_rate(0)
        out.append(rec)
        sys.stdout.write(MARK + json.dumps(rec) + "\n")
        sys.stdout.flush()
    return out


# ============================================================================
# parent side
# ============================================================================

def log(msg="", end="\n"):
    sys.stderr.write(msg + end)
    sys.stderr.flush()


def _env(extra=None):
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("TCALLOC_") or k in ("PYTHONMALLOC", "LD_PRELOAD", "PYTHONTRACEMALLOC"):
            env.pop(k)
    env["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in env.get("PYTHONPATH", "").split(
        os.pathsep) if p])
    env["PYTHONHASHSEED"] = "0"
    env.update(extra or {})
    return env


def _predicted_sd(n, size, rate=RATE):
    """One standard deviation of the estimate, relative: sqrt((1-p)/(N p))."""
    import math
    p = -math.expm1(-size / rate)
    return math.sqrt((1 - p) / (n * p))


def part_accuracy(a):
    from bench.engine import wait_child
    res = {}
    for name in a.sites:
        argv = [sys.executable, "-m", "bench.heapprof", "--accuracy-child", name,
                "--seeds", ",".join(map(str, a.seeds))] + (["--quick"] if a.quick else [])
        if name == "interp":
            argv[1:3] = ["-m", "tcalloc", "run", "-m", "bench.heapprof"]
        code, wall, rss, so, se, to = wait_child(argv, _env(), REPO, a.timeout)
        recs = [json.loads(l[len(MARK):]) for l in so.splitlines() if l.startswith(MARK)]
        entry = {"desc": SITES[name][3], "runs": recs, "wall_s": wall,
                 "maxrss_kib": max([r["maxrss_kib"] for r in recs] or [0])}
        if code != 0 or len(recs) != len(a.seeds):
            tail = [l for l in se.strip().splitlines() if l.strip()][-3:]
            entry["error"] = "exit %d%s: %s" % (code, " (timed out)" if to else "", " | ".join(tail))
        res[name] = entry
        errs = ["%+.1f%%" % (100 * (r["estimate"] / r["true_bytes"] - 1)) for r in recs]
        log("  %-10s %s  (peak RSS %.0f MiB)%s" % (name, " ".join(errs), entry["maxrss_kib"] / 1024,
                                                   "  " + entry.get("error", "")))
    return res


CG_FILES = 20            # pyflakes files under callgrind


def _cg_total(path):
    with open(path) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError("%s: no totals line" % path)


def _probe_of(se):
    recs = [json.loads(l[len(MARK):]) for l in se.splitlines() if l.startswith(MARK)]
    return recs[-1] if recs else None


def part_callgrind(a, tmp):
    import shutil
    from bench.engine import wait_child
    from bench.interpreter import stdlib_files
    if not shutil.which("valgrind"):
        log("  valgrind not found: apt-get install valgrind")
        return {"error": "valgrind not found"}
    n = 20_000 if a.quick else 100_000
    files = stdlib_files(True)[1][:8 if a.quick else CG_FILES]
    jobs = [("tuples", ["tuples", str(n), "1"]), ("tuples0", ["tuples", "0", "1"]),
            ("pyflakes", ["pyflakes", *files])]
    modes = {"off": {}, "2MiB": {"TCALLOC_SAMPLE_RATE": "2M"}}
    out = {"n": n, "pyflakes_files": len(files), "runs": []}
    for r in range(a.cg_repeat):
        for job, args in jobs:
            for mode, extra in modes.items():
                f = os.path.join(tmp, "cg-%s-%s-%d.out" % (job, mode, r))
                argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + f,
                        sys.executable, "-m", "tcalloc", "run", THIS, "--workload", *args]
                code, wall, _, so, se, to = wait_child(argv, _env(extra), tmp, a.timeout)
                probe = _probe_of(se)
                rec = {"job": job, "mode": mode, "round": r}
                if code != 0 or probe is None or not (probe["tcalloc"] or {}).get("installed"):
                    rec["error"] = "exit %d: %s" % (code, se.strip().splitlines()[-1:] or "")
                else:
                    rec["instructions"] = _cg_total(f)
                    rec["samples"] = probe["tcalloc"]["samples"]
                    rec["rate"] = probe["tcalloc"]["rate"]
                    os.unlink(f)
                out["runs"].append(rec)
                log("  %s %s: %s" % (job, mode, rec.get("instructions", rec.get("error"))))
    return out


WALL_MODES = ("plain", "tracemalloc", "memray", "memray+pyalloc", "tcalloc", "tcalloc+sampling",
              "tcalloc+tracemalloc")
# each mode's baseline for its ratio
BASE = {"tracemalloc": "plain", "memray": "plain", "memray+pyalloc": "plain", "tcalloc": "plain",
        "tcalloc+sampling": "tcalloc", "tcalloc+tracemalloc": "tcalloc"}


def _wall_argv(mode, args, tmp, seq):
    py = sys.executable
    work = [THIS, "--workload"]
    if mode == "plain":
        return [py, *work, *args], {}
    if mode == "tracemalloc":
        return [py, "-X", "tracemalloc", *work, *args], {}
    if mode.startswith("memray"):
        # memray's default sees malloc calls (pymalloc's arenas, not each
        # object); --trace-python-allocators sees every Python allocation.
        out = os.path.join(tmp, "memray-%d.bin" % seq)
        extra = ["--trace-python-allocators"] if mode == "memray+pyalloc" else []
        return [py, "-m", "memray", "run", "-q", "-f", *extra, "-o", out, *work, *args], {}
    run = [py, "-m", "tcalloc", "run", *work]
    if mode == "tcalloc":
        return [*run, *args], {}
    if mode == "tcalloc+sampling":
        return [*run, *args], {"TCALLOC_SAMPLE_RATE": "2M"}
    return [*run, "--tracemalloc", *args], {}


def _check_mode(mode, probe):
    if probe is None:
        return "no probe line"
    tc = probe["tcalloc"]
    on_tc = bool(tc and tc["installed"])
    if on_tc != mode.startswith("tcalloc"):
        return "tcalloc installed: %s" % on_tc
    if on_tc and (tc["rate"] != 0) != (mode == "tcalloc+sampling"):
        return "sample rate %d" % tc["rate"]
    if probe["tracemalloc"] != mode.endswith("tracemalloc"):
        return "tracemalloc tracing: %s" % probe["tracemalloc"]
    return None


def part_wall(a, tmp):
    import importlib.util
    from bench.engine import wait_child
    from bench.interpreter import stdlib_files
    have_memray = importlib.util.find_spec("memray") is not None
    have_pyflakes = importlib.util.find_spec("pyflakes") is not None
    modes = [m for m in a.modes if not m.startswith("memray") or have_memray]
    if not have_memray:
        log("  memray is not installed (pip install memray): its mode is skipped")
    std, files = stdlib_files(True)
    files = files[:a.pyflakes_files]
    jobs = {"tuples": ["tuples", "200000" if a.quick else "1000000", "2" if a.quick else "5"]}
    if have_pyflakes:
        jobs["pyflakes"] = ["pyflakes", *files]
    else:
        log("  pyflakes is not installed (pip install pyflakes): its workload is skipped")
    out = {"memray": have_memray, "pyflakes_files": len(files), "jobs": {},
           "tuples": jobs["tuples"][1:]}
    seq = 0
    for job, args in jobs.items():
        samples = []
        log("  %s" % job, end="")
        for r in range(a.rounds):
            k = r % len(modes)
            for mode in modes[k:] + modes[:k]:
                seq += 1
                argv, extra = _wall_argv(mode, args, tmp, seq)
                code, wall, rss, so, se, to = wait_child(argv, _env(extra), tmp, a.timeout)
                probe = _probe_of(se)
                s = {"mode": mode, "round": r, "wall_s": wall,
                     "maxrss_kib": probe["vm_hwm_kib"] if probe else rss}
                bad = _check_mode(mode, probe) if code == 0 else "exit %d: %s" % (
                    code, " | ".join(se.strip().splitlines()[-2:]))
                if bad:
                    s["error"] = bad
                    log("\n    %s round %d: VOID %s" % (mode, r, bad), end="")
                elif probe["tcalloc"]:
                    s["samples"] = probe["tcalloc"]["samples"]
                samples.append(s)
                if mode.startswith("memray"):
                    try:
                        os.unlink(os.path.join(tmp, "memray-%d.bin" % seq))
                    except OSError:
                        pass
            log(".", end="")
        log()
        out["jobs"][job] = samples
    return out


# ---- report -----------------------------------------------------------------------

def _median(xs):
    import statistics
    return statistics.median(xs) if xs else float("nan")


def _human(n):
    for unit, k in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= k:
            return "%.2f %s" % (n / k, unit)
    return "%d B" % n


def report(data):
    out = []
    acc = data.get("accuracy")
    if acc:
        seeds = data["seeds"]
        out.append("accuracy at the default rate (2 MiB), seeds %s; error = estimate / true - 1"
                   % ",".join(map(str, seeds)))
        out.append("| site | blocks x size | true | samples | estimate (median) | error median "
                   "| error min..max | predicted sd |")
        out.append("|---|---|---|---|---|---|---|---|")
        for name, e in acc.items():
            if "error" in e and not e["runs"]:
                out.append("| %s | %s | | | | | | |" % (name, e["error"]))
                continue
            runs = e["runs"]
            r0 = runs[0]
            errs = [r["estimate"] / r["true_bytes"] - 1 for r in runs]
            out.append("| %s: %s | %s x %d B | %s | %.0f | %s | %+.1f%% | %+.1f..%+.1f%% | %.1f%% |" % (
                name, e["desc"], "{:,}".format(r0["blocks"]), r0["size"], _human(r0["true_bytes"]),
                _median([r["samples"] for r in runs]), _human(_median([r["estimate"] for r in runs])),
                100 * _median(errs), 100 * min(errs), 100 * max(errs),
                100 * _predicted_sd(r0["blocks"], r0["size"])))
        worst = max((abs(r["estimate"] / r["true_bytes"] - 1), n) for n, e in acc.items()
                    for r in e["runs"])
        out.append("largest error over every site and seed: %.1f%% (%s)" % (100 * worst[0], worst[1]))
        out.append("")
        for name, e in acc.items():
            if e["runs"] and e["runs"][0]["stack"]:
                out.append("%s, a sample's stack (innermost first): %s" % (
                    name, " <- ".join(e["runs"][0]["stack"][:4])))
        out.append("")
    cg = data.get("callgrind")
    if cg and "runs" in cg:
        out.append("callgrind, whole process under python -m tcalloc run, sampling at 2 MiB "
                   "against off (median of %d, min..max)" % data["cg_repeat"])

        def ins(job, mode):
            return [r["instructions"] for r in cg["runs"] if r["job"] == job and
                    r["mode"] == mode and "instructions" in r]

        def samp(job, mode):
            return [r["samples"] for r in cg["runs"] if r["job"] == job and
                    r["mode"] == mode and "samples" in r]
        base0, on0 = ins("tuples0", "off"), ins("tuples0", "2MiB")
        for job, label in (("tuples", "%s tuples + %s dicts, start-up (n=0) subtracted"
                            % ("{:,}".format(cg["n"]), "{:,}".format(cg["n"]))),
                           ("pyflakes", "pyflakes, %d stdlib files, whole process"
                            % cg["pyflakes_files"])):
            off, on = ins(job, "off"), ins(job, "2MiB")
            if not off or not on:
                continue
            # whole-process instructions per sample taken (start-up's included)
            per = [(x - _median(off)) / k for x, k in zip(on, samp(job, "2MiB")) if k]
            if job == "tuples":
                off = [x - _median(base0) for x in off]
                on = [x - _median(on0) for x in on]
            rs = [x / _median(off) for x in on]
            out.append("  %s: off %s, on %s instructions: ratio %.4f (%.4f..%.4f); samples "
                       "taken %s, %s instructions each" % (
                           label, "{:,.0f}".format(_median(off)), "{:,.0f}".format(_median(on)),
                           _median(rs), min(rs), max(rs), "/".join(map(str, samp(job, "2MiB"))),
                           "{:,.0f}".format(_median(per)) if per else "?"))
        out.append("")
    wall = data.get("wall")
    if wall and "jobs" in wall:
        out.append("wall clock, %d rounds, modes interleaved; ratio to the baseline in the same "
                   "round: median (min..max)" % data["rounds"])
        for job, samples in wall["jobs"].items():
            label = ("tuples/dicts (%s each, %s times)" % tuple(wall["tuples"]) if job == "tuples"
                     else "pyflakes, %d stdlib files" % wall["pyflakes_files"])
            ok = [s for s in samples if "error" not in s]
            rows = []
            for mode, base in BASE.items():
                rs = []
                for r in range(data["rounds"]):
                    x = [s["wall_s"] for s in ok if s["mode"] == mode and s["round"] == r]
                    b = [s["wall_s"] for s in ok if s["mode"] == base and s["round"] == r]
                    if x and b:
                        rs.append(x[0] / b[0])
                if rs:
                    rows.append("%s/%s %.3f (%.3f..%.3f)" % (mode, base, _median(rs), min(rs),
                                                           max(rs)))
            base_t = _median([s["wall_s"] for s in ok if s["mode"] == "plain"])
            smp = [s["samples"] for s in ok if s["mode"] == "tcalloc+sampling"]
            out.append("  %s (plain %.2f s; samples per sampled run %s):" % (
                label, base_t, "/".join(map(str, smp))))
            for row in rows:
                out.append("    " + row)
            void = len(samples) - len(ok)
            if void:
                out.append("    (%d void runs)" % void)
    return "\n".join(out)


def parse_args(argv):
    import argparse
    p = argparse.ArgumentParser(prog="python -m bench.heapprof", description=__doc__.split("\n")[0])
    p.add_argument("--parts", default="accuracy,callgrind,wall",
                   help="comma-separated: accuracy, callgrind, wall")
    p.add_argument("--sites", default=",".join(SITES), help="accuracy sites: " + ",".join(SITES))
    p.add_argument("--seeds", default="1,2,3,4,5", help="accuracy seeds (default 1,2,3,4,5)")
    p.add_argument("--rounds", type=int, default=5, help="wall-clock rounds (default 5)")
    p.add_argument("--cg-repeat", type=int, default=2, help="callgrind runs per mode (default 2)")
    p.add_argument("--modes", default=",".join(WALL_MODES),
                   help="wall-clock modes (default all): " + ",".join(WALL_MODES))
    p.add_argument("--pyflakes-files", type=int, default=120,
                   help="stdlib files pyflakes checks in the wall part (default 120)")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    p.add_argument("--json", metavar="FILE", help="also write every sample as JSON")
    p.add_argument("--accuracy-child", metavar="SITE", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.parts = [x for x in a.parts.split(",") if x]
    a.sites = [x for x in a.sites.split(",") if x]
    a.seeds = [int(x) for x in a.seeds.split(",") if x]
    for part in a.parts:
        if part not in ("accuracy", "callgrind", "wall"):
            p.error("unknown part %r" % part)
    a.modes = [x for x in a.modes.split(",") if x]
    for m in a.modes:
        if m not in WALL_MODES:
            p.error("unknown mode %r" % m)
    for s in a.sites:
        if s not in SITES:
            p.error("unknown site %r" % s)
    if a.quick:
        a.rounds = min(a.rounds, 2)
        a.cg_repeat = 1
    return a


def main(argv=None):
    import platform
    import subprocess
    import tempfile
    import time
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    if a.accuracy_child:
        accuracy_child(a.accuracy_child, a.seeds, a.quick)
        return 0
    sys.path.insert(0, REPO)
    import devbuild
    devbuild.build("bench")
    rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    log("heapprof bench: Python %s, %d CPUs, load %s, git %s" % (
        platform.python_version(), os.cpu_count(), "%.2f %.2f %.2f" % os.getloadavg(), rev))
    data = {"seeds": a.seeds, "rounds": a.rounds, "cg_repeat": a.cg_repeat, "quick": a.quick,
            "python": platform.python_version(), "git": rev, "load_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        for part, fn in (("accuracy", part_accuracy), ("callgrind", part_callgrind),
                         ("wall", part_wall)):
            if part in a.parts:
                t0 = time.monotonic()
                log("%s:" % part)
                data[part] = fn(a) if part == "accuracy" else fn(a, tmp)
                log("%s took %.0f s" % (part, time.monotonic() - t0))
    data["load_end"] = os.getloadavg()
    text = report(data)
    print("load average %.2f at start, %.2f at end" % (data["load_start"][0], data["load_end"][0]))
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(data, f, indent=1)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--workload":
        workload_main(sys.argv[2:])
    else:
        sys.exit(main())
