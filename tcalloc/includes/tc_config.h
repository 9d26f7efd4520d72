/* Build-time switches, compiled away when off (uvloop style).
 *
 * TCALLOC_DEBUG      1: full checks on every free (interior pointers, double
 *                    free on every path), poisoning of freed memory. The
 *                    runtime switch TCALLOC_DEBUG=1 in the environment turns
 *                    the same checks on in a normal build, at a cost only on
 *                    the slow paths' flag test.
 * TCALLOC_FREE_KEY   1: free blocks carry a key in their second word so a
 *                    double free of a block still in the thread's cache
 *                    aborts instead of corrupting the heap (about 1 ns per
 *                    malloc+free pair); 0 compiles the check out.
 * TCALLOC_LOCK_STATS 1: every spinlock counts acquisitions, contended
 *                    acquisitions, spin iterations and nanoseconds waited.
 *                    The counters are written only by the lock holder, so an
 *                    uncontended acquisition costs one plain increment.
 * TCALLOC_ASSERTS    1: the engine's internal invariants (TC_ASSERT in the
 *                    .pxi parts) are checked where they must hold, and a
 *                    broken one aborts naming it. Off in the product (the
 *                    condition is not even evaluated); on in the sanitizer
 *                    builds the test suite makes (tests/sanitizers/).
 */
#ifndef TC_CONFIG_H
#define TC_CONFIG_H
#ifndef TCALLOC_DEBUG
#define TCALLOC_DEBUG 0
#endif
#ifndef TCALLOC_FREE_KEY
#define TCALLOC_FREE_KEY 1
#endif
#ifndef TCALLOC_LOCK_STATS
#define TCALLOC_LOCK_STATS 1
#endif
#ifndef TCALLOC_ASSERTS
#define TCALLOC_ASSERTS 0
#endif
#endif
