"""Benchmarks of tcalloc. ``python -m bench.engine`` compares the allocator
engine with glibc, gperftools tcmalloc, jemalloc and mimalloc."""
