"""Shared fixtures for the engine tests, and the build of the test-only
native modules (tests/native/*.pyx) before any test runs."""
import ctypes
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NATIVE = os.path.join(ROOT, "tests", "native")

# The test modules (tct_native, tct_components) are imported by name, here
# and in the child interpreters tests start.
sys.path.insert(0, NATIVE)
os.environ["PYTHONPATH"] = os.pathsep.join(
    [NATIVE] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])


def pytest_configure(config):
    # Once, in the controlling process (xdist workers find them built).
    if not hasattr(config, "workerinput"):
        sys.path.insert(0, ROOT)
        try:
            import devbuild
        finally:
            sys.path.remove(ROOT)
        devbuild.build("tests")


class TcallocCAPI(ctypes.Structure):
    """ctypes mirror of TcallocCAPI in tcalloc.h (ABI 1)."""
    _fields_ = [
        ("abi_version", ctypes.c_uint),
        ("malloc", ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_size_t)),
        ("free", ctypes.CFUNCTYPE(None, ctypes.c_void_p)),
        ("calloc", ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t)),
        ("realloc", ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)),
        ("aligned_alloc", ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t)),
        ("usable_size", ctypes.CFUNCTYPE(ctypes.c_size_t, ctypes.c_void_p)),
    ]


def _capsule_table(name, table):
    """The struct behind capsule tcalloc.<name>, as a ctypes `table`."""
    import tcalloc
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype = ctypes.c_void_p
    get.argtypes = [ctypes.py_object, ctypes.c_char_p]
    addr = get(getattr(tcalloc, name), ("tcalloc." + name).encode())
    assert addr, "capsule tcalloc.%s has no pointer under that name" % name
    return table.from_address(addr)


@pytest.fixture(scope="session")
def capi():
    """The C API table behind the capsule tcalloc._C_API, callable from Python
    (ctypes releases the GIL around each call, as a C caller would run)."""
    return _capsule_table("_C_API", TcallocCAPI)


class TcallocExtAPI(ctypes.Structure):
    _fields_ = [("abi_version", ctypes.c_uint),
                ("owns", ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)),
                ("bytes_in_use", ctypes.CFUNCTYPE(ctypes.c_size_t))]


@pytest.fixture(scope="session")
def ext():
    """The extension table behind the capsule tcalloc._C_API_EXT."""
    return _capsule_table("_C_API_EXT", TcallocExtAPI)


@pytest.fixture(scope="session")
def comp():
    """The test-only component module (private instances, native workloads)."""
    import tct_components
    return tct_components
