"""Benchmarks of tcalloc. ``python -m bench.engine`` compares the allocator
engine with glibc, gperftools tcmalloc, jemalloc and mimalloc."""


def own_peak_kib():
    """This process's own peak RSS, VmHWM from /proc/self/status (KiB). The
    benchmarks' children report it at their end rather than letting the
    parent read ru_maxrss: Linux carries the parent's high-water mark into a
    child across fork and exec, so a child smaller than its parent would
    read as the parent. Stdlib only, and nothing imported: the measured
    process imports this package."""
    with open("/proc/self/status") as f:
        return int(next(l for l in f if l.startswith("VmHWM:")).split()[1])
