"""Interpreter hook benchmark: Python programs on tcalloc against the plain interpreter.

    python -m bench.interpreter                 # full run (pyperformance, pyflakes, callgrind)
    python -m bench.interpreter --quick         # smoke run, a couple of minutes; not a measurement
    python -m bench.interpreter --bench go,json_dumps --modes plain,tcalloc --rounds 9
    python -m bench.interpreter --parts callgrind --json out.json
    python -m bench.interpreter --parts pyperf-cg --no-peers   # instructions per loop, ~17 min
    python -m bench.interpreter --parts pyperf --no-peers --rounds 1 --breakdown   # memory by owner

Every program runs as the plain interpreter (pymalloc, the default), under
``python -m tcalloc run`` and, for context, with ``PYTHONMALLOC=malloc`` on
glibc and on gperftools tcmalloc, jemalloc and mimalloc through LD_PRELOAD
(those found; none is installed). Every figure is a ratio against the plain
interpreter measured in the same run, modes interleaved round by round.

1. pyperformance: the benchmark scripts shipped in the installed pyperformance
   package, each run by pyperf (worker processes, fixed loops); the workers
   run the timed code, so each one reports at exit which allocator it was on
   (tcalloc installed and its malloc counter, PYTHONMALLOC, the preloaded
   library); a run whose workers were not on the intended allocator is void.
2. pyflakes over the standard library (a fixed file list): wall time and
   peak RSS of the whole process; the output must be the same in every mode.
3. callgrind: instructions per call of PyObject_Malloc and PyObject_Free, and
   in total, on a workload that builds and drops 100k tuples and 100k
   one-key dicts, with the same workload at n=0 subtracted.
4. pyperf-cg (only when named in --parts): each pyperformance benchmark's
   pyperf worker under callgrind, once with 1 loop and once with 1 + L loops
   (L: the loops pyperf calibrated on the plain interpreter, at least 3); the difference
   over L is the instructions per loop, start-up cancelled. Repeatable where
   the timings of part 1 are not: a cost figure, not a time.

The children import the tcalloc built in this checkout (``python setup.py
build_ext --inplace``) if there is one, else whatever ``import tcalloc``
finds; the header names it. See bench/README.md, "The interpreter hook".

This file is also the child: pyperf starts its workers as ``python
bench/interpreter.py --worker ...`` (``sys.argv[0]``), so with
TCALLOC_BENCH_CHILD set it runs the benchmark script or module named there
and appends a line about the process to the probe file when it exits.
"""
import json
import os
import sys

CHILD_ENV = "TCALLOC_BENCH_CHILD"
# The peers' shared objects, recognised in /proc/self/maps by the child.
PRELOAD_NAMES = ("libmimalloc", "libjemalloc", "libtcmalloc")


# ============================================================================
# child side: stdlib only, nothing imported that the parent needs
# ============================================================================

def _own_peak_kib():
    """This process's own peak RSS, VmHWM (KiB): ru_maxrss would carry the
    parent's (pyperf's runner, this harness) across fork and exec. The twin
    of bench.own_peak_kib, which the workers cannot import: the repository
    is not on their path."""
    with open("/proc/self/status") as f:
        return int(next(l for l in f if l.startswith("VmHWM:")).split()[1])


# --breakdown: a thread in each worker reads the worker's RSS every 2 ms and,
# at each new high, what its allocators hold then: pymalloc's arenas (read
# from the interpreter's own statics on 3.10 and 3.11, where
# Objects/obmalloc.c keeps them in file-scope variables; from 3.12 they live
# in the runtime state, not read here) and tcalloc's stats(). 64-bit
# layouts: struct arena_object is 48 bytes (address, pool_address, ...); a
# pool starts with its block count (4 bytes at 0) and has arenaindex at 32
# and szidx at 36; pools are 16 KiB. The symbols are looked up by the parent
# (pymalloc_symbols): nm's output, read in the worker, would be part of its
# peak.
_PYMALLOC_POOL = 1 << 14
_PYMALLOC_HEADER = 48
_breakdown = {}                 # "peak": the latest sample (one store: the probe may read it any time)


def _load_base(syms):
    """Where the object holding pymalloc's statics is loaded: a PIE or shared
    object is linked at 0 and loaded at the lowest address of its mappings."""
    if "error" in syms or not syms["pie"]:
        return 0
    with open("/proc/self/maps") as f:
        return min(int(l.split("-")[0], 16) for l in f if l.rstrip().endswith(syms["exe"]))


def _pymalloc_state(syms, off):
    """pymalloc's used and free bytes, summed over its arenas (`off`: from
    _load_base): what it holds
    for blocks allocated before tcalloc's hook, or for everything on the
    plain interpreter. {"error": ...} where it cannot be read. Read through
    /proc/self/mem, not pointers: the main thread may free an arena while
    this walks it (the GIL changes hands between bytecodes), and a read of
    unmapped memory is then an error here, not a crash."""
    import struct
    if "error" in syms:
        return {"error": syms["error"]}
    fd = os.open("/proc/self/mem", os.O_RDONLY)
    try:
        def read(fmt, addr):
            data = os.pread(fd, struct.calcsize(fmt), addr)
            if len(data) != struct.calcsize(fmt):
                raise OSError("short read")
            return struct.unpack(fmt, data)
        (arenas,), (n,) = read("<Q", off + syms["arenas"]), read("<I", off + syms["maxarenas"])
        table = read("<" + "QQ32x" * n, arenas) if n else ()
        used = free = pools = live = 0
        for i in range(n):
            addr, end = table[2 * i], table[2 * i + 1]   # address, pool_address
            if not addr:
                continue
            live += 1
            p = (addr + _PYMALLOC_POOL - 1) & ~(_PYMALLOC_POOL - 1)
            while p < end:                  # the pools carved so far
                count, index, szidx = read("<I28xII", p)
                if count:
                    if index != i:          # a pool names its arena: the layout check
                        return {"error": "pymalloc's pool layout is not the one expected"}
                    size = (szidx + 1) * 16
                    pools += 1
                    used += count * size
                    free += _PYMALLOC_POOL - _PYMALLOC_HEADER - count * size
                p += _PYMALLOC_POOL
    except OSError as e:                    # an arena freed meanwhile: no figure this time
        return {"error": f"pymalloc changed while read ({e})", "retry": True}
    finally:
        os.close(fd)
    return {"arenas": live, "used_pools": pools, "used_bytes": used,
            "free_in_used_pools_bytes": free}


def _glibc_state():
    """glibc malloc's bytes in use and free (mallinfo2, glibc 2.33+): the
    interpreter's larger blocks on the plain interpreter, and C libraries'
    blocks on both."""
    import ctypes
    fn = getattr(ctypes.CDLL(None), "mallinfo2", None)
    if fn is None:
        return {"error": "no mallinfo2 (glibc 2.33 or later)"}

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]
    fn.restype = Mallinfo2
    mi = fn()
    return {"used_bytes": mi.uordblks + mi.hblkhd, "free_bytes": mi.fordblks}


def _rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def _breakdown_sampler(syms):
    """Daemon thread: at each new high of RSS, what the allocators hold."""
    import threading
    import time

    def run():
        high = 0
        base = _load_base(syms)         # once: read at every sample, the maps file is memory too
        while True:
            rss = _rss_kib()
            pm = _pymalloc_state(syms, base) if rss > high else None
            if pm is not None and not pm.get("retry"):   # retry: an arena went meanwhile
                high = rss
                snap = {"rss_kib": rss, "pymalloc": pm, "glibc": _glibc_state()}
                tc = sys.modules.get("tcalloc")
                if tc is not None and tc.installed():
                    st = tc.stats()
                    snap["tcalloc"] = {k: st[k] for k in BREAKDOWN_TCALLOC}
                _breakdown["peak"] = snap
            time.sleep(0.002)
    threading.Thread(target=run, name="breakdown", daemon=True).start()


def _probe(path):
    """Append one JSON line: which allocator this process ran on, its own
    peak RSS, and (--breakdown) what its allocators held at its highest RSS."""
    rec = {"pid": os.getpid(),
           "worker": "--worker" in sys.argv,
           "calibration": any(a.startswith(("--calibrate", "--recalibrate")) for a in sys.argv),
           "maxrss_kib": _own_peak_kib(),
           "pythonmalloc": os.environ.get("PYTHONMALLOC", ""),
           "tcalloc_env": {k: v for k, v in os.environ.items() if k.startswith("TCALLOC_")},
           "preload": [], "tcalloc": None}
    try:
        with open("/proc/self/maps") as f:
            libs = {os.path.basename(l.split()[-1]) for l in f if ".so" in l}
        rec["preload"] = sorted(l for l in libs if l.startswith(PRELOAD_NAMES))
    except OSError:
        pass
    tc = sys.modules.get("tcalloc")
    if tc is not None:
        try:
            st = tc.stats()
            rec["tcalloc"] = {
                "installed": bool(tc.installed()),
                "mallocs": st["large_mallocs"] + sum(c["mallocs"] for c in st["size_classes"]),
                "frees": st["large_frees"] + sum(c["frees"] for c in st["size_classes"]),
                "bytes_in_use": st.get("bytes_in_use"), "heap_bytes": st.get("heap_bytes"),
                "thread_cache_free_bytes": st.get("thread_cache_free_bytes")}
        except Exception as e:          # a broken build must void the run, not hide
            rec["tcalloc"] = {"installed": False, "error": repr(e)}
    if "peak" in _breakdown:
        rec["at_peak"] = _breakdown["peak"]
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(rec) + "\n").encode())
    finally:
        os.close(fd)


# tcalloc's figures a --breakdown sample takes: what is in use, and its free
# memory by where it sits.
BREAKDOWN_TCALLOC = ("bytes_in_use", "thread_cache_free_bytes", "central_free_bytes",
                     "transfer_cache_free_bytes", "page_heap_free_bytes")


def child_main():
    import atexit
    import runpy
    spec = json.loads(os.environ[CHILD_ENV])
    atexit.register(_probe, spec["probe"])
    if spec.get("breakdown") and "--worker" in sys.argv:
        _breakdown_sampler(spec["breakdown"])
    if spec["kind"] == "script":
        # Not runpy.run_path, which sets sys.argv[0] to the script while it
        # runs: sys.argv[0] must stay this file, pyperf starts its workers
        # with it, and the workers must come back here to be probed.
        import builtins
        import types
        target = spec["target"]
        sys.path[0] = os.path.dirname(target)
        main = types.ModuleType("__main__")
        main.__file__ = target
        main.__builtins__ = builtins
        sys.modules["__main__"] = main
        with open(target, "rb") as f:
            code = compile(f.read(), target, "exec")
        exec(code, main.__dict__)
    else:
        sys.argv[0] = spec["target"]
        runpy.run_module(spec["target"], run_name="__main__", alter_sys=True)


# ============================================================================
# parent side
# ============================================================================

THIS = os.path.abspath(__file__)
REPO = os.path.dirname(os.path.dirname(THIS))

MODES = ("plain", "tcalloc", "glibc", "mimalloc", "jemalloc", "gperftools")
# The plain interpreter again, as a mode of its own (--control): its ratios to
# plain, in the same interleaved rounds, are the noise floor of every ratio.
CONTROL = "plain2"
PEER_MODES = ("mimalloc", "jemalloc", "gperftools")     # PYTHONMALLOC=malloc + LD_PRELOAD
PARTS = ("pyperf", "pyflakes", "callgrind", "pyperf-cg")
# pyperf-cg runs every benchmark under callgrind (17 minutes for the default
# benchmarks, plain and tcalloc; 40 with the four peers): asked for by name.
DEFAULT_PARTS = ("pyperf", "pyflakes", "callgrind")
# Environment the pyperf workers must keep: pyperf gives its workers only
# PATH, HOME, PYTHONPATH, the locale and what --inherit-environ names (and
# the names of --tcalloc-env's settings: inherit_environ()).
INHERIT = ("TCALLOC_RUN_DOMAINS", CHILD_ENV, "PYTHONMALLOC", "LD_PRELOAD")

# name -> (benchmark directory under pyperformance's data-files, extra args)
BENCHMARKS = {
    "json_dumps": ("json_dumps", []),
    "json_loads": ("json_loads", []),
    "pickle_pure_python": ("pickle", ["--pure-python", "pickle"]),
    "unpickle_pure_python": ("pickle", ["--pure-python", "unpickle"]),
    "pickle": ("pickle", ["pickle"]),
    "unpickle": ("pickle", ["unpickle"]),
    "deltablue": ("deltablue", []),
    "richards": ("richards", []),
    "nbody": ("nbody", []),
    "go": ("go", []),
    "raytrace": ("raytrace", []),
    "regex_v8": ("regex_v8", []),
    "regex_effbot": ("regex_effbot", []),
    "unpack_sequence": ("unpack_sequence", []),
    "logging_simple": ("logging", ["simple"]),
    "chaos": ("chaos", []),
    "float": ("float", []),
    "nqueens": ("nqueens", []),
    "deepcopy": ("deepcopy", []),
    "hexiom": ("hexiom", []),
    "xml_etree_generate": ("xml_etree", ["generate"]),
    "xml_etree_parse": ("xml_etree", ["parse"]),
}
DEFAULT_BENCH = ["json_dumps", "json_loads", "pickle_pure_python", "unpickle_pure_python",
                 "deltablue", "richards", "nbody", "go", "raytrace", "regex_v8",
                 "unpack_sequence", "logging_simple", "chaos", "float", "nqueens",
                 "xml_etree_generate"]
QUICK_BENCH = ["json_dumps", "go", "unpickle_pure_python"]

# pyperf settings per run: (processes, values, warm-ups), full and --quick.
PYPERF_RUN = {False: (3, 3, 1), True: (1, 2, 1)}

CALLGRIND_N = {False: 100_000, True: 20_000}
CALLGRIND_WORKLOAD = '''\
import sys


def work(n):
    t = [(i, i) for i in range(n)]
    del t
    d = [{i: i} for i in range(n)]
    del d


work(int(sys.argv[1]))
'''
CALLGRIND_FUNCS = ("PyObject_Malloc", "PyObject_Free")


def log(msg="", end="\n"):
    sys.stderr.write(msg + end)
    sys.stderr.flush()


class Ctx:
    """What every child needs: the interpreter, tcalloc's location, peers, a temp dir."""

    def __init__(self, a, tmp):
        self.a = a
        self.tmp = tmp
        self.python = sys.executable
        self.seq = 0
        self.breakdown = None       # pymalloc_symbols() with --breakdown

    def path(self, stem, ext):
        self.seq += 1
        return os.path.join(self.tmp, f"{self.seq:05d}-{stem}{ext}")


def compile_sources(dirs):
    """Write the .pyc files of tcalloc, pyperformance's benchmarks and
    pyflakes, as `pip install` does: every child then loads them as an
    installed program would. Under PYTHONDONTWRITEBYTECODE (set on some
    machines, this project's included) each child would otherwise compile
    them from source at start-up, a cost and a peak of RSS no installed
    program has (the compiler's temporary memory stays in glibc's heap,
    where a hooked interpreter never reuses it)."""
    import compileall
    for d in dirs:
        if d and os.path.isdir(d):
            compileall.compile_dir(d, quiet=2)


def locate_tcalloc(explicit):
    """(directory to put on PYTHONPATH or None, tcalloc package dir, error)."""
    import subprocess
    import tempfile
    cands = [explicit] if explicit else [REPO, None]
    err = None
    with tempfile.TemporaryDirectory() as neutral:
        for root in cands:
            env = dict(os.environ)
            env.pop("PYTHONPATH", None)
            if root:
                env["PYTHONPATH"] = root
            r = subprocess.run([sys.executable, "-c",
                                "import tcalloc, os; tcalloc.installed(); "
                                "print(os.path.dirname(tcalloc.__file__))"],
                               env=env, cwd=neutral, capture_output=True, text=True)
            if r.returncode == 0:
                return root, r.stdout.strip(), None
            tail = r.stderr.strip().splitlines()
            err = f"{root or 'sys.path'}: {tail[-1] if tail else 'exit %d' % r.returncode}"
    return None, None, err


def pymalloc_symbols():
    """For --breakdown's workers: where pymalloc's `arenas` and `maxarenas`
    are in the interpreter's libpython or executable (nm), as
    {"exe", "arenas", "maxarenas", "pie"} or {"error": ...}."""
    import ctypes
    import subprocess
    import sysconfig
    if sys.version_info[:2] not in ((3, 10), (3, 11)) or ctypes.sizeof(ctypes.c_void_p) != 8:
        return {"error": "pymalloc's state is read on 64-bit Python 3.10 and 3.11 only"}
    exe = os.path.realpath(sys.executable)
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        lib = os.path.join(sysconfig.get_config_var("LIBDIR") or "",
                           sysconfig.get_config_var("INSTSONAME") or "")
        with open("/proc/self/maps") as f:
            loaded = {l.split()[5] for l in f if len(l.split()) > 5}
        exe = next((p for p in loaded if os.path.realpath(p) == os.path.realpath(lib)), lib)
    try:
        out = subprocess.run(["nm", exe], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        return {"error": f"nm {exe}: {e}"}
    syms = {"exe": exe}
    for line in out.splitlines():
        f = line.split()
        if len(f) == 3 and f[2] in ("arenas", "maxarenas"):
            syms[f[2]] = int(f[0], 16)
    if len(syms) != 3:
        return {"error": f"{exe} has no symbols for pymalloc's arenas"}
    with open(exe, "rb") as f:          # ELF e_type: 3 (ET_DYN) is loaded at a base
        f.seek(16)
        syms["pie"] = int.from_bytes(f.read(2), "little") == 3
    return syms


def mode_env(ctx, mode, child=None):
    env = dict(os.environ)
    for k in ("LD_PRELOAD", "PYTHONMALLOC", CHILD_ENV, "PYTHONSTARTUP"):
        env.pop(k, None)
    for k in list(env):
        if k.startswith("TCALLOC_"):       # an outer run, a memory limit, debug mode
            env.pop(k)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if ctx.tc_root:
        paths.insert(0, ctx.tc_root)
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    else:
        env.pop("PYTHONPATH", None)
    if mode not in ("plain", CONTROL, "tcalloc"):
        env["PYTHONMALLOC"] = "malloc"
    if mode in PEER_MODES:
        env["LD_PRELOAD"] = ctx.libs[mode]
    if mode == "tcalloc":
        env.update(ctx.a.tcalloc_settings)
    if child is not None:
        env[CHILD_ENV] = json.dumps(child)
    return env


def mode_argv(ctx, mode, args):
    if mode == "tcalloc":
        return [ctx.python, "-m", "tcalloc", "run", *args]
    return [ctx.python, *args]


def run_child(argv, env, cwd, timeout):
    """Run to completion: (exit code, wall s, ru_maxrss KiB of the tree, stdout,
    stderr). That figure is at least this harness's own RSS (Linux carries a
    parent's high-water mark into a child): peak RSS is read from each
    child's probe instead (_own_peak_kib)."""
    from bench.engine import wait_child
    return wait_child(argv, env, cwd, timeout)[:5]


def read_probe(path):
    recs = []
    try:
        with open(path) as f:
            for line in f:
                if line.strip():
                    recs.append(json.loads(line))
    except OSError:
        pass
    return recs


def check_record(ctx, mode, rec):
    """None if the process ran on `mode`'s allocator, else what was wrong."""
    tc = rec.get("tcalloc")
    if mode == "tcalloc":
        if not tc or not tc.get("installed"):
            return "tcalloc not installed in the process" + (f" ({tc['error']})" if tc and
                                                             tc.get("error") else "")
        if tc.get("mallocs", 0) <= 0:
            return "tcalloc installed but served no malloc"
        env = rec.get("tcalloc_env", {})
        for k, v in ctx.a.tcalloc_settings.items():
            if env.get(k) != v:
                return f"--tcalloc-env {k}={v} did not reach the process (it had {env.get(k)!r})"
        return None
    if tc is not None and tc.get("installed"):
        return "tcalloc installed in a non-tcalloc run"
    want_pm = "" if mode in ("plain", CONTROL) else "malloc"
    if rec.get("pythonmalloc", "") != want_pm:
        return f"PYTHONMALLOC={rec.get('pythonmalloc')!r}, expected {want_pm!r}"
    # /proc/self/maps names the file behind the soname's symlink.
    want = os.path.basename(os.path.realpath(ctx.libs[mode])) if mode in PEER_MODES else None
    got = rec.get("preload", [])
    if want and want not in got:
        return f"{want} not mapped (LD_PRELOAD did not take)"
    if not want and got:
        return f"unexpected allocator mapped: {', '.join(got)}"
    return None


def rotate(modes, r):
    k = r % len(modes)
    return list(modes[k:]) + list(modes[:k])


def median(xs):
    import statistics
    return statistics.median(xs) if xs else None


# ---- pyperformance ----------------------------------------------------------

def bench_dir():
    import pyperformance
    return os.path.join(os.path.dirname(pyperformance.__file__), "data-files", "benchmarks")


def pyperf_load(path):
    import pyperf
    suite = pyperf.BenchmarkSuite.load(path)
    benches = suite.get_benchmarks()
    if len(benches) != 1:
        raise RuntimeError(f"{path}: {len(benches)} benchmarks in one result; expected 1")
    b = benches[0]
    values = [v for r in b.get_runs() for v in r.values]
    loops = [r.get_loops() for r in b.get_runs() if r.values]
    return b.get_name(), values, loops


def inherit_environ(ctx):
    """pyperf's --inherit-environ: INHERIT and every --tcalloc-env name."""
    names = list(INHERIT)
    names += [k for k in ctx.a.tcalloc_settings if k not in names]
    return ",".join(names)


def pyperf_run(ctx, mode, name, script, extra, loops, quick, calibrate=False):
    """One pyperf invocation. Returns a sample dict (with 'error' if void)."""
    procs, values, warmups = PYPERF_RUN[quick]
    out = ctx.path(f"{name}-{mode}", ".json")
    probe = ctx.path(f"{name}-{mode}", ".probe")
    args = [THIS, *extra, "--inherit-environ", inherit_environ(ctx), "--quiet", "-o", out]
    if calibrate:
        args += ["-p", "1", "-n", "1", "-w", "1"]
    else:
        args += ["-p", str(procs), "-n", str(values), "-w", str(warmups), "-l", str(loops)]
    env = mode_env(ctx, mode, {"kind": "script", "target": script, "probe": probe,
                               "breakdown": ctx.breakdown})
    code, wall, tree_rss, so, se = run_child(mode_argv(ctx, mode, args), env, ctx.tmp,
                                             ctx.a.timeout)
    s = {"mode": mode, "wall_s": wall, "tree_maxrss_kib": tree_rss}
    if code != 0:
        tail = [l for l in (se + so).strip().splitlines() if l.strip()][-3:]
        s["error"] = f"exit {code}: " + " | ".join(tail)
        return s
    try:
        s["bench"], s["values"], s["loops"] = pyperf_load(out)
    except Exception as e:
        s["error"] = f"no result: {e}"
        return s
    s["mean_s"] = sum(s["values"]) / len(s["values"])
    recs = read_probe(probe)
    workers = [r for r in recs if r["worker"] and not r["calibration"]]
    s["workers"] = len(workers)
    expect = 1 if calibrate else procs
    if len(workers) != expect:
        s["error"] = f"{len(workers)} worker probes, expected {expect}"
        return s
    bad = [e for e in (check_record(ctx, mode, r) for r in recs) if e]
    if bad:
        s["error"] = "VOID: " + bad[0]
        return s
    s["maxrss_kib"] = max(r["maxrss_kib"] for r in workers)
    s["probes"] = workers
    return s


def bench_entry(root, name):
    """(entry dict for benchmark `name`, its script, its extra args); the
    entry has an "error" if the script is missing."""
    d, extra = BENCHMARKS[name]
    script = os.path.join(root, f"bm_{d}", "run_benchmark.py")
    entry = {"script": script, "args": extra}
    if not os.path.exists(script):
        entry["error"] = f"{script} not found"
    return entry, script, extra


def calibrate(ctx, name, script, extra):
    """pyperf's loops per value for `name`, found once on the plain
    interpreter (every run of every mode then does the same work per
    value): (loops, None) or (None, what went wrong)."""
    cal = pyperf_run(ctx, "plain", name, script, extra, 0, ctx.a.quick, calibrate=True)
    if "error" in cal:
        return None, "calibration: " + cal["error"]
    return cal["loops"][-1], None


def part_pyperf(ctx, names):
    a = ctx.a
    root = bench_dir()
    results = {}
    for name in names:
        entry, script, extra = bench_entry(root, name)
        entry["samples"] = []
        results[name] = entry
        if "error" not in entry:
            loops, err = calibrate(ctx, name, script, extra)
            if err:
                entry["error"] = err
        if "error" in entry:
            log(f"  {name}: {entry['error']}")
            continue
        entry["loops"] = loops
        log(f"  {name} (loops={loops})", end="")
        for r in range(a.rounds):
            for mode in rotate(ctx.modes, r):
                s = pyperf_run(ctx, mode, name, script, extra, loops, a.quick)
                s["round"] = r
                entry["samples"].append(s)
                if "error" in s:
                    log(f"\n    {mode} round {r}: {s['error']}", end="")
            log(".", end="")
        log()
    return results


# ---- pyflakes -----------------------------------------------------------------

def stdlib_files(quick):
    import sysconfig
    std = sysconfig.get_paths()["stdlib"]
    skip = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}
    files = []
    for root, dirs, fs in os.walk(std):
        dirs[:] = sorted(d for d in dirs if d not in skip)
        files += [os.path.join(root, f) for f in sorted(fs) if f.endswith(".py")]
    if quick:
        files = files[:120]
    return std, files


def part_pyflakes(ctx):
    import hashlib
    a = ctx.a
    std, files = stdlib_files(a.quick)
    size = sum(os.path.getsize(f) for f in files)
    entry = {"stdlib": std, "files": len(files), "bytes": size, "samples": []}
    log(f"  pyflakes: {len(files)} files, {size / 1e6:.1f} MB under {std}", end="")
    for r in range(a.rounds):
        for mode in rotate(ctx.modes, r):
            probe = ctx.path(f"pyflakes-{mode}", ".probe")
            env = mode_env(ctx, mode, {"kind": "module", "target": "pyflakes", "probe": probe})
            code, wall, tree_rss, so, se = run_child(mode_argv(ctx, mode, [THIS, *files]), env,
                                                     ctx.tmp, a.timeout)
            s = {"mode": mode, "round": r, "wall_s": wall, "tree_maxrss_kib": tree_rss,
                 "exit": code, "output_lines": len(so.splitlines()),
                 "output_sha1": hashlib.sha1(so.encode()).hexdigest()}
            if code not in (0, 1):           # 1: pyflakes found something to report
                tail = [l for l in se.strip().splitlines() if l.strip()][-3:]
                s["error"] = f"exit {code}: " + " | ".join(tail)
            else:
                recs = read_probe(probe)
                bad = [e for e in (check_record(ctx, mode, x) for x in recs) if e]
                if len(recs) != 1:
                    s["error"] = f"{len(recs)} probe records, expected 1"
                elif bad:
                    s["error"] = "VOID: " + bad[0]
                s["probe"] = recs[0] if recs else None
                if recs:
                    s["maxrss_kib"] = recs[0]["maxrss_kib"]   # its own VmHWM (see _own_peak_kib)
            entry["samples"].append(s)
            if "error" in s:
                log(f"\n    {mode} round {r}: {s['error']}", end="")
        log(".", end="")
    log()
    outs = {s["output_sha1"] for s in entry["samples"] if "error" not in s}
    entry["same_output"] = len(outs) <= 1
    return entry


# ---- callgrind ----------------------------------------------------------------

def parse_callgrind(path, funcs):
    """Whole-run instructions, and per function: calls and inclusive instructions
    (summed over every call site's calls= line), and calls from it into tcalloc."""
    import re
    names, objs = {}, {}
    calls = dict.fromkeys(funcs, 0)
    incl = dict.fromkeys(funcs, 0)
    into_tc = dict.fromkeys(funcs, 0)
    total = None
    npos = 1
    fn = cfn = cob = None
    pending = None
    comp = re.compile(r"\((\d+)\)(?: (.*))?$")

    def name(table, rest):
        m = comp.match(rest)
        if not m:
            return rest
        if m.group(2) is not None:
            table[m.group(1)] = m.group(2)
        return table.get(m.group(1), rest)

    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if pending is not None:
                if line[:1] in "0123456789+-*":
                    n, callee, callee_ob = pending
                    parts = line.split()
                    cost = int(parts[npos]) if len(parts) > npos else 0
                    if callee in calls:
                        calls[callee] += n
                        incl[callee] += cost
                    if fn in into_tc and callee_ob and "tcalloc" in callee_ob:
                        into_tc[fn] += n
                    pending = None
                    continue
                pending = None
            key, eq, rest = line.partition("=")
            if eq:
                if key == "fn":
                    fn = name(names, rest)
                    cob = None
                elif key == "cfn":
                    cfn = name(names, rest)
                elif key in ("ob",):
                    name(objs, rest)
                    cob = None
                elif key == "cob":
                    cob = name(objs, rest)
                elif key == "calls":
                    pending = (int(rest.split()[0]), cfn, cob)
                    cob = None
                continue
            if line.startswith("positions:"):
                npos = len(line.split()) - 1
            elif line.startswith(("summary:", "totals:")):
                total = int(line.split()[1])
    if total is None:
        raise RuntimeError(f"no instruction total in {path}")
    return {"total": total, "calls": calls, "incl": incl, "into_tcalloc": into_tc}


def part_callgrind(ctx):
    import shutil
    from concurrent.futures import ThreadPoolExecutor
    a = ctx.a
    vg = shutil.which("valgrind")
    if not vg:
        return {"error": "valgrind not found (Debian package valgrind)"}
    n = CALLGRIND_N[a.quick]
    wl = os.path.join(ctx.tmp, "cg_workload.py")
    with open(wl, "w") as f:
        f.write(CALLGRIND_WORKLOAD)
    jobs = [(mode, k) for mode in ctx.modes for k in (0, n)]

    def one(job):
        mode, k = job
        out = ctx.path(f"cg-{mode}-{k}", ".out")
        env = mode_env(ctx, mode)
        env["PYTHONHASHSEED"] = "0"        # the same start-up work at n=0 and n=N
        argv = [vg, "--tool=callgrind", f"--callgrind-out-file={out}",
                *mode_argv(ctx, mode, [wl, str(k)])]
        code, wall, _, so, se = run_child(argv, env, ctx.tmp, a.timeout)
        if code != 0:
            tail = [l for l in se.strip().splitlines() if l.strip() and not l.startswith("==")]
            return job, {"error": f"exit {code}: " + " | ".join(tail[-2:])}
        try:
            return job, parse_callgrind(out, CALLGRIND_FUNCS)
        except Exception as e:
            return job, {"error": str(e)}

    log(f"  callgrind: {len(jobs)} runs of the workload (n=0 and n={n:,}), 2 at a time")
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(pool.map(one, jobs))
    res = {"n": n, "workload": CALLGRIND_WORKLOAD, "modes": {}}
    for mode in ctx.modes:
        r0, r1 = done[(mode, 0)], done[(mode, n)]
        if "error" in r0 or "error" in r1:
            res["modes"][mode] = {"error": r0.get("error") or r1.get("error")}
            continue
        m = {"total": r1["total"], "total_n0": r0["total"],
             "workload": r1["total"] - r0["total"], "funcs": {}}
        for fn in CALLGRIND_FUNCS:
            dc = r1["calls"][fn] - r0["calls"][fn]
            di = r1["incl"][fn] - r0["incl"][fn]
            m["funcs"][fn] = {
                "calls": r1["calls"][fn], "incl": r1["incl"][fn],
                "calls_workload": dc, "incl_workload": di,
                "per_call_workload": di / dc if dc > 0 else None,
                "per_call_whole": r1["incl"][fn] / r1["calls"][fn] if r1["calls"][fn] else None,
                "into_tcalloc_workload": r1["into_tcalloc"][fn] - r0["into_tcalloc"][fn]}
        if mode == "tcalloc":
            # The hook must be underneath: the workload's mallocs go into tcalloc.
            got = m["funcs"]["PyObject_Malloc"]["into_tcalloc_workload"]
            if got < n:
                m["error"] = (f"VOID: {got} calls from PyObject_Malloc into tcalloc's objects "
                              f"in the workload, expected at least {n}")
        res["modes"][mode] = m
    return res


def part_pyperf_cg(ctx, names, calibrated):
    """Instructions per benchmark loop for every mode (see the module's doc,
    part 4). calibrated: {name: loops} already known (from part 1)."""
    import re
    import shutil
    from concurrent.futures import ThreadPoolExecutor
    a = ctx.a
    vg = shutil.which("valgrind")
    if not vg:
        return {"error": "valgrind not found (Debian package valgrind)"}
    root = bench_dir()
    res = {}
    jobs = []
    for name in names:
        entry, script, extra = bench_entry(root, name)
        entry["modes"] = {}
        res[name] = entry
        if "error" in entry:
            continue
        loops = calibrated.get(name)
        if not loops:
            loops, err = calibrate(ctx, name, script, extra)
            if err:
                entry["error"] = err
                continue
        # At least 3 loops: the slower benchmarks calibrate to 1, and one
        # loop's count differs from the next by several per cent (richards:
        # object addresses decide some dict and set orders); 3 average it.
        loops = max(loops, 3)
        entry["loops"] = loops
        jobs += [(name, mode, k) for mode in ctx.modes for k in (1, 1 + loops)]

    def one(job):
        name, mode, k = job
        e = res[name]
        # The two runs of a mode differ in nothing but the loop count, not
        # even in the length of an argument or a path: the environment and
        # the arguments sit on the stack, and where objects land decides some
        # dict and set orders, which move a benchmark's count.
        probe = ctx.path("cg", ".probe")
        env = mode_env(ctx, mode, {"kind": "script", "target": e["script"], "probe": probe})
        env["PYTHONHASHSEED"] = "0"        # the same start-up work in both runs
        argv = [vg, "--tool=callgrind", "--callgrind-out-file=/dev/null",
                *mode_argv(ctx, mode, [THIS, *e["args"], "--worker", "-l", f"{k:06d}",
                                       "-n", "1", "-w", "0", "-p", "1"])]
        code, _, _, _, se = run_child(argv, env, ctx.tmp, a.timeout)
        m = re.search(r"Collected : (\d+)", se)
        if code != 0 or not m:
            tail = [l for l in se.strip().splitlines() if l.strip() and not l.startswith("==")]
            return job, {"error": f"exit {code}: " + " | ".join(tail[-2:])}
        recs = read_probe(probe)
        bad = [x for x in (check_record(ctx, mode, r) for r in recs) if x]
        if len(recs) != 1 or bad:
            return job, {"error": "VOID: " + (bad[0] if bad else f"{len(recs)} probes, expected 1")}
        return job, {"instructions": int(m.group(1))}

    log(f"  pyperf-cg: {len(jobs)} callgrind runs of pyperf workers, 2 at a time")
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(pool.map(one, jobs))
    for name, e in res.items():
        if "error" in e:
            continue
        for mode in ctx.modes:
            r1, r2 = done[(name, mode, 1)], done[(name, mode, 1 + e["loops"])]
            if "error" in r1 or "error" in r2:
                e["modes"][mode] = {"error": r1.get("error") or r2.get("error")}
                continue
            e["modes"][mode] = {
                "per_loop": (r2["instructions"] - r1["instructions"]) / e["loops"],
                "one_loop_run": r1["instructions"]}
    return res


# ---- report -------------------------------------------------------------------

def fmt_time(s):
    if s is None:
        return "-"
    for unit, f in (("s", 1), ("ms", 1e3), ("us", 1e6), ("ns", 1e9)):
        if s * f >= 1:
            return f"{s * f:.3g} {unit}" if s * f < 100 else f"{s * f:.0f} {unit}"
    return f"{s * 1e9:.2f} ns"


def fmt_mib(kib):
    return "-" if kib is None else f"{kib / 1024:.1f} MiB"


def fmt_r(x):
    return "-" if x is None else f"{x:.2f}"


def ratio_stats(samples, mode, key, base="plain"):
    """Per round mode/base of `key`; returns (median, min, max, values)."""
    by = {}
    for s in samples:
        if "error" not in s and s.get(key) is not None:
            by.setdefault(s["round"], {})[s["mode"]] = s[key]
    rs = [d[mode] / d[base] for d in by.values() if mode in d and base in d and d[base]]
    if not rs:
        return None, None, None, []
    return median(rs), min(rs), max(rs), rs


def mode_median(samples, mode, key):
    return median([s[key] for s in samples if s["mode"] == mode and "error" not in s
                   and s.get(key) is not None])


def summarize_rows(rows):
    """rows: {name: (median ratio)} -> (median, max, argmax, n above 1.05)."""
    vals = {k: v for k, v in rows.items() if v is not None}
    if not vals:
        return None
    worst = max(vals, key=vals.get)
    return median(list(vals.values())), vals[worst], worst, sum(v > 1.05 for v in vals.values()), len(vals)


def report(data, table):
    out = []
    ctx_modes = data["meta"]["modes"]
    peers = [m for m in ctx_modes if m not in ("plain", "tcalloc")]
    has_tc = "tcalloc" in ctx_modes and "plain" in ctx_modes
    py = data.get("pyperf")
    if py:
        p, v, w = data["meta"]["pyperf_run"]
        out.append(f"pyperformance: pyperf, {p} worker processes x {v} values after {w} "
                   f"warm-up, loops fixed per benchmark; {data['meta']['rounds']} rounds, "
                   f"modes interleaved. Time: pyperf mean per round, median over rounds; "
                   f"ratio: median of per-round tcalloc/plain (min..max); peak RSS: largest "
                   f"worker's own VmHWM, median over rounds.")
        rows, tr = [], {}
        for name, e in py.items():
            if "error" in e:
                rows.append([name, "ERROR", e["error"][:60], "", "", "", ""])
                continue
            smp = e["samples"]
            pt, ht = mode_median(smp, "plain", "mean_s"), mode_median(smp, "tcalloc", "mean_s")
            med, lo, hi, _ = ratio_stats(smp, "tcalloc", "mean_s")
            pr, hr = mode_median(smp, "plain", "maxrss_kib"), mode_median(smp, "tcalloc",
                                                                          "maxrss_kib")
            rmed = ratio_stats(smp, "tcalloc", "maxrss_kib")[0]
            errs = sum("error" in s for s in smp)
            tr[name] = med
            rows.append([name + (f" ({errs} void)" if errs else ""), fmt_time(pt), fmt_time(ht),
                         "-" if med is None else f"{med:.3f} ({lo:.2f}..{hi:.2f})",
                         fmt_mib(pr), fmt_mib(hr), fmt_r(rmed)])
        if has_tc:
            out.append(table(["benchmark", "plain", "tcalloc", "ratio (min..max)",
                              "plain RSS", "tcalloc RSS", "RSS ratio"], rows, 22))
            sm = summarize_rows(tr)
            if sm:
                out.append(f"summary tcalloc/plain time: median {sm[0]:.3f}, max {sm[1]:.3f} "
                           f"({sm[2]}), {sm[3]} of {sm[4]} above 1.05")
        if peers:
            out.append("")
            out.append("peers, for context (ratio to plain, median over rounds): time | peak RSS")
            if CONTROL in peers:
                out.append(f"{CONTROL}: the plain interpreter again, in the same rounds: "
                           "its ratios are the noise floor of the others")
            rows = []
            sums = {}
            for name, e in py.items():
                if "error" in e:
                    continue
                row = [name]
                for m in (["tcalloc"] if has_tc else []) + peers:
                    t = ratio_stats(e["samples"], m, "mean_s")[0]
                    r = ratio_stats(e["samples"], m, "maxrss_kib")[0]
                    sums.setdefault(m, {})[name] = t
                    row.append(f"{fmt_r(t)} | {fmt_r(r)}")
                rows.append(row)
            cols = (["tcalloc"] if has_tc else []) + peers
            out.append(table(["benchmark", *cols], rows, 22))
            line = []
            for m in cols:
                sm = summarize_rows(sums.get(m, {}))
                if sm:
                    line.append(f"{m} median {sm[0]:.3f} max {sm[1]:.3f} >1.05: {sm[3]}/{sm[4]}")
            out.append("time ratio summary: " + "; ".join(line))
        if any("at_peak" in w for e in py.values() for s in e.get("samples", ())
               for w in s.get("probes", ())):
            out.append("")
            out.append(report_breakdown(py, ctx_modes, table))
        out.append("")
    pf = data.get("pyflakes")
    if pf:
        smp = pf["samples"]
        out.append(f"pyflakes over the standard library: {pf['files']} files "
                   f"({pf['bytes'] / 1e6:.1f} MB, tests excluded), whole process; "
                   f"{data['meta']['rounds']} rounds interleaved; output identical in every "
                   f"mode and round: {'yes' if pf['same_output'] else 'NO'}")
        rows = []
        for m in ctx_modes:
            t = mode_median(smp, m, "wall_s")
            r = mode_median(smp, m, "maxrss_kib")
            tm, tlo, thi, _ = ratio_stats(smp, m, "wall_s")
            rm = ratio_stats(smp, m, "maxrss_kib")[0]
            errs = sum("error" in s for s in smp if s["mode"] == m)
            rows.append([m + (f" ({errs} void)" if errs else ""), fmt_time(t),
                         "-" if tm is None else f"{tm:.3f} ({tlo:.2f}..{thi:.2f})",
                         fmt_mib(r), fmt_r(rm)])
        out.append(table(["mode", "time", "ratio (min..max)", "peak RSS", "RSS ratio"], rows, 12))
        out.append("")
    cg = data.get("callgrind")
    if cg:
        if "error" in cg:
            out.append(f"callgrind: {cg['error']}")
        else:
            out.append(f"callgrind: build and drop {cg['n']:,} tuples and {cg['n']:,} one-key "
                       f"dicts. total = whole process (M instructions); workload = total minus "
                       f"the same run at n=0; per call = inclusive instructions per call, "
                       f"workload only (n=N minus n=0), whole run in brackets")
            rows = []
            base = cg["modes"].get("plain", {})
            for m in ctx_modes:
                e = cg["modes"].get(m)
                if not e:
                    continue
                if "funcs" not in e:
                    rows.append([m, "ERROR " + e["error"][:70], "", "", "", "", ""])
                    continue
                fm, ff = e["funcs"]["PyObject_Malloc"], e["funcs"]["PyObject_Free"]
                wr = (e["workload"] / base["workload"]) if base.get("workload") else None
                rows.append([m + (" VOID" if "error" in e else ""),
                             f"{e['total'] / 1e6:.1f}", f"{e['workload'] / 1e6:.1f}",
                             fmt_r(wr),
                             f"{fm['calls_workload']:,}",
                             f"{fm['per_call_workload']:.1f} ({fm['per_call_whole']:.1f})",
                             f"{ff['per_call_workload']:.1f} ({ff['per_call_whole']:.1f})"])
            out.append(table(["mode", "total M", "workload M", "ratio", "malloc calls",
                              "PyObject_Malloc /call", "PyObject_Free /call"], rows, 12))
            for m, e in cg["modes"].items():
                if "error" in e:
                    out.append(f"  {m}: {e['error']}")
        out.append("")
    pc = data.get("pyperf_cg")
    if pc:
        if "error" in pc:
            out.append(f"pyperf-cg: {pc['error']}")
        else:
            out.append(report_pyperf_cg(pc, ctx_modes, table))
    return "\n".join(out)


def report_breakdown(py, modes, table):
    """--breakdown: per benchmark and mode, the largest worker of the median
    round (by its peak RSS), and what its allocators held at its highest RSS."""
    kib = lambda b: "-" if b is None else f"{b / 1024:,.0f}"
    rows, errs = [], set()
    for name, e in py.items():
        for m in [m for m in modes if m in ("plain", CONTROL, "tcalloc")]:
            ws = [max(s["probes"], key=lambda r: r["maxrss_kib"])
                  for s in e.get("samples", ()) if s["mode"] == m and "error" not in s]
            ws = [w for w in ws if "at_peak" in w]
            if not ws:
                continue
            w = sorted(ws, key=lambda r: r["maxrss_kib"])[len(ws) // 2]
            pk = w["at_peak"]
            pm, gl, tc = pk.get("pymalloc", {}), pk.get("glibc", {}), pk.get("tcalloc", {})
            errs.update(d["error"] for d in (pm, gl) if "error" in d)
            rows.append([name, m, f"{w['maxrss_kib']:,}", f"{pk['rss_kib']:,}",
                         kib(pm.get("used_bytes")), kib(pm.get("free_in_used_pools_bytes")),
                         kib(gl.get("used_bytes")), kib(gl.get("free_bytes")),
                         kib(tc.get("bytes_in_use")), kib(tc.get("thread_cache_free_bytes")),
                         kib(None if not tc else
                             tc["central_free_bytes"] + tc["transfer_cache_free_bytes"]),
                         kib(tc.get("page_heap_free_bytes"))])
    out = ["--breakdown (KiB): the largest worker of the median round; what its allocators "
           "held at the sample of its highest RSS (a thread reads it every 2 ms, so the "
           "timings above are not measurements): pymalloc's blocks in use and the free bytes "
           "of its used pools; glibc's in use and free (mallinfo2); tcalloc's bytes in use "
           "and its free bytes by where they sit (central counts objects of a span not yet "
           "carved, which are not resident)",
           table(["benchmark", "mode", "peak RSS", "sampled", "pymalloc used", "pymalloc free",
                  "glibc used", "glibc free", "tcalloc used", "thread cache", "central+transfer",
                  "free pages"], rows, 14)]
    out += [f"not read: {e}" for e in sorted(errs)]
    return "\n".join(out)


def report_pyperf_cg(pc, modes, table):
    """The pyperf-cg table: instructions per loop, each mode over plain."""
    others = [m for m in modes if m != "plain"]
    out = ["pyperformance under callgrind: instructions per benchmark loop (pyperf worker "
           "at 1 + L loops minus 1 loop, over L), each mode over plain; in brackets the "
           "whole 1-loop run (start-up included) over plain's. Instructions, not time."]
    rows, sums = [], {}
    for name, e in pc.items():
        if "error" in e:
            rows.append([name, "", "ERROR " + e["error"][:60]] + [""] * len(others))
            continue
        base = e["modes"].get("plain", {})
        if "per_loop" not in base:
            rows.append([name, f"{e['loops']}", "ERROR " + base.get("error", "no plain run")[:60]]
                        + [""] * len(others))
            continue
        row = [name, f"{e['loops']}", f"{base['per_loop'] / 1e6:.1f}"]
        for m in others:
            r = e["modes"].get(m, {})
            if "per_loop" not in r:
                row.append("ERROR " + r.get("error", "missing")[:40])
                continue
            ratio = r["per_loop"] / base["per_loop"]
            sums.setdefault(m, {})[name] = ratio
            row.append(f"{ratio:.3f} ({r['one_loop_run'] / base['one_loop_run']:.3f})")
        rows.append(row)
    out.append(table(["benchmark", "L", "plain M/loop", *others], rows, 22))
    line = []
    for m in others:
        sm = summarize_rows(sums.get(m, {}))
        if sm:
            line.append(f"{m} median {sm[0]:.3f}, max {sm[1]:.3f} ({sm[2]}), "
                        f"above 1.05: {sm[3]} of {sm[4]}")
    out.append("instructions per loop over plain's: " + "; ".join(line))
    return "\n".join(out)


# ---- command line -------------------------------------------------------------

def parse_args(argv):
    import argparse

    def names(kind, allowed):
        def parse(text):
            got = [s.strip() for s in text.split(",") if s.strip()]
            bad = [n for n in got if n not in allowed]
            if bad or not got:
                raise argparse.ArgumentTypeError(
                    f"unknown {kind} {', '.join(bad) or '(empty)'}; choose from "
                    f"{', '.join(allowed)}")
            return got
        return parse

    p = argparse.ArgumentParser(
        prog="python -m bench.interpreter",
        description="The interpreter on tcalloc (python -m tcalloc run) against the plain "
                    "interpreter: pyperformance, pyflakes over the stdlib, callgrind counts.")
    p.add_argument("--parts", type=names("part", PARTS), default=list(DEFAULT_PARTS),
                   help=f"comma-separated parts of {','.join(PARTS)} (default: "
                        f"{','.join(DEFAULT_PARTS)})")
    p.add_argument("--bench", type=names("benchmark", list(BENCHMARKS)), default=None,
                   help="comma-separated pyperformance benchmarks (default: "
                        f"{','.join(DEFAULT_BENCH)}; --quick: {','.join(QUICK_BENCH)}); "
                        f"known: {','.join(BENCHMARKS)}")
    p.add_argument("--modes", type=names("mode", MODES + (CONTROL,)), default=None,
                   help=f"comma-separated modes (default: every one found of {','.join(MODES)})")
    p.add_argument("--no-peers", action="store_true", help="only plain and tcalloc")
    p.add_argument("--control", action="store_true",
                   help=f"also run the plain interpreter a second time, as mode {CONTROL}: "
                        "its ratios to plain are the noise floor of the others")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved rounds per benchmark (default 5, --quick 1)")
    p.add_argument("--quick", action="store_true",
                   help="few benchmarks, one round, short pyperf runs, a stdlib subset, "
                        "callgrind at n=20k: a smoke test, not a measurement")
    p.add_argument("--timeout", type=float, default=900, help="seconds per child (default 900)")
    p.add_argument("--tcalloc-env", metavar="NAME=VALUE", action="append", default=[],
                   help="a TCALLOC_* setting for the tcalloc mode's children (repeatable); "
                        "every other TCALLOC_* variable is left out of every child")
    p.add_argument("--tcalloc-path", metavar="DIR",
                   help="put DIR first on the children's PYTHONPATH to import tcalloc from it "
                        "(default: this checkout if built in place, else the installed one)")
    p.add_argument("--breakdown", action="store_true",
                   help="pyperf part: a thread in each worker samples, at each new high of "
                        "its RSS, what pymalloc (3.10 and 3.11), glibc and tcalloc hold, and "
                        "a table shows the samples at the peaks (its timings are then not "
                        "measurements)")
    p.add_argument("--json", metavar="FILE", help="also write every sample to FILE as JSON")
    a = p.parse_args(argv)
    for kv in a.tcalloc_env:
        k, eq, _ = kv.partition("=")
        if not eq or not k.startswith("TCALLOC_"):
            p.error(f"--tcalloc-env {kv!r}: give NAME=VALUE with a TCALLOC_ name")
    a.tcalloc_settings = dict(kv.split("=", 1) for kv in a.tcalloc_env)   # the last of a name wins
    if a.rounds is None:
        a.rounds = 1 if a.quick else 5
    if a.rounds < 1:
        p.error("--rounds must be at least 1")
    if a.bench is None:
        a.bench = QUICK_BENCH if a.quick else DEFAULT_BENCH
    if a.json and not os.path.isdir(os.path.dirname(os.path.abspath(a.json))):
        p.error(f"--json: directory of {a.json} does not exist")
    return a


def main(argv=None):
    import tempfile
    import time
    a = parse_args(sys.argv[1:] if argv is None else argv)
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from bench.engine import find_libs, git_describe, machine_info, pkg_version, table, write_json
    from tcalloc.stress.peers import PEERS

    t_start = time.monotonic()
    info = machine_info()
    tc_root, tc_pkg, tc_err = locate_tcalloc(a.tcalloc_path)
    modes = list(a.modes or MODES)
    if a.no_peers:
        modes = [m for m in modes if m in ("plain", "tcalloc", CONTROL)]
    if a.control and CONTROL not in modes:
        modes.append(CONTROL)
    if "plain" not in modes:
        modes.insert(0, "plain")          # every figure is a ratio to it
    libs, missing = find_libs([m for m in PEER_MODES if m in modes])
    modes = [m for m in modes if m not in missing]
    if "tcalloc" in modes and tc_err:
        missing["tcalloc"] = f"cannot import tcalloc: {tc_err}"
        modes.remove("tcalloc")
    log(f"python {info['python']} ({sys.executable}), {info['cpus']} CPUs, "
        f"load average {info['loadavg_at_start']}")
    log(f"tcalloc: {tc_pkg or 'NOT FOUND'}" + (f" (git {git_describe(tc_pkg)})" if tc_pkg else ""))
    log("peers found:   " + (", ".join(f"{k}={v}" for k, v in libs.items()) or "none"))
    log("not measured:  " + (", ".join(f"{k} ({v})" for k, v in missing.items()) or "none"))
    log(f"modes: {', '.join(modes)}; rounds: {a.rounds}")
    srcs = [tc_pkg]
    for mod in ("pyperformance", "pyflakes"):
        try:
            srcs.append(os.path.dirname(__import__(mod).__file__))
        except Exception:
            pass
    compile_sources(srcs)
    log("bytecode: compiled ahead (as pip does) in " + ", ".join(s for s in srcs if s))

    versions = {}
    for mod in ("pyperf", "pyperformance", "pyflakes"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            versions[mod] = None
    data = {"meta": dict(info, modes=modes, rounds=a.rounds, quick=a.quick,
                         git=git_describe(REPO), tcalloc_package=tc_pkg,
                         tcalloc_git=git_describe(tc_pkg) if tc_pkg else None,
                         peers=libs, missing=missing, versions=versions,
                         peer_versions={m: pkg_version(PEERS[m][0]) for m in libs},
                         pyperf_run=PYPERF_RUN[a.quick], argv=sys.argv[1:],
                         tcalloc_env=a.tcalloc_env)}
    with tempfile.TemporaryDirectory(prefix="bench-interp-") as tmp:
        ctx = Ctx(a, tmp)
        ctx.tc_root, ctx.libs, ctx.modes = tc_root, libs, modes
        ctx.breakdown = pymalloc_symbols() if a.breakdown else None
        if "pyperf" in a.parts:
            if versions["pyperf"] is None or versions["pyperformance"] is None:
                data["pyperf_error"] = "pyperf and pyperformance are needed: pip install -e '.[bench]'"
                log(data["pyperf_error"])
            else:
                t0 = time.monotonic()
                data["pyperf"] = part_pyperf(ctx, a.bench)
                log(f"pyperformance took {time.monotonic() - t0:.0f} s")
        if "pyflakes" in a.parts:
            if versions["pyflakes"] is None:
                data["pyflakes_error"] = "pyflakes is needed: pip install -e '.[bench]'"
                log(data["pyflakes_error"])
            else:
                t0 = time.monotonic()
                data["pyflakes"] = part_pyflakes(ctx)
                log(f"pyflakes took {time.monotonic() - t0:.0f} s")
        if "callgrind" in a.parts:
            t0 = time.monotonic()
            data["callgrind"] = part_callgrind(ctx)
            log(f"callgrind took {time.monotonic() - t0:.0f} s")
        if "pyperf-cg" in a.parts:
            if versions["pyperf"] is None or versions["pyperformance"] is None:
                data["pyperf_cg_error"] = "pyperf and pyperformance are needed: pip install -e '.[bench]'"
                log(data["pyperf_cg_error"])
            else:
                t0 = time.monotonic()
                known = {n: e["loops"] for n, e in (data.get("pyperf") or {}).items()
                         if e.get("loops")}
                data["pyperf_cg"] = part_pyperf_cg(ctx, a.bench, known)
                log(f"pyperf-cg took {time.monotonic() - t0:.0f} s")
    data["meta"]["loadavg_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    data["meta"]["seconds"] = round(time.monotonic() - t_start)
    print(f"# python -m bench.interpreter {' '.join(sys.argv[1:])}".rstrip())
    print(f"# {info['date']}, repo {data['meta']['git']}, tcalloc {tc_pkg} "
          f"({data['meta']['tcalloc_git']}), python {info['python']}, {info['cpus']} CPUs, "
          f"load {info['loadavg_at_start']} -> {data['meta']['loadavg_at_end']}, "
          f"{data['meta']['seconds']} s")
    print(f"# modes: {', '.join(modes)}" + ("; not measured: " + "; ".join(
        f"{k}: {v}" for k, v in missing.items()) if missing else ""))
    print()
    print(report(data, table))
    write_json(a.json, data)
    return 0


if __name__ == "__main__":
    if os.environ.get(CHILD_ENV):
        child_main()
    else:
        try:
            sys.exit(main())
        except KeyboardInterrupt:
            sys.exit(130)
