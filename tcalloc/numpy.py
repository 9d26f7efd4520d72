"""NumPy arrays whose data lives in tcalloc (NEP 49 memory handler).

    import numpy as np
    import tcalloc.numpy

    with tcalloc.numpy.use():
        a = np.empty(1_000_000)            # data from tcalloc
    np._core.multiarray.get_handler_name(a)   # 'tcalloc'

    tcalloc.numpy.set_default()           # for the rest of this context

NumPy keeps the handler in a context variable: ``use()`` and
``set_default()`` affect the current thread (or asyncio task / context)
only, and new threads start with NumPy's default handler. An array keeps a
reference to the handler that allocated it and is always freed by it, so
arrays (and views) may outlive the ``with`` block. The handler's functions
need no GIL and are thread-safe.

Importing this module does not import NumPy; ``use()`` and ``set_default()``
do (NumPy >= 1.22).
"""
import contextlib

from tcalloc._numpy_handler import get_handler, handler, set_handler

__all__ = ["handler", "use", "set_default", "restore_default", "get_handler"]

_previous = []   # handlers replaced by set_default(), most recent last


@contextlib.contextmanager
def use():
    """Within the block, arrays created in this context get tcalloc memory.

    Nests, and restores the handler that was current on the way out.
    """
    prev = set_handler(handler)
    try:
        yield handler
    finally:
        set_handler(prev)


def set_default():
    """Make tcalloc NumPy's handler for the current context; returns the
    handler it replaced (pass it to ``set_handler`` to go back)."""
    return set_handler(handler)


def restore_default():
    """Give the current context NumPy's own default handler back."""
    return set_handler(None)
