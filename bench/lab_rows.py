"""Stress-lab rows, repeated: how each peer's throughput compares with
tcalloc's on chosen lab workloads, over several lab runs, with the spread.

    python -m bench.lab_rows                                  # fork, mixed vs gperftools, 7 runs
    python -m bench.lab_rows --workloads fork,mixed,larson --backends gperftools,mimalloc --runs 9
    python -m bench.lab_rows --json out.json

One lab run (``python -m tcalloc stress --isolate``: every backend in a
child of its own) runs every workload on tcalloc and on the peers, and its
rows give each peer's ops/s over tcalloc's, measured minutes apart at
most. The runs alternate which backend goes first (the lab runs backends
in the order given), so a slow spell on the shared machine does not always
land on the same one. The figure per workload and peer is the median of the
per-run ratios, with their min..max: above 1.00 the peer did more. A run
whose blocks failed their checks is reported and left out. Beside each
row: the page faults per 1000 operations of tcalloc and of the peer (the
lab process's minor faults, median over the runs), which repeat within a
few percent where ops/s ratios spread by tens: on the fork workload every
page a worker writes after a fork() faults, so the count follows how many
distinct pages the heap cycles its blocks through. It is a benchmark, not
a test: nothing here passes or fails.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _median(xs):
    if not xs:
        return None
    s = sorted(xs)
    return s[len(s) // 2]


def one_run(workloads, backends, threads, duration, first_tcalloc):
    order = ["tcalloc"] + backends if first_tcalloc else backends + ["tcalloc"]
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    cmd = [sys.executable, "-m", "tcalloc", "stress", "--workloads", ",".join(workloads),
           "--backends", ",".join(order), "--threads", str(threads), "--duration", str(duration),
           "--isolate", "--json", path]
    try:
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        with open(path) as f:
            data = json.load(f)
    finally:
        os.unlink(path)
    return r.returncode, data


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.lab_rows", description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="fork,mixed")
    ap.add_argument("--backends", default="gperftools", help="peers (comma list)")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--duration", type=float, default=1.5)
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args(argv)
    workloads = [w for w in a.workloads.split(",") if w]
    peers = [b for b in a.backends.split(",") if b and b != "tcalloc"]
    ratios = {(w, p): [] for w in workloads for p in peers}
    tc_ops = {w: [] for w in workloads}
    faults = {(w, b): [] for w in workloads for b in ["tcalloc"] + peers}
    runs = []
    for i in range(a.runs):
        rc, data = one_run(workloads, peers, a.threads, a.duration, first_tcalloc=(i % 2 == 0))
        # the rows whose every block passed its checks
        clean = {(r["workload"], r["backend"]): r for r in data["runs"]
                 if not r.get("error") and not r.get("corrupt") and not r.get("lost")}
        line = []
        for (w, b), r in clean.items():
            if (w, b) in faults and r.get("minor_faults_per_kop") is not None:
                faults[(w, b)].append(r["minor_faults_per_kop"])
        for w in workloads:
            t = clean.get((w, "tcalloc"))
            if t:
                tc_ops[w].append(t["throughput_ops_s"])
            for p in peers:
                r = clean.get((w, p))
                if t and r:
                    x = r["throughput_ops_s"] / t["throughput_ops_s"]
                    ratios[(w, p)].append(x)
                    line.append("%s %s %.2fx" % (w, p, x))
                else:
                    line.append("%s %s: not clean or missing" % (w, p))
        runs.append(dict(rc=rc, rows=data["runs"], peers=data.get("peers")))
        print("run %d/%d (lab exit %d): %s" % (i + 1, a.runs, rc, "; ".join(line)), flush=True)

    print()
    print("%d threads, %.1f s per run, %d lab runs; each peer's ops/s over tcalloc's in the same "
          "run (> 1.00: the peer did more)" % (a.threads, a.duration, a.runs))
    print("page faults per 1000 operations (the lab process's minor faults: first touches, and "
          "writes after a fork()), median over the runs, tcalloc / the peer")
    print("%-10s %-11s %8s  %-13s %14s  %-15s %s"
          % ("workload", "peer", "median", "min..max", "tcalloc ops/s", "faults/1000 ops", "runs"))
    summary = {}
    for (w, p), xs in ratios.items():
        if not xs:
            print("%-10s %-11s %8s" % (w, p, "-"))
            continue
        med, tmed = _median(xs), _median(tc_ops[w])
        ft, fp = _median(faults[(w, "tcalloc")]), _median(faults[(w, p)])
        summary["%s/%s" % (w, p)] = dict(median=med, min=min(xs), max=max(xs), n=len(xs),
                                         tcalloc_ops_s_median=tmed,
                                         tcalloc_faults_per_kop=ft, peer_faults_per_kop=fp)
        print("%-10s %-11s %7.2fx  %.2f..%.2f %14s  %-15s %d"
              % (w, p, med, min(xs), max(xs), "%.3g" % tmed,
                 "-" if ft is None or fp is None else "%.0f / %.0f" % (ft, fp), len(xs)))
    print("  command: python -m bench.lab_rows --workloads %s --backends %s --runs %d"
          % (a.workloads, a.backends, a.runs))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(summary=summary, runs=runs, argv=sys.argv[1:]), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
