# Types of tcalloc.numpy (NEP 49 memory handler); see numpy.py.
from contextlib import AbstractContextManager

from tcalloc._numpy_handler import get_handler as get_handler
from tcalloc._numpy_handler import handler as handler
from tcalloc._numpy_handler import handler_name as handler_name
from tcalloc._numpy_handler import owns as owns
from tcalloc._numpy_handler import set_handler as set_handler

__all__ = ["handler", "use", "set_default", "restore_default", "is_default",
           "owns", "handler_name", "get_handler", "set_handler"]

def use() -> AbstractContextManager[object]: ...
def set_default() -> None: ...
def restore_default() -> None: ...
def is_default() -> bool: ...
