"""Child process of the stress lab, started by ``runner.run_child`` (which
runs ``main(SPEC_JSON)`` without the working directory on sys.path; by hand:
``python -m tcalloc.stress._child SPEC_JSON``).

Runs one workload with the C library's malloc (under LD_PRELOAD that is the
peer allocator; without it and with backend "tcalloc", tcalloc) and prints
"progress N" lines, then "result {json}" on stdout.
"""

import json
import os
import sys

from .runner import RunHung, execute


def _preloaded():
    lib = os.environ.get("LD_PRELOAD")
    if not lib:
        return None
    name = os.path.basename(lib)
    with open("/proc/self/maps") as f:
        return any(name in line for line in f)


def main(argv):
    spec = json.loads(argv[0])
    tc = spec["backend"] == "tcalloc"

    def progress(ops, _elapsed):
        sys.stdout.write("progress %d\n" % ops)
        sys.stdout.flush()

    try:
        rec = execute(spec, "tcalloc" if tc else "system", engine=tc, on_progress=progress)
    except RunHung as e:
        sys.stderr.write("%s\n" % e)
        sys.stderr.flush()
        os._exit(3)     # the stuck threads cannot be joined
    rec["preloaded"] = _preloaded()
    import tcalloc
    rec["tcalloc_dir"] = os.path.dirname(os.path.abspath(tcalloc.__file__))
    sys.stdout.write("result " + json.dumps(rec) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
