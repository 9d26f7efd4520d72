"""Puts a child interpreter of ``python -m tcalloc run`` on tcalloc.

``run`` prepends this directory to PYTHONPATH and names the domains in
TCALLOC_RUN_DOMAINS, so every Python process the program starts with the same
interpreter (``subprocess``, ``multiprocessing`` spawn, ``python -m test -j``
workers) installs the hook at start-up, as the parent did. The
``sitecustomize`` this module shadows, if there is one, then runs as usual.
"""
import os
import sys


def _install():
    domains = os.environ.get("TCALLOC_RUN_DOMAINS", "")
    if not domains:
        return
    try:
        import tcalloc
    except ImportError as e:
        # Another interpreter the program started (a system python3, a
        # venv's) inherits the environment but has no tcalloc: it runs as it
        # would have, without an error at each start.
        if (e.name or "").split(".")[0] == "tcalloc":
            return
        raise
    tcalloc.install(domains.split(","))


def _chain():
    # Import the next sitecustomize on the path, the one this file shadows.
    here = os.path.dirname(os.path.abspath(__file__))
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    mod = sys.modules.pop("sitecustomize", None)
    try:
        import importlib
        importlib.import_module("sitecustomize")
    except ImportError as e:
        if e.name != "sitecustomize":
            raise       # from inside the other sitecustomize: site reports it, as without us
    finally:
        sys.path[:] = saved
        if mod is not None and "sitecustomize" not in sys.modules:
            sys.modules["sitecustomize"] = mod


try:
    _install()
finally:
    _chain()
