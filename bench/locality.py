"""Where consecutive small objects land: pymalloc against tcalloc's hook.

    python -m bench.locality                 # after pyflakes has checked 300 stdlib files
    python -m bench.locality --warm 0 --rounds 5

A child process (plain, then under ``python -m tcalloc run``) runs pyflakes
over the first ``--warm`` files of the standard library (the list
``bench.interpreter`` uses), then parses ``typing.py`` and walks its AST in
order: for the nodes, in the order the walk meets them, it reports how many
distinct 4 KiB pages they lie on and how many consecutive pairs lie within
4 KiB of each other. A heap that hands out blocks in address order packs a
fresh tree densely; one that hands out blocks freed in any order spreads it,
and the garbage collector's traversal of such trees then touches more lines
and pages. A benchmark, not a test: nothing passes or fails.
"""
import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import ast, gc, io, json, os, sys
from pyflakes import api, reporter
files, rounds = json.loads(sys.argv[1])
rep = reporter.Reporter(io.StringIO(), io.StringIO())
for f in files:
    api.checkPath(f, rep)
with open(os.path.join(os.path.dirname(ast.__file__), "typing.py")) as f:
    src = f.read()
out = []
for _ in range(rounds):
    ids = [id(n) for n in ast.walk(ast.parse(src))]
    near = sum(1 for a, b in zip(ids, ids[1:]) if abs(b - a) < 4096)
    out.append({"nodes": len(ids), "pages": len({a >> 12 for a in ids}),
                "near": near / (len(ids) - 1)})
    gc.collect()
print(json.dumps(out))
"""


def main(argv=None):
    from bench.interpreter import stdlib_files
    ap = argparse.ArgumentParser(prog="python -m bench.locality", description=__doc__.splitlines()[0])
    ap.add_argument("--warm", type=int, default=300, help="stdlib files pyflakes checks first")
    ap.add_argument("--rounds", type=int, default=3, help="trees parsed and measured")
    a = ap.parse_args(argv)
    files = stdlib_files(False)[1][:a.warm]
    arg = json.dumps([files, a.rounds])
    print(f"pyflakes over {len(files)} stdlib files, then typing.py parsed {a.rounds} times; "
          f"per tree: distinct 4 KiB pages its nodes lie on, and the share of consecutive "
          f"nodes within 4 KiB")
    for mode, pre in (("plain", []), ("tcalloc", ["-m", "tcalloc", "run"])):
        p = subprocess.run([sys.executable, *pre, "-c", CHILD, arg], capture_output=True,
                           text=True, cwd=os.path.dirname(os.path.abspath(__file__)))
        if p.returncode != 0:
            print(f"{mode}: failed: {p.stderr.strip().splitlines()[-1:]}")
            continue
        rows = json.loads(p.stdout.splitlines()[-1])
        print(f"{mode:8s} " + "  ".join(f"{r['pages']} pages, {r['near']:.2f} near"
                                       for r in rows) + f"  ({rows[0]['nodes']} nodes)")
    print(f"  command: python -m bench.locality --warm {a.warm} --rounds {a.rounds}")


if __name__ == "__main__":
    main()
