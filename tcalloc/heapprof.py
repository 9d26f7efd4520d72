"""Sampled heap profiles with Python stacks: which code holds the memory.

With sampling on (``tcalloc.set_sample_rate(2 << 20)`` or
``TCALLOC_SAMPLE_RATE=2M``), tcalloc keeps, for about one allocation per
`rate` bytes, the stack that made it. Each sample stands for an unbiased
estimate of the allocations it was chosen from (``count`` allocations and
``bytes`` bytes), so summing samples estimates what each site allocated.

    heap_profile()          the sampled blocks live now
    peak_heap_profile()     those live when the sampled heap was largest
                            (since start or tcalloc.reset_peaks())
    allocation_profile()    a context manager: everything sampled inside the
                            block, freed or not, with lifetimes

A Profile has ``samples``, ``top(n)`` (a table), ``collapsed()`` (flame-graph
stacks), ``pprof()`` (gzipped profile.proto, for ``go tool pprof``) and
``flamegraph(path)`` (a self-contained SVG); ``write(path)`` picks one of
these by the file's extension.
"""
import _thread
import math
import os
import time
import zlib

from tcalloc import _engine
from tcalloc._config import shown

DEFAULT_SAMPLE_RATE = 2 << 20       # 2 MiB, as TCMalloc's default
_MAX_SAMPLE_RATE = 2 ** 62 - 1      # the engine's set_sample_rate takes no more

_strings: "dict[int, str]" = {}       # interned name address -> str (the engine never frees them)
_symbols: "dict[int, Frame]" = {}       # native return address -> Frame


class Frame(tuple):
    """(file, function, line): a Python frame, or a native one (line 0, the
    object file as `file`)."""
    __slots__ = ()

    def __new__(cls, file, function, line):
        return tuple.__new__(cls, (file, function, line))

    file = property(lambda self: self[0])
    function = property(lambda self: self[1])
    line = property(lambda self: self[2])

    def __repr__(self):
        return "Frame(%r, %r, %d)" % self

    def __str__(self):
        if self[2]:
            return "%s (%s:%d)" % (self[1], self[0], self[2])
        return "%s (%s)" % (self[1], os.path.basename(self[0]))


class Sample:
    """One sampled block. `bytes` and `count` are the estimates it stands for
    (size / p and 1 / p, p = 1 - exp(-size/rate)); `size` is the block's own
    requested size. `stack` is innermost first: the native frames of the C
    code that called the allocator (if it was not the interpreter), then the
    Python frames. `lifetime` (seconds) is None while the block is live."""
    __slots__ = ("size", "count", "bytes", "stack", "python_stack", "native_stack",
                 "alloc_time", "lifetime")

    def __init__(self, size, count, stack, python_stack, native_stack, alloc_time, lifetime):
        self.size = size
        self.count = count
        self.bytes = size * count
        self.stack = stack
        self.python_stack = python_stack
        self.native_stack = native_stack
        self.alloc_time = alloc_time
        self.lifetime = lifetime

    def __repr__(self):
        return "<Sample size=%d bytes~%.0f at %s>" % (
            self.size, self.bytes, self.stack[0] if self.stack else "?")


def _where(addr):
    """The object file holding a function's address (realpath)."""
    return os.path.realpath(_engine._sampler_symbol(addr)[0])


_package_dir = os.path.dirname(os.path.realpath(_engine.__file__))
_python_file = _where(_engine._sampler_python_address())


def _native(addr):
    f = _symbols.get(addr)
    if f is None:
        fname, sym, off = _engine._sampler_symbol(addr)
        f = _symbols[addr] = Frame(fname, "%s+0x%x" % (sym, off) if sym else "0x%x" % off, 0)
    return f


_paths: "dict[str, str]" = {}


def _realpath(path):
    r = _paths.get(path)
    if r is None:
        r = _paths[path] = os.path.realpath(path)
    return r


def _string(ptr):
    s = _strings.get(ptr)
    if s is None:
        s = _strings[ptr] = _engine._sampler_string(ptr)
    return s


def _launcher(frame):
    """Is frame one of those that started the program: runpy's (`python -m`)
    or those of `python -m tcalloc run` itself?"""
    f = frame.file
    return (f == "<frozen runpy>" or os.path.basename(f) == "runpy.py"
            or (os.path.basename(f) == "__main__.py"
                and os.path.dirname(_realpath(f)) == _package_dir))


def _sample(rec, now_ns):
    size, weight, alloc_ns, free_ns, native, frames = rec
    py = [Frame(_string(f), _string(n), line) for f, n, line in frames]
    # The outermost frames that only started the program say nothing about
    # it, and every stack would carry them (5-8 levels at a flame graph's root).
    while len(py) > 1 and _launcher(py[-1]):
        py.pop()
    nat = [_native(a) for a in native]
    # The C code between the interpreter and the allocator: what called
    # malloc, leaving out tcalloc's own modules (the engine, buffers) and
    # everything from the interpreter down (the Python frames say that better).
    caller = []
    for f in nat:
        path = _realpath(f.file)
        if path == _python_file and py:
            break
        if os.path.dirname(path) != _package_dir:
            caller.append(f)
    lifetime = (free_ns - alloc_ns) / 1e9 if free_ns else None
    return Sample(size, weight, caller + py, py, nat, (alloc_ns - now_ns) / 1e9 + time.time(),
                  lifetime)


def _samples(recs):
    now = time.monotonic_ns()
    return [_sample(r, now) for r in recs]


# A sample's weight is 1 / (1 - exp(-size/rate)) at the rate it was taken
# at, so the rate comes back from it: size / -log1p(-1/weight), to about
# 3e-9 (relative) while size/rate <= 20. A larger block has p = 1 to within
# 2e-9 and says nothing of the rate, nor does a weight of 1 (p = 1 exactly).
# Rates within _SAME_RATE of each other are one rate.
_RATE_X_MAX = 20.0
_SAME_RATE = 1e-6


def _taken_at(samples):
    """The rates the samples were taken at, from their weights (floats, one
    per sample whose weight tells)."""
    out = []
    for s in samples:
        w = s.count
        if 1.0 < w < math.inf:
            x = -math.log1p(-1.0 / w)
            if 0.0 < x <= _RATE_X_MAX:
                out.append(s.size / x)
    return out


def _same_rate(a, b):
    return abs(a - b) <= _SAME_RATE * max(a, b)


def _weight(size, rate):
    # The engine's formula (tcalloc/engine/sampler.pxi, _smp_record).
    return 1.0 / -math.expm1(-float(size) / float(rate))


def _sampled_rate(samples, hint):
    """The rate most of the samples were taken at. `hint` is the rate known
    from elsewhere (the rate now, or when an allocation profile opened): it
    is the answer when the samples' weights come within _SAME_RATE of it
    (their inversion is not exact), and when no weight tells the rate, if
    every sample's weight is what it would give; else 0, unknown."""
    found = sorted(_taken_at(samples))
    if not found:
        if not samples or (hint and all(_same_rate(s.count, _weight(s.size, hint))
                                        for s in samples)):
            return hint
        return 0
    groups = []
    for r in found:
        if groups and _same_rate(r, groups[-1][0]):
            groups[-1].append(r)
        else:
            groups.append([r])
    best = max(groups, key=len)
    mid = best[len(best) // 2]
    return hint if hint and _same_rate(mid, hint) else round(mid)


class Profile:
    """Sampled blocks and the ways to read them. `kind` is "heap", "peak" or
    "allocations"; `rate` the sampling rate the samples were taken at, told
    by their weights, not the rate when the profile was read (sampling may
    have been changed or turned off since). If some were taken at other
    rates, `rate` is that of most of them (``top()`` says how many were not);
    0 when the profile is empty and sampling was off, or when no sample's
    weight tells its rate (blocks 20 rates large or more, p = 1) and the
    rate now does not fit them."""

    def __init__(self, kind, samples, rate):
        self.kind = kind
        self.samples = samples
        self.rate = rate
        self.time = time.time()
        self.duration = 0.0

    @property
    def total_bytes(self):
        """Estimated bytes of all the samples' allocations."""
        return sum(s.bytes for s in self.samples)

    def by_site(self):
        """[(site Frame, estimated bytes, estimated count)], most bytes first;
        a site is the innermost frame of a sample's stack."""
        sites = {}
        for s in self.samples:
            key = s.stack[0] if s.stack else Frame("?", "?", 0)
            b, c = sites.get(key, (0.0, 0.0))
            sites[key] = (b + s.bytes, c + s.count)
        return sorted(((k, b, c) for k, (b, c) in sites.items()), key=lambda t: -t[1])

    def top(self, n=10):
        """A readable table of the n sites holding the most (estimated) bytes."""
        from tcalloc.buffer import _human
        total = self.total_bytes
        if self.rate:
            rate = "sampling every %s" % _human(self.rate)
            others = sum(1 for r in _taken_at(self.samples) if not _same_rate(r, self.rate))
            if others:
                rate += " (%d samples taken at other rates)" % others
        else:
            rate = "sampling rate unknown" if self.samples else "sampling off"
        rows = ["%s profile: %d samples, ~%s estimated, %s" % (
            self.kind, len(self.samples), _human(int(total)), rate)]
        rows.append("%12s %6s %6s %10s  %s" % ("bytes", "%", "cum%", "count", "site"))
        cum = 0.0
        for site, b, c in self.by_site()[:n]:
            cum += b
            rows.append("%12s %5.1f%% %5.1f%% %10.0f  %s" % (
                _human(int(b)), 100 * b / total, 100 * cum / total, c, site))
        return "\n".join(rows) + "\n"

    def collapsed(self):
        """Flame-graph input: one line per stack, outermost frame first,
        frames joined by ';', then the estimated bytes."""
        stacks = {}
        for s in self.samples:
            key = ";".join(str(f).replace(";", ":") for f in reversed(s.stack)) or "?"
            stacks[key] = stacks.get(key, 0.0) + s.bytes
        return "".join("%s %d\n" % (k, round(v)) for k, v in sorted(stacks.items()))

    def pprof(self):
        """The profile as pprof's profile.proto, gzip-compressed (as Go's
        heap profiles are): `go tool pprof file` reads it."""
        import gzip                 # here, not at import: `import tcalloc` stays small
        return gzip.compress(_pprof_encode(self), mtime=0)

    def flamegraph(self, path, title=None):
        """Write a self-contained SVG flame graph of the estimated bytes."""
        with open(path, "w", encoding="utf-8") as f:
            f.write(_flame_svg(self.collapsed(), title or "tcalloc %s profile" % self.kind))

    def write(self, path):
        """Write the profile in the format path's extension names: .svg a
        flame graph, .txt the top table, .collapsed/.folded the collapsed
        stacks, anything else pprof (gzipped protobuf)."""
        ext = os.path.splitext(path)[1].lower()
        if ext in (".svg", ".html"):
            self.flamegraph(path)
            return
        if ext in (".txt", ".collapsed", ".folded"):
            with open(path, "w", encoding="utf-8") as f:
                f.write(self.top(50) if ext == ".txt" else self.collapsed())
            return
        with open(path, "wb") as f:
            f.write(self.pprof())

    def __repr__(self):
        return "<tcalloc %s profile: %d samples>" % (self.kind, len(self.samples))


def _profile(kind, recs):
    samples = _samples(recs)
    return Profile(kind, samples, _sampled_rate(samples, _engine.get_sample_rate()))


def heap_profile():
    """The sampled blocks live now."""
    return _profile("heap", _engine._sampler_live())


def peak_heap_profile():
    """The sampled blocks that were live when their estimated bytes were at
    their highest since start or tcalloc.reset_peaks(): a snapshot taken at
    the sampled allocation that raised it, so within about one sample of the
    peak of live bytes. (Not the committed heap's peak: freed memory stays
    committed until released, so the heap's next growth, however small,
    would name whatever is live then.)"""
    return _profile("peak", _engine._sampler_peak())


# The open allocation_profile blocks, in the order they opened, and the
# sampling rate before the first of them changed it. Blocks in different
# threads may close in any order: the rate is the latest open block's, and
# goes back to what it was when the last one closes (a block closing first
# must not turn sampling off under another's feet).
_blocks_lock = _thread.allocate_lock()
_open_blocks = []
_rate_before = None        # set while a block has changed the rate


class allocation_profile:
    """Everything sampled inside the ``with`` block, freed or not::

        with tcalloc.allocation_profile() as prof:
            work()
        print(prof.top())

    If sampling is off it is turned on at `rate` (default 2 MiB) for the
    block, and off again after; blocks may nest, and blocks in several
    threads may overlap: the rate is the latest open block's, and is put
    back when the last one closes."""

    def __init__(self, rate=None):
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int)):
            raise TypeError("rate must be an int number of bytes or None, not %s"
                            % type(rate).__name__)
        if rate is not None and not 0 < rate <= _MAX_SAMPLE_RATE:
            raise ValueError("rate must be a positive number of bytes below 2**62, or None, got %s"
                             % shown(rate))
        self._rate = rate
        self._want = 0
        self._start = None
        self._t0 = 0.0
        self.profile = Profile("allocations", [], 0)

    def __enter__(self):
        global _rate_before
        with _blocks_lock:
            if self._start is not None:
                raise RuntimeError("this allocation_profile is already open")
            cur = _engine.get_sample_rate()
            self._want = self._rate or cur or DEFAULT_SAMPLE_RATE
            if self._want != cur:
                # Saved once the rate is changed: a refused rate must leave
                # nothing for the next block to "restore".
                _engine.set_sample_rate(self._want)
                if _rate_before is None:
                    _rate_before = cur
            _open_blocks.append(self)
            self.profile.rate = _engine.get_sample_rate()
            self._t0 = time.monotonic()
            self._start = _engine._sampler_log_open()
        return self.profile

    def __exit__(self, *exc):
        global _rate_before
        with _blocks_lock:
            recs = _engine._sampler_log_close(self._start)
            self._start = None
            _open_blocks.remove(self)
            if _rate_before is not None:
                want = _open_blocks[-1]._want if _open_blocks else _rate_before
                if _engine.get_sample_rate() != want:
                    _engine.set_sample_rate(want)
                if not _open_blocks:
                    _rate_before = None
        self.profile.samples = _samples(recs)
        self.profile.rate = _sampled_rate(self.profile.samples, self.profile.rate)
        self.profile.duration = time.monotonic() - self._t0
        return False


# ---- pprof's profile.proto ------------------------------------------------------
# A minimal protobuf writer: profile.proto needs only varints and
# length-delimited fields, and the `protobuf` package would need a generated
# module and a dependency for what is forty lines here. Field numbers are
# profile.proto's (github.com/google/pprof/proto/profile.proto).

def _varint(n):
    out = bytearray()
    n &= (1 << 64) - 1          # int64 values are two's complement on the wire
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field_int(num, n):
    return _varint(num << 3) + _varint(n)


def _field_bytes(num, data):
    return _varint((num << 3) | 2) + _varint(len(data)) + data


def _packed(num, values):
    return _field_bytes(num, b"".join(_varint(v) for v in values)) if values else b""


def _pprof_encode(prof):
    strings = {"": 0}

    def sid(s):
        if s not in strings:
            strings[s] = len(strings)
        return strings[s]

    funcs = {}
    locs = {}
    out = []
    alloc = prof.kind == "allocations"
    if alloc:
        types = [("alloc_objects", "count"), ("alloc_space", "bytes"),
                 ("inuse_objects", "count"), ("inuse_space", "bytes")]
    else:
        types = [("inuse_objects", "count"), ("inuse_space", "bytes")]
    for t, unit in types:
        out.append(_field_bytes(1, _field_int(1, sid(t)) + _field_int(2, sid(unit))))
    # Values are integers and a sample's estimates are not (a block of
    # `rate` bytes stands for 1.58 blocks): rounding each sample would bias
    # every stack's sum (to 2 per sample there). Each sample gets what its
    # stack's rounded running sum grew by, so a stack's values add up to its
    # rounded estimate.
    exact = {}
    given = {}
    for s in prof.samples:
        ids = []
        for f in s.stack:
            loc = locs.get(f)
            if loc is None:
                fid = funcs.get((f.function, f.file, f.line == 0))
                if fid is None:
                    fid = funcs[(f.function, f.file, f.line == 0)] = len(funcs) + 1
                loc = locs[f] = (len(locs) + 1, fid)
            ids.append(loc[0])
        key = tuple(ids)
        vals = [s.count, s.bytes]
        if alloc:
            vals += [s.count, s.bytes] if s.lifetime is None else [0.0, 0.0]
        sums = exact[key] = [a + b for a, b in zip(exact.get(key, [0.0] * len(vals)), vals)]
        done = given.get(key, [0] * len(vals))
        ints = [round(x) - d for x, d in zip(sums, done)]
        given[key] = [d + i for d, i in zip(done, ints)]
        msg = _packed(1, ids) + _packed(2, ints)
        msg += _field_bytes(3, _field_int(1, sid("bytes")) + _field_int(3, s.size))
        if s.lifetime is not None:
            msg += _field_bytes(3, _field_int(1, sid("lifetime")) + _field_int(3, int(s.lifetime * 1e9))
                                + _field_int(4, sid("nanoseconds")))
        out.append(_field_bytes(2, msg))
    # One mapping saying every location is symbolized already: without it
    # pprof warns that the main binary is unknown and tries to symbolize.
    out.append(_field_bytes(3, _field_int(1, 1) + _field_int(5, sid(_python_file))
                            + _field_int(7, 1) + _field_int(8, 1) + _field_int(9, 1)))
    for f, (lid, fid) in locs.items():
        out.append(_field_bytes(4, _field_int(1, lid) + _field_int(2, 1)
                                + _field_bytes(4, _field_int(1, fid) + _field_int(2, f.line))))
    for (name, file, native), fid in funcs.items():
        # A native frame's name is its symbol (system_name, which pprof may
        # demangle). A Python frame has none: pprof demangles names equal to
        # their system name and strips <...> from them, emptying <module>.
        system = _field_int(3, sid(name)) if native else b""
        out.append(_field_bytes(5, _field_int(1, fid) + _field_int(2, sid(name)) + system
                                + _field_int(4, sid(file))))
    tail = _field_int(9, int(prof.time * 1e9))
    if prof.duration:
        tail += _field_int(10, int(prof.duration * 1e9))
    tail += _field_bytes(11, _field_int(1, sid("space")) + _field_int(2, sid("bytes")))
    tail += _field_int(12, prof.rate)
    # pprof shows the last type unless told: an allocation profile's
    # figures are what was allocated, freed or not (as top() shows).
    tail += _field_int(14, sid(types[-1][0] if not alloc else "alloc_space"))
    strs = b"".join(_field_bytes(6, s.encode("utf-8")) for s in strings)   # in id order
    return b"".join(out) + strs + tail


# ---- flame graph -------------------------------------------------------------------

def _flame_svg(collapsed, title, width=1200, row=16):
    """An SVG flame graph (outermost frame at the bottom) of collapsed stacks,
    with a tooltip per frame; no script, no external resource."""
    import html                     # here, not at import: `import tcalloc` stays small
    root = {}
    total = 0
    for line in collapsed.splitlines():
        stack, _, n = line.rpartition(" ")
        total += int(n)
        node = root
        for name in stack.split(";"):
            child = node.setdefault(name, [0, {}])
            child[0] += int(n)
            node = child[1]
    depth = [0]

    def measure(node, d):
        depth[0] = max(depth[0], d)
        for _, kids in node.values():
            measure(kids, d + 1)
    measure(root, 1)
    height = (depth[0] + 2) * row + 10
    parts = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
             'font-family="monospace" font-size="11">' % (width, height),
             '<text x="%d" y="14" text-anchor="middle" font-size="13">%s (%s bytes)</text>'
             % (width // 2, html.escape(title), "{:,}".format(total))]

    def draw(node, x, d):
        for name, (n, kids) in sorted(node.items()):
            w = (width - 20) * n / total if total else 0
            y = height - (d + 1) * row
            if w >= 0.5:
                hue = 20 + zlib.crc32(name.encode()) % 40      # stable colours per frame
                label = html.escape(name)
                parts.append('<g><title>%s: %s bytes (%.1f%%)</title><rect x="%.1f" y="%d" '
                             'width="%.1f" height="%d" fill="hsl(%d,80%%,60%%)" stroke="white"/>'
                             % (label, "{:,}".format(n), 100.0 * n / total, x, y, w, row - 1, hue))
                chars = int(w / 7)
                if chars >= 3:
                    text = name if len(name) <= chars else name[:chars - 2] + ".."
                    parts.append('<text x="%.1f" y="%d">%s</text>' % (x + 2, y + row - 4, html.escape(text)))
                parts.append("</g>")
                draw(kids, x, d + 1)
            x += w
    draw(root, 10.0, 0)
    parts.append("</svg>\n")
    return "\n".join(parts)
