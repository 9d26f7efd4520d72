"""Shared fixtures for the engine tests."""
import ctypes

import pytest


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


@pytest.fixture(scope="session")
def capi():
    """The C API table behind the capsule tcalloc._C_API, callable from Python
    (ctypes releases the GIL around each call, as a C caller would run)."""
    import tcalloc
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype = ctypes.c_void_p
    get.argtypes = [ctypes.py_object, ctypes.c_char_p]
    addr = get(tcalloc._C_API, b"tcalloc._C_API")
    assert addr, "capsule tcalloc._C_API has no pointer under that name"
    return TcallocCAPI.from_address(addr)


@pytest.fixture(scope="session")
def comp():
    """The test-only component module (private instances, native workloads)."""
    from tcalloc import _test_components
    return _test_components
