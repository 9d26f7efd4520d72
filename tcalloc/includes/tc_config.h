/* Build-time switches, compiled away when off (uvloop style).
 *
 * TCALLOC_DEBUG      1: full checks on every free (interior pointers, double
 *                    free on every path), poisoning of freed memory. The
 *                    runtime switch TCALLOC_DEBUG=1 in the environment turns
 *                    the same checks on in a normal build, at a cost only on
 *                    the slow paths' flag test.
 * TCALLOC_LOCK_STATS 1: every spinlock counts acquisitions, contended
 *                    acquisitions, spin iterations and nanoseconds waited.
 *                    The counters are written only by the lock holder, so the
 *                    uncontended cost is two plain increments.
 */
#ifndef TC_CONFIG_H
#define TC_CONFIG_H
#ifndef TCALLOC_DEBUG
#define TCALLOC_DEBUG 0
#endif
#ifndef TCALLOC_LOCK_STATS
#define TCALLOC_LOCK_STATS 1
#endif
#endif
