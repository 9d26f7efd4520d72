"""The tcalloc stress lab: ``python -m tcalloc.stress``.

Runs the native workloads of ``tcalloc.stress._workloads`` (larson, xmalloc,
prodcons, cache-thrash, cache-scratch, churn, mixed, fork) against tcalloc
and the system malloc in this process, and against gperftools tcmalloc,
jemalloc and mimalloc in child processes started with LD_PRELOAD (the same
workload code, whose "system" malloc is then the peer). Every block is
filled with a pattern and checked before it is freed; a corrupt, lost,
misaligned or failed block, or a failed/hung fork child, fails the run and
makes the command exit 1. So does a hung run: its workers complete no
operation for 60 s, or a timed run has not ended 60 s plus four times its
duration after it started (a run of ``--ops`` has no time limit while it
progresses). Usage errors exit 2.

Another allocator can run the same workloads in this process:
``tcalloc.stress._workloads.run(workload, allocator=capsule, ...)`` takes a
capsule named ``"tcalloc.stress.allocator"`` holding a ``tc_allocator_t *``
(malloc, free, calloc, realloc; the header ``tc_harness.h`` in this package
declares it), as the test suite does with a deliberately broken allocator.

``--json FILE`` writes::

    {"version": 1,
     "command": [...argv...],
     "machine": {"cpus", "platform", "python"},
     "config": {"workloads", "backends", "threads", "duration_s" (seconds
                per run: 2.0 for a soak's without --duration or --quick),
                "ops", "min_size", "max_size", "seed", "isolate"},
     "peers": {"found": {name: library path}, "missing": [names]},
     "runs": [RUN, ...],
     "failures": number of runs that are not ok,
     "interrupted": true when Ctrl-C ended the suite early (then the runs
                    done so far are reported and written, and the lab dies
                    by SIGINT, as python does),
     "soak": {...} (only with --soak; "hung": true when a hung run ended
              it: that run is in "runs", failed, and the lab exits 1)}

where each RUN has: workload, backend, where ("in-process" or "child"),
library, threads (as asked), threads_run (as run: xmalloc and prodcons
round an odd count up), ops, allocs, frees, reallocs, bytes, corrupt, lost,
misaligned, failed, elapsed_s, throughput_ops_s, ratio_to_tcalloc (None
without a tcalloc run of the same workload, threads and soak pass), pass
(soak only), per_thread (per
worker: ops, allocs, frees, corrupt, cpu_user_s, cpu_system_s,
ctx_voluntary, ctx_involuntary), cpu_user_s, cpu_system_s, ctx_voluntary,
ctx_involuntary, minor_faults, major_faults (all threads), minor_faults_per_kop
(minor faults per 1000 ops), rss_start, rss_peak, rss_end, uss_peak,
rss_series ([seconds, bytes] samples), thread_cpu (per thread seen by the
sampler), locks and hottest_locks (tcalloc only: per lock acquisitions,
contended, spins, wait_ns; hottest with wait_share = wait / wall time and
wait_share_threads = wait / (wall time x threads)), ok, error, and for fork:
forks, child_failures, child_hung, children_reaped (failed ones too), fork_ms
(mean time the parent spent inside fork()), child_ms (mean time from fork()
to a child reaped); for churn: rounds, pthreads.
"""

JSON_VERSION = 1
