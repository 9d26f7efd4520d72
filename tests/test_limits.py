"""Memory limits and running out of memory.

Every scenario runs in a fresh interpreter: limits are process-wide, RSS is
a process figure, and RLIMIT_AS cannot be lifted once lowered. RSS (psutil)
is compared with generous slack: the interpreter itself allocates a little
(through the C library, not tcalloc) between the measurements.
"""
import json
import os
import subprocess
import sys
import textwrap

import tcalloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(tcalloc.__file__)))
MiB = 1 << 20

PRELUDE = """
import errno, json, os, psutil, resource, tcalloc
import tct_native as tn
MiB = 1 << 20
proc = psutil.Process()
def rss():
    return proc.memory_info().rss
def committed():
    s = tcalloc.stats()
    return s["heap_bytes"] - s["page_heap_released_bytes"]
"""


def run_py(code, *, timeout=120):
    e = dict(os.environ)
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    for k in ("TCALLOC_DEBUG", "TCALLOC_MEMORY_LIMIT", "TCALLOC_MEMORY_LIMIT_HARD", "TCALLOC_RELEASE_RATE"):
        e.pop(k, None)
    # Release off: freed memory stays backed until a limit releases it, so
    # each scenario sees the limit's work alone (test_release.py tests the
    # release on free and in the background).
    e["TCALLOC_RELEASE_RATE"] = "0"
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], env=e,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, "child failed (rc %s):\n%s\n%s" % (proc.returncode, proc.stdout, proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_hard_limit_large_blocks_enomem_never_passed_and_recovers():
    r = run_py("""
        tcalloc.set_memory_limit(64 * MiB, hard=True)
        assert tcalloc.get_memory_limit() == (64 * MiB, True)
        base_rss = rss()
        ptrs, peak, err = [], 0, None
        for i in range(200):
            p = tn.malloc(MiB)
            if p == 0:
                err = tn.last_errno()
                break
            tn.fill(p, MiB, i)           # every page resident
            ptrs.append(p)
            peak = max(peak, committed())
        rss_full = rss()
        ok = all(tn.check(p, MiB, i) for i, p in enumerate(ptrs))
        # still refused while full, small or large
        refused = tn.malloc(4 * MiB) == 0 and tn.last_errno() == errno.ENOMEM
        # free half: the same amount can be had again
        half = len(ptrs) // 2
        for p in ptrs[:half]:
            tn.free(p)
        again = [tn.malloc(MiB) for _ in range(half)]
        again_ok = all(again)
        for p in again + ptrs[half:]:
            tn.free(p)
        peak = max(peak, committed())
        tcalloc.set_memory_limit(0)
        big = tn.malloc(128 * MiB)
        tn.free(big)
        print(json.dumps(dict(n=len(ptrs), err=err, peak=peak, ok=ok, refused=refused,
                              again_ok=again_ok, big=big != 0, rss_growth=rss_full - base_rss)))
    """)
    assert r["err"] == 12, "allocation past a hard limit must fail with ENOMEM, got %r" % r
    assert 40 <= r["n"] <= 64, r
    assert r["peak"] <= 64 * MiB, "heap passed the hard limit: %r" % r
    # RSS follows: the heap cannot hold more than the limit resident.
    assert r["rss_growth"] <= 64 * MiB + 16 * MiB, r
    assert r["ok"] and r["refused"] and r["again_ok"] and r["big"], r


def test_hard_limit_small_blocks_and_recovery():
    # The small-object path: spans come from the page heap, and blocks parked
    # in caches must not make the allocator fail earlier than the limit says.
    r = run_py("""
        tcalloc.set_memory_limit(32 * MiB, hard=True)
        res = tn.exhaust(4000, 20000, verify=True, release=True)
        res.pop("held")
        res["committed_after"] = committed()
        print(json.dumps(res))
    """)
    assert r["errno"] == 12, r
    # 32 MiB of 4000-byte blocks (class 4096 with span tails): at least 6000.
    assert r["blocks"] >= 6000, r
    assert r["corrupt"] == 0, r
    assert r["again"] == r["blocks"], "after freeing, the same blocks could not be had again: %r" % r
    assert r["committed_after"] <= 32 * MiB, r


def test_hard_limit_python_api_raises_memoryerror():
    r = run_py("""
        tcalloc.set_memory_limit(32 * MiB, hard=True)
        keep = [tcalloc.alloc(MiB) for _ in range(8)]
        try:
            tcalloc.alloc(64 * MiB)
            raised = False
        except MemoryError:
            raised = True
        keep.clear()
        b = tcalloc.alloc(16 * MiB)
        b.release()
        print(json.dumps(dict(raised=raised, peak=committed())))
    """)
    assert r["raised"], "tcalloc.alloc past a hard limit must raise MemoryError"
    assert r["peak"] <= 32 * MiB


def test_soft_limit_releases_free_memory_before_growing():
    # 40 MiB is allocated, touched and freed: it stays in the page heap,
    # resident. Then one 50 MiB block is asked for, which the free 40 MiB
    # cannot hold. Without a limit the heap grows by 50 MiB and keeps the
    # 40 MiB resident (the control: RSS +90 MiB). Under a soft 48 MiB limit
    # the free 40 MiB is released to the OS first; the allocation still
    # succeeds (soft), and RSS grows by only about the 50 MiB in use.
    code = """
        limit = %s
        if limit:
            tcalloc.set_memory_limit(limit, hard=False)
        base = rss()
        ptrs = [tn.malloc(MiB) for _ in range(40)]
        for p in ptrs:
            tn.touch(p, MiB)
        for p in ptrs:
            tn.free(p)
        s0 = tcalloc.stats()
        big = tn.malloc(50 * MiB)
        assert big, "a soft limit must not make allocations fail"
        tn.touch(big, 50 * MiB)
        s1 = tcalloc.stats()
        growth = rss() - base
        more = tn.malloc(100 * MiB)      # past the soft limit: still fine
        ok = more != 0
        tn.free(more); tn.free(big)
        print(json.dumps(dict(growth=growth, committed=s1["heap_bytes"] - s1["page_heap_released_bytes"],
                              released=s1["page_heap_released_bytes"] - s0["page_heap_released_bytes"],
                              ok=ok)))
    """
    control = run_py(code % "0")
    limited = run_py(code % "48 * MiB")
    assert control["growth"] >= 85 * MiB, control      # the scenario does keep 40 MiB free
    assert limited["ok"] and control["ok"]
    assert limited["released"] >= 39 * MiB, limited
    assert limited["committed"] <= 52 * MiB, limited
    assert limited["growth"] <= 70 * MiB, (limited, control)


def test_lowering_a_limit_releases_free_memory_now():
    r = run_py("""
        ptrs = [tn.malloc(MiB) for _ in range(64)]
        for p in ptrs:
            tn.touch(p, MiB)
        for p in ptrs:
            tn.free(p)
        before_c, before_rss = committed(), rss()
        tcalloc.set_memory_limit(8 * MiB)
        after_c, after_rss = committed(), rss()
        print(json.dumps(dict(before_c=before_c, after_c=after_c, drop=before_rss - after_rss)))
    """)
    assert r["before_c"] >= 64 * MiB, r
    assert r["after_c"] <= 8 * MiB, r
    assert r["drop"] >= 48 * MiB, r


def _rlimit_code(first_small):
    return """
        # Address space: what the process has now plus 384 MiB for tcalloc.
        vms = proc.memory_info().vms
        resource.setrlimit(resource.RLIMIT_AS, (vms + 384 * MiB, vms + 384 * MiB))
        if %s:
            res = tn.exhaust(4096, 1, verify=True, release=True,
                             small_size=1000, max_small=2000000)
        else:
            res = tn.exhaust(MiB, 4000, verify=True, release=True,
                             small_size=3000, max_small=2000000)
        res.pop("held")
        # the allocator still works, and so does the interpreter
        p = tn.malloc(MiB); q = tn.malloc(100)
        res["works"] = bool(p and q)
        tn.free(p); tn.free(q)
        print(json.dumps(res))
    """ % first_small


def test_out_of_address_space_large_then_small():
    # Large blocks until mmap fails, then small ones until even the last
    # scraps are gone: NULL + ENOMEM each time, no crash, nothing corrupt,
    # and after freeing everything the same blocks can be had again.
    r = run_py(_rlimit_code(False))
    assert 0 < r["blocks"] < 4000, r
    assert r["errno"] == 12, r
    assert r["small_errno"] == 12, r
    assert r["corrupt"] == 0, r
    assert r["again"] == r["blocks"], r
    assert r["small_again"] >= r["small_blocks"] * 0.9, r
    assert r["works"], r


def test_out_of_address_space_small_blocks_only():
    # Small blocks only: span allocation, page-heap growth and metadata
    # (spans, pagemap nodes) all run out along the way.
    r = run_py(_rlimit_code(True))
    assert r["small_blocks"] > 10000, r
    assert r["small_errno"] == 12, r
    assert r["corrupt"] == 0, r
    assert r["small_again"] >= r["small_blocks"] * 0.9, r
    assert r["works"], r


def test_no_limit_reads_as_none_and_bad_limits_are_refused():
    r = run_py("""
        assert tcalloc.get_memory_limit() is None
        tcalloc.set_memory_limit(64 * MiB)
        assert tcalloc.get_memory_limit() == (64 * MiB, False)
        tcalloc.set_memory_limit(None)
        assert tcalloc.get_memory_limit() is None
        for bad, err in [(True, TypeError), (1.5, TypeError), ("1G", TypeError),
                         (-1, ValueError), (2 ** 64, ValueError)]:
            try:
                tcalloc.set_memory_limit(bad)
            except err:
                pass
            else:
                raise AssertionError("accepted %r" % (bad,))
        assert tcalloc.get_memory_limit() is None
        print(json.dumps("ok"))
    """)
    assert r == "ok"


def test_alignment_slack_does_not_count_against_the_hard_limit():
    # alloc(100, alignment=1 GiB) under a 512 MiB hard limit: the slack cut
    # off to align the block is given back at once (still released), so only
    # the block's own pages are committed, and the peak says the same.
    r = run_py("""
        tcalloc.set_memory_limit(512 * MiB, hard=True)
        tcalloc.reset_peaks()
        b = tcalloc.alloc(100, alignment=1 << 30)
        assert b.address % (1 << 30) == 0
        c = committed()
        peak = tcalloc.stats()["peak_heap_bytes"]
        del b
        print(json.dumps(dict(committed=c, peak=peak)))
    """)
    assert r["committed"] < 8 * MiB, r
    assert r["peak"] < 8 * MiB, r


# ---- the settings' environment variables (tcalloc/_config.py) ------------------------

def _import_with(env_extra):
    """`python -W error -c "import tcalloc"` with only these TCALLOC_* set:
    any warning at import fails it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TCALLOC_")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra)
    return subprocess.run([sys.executable, "-W", "error", "-c", "import tcalloc"], env=env,
                          capture_output=True, text=True, timeout=120)


def test_build_and_test_suite_variables_do_not_warn_at_import():
    # TCALLOC_ASSERTS is a build variable (README, Debugging; setup.py),
    # TCALLOC_SANITIZER_SCALE and TCALLOC_SAN_CC the sanitizer tests'
    # (tests/test_sanitizers.py, tests/sanitizers/sanbuild.py): set in a
    # shell that builds or tests, they reach every process that imports tcalloc.
    for name, value in (("TCALLOC_ASSERTS", "1"), ("TCALLOC_SANITIZER_SCALE", "4"),
                        ("TCALLOC_SAN_CC", "gcc")):
        r = _import_with({name: value})
        assert r.returncode == 0 and not r.stderr, (name, r.stderr)
    r = _import_with({"TCALLOC_MEMROY_LIMIT": "1G"})       # a typo still warns
    assert r.returncode != 0 and "unknown environment variable TCALLOC_MEMROY_LIMIT" in r.stderr


def test_sizes_of_thousands_of_digits_are_read_or_refused_naming_the_variable():
    # Past 4300 digits Python's int() refuses the text, in an error that
    # names neither the variable nor its value.
    from tcalloc import _config
    nines = "9" * 5000
    try:
        _config.read({"TCALLOC_RELEASE_RATE": nines})
    except ValueError as e:
        msg = str(e)
    else:
        raise AssertionError("accepted %d nines" % len(nines))
    assert msg.startswith("TCALLOC_RELEASE_RATE='999") and "more than" in msg, msg[:300]
    assert "5000 characters" in msg and len(msg) < 200, msg[:300]
    # A long fraction is still a size: rounded down to whole bytes, as documented.
    assert _config.read({"TCALLOC_RELEASE_RATE": "0." + nines + "k"}) == \
        {"TCALLOC_RELEASE_RATE": 1023}
    assert _config.read({"TCALLOC_RELEASE_RATE": "0" * 5000 + "1.5k"}) == \
        {"TCALLOC_RELEASE_RATE": 1536}
    try:
        _config.read({"TCALLOC_SAMPLE_RATE": "0." + "0" * 5000 + "1k"})
    except ValueError as e:
        assert str(e).startswith("TCALLOC_SAMPLE_RATE='0.000") and "less than a byte" in str(e)
    else:
        raise AssertionError("accepted less than a byte")
    # At import, the same error stops it.
    r = _import_with({"TCALLOC_RELEASE_RATE": nines})
    assert r.returncode == 1, r.stderr
    assert "ValueError: TCALLOC_RELEASE_RATE='999" in r.stderr, r.stderr[-500:]
    assert "integer string conversion" not in r.stderr, r.stderr[-500:]
