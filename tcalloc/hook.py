"""Run the interpreter's own allocations through tcalloc.

    import tcalloc
    tcalloc.install()                 # raw, mem and obj domains
    ...
    tcalloc.uninstall()

or, for a whole program, ``python -m tcalloc run script.py args`` /
``python -m tcalloc run -m module args``.

The hook wraps the allocator already in place for each domain: blocks made
before ``install()`` are freed by that allocator, tcalloc's blocks by tcalloc
(told apart by tcalloc's pagemap, without locks). ``uninstall()`` stops new
allocations from coming from tcalloc but leaves the wrapper in place, so blocks
tcalloc already handed out still go back to it. All functions need the GIL;
the allocator wrappers themselves run without it.
"""
from tcalloc._engine import active_domains, install, installed, uninstall

__all__ = ["install", "uninstall", "installed", "active_domains"]
