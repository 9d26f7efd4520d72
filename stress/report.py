"""Progress display, the summary table, the contention report and the plot."""

import sys
import time

MIB = 1024.0 * 1024.0


class ProgressLine:
    """A live status line on stderr: rewritten in place on a terminal; when
    stderr is not a terminal (CI, a pipe), a plain line every few seconds."""

    def __init__(self, stream=None, every=5.0):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = every
        self._last = 0.0
        self._width = 0

    def update(self, text):
        now = time.monotonic()
        if self.tty:
            pad = max(0, self._width - len(text))
            self.stream.write("\r" + text + " " * pad)
            self._width = len(text)
            self.stream.flush()
        elif now - self._last >= self.every:
            self.stream.write(text + "\n")
            self.stream.flush()
            self._last = now

    def done(self, text):
        if self.tty:
            pad = max(0, self._width - len(text))
            self.stream.write("\r" + text + " " * pad + "\n")
            self._width = 0
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self._last = time.monotonic()


def fmt_rate(x):
    if x is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= div:
            return "%.2f%s" % (x / div, unit)
    return "%.0f" % x


def fmt_mib(b):
    return "-" if b is None else "%.1fM" % (b / MIB)


def hottest(rec):
    hot = rec.get("hottest_locks")
    if hot is None:
        return "n/a"
    if not hot:
        return "none contended"
    h = hot[0]
    return "%s %.1f%%" % (h["name"], 100.0 * h["wait_share_threads"])


def _ratio_key(r):
    # The threads asked for (two xmalloc runs asked for 1 and 2 both run 2)
    # and the soak pass: each run is compared with tcalloc's of its own row.
    return r["workload"], r["threads"], r.get("pass")


def threads_text(r):
    """The thread count asked for, and how many ran when that differs."""
    ran = r.get("threads_run")
    return str(r["threads"]) if ran in (None, r["threads"]) else "%d (ran %d)" % (r["threads"], ran)


def add_ratios(runs):
    base = {_ratio_key(r): r.get("throughput_ops_s")
            for r in runs if r["backend"] == "tcalloc" and r.get("throughput_ops_s")}
    for r in runs:
        b = base.get(_ratio_key(r))
        t = r.get("throughput_ops_s")
        r["ratio_to_tcalloc"] = (t / b) if (b and t is not None) else None


def summary_table(runs):
    head = ("workload", "backend", "thr", "ops/s", "vs tcalloc", "peak RSS", "RSS growth",
            "corrupt", "lost", "hottest lock (wait % of thread time)", "status")
    rows = []
    for r in runs:
        ratio = r.get("ratio_to_tcalloc")
        growth = (r["rss_peak"] - r["rss_start"]) if r.get("rss_peak") is not None else None
        rows.append((r["workload"], r["backend"], threads_text(r),
                     fmt_rate(r.get("throughput_ops_s")),
                     "-" if ratio is None else "%.2fx" % ratio,
                     fmt_mib(r.get("rss_peak")), fmt_mib(growth),
                     str(r.get("corrupt", "-")), str(r.get("lost", "-")),
                     hottest(r), "ok" if r["ok"] else "FAIL"))
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(head)]
    right = {2, 3, 4, 5, 6, 7, 8}

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(head), line(["-" * w for w in widths])]
    out += [line(row) for row in rows]
    return "\n".join(out)


def profile_lines(r):
    """The contention profile of one run, a few lines."""
    out = ["%s / %s / %s threads%s" % (r["workload"], r["backend"], threads_text(r),
                                       "" if r["ok"] else "   FAILED: " + "; ".join(r["problems"]))]
    if r.get("cpu_user_s") is None:
        return out
    el = r.get("elapsed_s") or 0.0
    out.append("  cpu user %.2f s  system %.2f s   ctx switches vol %d  invol %d   "
               "rss peak %s  uss peak %s"
               % (r["cpu_user_s"], r["cpu_system_s"], r["ctx_voluntary"], r["ctx_involuntary"],
                  fmt_mib(r["rss_peak"]), fmt_mib(r["uss_peak"])))
    if r.get("minor_faults_per_kop") is not None:
        out.append("  page faults minor %d (%.1f per 1000 ops)  major %d"
                   % (r["minor_faults"], r["minor_faults_per_kop"], r["major_faults"]))
    per = r.get("per_thread") or []
    if per:
        out.append("  per worker thread: " + ", ".join(
            "%s cpu %.2f s (ctx %d/%d)" % (p["role"], p["cpu_user_s"] + p["cpu_system_s"],
                                          p["ctx_voluntary"], p["ctx_involuntary"])
            for p in per[:8]) + (" ..." if len(per) > 8 else ""))
    hot = r.get("hottest_locks")
    if hot:
        for h in hot[:3]:
            out.append("  lock %-16s acq %d  contended %d  spins %d  waited %.2f ms = %.2f%% of "
                       "thread time (%.2f%% of wall)"
                       % (h["name"], h["acquisitions"], h["contended"], h["spins"],
                          h["wait_ns"] / 1e6, 100 * h["wait_share_threads"], 100 * h["wait_share"]))
    elif hot is not None:
        out.append("  tcalloc locks: no contended acquisition in %.2f s" % el)
    if r["workload"] == "fork" and "forks" in r:
        out.append("  forks %d  failed children %d  hung children %d%s%s"
                   % (r["forks"], r["child_failures"], r["child_hung"],
                      "  fork() %.2f ms" % r["fork_ms"] if r.get("fork_ms") is not None else "",
                      "  child life %.2f ms" % r["child_ms"] if r.get("child_ms") is not None else ""))
    return out


def plot(runs, path):
    """Throughput against threads per backend (one panel per workload) and
    RSS over the suite's time line per backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(r["workload"] for r in runs))
    backends = list(dict.fromkeys(r["backend"] for r in runs))
    n = len(workloads) + 1
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    colors = {b: "C%d" % i for i, b in enumerate(backends)}
    for ax, w in zip(axes.flat, workloads):
        for b in backends:
            pts = sorted((r.get("threads_run") or r["threads"], r.get("throughput_ops_s") or 0)
                         for r in runs if r["workload"] == w and r["backend"] == b)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] / 1e6 for p in pts], "o-",
                        color=colors[b], label=b)
        ax.set_title(w)
        ax.set_xlabel("threads")
        ax.set_ylabel("M ops/s")
        ax.grid(alpha=0.3)
    ax = axes.flat[len(workloads)]
    offset = 0.0
    seen = set()
    for r in runs:
        s = r.get("rss_series") or []
        if s:
            ax.plot([offset + t for t, _ in s], [v / MIB for _, v in s], color=colors[r["backend"]],
                    label=None if r["backend"] in seen else r["backend"], lw=1)
            seen.add(r["backend"])
            offset += s[-1][0]
    ax.set_title("RSS over the runs")
    ax.set_xlabel("seconds (runs back to back)")
    ax.set_ylabel("RSS MiB")
    ax.grid(alpha=0.3)
    for extra in list(axes.flat)[n:]:
        extra.axis("off")
    axes.flat[0].legend(fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
