"""BufferPool's pyarrow-style figures stay exact: a model of the pool checked
after every step (hypothesis), under threads, and across os.fork().

Failing acquires and grows come in two kinds: refused by the pool's own
max_bytes, and refused by tcalloc (2**61 bytes cannot be mapped) after the
pool let them through. Neither may leave a trace in the figures. Buffers
also die inside reference cycles, collected by the cyclic GC: they must come
back to the pool exactly as if released.
"""
import gc
import os
import random
import sys
import threading

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tcalloc import BufferPool, size_class_of

HUGE = 1 << 61          # within a 2**62 max_bytes, but no machine maps it


def _class_size(n):
    """The usable size of a block of n bytes (small classes; larger: None)."""
    return size_class_of(n)[1] if n <= 256 << 10 else None


class PoolModel:
    """The pool's documented policy in plain Python."""

    def __init__(self, buffer_size, max_bytes, max_cached):
        self.bs, self.limit, self.max_cached = buffer_size, max_bytes, max_cached
        self.out = {}               # model id -> block bytes
        self.ncached = 0
        self.peak = self.total = self.nacq = self.nfresh = 0

    @property
    def out_bytes(self):
        return sum(self.out.values())

    def refuses(self, block):
        """The pool's own limit says no (nothing changes)."""
        return self.limit is not None and block > self.limit - self.out_bytes

    def acquire_starts(self, n):
        """The part of acquire that happens before tcalloc is asked: returns
        (block, recycled); trims idle blocks to keep out + idle <= limit."""
        block = self.bs if n <= self.bs else n
        if block == self.bs and self.ncached:
            self.ncached -= 1
            return block, True
        while self.limit is not None and self.ncached and \
                self.out_bytes + block + self.ncached * self.bs > self.limit:
            self.ncached -= 1
        return block, False

    def acquire_succeeds(self, key, block, recycled):
        self.out[key] = block
        self.nacq += 1
        self.total += block
        self.nfresh += not recycled
        self.peak = max(self.peak, self.out_bytes)

    def grow_starts(self, delta):
        """The part of a grow before tcalloc is asked: trims idle blocks to
        keep out + idle <= limit."""
        while self.limit is not None and self.ncached and \
                self.out_bytes + delta + self.ncached * self.bs > self.limit:
            self.ncached -= 1

    def grow(self, key, delta):
        self.out[key] += delta
        self.total += delta
        self.peak = max(self.peak, self.out_bytes)

    def release(self, key):
        # Kept if it is a buffer_size block: its size class is buffer_size's
        # (a buffer grown inside its capacity still holds one).
        block = self.out.pop(key)
        if _class_size(block) == _class_size(self.bs) and self.ncached < self.max_cached and \
                (self.limit is None or self.out_bytes + (self.ncached + 1) * self.bs <= self.limit):
            self.ncached += 1

    def figures(self):
        return dict(bytes_allocated=self.out_bytes, buffers_out=len(self.out),
                    max_memory=self.peak, total_bytes_allocated=self.total,
                    num_allocations=self.nacq, fresh_allocations=self.nfresh,
                    cached_buffers=self.ncached, cached_bytes=self.ncached * self.bs)


def pool_figures(p):
    st_ = p.stats()
    # The single-figure methods agree with the snapshot.
    assert [p.bytes_allocated(), p.max_memory(), p.total_bytes_allocated(),
            p.num_allocations(), p.cached_bytes()] == \
        [st_["bytes_allocated"], st_["max_memory"], st_["total_bytes_allocated"],
         st_["num_allocations"], st_["cached_bytes"]]
    return st_


class PoolMachine(RuleBasedStateMachine):
    # Buffers live only in self.live (not in a hypothesis Bundle, which keeps
    # its own references): dropping one into a cycle must leave the cycle as
    # its only owner.

    @initialize(bs=st.sampled_from([64, 4096]),
                limit_blocks=st.sampled_from([None, 0, 1, 2, 3, 8, "huge"]),
                max_cached=st.sampled_from([0, 1, 3]))
    def make_pool(self, bs, limit_blocks, max_cached):
        limit = None if limit_blocks is None else \
            (1 << 62 if limit_blocks == "huge" else limit_blocks * bs + bs // 2)
        self.pool = BufferPool(bs, max_bytes=limit, max_cached=max_cached)
        self.model = PoolModel(bs, limit, max_cached)
        self.live = {}              # model key -> Buffer
        self.next_key = 0

    def _sizes(self):
        bs = self.model.bs
        return [0, 1, bs - 1, bs, bs + 1, 3 * bs, HUGE]

    def _pick(self, i):
        keys = sorted(self.live)
        return keys[i % len(keys)]

    def _acquire(self, n, via_get_buffer):
        m = self.model
        call = self.pool.get_buffer if via_get_buffer else self.pool.acquire
        block = m.bs if n <= m.bs else n
        if m.refuses(block):
            with pytest.raises(MemoryError, match="BufferPool limit reached"):
                call(n)
            return
        block, recycled = m.acquire_starts(n)
        if n >= HUGE:
            with pytest.raises(MemoryError, match="cannot allocate"):
                call(n)
            return
        b = call(n)
        assert len(b) == (m.bs if via_get_buffer and n <= m.bs else n)
        key = self.next_key
        self.next_key += 1
        self.live[key] = b
        m.acquire_succeeds(key, block, recycled)

    @rule(i=st.integers(0, 6), via_get_buffer=st.booleans())
    def acquire(self, i, via_get_buffer):
        self._acquire(self._sizes()[i], via_get_buffer)

    @rule()
    def acquire_fails_by_size(self):
        # 2**63 - 1 bytes: refused by max_bytes, or by tcalloc without a limit.
        with pytest.raises(MemoryError):
            self.pool.acquire(2**63 - 1)

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 1 << 16))
    def release(self, i):
        key = self._pick(i)
        b = self.live.pop(key)
        self.model.release(key)
        b.release()
        assert b.released

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 1 << 16), buffer_first=st.booleans())
    def drop_in_cycle(self, i, buffer_first):
        key = self._pick(i)
        self.model.release(key)
        # Referenced from a cycle only: freed by gc.collect(). The order of the
        # two objects in the GC's list decides which one it clears first.
        if buffer_first:
            b = self.live.pop(key)
            holder = [b]
        else:
            holder = [None]
            holder[0] = self.live.pop(key)
        holder.append(holder)
        b = None
        del holder
        gc.collect()

    @precondition(lambda self: self.live)
    @rule(i=st.integers(0, 1 << 16), j=st.integers(0, 6))
    def resize(self, i, j):
        m = self.model
        key = self._pick(i)
        b = self.live[key]
        n = self._sizes()[j]
        if n <= m.out[key]:         # within the block the pool counts
            b.resize(n)
            assert len(b) == n
            return
        delta = n - m.out[key]      # counted even inside the block's capacity
        if m.limit is not None and delta > m.limit - m.out_bytes:
            with pytest.raises(MemoryError, match="BufferPool limit reached"):
                b.resize(n)
            return
        m.grow_starts(delta)
        if n >= HUGE:
            with pytest.raises(MemoryError, match="cannot allocate"):
                b.resize(n)
        else:
            b.resize(n)
            assert len(b) == n
            m.grow(key, delta)

    @rule()
    def release_unused(self):
        dropped = self.model.ncached * self.model.bs
        assert self.pool.release_unused() == dropped
        self.model.ncached = 0

    @invariant()
    def figures_match_model(self):
        if hasattr(self, "pool"):
            figures = pool_figures(self.pool)
            assert figures == self.model.figures()
            if self.model.limit is not None:
                # max_bytes bounds what the pool holds: out plus idle blocks.
                assert figures["bytes_allocated"] + figures["cached_bytes"] <= self.model.limit


TestPoolModel = PoolMachine.TestCase
TestPoolModel.settings = settings(max_examples=400, stateful_step_count=40, deadline=None,
                                  suppress_health_check=[HealthCheck.too_slow])


# ---- threads -------------------------------------------------------------------

def test_figures_exact_under_threads():
    """8 threads acquire, grow, release and drop buffers into cycles on two
    pools (one with a tight max_bytes, one where tcalloc refuses huge asks);
    a checker thread reads snapshots meanwhile. Afterwards every figure equals
    the sum of what the threads saw succeed."""
    bs = 4096
    tight = BufferPool(bs, max_bytes=24 * bs, max_cached=6)
    loose = BufferPool(bs, max_bytes=1 << 62, max_cached=6)
    pools = (tight, loose)
    n_threads, steps = 8, 1500
    tallies = [dict(acq={id(p): 0 for p in pools}, total={id(p): 0 for p in pools})
               for _ in range(n_threads)]
    errors = []
    stop = threading.Event()

    def worker(t):
        rnd = random.Random(t)
        held = []                   # [pool, buffer, block bytes it accounts for]
        tally = tallies[t]
        try:
            for i in range(steps):
                p = pools[rnd.randrange(2)]
                r = rnd.random()
                if held and (len(held) > 5 or r < 0.35):
                    _, b, _ = held.pop(rnd.randrange(len(held)))
                    if rnd.random() < 0.2:
                        cycle = [b]
                        cycle.append(cycle)
                        del cycle, b
                        if i % 50 == 0:
                            gc.collect()
                    else:
                        b.release()
                elif r < 0.45 and held:
                    entry = held[rnd.randrange(len(held))]
                    q, b, block = entry
                    n = rnd.choice((bs * 2, bs * 5, HUGE))
                    old_len = len(b)
                    try:
                        b.resize(n)
                    except MemoryError:
                        assert len(b) == old_len and n > block
                    else:
                        if n > block:
                            tally["total"][id(q)] += n - block
                            entry[2] = n
                elif r < 0.5:
                    try:
                        p.acquire(HUGE if p is loose else 1 << 62)
                        errors.append("a huge acquire succeeded")
                    except MemoryError:
                        pass
                else:
                    n = rnd.choice((10, bs, bs + 1, 3 * bs))
                    try:
                        b = p.acquire(n)
                    except MemoryError:
                        assert p is tight
                        continue
                    tally["acq"][id(p)] += 1
                    tally["total"][id(p)] += max(n, bs)
                    held.append([p, b, max(n, bs)])
            for _, b, _ in held:
                b.release()
        except Exception as e:           # reported below
            errors.append(repr(e))

    def checker():
        last = {id(p): p.stats() for p in pools}
        while not stop.is_set():
            for p in pools:
                s = p.stats()
                prev = last[id(p)]
                try:
                    assert 0 <= s["bytes_allocated"] <= s["max_memory"]
                    assert s["max_memory"] >= prev["max_memory"]
                    assert s["total_bytes_allocated"] >= prev["total_bytes_allocated"]
                    assert s["num_allocations"] >= prev["num_allocations"]
                    assert 0 <= s["buffers_out"] <= s["num_allocations"]
                    assert s["fresh_allocations"] <= s["num_allocations"]
                    assert s["cached_buffers"] <= 6
                    if p is tight:
                        assert s["max_memory"] <= 24 * bs
                        assert s["bytes_allocated"] + s["cached_bytes"] <= 24 * bs
                except AssertionError as e:
                    errors.append("snapshot %r after %r: %r" % (s, prev, e))
                    return
                last[id(p)] = s

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    ck = threading.Thread(target=checker)
    ck.start()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    stop.set()
    ck.join()
    gc.collect()
    assert not errors, errors[:3]
    for p in pools:
        s = pool_figures(p)
        assert s["bytes_allocated"] == 0 and s["buffers_out"] == 0, s
        assert s["num_allocations"] == sum(t["acq"][id(p)] for t in tallies), s
        assert s["total_bytes_allocated"] == sum(t["total"][id(p)] for t in tallies), s
        assert s["cached_bytes"] == s["cached_buffers"] * bs
    assert tight.max_memory() <= 24 * bs
    # With nothing out, the tight pool hands out its whole limit again.
    got = [tight.acquire() for _ in range(24)]
    with pytest.raises(MemoryError, match="BufferPool limit reached"):
        tight.acquire()
    for b in got:
        b.release()


# ---- fork ------------------------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
# It forks while its threads use the pool, on purpose: Python 3.12+ warns.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_figures_exact_across_fork():
    """Fork while threads use the pool: the child's figures are the parent's
    at the fork, its own acquires and releases move them exactly, the limit
    holds to the byte, and nothing the child does shows in the parent."""
    bs = 4096
    limit = 32 * bs
    pool = BufferPool(bs, max_bytes=limit, max_cached=4)
    stop = threading.Event()
    errors = []

    def churn(seed):
        rnd = random.Random(seed)
        held = []
        try:
            while not stop.is_set():
                if held and (len(held) > 3 or rnd.random() < 0.5):
                    held.pop(rnd.randrange(len(held))).release()
                else:
                    try:
                        held.append(pool.acquire(rnd.choice((100, bs, 2 * bs))))
                    except MemoryError:
                        pass
            for b in held:
                b.release()
        except Exception as e:           # reported below
            errors.append(repr(e))

    ts = [threading.Thread(target=churn, args=(s,)) for s in range(3)]
    for t in ts:
        t.start()
    try:
        for _ in range(8):
            mine = pool.acquire()          # the parent's main thread holds one too
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    code = _child_checks(pool, bs, limit, mine)
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, \
                "child failed its pool checks (status %r)" % status
            mine.release()
    finally:
        stop.set()
        for t in ts:
            t.join()
    assert not errors, errors[:3]
    s = pool_figures(pool)
    assert s["bytes_allocated"] == 0 and s["buffers_out"] == 0
    assert s["max_memory"] <= limit


def _child_checks(pool, bs, limit, mine):
    """Runs in the forked child; returns the exit code (prints what failed)."""
    try:
        s0 = pool_figures(pool)
        # The other threads are gone; the buffers they held stay out.
        assert s0["bytes_allocated"] >= bs and s0["buffers_out"] >= 1
        assert s0["bytes_allocated"] + s0["cached_bytes"] <= limit
        got = []
        expect_out = s0["bytes_allocated"]
        fresh = 0
        cached = s0["cached_buffers"]
        while True:
            if expect_out + bs > limit:
                try:
                    pool.acquire()
                except MemoryError:
                    break
                raise AssertionError("acquire past max_bytes succeeded")
            got.append(pool.acquire())
            expect_out += bs
            if cached:
                cached -= 1
            else:
                fresh += 1
        s1 = pool_figures(pool)
        assert s1["bytes_allocated"] == expect_out > limit - bs
        assert s1["num_allocations"] == s0["num_allocations"] + len(got)
        assert s1["total_bytes_allocated"] == s0["total_bytes_allocated"] + len(got) * bs
        assert s1["max_memory"] == max(s0["max_memory"], expect_out)
        assert s1["fresh_allocations"] == s0["fresh_allocations"] + fresh
        # A buffer that dies in a cycle comes back: the limit has room again.
        dropped = got.pop()
        cycle = [dropped]
        cycle.append(cycle)
        del cycle, dropped
        gc.collect()
        assert pool.bytes_allocated() == expect_out - bs
        got.append(pool.acquire())
        for b in got:
            b.release()
        mine.release()
        s2 = pool_figures(pool)
        assert s2["bytes_allocated"] == s0["bytes_allocated"] - bs
        assert s2["buffers_out"] == s0["buffers_out"] - 1
        return 0
    except BaseException as e:
        sys.stderr.write("child check failed: %r\n" % (e,))
        sys.stderr.flush()
        return 1
