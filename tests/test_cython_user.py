"""A third-party Cython extension built against tcalloc's shipped headers and
.pxd files: it allocates from native threads without the GIL, through both
the cimport API (tcalloc._engine) and the capsule API (tcalloc.h via
tcalloc.capi), and hands tcalloc's malloc/free to cymem.Pool."""
import os
import subprocess
import sys
import textwrap

import pytest

import tcalloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

USER_PYX = r'''
from libc.stdint cimport uintptr_t
from tcalloc._engine cimport tc_malloc, tc_free
from tcalloc.capi cimport TcallocCAPI, TcallocCAPI_Import
from tcalloc.buffer cimport Buffer, BufferPool

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    int pthread_create(pthread_t *t, const void *attr, void *(*start)(void *) noexcept nogil, void *arg)
    int pthread_join(pthread_t t, void **ret)

cdef TcallocCAPI *tc = TcallocCAPI_Import()

ctypedef struct Job:
    int seed
    int use_capsule
    long errors
    long done

cdef void *worker(void *arg) noexcept nogil:
    cdef Job *job = <Job *>arg
    cdef unsigned char *blocks[64]
    cdef size_t sizes[64]
    cdef int i, k, slot
    cdef size_t n, j
    cdef unsigned int x = <unsigned int>job.seed * 2654435761u + 1
    for i in range(64):
        blocks[i] = NULL
    for i in range(20000):
        x = x * 1103515245u + 12345u
        slot = (x >> 8) % 64
        if blocks[slot] != NULL:
            for j in range(sizes[slot]):          # contents intact?
                if blocks[slot][j] != <unsigned char>(slot + job.seed):
                    job.errors += 1
                    break
            if job.use_capsule:
                tc.free(blocks[slot])
            else:
                tc_free(blocks[slot])
        n = (x >> 12) % 5000 + 1
        if job.use_capsule:
            blocks[slot] = <unsigned char *>tc.malloc(n)
        else:
            blocks[slot] = <unsigned char *>tc_malloc(n)
        if blocks[slot] == NULL:
            job.errors += 1
            continue
        sizes[slot] = n
        for j in range(n):
            blocks[slot][j] = <unsigned char>(slot + job.seed)
        job.done += 1
    for i in range(64):
        if blocks[i] != NULL:
            tc_free(blocks[i])                    # either API frees either's blocks
    return NULL

def pool_buffer_size(BufferPool pool, Buffer b):
    """The cimported classes' typed fields, without Python attribute look-ups."""
    return pool.buffer_size, len(b)

def run(int nthreads, bint use_capsule):
    """Allocate from nthreads pthreads, no GIL anywhere; returns (done, errors)."""
    cdef pthread_t tids[16]
    cdef Job jobs[16]
    cdef int i
    assert 0 < nthreads <= 16
    with nogil:
        for i in range(nthreads):
            jobs[i].seed = i + 1
            jobs[i].use_capsule = use_capsule
            jobs[i].errors = 0
            jobs[i].done = 0
            pthread_create(&tids[i], NULL, worker, &jobs[i])
        for i in range(nthreads):
            pthread_join(tids[i], NULL)
    return sum(jobs[i].done for i in range(nthreads)), sum(jobs[i].errors for i in range(nthreads))
'''

CYMEM_PYX = r'''
from cymem.cymem cimport Pool, WrapMalloc, WrapFree
from tcalloc._engine cimport tc_malloc, tc_free, tc_owns

# cymem wants plain `void *(*)(size_t)` / `void (*)(void *)` pointers.
cdef void *_malloc(size_t n) noexcept:
    return tc_malloc(n)
cdef void _free(void *p) noexcept:
    tc_free(p)

def make_pool():
    return Pool(WrapMalloc(_malloc), WrapFree(_free))

def use(Pool pool, int n):
    cdef int i
    cdef long *a = <long *>pool.alloc(n, sizeof(long))
    for i in range(n):
        a[i] = i
    a = <long *>pool.realloc(a, 2 * n * sizeof(long))
    return sum(a[i] for i in range(n)), bool(tc_owns(a))
'''

SETUP = r'''
import sys, tcalloc
from setuptools import setup, Extension
from Cython.Build import cythonize
name = sys.argv.pop(1)
setup(script_args=["build_ext", "--inplace", "-q"],
      # The shipped headers and .pxd files must not warn in a user's build: a
      # static function a user never calls, say (only the warnings that are
      # ours to avoid fail it; Cython's own output is not under test).
      ext_modules=cythonize([Extension(name, [name + ".pyx"], include_dirs=[tcalloc.get_include()],
                                       extra_compile_args=["-Wall", "-Werror=unused-function",
                                                           "-Werror=unused-variable"])],
                            include_path=[tcalloc.get_pxd_dir()], language_level=3, quiet=True))
'''


def _build(tmp_path, name, source):
    (tmp_path / f"{name}.pyx").write_text(source)
    (tmp_path / "setup_user.py").write_text(SETUP)
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "setup_user.py", name], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return env


def _run(tmp_path, env, code):
    env = dict(env, PYTHONPATH=str(tmp_path) + os.pathsep + env["PYTHONPATH"])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_shipped_headers_and_pxds_exist():
    inc = tcalloc.get_include()
    assert os.path.exists(os.path.join(inc, "tcalloc.h"))
    pkg = os.path.join(tcalloc.get_pxd_dir(), "tcalloc")
    for pxd in ("_engine.pxd", "capi.pxd", "buffer.pxd"):
        assert os.path.exists(os.path.join(pkg, pxd))


def test_cython_extension_allocates_in_nogil_threads(tmp_path):
    env = _build(tmp_path, "tc_user", USER_PYX)
    r = _run(tmp_path, env, """
        import tcalloc, tc_user
        before = tcalloc.stats()["bytes_in_use"]
        for capsule in (False, True):
            done, errors = tc_user.run(8, capsule)
            assert (done, errors) == (8 * 20000, 0), (done, errors)
        assert tcalloc.stats()["bytes_in_use"] <= before + (1 << 20)
        pool = tcalloc.BufferPool(4096)
        assert tc_user.pool_buffer_size(pool, pool.acquire(100)) == (4096, 100)
        print("ok")
    """)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr


def test_cymem_pool_with_tcalloc(tmp_path):
    pytest.importorskip("cymem")
    env = _build(tmp_path, "tc_cymem", CYMEM_PYX)
    r = _run(tmp_path, env, """
        import tc_cymem
        pool = tc_cymem.make_pool()
        assert tc_cymem.use(pool, 100000) == (sum(range(100000)), True)
        del pool
        print("ok")
    """)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr
