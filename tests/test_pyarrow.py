"""tcalloc buffers handed to pyarrow without a copy: pa.py_buffer() takes the
buffer protocol export, which keeps the tcalloc block alive (and unrecycled,
for a pool's buffer) for as long as Arrow holds it."""
import gc
import threading

import pytest

pa = pytest.importorskip("pyarrow")
import tcalloc  # noqa: E402


def test_py_buffer_shares_the_block_both_ways():
    b = tcalloc.alloc(1 << 20)
    ab = pa.py_buffer(b)
    assert ab.address == b.address and ab.size == len(b) and ab.is_mutable
    memoryview(b)[:5] = b"hello"
    assert ab.to_pybytes()[:5] == b"hello"          # tcalloc's write seen by Arrow
    memoryview(ab).cast("B")[5:10] = b"world"       # Arrow's view writes into the block
    assert bytes(memoryview(b)[:10]) == b"helloworld"


def test_arrow_keeps_the_block_alive_and_release_waits_for_it():
    b = tcalloc.alloc(4096)
    addr = b.address
    memoryview(b)[:4] = b"keep"
    ab = pa.py_buffer(b)
    with pytest.raises(BufferError, match="export"):
        b.release()                                  # Arrow holds an export
    del b
    gc.collect()
    # The Buffer object lives on inside Arrow's buffer: memory still valid.
    junk = [tcalloc.alloc(4096) for _ in range(64)]  # would reuse a freed block
    assert all(j.address != addr for j in junk)
    assert ab.to_pybytes()[:4] == b"keep"
    before = tcalloc.stats()["bytes_in_use"]
    del ab
    gc.collect()
    assert tcalloc.stats()["bytes_in_use"] < before  # freed once Arrow let go


def test_pool_buffer_goes_back_only_when_arrow_is_done():
    pool = tcalloc.BufferPool(65536)
    buf = pool.acquire(1000)
    arr_buf = pa.py_buffer(buf)
    assert pool.bytes_allocated() == 65536
    del buf
    gc.collect()
    assert pool.bytes_allocated() == 65536           # Arrow still holds it
    again = pool.acquire()
    assert again.address != arr_buf.address          # not recycled under Arrow
    again.release()
    del arr_buf
    gc.collect()
    assert pool.bytes_allocated() == 0
    assert pool.stats()["buffers_out"] == 0


def test_arrays_and_ipc_round_trip_on_tcalloc_memory():
    n = 100_000
    data = tcalloc.alloc(n * 8)
    mv = memoryview(data).cast("q")
    for i in range(0, n, 997):
        mv[i] = i * 3
    mv.release()
    arr = pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(data)])
    assert arr.buffers()[1].address == data.address    # no copy
    batch = pa.record_batch([arr], names=["x"])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as w:
        w.write_batch(batch)
    got = pa.ipc.open_stream(sink.getvalue()).read_all().column("x")
    assert got.equals(pa.chunked_array([arr]))
    assert got[997].as_py() == 997 * 3


def test_threads_hand_pool_buffers_to_arrow():
    pool = tcalloc.BufferPool(8192, max_bytes=64 * 8192)
    errors = []

    def work(k):
        try:
            for i in range(300):
                with pool.acquire() as b:
                    memoryview(b)[:8] = (k * 1000 + i).to_bytes(8, "little")
                    ab = pa.py_buffer(b)
                    assert int.from_bytes(ab.to_pybytes()[:8], "little") == k * 1000 + i
                    del ab                        # the export ends before the release
        except Exception as e:                    # pragma: no cover - reported below
            errors.append(e)
    ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors
    assert pool.bytes_allocated() == 0 and pool.num_allocations() == 4 * 300
