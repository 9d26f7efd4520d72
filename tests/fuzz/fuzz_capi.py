"""Coverage-guided fuzz target: tcalloc's C API against a model.

    python tests/fuzz/fuzz_capi.py [libFuzzer flags] [CORPUS_DIR ...]
    python tests/fuzz/fuzz_capi.py crash-file          # replay one input

A fuzz input is a sequence of operations (format below) on up to 32 live
blocks (one per slot): malloc, calloc, realloc, aligned_alloc, free, usable_size, and calls
that must fail. Sizes come from the size-class table (every class size -1,
=, +1), the span sizes, the small/large edge, the page-heap list edge, large
spans of 1..2048 pages +-1, 0, and sizes past what tcalloc serves; alignments
are every power of two up to 16 MiB, non-powers of two and huge powers.

Every result is checked against the model: a live block is filled over its
whole usable size with a pattern derived from its id and checked before
free and realloc (and by the check operations); usable_size >= the request;
the alignment asked for (16 bytes by default, 8 for requests under 16);
no overlap with another live block; calloc memory zero; realloc keeps the
prefix; a call that must fail returns NULL with errno ENOMEM (sizes) or
EINVAL (alignment) and leaves its block untouched; a call that must succeed
does, except under a hard memory limit an input may set a little above the
committed heap: then NULL + ENOMEM is allowed and the committed heap must
stay under the limit. After each input every block is freed, bytes_in_use is back to its
value before the input and the stats identity of the README holds.

The C API is reached through the test-only module tests/native/tct_fuzz.pyx,
which calls the capsule's table as a C extension does: errno is read right
after the call in C (from ctypes the interpreter may change it first), and
filling and checking MiB-sized blocks runs at memory speed. The operations
are decoded here, in Python, so atheris's coverage sees which kinds of
results the engine gave (moved or in-place realloc, small or large block,
failure paths).

Input format (a byte string; decoding stops where it ends):
    op byte: op % 8 picks the call, op // 8 a slot (0..31)
    0 malloc(size)            1 calloc(count, size)     2 realloc(slot, size)
    3 aligned_alloc(al, size) 4 free(slot)              5 usable_size + check
    6 NULL / zero-size calls, a hard memory limit, release_free_memory
    7 a call that must fail (errno checked)
    a size is one byte (kind) + two bytes (index/value), see read_size().
"""
import errno
import os
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

PAGE = 8192
MAX_LIVE = 32
LIVE_BYTES_CAP = 96 << 20      # the model skips allocations past this (memory of the run)
MAX_ALLOC = 1 << 46            # tcalloc refuses larger requests at once (ENOMEM)
SIZE_MAX = (1 << 64) - 1


def _edges():
    out = {0, 1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33}
    table = tcalloc.size_class_table()
    for _, size, pages, _, _ in table:
        out.update((size - 1, size, size + 1))
        out.update((pages * PAGE - 1, pages * PAGE, pages * PAGE + 1))
    kmax = table[-1][1]                      # the largest class: the small/large edge
    out.update((kmax - 1, kmax, kmax + 1, kmax + PAGE))
    for pages in (1, 2, 3, 4, 8, 16, 31, 32, 33, 64, 127, 128, 129, 255, 256, 257, 512,
                  1024, 2048):
        out.update((pages * PAGE - 1, pages * PAGE, pages * PAGE + 1))
    return sorted(out)


EDGES = _edges()                                    # sizes that must succeed
KMAX_SMALL = tcalloc.size_class_table()[-1][1]
BIG_LEGAL = [1 << 30, 1 << 34, 1 << 40]            # the OS may refuse them: never a crash
MUST_FAIL = [MAX_ALLOC + 1, 1 << 47, 1 << 63, SIZE_MAX - PAGE, SIZE_MAX - 1, SIZE_MAX]
ALIGNS = [1 << i for i in range(25)]                # 1 B .. 16 MiB: must succeed
BAD_ALIGNS = [0, 3, 6, 24, 48, 100, PAGE + 1, (1 << 20) - 1, (1 << 63) + 1, SIZE_MAX]
HUGE_ALIGNS = [1 << 44, 1 << 50, 1 << 63]           # powers of two past what tcalloc serves
COUNTS = [0, 1, 2, 3, 7, 16, 100, 4096, 1 << 32, 1 << 33, 1 << 63, SIZE_MAX]




def read_size(r):
    """A request size: kind byte % 4 -> an edge, an edge +- up to 127, a raw
    16-bit size, or (kind // 4) pages +- up to 127 bytes."""
    kind = r.u8()
    k = kind % 4
    if k == 0:
        return r.pick(EDGES)
    if k == 1:
        v = r.u16()
        return max(0, EDGES[(v >> 8) % len(EDGES)] + ((v & 0xFF) - 128))
    if k == 2:
        return r.u16()
    v = r.u16()
    return max(0, (kind >> 2) * PAGE + ((v & 0xFF) - 128))


def _key(bid):
    # The pattern key of block id bid (distinct ids, distinct patterns).
    return (bid * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & SIZE_MAX


class Model:
    def __init__(self):
        self.blocks = {}          # slot -> [addr, request, usable, key, zeroed]
        self.next_id = 1
        self.live_bytes = 0
        self.limit = None         # a hard memory limit this input set

    # ---- checks ----------------------------------------------------------------

    def fail(self, msg):
        raise Finding(msg)

    def check_new(self, what, p, n, usable, align, exclude=None):
        if p == 0:
            self.fail(f"{what}: NULL for a request that must succeed")
        if usable < n:
            self.fail(f"{what}: usable_size {usable} < request {n} (block {p:#x})")
        if p % align:
            self.fail(f"{what}: block {p:#x} not {align}-byte aligned")
        for slot, (q, _, qn, _, _) in self.blocks.items():
            if slot != exclude and p < q + qn and q < p + usable:
                self.fail(f"{what}: block {p:#x}+{usable} overlaps live block {q:#x}+{qn}")

    def check_block(self, slot, when):
        p, n, usable, key, _ = self.blocks[slot]
        if not tf.check(p, usable, key):
            self.fail(f"block {p:#x} (request {n}, usable {usable}) lost its contents "
                      f"before {when}")

    def refused(self, what, err):
        """A NULL from a call that must succeed: allowed only under the hard
        limit this input set, and then as ENOMEM."""
        if self.limit is None:
            self.fail(f"{what}: NULL, errno {err}")
        if err != errno.ENOMEM:
            self.fail(f"{what}: NULL under a hard limit with errno {err}, must be ENOMEM")

    def check_limit(self, what):
        if self.limit is not None:
            s = tcalloc.stats()
            committed = s["heap_bytes"] - s["page_heap_released_bytes"]
            if committed > self.limit:
                self.fail(f"{what}: committed heap {committed} past the hard limit {self.limit}")

    def adopt(self, slot, p, n, usable):
        self.check_limit(f"a block of {n} at {p:#x}")
        key = _key(self.next_id)
        self.next_id += 1
        tf.fill(p, usable, key)
        self.blocks[slot] = [p, n, usable, key, False]
        self.live_bytes += usable

    def room(self, n, new=True):
        return (len(self.blocks) < MAX_LIVE or not new) and self.live_bytes + n <= LIVE_BYTES_CAP

    def drop(self, slot, when):
        self.check_block(slot, when)
        p, _, usable, _, _ = self.blocks.pop(slot)
        self.live_bytes -= usable
        tf.free(p)

    @staticmethod
    def default_align(n):
        return 16 if n >= 16 else 8

    def expect_failure(self, what, p, err, want):
        if p != 0:
            self.fail(f"{what}: returned {p:#x}, must fail with errno {want}")
        if err != want:
            self.fail(f"{what}: NULL with errno {err}, must be {want} "
                      f"({errno.errorcode.get(want)})")

    # ---- operations ------------------------------------------------------------

    def op_malloc(self, slot, n):
        if slot in self.blocks or not self.room(n):
            return
        p, err = tf.malloc(n)
        if p == 0:
            return self.refused(f"malloc({n})", err)
        u = tf.usable_size(p)
        self.check_new(f"malloc({n})", p, max(n, 1), u, self.default_align(n))
        self.adopt(slot, p, n, u)

    def op_calloc(self, slot, count, n):
        total = count * n
        if total > SIZE_MAX:
            p, err = tf.calloc(count, n)
            self.expect_failure(f"calloc({count}, {n}) (overflows)", p, err, errno.ENOMEM)
            return
        if slot in self.blocks or not self.room(total):
            return
        p, err = tf.calloc(count, n)
        if p == 0:
            return self.refused(f"calloc({count}, {n})", err)
        u = tf.usable_size(p)
        self.check_new(f"calloc({count}, {n})", p, max(total, 1), u, self.default_align(total))
        if not tf.is_zero(p, total):
            self.fail(f"calloc({count}, {n}): block {p:#x} not zeroed")
        self.adopt(slot, p, total, u)

    def op_realloc(self, slot, n):
        if slot not in self.blocks:
            return
        p, old_n, old_u, key, _ = self.blocks[slot]
        if not self.room(n, new=False):
            return
        self.check_block(slot, f"realloc({p:#x}, {n})")
        q, err = tf.realloc(p, n)
        what = f"realloc({p:#x} of {old_n}, {n})"
        if q == 0:
            self.refused(what, err)
            self.check_block(slot, "a later use (after a refused realloc)")
            return
        u = tf.usable_size(q)
        # The model follows the block first: after a finding below, the
        # clean-up must free q, not the old pointer realloc already freed.
        self.blocks[slot] = [q, n, u, key, False]
        self.live_bytes += u - old_u
        self.check_new(what, q, max(n, 1), u, self.default_align(n), exclude=slot)
        keep = min(old_u, n)
        if not tf.check(q, keep, key):
            self.fail(f"{what}: {'moved to ' + hex(q) if q != p else 'in place'}, "
                      f"the first {keep} bytes not kept")
        if q == p:
            pass         # in place (shrink, same class, a large block grown): an edge for coverage
        self.live_bytes -= u
        del self.blocks[slot]
        self.adopt(slot, q, n, u)

    def op_aligned(self, slot, align, n):
        if slot in self.blocks or not self.room(n + align):
            return
        p, err = tf.aligned_alloc(align, n)
        if p == 0:
            return self.refused(f"aligned_alloc({align}, {n})", err)
        u = tf.usable_size(p)
        self.check_new(f"aligned_alloc({align}, {n})", p, max(n, 1), u,
                       max(align, self.default_align(n)))
        self.adopt(slot, p, n, u)

    def op_free(self, slot):
        if slot in self.blocks:
            self.drop(slot, "free")

    def op_usable(self, slot, every):
        if slot in self.blocks:
            p, n, usable, _, _ = self.blocks[slot]
            got = tf.usable_size(p)
            if got != usable:
                self.fail(f"usable_size({p:#x}) changed from {usable} to {got}")
            self.check_block(slot, "usable_size")
        if every:
            for s in list(self.blocks):
                self.check_block(s, "a full check")

    def op_null(self, slot, which, n):
        if which == 0:
            tf.free(0)
        elif which == 1:
            if tf.usable_size(0) != 0:
                self.fail("usable_size(NULL) != 0")
        elif which == 2:                  # realloc(NULL, n) is malloc(n)
            if slot in self.blocks or not self.room(n):
                return
            p, err = tf.realloc(0, n)
            if p == 0:
                return self.refused(f"realloc(NULL, {n})", err)
            u = tf.usable_size(p)
            self.check_new(f"realloc(NULL, {n})", p, max(n, 1), u, self.default_align(n))
            self.adopt(slot, p, n, u)
        elif which == 3 and slot in self.blocks:   # realloc(p, 0): a minimal live block
            self.op_realloc(slot, 0)
        elif which == 4:
            # A hard limit a little above the committed heap: calls may now be
            # refused (NULL + ENOMEM), never crash, and the heap stays under it.
            s = tcalloc.stats()
            self.limit = s["heap_bytes"] - s["page_heap_released_bytes"] + n * 4096 + PAGE  # never 0: "no limit"
            tcalloc.set_memory_limit(self.limit, hard=True)
        elif which == 5:
            tcalloc.release_free_memory()
            if self.limit is not None and slot & 1:
                self.limit = None
                tcalloc.set_memory_limit(None)

    def op_must_fail(self, slot, which, r):
        if which == 0:
            n = r.pick(MUST_FAIL)
            p, err = tf.malloc(n)
            self.expect_failure(f"malloc({n})", p, err, errno.ENOMEM)
        elif which == 1:
            a, b = r.pick(COUNTS), r.pick(COUNTS + MUST_FAIL)
            if a * b <= MAX_ALLOC:
                return
            p, err = tf.calloc(a, b)
            self.expect_failure(f"calloc({a}, {b})", p, err, errno.ENOMEM)
        elif which == 2:
            n = r.pick(MUST_FAIL)
            if slot not in self.blocks:
                return
            p = self.blocks[slot][0]
            q, err = tf.realloc(p, n)
            self.expect_failure(f"realloc({p:#x}, {n})", q, err, errno.ENOMEM)
            self.check_block(slot, "a later use (after a failed realloc)")
        elif which == 3:
            a, n = r.pick(BAD_ALIGNS), read_size(r)
            p, err = tf.aligned_alloc(a, n)
            self.expect_failure(f"aligned_alloc({a}, {n}) (not a power of two)", p, err,
                                errno.EINVAL)
        elif which == 4:
            a, n = r.pick(HUGE_ALIGNS), read_size(r)
            p, err = tf.aligned_alloc(a, n)
            self.expect_failure(f"aligned_alloc({a}, {n}) (alignment past the address space)",
                                p, err, errno.ENOMEM)
        elif which == 5:
            a, n = r.pick(ALIGNS), r.pick(MUST_FAIL)
            p, err = tf.aligned_alloc(a, n)
            self.expect_failure(f"aligned_alloc({a}, {n})", p, err, errno.ENOMEM)
        elif which == 6:
            # Sizes the OS may refuse: NULL + ENOMEM, or a block that is
            # checked and freed untouched (touching it could take the RAM).
            n = r.pick(BIG_LEGAL)
            p, err = tf.malloc(n)
            if p == 0:
                self.expect_failure(f"malloc({n})", p, err, errno.ENOMEM)
            else:
                self.check_new(f"malloc({n})", p, n, tf.usable_size(p), PAGE)
                tf.free(p)
        else:
            n = r.pick(BIG_LEGAL)
            p, err = tf.calloc(1, n)
            if p == 0:
                self.expect_failure(f"calloc(1, {n})", p, err, errno.ENOMEM)
            else:
                self.check_new(f"calloc(1, {n})", p, n, tf.usable_size(p), PAGE)
                tf.free(p)

    def run(self, data):
        r = Reader(data)
        try:
            while True:
                op = r.u8()
                slot = op >> 3
                kind = op & 7
                if kind == 0:
                    self.op_malloc(slot, read_size(r))
                elif kind == 1:
                    count = r.pick(COUNTS[:8])
                    self.op_calloc(slot, count, read_size(r))
                elif kind == 2:
                    self.op_realloc(slot, read_size(r))
                elif kind == 3:
                    a = r.pick(ALIGNS)
                    self.op_aligned(slot, a, read_size(r))
                elif kind == 4:
                    self.op_free(slot)
                elif kind == 5:
                    self.op_usable(slot, r.u8() & 1)
                elif kind == 6:
                    which = r.u8() % 6
                    self.op_null(slot, which, read_size(r) if which in (2, 4) else 0)
                else:
                    self.op_must_fail(slot, r.u8() % 8, r)
        except EOFError:
            pass


POOLS = ("bytes_in_use", "page_heap_free_bytes", "page_heap_released_bytes",
         "central_free_bytes", "transfer_cache_free_bytes", "thread_cache_free_bytes",
         "span_overhead_bytes")


def test_one_input(data):
    start = tf.bytes_in_use()
    m = Model()
    try:
        m.run(data)
    except BaseException:
        for slot in list(m.blocks):        # the finding is reported; the heap stays usable
            tf.free(m.blocks.pop(slot)[0])
        raise
    finally:
        if m.limit is not None:
            tcalloc.set_memory_limit(None)
    for slot in list(m.blocks):
        m.drop(slot, "the end of the input")
    end = tf.bytes_in_use()
    if end != start:
        raise Finding(f"bytes_in_use {end} after every block was freed, {start} before")
    s = tcalloc.stats()
    parts = sum(s[k] for k in POOLS)
    if parts != s["heap_bytes"]:
        raise Finding("stats identity broken: " + ", ".join(f"{k}={s[k]}" for k in POOLS)
                      + f" add up to {parts}, heap_bytes={s['heap_bytes']}")


def main(argv):
    import atheris
    fault = os.environ.get("TC_FUZZ_FAULT")
    with atheris.instrument_imports(include=["tcalloc", "fuzz_capi"]):
        import fuzz_capi
    if fault:
        tf.set_fault(fault)
    atheris.Setup(argv, fuzz_capi.test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    main(sys.argv)
