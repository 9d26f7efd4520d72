"""pytest plugin for bench.rss: NumPy's new arrays of every thread get
tcalloc memory for the whole session (``-p bench.np_tcalloc_plugin``).

At the end it writes tcalloc's stats() byte pools, as one JSON line, to the
file named by BENCH_RSS_STATS (if set), so the benchmark can say where the
memory was."""
import json
import os

import tcalloc
import tcalloc.numpy

tcalloc.numpy.set_default()


def pytest_unconfigure(config):
    path = os.environ.get("BENCH_RSS_STATS")
    if path:
        s = tcalloc.stats()
        keep = {k: v for k, v in s.items() if isinstance(v, int)}
        with open(path, "w") as f:
            json.dump(keep, f)
