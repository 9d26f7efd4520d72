"""The sanitizer leg: ThreadSanitizer and AddressSanitizer builds of the engine.

tests/sanitizers/sanbuild.py compiles tcalloc._engine, tcalloc.buffer,
tcalloc.stress._workloads and the test modules tct_native, tct_components
with -fsanitize=thread or -fsanitize=address and the engine's internal
invariants on (TCALLOC_ASSERTS=1; cached under build/sanitizers by a hash
of the sources and flags); a child interpreter, itself
uninstrumented, runs them with the sanitizer runtime in LD_PRELOAD
(tests/sanitizers/workload.py: cross-thread frees, thread exit, fork while
threads allocate, stats() and release_free_memory() against running
threads, budget stealing, the releaser's restart flag, the transfer and
central lists of a private engine, the stress lab's workloads). Any
ThreadSanitizer warning not in tests/sanitizers/tsan.supp, or any
AddressSanitizer error, or a broken invariant, fails the test. A control
run of a deliberate race and a deliberate overflow in the same instrumented
build shows each sanitizer is live, and a deliberately broken transfer
cache that the invariant checks are.

TCALLOC_SANITIZER_SCALE multiplies the workloads' iteration counts (default
1, the reduced set of the default suite; see docs/reliability.md).
"""
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
# Loaded by path: a module named on sys.path could be shadowed by an installed one.
_spec = importlib.util.spec_from_file_location("tcalloc_sanbuild", os.path.join(HERE, "sanitizers", "sanbuild.py"))
sanbuild = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sanbuild)

WORKLOAD = os.path.join(HERE, "sanitizers", "workload.py")
SCALE = os.environ.get("TCALLOC_SANITIZER_SCALE", "1")
KINDS = ("tsan", "asan")
REPORT = {"tsan": re.compile(r"WARNING: ThreadSanitizer: (.*)"),
          "asan": re.compile(r"ERROR: AddressSanitizer: (\S+)")}
# The workload module's names (imported here only as text: importing it
# would import the uninstrumented tcalloc into this process).
with open(WORKLOAD) as f:
    WORKLOAD_NAMES = re.search(r"WORKLOADS = \{f.__name__: f for f in \(([^)]*)\)", f.read()).group(1)
WORKLOAD_NAMES = [w.strip() for w in WORKLOAD_NAMES.split(",") if w.strip()]


@pytest.fixture(scope="module", params=KINDS)
def tree(request):
    kind = request.param
    if sanbuild.runtime(kind) is None:
        pytest.skip("%s runtime not installed (%s/%s)"
                    % (kind, sanbuild.GCC_LIB, sanbuild.SANITIZERS[kind]["runtime"]))
    return kind, sanbuild.build(kind)[kind]


def _run(kind, path, args, timeout=900):
    return subprocess.run([sys.executable, *args], env=sanbuild.child_env(kind, path),
                          capture_output=True, text=True, timeout=timeout, cwd=path)


def _reports(kind, stderr):
    return REPORT[kind].findall(stderr)


def test_control_bug_is_caught(tree):
    """The instrumented build reports a deliberate bug of its kind: the
    sanitizer is live in the child, so a clean workload run means something."""
    kind, path = tree
    control = "race" if kind == "tsan" else "overflow"
    r = _run(kind, path, ["-c", "import tct_native; tct_native.sanitizer_control(%r)" % control])
    found = _reports(kind, r.stderr)
    want = "data race" if kind == "tsan" else "heap-buffer-overflow"
    assert any(want in f for f in found), (r.returncode, r.stderr[-3000:])
    assert r.returncode == 66, r.stderr[-3000:]      # the exit code sanbuild.child_env sets for a report


def test_internal_invariants_are_checked(tree):
    """The instrumented build checks the engine's TC_ASSERTs: a transfer
    cache with a slot count past its capacity aborts, naming the invariant.
    So the clean workload run below also means no invariant broke."""
    kind, path = tree
    r = _run(kind, path, ["-c", "import tct_components as c; e = c.PrivateEngine(); "
                                "e.invariant_control(e.class_of(64))"])
    assert "tcalloc: internal invariant broken: transfer cache: slot count out of range" in r.stderr, (
        r.returncode, r.stderr[-3000:])
    assert r.returncode == -signal.SIGABRT, (r.returncode, r.stderr[-3000:])


def test_native_workloads_have_no_reports(tree):
    kind, path = tree
    r = _run(kind, path, [WORKLOAD, kind, SCALE])
    log = os.path.join(sanbuild.CACHE, "%s-workloads.log" % kind)
    with open(log, "w") as f:        # the whole report, for whoever reads a failure
        f.write(r.stdout + "\n" + r.stderr)
    found = _reports(kind, r.stderr)
    assert not found, "%d %s reports (all in %s), first: %s\n%s" % (
        len(found), kind, log, found[0], r.stderr[-12000:])
    assert r.returncode == 0, r.stderr[-6000:]
    engine = re.search(r"^ENGINE (.*)$", r.stdout, re.M)
    assert engine and engine.group(1).startswith(path), r.stdout   # the instrumented engine ran
    runtime = re.search(r"^RUNTIME (.*)$", r.stdout, re.M)
    assert runtime and os.path.basename(sanbuild.runtime(kind)) in runtime.group(1), r.stdout
    results = {}
    for line in re.findall(r"^RESULT (.*)$", r.stdout, re.M):
        d = json.loads(line)
        results[d.pop("name")] = d
    assert sorted(results) == sorted(WORKLOAD_NAMES), r.stdout
    for name, d in results.items():
        for key in ("corrupt", "failed", "lost", "misaligned", "fork_failures", "create_errors"):
            assert d.get(key, 0) == 0, (name, d)
    assert results["fork_while_allocating"]["forks_ok"] > 0
    assert results["workers_with_readers"]["ops"] > 0
