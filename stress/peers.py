"""The peer allocators: the one table of them (the lab and the benchmarks use
it), and where Debian's packages put them. Finds, never installs."""

import os
import subprocess

# name -> (Debian package, shared object)
PEERS = {
    "gperftools": ("libtcmalloc-minimal4", "libtcmalloc_minimal.so.4"),
    "jemalloc": ("libjemalloc2", "libjemalloc.so.2"),
    "mimalloc": ("libmimalloc2.0", "libmimalloc.so.2"),
}

_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64",
         "/usr/lib", "/lib/x86_64-linux-gnu", "/usr/local/lib")


def _ldconfig():
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    libs = {}
    for line in out.splitlines():
        # "\tlibjemalloc.so.2 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
        if "=>" in line:
            left, path = line.split("=>", 1)
            libs.setdefault(left.split()[0], path.strip())
    return libs


def find_peers(names=None):
    """Returns ({name: path} found, [names missing]) for the peers named
    (default: all of PEERS)."""
    found, missing, cache = {}, [], None
    for name in (PEERS if names is None else names):
        so = PEERS[name][1]
        path = next((os.path.join(d, so) for d in _DIRS
                     if os.path.exists(os.path.join(d, so))), None)
        if path is None:
            if cache is None:
                cache = _ldconfig()
            path = cache.get(so)
        if path and os.path.exists(path):
            found[name] = path
        else:
            missing.append(name)
    return found, missing


def why_missing(name):
    pkg, so = PEERS[name]
    return f"{so} not found (Debian package {pkg})"


def install_hint(names):
    return "apt-get install " + " ".join(PEERS[n][0] for n in names)
