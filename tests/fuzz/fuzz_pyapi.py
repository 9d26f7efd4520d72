"""Coverage-guided fuzz target: tcalloc's Python API against a model.

    python tests/fuzz/fuzz_pyapi.py [libFuzzer flags] [CORPUS_DIR ...]
    python tests/fuzz/fuzz_pyapi.py crash-file         # replay one input

A fuzz input is a sequence of operations on up to 24 buffers and 3 pools:
tcalloc.alloc and Buffer() with sizes, zero and alignment (good and bad),
memoryview exports and slices (read, write, strided), Buffer.resize,
release, ``with``, dropping the last reference, a reference cycle collected
by the GC, pickling, and BufferPool construction (good and bad settings),
acquire, get_buffer, release_unused. Every call is checked against a model:

- bad input raises ValueError, TypeError, MemoryError or BufferError, the
  one the documented contract names, with a message; any other exception,
  or a call that must fail and does not, is a finding (so is a crash);
- every live buffer holds exactly the bytes the model wrote into it
  (zeroed ones zero, grown ones keep their prefix), its length, capacity,
  alignment; exports pin it (resize/release raise BufferError);
- every pool's figures (bytes_allocated, buffers_out, max_memory,
  total_bytes_allocated, num_allocations) equal the model's after every
  operation, including failed acquires and grows (which change nothing),
  buffers freed by refcount or by the cyclic GC, and resizes; idle blocks
  stay within max_cached and, with the buffers out, within max_bytes;
- after the input everything is released, every pool is back to 0 bytes
  out, and tcalloc's bytes_in_use is back to its value before the input.

Input format: op byte (op % 16 picks the operation, op // 16 a slot), then
operation-specific bytes (see Fuzz.step); decoding stops where input ends.
"""
import gc
import os
import pickle
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
# The test-only native modules; tcalloc itself is the installed one (an
# instrumented build on PYTHONPATH for native coverage, docs/reliability.md).
sys.path.insert(0, os.path.join(ROOT, "tests", "native"))
sys.path.insert(0, HERE)

import tcalloc                 # noqa: E402
import tct_fuzz as tf          # noqa: E402
from fuzzinput import Finding, Reader   # noqa: E402,F401  (this directory)

OK_ERRORS = (ValueError, TypeError, MemoryError, BufferError)
MAX_BUFS = 24
LIVE_CAP = 48 << 20          # the model skips allocations past this
BIG = 8 << 20                # sizes the model allows to succeed (memory of the run)


def _sizes():
    out = {0, 1, 2, 7, 8, 15, 16, 17, 100, 4095, 4096, 4097, 8191, 8192, 8193,
           65535, 65536, 65537, 262143, 262144, 262145, 1 << 20, (1 << 20) + 1, BIG}
    for _, size, _, _, _ in tcalloc.size_class_table()[::7]:
        out.update((size - 1, size, size + 1))
    return sorted(out)


SIZES = _sizes()
# (value, exception the contract names, or None: a valid size)
BAD_SIZES = [(-1, ValueError), (-(1 << 70), ValueError), (True, TypeError), (1.5, TypeError),
             ("10", TypeError), (None, TypeError), (b"x", TypeError),
             ((1 << 46) + 1, MemoryError), ((1 << 63) - 1, MemoryError), (1 << 63, MemoryError),
             (1 << 64, MemoryError), (1 << 100, MemoryError)]
ALIGNS = [None, 1, 2, 8, 16, 32, 64, 256, 4096, 8192, 16384, 65536, 1 << 20]
BAD_ALIGNS = [(0, ValueError), (3, ValueError), (24, ValueError), (-8, ValueError),
              ((1 << 31), ValueError), (1 << 64, ValueError), (True, TypeError),
              (1.0, TypeError), ("64", TypeError)]
ZEROS = [False, True]
BAD_ZEROS = [(1, TypeError), (0, TypeError), (None, TypeError), ("yes", TypeError)]
POOL_SIZES = [1, 16, 100, 4096, 65536]
POOL_LIMITS = [None, 0, 1000, 4096, 65536, 300000, 1 << 20]
POOL_CACHED = [None, 0, 1, 2, 4]
BAD_POOL = [dict(buffer_size=0), dict(buffer_size=-1), dict(buffer_size=True),
            dict(buffer_size=1 << 63), dict(buffer_size=2.0), dict(max_bytes=-1),
            dict(max_bytes=1 << 63), dict(max_bytes="1"), dict(zero=1), dict(max_cached=-1),
            dict(max_cached=(1 << 24) + 1), dict(max_cached=1.5)]




class PoolModel:
    def __init__(self, pool, bs, limit, cached, zero):
        self.pool, self.bs, self.limit, self.max_cached, self.zero = pool, bs, limit, cached, zero
        self.out = self.count = self.peak = self.total = self.nacq = 0

    def commit(self, nbytes, acquire):
        self.out += nbytes
        self.peak = max(self.peak, self.out)
        self.total += nbytes
        if acquire:
            self.count += 1
            self.nacq += 1

    def check(self):
        st = self.pool.stats()
        want = dict(bytes_allocated=self.out, buffers_out=self.count, max_memory=self.peak,
                    total_bytes_allocated=self.total, num_allocations=self.nacq)
        got = {k: st[k] for k in want}
        if got != want:
            raise Finding(f"pool {self.pool!r}: figures {got}, model {want}")
        if (self.pool.bytes_allocated(), self.pool.max_memory(), self.pool.num_allocations(),
                self.pool.total_bytes_allocated()) != (self.out, self.peak, self.nacq, self.total):
            raise Finding(f"pool {self.pool!r}: accessors disagree with stats() {st}")
        if st["cached_bytes"] != st["cached_buffers"] * self.bs or self.pool.cached_bytes() != st["cached_bytes"]:
            raise Finding(f"pool {self.pool!r}: cached bytes {st}")
        if st["cached_buffers"] > (self.max_cached if self.max_cached is not None else 1 << 30):
            raise Finding(f"pool {self.pool!r}: {st['cached_buffers']} idle blocks, "
                          f"max_cached={self.max_cached}")
        if self.limit is not None and self.out + st["cached_bytes"] > self.limit:
            raise Finding(f"pool {self.pool!r}: out {self.out} + idle {st['cached_bytes']} "
                          f"> max_bytes {self.limit}")
        if not 0 <= st["fresh_allocations"] <= st["num_allocations"]:
            raise Finding(f"pool {self.pool!r}: fresh_allocations {st}")


class Entry:
    def __init__(self, buf, content, zero, align, pool=None, block=0):
        self.buf, self.content, self.zero, self.align = buf, bytearray(content), zero, align
        self.pool, self.block = pool, block
        self.views = []


def expect(exc_types, fn, *args, **kw):
    """Call fn, which must raise one of exc_types (with a message)."""
    try:
        fn(*args, **kw)
    except OK_ERRORS as e:
        if not isinstance(e, exc_types):
            raise Finding(f"{fn.__name__}{args}{kw}: {type(e).__name__}({e}), must raise "
                          f"{'/'.join(t.__name__ for t in exc_types)}") from e
        if not str(e):
            raise Finding(f"{fn.__name__}{args}{kw}: {type(e).__name__} without a message")
        return e
    raise Finding(f"{fn.__name__}{args}{kw}: returned, must raise "
                  f"{'/'.join(t.__name__ for t in exc_types)}")


class Fuzz:
    def __init__(self):
        self.bufs = {}            # slot -> Entry
        self.pools = [None, None, None]
        self.pool_models = []     # every pool made in this input (kept to check at the end)
        self.live = 0
        self.key = 1

    # ---- helpers ---------------------------------------------------------------

    def pattern(self, n):
        self.key = (self.key * 6364136223846793005 + 1442695040888963407) & ((1 << 64) - 1)
        b = (self.key >> 56) or 1
        return bytes([b]) * n if n < 64 else (bytes(range(b, 256)) + bytes(range(b))) * (n // 256 + 1)

    def write_all(self, e):
        n = len(e.content)
        data = self.pattern(n)[:n]
        memoryview(e.buf)[:] = data
        e.content[:] = data

    def check_entry(self, e):
        b = e.buf
        if len(b) != len(e.content):
            raise Finding(f"{b!r}: len {len(b)}, model {len(e.content)}")
        if b.capacity < len(e.content):
            raise Finding(f"{b!r}: capacity {b.capacity} < len {len(e.content)}")
        if e.align and b.address % e.align:
            raise Finding(f"{b!r}: address not {e.align}-aligned")
        if len(e.content) >= 16 and b.address % 16:
            raise Finding(f"{b!r}: address not 16-aligned")
        if bytes(memoryview(b)) != e.content:
            raise Finding(f"{b!r}: contents differ from the model")
        if b.released or (b.pool is None) != (e.pool is None):
            raise Finding(f"{b!r}: released/pool state wrong")

    def check_pools(self):
        for pm in self.pool_models:
            pm.check()

    def gone(self, slot):
        """The buffer in slot went back (released, collected): update the model."""
        e = self.bufs.pop(slot)
        self.live -= len(e.content)
        if e.pool is not None:
            e.pool.out -= e.block
            e.pool.count -= 1

    def size_arg(self, r, bad_ok=True):
        """(size, expected exception or None)."""
        v = r.u8()
        if bad_ok and v % 8 == 7:
            return r.pick(BAD_SIZES)
        return r.pick(SIZES), None

    # ---- operations ------------------------------------------------------------

    def op_alloc(self, r, slot, ctor):
        size, err = self.size_arg(r)
        zb = r.u8()
        zero, zerr = (r.pick(BAD_ZEROS) if zb % 16 == 15 else (ZEROS[zb & 1], None))
        ab = r.u8()
        align, aerr = (r.pick(BAD_ALIGNS) if ab % 16 == 15 else (r.pick(ALIGNS), None))
        fn = tcalloc.Buffer if ctor else tcalloc.alloc
        errs = tuple(x for x in (err, zerr, aerr) if x)
        if errs:
            # Several bad arguments: the contract does not say which is named first.
            expect(errs, fn, size, zero=zero, alignment=align)
            return
        if slot in self.bufs or len(self.bufs) >= MAX_BUFS or self.live + size > LIVE_CAP:
            return
        b = fn(size, zero=zero, alignment=align)
        e = Entry(b, bytes(size), zero, align)
        if zero:
            self.check_entry(e)
        self.write_all(e)
        self.check_entry(e)
        self.bufs[slot] = e
        self.live += size
        if ctor:
            expect((TypeError,), b.__init__, 1)      # a Buffer holding memory cannot be re-made

    def op_pool(self, r, slot):
        k = slot % 3
        v = r.u8()
        if v % 8 == 7:
            kw = r.pick(BAD_POOL)
            expect((ValueError, TypeError), tcalloc.BufferPool, **kw)
            return
        bs, limit, cached = r.pick(POOL_SIZES), r.pick(POOL_LIMITS), r.pick(POOL_CACHED)
        zero = bool(v & 1)
        p = tcalloc.BufferPool(bs, max_bytes=limit, zero=zero, max_cached=cached)
        if p.max_bytes != limit or p.buffer_size != bs or p.backend_name != "tcalloc":
            raise Finding(f"{p!r}: settings not as given ({bs}, {limit})")
        pm = PoolModel(p, bs, limit, cached, zero)
        self.pools[k] = pm
        self.pool_models.append(pm)

    def op_acquire(self, r, slot, get_buffer):
        pm = self.pools[slot % 3]
        if pm is None:
            return
        if get_buffer:
            h = r.u8()
            hint = [-1, 0, None, 1, pm.bs, pm.bs + 1, 2 * pm.bs + 3, 300000][h % 8]
            if h // 8 == 31:
                hint, err = r.pick([(-2, ValueError), (True, TypeError), (1.5, TypeError),
                                    ((1 << 63) - 1, MemoryError), (1 << 64, MemoryError)])
            else:
                err = None
            n = pm.bs if hint is None or hint <= pm.bs else hint
            call, arg = pm.pool.get_buffer, hint
        else:
            size, err = self.size_arg(r)
            if r.u8() & 1 and err is None or size is None:
                size, err = None, None         # None: buffer_size, not a bad size here
            n = pm.bs if size is None else size
            call, arg = pm.pool.acquire, size
        block = max(n, pm.bs) if err is None else 0
        if err is None and pm.limit is not None and block > pm.limit - pm.out:
            err = MemoryError          # past max_bytes: refused, nothing counted
        if err is not None:
            expect((err,), call, arg)
            return
        if slot in self.bufs or len(self.bufs) >= MAX_BUFS or self.live + block > LIVE_CAP:
            return
        b = call(arg)
        pm.commit(block, True)
        e = Entry(b, bytes(n), pm.zero, None, pm, block)
        if b.pool is not pm.pool:
            raise Finding(f"{b!r}: pool is {b.pool!r}, not the pool it came from")
        if pm.zero:
            self.check_entry(e)
        self.write_all(e)
        self.bufs[slot] = e
        self.live += n

    def op_view(self, r, slot, what):
        e = self.bufs.get(slot)
        if e is None:
            return
        n = len(e.content)
        a, b, step = r.u16() % (n + 1), r.u16() % (n + 1), r.u8() % 4 + 1
        a, b = min(a, b), max(a, b)
        if what == 0:          # a new export (a slice of a view pins the buffer too)
            mv = memoryview(e.buf)
            e.views.append(mv[a:b] if step == 2 else mv)
        elif what == 1 and e.views:
            e.views.pop(r.u8() % len(e.views)).release()
        elif what == 2:        # slice write through a fresh view
            data = self.pattern(b - a)[:b - a]
            with memoryview(e.buf) as mv:
                mv[a:b] = data
            e.content[a:b] = data
        elif what == 3:        # strided read
            with memoryview(e.buf) as mv:
                if bytes(mv[a:b:step]) != bytes(e.content[a:b:step]):
                    raise Finding(f"{e.buf!r}: slice [{a}:{b}:{step}] differs from the model")
                if mv.format != "B" or mv.itemsize != 1 or mv.ndim != 1 or mv.readonly:
                    raise Finding(f"{e.buf!r}: view is {mv.format} {mv.ndim}-d readonly={mv.readonly}")

    def op_resize(self, r, slot):
        e = self.bufs.get(slot)
        if e is None:
            return
        size, err = self.size_arg(r)
        errs = (err,)
        if e.views:                  # the size is checked first: either may be named
            errs = (err, BufferError) if err else (BufferError,)
            err = err or BufferError
        # A pooled buffer counts its largest length, inside its capacity too.
        if err is None and e.pool is not None and size > e.block:
            delta = size - e.block
            if e.pool.limit is not None and delta > e.pool.limit - e.pool.out:
                err = MemoryError
        if err is not None:
            expect(errs if e.views else (err,), e.buf.resize, size)
            self.check_entry(e)                # a failed resize changes nothing
            e.pool and e.pool.check()
            return
        if self.live + size - len(e.content) > LIVE_CAP:
            return
        old = len(e.content)
        e.buf.resize(size)
        if e.pool is not None and size > e.block:
            e.pool.commit(size - e.block, False)
            e.block = size
        keep = min(old, size)
        got = bytes(memoryview(e.buf))
        if len(got) != size or got[:keep] != e.content[:keep]:
            raise Finding(f"resize({old} -> {size}) of {e.buf!r}: prefix not kept")
        if e.zero and got[keep:] != bytes(size - keep):
            raise Finding(f"resize({old} -> {size}) of zeroed {e.buf!r}: new bytes not zero")
        self.live += size - old
        e.content = bytearray(got)
        self.check_entry(e)

    def op_release(self, r, slot, how):
        e = self.bufs.get(slot)
        if e is None:
            return
        if e.views:
            if how == 0:
                expect((BufferError,), e.buf.release)
            elif how == 1:
                def with_block(b):
                    with b:
                        pass
                expect((BufferError,), with_block, e.buf)
            self.check_entry(e)
            return
        if how == 0:
            b = e.buf
            b.release()
            b.release()                      # idempotent
        elif how == 1:
            b = e.buf
            with b:
                pass
        elif how == 2:
            e.buf = None                     # the last reference: freed by refcount
        else:
            cycle = [e.buf]                  # only a cycle holds it: freed by the GC
            cycle.append(cycle)
            e.buf = None
            del cycle
        self.gone(slot)
        if how == 3:
            gc.collect()
        if how < 2:
            if not b.released or b.pool is not None:
                raise Finding(f"{b!r}: not released after release()")
            for f in (len, memoryview, lambda x: x.address, lambda x: x.capacity,
                      lambda x: x.resize(1), lambda x: x.__enter__()):
                expect((ValueError,), f, b)

    def op_pickle(self, slot):
        e = self.bufs.get(slot)
        if e is None:
            return
        c = pickle.loads(pickle.dumps(e.buf))
        if bytes(memoryview(c)) != e.content or c.pool is not None:
            raise Finding(f"pickled copy of {e.buf!r} differs")
        c.release()

    def op_release_unused(self, slot):
        pm = self.pools[slot % 3]
        if pm is None:
            return
        idle = pm.pool.cached_bytes()
        if pm.pool.release_unused() != idle or pm.pool.cached_bytes() != 0:
            raise Finding(f"{pm.pool!r}: release_unused() did not drop {idle} idle bytes")

    def step(self, r):
        op = r.u8()
        slot, kind = op >> 4, op & 15
        if kind == 0:
            self.op_alloc(r, slot, False)
        elif kind == 1:
            self.op_alloc(r, slot, True)
        elif kind == 2:
            self.op_pool(r, slot)
        elif kind in (3, 4):
            self.op_acquire(r, slot, kind == 4)
        elif kind in (5, 6, 7, 8):
            self.op_view(r, slot, kind - 5)
        elif kind == 9:
            self.op_resize(r, slot)
        elif kind in (10, 11, 12, 13):
            self.op_release(r, slot, kind - 10)
        elif kind == 14:
            self.op_pickle(slot)
        else:
            self.op_release_unused(slot)
        self.check_pools()
        e = self.bufs.get(slot)
        if e is not None:
            self.check_entry(e)

    def run(self, data):
        r = Reader(data)
        try:
            while True:
                self.step(r)
        except EOFError:
            pass
        for e in self.bufs.values():
            self.check_entry(e)

    def close(self):
        for e in list(self.bufs.values()):
            for v in e.views:
                v.release()
            if e.buf is not None:
                e.buf.release()
        for slot in list(self.bufs):
            self.gone(slot)


def test_one_input(data):
    start = tf.bytes_in_use()
    f = Fuzz()
    try:
        try:
            f.run(data)
        except OK_ERRORS as e:
            raise Finding(f"unexpected {type(e).__name__}: {e}") from e
        f.close()
        f.check_pools()
    finally:
        f.close()
    del f
    if tf.bytes_in_use() != start:
        gc.collect()                 # pools or buffers held by a cycle of this input
        if tf.bytes_in_use() != start:
            raise Finding(f"bytes_in_use {tf.bytes_in_use()} after the input, {start} before")


class _LeakyPool(tcalloc.BufferPool):
    """A pool that keeps one extra buffer per acquire out of sight: the fault
    (TC_FUZZ_FAULT=pool_leak) the fuzz test uses to show that the
    model's pool checks fail on a pool whose figures drift."""

    def acquire(self, size=None):
        b = super().acquire(size)
        try:
            _LeakyPool.hidden.append(super().acquire())
        except MemoryError:
            pass
        return b


_LeakyPool.hidden = []


def main(argv):
    import atheris
    with atheris.instrument_imports(include=["tcalloc", "fuzz_pyapi"]):
        import fuzz_pyapi
    if os.environ.get("TC_FUZZ_FAULT") == "pool_leak":
        fuzz_pyapi.tcalloc = type(sys)("tcalloc_leaky")
        fuzz_pyapi.tcalloc.__dict__.update(vars(tcalloc), BufferPool=_LeakyPool)
    atheris.Setup(argv, fuzz_pyapi.test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    main(sys.argv)
