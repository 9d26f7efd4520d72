"""tcalloc.BufferPool: recycling, limits, accounting, threads, asyncio."""
import asyncio
import gc
import random
import socket
import threading

import pytest

import tcalloc
from tcalloc import BufferPool


def test_defaults_and_names():
    p = BufferPool()
    assert p.buffer_size == 65536 and p.max_bytes is None and not p.zero
    assert p.backend_name == "tcalloc"
    b = p.acquire()
    assert len(b) == 65536 and b.capacity >= 65536 and b.pool is p
    b.release()


def test_recycles_block_and_accounts():
    p = BufferPool(4096)
    b = p.acquire(100)
    assert len(b) == 100
    addr = b.address
    assert p.bytes_allocated() == 4096 and p.num_allocations() == 1
    b.release()
    assert p.bytes_allocated() == 0 and p.cached_bytes() == 4096
    with p.acquire() as c:
        assert c.address == addr and len(c) == 4096
        assert p.bytes_allocated() == 4096
    assert p.num_allocations() == 2
    assert p.total_bytes_allocated() == 8192
    assert p.max_memory() == 4096
    st = p.stats()
    assert st["fresh_allocations"] == 1 and st["buffers_out"] == 0


def test_oversize_requests_are_not_cached():
    p = BufferPool(1024)
    b = p.acquire(10_000)
    assert len(b) == 10_000 and p.bytes_allocated() == 10_000
    b.release()
    assert p.bytes_allocated() == 0 and p.cached_bytes() == 0


def test_zero_pool_zeroes_recycled_blocks():
    p = BufferPool(256, zero=True)
    b = p.acquire()
    memoryview(b)[:] = b"\xee" * 256
    b.release()
    c = p.acquire()
    assert bytes(c) == bytes(256)


def test_not_recycled_while_memoryview_alive():
    p = BufferPool(512)
    b = p.acquire()
    m = memoryview(b)
    with pytest.raises(BufferError):
        b.release()
    other = p.acquire()           # must not get b's block
    assert other.address != b.address
    m[:3] = b"abc"
    m.release()
    b.release()
    other.release()


def test_max_bytes_limit_message_and_untouched_buffers():
    p = BufferPool(1000, max_bytes=2500)
    a, b = p.acquire(), p.acquire()
    memoryview(a)[:] = b"a" * 1000
    with pytest.raises(MemoryError) as ei:
        p.acquire()
    msg = str(ei.value)
    assert "2500" in msg and "2000" in msg
    with pytest.raises(MemoryError):
        p.acquire(5000)
    assert bytes(a) == b"a" * 1000 and not b.released
    a.release()
    c = p.acquire()
    c.release()
    b.release()
    assert p.bytes_allocated() == 0
    assert p.cached_bytes() <= 2500


def test_resize_pooled_buffer_respects_limit():
    p = BufferPool(1000, max_bytes=3000)
    b = p.acquire(10)
    b.resize(1000)                 # within the block: no new accounting
    assert p.bytes_allocated() == 1000
    b.resize(2500)
    assert p.bytes_allocated() == 2500
    with pytest.raises(MemoryError, match="3000"):
        b.resize(5000)
    assert len(b) == 2500
    b.release()
    assert p.bytes_allocated() == 0 and p.cached_bytes() == 0   # grown block not recycled


def test_finaliser_returns_to_pool():
    p = BufferPool(2048)
    p.acquire()
    gc.collect()
    assert p.bytes_allocated() == 0 and p.cached_bytes() == 2048


def test_max_cached_bound_and_release_unused():
    p = BufferPool(4096, max_cached=3)
    bufs = [p.acquire() for _ in range(10)]
    for b in bufs:
        b.release()
    assert p.cached_bytes() == 3 * 4096
    assert p.release_unused() == 3 * 4096
    assert p.cached_bytes() == 0


@pytest.mark.parametrize("kw,exc", [
    (dict(buffer_size=0), ValueError), (dict(buffer_size=-1), ValueError),
    (dict(buffer_size=1.5), TypeError), (dict(max_bytes=-5), ValueError),
    (dict(max_bytes="1"), TypeError), (dict(max_cached=-1), ValueError),
])
def test_bad_arguments(kw, exc):
    with pytest.raises(exc):
        BufferPool(**kw)


def test_bad_acquire_sizes():
    p = BufferPool(64)
    with pytest.raises(ValueError):
        p.acquire(-1)
    with pytest.raises(TypeError):
        p.acquire(2.0)
    with pytest.raises(MemoryError):
        p.acquire(1 << 62)
    assert p.bytes_allocated() == 0


def test_get_buffer_sizes():
    p = BufferPool(1024)
    assert len(p.get_buffer(-1)) == 1024
    assert len(p.get_buffer(0)) == 1024
    assert len(p.get_buffer(100)) == 1024
    assert len(p.get_buffer(5000)) == 5000


def test_many_threads_with_content_checks():
    p = BufferPool(8192, max_bytes=9000 * 50)   # > 8 threads x 5 held x 9000
    errors = []
    outstanding_max = [0]

    def worker(tid):
        rnd = random.Random(tid)
        held = []
        try:
            for i in range(3000):
                if held and (len(held) > 4 or rnd.random() < 0.5):
                    b, tag = held.pop(rnd.randrange(len(held)))
                    # Nobody else may have written into a block we hold.
                    assert bytes(b) == tag * len(b), "block shared between owners"
                    b.release()
                else:
                    n = rnd.choice((10, 100, 8192, 9000))
                    b = p.acquire(n)
                    tag = bytes([(tid * 31 + i) % 251])
                    memoryview(b)[:] = tag * n
                    held.append((b, tag))
            for b, tag in held:
                assert bytes(b) == tag * len(b)
                b.release()
        except Exception as e:           # reported below
            errors.append(repr(e))

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors[:3]
    assert p.bytes_allocated() == 0
    assert p.max_memory() <= 9000 * 50
    assert p.num_allocations() >= 8 * 1000


def test_limit_under_contention_never_exceeded():
    limit = 10 * 4096
    p = BufferPool(4096, max_bytes=limit)
    refused = [0]
    lock = threading.Lock()

    def worker():
        for _ in range(2000):
            try:
                b = p.acquire()
            except MemoryError:
                with lock:
                    refused[0] += 1
                continue
            assert p.bytes_allocated() <= limit
            b.release()

    ts = [threading.Thread(target=worker) for _ in range(16)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert p.max_memory() <= limit and p.bytes_allocated() == 0


def test_asyncio_buffered_protocol():
    pool = BufferPool(4096)
    payload = bytes(range(256)) * 100

    class Receiver(asyncio.BufferedProtocol):
        def __init__(self):
            self.buf = None
            self.chunks = []
            self.done = asyncio.get_running_loop().create_future()

        def get_buffer(self, sizehint):
            self.buf = pool.get_buffer(sizehint)
            return self.buf

        def buffer_updated(self, nbytes):
            self.chunks.append(bytes(self.buf)[:nbytes])
            self.buf.release()

        def eof_received(self):
            self.done.set_result(b"".join(self.chunks))

    async def main():
        a, b = socket.socketpair()
        loop = asyncio.get_running_loop()
        _, proto = await loop.connect_accepted_socket(Receiver, b)
        await loop.sock_sendall(a, payload)
        a.shutdown(socket.SHUT_WR)
        got = await asyncio.wait_for(proto.done, 10)
        a.close()
        return got

    assert asyncio.run(main()) == payload
    assert pool.bytes_allocated() == 0 and pool.num_allocations() >= 1
