"""tcalloc.BufferPool: recycling, limits, accounting, threads, asyncio."""
import asyncio
import gc
import os
import random
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

import tcalloc
from tcalloc import BufferPool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(tcalloc.__file__)))


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


def test_a_grow_inside_the_blocks_capacity_is_counted_and_bounded():
    # A block's capacity is its size class's, up to an eighth above what was
    # asked. A grow inside it used to count nothing: a buffer could reach
    # past max_bytes, and bytes_allocated() read less than the buffers held.
    p = BufferPool(4096, max_bytes=104000)
    b = p.acquire()
    b.resize(100000)
    assert p.bytes_allocated() == 100000 and b.capacity > 104000
    b.resize(0)
    b.resize(103000)                    # inside the capacity, within max_bytes
    assert p.bytes_allocated() == 103000
    with pytest.raises(MemoryError, match="max_bytes=104000"):
        b.resize(104001)                # inside the capacity, past max_bytes
    assert len(b) == 103000 and p.bytes_allocated() == 103000
    b.release()
    assert p.bytes_allocated() == 0


def test_a_buffer_grown_inside_its_capacity_still_returns_its_block():
    # Counting the grow (above) must not cost the block its place in the
    # pool: it is still a buffer_size block, and the next acquire reuses it.
    p = BufferPool(5000)
    b = p.acquire()
    assert b.capacity > 5100
    address = b.address
    b.resize(5100)
    assert b.address == address and p.bytes_allocated() == 5100
    b.release()
    assert p.cached_bytes() == 5000 and p.bytes_allocated() == 0
    assert p.acquire().address == address


def test_grow_keeps_what_the_pool_holds_within_max_bytes():
    # max_bytes bounds buffers out plus idle blocks. A grow used to add to
    # the bytes out without dropping idle blocks, so the pool held more.
    p = BufferPool(64, max_bytes=224, max_cached=2)
    a, b = p.acquire(), p.acquire()
    b.release()
    assert p.cached_bytes() == 64
    a.resize(192)
    assert p.bytes_allocated() == 192 and p.cached_bytes() == 0
    a.release()
    assert p.bytes_allocated() + p.cached_bytes() <= 224


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


@pytest.mark.parametrize("kw,exc,what", [
    (dict(buffer_size=0), ValueError, "buffer_size must be > 0, got 0"),
    (dict(buffer_size=-1), ValueError, "buffer_size must be > 0, got -1"),
    (dict(buffer_size=1.5), TypeError, "buffer_size"), (dict(buffer_size=True), TypeError, "buffer_size"),
    (dict(buffer_size=None), TypeError, "buffer_size"), (dict(buffer_size=2**63), ValueError, "buffer_size"),
    (dict(max_bytes=-5), ValueError, "max_bytes"), (dict(max_bytes="1"), TypeError, "max_bytes"),
    (dict(max_bytes=1.5), TypeError, "max_bytes"), (dict(max_bytes=True), TypeError, "max_bytes"),
    (dict(max_bytes=2**63), ValueError, "max_bytes"),
    (dict(max_cached=-1), ValueError, "max_cached"), (dict(max_cached=False), TypeError, "max_cached"),
    (dict(max_cached=2.0), TypeError, "max_cached"), (dict(max_cached=1 << 25), ValueError, "max_cached"),
    (dict(zero="yes"), TypeError, "zero"), (dict(zero=1), TypeError, "zero"),
    (dict(zero=None), TypeError, "zero"),
])
def test_bad_arguments(kw, exc, what):
    with pytest.raises(exc, match=what):
        BufferPool(**kw)


def test_largest_arguments_accepted():
    p = BufferPool(2**63 - 1, max_bytes=2**63 - 1, max_cached=1 << 24, zero=True)
    assert p.buffer_size == p.max_bytes == 2**63 - 1 and p.max_cached == 1 << 24 and p.zero


@pytest.mark.parametrize("size,exc", [
    (-1, ValueError), (-(2**70), ValueError), (2.0, TypeError), (1.5, TypeError),
    (True, TypeError), (False, TypeError), ("64", TypeError), (b"", TypeError),
])
def test_bad_acquire_sizes(size, exc):
    p = BufferPool(64)
    with pytest.raises(exc, match="size"):
        p.acquire(size)
    b = p.acquire(8)
    with pytest.raises(exc, match="size"):
        b.resize(size)
    assert len(b) == 8
    b.release()
    assert p.stats() == dict(bytes_allocated=0, buffers_out=0, max_memory=64,
                             total_bytes_allocated=64, num_allocations=1, fresh_allocations=1,
                             cached_buffers=1, cached_bytes=64)


@pytest.mark.parametrize("size", [1 << 62, 2**63 - 1, 2**64, 2**70])
def test_failed_acquire_counts_nothing(size):
    # A failed acquire used to count: num_allocations went up, max_memory
    # reported a peak that never existed, total_bytes_allocated overflowed.
    p = BufferPool(64)
    b = p.acquire()
    before = p.stats()
    with pytest.raises(MemoryError, match="cannot allocate"):
        p.acquire(size)
    assert p.stats() == before
    assert p.num_allocations() == 1 and p.max_memory() == 64
    assert p.total_bytes_allocated() == 64 and p.bytes_allocated() == 64
    b.release()


def test_failed_acquire_under_a_pool_limit_counts_nothing():
    # Within max_bytes, so the pool lets it through; tcalloc cannot map it.
    p = BufferPool(64, max_bytes=2**63 - 1)
    with pytest.raises(MemoryError, match="cannot allocate"):
        p.acquire(1 << 62)
    b = p.acquire()
    with pytest.raises(MemoryError, match="BufferPool limit reached"):
        p.acquire(2**63 - 1)
    assert p.stats() == dict(bytes_allocated=64, buffers_out=1, max_memory=64,
                             total_bytes_allocated=64, num_allocations=1, fresh_allocations=1,
                             cached_buffers=0, cached_bytes=0)
    b.release()


def test_failed_grow_counts_nothing():
    p = BufferPool(64, max_bytes=2**62)
    b = p.acquire()
    before = p.stats()
    with pytest.raises(MemoryError, match="cannot allocate"):
        b.resize(1 << 61)          # within max_bytes: tcalloc refuses
    with pytest.raises(MemoryError, match="BufferPool limit reached"):
        b.resize(2**62 + 1)
    assert p.stats() == before and len(b) == 64
    b.resize(100_000)
    assert p.bytes_allocated() == 100_000 and p.max_memory() == 100_000
    assert p.total_bytes_allocated() == 100_000
    b.release()
    assert p.bytes_allocated() == 0 and p.cached_bytes() == 0


def test_a_request_tcalloc_cannot_serve_keeps_the_idle_blocks():
    # Over tcalloc's largest block the request fails whatever the pool
    # frees: it must not free idle blocks "to make room" first.
    p = BufferPool(64, max_bytes=2**62, max_cached=4)
    a, b = p.acquire(), p.acquire()
    b.release()
    before = p.stats()
    assert before["cached_buffers"] == 1
    with pytest.raises(MemoryError, match="largest block"):
        p.acquire(2**62 - 64)
    with pytest.raises(MemoryError, match="largest block"):
        a.resize(2**62 - 64)
    assert p.stats() == before and len(a) == 64
    c = p.acquire()                    # the idle block, still there
    assert p.stats()["fresh_allocations"] == before["fresh_allocations"]
    a.release()
    c.release()


def test_init_reentered_from_an_argument_is_refused():
    # An argument's __index__ is Python code: one that initialises the pool
    # itself must not leave the outer __init__ to overwrite the pool's
    # block cache (an uninitialised cache: a crash at the next acquire).
    p = BufferPool.__new__(BufferPool)

    class Size:
        def __index__(self):
            p.__init__(64)
            p.acquire().release()
            return 1 << 20

    with pytest.raises(TypeError, match="only once"):
        p.__init__(Size())
    assert p.buffer_size == 64 and p.cached_bytes() == 64
    bufs = [p.acquire() for _ in range(3)]
    for b in bufs:
        memoryview(b)[:] = b"\xff" * 64
        assert len(b) == 64
    for b in bufs:
        b.release()
    assert p.bytes_allocated() == 0


@pytest.mark.parametrize("order", ["buffer_first", "container_first"])
def test_buffer_collected_in_a_cycle_returns_to_pool(order):
    # A pooled buffer referenced from a reference cycle is freed by the
    # cyclic GC. Its tp_clear used to drop the pool reference first, so the
    # block went to tcalloc without the pool's accounting: with max_bytes set
    # the pool then refused every acquire with no buffer out.
    p = BufferPool(4096, max_bytes=4096)
    for _ in range(3):
        if order == "buffer_first":
            b = p.acquire()
            holder = [b]
        else:
            holder = []
            b = p.acquire()
            holder.append(b)
        holder.append(holder)
        del b, holder
        gc.collect()
        assert p.stats()["buffers_out"] == 0
        assert p.bytes_allocated() == 0 and p.cached_bytes() == 4096
        with p.acquire() as c:
            assert len(c) == 4096


def test_buffer_in_a_cycle_through_a_pool_subclass():
    # The pool itself is part of the cycle (pool -> __dict__ -> buffer -> pool):
    # the buffer keeps its pool reference through tp_clear, but still reports
    # it to the GC, so such a cycle is collected, not leaked.
    class MyPool(BufferPool):
        pass
    p = MyPool(1024, max_bytes=1024)
    import weakref
    p.keep = p.acquire()
    ref = weakref.ref(p)
    del p
    gc.collect()
    assert ref() is None


def test_a_pool_subclass_may_take_arguments_of_its_own():
    # The settings are __init__'s, so a subclass's constructor may have its
    # own signature; one that forgets super().__init__() gets a clear error
    # from the pool, and a second __init__ is refused.
    class NamedPool(BufferPool):
        def __init__(self, name, size):
            super().__init__(size, max_bytes=4 * size)
            self.name = name
    p = NamedPool("net", 512)
    assert (p.name, p.buffer_size, p.max_bytes) == ("net", 512, 2048)
    with p.acquire() as b:
        assert len(b) == 512
    with pytest.raises(TypeError, match="only once"):
        BufferPool.__init__(p, 1024)
    assert p.buffer_size == 512

    class Forgetful(BufferPool):
        def __init__(self, name):
            self.name = name
    f = Forgetful("x")
    for call in (f.acquire, f.get_buffer):
        with pytest.raises(TypeError, match="super"):
            call()


def test_get_buffer_sizes():
    p = BufferPool(1024)
    assert len(p.get_buffer(-1)) == 1024
    assert len(p.get_buffer(0)) == 1024
    assert len(p.get_buffer(100)) == 1024
    assert len(p.get_buffer(5000)) == 5000
    assert len(p.get_buffer(None)) == 1024

    class Hint:
        def __index__(self):
            return 3000
    assert len(p.get_buffer(Hint())) == 3000
    for huge in (2**63 - 1, 2**64, 2**70):
        with pytest.raises(MemoryError, match="cannot allocate"):
            p.get_buffer(huge)
    assert p.num_allocations() == 6


@pytest.mark.parametrize("hint,exc", [
    (1.5, TypeError), ("x", TypeError), (True, TypeError), (b"1", TypeError),
    (-2, ValueError), (-(2**70), ValueError),
])
def test_bad_get_buffer_hints(hint, exc):
    # get_buffer(1.5) was accepted, get_buffer('x') gave a comparison TypeError.
    p = BufferPool(64)
    with pytest.raises(exc, match="sizehint"):
        p.get_buffer(hint)
    assert p.num_allocations() == 0


def test_many_threads_with_content_checks():
    p = BufferPool(8192, max_bytes=9000 * 50)   # > 8 threads x 5 held x 9000
    errors = []

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


def test_gc_during_pool_call_does_not_deadlock():
    # A garbage cycle holding a pooled buffer may be collected by any
    # allocation of a container object; the buffer's finaliser then takes the
    # pool's lock. No pool method may allocate Python objects while it holds
    # that (non-reentrant) lock, or the thread spins on it forever. With a GC
    # threshold of 1 every container allocation collects. Run apart: a
    # failure is a hang.
    code = textwrap.dedent("""
        import gc, tcalloc
        p = tcalloc.BufferPool(64, max_bytes=1 << 20)
        def garbage():
            c = [p.acquire()]
            c.append(c)
        keep = p.acquire()
        gc.set_threshold(1, 1, 1)
        for i in range(200):
            garbage(); p.stats()
            garbage(); repr(p)
            garbage(); keep.resize(1000 + i)
            garbage(); p.acquire(10 ** 6).release()
            garbage()
            try:
                p.acquire(1 << 30)
            except MemoryError:
                pass
            garbage()
            try:
                keep.resize(1 << 30)
            except MemoryError:
                pass
            garbage(); p.release_unused()
        gc.set_threshold(700, 10, 10)
        gc.collect()
        print(p.stats()["buffers_out"])
    """)
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1"]
