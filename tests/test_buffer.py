"""tcalloc.alloc / tcalloc.Buffer: what users of the buffer protocol rely on."""
import gc
import io
import json
import os
import pickle
import re
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

import tcalloc
from tcalloc import Buffer, alloc


def test_buffer_protocol_shape_and_writes():
    b = alloc(1000)
    m = memoryview(b)
    assert (m.format, m.itemsize, m.ndim, m.shape, m.strides) == ("B", 1, 1, (1000,), (1,))
    assert not m.readonly and m.contiguous and m.nbytes == 1000
    m[:] = bytes(range(256)) * 3 + bytes(range(232))
    assert bytes(b)[:256] == bytes(range(256))
    m.release()
    assert len(b) == 1000 and b.capacity >= 1000 and b.address != 0
    b.release()


def test_zero_and_alignment():
    for n in (1, 64, 4096, 300_000, 3 << 20):
        with alloc(n, zero=True) as b:
            assert bytes(b) == bytes(n)
            memoryview(b)[:] = b"\xff" * n
    for a in (1, 2, 8, 16, 64, 4096, 65536, 1 << 21):
        with alloc(100, alignment=a) as b:
            assert b.address % a == 0
    with alloc(5000, zero=True, alignment=4096) as b:
        assert b.address % 4096 == 0 and bytes(b) == bytes(5000)


def test_size_zero_is_distinct():
    a, b = alloc(0), alloc(0)
    assert len(a) == 0 and a.address != b.address
    assert bytes(a) == b"" and memoryview(a).nbytes == 0


@pytest.mark.parametrize("size,exc", [
    (-1, ValueError), (-(2**70), ValueError), (2**70, MemoryError), (1 << 62, MemoryError),
    (1.0, TypeError), (1.5, TypeError), ("10", TypeError), (None, TypeError), (b"x", TypeError),
    (True, TypeError), (False, TypeError),
])
def test_bad_sizes(size, exc):
    with pytest.raises(exc, match="size|allocate"):
        alloc(size)
    with pytest.raises(exc, match="size|allocate"):
        Buffer(size)
    b = alloc(8)
    with pytest.raises(exc, match="size|allocate"):
        b.resize(size)
    assert len(b) == 8


def test_index_objects_are_sizes_but_bool_is_not():
    class N:
        def __index__(self):
            return 7
    assert len(alloc(N())) == 7
    # alloc(True) used to give 1 byte: a flag passed where a size belongs.
    with pytest.raises(TypeError, match="size must be an integer, not bool"):
        alloc(True)


@pytest.mark.parametrize("flag", ["no", 1, 0, None, 1.0, b""])
def test_zero_must_be_a_bool(flag):
    # alloc(10, zero='no') used to zero the buffer.
    with pytest.raises(TypeError, match="zero must be True or False"):
        alloc(10, zero=flag)
    with pytest.raises(TypeError, match="zero must be True or False"):
        Buffer(10, zero=flag)
    assert bytes(alloc(10, zero=True)) == bytes(10)
    assert len(alloc(10, zero=False)) == 10


@pytest.mark.parametrize("a", [0, 3, 12, -8, -1, 1 << 31, 1 << 40, 2**64, 2**200, -(2**64)])
def test_bad_alignment_values(a):
    # Every bad value is a ValueError naming alignment (2**64 was a MemoryError).
    with pytest.raises(ValueError, match="alignment must be"):
        alloc(16, alignment=a)
    with pytest.raises(ValueError, match="alignment must be"):
        Buffer(16, alignment=a)


@pytest.mark.parametrize("a", [8.0, True, False, "8", b"8"])
def test_bad_alignment_types(a):
    with pytest.raises(TypeError, match="alignment must be an integer"):
        alloc(16, alignment=a)
    with pytest.raises(TypeError, match="alignment must be an integer"):
        Buffer(16, alignment=a)


def test_largest_alignment_accepted():
    with alloc(16, alignment=1 << 30) as b:
        assert b.address % (1 << 30) == 0


def test_release_is_idempotent_and_released_buffer_raises():
    b = alloc(64)
    b.release()
    b.release()
    assert b.released
    for op in (len, lambda x: x.address, lambda x: x.capacity, memoryview, bytes,
               lambda x: x.resize(10), lambda x: x.__enter__()):
        with pytest.raises(ValueError, match="released"):
            op(b)
    assert "released" in repr(b)


def test_release_and_resize_refused_while_exported():
    b = alloc(128)
    m = memoryview(b)
    m2 = m[10:20]
    m.release()
    with pytest.raises(BufferError, match="export"):
        b.release()
    with pytest.raises(BufferError, match="export"):
        b.resize(1 << 20)
    assert m2.nbytes == 10        # still valid: nothing was freed
    m2[0] = 7
    m2.release()
    b.resize(4096)
    b.release()
    assert b.released


def test_with_block_releases_and_reports_live_export():
    with alloc(10) as b:
        pass
    assert b.released
    with pytest.raises(BufferError):
        with alloc(10) as c:
            keep = memoryview(c)
    keep.release()
    c.release()


def test_resize_keeps_contents_and_zeroes_when_asked():
    b = alloc(100, zero=True)
    memoryview(b)[:] = b"a" * 100
    for n in (5000, 300_000, 40, 2 << 20):
        b.resize(n)
        assert len(b) == n
        assert bytes(b)[:40] == b"a" * 40
    assert bytes(b)[100:200] != b"a" * 100
    b.resize(50)
    b.resize(1000)
    assert bytes(b)[50:] == bytes(950)      # grown bytes are zero with zero=True
    b.resize(0)
    assert len(b) == 0
    b.release()


def test_resize_keeps_alignment():
    b = alloc(100, alignment=1 << 16)
    memoryview(b)[:] = b"z" * 100
    for n in (10, 70_000, 1 << 20, 300):
        b.resize(n)
        assert b.address % (1 << 16) == 0
        assert bytes(b)[:10] == b"z" * 10


def test_resize_failure_leaves_buffer_intact():
    b = alloc(64)
    memoryview(b)[:] = b"q" * 64
    with pytest.raises(MemoryError):
        b.resize(1 << 62)
    with pytest.raises(ValueError):
        b.resize(-1)
    assert bytes(b) == b"q" * 64


def test_finaliser_frees():
    before = tcalloc.stats()["large_bytes_in_use"]
    for _ in range(50):
        alloc(1 << 20)
    gc.collect()
    assert tcalloc.stats()["large_bytes_in_use"] <= before + (1 << 20)


def test_no_leak_under_churn():
    # Large blocks are accounted exactly, so any leak shows up.
    before = tcalloc.stats()["large_bytes_in_use"]
    for i in range(300):
        b = alloc(300_000 + i)
        m = memoryview(b)
        if i % 2:
            with pytest.raises(BufferError):
                b.release()
        m.release()
        if i % 3 == 0:
            b.resize(600_000)
        b.release()
    assert tcalloc.stats()["large_bytes_in_use"] == before


def test_readinto_and_recv_into():
    data = bytes(range(256)) * 40
    b = alloc(len(data))
    assert io.BytesIO(data).readinto(b) == len(data)
    assert bytes(b) == data
    s1, s2 = socket.socketpair()
    with s1, s2:
        s1.sendall(b"hello tcalloc")
        with alloc(64) as r:
            n = s2.recv_into(r)
            assert bytes(r)[:n] == b"hello tcalloc"


def test_bytes_like_apis():
    b = alloc(6)
    memoryview(b)[:] = b"abcdef"
    assert bytes(b) == b"abcdef" and bytearray(b) == bytearray(b"abcdef")
    assert b"".join([b, b]) == b"abcdefabcdef"
    import hashlib
    assert hashlib.sha256(b).hexdigest() == hashlib.sha256(b"abcdef").hexdigest()


def test_pickle_by_value():
    b = alloc(10)
    memoryview(b)[:] = b"0123456789"
    c = pickle.loads(pickle.dumps(b))
    assert isinstance(c, Buffer) and bytes(c) == b"0123456789" and c.address != b.address


def test_unpickling_sizes_the_copy_by_the_buffer_not_by_len():
    # Buffer's unpickler (reachable from any pickle) copies the object's
    # buffer. An object whose __len__ says less than its buffer holds used to
    # get a block of len() bytes and the whole buffer copied into it, past
    # its end (a crash a few allocations later).
    class Short(bytearray):
        def __len__(self):
            return 16
    reduce_fn, args = alloc(4).__reduce__()
    c = reduce_fn(Short(b"\xab" * 4096), *args[1:])
    assert isinstance(c, Buffer) and len(c) == 4096 and bytes(c) == b"\xab" * 4096
    neighbours = [alloc(16) for _ in range(64)]
    memoryview(neighbours[0])[:] = b"x" * 16
    assert bytes(c) == b"\xab" * 4096


def test_buffer_init_twice_refused():
    b = Buffer(8)
    with pytest.raises(TypeError):
        b.__init__(8)
    assert len(b) == 8


def test_buffer_init_reentered_from_an_argument_is_refused_and_leaks_nothing():
    # The size's __index__ initialises the buffer first; the outer __init__
    # used to go on and overwrite its pointer, leaking the first block.
    import tracemalloc
    only = [tracemalloc.DomainFilter(True, tcalloc.TRACEMALLOC_DOMAIN)]
    b = Buffer.__new__(Buffer)

    class Size:
        def __index__(self):
            b.__init__(1 << 20)
            return 16

    tracemalloc.start()
    try:
        with pytest.raises(TypeError, match="already holds memory"):
            b.__init__(Size())
        assert len(b) == 1 << 20
        b.release()
        left = tracemalloc.take_snapshot().filter_traces(only).traces
        assert sum(t.size for t in left) == 0
    finally:
        tracemalloc.stop()


def test_concurrent_release_frees_once():
    # Many threads race to release the same buffers: each block must be freed
    # exactly once (a double free would abort the process).
    for _ in range(50):
        bufs = [alloc(1000) for _ in range(64)]
        def worker():
            for b in bufs:
                b.release()
        ts = [threading.Thread(target=worker) for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert all(b.released for b in bufs)


def test_threads_allocate_and_verify():
    errors = []

    def worker(seed):
        try:
            for i in range(2000):
                n = (seed * 7919 + i * 104729) % 70000
                b = alloc(n)
                pat = bytes([seed % 256]) * n
                memoryview(b)[:] = pat
                assert bytes(b) == pat
                b.release()
        except Exception as e:      # reported below
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors


# ---- MemoryError messages -----------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(tcalloc.__file__)))


def _run_fresh(code):
    """Run code in a fresh interpreter (a hard limit is process-wide); its
    last stdout line is JSON."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_hard_limit_memoryerror_names_limit_and_use():
    r = _run_fresh("""
        import json, tcalloc
        MiB = 1 << 20
        tcalloc.set_memory_limit(32 * MiB, hard=True)
        keep = [tcalloc.alloc(MiB) for _ in range(8)]
        s = tcalloc.stats()
        committed = s["heap_bytes"] - s["page_heap_released_bytes"]
        out = {"committed": committed}
        try:
            tcalloc.alloc(64 * MiB)
        except MemoryError as e:
            out["alloc"] = str(e)
        b = tcalloc.alloc(MiB)
        try:
            b.resize(40 * MiB)
        except MemoryError as e:
            out["resize"] = str(e)
        out["resize_len"] = len(b)
        pool = tcalloc.BufferPool(48 * MiB)
        try:
            pool.acquire()
        except MemoryError as e:
            out["pool"] = str(e)
        out["pool_figures"] = [pool.bytes_allocated(), pool.num_allocations(),
                               pool.max_memory(), pool.total_bytes_allocated()]
        print(json.dumps(out))
    """)
    committed = "(%.1f MiB committed)" % (r["committed"] / (1 << 20))
    assert r["alloc"] == ("cannot allocate 64.0 MiB: tcalloc's hard memory limit of "
                          "32.0 MiB is reached " + committed), r
    assert r["resize"].startswith("cannot allocate 40.0 MiB: tcalloc's hard memory limit "
                                  "of 32.0 MiB is reached ("), r
    assert r["resize_len"] == 1 << 20
    assert r["pool"].startswith("cannot allocate 48.0 MiB: tcalloc's hard memory limit "
                                "of 32.0 MiB is reached ("), r
    assert r["pool_figures"] == [0, 0, 0, 0]


@pytest.mark.parametrize("limit", [None, (0, False), (64 << 20, False), ((1 << 63) - 1, True)])
def test_memoryerror_says_why(monkeypatch, limit):
    # get_memory_limit() returns None when no limit is set (newer engines) or
    # (0, False) (older ones); a soft limit never makes an allocation fail.
    # Past tcalloc's largest block, that is the reason, whatever the limit.
    monkeypatch.setattr(tcalloc, "get_memory_limit", lambda: limit)
    with pytest.raises(MemoryError) as ei:
        alloc(1 << 62)
    assert str(ei.value) == ("cannot allocate 4.0 EiB (4611686018427387904 bytes): more than "
                             "tcalloc's largest block (64.0 TiB)")
    with pytest.raises(MemoryError) as ei:
        alloc(1 << 62, alignment=4096)
    assert str(ei.value) == ("cannot allocate 4.0 EiB (4611686018427387904 bytes) "
                             "aligned to 4096: more than tcalloc's largest block (64.0 TiB)")
    if limit is None or not limit[1]:
        # Within the largest block, a failure without a hard limit is the
        # system's (the message alone: whether the system refuses 32 TiB
        # depends on the machine).
        assert tcalloc.buffer._nomem_message(1 << 45, 0) == (
            "cannot allocate 32.0 TiB (35184372088832 bytes): the operating system refused "
            "the memory")


def test_memoryerror_blames_a_hard_limit_only_when_it_is_the_cause(monkeypatch):
    # A hard limit far above the request: the failure is the system's, but
    # the message still shows the limit and the use.
    monkeypatch.setattr(tcalloc, "get_memory_limit", lambda: ((1 << 63) - 1, True))
    msg = tcalloc.buffer._nomem_message(1 << 45, 0)
    assert msg.startswith("cannot allocate 32.0 TiB (35184372088832 bytes); tcalloc's "
                          "hard memory limit of 8.0 EiB is not reached ("), msg
    assert re.search(r"\((\d+ bytes|\d+\.\d (KiB|MiB|GiB)) committed\)$", msg), msg


def test_tracemalloc_sees_buffers_and_pool_buffers_at_the_line_that_made_them():
    import sys
    import tracemalloc
    dom = tcalloc.TRACEMALLOC_DOMAIN
    only = [tracemalloc.DomainFilter(True, dom)]
    pool = tcalloc.BufferPool(1 << 20, max_cached=4)
    warm = pool.acquire()
    warm.release()                                    # an idle block: the pool's, untraced
    tracemalloc.start()
    try:
        line = sys._getframe().f_lineno + 1
        bufs = [tcalloc.alloc(1 << 20) for _ in range(8)]
        pooled = [pool.acquire(100) for _ in range(3)]   # blocks of 1 MiB each
        snap = tracemalloc.take_snapshot().filter_traces(only)
        by_line = {st.traceback[0].lineno: st.size for st in snap.statistics("lineno")}
        assert by_line == {line: 8 << 20, line + 1: 3 << 20}
        assert snap.statistics("filename")[0].traceback[0].filename == __file__
        # Resizing retraces at the new size (and address, if the block moved).
        bufs[0].resize(3 << 20)
        pooled[0].resize(2 << 20)                      # past its block: grown
        snap = tracemalloc.take_snapshot().filter_traces(only)
        assert sum(t.size for t in snap.traces) == (10 << 20) + (4 << 20)
        # Released, collected, back in the pool: no longer traced.
        bufs[1].release()
        del bufs[2]
        for b in pooled:
            b.release()
        snap = tracemalloc.take_snapshot().filter_traces(only)
        assert sum(t.size for t in snap.traces) == (3 << 20) + (5 << 20)
        del bufs
        assert len(tracemalloc.take_snapshot().filter_traces(only).traces) == 0
    finally:
        tracemalloc.stop()


def test_buffers_made_before_tracemalloc_starts_are_freed_cleanly():
    import tracemalloc
    old = [tcalloc.alloc(4096) for _ in range(100)]
    tracemalloc.start()
    try:
        del old                                        # untracking an untraced block is a no-op
        new = tcalloc.alloc(4096)
        snap = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.DomainFilter(True, tcalloc.TRACEMALLOC_DOMAIN)])
        assert [t.size for t in snap.traces] == [4096]
    finally:
        tracemalloc.stop()
    new.release()
