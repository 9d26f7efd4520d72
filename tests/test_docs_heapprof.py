"""docs/heap-profiling.md: every example runs as written. Its `python` blocks
are fed to `python -`, its `sh` blocks to bash, in order, in one scratch
directory; a `python` block starting with `# file: NAME` is written to NAME
there instead; `text` blocks (output) are not run. The examples assert what
they claim."""
import os
import re
import subprocess
import sys

import pytest

# The examples find their sites by Python frames, which samples keep on
# CPython 3.10-3.13 only (docs/heap-profiling.md, Limits).
pytestmark = pytest.mark.skipif(
    sys.implementation.name != "cpython" or not (3, 10) <= sys.version_info[:2] <= (3, 13),
    reason="samples keep Python frames on CPython 3.10-3.13 only")

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                   "heap-profiling.md")


def _blocks():
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    return re.findall(r"^```(\w+)\n(.*?)^```$", text, flags=re.S | re.M)


def test_the_doc_has_examples_of_every_kind():
    kinds = [k for k, _ in _blocks()]
    assert kinds.count("python") >= 5 and kinds.count("sh") >= 2 and "text" in kinds
    assert set(kinds) <= {"python", "sh", "text"}


def test_every_example_runs(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TCALLOC_")}
    # `python` in the sh blocks is this interpreter (the venv's).
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    ran = 0
    for i, (kind, body) in enumerate(_blocks()):
        first = body.splitlines()[0] if body else ""
        if kind == "python" and first.startswith("# file: "):
            (tmp_path / first[len("# file: "):].strip()).write_text(body)
            continue
        if kind == "python":
            argv, stdin = [sys.executable, "-"], body
        elif kind == "sh":
            argv, stdin = ["bash", "-e", "-o", "pipefail", "-c", body], None
        else:
            continue
        r = subprocess.run(argv, input=stdin, cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, "block %d (%s) failed:\n%s\n--- stdout:\n%s\n--- stderr:\n%s" % (
            i, kind, body, r.stdout, r.stderr)
        ran += 1
    assert ran >= 7
