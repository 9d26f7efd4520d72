"""NumPy arrays whose data lives in tcalloc (NEP 49 memory handler).

    import numpy as np
    import tcalloc.numpy

    tcalloc.numpy.set_default()          # every thread, from now on
    a = np.empty(1_000_000)              # data from tcalloc, in any thread
    tcalloc.numpy.handler_name(a)        # 'tcalloc'
    tcalloc.numpy.restore_default()      # NumPy's allocator again

    with tcalloc.numpy.use():            # this thread / context only
        b = np.empty(1_000_000)

``set_default()`` switches NumPy's own default handler to tcalloc, so it
reaches every thread and context that has not chosen a handler: threads
started before or after the call, thread pools, ``asyncio.to_thread`` and
threads created in C. ``use()`` sets tcalloc's handler in NumPy's context
variable: the current thread (or asyncio task / context) only. An array is
always freed by the allocator that made it, so arrays (and views) may
outlive either. The handler functions need no GIL and are thread-safe.

Importing this module does not import NumPy; the functions do (NumPy >= 1.22).
"""
import contextlib

from tcalloc._numpy_handler import (default_enabled, disable_default, enable_default,
                                    get_handler, handler, handler_name, owns, set_handler)

__all__ = ["handler", "use", "set_default", "restore_default", "is_default",
           "owns", "handler_name", "get_handler", "set_handler"]


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
    """New arrays of every thread get tcalloc memory, except in contexts that
    set a handler of their own (``set_handler``, another library's ``with``).

    Switches NumPy's default handler (the one every new thread starts with)
    to tcalloc in place; arrays made before keep NumPy's allocator and are
    freed by it. Idempotent; undone by :func:`restore_default`. NumPy's
    ``get_handler_name`` still says ``"default_allocator"`` (the handler is
    NumPy's): :func:`handler_name` and :func:`owns` tell where the data is.
    """
    enable_default()


def restore_default():
    """Undo :func:`set_default`: new arrays of contexts on NumPy's default
    handler get NumPy's allocator again. Arrays already in tcalloc stay
    valid and go back to tcalloc when freed (every free of a NumPy-default
    array then costs one lock-free ownership test). Idempotent."""
    disable_default()


def is_default():
    """True between :func:`set_default` and :func:`restore_default`."""
    return default_enabled()
