"""Command line: run a program with tcalloc as the interpreter's allocator.

    python -m tcalloc run [--domains raw,mem,obj] [--stats] script.py [args...]
    python -m tcalloc run [--domains raw,mem,obj] [--stats] -m module [args...]
    python -m tcalloc stats

``run`` installs the hook before the program's first line (as ``python -m
cProfile`` does): sys.argv and sys.path[0] are what the program would see if
started directly, and the exit status is the program's. ``--stats`` prints
tcalloc's statistics to stderr when the program ends.
"""
import os
import runpy
import sys

USAGE = """\
usage: python -m tcalloc run [--domains raw,mem,obj] [--stats] script.py [args...]
       python -m tcalloc run [--domains raw,mem,obj] [--stats] -m module [args...]
       python -m tcalloc stats
"""


def _usage(msg):
    sys.stderr.write(f"python -m tcalloc: {msg}\n{USAGE}")
    return 2


def _summary(st):
    mallocs = st["large_mallocs"] + sum(c["mallocs"] for c in st["size_classes"])
    frees = st["large_frees"] + sum(c["frees"] for c in st["size_classes"])
    return (f"tcalloc: mallocs={mallocs} frees={frees} bytes_in_use={st['bytes_in_use']} "
            f"heap_bytes={st['heap_bytes']}")


def _print_stats():
    import tcalloc
    sys.stderr.write(_summary(tcalloc.stats()) + "\n" + tcalloc.stats_text() + "\n")


def _run(argv):
    domains = ("raw", "mem", "obj")
    show_stats = False
    i = 0
    while i < len(argv) and argv[i].startswith("--"):
        opt = argv[i]
        if opt == "--stats":
            show_stats = True
        elif opt == "--domains" or opt.startswith("--domains="):
            if opt == "--domains":
                i += 1
                if i >= len(argv):
                    return _usage("--domains needs a value, e.g. raw,mem,obj")
                value = argv[i]
            else:
                value = opt.split("=", 1)[1]
            domains = tuple(d.strip() for d in value.split(",") if d.strip())
            if not domains or any(d not in ("raw", "mem", "obj") for d in domains):
                return _usage(f"bad --domains {value!r}: a comma-separated subset of raw,mem,obj")
        elif opt == "--":
            i += 1
            break
        else:
            return _usage(f"unknown option {opt!r}")
        i += 1
    rest = argv[i:]
    if not rest:
        return _usage("run needs a script or -m module")
    if rest[0].startswith("-") and rest[0] != "-m":
        return _usage(f"unknown option {rest[0]!r}")
    if rest[0] == "-m":
        if len(rest) < 2:
            return _usage("-m needs a module name")
        target, is_module, prog_args = rest[1], True, rest[2:]
    else:
        target, is_module, prog_args = rest[0], False, rest[1:]
        if not os.path.exists(target):
            sys.stderr.write(f"python -m tcalloc: can't open file {target!r}: "
                             f"No such file or directory\n")
            return 2

    import tcalloc
    if show_stats:
        import atexit
        atexit.register(_print_stats)
    tcalloc.install(domains)
    # Python children of the program (python -m test -jN workers, subprocess,
    # multiprocessing spawn) start on tcalloc too.
    from tcalloc._site import propagate
    propagate(domains)
    if is_module:
        # As `python -m`: sys.path[0] is the current directory (set already,
        # since we were started with -m); runpy sets sys.argv[0] to the file.
        sys.argv = [target] + prog_args
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        sys.argv = [target] + prog_args
        sys.path[0] = os.path.dirname(os.path.abspath(target))
        runpy.run_path(target, run_name="__main__")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        if argv:
            sys.stdout.write(USAGE)
            return 0
        return _usage("no command given")
    cmd, rest = argv[0], argv[1:]
    if cmd == "run":
        return _run(rest)
    if cmd == "stats":
        if rest:
            return _usage("stats takes no arguments")
        import tcalloc
        sys.stdout.write(_summary(tcalloc.stats()) + "\n" + tcalloc.stats_text() + "\n")
        return 0
    return _usage(f"unknown command {cmd!r}")


if __name__ == "__main__":
    sys.exit(main())
