"""The fuzz targets of tests/fuzz/, run for a bounded time each.

Each target runs in a child process under atheris (coverage-guided, libFuzzer
engine) for FUZZ_SECONDS (default 20 s; TC_FUZZ_SECONDS to change),
starting from its checked-in seed corpus (tests/fuzz/corpus/<target>/), and
the C-API target once more in debug mode (TCALLOC_DEBUG=1). A
crash, a Python exception or a model finding fails the test with the
target's report and the input that caused it, as hex; replay it with
``python tests/fuzz/fuzz_<target>.py FILE``. The longer run is documented in
docs/reliability.md.

The fault tests show that the targets' checks can fail: a damaged result
(a realloc that loses a byte of the prefix, a calloc block with a non-zero
byte, a pool whose figures drift) is reported from the seed corpus at once.
"""
import glob
import os
import shutil
import subprocess
import sys

import pytest

atheris = pytest.importorskip("atheris", reason="atheris has wheels for CPython 3.11+ on Linux x86-64")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ = os.path.join(ROOT, "tests", "fuzz")
SECONDS = int(os.environ.get("TC_FUZZ_SECONDS", "20"))
TARGETS = ("capi", "pyapi")


def _fuzz(target, tmp_path, seconds, fault=None, runs=None, debug=False):
    work = tmp_path / "corpus"
    work.mkdir()
    art = tmp_path / "artifacts"
    art.mkdir()
    env = dict(os.environ)
    env.pop("TCALLOC_DEBUG", None)
    env.pop("TCALLOC_MEMORY_LIMIT", None)
    if fault:
        env["TC_FUZZ_FAULT"] = fault
    if debug:
        env["TCALLOC_DEBUG"] = "1"
    cmd = [sys.executable, os.path.join(FUZZ, f"fuzz_{target}.py"),
           f"-max_total_time={seconds}", "-rss_limit_mb=4096", "-timeout=60",
           "-print_final_stats=1", f"-artifact_prefix={art}{os.sep}", "-seed=1",
           str(work), os.path.join(FUZZ, "corpus", target)]
    if runs:
        cmd.insert(2, f"-runs={runs}")
    # One stream: atheris prints a Python exception's traceback to stdout,
    # libFuzzer its report to stderr.
    p = subprocess.run(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=seconds + 120)
    found = sorted(glob.glob(str(art / "*")))
    return p, found


def _report(p, found):
    out = [f"exit status {p.returncode}", p.stdout[-6000:]]
    for f in found:
        with open(f, "rb") as fh:
            out.append(f"input {os.path.basename(f)}: {fh.read().hex()}")
    return "\n".join(out)


def _executed(p):
    for line in p.stdout.splitlines():
        if line.startswith("stat::number_of_executed_units:"):
            return int(line.split(":")[-1])
    return 0


@pytest.mark.parametrize("target, debug", [("capi", False), ("pyapi", False), ("capi", True)],
                         ids=["capi", "pyapi", "capi-debug-mode"])
def test_fuzz_target_finds_nothing(target, debug, tmp_path):
    # capi-debug-mode: the same target with TCALLOC_DEBUG=1 (checked frees,
    # poisoning), whose paths differ from the normal ones.
    p, found = _fuzz(target, tmp_path, SECONDS, debug=debug)
    assert p.returncode == 0 and not found, _report(p, found)
    # It ran: the seed corpus and then mutated inputs, not just a start-up.
    assert _executed(p) > len(os.listdir(os.path.join(FUZZ, "corpus", target))), p.stdout[-3000:]


@pytest.mark.parametrize("target, fault, message", [
    ("capi", "realloc_prefix", "bytes not kept"),
    ("capi", "calloc_dirty", "not zeroed"),
    ("pyapi", "pool_leak", "figures"),
])
def test_fuzz_target_reports_a_damaged_result(target, fault, message, tmp_path):
    p, found = _fuzz(target, tmp_path, 60, fault=fault)
    assert p.returncode != 0 and found, _report(p, found)
    assert "Finding: " in p.stdout and message in p.stdout, p.stdout[-3000:]


def test_seed_corpus_is_small_and_replays_clean(tmp_path):
    # The checked-in inputs stay small, and each replays without a finding
    # (libFuzzer runs the files given, once, and exits).
    for target in TARGETS:
        files = sorted(glob.glob(os.path.join(FUZZ, "corpus", target, "*")))
        assert files and all(os.path.getsize(f) <= 256 for f in files), files
        p = subprocess.run([sys.executable, os.path.join(FUZZ, f"fuzz_{target}.py"), *files],
                           cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=120)
        assert p.returncode == 0, p.stdout[-3000:]
