"""tcalloc's pprof files read by Google's pprof, an independent reader: the
sample types and units, the estimated counts and bytes per stack (against
Profile.samples), the Python frames' functions, files and lines and the
native frames, for heap_profile(), peak_heap_profile(), allocation_profile()
and python -m tcalloc run --heap-profile. docs/heap-profiling.md says how to
build pprof on Debian without the network."""
import re
import shutil
import subprocess
import sys
import threading

import pytest

import tcalloc

# The standalone pprof, or the copy Go ships as `go tool pprof`.
PPROF = [shutil.which("pprof")] if shutil.which("pprof") else \
    [shutil.which("go"), "tool", "pprof"] if shutil.which("go") else None
pytestmark = pytest.mark.skipif(
    PPROF is None, reason="neither pprof nor go is on PATH (docs/heap-profiling.md, "
    "'Reading the pprof files': apt-get install golang-go golang-github-google-pprof-dev, then go build)")

RATE = 8 << 10
# Shared with the heap profile tests: the CPython versions whose samples keep
# Python frames, sampling off after each test, and the `# site:` lines.
from test_heapprof import comp, needs_python_frames, sampling_off_after, site_line  # noqa: E402,F401


def _line(tag):
    return site_line(__file__, tag)


def _pprof(*args):
    r = subprocess.run([*PPROF, *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    # A profile whose locations are all symbolized gets no warning.
    assert "not available" not in r.stderr, r.stderr
    return r.stdout


_LOC = re.compile(r"^\s*(\d+): 0x[0-9a-f]+ (?:M=\d+ )?(\S*) (.+):(\d+) s=\d+(?:\(.*\))?$")


def _raw(path):
    """pprof -raw, parsed: (header lines, sample types, [(location ids,
    values, labels text)], {location id: (function, file, line)})."""
    lines = _pprof("-raw", str(path)).splitlines()
    i = lines.index("Samples:")
    header, types = lines[:i], lines[i + 1].split()
    samples, locations = [], {}
    j = i + 2
    while lines[j] != "Locations":
        vals, _, ids = lines[j].partition(":")
        labels = ""
        if j + 1 < len(lines) and lines[j + 1].startswith(" " * 16):
            labels = lines[j + 1].strip()
            j += 1
        samples.append(([int(x) for x in ids.split()], [int(x) for x in vals.split()], labels))
        j += 1
    for text in lines[j + 1:lines.index("Mappings")]:
        m = _LOC.match(text)
        assert m, text
        locations[int(m[1])] = (m[2], m[3], int(m[4]))
    return header, types, samples, locations


def _per_stack(raw):
    """{stack of (function, file, line), innermost first: summed values}."""
    _, _, samples, locations = raw
    out = {}
    for ids, vals, _ in samples:
        key = tuple(locations[i] for i in ids)
        old = out.get(key, [0] * len(vals))
        out[key] = [a + b for a, b in zip(old, vals)]
    return out


def _expected(prof, alloc=False):
    """Profile.samples summed per stack, rounded as integers are in pprof:
    [count, bytes] (with the live part after them for an allocation profile)."""
    out = {}
    for s in prof.samples:
        key = tuple((f.function, f.file, f.line) for f in s.stack)
        vals = [s.count, s.bytes]
        if alloc:
            vals += [s.count, s.bytes] if s.lifetime is None else [0.0, 0.0]
        old = out.get(key, [0.0] * len(vals))
        out[key] = [a + b for a, b in zip(old, vals)]
    return {k: [round(v) for v in vals] for k, vals in out.items()}


def _small_site(n):
    return [tcalloc.alloc(100) for _ in range(n)]  # site:small


def _rate_site(n):
    return [tcalloc.alloc(RATE) for _ in range(n)]  # site:rate


def _native_worker(native, n, size, out):
    out.append(native.hold_chain(n, size))  # site:native


def _module_level_lambda():
    return _lambda(3000)


_lambda = lambda n: [tcalloc.alloc(200) for _ in range(n)]  # site:lambda


@needs_python_frames
def test_heap_profile_read_by_pprof(tmp_path):
    """Types, units, period and every stack's estimated count and bytes as
    pprof reads them, equal to the profile's own samples; Python frames with
    their function, file and line, native frames with their symbol and
    object file, innermost first."""
    import tct_native
    tcalloc.set_sample_rate(RATE, seed=21)
    keep = _small_site(5000), _rate_site(100), _module_level_lambda()
    heads = []
    t = threading.Thread(target=_native_worker, args=(tct_native, 4000, 128, heads))
    t.start()
    t.join()
    prof = tcalloc.heap_profile()
    path = tmp_path / "heap.pb.gz"
    prof.write(str(path))
    raw = _raw(path)
    header, types, samples, locations = raw
    assert "PeriodType: space bytes" in header and "Period: %d" % RATE in header
    assert types == ["inuse_objects/count", "inuse_space/bytes[dflt]"]
    # (pprof merges samples with the same stack and labels on reading.)
    sizes = {(tuple(locations[i] for i in ids), labels) for ids, _, labels in samples}
    assert sizes == {(tuple((f.function, f.file, f.line) for f in s.stack), "bytes:[%d]" % s.size)
                     for s in prof.samples}
    stacks = _per_stack(raw)
    assert stacks == _expected(prof)

    leaves = {key[0] for key in stacks}
    assert (comp("_small_site"), __file__, _line("small")) in leaves
    assert (comp("_rate_site"), __file__, _line("rate")) in leaves
    # A name in angle brackets keeps it (pprof strips <...> from C++ names).
    assert ("<lambda>", __file__, _line("lambda")) in {f for key in stacks for f in key}
    native = [key for key in stacks if key[0][0].startswith("tn_hold_chain+0x")]
    assert native
    for key in native:
        assert key[0][1] == tct_native.__file__ and key[0][2] == 0
        py = [f for f in key if f[2]]
        assert py[0] == ("_native_worker", __file__, _line("native"))
        assert key.index(py[0]) > 0 and all(f[2] == 0 for f in key[:key.index(py[0])])

    # -top: the flat bytes and counts of each innermost function.
    for index, col in (("inuse_space", 1), ("inuse_objects", 0)):
        top = _pprof("-top", "-nodefraction=0", "-nodecount=1000", "-unit=B",
                     "-sample_index=" + index, str(path))
        flat = {}
        for text in top.splitlines():
            m = re.match(r"^\s*(\d+)B?\s+[\d.]+%\s+[\d.]+%\s+\d+B?\s+[\d.]+%\s+(\S+)$", text)
            if m and int(m[1]):
                flat[m[2]] = int(m[1])
        want = {}
        for key, vals in stacks.items():
            want[key[0][0]] = want.get(key[0][0], 0) + vals[col]
        assert flat == {k: v for k, v in want.items() if v}
    # -traces: one stack per sample, innermost first, with its size label.
    traces = _pprof("-traces", str(path))
    caller = "_small_site" if comp("_small_site") != "_small_site" else "test_heap_profile_read_by_pprof"
    assert re.search(r"bytes:\s+100B\n.*\s%s\n\s+%s\n" % (re.escape(comp("_small_site")), caller), traces)
    for h in heads:
        tct_native.free_chain(h)
    del keep


@needs_python_frames
def test_peak_profile_read_by_pprof(tmp_path):
    tcalloc.set_sample_rate(RATE, seed=23)
    tcalloc.reset_peaks()
    big = _rate_site(400)
    del big
    small = _small_site(500)
    prof = tcalloc.peak_heap_profile()
    path = tmp_path / "peak.pb.gz"
    prof.write(str(path))
    stacks = _per_stack(_raw(path))
    assert stacks == _expected(prof)
    rate = sum(v[1] for k, v in stacks.items() if k[0][2] == _line("rate"))
    assert rate == pytest.approx(400 * RATE, rel=0.25)
    del small


def test_allocation_profile_read_by_pprof(tmp_path):
    """Four types (alloc_* first and the default, as top() counts freed
    blocks too), the live part only for blocks still held, and each freed
    block's lifetime as a label in nanoseconds."""
    with tcalloc.allocation_profile(rate=RATE) as prof:
        gone = _small_site(5000)
        del gone
        kept = _rate_site(50)
    path = tmp_path / "alloc.pb.gz"
    prof.write(str(path))
    raw = _raw(path)
    header, types, samples, _ = raw
    assert types == ["alloc_objects/count", "alloc_space/bytes[dflt]", "inuse_objects/count",
                     "inuse_space/bytes"]
    assert any(h.startswith("Duration: ") for h in header)
    assert _per_stack(raw) == _expected(prof, alloc=True)
    lifetimes = sorted(int(m) for _, _, labels in samples
                       for m in re.findall(r"lifetime:\[(\d+) nanoseconds\]", labels))
    assert lifetimes == sorted(int(s.lifetime * 1e9) for s in prof.samples if s.lifetime is not None)
    assert lifetimes
    top = _pprof("-top", "-unit=B", str(path))
    assert "Type: alloc_space" in top
    total = int(re.search(r"of (\d+)B total", top)[1])
    assert total == sum(v[1] for v in _expected(prof, alloc=True).values())
    del kept


@needs_python_frames
def test_run_heap_profile_files_read_by_pprof(tmp_path):
    prog = tmp_path / "prog.py"
    prog.write_text("def build():\n    return [(i, str(i)) for i in range(200000)]\n"
                    "def scratch():\n    return [{'k': i} for i in range(100000)]\n"
                    "keep = build()\nx = scratch()\ndel x\n")
    out = tmp_path / "heap.pb.gz"
    r = subprocess.run([sys.executable, "-m", "tcalloc", "run", "--heap-profile", str(out),
                        str(prog)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    end = _pprof("-top", "-lines", "-nodefraction=0", str(out))
    peak = _pprof("-top", "-lines", "-nodefraction=0", str(tmp_path / "heap.peak.pb.gz"))
    assert "%s %s:2" % (comp("build"), prog) in end
    assert "<module> %s:5" % prog in end
    assert "scratch" not in end
    assert "%s %s:4" % (comp("scratch"), prog) in peak
