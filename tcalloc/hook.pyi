# Types of tcalloc.hook; see hook.py.
from tcalloc._hook import active_domains as active_domains
from tcalloc._hook import install as install
from tcalloc._hook import installed as installed
from tcalloc._hook import uninstall as uninstall

__all__ = ["install", "uninstall", "installed", "active_domains"]
