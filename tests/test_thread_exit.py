"""Thread exit at scale: 10 000 short-lived native threads.

Each thread allocates, frees, and leaves a few blocks behind that a thread of
the next batch frees after their owner has exited. Run in a fresh interpreter
so the thread-cache count and byte figures are this test's alone.
"""
import json
import os
import subprocess
import sys

import tcalloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(tcalloc.__file__)))

CODE = """
import json, tcalloc
import tct_native as tn
def snap():
    s = tcalloc.stats()
    return {k: s[k] for k in ("thread_caches", "thread_cache_free_bytes", "metadata_bytes", "bytes_in_use",
                              "thread_cache_structs")}
base = snap()
r1 = tn.thread_churn(1000, batch=100, blocks=16, leave=4, seed=1)
after_1k = snap()
r2 = tn.thread_churn(9000, batch=100, blocks=16, leave=4, seed=2)
after_10k = snap()
print(json.dumps(dict(base=base, after_1k=after_1k, after_10k=after_10k, r1=r1, r2=r2)))
"""


def test_ten_thousand_short_lived_threads():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("TCALLOC_DEBUG", None)
    proc = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    for run, n in (("r1", 1000), ("r2", 9000)):
        assert r[run]["threads"] == n and r[run]["create_errors"] == 0, r[run]
        assert r[run]["corrupt"] == 0 and r[run]["failed"] == 0, r[run]
    base, k1, k10 = r["base"], r["after_1k"], r["after_10k"]
    # Every exited thread's cache went back: only the main thread's remains
    # (created at the end, when it freed the last batch's leftovers).
    assert k10["thread_caches"] <= base["thread_caches"] + 1, (base, k10)
    assert k1["thread_caches"] <= base["thread_caches"] + 1, (base, k1)
    # What remains cached is bounded by one thread's budget (4 MiB), not
    # proportional to the threads that ran.
    assert k10["thread_cache_free_bytes"] <= 4 << 20, k10
    # Every block was freed and every exited thread's counters were kept.
    assert k10["bytes_in_use"] == base["bytes_in_use"], (base, k10)
    # Metadata does not grow per thread: cache structs are recycled, so
    # their number is bounded by the threads alive at once (a batch of 100
    # plus the main thread), not by the 10 000 that ran.
    assert k10["thread_cache_structs"] <= 100 + 1, k10
    # Beyond the structs a busier moment may add (one per extra concurrent
    # thread), 9 000 more threads cost at most 256 KiB of spans and pagemap
    # entries; a struct per thread would be 9 000 x 8 KiB = 72 MiB.
    struct_bytes = (k10["thread_cache_structs"] - k1["thread_cache_structs"]) * (9 << 10)
    assert k10["metadata_bytes"] - k1["metadata_bytes"] <= struct_bytes + (256 << 10), (k1, k10)
