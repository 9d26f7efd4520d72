# Types of tcalloc._engine's Python API (a Cython module: these stubs are
# what type checkers see). Keep in step with _engine.pyx: tests/test_typing.py
# compares the signatures (stubtest) and the stats() keys with the runtime.
# get_memory_limit() is typed as it is meant to be: None when no limit is
# set, else (nbytes, hard); older engines return (0, False) for none.
from collections.abc import Iterable
from typing import Final, TypedDict

# One entry of stats()["size_classes"]. "class" is a keyword, so the
# functional form.
SizeClassStats = TypedDict("SizeClassStats", {
    "class": int,
    "size": int,
    "pages": int,
    "batch": int,
    "objects_per_span": int,
    "objects_in_use": int,
    "mallocs": int,
    "frees": int,
    "spans": int,
    "central_free_objects": int,
    "transfer_free_objects": int,
    "transfer_hits": int,
    "transfer_misses": int,
})

class LockStats(TypedDict):
    """One entry of ``stats()["locks"]``."""
    acquisitions: int
    contended: int
    spins: int
    wait_ns: int

class Stats(TypedDict):
    """What ``stats()`` returns; the README describes every key."""
    bytes_in_use: int
    heap_bytes: int
    page_heap_free_bytes: int
    page_heap_released_bytes: int
    central_free_bytes: int
    transfer_cache_free_bytes: int
    thread_cache_free_bytes: int
    span_overhead_bytes: int
    metadata_bytes: int
    metadata_mapped_bytes: int
    thread_caches: int
    thread_cache_structs: int
    peak_heap_bytes: int
    peak_allocated_bytes: int
    thread_cache_budget_bytes: int
    thread_cache_fetches: int
    thread_cache_overflows: int
    thread_cache_scavenges: int
    spans_in_use: int
    small_bytes_in_use: int
    large_bytes_in_use: int
    large_mallocs: int
    large_frees: int
    memory_limit: int
    memory_limit_hard: bool
    release_rate: int
    background_released_bytes: int
    released_on_free_bytes: int
    released_total_bytes: int
    realloc_moved_bytes: int
    gc_sorted_objects: int
    size_classes: list[SizeClassStats]
    locks: dict[str, LockStats]

_C_API: Final[object]
_C_API_EXT: Final[object]

def stats() -> Stats: ...
def stats_text() -> str: ...
def release_free_memory() -> int: ...
def set_release_rate(bytes_per_second: int) -> None: ...
def get_release_rate() -> int: ...
def reset_peaks() -> None: ...
def set_memory_limit(nbytes: int | None, hard: bool = False) -> None: ...
def get_memory_limit() -> tuple[int, bool] | None: ...
def set_max_total_thread_cache_bytes(nbytes: int) -> None: ...
def get_max_total_thread_cache_bytes() -> int: ...
def size_class_table() -> list[tuple[int, int, int, int, int]]: ...
def size_class_of(size: int) -> tuple[int, int]: ...
def debug_enabled() -> bool: ...
def set_sample_rate(nbytes: int, seed: int | None = None) -> None: ...
def get_sample_rate() -> int: ...

# The interpreter hook (engine/hook.pxi). Domains: "raw", "mem", "obj"
# (any case), one as a str or several in an iterable.
def install(domains: str | Iterable[str] = ("raw", "mem", "obj")) -> None: ...
def uninstall(domains: str | Iterable[str] = ("raw", "mem", "obj")) -> None: ...
def installed() -> bool: ...
def active_domains() -> tuple[str, ...]: ...
