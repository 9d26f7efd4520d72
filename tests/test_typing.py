"""The type information tcalloc ships (py.typed, *.pyi): what mypy --strict
sees in a user's program, and that it matches the runtime.

mypy finds tcalloc as an installed package (PEP 561: py.typed) on
PYTHONPATH; the stubs beside the Cython modules give the real types, so
the user script below type-checks with assert_type() on every public
function and class, and a script of mistakes gets one error per line.
"""
import ast
import importlib.util
import inspect
import os
import re
import subprocess
import sys
import textwrap

import pytest

import tcalloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(tcalloc.__file__)))
PKG = os.path.join(ROOT, "tcalloc")

needs_mypy = pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None,
    reason="mypy is not installed (it is in the 'test' extra: pip install -e '.[test]'); "
           "the stubs cannot be type-checked")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("MYPYPATH", None)
    return env


def _mypy(tmp_path, code):
    script = tmp_path / "user.py"
    script.write_text(textwrap.dedent(code))
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "--show-error-codes",
         "--cache-dir", str(tmp_path / "cache"), str(script)],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr, script


USER_SCRIPT = """\
    import importlib.util
    import io
    from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

    import tcalloc
    import tcalloc.hook
    import tcalloc.numpy
    from tcalloc.profile import Profile

    if TYPE_CHECKING:
        from typing_extensions import assert_type
    else:
        def assert_type(value, typ):
            return value

    assert_type(tcalloc.__version__, str)
    assert_type(tcalloc.get_include(), str)
    assert_type(tcalloc.get_pxd_dir(), str)
    assert_type(tcalloc.debug_enabled(), bool)

    # engine
    s = tcalloc.stats()
    assert_type(s["bytes_in_use"], int)
    assert_type(s["heap_bytes"] - s["page_heap_released_bytes"], int)
    assert_type(s["memory_limit_hard"], bool)
    assert_type(s["size_classes"][0]["class"], int)
    assert_type(s["locks"]["page_heap"]["wait_ns"], int)
    assert_type(tcalloc.stats_text(), str)
    assert_type(tcalloc.release_free_memory(), int)
    tcalloc.set_release_rate(0)
    assert_type(tcalloc.get_release_rate(), int)
    tcalloc.set_memory_limit(1 << 40, hard=False)
    tcalloc.set_memory_limit(None)
    limit = tcalloc.get_memory_limit()
    assert_type(limit, Optional[Tuple[int, bool]])
    if limit is not None:
        nbytes, hard = limit
        assert_type(nbytes, int)
        assert_type(hard, bool)
    tcalloc.set_max_total_thread_cache_bytes(32 << 20)
    assert_type(tcalloc.get_max_total_thread_cache_bytes(), int)
    assert_type(tcalloc.size_class_table(), List[Tuple[int, int, int, int, int]])
    assert_type(tcalloc.size_class_of(100), Tuple[int, int])

    # heap profiles
    tcalloc.set_sample_rate(1 << 20, seed=1)
    assert_type(tcalloc.get_sample_rate(), int)
    hp = tcalloc.heap_profile()
    assert_type(hp, tcalloc.Profile)
    assert_type(hp.samples[0].stack[0].line if hp.samples else 0, int)
    assert_type(hp.top(3), str)
    assert_type(hp.pprof(), bytes)
    assert_type(tcalloc.peak_heap_profile().collapsed(), str)
    with tcalloc.allocation_profile() as ap:
        assert_type(ap, tcalloc.Profile)
    assert_type(ap.samples[0].lifetime if ap.samples else None, Optional[float])
    tcalloc.set_sample_rate(0)

    # buffers
    b = tcalloc.alloc(100, zero=True, alignment=64)
    assert_type(b, tcalloc.Buffer)
    assert_type(len(b), int)
    assert_type(b.address, int)
    assert_type(b.capacity, int)
    assert_type(b.released, bool)
    assert_type(b.pool, Optional[tcalloc.BufferPool])
    mv = memoryview(b)                      # the buffer protocol
    mv[0] = 1
    mv.release()
    assert io.BytesIO(b"xy").readinto(b) == 2
    assert bytes(b)[:2] == b"xy"
    b.resize(200)
    b.release()
    with tcalloc.Buffer(10, zero=False, alignment=None) as c:
        assert_type(c, tcalloc.Buffer)

    # pools
    pool = tcalloc.BufferPool(4096, max_bytes=1 << 20, zero=False, max_cached=4)
    assert_type(pool.buffer_size, int)
    assert_type(pool.max_cached, int)
    assert_type(pool.zero, bool)
    assert_type(pool.max_bytes, Optional[int])
    assert_type(pool.backend_name, str)
    with pool.acquire() as d:
        assert_type(d, tcalloc.Buffer)
    pool.acquire(100).release()
    pool.get_buffer(-1).release()
    pool.get_buffer(None).release()
    assert_type(pool.bytes_allocated(), int)
    assert_type(pool.max_memory(), int)
    assert_type(pool.total_bytes_allocated(), int)
    assert_type(pool.num_allocations(), int)
    assert_type(pool.cached_bytes(), int)
    assert_type(pool.stats()["fresh_allocations"], int)
    assert_type(pool.release_unused(), int)

    # the interpreter hook
    tcalloc.install("obj")
    tcalloc.install(["raw", "mem"])
    assert_type(tcalloc.installed(), bool)
    tcalloc.uninstall()
    tcalloc.hook.install(("mem",))
    assert_type(tcalloc.hook.active_domains(), Tuple[str, ...])
    tcalloc.hook.uninstall()
    assert_type(tcalloc.hook.installed(), bool)

    # NumPy (use() needs NumPy at run time)
    if importlib.util.find_spec("numpy") is not None:
        with tcalloc.numpy.use() as h:
            assert_type(h, object)
        tcalloc.numpy.set_default()
        assert_type(tcalloc.numpy.is_default(), bool)
        tcalloc.numpy.restore_default()
        prev = tcalloc.numpy.get_handler()
        tcalloc.numpy.set_handler(prev)
        tcalloc.numpy.set_handler(tcalloc.numpy.handler)
        tcalloc.numpy.set_handler(None)
        assert_type(tcalloc.numpy.get_handler(), object)

    # the profiler
    with tcalloc.profile(interval=0.01, engine=True, top=3) as p:
        assert_type(p, Profile)
    assert_type(p.as_dict(), Dict[str, Any])
    assert_type(p.report(), str)
    assert_type(p.samples, int)
    q = Profile(0.5, False, 0).start()
    assert_type(q.stop(), Profile)
    print("ran to the end")
"""


@needs_mypy
def test_user_script_type_checks_strict(tmp_path):
    code, out, script = _mypy(tmp_path, USER_SCRIPT)
    assert code == 0, out
    # The script is real usage, not only a type exercise: it runs.
    proc = subprocess.run([sys.executable, str(script)], env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ran to the end")


# Each line is a mistake mypy must report (with this error code): with an
# Any-typed tcalloc none of them would be.
MISTAKES = [
    ('tcalloc.alloc("10")', "arg-type"),
    ("tcalloc.alloc(10, zero=1)", "arg-type"),
    ("tcalloc.alloc(10, alignment=8.0)", "arg-type"),
    ("tcalloc.Buffer(10, True)", "call-arg"),
    ("tcalloc.alloc(1).no_such_method()", "attr-defined"),
    ("tcalloc.BufferPool(max_bytes=1.5)", "arg-type"),
    ("tcalloc.BufferPool(4096, 1 << 20)", "call-arg"),
    ('tcalloc.BufferPool().stats()["no_such_key"]', "typeddict-item"),
    ('tcalloc.stats()["no_such_key"]', "typeddict-item"),
    ('tcalloc.set_memory_limit("1")', "arg-type"),
    ("limit: Tuple[int, bool] = tcalloc.get_memory_limit()", "assignment"),
    ("released: str = tcalloc.release_free_memory()", "assignment"),
    ("tcalloc.install(5)", "arg-type"),
    ("tcalloc.numpy.use(1)", "call-arg"),
    ('tcalloc.profile(interval="0.1")', "arg-type"),
    ("tcalloc.profile(engine=None)", "arg-type"),
]


@needs_mypy
def test_mistakes_are_reported(tmp_path):
    head = "from typing import Tuple\nimport tcalloc\nimport tcalloc.numpy\n"
    code, out, _ = _mypy(tmp_path, head + "\n".join(m for m, _ in MISTAKES) + "\n")
    assert code == 1, out
    first = head.count("\n") + 1
    for i, (line, err) in enumerate(MISTAKES):
        pat = r"user\.py:%d: error: .*\[%s\]" % (first + i, re.escape(err))
        assert re.search(pat, out), "mypy did not flag %r with [%s]:\n%s" % (line, err, out)


# Names stubtest reports that are not stub mistakes: Cython's module
# internals, stub-only TypedDicts, the buffer protocol's dunders (in the
# stubs, and at run time only from Python 3.12: stubtest fails on an
# allowlist entry that matches nothing, so it is listed before 3.12 only),
# and PEP 800's @disjoint_base (not in the typing_extensions stubs of older
# mypy versions).
STUBTEST_ALLOWLIST = r"""
.*\.__test__
.*\.__pyx_capi__
.*\.__(reduce|setstate)_cython__
tcalloc\._engine\.(Stats|SizeClassStats|LockStats)
tcalloc\.buffer\.PoolStats
tcalloc\.buffer\.(Buffer|BufferPool)
tcalloc\._threadclock\.ThreadClock
"""
if sys.version_info < (3, 12):
    STUBTEST_ALLOWLIST += "tcalloc\\.buffer\\.Buffer\\.__(release_)?buffer__\n"


@needs_mypy
def test_stubs_match_runtime_signatures(tmp_path):
    # stubtest imports the modules and compares every name, parameter,
    # keyword-only marker and default with the stubs.
    allow = tmp_path / "allowlist.txt"
    allow.write_text(STUBTEST_ALLOWLIST)
    cfg = tmp_path / "mypy.ini"
    cfg.write_text("[mypy]\nignore_missing_imports = True\n")   # psutil has no stubs
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "--mypy-config-file", str(cfg),
         "--allowlist", str(allow), "tcalloc"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---- without mypy ----------------------------------------------------------------

def _typeddict_keys(pyi, name):
    tree = ast.parse(open(os.path.join(PKG, pyi)).read())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return {n.target.id for n in node.body if isinstance(n, ast.AnnAssign)}
        if isinstance(node, ast.Assign) and node.targets[0].id == name:
            return {k.value for k in node.value.args[1].keys}
    raise AssertionError("%s not in %s" % (name, pyi))


def test_typeddicts_have_the_runtime_keys():
    s = tcalloc.stats()
    assert _typeddict_keys("_engine.pyi", "Stats") == set(s)
    assert _typeddict_keys("_engine.pyi", "SizeClassStats") == set(s["size_classes"][0])
    assert _typeddict_keys("_engine.pyi", "LockStats") == set(s["locks"]["page_heap"])
    assert _typeddict_keys("buffer.pyi", "PoolStats") == set(tcalloc.BufferPool().stats())


def test_every_public_name_has_a_stub():
    assert os.path.exists(os.path.join(PKG, "py.typed"))
    stub = open(os.path.join(PKG, "__init__.pyi")).read()
    public = [n for n in dir(tcalloc) if not n.startswith("_") and
              not inspect.ismodule(getattr(tcalloc, n))]
    assert "profile" in public and "BufferPool" in public
    missing = [n for n in public if not re.search(r"\b(def|as) %s\b" % n, stub)]
    assert not missing, "in tcalloc/__init__.py but not in __init__.pyi: %s" % missing
    assert "__version__: str" in stub


@pytest.mark.parametrize("cls,args", [(tcalloc.Buffer, (8,)), (tcalloc.BufferPool, ())])
def test_class_signatures_are_what_the_constructor_parses(cls, args):
    # The class docstrings carry the signature (help(), inspect.signature);
    # it must be the one the constructor really parses.
    sig = inspect.signature(cls)
    assert str(sig) == {tcalloc.Buffer: "(size, *, zero=False, alignment=None)",
                        tcalloc.BufferPool: "(buffer_size=65536, *, max_bytes=None, "
                                            "zero=False, max_cached=None)"}[cls]
    kwargs = {name: p.default for name, p in sig.parameters.items()
              if p.default is not inspect.Parameter.empty}
    cls(*args, **kwargs)                    # every default, by keyword
    for name, p in sig.parameters.items():
        if p.kind is inspect.Parameter.KEYWORD_ONLY:
            with pytest.raises(TypeError):
                cls(*(args or (64,)), p.default)      # refused positionally
