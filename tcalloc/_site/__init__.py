"""Child interpreters of ``python -m tcalloc run`` start on tcalloc too.

This directory holds a ``sitecustomize.py``; :func:`propagate` puts the
directory first on PYTHONPATH and names the hooked domains in
TCALLOC_RUN_DOMAINS, so that every Python child the program starts with this
environment installs the hook at start-up (``python -m test -jN`` workers,
``subprocess.run([sys.executable, ...])``, multiprocessing's spawn and
forkserver start methods). Children started with ``-I`` or ``-S``, or with an
environment of their own, are not reached.
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def propagate(domains, environ=os.environ):
    """Make child interpreters started with `environ` install tcalloc's hook."""
    old = environ.get("PYTHONPATH", "")
    # Empty entries stay: an empty entry is the current directory.
    parts = [p for p in old.split(os.pathsep) if not p or os.path.abspath(p) != HERE] if old else []
    environ["PYTHONPATH"] = os.pathsep.join([HERE] + parts)
    environ["TCALLOC_RUN_DOMAINS"] = ",".join(domains)
