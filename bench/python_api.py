"""Allocation cost seen from Python, and the cost of the interpreter hook.

    python -m bench.python_api [--quick] [--no-hook]

Part 1: ns per allocate+free of one block from Python code, for 64 B, 4 KiB,
64 KiB, 1 MiB and 8 MiB: tcalloc.alloc, BufferPool.acquire + release,
bytearray, numpy.empty, pyarrow.allocate_buffer with its mimalloc, jemalloc
and system pools (each only if installed). Each figure is the best of several
timeit repeats of a loop calling the allocator and dropping the object.
Note that bytearray(n) zero-fills its block; the others do not touch it.

Part 2: run time of the same programs with the default allocator and under
`python -m tcalloc run` (every domain in tcalloc): a pure-Python workload
and CPython's regression tests for the core types. Best of a few runs each.
"""
import os
import subprocess
import sys
import time
import timeit

SIZES = [(64, "64 B"), (4096, "4 KiB"), (65536, "64 KiB"), (1 << 20, "1 MiB"), (8 << 20, "8 MiB")]
REGRTESTS = ["test_list", "test_dict", "test_set", "test_tuple", "test_bytes", "test_string",
             "test_memoryview", "test_collections", "test_json"]
WORKLOAD = r'''
import json, random
random.seed(1)
def work():
    d = {}
    for i in range(200000):
        k = "k%d" % (i % 5000)
        d.setdefault(k, []).append((i, str(i), [i] * 3))
    out = json.dumps({k: len(v) for k, v in d.items()})
    s = sorted(("x" * (i % 50) + str(i) for i in range(100000)), key=len)
    objs = [{"a": i, "b": [i, i + 1], "c": str(i)} for i in range(100000)]
    t = [tuple(o.values()) for o in objs]
    return len(out) + len(s) + len(t)
for _ in range(3):
    work()
'''


def allocators():
    import tcalloc
    found = [("tcalloc.alloc", lambda n: tcalloc.alloc), ]
    pool_cache = {}

    def pool_for(n):
        pool = pool_cache.setdefault(n, tcalloc.BufferPool(n))
        acquire = pool.acquire

        def f(n, _a=acquire):
            _a().release()
        return f
    found.append(("BufferPool.acquire", pool_for))
    found.append(("bytearray", lambda n: bytearray))
    try:
        import numpy as np

        def np_empty(n):
            e, u8 = np.empty, np.uint8
            return lambda n, _e=e, _t=u8: _e(n, _t)
        found.append(("numpy.empty", np_empty))
    except ImportError:
        pass
    try:
        import pyarrow as pa
        for name in ("mimalloc", "jemalloc", "system"):
            try:
                pool = getattr(pa, f"{name}_memory_pool")()
            except (AttributeError, NotImplementedError, pa.ArrowException):
                continue

            def mk(n, _pool=pool):
                ab = pa.allocate_buffer
                return lambda n, _ab=ab, _p=_pool: _ab(n, memory_pool=_p)
            found.append((f"pyarrow {name}", mk))
    except ImportError:
        pass
    return found


def time_alloc(make, n, number, repeat):
    fn = make(n)
    t = timeit.Timer("f(n)", globals={"f": fn, "n": n})
    return min(t.repeat(repeat=repeat, number=number)) / number * 1e9


def part1(quick):
    rows = []
    allocs = allocators()
    for _, make in allocs:           # warm caches and code paths before timing
        time_alloc(make, 64, 2000, 1)
    for name, make in allocs:
        row = [name]
        for n, _ in SIZES:
            number = 20000 if n < (1 << 20) else 2000
            if name == "bytearray" and n >= (1 << 20):
                number = 200       # zero-fills every block
            if quick:
                number = max(100, number // 10)
            row.append(time_alloc(make, n, number, 3 if quick else 7))
        rows.append(row)
    print("ns per allocate+free from Python (best of repeats; lower is better)")
    head = f"{'allocator':<22}" + "".join(f"{label:>11}" for _, label in SIZES)
    print(head)
    print("-" * len(head))
    for row in rows:
        print(f"{row[0]:<22}" + "".join(f"{v:>11.0f}" for v in row[1:]))
    tc = rows[0]
    others = [r for r in rows if r[0] not in ("tcalloc.alloc", "BufferPool.acquire")]
    print()
    for i, (_, label) in enumerate(SIZES, 1):
        best = min(others, key=lambda r: r[i])
        print(f"{label:>7}: tcalloc.alloc {tc[i]:.0f} ns vs fastest non-tcalloc ({best[0]}) "
              f"{best[i]:.0f} ns -> {tc[i] / best[i]:.2f}x")
    return rows


def _run_time(cmd, env, runs):
    best = None
    for _ in range(runs):
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        dt = time.perf_counter() - t0
        if r.returncode != 0:
            raise RuntimeError(f"{cmd} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
        best = dt if best is None else min(best, dt)
    return best


def part2(quick):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(WORKLOAD)
        script = f.name
    runs = 2 if quick else 5
    cases = [("pure-Python workload", [script])]
    r = subprocess.run([sys.executable, "-m", "test", "--list-tests"], capture_output=True,
                       text=True)
    have = set(r.stdout.split()) if r.returncode == 0 else set()
    tests = [t for t in REGRTESTS if t in have]
    if tests:
        cases.append((f"regrtest ({len(tests)} modules)", ["-m", "test", "-q", *tests]))
    print("\ninterpreter hook: run time, default allocator vs python -m tcalloc run "
          f"(best of {runs})")
    print(f"{'program':<28}{'default s':>11}{'hooked s':>11}{'ratio':>8}")
    out = []
    try:
        for name, args in cases:
            # Interleave so drifting machine load hits both sides alike.
            d = h = None
            for _ in range(runs):
                td = _run_time([sys.executable, *args], env, 1)
                th = _run_time([sys.executable, "-m", "tcalloc", "run", *args], env, 1)
                d = td if d is None else min(d, td)
                h = th if h is None else min(h, th)
            print(f"{name:<28}{d:>11.2f}{h:>11.2f}{h / d:>8.2f}")
            out.append((name, d, h))
    finally:
        os.unlink(script)
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    bad = [a for a in argv if a not in ("--quick", "--no-hook")]
    if bad:
        sys.stderr.write(f"usage: python -m bench.python_api [--quick] [--no-hook]\n")
        return 2
    quick = "--quick" in argv
    print(f"python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.2f}")
    part1(quick)
    if "--no-hook" not in argv:
        part2(quick)
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
