"""NEP 49 handler: NumPy arrays backed by tcalloc."""
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


def test_nested_use_restores_and_set_default():
    prev_name = get_handler_name()
    with tnp.use():
        with tnp.use():
            pass
        assert get_handler_name() == "tcalloc"
    assert get_handler_name() == prev_name
    old = tnp.set_default()
    try:
        assert get_handler_name(np.empty(3)) == "tcalloc"
    finally:
        tnp.set_handler(old)
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
