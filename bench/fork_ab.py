"""The stress lab's fork workload, run bare: tcalloc builds and peers
interleaved, with the kernel's side of each run.

    python -m bench.fork_ab                                 # this checkout against gperftools
    python -m bench.fork_ab --builds .,/tmp/other-build --rounds 20
    python -m bench.fork_ab --interval-ms 400               # the same work with few forks

Each round runs one child process per tcalloc build and per peer, in a
random order, each calling ``tcalloc.stress._workloads.run("fork", ...)``
directly: no lab harness, no profiler threads, so the only other thread
is the forking one. A peer runs with ``LD_PRELOAD`` and the first build's
workload module. Reported per build and peer: median ops/s, the peer's
ops/s over the build's in the same round (median and min..max), and the
medians of what repeats from run to run where ops/s does not: page faults
per fork in the parent (every page written after a fork() faults), the
parent's time inside fork(), a child's life from fork() to reaped, and,
for tcalloc, the waits at its fork gate. A build is a directory holding a
built ``tcalloc`` package (a checkout after ``pip install -e .`` or
``python devbuild.py``); the child checks that it imported that one. It
is a benchmark, not a test: nothing here passes or fails.
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, os, resource, sys
build = sys.argv[1]
sys.path.insert(0, build)
import tcalloc
from tcalloc.stress import _workloads as wl
peer = bool(os.environ.get("LD_PRELOAD"))
if not peer and not os.path.abspath(tcalloc.__file__).startswith(os.path.abspath(build) + os.sep):
    sys.exit("imported %s, not the build in %s" % (tcalloc.__file__, build))
st0 = tcalloc.stats()["locks"]["fork_gate"] if not peer else None
ru0 = resource.getrusage(resource.RUSAGE_SELF)
r = wl.run("fork", "system" if peer else "tcalloc", threads=int(sys.argv[2]), ops=0,
           duration=float(sys.argv[3]), seed=1, fork_interval_ms=float(sys.argv[4]))
ru1 = resource.getrusage(resource.RUSAGE_SELF)
f = r["forks"]
out = dict(ok=not (r["corrupt"] or r["lost"] or r["child_failures"] or r["child_hung"]),
           ops_s=r["ops"] / (r["elapsed_ns"] / 1e9), forks=f,
           faults_per_fork=(ru1.ru_minflt - ru0.ru_minflt) / f,
           fork_ms=r["fork_ns"] / f / 1e6,
           child_ms=r["child_ns"] / max(r["children_reaped"], 1) / 1e6)
if st0 is not None:
    st1 = tcalloc.stats()["locks"]["fork_gate"]
    out["gate_waits_per_fork"] = (st1["contended"] - st0["contended"]) / f
    out["gate_ms_per_fork"] = (st1["wait_ns"] - st0["wait_ns"]) / f / 1e6
print(json.dumps(out))
"""


def run_one(build, preload, a):
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if preload:
        env["LD_PRELOAD"] = preload
    p = subprocess.run([sys.executable, "-c", CHILD, build, str(a.threads), str(a.duration),
                        str(a.interval_ms)], env=env, capture_output=True, text=True, cwd="/")
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None):
    from tcalloc.stress.peers import find_peers, why_missing
    ap = argparse.ArgumentParser(prog="python -m bench.fork_ab", description=__doc__.splitlines()[0])
    ap.add_argument("--builds", default=REPO, help="comma list of build directories (default: this checkout)")
    ap.add_argument("--peers", default="gperftools", help="comma list of peers (default gperftools)")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--duration", type=float, default=1.5)
    ap.add_argument("--interval-ms", type=float, default=20.0, help="sleep between forks (default 20)")
    a = ap.parse_args(argv)
    builds = [os.path.abspath(b) for b in a.builds.split(",") if b]
    for b in builds:
        if not os.path.isfile(os.path.join(b, "tcalloc", "__init__.py")):
            ap.error("%s holds no tcalloc package (a checkout after pip install -e . or "
                     "python devbuild.py)" % b)
    found, missing = find_peers([p for p in a.peers.split(",") if p])
    for m in missing:
        print("peer %s not measured: %s" % (m, why_missing(m)))
    runners = [("tcalloc@" + b, b, None) for b in builds]
    runners += [(name, builds[0], path) for name, path in found.items()]
    res = {name: [] for name, _, _ in runners}
    rng = random.Random(1)
    for i in range(a.rounds):
        order = runners[:]
        rng.shuffle(order)
        for name, build, preload in order:
            res[name].append(run_one(build, preload, a))
        print("round %d/%d: %s" % (i + 1, a.rounds, "  ".join(
            "%s %s" % (n.split("@")[0] if n.startswith("tcalloc@") and len(builds) == 1 else n,
                       "%.0fk" % (r["ops_s"] / 1e3) if "ops_s" in r else r.get("error"))
            for n, r in ((n, res[n][-1]) for n, _, _ in runners))), flush=True)
    print()
    print("fork workload, %d threads, %.1f s per run, a fork every %.0f ms; %d rounds"
          % (a.threads, a.duration, a.interval_ms, a.rounds))
    cols = ("faults_per_fork", "fork_ms", "child_ms", "gate_waits_per_fork", "gate_ms_per_fork")
    print("%-40s %10s  %s" % ("runner", "ops/s", "  ".join(cols)))
    for name, _, _ in runners:
        ok = [r for r in res[name] if r.get("ok")]
        med = lambda k: statistics.median(r[k] for r in ok) if ok and k in ok[0] else None  # noqa: E731
        print("%-40s %10s  %s" % (name, "%.0f" % med("ops_s") if ok else "-", "  ".join(
            ("%*.2f" % (len(c), med(c))) if med(c) is not None else "%*s" % (len(c), "-")
            for c in cols)))
    for name, _, _ in runners[len(builds):]:
        for b in builds:
            xs = [p["ops_s"] / t["ops_s"] for p, t in zip(res[name], res["tcalloc@" + b])
                  if p.get("ok") and t.get("ok")]
            if xs:
                print("%s / tcalloc@%s: median %.3fx (%.2f..%.2f) over %d rounds (> 1: the peer did more)"
                      % (name, b, statistics.median(xs), min(xs), max(xs), len(xs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
