"""Settings from ``TCALLOC_*`` environment variables, read once at import.

Every variable is validated: a value that is not what the variable takes
raises ValueError naming the variable and the value, so ``import tcalloc``
(and ``python -m tcalloc run``) stops instead of running with a setting
nobody asked for.

    TCALLOC_MEMORY_LIMIT          size    limit on the committed heap (0: none)
    TCALLOC_MEMORY_LIMIT_HARD     bool    the limit fails allocations (else soft)
    TCALLOC_RELEASE_RATE          size    bytes/s returned to the OS by itself (default 8M; 0: off)
    TCALLOC_MAX_TOTAL_THREAD_CACHE_BYTES
                                  size    budget shared by all thread caches
    TCALLOC_DEBUG                 bool    debug mode (every small block checked)
    TCALLOC_SAMPLE_RATE           size    heap sampling: one sample per this many bytes (0: off)
    TCALLOC_REALLOC_MOVE_PAGES    bool    a moving realloc of a large block moves its pages (default on)
    TCALLOC_GC_SORT               bool    under the interpreter hook, what a garbage collection
                                          freed is reused in address order (default on)

Sizes are a whole number of bytes or a number with a unit: ``512k``,
``64MiB``, ``2G``, ``1.5GB``. Units are binary, as in other allocators'
settings and in ``ulimit``: k = K = KB = KiB = 1024, and so on to T. A
fraction is rounded down to whole bytes; one that comes to less than a byte
(``0.0001k``) is refused rather than read as 0 (none, off).
Booleans are 1/0, true/false, yes/no, on/off (any case); empty means unset.
Variables read when tcalloc is built (TCALLOC_DEBUG_BUILD, TCALLOC_FREE_KEY,
...) are not settings of a running process; an unknown ``TCALLOC_*`` name
gives a warning, since it is most likely a typo.
"""
import os

MAX_SIZE = 2 ** 63 - 1
# name -> the largest value the engine takes
SIZES = {"TCALLOC_MEMORY_LIMIT": MAX_SIZE, "TCALLOC_RELEASE_RATE": MAX_SIZE,
         "TCALLOC_MAX_TOTAL_THREAD_CACHE_BYTES": 2 ** 62 - 1, "TCALLOC_SAMPLE_RATE": 2 ** 62 - 1}
BOOLS = ("TCALLOC_MEMORY_LIMIT_HARD", "TCALLOC_DEBUG", "TCALLOC_REALLOC_MOVE_PAGES",
         "TCALLOC_GC_SORT")
# Read elsewhere: by the build (setup.py), by run's children, by the tests.
OTHERS = ("TCALLOC_RUN_DOMAINS", "TCALLOC_DEBUG_BUILD", "TCALLOC_CYTHON_CHECKS",
          "TCALLOC_LOCK_STATS", "TCALLOC_FREE_KEY", "TCALLOC_ASSERTS", "TCALLOC_BUILD_ONLY",
          "TCALLOC_DEBUG_INFO",
          "TCALLOC_SOAK_SECONDS", "TCALLOC_BENCH_CHILD", "TCALLOC_SANITIZER_SCALE",
          "TCALLOC_SAN_CC")

# What the engine read and applied at import (read()'s result); the CLI's
# `stats` shows it rather than reading (and warning) again.
applied: "dict[str, int | bool]" = {}

_UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}
# re and warnings are imported where used: the engine reads the settings
# at `import tcalloc`, and a fresh interpreter has loaded neither (re alone,
# with enum and functools, is 0.9 MiB of RSS).
_SIZE = r"(?P<num>\d+(?:\.\d*)?|\.\d+)\s*(?:(?P<unit>[kmgt])(?:ib|b)?|b)?"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
# Fraction digits read of a size: with a unit's scale at most 2**40, the
# first 40 decide the whole bytes exactly (the rest moves the value by less
# than the gap to the next whole byte), and Python's int() refuses more
# than 4300 digits.
_FRAC_DIGITS = 40


def shown(value):
    """repr(value) for an error message, cut short when long: a setting of
    5000 digits, or an int past 4300 digits, which has no repr at all
    (sys.set_int_max_str_digits). tcalloc's other modules use it too."""
    if isinstance(value, str):
        if len(value) <= 60:
            return repr(value)
        return "%r... (%d characters)" % (value[:40], len(value))
    try:
        text = repr(value)
    except ValueError:
        return "%s with more than 4000 digits" % type(value).__name__
    return text if len(text) <= 60 else "%s... (%d characters)" % (text[:40], len(text))


def parse_size(text, name="size", limit=MAX_SIZE):
    """Bytes from ``text`` ("4096", "512k", "64MiB", "2G", "1.5GB"), at most limit."""
    if not isinstance(text, str):
        raise TypeError("%s must be a str, not %s" % (name, type(text).__name__))
    import re
    m = re.fullmatch(_SIZE, text.strip(), re.IGNORECASE)
    if m is None:
        raise ValueError("%s=%s is not a size: use a whole number of bytes or a number with "
                         "a unit (512k, 64MiB, 2G)" % (name, shown(text)))
    num, unit = m.group("num"), (m.group("unit") or "").lower()
    if unit == "" and not num.isdigit():
        raise ValueError("%s=%s: a fraction of a byte; give whole bytes or a unit"
                         % (name, shown(text)))
    scale = 1024 ** _UNITS[unit]
    whole, _, frac = num.partition(".")
    whole = whole.lstrip("0")
    if len(whole) > len(str(limit)):        # more digits than the limit: above it
        raise ValueError("%s=%s is more than %d bytes" % (name, shown(text), limit))
    # Exact decimal arithmetic: 1.5G is 1610612736, not a float's neighbour.
    cut = frac[:_FRAC_DIGITS]
    value = (int(whole or "0") * 10 ** len(cut) + int(cut or "0")) * scale // 10 ** len(cut)
    if value == 0 and (whole or frac.strip("0")):
        # 0 means "none" or "off" to most settings: the opposite of a
        # small value asked for.
        raise ValueError("%s=%s is less than a byte" % (name, shown(text)))
    if value > limit:
        raise ValueError("%s=%s is more than %d bytes" % (name, shown(text), limit))
    return value


def parse_bool(text, name="value"):
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError("%s=%s is not a boolean: use 1/0, true/false, yes/no or on/off"
                     % (name, shown(text)))


def read(environ=os.environ):
    """The settings in ``environ``: {name: value} for every variable set (and
    not empty), sizes as ints and booleans as bools. Raises ValueError on a
    bad value; warns about unknown TCALLOC_* names."""
    out = {}
    for name, raw in environ.items():
        if not name.startswith("TCALLOC_"):
            continue
        if name in SIZES:
            if raw.strip():
                out[name] = parse_size(raw, name, SIZES[name])
        elif name in BOOLS:
            if raw.strip():
                out[name] = parse_bool(raw, name)
        elif name not in OTHERS:
            import warnings
            warnings.warn("tcalloc: unknown environment variable %s ignored (settings: %s)"
                          % (name, ", ".join(tuple(SIZES) + BOOLS)), RuntimeWarning, stacklevel=2)
    if out.get("TCALLOC_MEMORY_LIMIT_HARD") and not out.get("TCALLOC_MEMORY_LIMIT"):
        raise ValueError("TCALLOC_MEMORY_LIMIT_HARD=%r without TCALLOC_MEMORY_LIMIT: "
                         "there is no limit to make hard" % environ["TCALLOC_MEMORY_LIMIT_HARD"])
    return out
