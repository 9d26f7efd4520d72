# Types of tcalloc.hook; see hook.py.
from tcalloc._engine import active_domains as active_domains
from tcalloc._engine import install as install
from tcalloc._engine import installed as installed
from tcalloc._engine import uninstall as uninstall

__all__ = ["install", "uninstall", "installed", "active_domains"]
