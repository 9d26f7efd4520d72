"""NEP 49 handler: NumPy arrays backed by tcalloc."""
import asyncio
import concurrent.futures
import ctypes
import pickle
import subprocess
import sys
import threading

import pytest

import tcalloc
import tcalloc.numpy as tnp

np = pytest.importorskip("numpy")
try:
    from numpy._core.multiarray import get_handler_name
except ImportError:          # NumPy 1.x
    from numpy.core.multiarray import get_handler_name


def test_importing_tcalloc_does_not_import_numpy():
    code = "import sys, tcalloc, tcalloc.numpy; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


def test_capsule_and_name():
    assert type(tnp.handler).__name__ == "PyCapsule"
    assert "mem_handler" in repr(tnp.handler)
    with tnp.use():
        a = np.empty(100)
        assert get_handler_name() == "tcalloc"
    assert get_handler_name(a) == "tcalloc"
    assert get_handler_name() != "tcalloc"
    assert get_handler_name(np.empty(100)) != "tcalloc"


def test_arrays_live_in_tcalloc():
    before = tcalloc.stats()["large_bytes_in_use"]
    with tnp.use():
        a = np.ones(1 << 20)          # 8 MiB
    assert tcalloc.stats()["large_bytes_in_use"] >= before + (8 << 20)
    del a
    assert tcalloc.stats()["large_bytes_in_use"] == before


def test_arrays_behave():
    with tnp.use():
        a = np.arange(100_000, dtype=np.float64)
        b = np.sqrt(a) + a * 2
        z = np.zeros((300, 300))
        c = np.empty(0)
        s = a.astype(np.int32)
        a2 = a.copy()
        a2.resize(300_000, refcheck=False)
    assert get_handler_name(b) == "tcalloc" and get_handler_name(z) == "tcalloc"
    assert z.sum() == 0 and c.size == 0
    assert s[99_999] == 99_999
    assert (a2[:100_000] == a).all() and (a2[100_000:] == 0).all()
    assert np.allclose(b[:4], [0, 3, 4 + 2 ** 0.5, 6 + 3 ** 0.5])
    r = pickle.loads(pickle.dumps(b))
    assert (r == b).all()


def test_views_outlive_context_and_base():
    with tnp.use():
        base = np.arange(1000, dtype=np.int64)
    view = base[10:20]
    del base
    # A view owns no memory (handler name None); its base holds the block.
    assert get_handler_name(view) is None and get_handler_name(view.base) == "tcalloc"
    assert view.tolist() == list(range(10, 20))


def test_nested_use_restores():
    prev_name = get_handler_name()
    with tnp.use():
        with tnp.use():
            pass
        assert get_handler_name() == "tcalloc"
    assert get_handler_name() == prev_name


def test_handler_is_per_thread_context():
    seen = {}
    with tnp.use():
        t = threading.Thread(target=lambda: seen.setdefault("n", get_handler_name(np.empty(5))))
        t.start()
        t.join()
    assert seen["n"] != "tcalloc"       # new threads start with NumPy's default


def test_many_threads_using_handler():
    errors = []

    def worker(k):
        try:
            with tnp.use():
                for i in range(300):
                    a = np.full(1000 + i * 37, k, dtype=np.int64)
                    assert get_handler_name(a) == "tcalloc"
                    assert int(a.sum()) == k * a.size
        except Exception as e:          # reported below
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors


def test_frombuffer_on_tcalloc_buffer():
    b = tcalloc.alloc(80)
    a = np.frombuffer(b, dtype=np.float64)
    a[:] = 1.5
    with pytest.raises(BufferError):
        b.release()
    assert bytes(b) == np.full(10, 1.5).tobytes()
    del a
    b.release()


def test_set_handler_rejects_non_capsules():
    with pytest.raises(TypeError):
        tnp.set_handler("tcalloc")


# ---- set_default(): every thread ------------------------------------------------

@pytest.fixture
def default_on():
    """set_default() for one test; NumPy's allocator again afterwards (the
    switch is process-wide, and other tests of this worker expect it off)."""
    tnp.set_default()
    try:
        yield
    finally:
        tnp.restore_default()


def _name_of_new_array():
    return tnp.handler_name(np.ones(1000))


def _in_c_thread(fn):
    """Run fn in a thread created by pthread_create (ctypes gives it a new
    thread state and a fresh context, as any C library's thread gets)."""
    libc = ctypes.CDLL(None)
    out = []
    start = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)(
        lambda arg: out.append(fn()))
    tid = ctypes.c_ulong()
    assert libc.pthread_create(ctypes.byref(tid), None, start, None) == 0
    assert libc.pthread_join(tid, None) == 0      # releases the GIL meanwhile
    return out[0]


def _names_everywhere():
    """The allocator of a new array in each kind of thread."""
    seen = {"main": _name_of_new_array()}
    t = threading.Thread(target=lambda: seen.setdefault("thread", _name_of_new_array()))
    t.start()
    t.join()
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        seen["executor"] = ex.submit(_name_of_new_array).result()
    seen["to_thread"] = asyncio.run(asyncio.to_thread(_name_of_new_array))
    seen["c_thread"] = _in_c_thread(_name_of_new_array)
    return seen


def test_set_default_reaches_every_thread_and_is_undone():
    go, done = threading.Event(), threading.Event()
    early = {}

    def started_before():
        go.wait()
        early["name"] = _name_of_new_array()
        done.set()

    t = threading.Thread(target=started_before, daemon=True)
    t.start()
    try:
        assert set(_names_everywhere().values()) == {"default_allocator"}
        tnp.set_default()
        go.set()
        assert done.wait(60)
        assert early["name"] == "tcalloc"
        seen = _names_everywhere()
        assert seen == dict.fromkeys(seen, "tcalloc"), seen
        assert tnp.is_default()
    finally:
        go.set()
        tnp.restore_default()
    assert not tnp.is_default()
    assert set(_names_everywhere().values()) == {"default_allocator"}


def test_blocks_go_back_to_the_allocator_that_made_them():
    before = tcalloc.stats()["large_bytes_in_use"]
    numpy_made = [np.ones(1 << 17) for _ in range(4)]        # 1 MiB each, NumPy's
    small_numpy = [np.ones(8) for _ in range(50)]            # NumPy's small-block cache too
    tnp.set_default()
    try:
        ours = [np.ones(1 << 17) for _ in range(4)]
        assert all(tnp.owns(a) for a in ours) and not any(map(tnp.owns, numpy_made))
        assert tcalloc.stats()["large_bytes_in_use"] >= before + (4 << 20)
        del numpy_made, small_numpy                          # freed by NumPy's allocator
        grown = np.ones(10)
        grown.resize(1 << 17, refcheck=False)                # realloc of a tcalloc block
        assert tnp.owns(grown) and grown[0] == 1 and grown[-1] == 0
    finally:
        tnp.restore_default()
    assert tcalloc.stats()["large_bytes_in_use"] >= before + (4 << 20)
    del ours, grown                                          # freed by tcalloc, after the undo
    assert tcalloc.stats()["large_bytes_in_use"] == before


def test_switching_while_threads_allocate():
    stop = threading.Event()
    errors = []

    def worker(k):
        try:
            while not stop.is_set():
                arrs = [np.full(100 + 300 * i, k, dtype=np.int64) for i in range(20)]
                for a in arrs:
                    a.resize(a.size * 2, refcheck=False)
                    assert int(a.sum()) == k * (a.size // 2)
        except Exception as e:          # reported below
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in ts:
        t.start()
    try:
        for _ in range(30):
            tnp.set_default()
            tnp.restore_default()
    finally:
        stop.set()
        for t in ts:
            t.join()
    assert not errors


def test_set_default_leaves_explicit_handlers_alone(default_on):
    old = tnp.set_handler(None)        # None: NumPy's default handler, now on tcalloc
    try:
        assert tnp.handler_name(np.ones(10)) == "tcalloc"
    finally:
        tnp.set_handler(old)
    tnp.set_default()                  # idempotent
    assert tnp.is_default()


# ---- owns() / handler_name() --------------------------------------------------

def test_handler_name_matches_numpy_and_sees_through_views():
    with tnp.use():
        a = np.arange(1000)
    b = np.arange(1000)
    assert tnp.handler_name(a) == get_handler_name(a) == "tcalloc"
    assert tnp.handler_name(b) == get_handler_name(b) == "default_allocator"
    assert tnp.owns(a) and not tnp.owns(b)
    assert tnp.handler_name(a[5:].reshape(5, -1)[1:]) == "tcalloc"
    assert tnp.handler_name(b[::2]) == "default_allocator"
    buf = tcalloc.alloc(80)
    assert tnp.handler_name(np.frombuffer(buf)[2:]) == "tcalloc"
    assert tnp.handler_name(np.frombuffer(memoryview(buf))) == "tcalloc"
    assert tnp.handler_name(np.frombuffer(b"12345678")) is None
    assert not tnp.owns(np.frombuffer(bytearray(8)))


@pytest.mark.parametrize("bad", [None, [1, 2], b"ab", memoryview(b"x")])
def test_owns_and_handler_name_take_arrays_only(bad):
    with pytest.raises(TypeError, match="numpy.ndarray"):
        tnp.owns(bad)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        tnp.handler_name(bad)


_DEFAULT_DOUBLE_FREE = """
import ctypes, sys
import numpy as np, tcalloc, tcalloc.numpy as tnp
tnp.set_default()
get = ctypes.pythonapi.PyCapsule_GetPointer
get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
h = get(tnp.get_handler(), b"mem_handler")          # NumPy's default handler, switched
# PyDataMem_Handler: name[127], version (uint8), then the allocator: ctx, malloc, calloc,
# realloc, free
alloc = h + 128
ctx = ctypes.c_void_p.from_address(alloc).value
MALLOC = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
FREE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
malloc = MALLOC(ctypes.c_void_p.from_address(alloc + 8).value)
free = FREE(ctypes.c_void_p.from_address(alloc + 32).value)
n = int(sys.argv[1])
p = malloc(ctx, n)
free(ctx, p, n)
print("freed once %#x" % p, flush=True)
free(ctx, p, n)                                      # a double free through NumPy's handler
print("second free returned", flush=True)
"""


@pytest.mark.parametrize("size", [300_000, 512])
def test_a_double_free_through_the_switched_default_handler_is_tcallocs_to_report(size):
    # The second free of a large block, whose pages went back to tcalloc's
    # heap, used to go to NumPy's own free (owns() denies it) and ended in
    # glibc's abort, naming nothing (a small block whose span emptied would
    # have gone to NumPy's cache of small blocks, to be handed out again).
    # It is on tcalloc's heap: tcalloc reports it. (512 B: a small block
    # still in the thread's cache, which tcalloc's free reported before.)
    r = subprocess.run([sys.executable, "-c", _DEFAULT_DOUBLE_FREE, str(size)],
                       capture_output=True, text=True, timeout=120)
    p = r.stdout.split()[2] if r.stdout.startswith("freed once") else None
    assert p and "second free returned" not in r.stdout, (r.stdout, r.stderr)
    assert r.returncode != 0 and "tcalloc: fatal: double free detected" in r.stderr, r.stderr
    assert "(pointer %s)" % p in r.stderr, r.stderr
