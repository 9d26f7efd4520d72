"""Sampled heap profiles: the engine's sampling (which blocks, their stacks,
their frees), the profiles built on it and their formats, the setting and
python -m tcalloc run --heap-profile."""
import ctypes
import gzip
import json
import os
import subprocess
import sys
import textwrap
import threading
import xml.etree.ElementTree as ET

import pytest

import tcalloc
from tcalloc import _config, _engine

RATE = 8 << 10     # small, so a few MiB give hundreds of samples (each costs a page)

# The sampler reads the allocating thread's Python frames on CPython 3.10-3.13
# only (tcalloc/engine/sampler.pxi); elsewhere a sample keeps its native
# stack, and the tests that find their sites by Python frame cannot run.
needs_python_frames = pytest.mark.skipif(
    sys.implementation.name != "cpython" or not (3, 10) <= sys.version_info[:2] <= (3, 13),
    reason="samples keep Python frames only on CPython 3.10-3.13 (tcalloc/engine/sampler.pxi); "
    "on %s.%s they keep native stacks only" % sys.version_info[:2])


@pytest.fixture(autouse=True)
def sampling_off_after():
    yield
    tcalloc.set_sample_rate(0)


def site_line(path, tag):
    """The line of the file at path holding the comment `# site:<tag>`."""
    with open(path) as f:
        for i, text in enumerate(f, 1):
            if text.rstrip().endswith("# site:" + tag):
                return i
    raise AssertionError(tag)


def _line(tag):
    return site_line(__file__, tag)


def comp(func):
    """The frame a list comprehension in func allocates from: one of its own
    before Python 3.12, named by the code's name alone on 3.10 (code objects
    have no qualified name there), and func's own from 3.12 (PEP 709
    inlines it)."""
    if sys.version_info < (3, 11):
        return "<listcomp>"
    return func + ".<locals>.<listcomp>" if sys.version_info < (3, 12) else func


def _site(s):
    """The function of this file a sample's innermost Python frame is in (a
    comprehension's frame counts as its function's)."""
    stack = s.python_stack
    if (len(stack) > 1 and stack[0].function in ("<listcomp>", "<genexpr>")
            and stack[1].file == stack[0].file):
        stack = stack[1:]       # 3.10 names it by its code alone (see comp)
    f = stack[0] if stack else None
    return f.function.split(".<locals>")[0] if f and f.file == __file__ else None


def _bytes_at(prof, func):
    """Estimated bytes of the samples made in func."""
    return sum(s.bytes for s in prof.samples if _site(s) == func)


def _identity_holds():
    st = tcalloc.stats()
    return st["bytes_in_use"] + st["page_heap_free_bytes"] + st["page_heap_released_bytes"] + \
        st["central_free_bytes"] + st["transfer_cache_free_bytes"] + \
        st["thread_cache_free_bytes"] + st["span_overhead_bytes"] == st["heap_bytes"]


def test_rate_setting_is_validated():
    for bad in ("1M", 1.5, True, None):
        with pytest.raises(TypeError, match="sample rate must be an int"):
            tcalloc.set_sample_rate(bad)
    for bad in (-1, 2 ** 62):
        with pytest.raises(ValueError, match="between 0"):
            tcalloc.set_sample_rate(bad)
    with pytest.raises(TypeError, match="seed"):
        tcalloc.set_sample_rate(4096, seed="x")
    tcalloc.set_sample_rate(123456, seed=1)
    assert tcalloc.get_sample_rate() == 123456
    assert _config.read({"TCALLOC_SAMPLE_RATE": "2M"}) == {"TCALLOC_SAMPLE_RATE": 2 << 20}
    with pytest.raises(ValueError, match="TCALLOC_SAMPLE_RATE"):
        _config.read({"TCALLOC_SAMPLE_RATE": "lots"})


def test_off_by_default_and_on_from_the_environment():
    code = ("import tcalloc; bufs = [tcalloc.alloc(1000) for _ in range(5000)]; "
            "print(tcalloc.get_sample_rate(), len(tcalloc.heap_profile().samples))")
    env = dict(os.environ)
    env.pop("TCALLOC_SAMPLE_RATE", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["0", "0"]
    env["TCALLOC_SAMPLE_RATE"] = "64k"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == "65536" and 40 < int(out[1]) < 130     # 5 MB / 64 KiB: ~76 expected


def _small_site(n):
    return [tcalloc.alloc(100) for _ in range(n)]  # site:small


def _medium_site(n):
    return [tcalloc.alloc(4000) for _ in range(n)]  # site:medium


def _large_site(n):
    return [tcalloc.alloc(300 << 10) for _ in range(n)]  # site:large


@needs_python_frames
def test_estimates_per_site_with_a_fixed_seed():
    tcalloc.set_sample_rate(RATE, seed=20261202)
    small, medium, large = _small_site(20000), _medium_site(500), _large_site(8)
    prof = tcalloc.heap_profile()
    # 2 MB at each of the first two sites: ~240 samples each, so the
    # estimate's standard deviation is ~6.5 %; 25 % is almost 4 of them.
    assert _bytes_at(prof, "_small_site") == pytest.approx(20000 * 100, rel=0.25)
    assert _bytes_at(prof, "_medium_site") == pytest.approx(500 * 4000, rel=0.25)
    # 300 KiB at 8 KiB: every block is sampled (p = 1 - exp(-37.5)).
    assert _bytes_at(prof, "_large_site") == pytest.approx(8 * (300 << 10), rel=1e-6)
    site = [s for s in prof.samples if _site(s) == "_small_site"]
    assert site and all(s.size == 100 for s in site)
    top = site[0].python_stack
    assert (top[0].file, top[0].line) == (__file__, _line("small"))
    want = ["_small_site", "test_estimates_per_site_with_a_fixed_seed"]
    if comp("_small_site") != "_small_site":
        want.insert(0, comp("_small_site"))
    assert [f.function for f in top[:len(want)]] == want
    assert _identity_holds()
    del small, medium, large


@needs_python_frames
def test_freed_blocks_leave_the_heap_profile():
    tcalloc.set_sample_rate(RATE, seed=7)
    bufs = _small_site(20000)
    assert _bytes_at(tcalloc.heap_profile(), "_small_site") > 0
    for b in bufs:
        b.release()
    del bufs
    assert _bytes_at(tcalloc.heap_profile(), "_small_site") == 0
    assert _identity_holds()


@needs_python_frames
def test_sampling_off_takes_no_new_samples():
    tcalloc.set_sample_rate(0)
    bufs = _small_site(20000)
    assert _bytes_at(tcalloc.heap_profile(), "_small_site") == 0
    del bufs


def _capsule_worker(capi, n, out):
    out.extend(capi.malloc(256) for _ in range(n))  # site:capsule


@needs_python_frames
def test_threads_calling_the_capsule_without_the_gil(capi):
    """ctypes releases the GIL around each call: the Python frames are read
    from the thread's own state without it, and the native ones name ctypes."""
    tcalloc.set_sample_rate(RATE, seed=3)
    outs = [[] for _ in range(3)]
    threads = [threading.Thread(target=_capsule_worker, args=(capi, 8000, o)) for o in outs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    prof = tcalloc.heap_profile()
    site = [s for s in prof.samples if _site(s) == "_capsule_worker"]
    assert sum(s.bytes for s in site) == pytest.approx(3 * 8000 * 256, rel=0.25)
    assert all(s.python_stack[0].line == _line("capsule") for s in site)
    assert any("ctypes" in f.file or "ffi" in f.file for f in site[0].stack if f.line == 0)
    for o in outs:
        for p in o:
            capi.free(p)
    assert not [s for s in tcalloc.heap_profile().samples if _site(s) == "_capsule_worker"]


def _native_worker(native, n, size, out):
    out.append(native.hold_chain(n, size))  # site:native


def _run_native_threads(native, nthreads, n, size):
    heads = []
    threads = [threading.Thread(target=_native_worker, args=(native, n, size, heads))
               for _ in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return heads


@needs_python_frames
def test_c_callers_on_threads_are_sampled_with_their_own_frame():
    """A C function calling the capsule's malloc in a loop, on 4 threads
    without the GIL: estimates per site, and the stack names the C function
    (innermost) and then the Python line that called into it."""
    import tct_native
    tcalloc.set_sample_rate(RATE, seed=13)
    heads = _run_native_threads(tct_native, 4, 4000, 128)
    prof = tcalloc.heap_profile()
    site = [s for s in prof.samples if _site(s) == "_native_worker"]
    # 2 MB: ~250 samples, a standard deviation of ~6.5 %.
    assert sum(s.bytes for s in site) == pytest.approx(4 * 4000 * 128, rel=0.25)
    assert site and all(s.size == 128 for s in site)
    for s in site:
        assert s.stack[0].function.startswith("tn_hold_chain+0x")
        assert s.stack[0].file.endswith(".so") and s.stack[0].line == 0
        py = s.stack.index(s.python_stack[0])
        assert (s.stack[py].function, s.stack[py].line) == ("_native_worker", _line("native"))
        assert all(f.line == 0 for f in s.stack[:py])       # native frames come first
    for h in heads:
        tct_native.free_chain(h)
    assert not [s for s in tcalloc.heap_profile().samples if _site(s) == "_native_worker"]


def _big_buffers(n):
    return [tcalloc.alloc(64 << 10) for _ in range(n)]  # site:big


@needs_python_frames
def test_default_rate_estimates_with_a_fixed_seed():
    """At the default 2 MiB: 128 MiB at a Python site and 128 MiB from C on
    two threads, ~64 samples each (a standard deviation of ~12.5 %; the
    benchmark, bench/heapprof.py, shows 1 GiB within 10 %). The seed fixes
    the draws; two threads doing the same work give the same sum whichever
    of them draws first."""
    import tct_native
    from tcalloc.heapprof import DEFAULT_SAMPLE_RATE
    tcalloc.set_sample_rate(DEFAULT_SAMPLE_RATE, seed=2026)
    bufs = _big_buffers(2048)
    heads = _run_native_threads(tct_native, 2, 65536, 1024)
    prof = tcalloc.heap_profile()
    assert prof.rate == DEFAULT_SAMPLE_RATE
    assert _bytes_at(prof, "_big_buffers") == pytest.approx(128 << 20, rel=0.4)
    assert _bytes_at(prof, "_native_worker") == pytest.approx(128 << 20, rel=0.4)
    for h in heads:
        tct_native.free_chain(h)
    del bufs


@needs_python_frames
def test_peak_profile_keeps_what_was_live_at_the_peak():
    tcalloc.set_sample_rate(RATE, seed=11)
    tcalloc.reset_peaks()
    big = _large_site(64)            # 19 MiB: the new peak
    del big
    small = _small_site(2000)
    peak = tcalloc.peak_heap_profile()
    assert _bytes_at(peak, "_large_site") == pytest.approx(64 * (300 << 10), rel=1e-6)
    assert _bytes_at(tcalloc.heap_profile(), "_large_site") == 0
    tcalloc.reset_peaks()
    assert _bytes_at(tcalloc.peak_heap_profile(), "_large_site") == 0
    del small


@needs_python_frames
def test_allocation_profile_sees_freed_blocks_with_lifetimes():
    assert tcalloc.get_sample_rate() == 0
    with tcalloc.allocation_profile(rate=RATE) as prof:
        assert tcalloc.get_sample_rate() == RATE
        gone = _small_site(20000)
        del gone
        kept = _medium_site(500)
    assert tcalloc.get_sample_rate() == 0         # restored
    small = [s for s in prof.samples if _site(s) == "_small_site"]
    medium = [s for s in prof.samples if _site(s) == "_medium_site"]
    assert sum(s.bytes for s in small) == pytest.approx(2e6, rel=0.25)
    assert small and all(s.lifetime is not None and s.lifetime >= 0 for s in small)
    assert medium and all(s.lifetime is None for s in medium)
    assert prof.duration > 0
    for tag in ("small", "medium"):
        assert "(%s:%d)" % (__file__, _line(tag)) in prof.top(5)
    del kept


def test_allocation_profile_checks_its_rate():
    with pytest.raises(ValueError, match="rate"):
        tcalloc.allocation_profile(rate=0)
    for bad in ("2M", 1.5, True):
        with pytest.raises(TypeError, match="rate"):
            tcalloc.allocation_profile(rate=bad)


def test_a_refused_allocation_profile_rate_leaves_nothing_to_restore(monkeypatch):
    # 2**62 is past what set_sample_rate takes. Refused when __enter__ had
    # already saved the rate to restore (0), it made the next block that
    # changed nothing "restore" sampling to off.
    with pytest.raises(ValueError, match="rate"):
        with tcalloc.allocation_profile(rate=2 ** 62):
            pass
    tcalloc.set_sample_rate(1 << 20)
    with tcalloc.allocation_profile():
        assert tcalloc.get_sample_rate() == 1 << 20
    assert tcalloc.get_sample_rate() == 1 << 20
    # The same when setting the rate fails for any other reason.
    tcalloc.set_sample_rate(0)

    def refuse(*args, **kw):
        raise MemoryError("no memory for the sampler")
    with monkeypatch.context() as m:
        m.setattr(_engine, "set_sample_rate", refuse)
        with pytest.raises(MemoryError):
            with tcalloc.allocation_profile(rate=RATE):
                pass
    tcalloc.set_sample_rate(1 << 20)
    with tcalloc.allocation_profile():
        pass
    assert tcalloc.get_sample_rate() == 1 << 20
    with tcalloc.allocation_profile(rate=2 ** 62 - 1) as prof:     # the largest taken
        assert tcalloc.get_sample_rate() == 2 ** 62 - 1
    assert tcalloc.get_sample_rate() == 1 << 20 and prof.rate == 2 ** 62 - 1


def test_a_profile_gives_the_rate_its_samples_were_taken_at(tmp_path):
    """Sampling turned off (or changed) after the samples were taken: the
    profile, its table and its pprof period still say the rate they were
    taken at (their weights tell it), not the rate when it was read. In a
    child: the samples other tests leave live would be in the profile."""
    code = textwrap.dedent("""
        import json, sys, tcalloc
        out = {}
        tcalloc.set_sample_rate(64 << 10, seed=1)
        keep = [tcalloc.alloc(4096) for _ in range(5000)]
        tcalloc.set_sample_rate(0)
        prof = tcalloc.heap_profile()
        prof.write(sys.argv[1])
        out["off"] = [prof.rate, len(prof.samples), prof.top(1).splitlines()[0]]
        tcalloc.set_sample_rate(12345, seed=2)     # more samples, at another rate
        more = [tcalloc.alloc(1000) for _ in range(10000)]
        prof = tcalloc.heap_profile()
        out["mixed"] = [prof.rate, len(prof.samples), prof.top(1).splitlines()[0]]
        del keep, more
        tcalloc.set_sample_rate(0)
        prof = tcalloc.heap_profile()
        out["empty"] = [prof.rate, len(prof.samples), prof.top(1).splitlines()[0]]
        print(json.dumps(out))
        """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TCALLOC_")}
    path = tmp_path / "off.pb.gz"
    r = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    rate, n, header = out["off"]
    assert n > 100 and rate == 64 << 10, out
    assert header.endswith("sampling every 64.0 KiB"), header
    assert _decode(gzip.decompress(path.read_bytes()))[12] == [64 << 10]      # pprof's period
    rate, n_mixed, header = out["mixed"]
    assert rate == 12345 and n_mixed > n, out           # 10 MB at 12 KiB: ~800 samples
    assert header.endswith("sampling every 12.1 KiB (%d samples taken at other rates)" % n), header
    assert out["empty"] == [0, 0, "heap profile: 0 samples, ~0 bytes estimated, sampling off"]


@needs_python_frames
def test_allocation_profiles_that_overlap_keep_sampling_until_the_last_closes():
    # Two blocks (as two threads would open them) that close in the order
    # they opened: the first to close must not turn sampling off under the
    # other, which still sees what is allocated after; the last puts the
    # rate back.
    assert tcalloc.get_sample_rate() == 0
    a = tcalloc.allocation_profile(rate=RATE)
    b = tcalloc.allocation_profile()
    pa = a.__enter__()
    pb = b.__enter__()
    a.__exit__(None, None, None)
    assert tcalloc.get_sample_rate() == RATE
    gone = _small_site(20000)
    del gone
    b.__exit__(None, None, None)
    assert tcalloc.get_sample_rate() == 0
    assert sum(s.bytes for s in pb.samples if _site(s) == "_small_site") == pytest.approx(2e6, rel=0.25)
    assert not [s for s in pa.samples if _site(s) == "_small_site"]


# ---- formats ------------------------------------------------------------------------

def _varint(buf, i):
    """The varint at buf[i]: (value, index after it)."""
    n = shift = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return n, i


def _decode(buf):
    """A protobuf message as {field: [values]} (varints as ints, the rest bytes)."""
    out, i = {}, 0
    while i < len(buf):
        key, i = _varint(buf, i)
        if key & 7 == 0:
            val, i = _varint(buf, i)
        else:
            assert key & 7 == 2, "unexpected wire type"
            n, i = _varint(buf, i)
            val, i = buf[i:i + n], i + n
        out.setdefault(key >> 3, []).append(val)
    return out


def _packed(buf):
    vals, i = [], 0
    while i < len(buf):
        n, i = _varint(buf, i)
        vals.append(n)
    return vals


@pytest.fixture
def profile():
    tcalloc.set_sample_rate(RATE, seed=5)
    keep = _small_site(5000), _large_site(2)
    yield tcalloc.heap_profile()
    del keep


@needs_python_frames
def test_pprof_decodes_as_profile_proto(profile):
    msg = _decode(gzip.decompress(profile.pprof()))
    strings = [s.decode() for s in msg[6]]
    assert strings[0] == ""
    types = [(strings[_decode(t)[1][0]], strings[_decode(t)[2][0]]) for t in msg[1]]
    assert types == [("inuse_objects", "count"), ("inuse_space", "bytes")]
    assert msg[12] == [RATE]
    functions = {f[1][0]: (strings[f[2][0]], strings[f[4][0]]) for f in map(_decode, msg[5])}
    locations = {}
    for loc in map(_decode, msg[4]):
        line = _decode(loc[4][0])
        locations[loc[1][0]] = (functions[line[1][0]], line.get(2, [0])[0])
    total = 0
    leaf_sites = set()
    for s in map(_decode, msg[2]):
        ids, vals = _packed(s[1][0]), _packed(s[2][0])
        total += vals[1]
        leaf_sites.add(locations[ids[0]])
    assert total == pytest.approx(profile.total_bytes, rel=1e-3)
    assert ((comp("_small_site"), __file__), _line("small")) in leaf_sites
    assert ((comp("_large_site"), __file__), _line("large")) in leaf_sites


def _read_pprof(data):
    """A pprof file as (sample types, {stack: summed values}, default type,
    {function name: system name}); a stack is a tuple of (function, file,
    line), innermost first."""
    msg = _decode(gzip.decompress(data))
    strings = [s.decode() for s in msg[6]]
    types = [strings[_decode(t)[1][0]] for t in msg[1]]
    functions = {}
    system = {}
    for f in map(_decode, msg[5]):
        name = strings[f[2][0]]
        functions[f[1][0]] = (name, strings[f[4][0]])
        system[name] = strings[f[3][0]] if 3 in f else None
    locations = {}
    for loc in map(_decode, msg[4]):
        line = _decode(loc[4][0])
        locations[loc[1][0]] = functions[line[1][0]] + (line.get(2, [0])[0],)
    stacks = {}
    for s in map(_decode, msg[2]):
        key = tuple(locations[i] for i in _packed(s[1][0]))
        vals = _packed(s[2][0])
        old = stacks.get(key, [0] * len(vals))
        stacks[key] = [a + b for a, b in zip(old, vals)]
    default = strings[msg[14][0]] if 14 in msg else types[-1]   # pprof's default: the last
    return types, stacks, default, system


def _exact_per_stack(prof, live_only=False):
    """{stack: (estimated count, estimated bytes)} summed over prof's samples."""
    out = {}
    for s in prof.samples:
        if live_only and s.lifetime is not None:
            continue
        key = tuple((f.function, f.file, f.line) for f in s.stack)
        c, b = out.get(key, (0.0, 0.0))
        out[key] = (c + s.count, b + s.bytes)
    return out


def _rate_sized(n):
    return [tcalloc.alloc(RATE) for _ in range(n)]  # site:rate


@needs_python_frames
def test_pprof_values_per_stack_are_the_samples_sums():
    """A block of `rate` bytes is sampled with p = 1 - 1/e and stands for
    1.58 blocks: pprof's integer counts per stack must still add up to the
    samples' estimate, not to 2 per sample."""
    tcalloc.set_sample_rate(RATE, seed=17)
    keep = _rate_sized(300), _small_site(3000)
    prof = tcalloc.heap_profile()
    types, stacks, _, _ = _read_pprof(prof.pprof())
    assert types == ["inuse_objects", "inuse_space"]
    exact = _exact_per_stack(prof)
    assert set(stacks) == set(exact)
    for key, (c, b) in exact.items():
        assert stacks[key] == [round(c), round(b)], key
    rate_site = [k for k in exact if k[0][2] == _line("rate")]
    assert rate_site and exact[rate_site[0]][0] > 100
    del keep


def test_pprof_allocation_profile_defaults_to_everything_allocated():
    """pprof shows the default sample type first: for an allocation profile
    that is alloc_space, what top() shows, freed or not."""
    with tcalloc.allocation_profile(rate=RATE) as prof:
        gone = _small_site(5000)
        del gone
        kept = _medium_site(200)
    types, stacks, default, _ = _read_pprof(prof.pprof())
    assert types == ["alloc_objects", "alloc_space", "inuse_objects", "inuse_space"]
    assert default == "alloc_space"
    exact, live = _exact_per_stack(prof), _exact_per_stack(prof, live_only=True)
    for key, (c, b) in exact.items():
        lc, lb = live.get(key, (0.0, 0.0))
        assert stacks[key] == [round(c), round(b), round(lc), round(lb)], key
    del kept


@needs_python_frames
def test_pprof_python_names_are_not_system_names(profile):
    """pprof demangles a function whose name equals its system (linker) name,
    and strips <...> from what looks like C++: <module>, <lambda> and
    <listcomp> would lose their names. Python frames carry no system name;
    native ones carry their symbol."""
    _, stacks, _, system = _read_pprof(profile.pprof())
    py_names = {f[0] for key in stacks for f in key if f[2]}
    assert "<module>" in py_names or any("<" in n for n in py_names)
    for n in py_names:
        assert system[n] is None, n


@needs_python_frames
def test_collapsed_and_flamegraph(profile, tmp_path):
    lines = profile.collapsed().splitlines()
    assert lines and all(line.rsplit(" ", 1)[1].isdigit() for line in lines)
    assert any(";%s (%s:%d) " % (comp("_small_site"), __file__, _line("small")) in line
               for line in lines)
    path = tmp_path / "flame.svg"
    profile.flamegraph(str(path))
    root = ET.parse(path).getroot()        # well-formed XML
    titles = [t.text for t in root.iter("{http://www.w3.org/2000/svg}title")]
    assert any(t.startswith(comp("_small_site") + " (") for t in titles)
    profile.write(str(tmp_path / "p.txt"))
    assert "(%s:%d)" % (__file__, _line("small")) in (tmp_path / "p.txt").read_text()


@needs_python_frames
def test_run_heap_profile_writes_the_end_and_the_peak(tmp_path):
    prog = tmp_path / "prog.py"
    prog.write_text("def build():\n    return [(i, str(i)) for i in range(200000)]\n"
                    "def scratch():\n    return [{'k': i} for i in range(100000)]\n"
                    "keep = build()\nx = scratch()\ndel x\n")
    out = tmp_path / "heap.txt"
    r = subprocess.run([sys.executable, "-m", "tcalloc", "run", "--heap-profile", str(out),
                        str(prog)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    end, peak = out.read_text(), (tmp_path / "heap.peak.txt").read_text()
    assert "%s (%s:2)" % (comp("build"), prog) in end
    site = "%s (%s:4)" % (comp("scratch"), prog)
    assert site in peak

    units = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}

    def site_bytes(text):             # the table's rows: "18.3 MiB  42.3% ... site"
        rows = [line.split() for line in text.splitlines() if line.rstrip().endswith(site)]
        return sum(float(r[0]) * units[r[1]] for r in rows)
    assert site_bytes(peak) > 1 << 20
    # Freed before the end, but for the few dicts CPython keeps on its own
    # free list (never given back to the allocator): a sample may be one.
    assert site_bytes(end) * 20 <= site_bytes(peak), (end, peak)


@pytest.mark.parametrize("how", ["script", "-m", "-c"])
def test_run_heap_profile_stacks_start_at_the_program(tmp_path, how):
    # Not at the launcher: runpy's frames and run's own (python -m tcalloc)
    # were the root of every stack, five to eight levels of each flame graph.
    (tmp_path / "progmod.py").write_text("def build():\n"
                                         "    return [bytearray(100000) for _ in range(200)]\n"
                                         "keep = build()\n")
    target = {"script": [str(tmp_path / "progmod.py")], "-m": ["-m", "progmod"],
              "-c": ["-c", "import progmod"]}[how]
    out = tmp_path / "heap.collapsed"
    r = subprocess.run([sys.executable, "-m", "tcalloc", "run", "--heap-profile", str(out),
                        *target], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    stacks = [line.rsplit(" ", 1)[0].split(";") for line in out.read_text().splitlines()]
    mine = [s for s in stacks if any("progmod.py:2" in f for f in s)]
    assert mine, stacks
    for s in mine:
        assert "runpy" not in s[0] and "__main__.py" not in s[0], s
        root = "<module> (<string>:1)" if how == "-c" else "<module> (%s:3)" % (
            tmp_path / "progmod.py")
        assert s[0] == root, s


def test_debug_mode_threads_without_caches_are_sampled():
    code = ("import tcalloc; assert tcalloc.debug_enabled(); "
            "b = [tcalloc.alloc(1000) for _ in range(5000)]; "
            "print(len(tcalloc.heap_profile().samples))")
    env = dict(os.environ, TCALLOC_DEBUG="1", TCALLOC_SAMPLE_RATE="64k")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert 40 < int(out) < 130
