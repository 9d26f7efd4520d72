"""Model-based tests.

C API: random sequences of malloc/calloc/realloc/aligned_alloc/free/
usable_size (and calls that must fail) with sizes at every size-class
boundary and alignments at every power of two, checked call by call against
a model of the live blocks and their contents (tct_native.model_run (tests/native/tct_native.pyx)).

Python API: a hypothesis state machine drives tcalloc.alloc, Buffer.resize,
memoryview exports, release, and BufferPool acquire/release against a model.
"""
import os
import subprocess
import sys

import pytest
from hypothesis import settings, strategies as st, HealthCheck
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

import tcalloc
import tct_native as tn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(tcalloc.__file__)))
KMAX_SMALL = 256 * 1024
PAGE = 8192


def boundary_sizes():
    out = {0, 1, 2, 7, 8, 9, 15, 16, 17}
    for _, size, pages, _, _ in tcalloc.size_class_table():
        out.update((size - 1, size, size + 1))
        out.update((pages * PAGE - 1, pages * PAGE, pages * PAGE + 1))
    for n in (KMAX_SMALL, 128 * PAGE, 2 * 128 * PAGE):     # small/large edge, page-heap list edge
        out.update((n - 1, n, n + 1, n + PAGE))
    return sorted(s for s in out if s >= 0)


ALIGNS = [1 << i for i in range(0, 17)] + [1 << 20]


@pytest.mark.parametrize("seed", range(1, 9))
def test_c_api_random_sequences_match_the_model(seed):
    bad, counts = tn.model_run(seed, 6000, boundary_sizes(), ALIGNS, max_live=48)
    assert bad == [], "\n".join(bad[:20])
    assert counts["malloc"] and counts["free"] and counts["realloc"] and counts["aligned_alloc"]


def test_model_checker_sees_a_stray_write():
    # The checks above must be able to fail: a one-byte change is seen.
    p = tn.malloc(1000)
    tn.fill(p, 1000, 42)
    assert tn.check(p, 1000, 42)
    q = tn.malloc(1000)
    tn.fill(q, 1000, 43)
    assert not tn.check(q, 1000, 42)
    tn.free(p)
    tn.free(q)


def test_every_class_boundary_gets_the_right_usable_size():
    table = tcalloc.size_class_table()
    sizes = [row[1] for row in table]
    for i, size in enumerate(sizes):
        for n in (size - 1, size, size + 1):
            if n <= 0 or n > KMAX_SMALL:
                continue
            p = tn.malloc(n)
            assert p, n
            want = tcalloc.size_class_of(n)[1]
            assert tn.usable_size(p) == want >= n, (n, tn.usable_size(p), want)
            assert p % (16 if n >= 16 else 8) == 0
            tn.fill(p, want, n)
            assert tn.check(p, want, n)
            tn.free(p)
    p = tn.malloc(KMAX_SMALL + 1)
    assert tn.usable_size(p) == KMAX_SMALL + PAGE and p % PAGE == 0
    tn.free(p)


@pytest.mark.parametrize("align", ALIGNS)
def test_alignment_edges(align):
    ptrs = []
    for n in (0, 1, align - 1 if align > 1 else 1, align, align + 1, 3 * align, KMAX_SMALL + 1):
        p = tn.aligned_alloc(align, n)
        assert p and p % align == 0, (align, n, p)
        assert tn.usable_size(p) >= n
        tn.fill(p, max(n, 1), align + n)
        ptrs.append((p, max(n, 1), align + n))
    for p, n, seed in ptrs:
        assert tn.check(p, n, seed)
        tn.free(p)
    assert tn.aligned_alloc(align * 3 if align > 1 else 3, 64) == 0 and tn.last_errno() == 22


def test_stats_account_for_every_block():
    # In a fresh process nothing else allocates through tcalloc: after a
    # model run frees everything, bytes_in_use is back where it started, and
    # the stats identity holds.
    code = ("import tcalloc\n"
            "import tct_native as tn\n"
            "from tests.test_model import boundary_sizes, ALIGNS\n"
            "b0 = tcalloc.stats()['bytes_in_use']\n"
            "bad, c = tn.model_run(99, 8000, boundary_sizes(), ALIGNS)\n"
            "assert bad == [], bad[:5]\n"
            "s = tcalloc.stats()\n"
            "parts = sum(s[k] for k in ('bytes_in_use', 'page_heap_free_bytes', 'page_heap_released_bytes',\n"
            "    'central_free_bytes', 'transfer_cache_free_bytes', 'thread_cache_free_bytes', 'span_overhead_bytes'))\n"
            "assert s['bytes_in_use'] == b0, (b0, s['bytes_in_use'])\n"
            "assert parts == s['heap_bytes'], (parts, s['heap_bytes'])\n"
            "print('ok')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("TCALLOC_DEBUG", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


# ---- Python API state machine --------------------------------------------------

def _python_api():
    return tcalloc


class Entry:
    """Model of one Buffer: the bytes it must hold, its live exports."""

    def __init__(self, buf, content, align=None, pool=None, block=0):
        self.buf = buf
        self.content = bytearray(content)
        self.align = align
        self.pool = pool
        self.block = block          # pooled: the bytes the pool counts for it
        self.views = []
        self.released = False


POOL_MAX = 1 << 20


class PythonAPIMachine(RuleBasedStateMachine):
    buffers = Bundle("buffers")

    def __init__(self):
        super().__init__()
        self.api = _python_api()
        self.pool = self.api.BufferPool(4096, max_bytes=POOL_MAX)
        self.live = []
        self.pool_count = 0

    def _record(self, e):
        self.live.append(e)
        return e

    @rule(target=buffers, size=st.integers(0, 70000), zero=st.booleans(),
          align=st.sampled_from([None, 16, 64, 4096, 65536]), byte=st.integers(0, 255))
    def alloc(self, size, zero, align, byte):
        b = self.api.alloc(size, zero=zero, alignment=align)
        assert len(b) == size and b.capacity >= size
        if align:
            assert b.address % align == 0
        if zero:
            assert bytes(memoryview(b)) == bytes(size)
        memoryview(b)[:] = bytes([byte]) * size
        return self._record(Entry(b, bytes([byte]) * size, align))

    @rule(target=buffers, size=st.one_of(st.none(), st.integers(0, 10000)), byte=st.integers(0, 255))
    def acquire(self, size, byte):
        try:
            b = self.pool.acquire(size)
        except MemoryError:
            assert self.pool.bytes_allocated() + max(size or 4096, 4096) > POOL_MAX
            return self._record(Entry(self.api.alloc(1, zero=True), b"\0", None))
        n = 4096 if size is None else size
        assert len(b) == n
        memoryview(b)[:] = bytes([byte]) * n
        self.pool_count += 1
        return self._record(Entry(b, bytes([byte]) * n, None, self.pool, max(n, 4096)))

    @rule(e=buffers, data=st.data())
    def write(self, e, data):
        if e.released or not e.content:
            return
        off = data.draw(st.integers(0, len(e.content) - 1))
        chunk = data.draw(st.binary(min_size=1, max_size=min(64, len(e.content) - off)))
        memoryview(e.buf)[off:off + len(chunk)] = chunk
        e.content[off:off + len(chunk)] = chunk

    @rule(e=buffers, size=st.integers(0, 300000))
    def resize(self, e, size):
        if e.released:
            with pytest.raises(ValueError):
                e.buf.resize(size)
            return
        if e.views:
            with pytest.raises(BufferError):
                e.buf.resize(size)
            return
        if e.pool is not None and size - e.block > POOL_MAX - self.pool.bytes_allocated():
            # Past what the pool may still hand out: refused, nothing changed.
            with pytest.raises(MemoryError, match="max_bytes"):
                e.buf.resize(size)
            assert bytes(memoryview(e.buf)) == bytes(e.content)
            return
        e.buf.resize(size)
        if e.pool is not None:
            e.block = max(e.block, size)
        keep = min(size, len(e.content))
        assert len(e.buf) == size
        assert bytes(memoryview(e.buf)[:keep]) == bytes(e.content[:keep])
        if e.align:
            assert e.buf.address % e.align == 0
        e.content = e.content[:keep] + bytes(memoryview(e.buf)[keep:size])

    @rule(e=buffers)
    def export(self, e):
        if e.released:
            with pytest.raises(ValueError):
                memoryview(e.buf)
            return
        e.views.append(memoryview(e.buf))

    @rule(e=buffers)
    def drop_export(self, e):
        if e.views:
            e.views.pop().release()

    @rule(e=buffers)
    def release(self, e):
        if e.views and not e.released:
            with pytest.raises(BufferError):
                e.buf.release()
            return
        e.buf.release()          # idempotent
        e.buf.release()
        e.released = True
        e.content = bytearray()

    @invariant()
    def contents_and_no_overlap(self):
        spans = []
        for e in self.live:
            if e.released:
                continue
            assert bytes(memoryview(e.buf)) == bytes(e.content)
            for v in e.views:
                assert len(v) == len(e.content)
            if len(e.content):
                spans.append((e.buf.address, e.buf.address + len(e.content)))
        spans.sort()
        for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
            assert a1 <= b0, "live buffers overlap"

    @invariant()
    def pool_accounting(self):
        # Exactly the blocks of the buffers out: each one's largest length
        # (at least buffer_size), whatever its capacity; never past max_bytes.
        out = sum(e.block for e in self.live if e.pool is not None and not e.released)
        assert self.pool.bytes_allocated() == out
        assert out <= POOL_MAX
        assert self.pool.bytes_allocated() <= self.pool.max_memory()
        assert self.pool.num_allocations() == self.pool_count

    def teardown(self):
        for e in self.live:
            for v in e.views:
                v.release()
            e.buf.release()
        if hasattr(self, "pool"):
            assert self.pool.bytes_allocated() == 0


PythonAPIMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None,
                                              suppress_health_check=[HealthCheck.too_slow])
TestPythonAPIModel = PythonAPIMachine.TestCase

