/* The thread's cache pointer. Included by the engine module ONLY: the
 * variables are static, so every module including this header would get
 * slots of its own. initial-exec: read as a %fs-relative load (the offset
 * comes from the GOT) instead of a __tls_get_addr call, which a dlopen'd
 * extension otherwise pays on every malloc and free; glibc reserves static
 * TLS surplus for such modules, and we use 24 bytes of it.
 *
 * The fast-path slot is never NULL: until a thread has a cache, and while
 * debug checks are on, it points to tc_empty_cache, a zeroed ThreadCache
 * whose lists are all empty with a max length of 0. A pop from it finds no
 * object and a push overflows, so both take the slow path with no NULL test
 * on the fast path; nothing is ever written to it. */
#ifndef TC_TLS_H
#define TC_TLS_H
#include <stdint.h>

/* At least sizeof(ThreadCache); the engine checks this at import. */
#define TC_EMPTY_CACHE_BYTES (128 * 64 + 512)
static char tc_empty_cache[TC_EMPTY_CACHE_BYTES] __attribute__((aligned(64)));

static __thread void *tc_tls_cache_slot __attribute__((tls_model("initial-exec"))) = tc_empty_cache;
/* The thread's real cache, NULL until it has one (debug mode too). */
static __thread void *tc_tls_owner_slot __attribute__((tls_model("initial-exec")));
static inline void *tc_tls_get(void) { return tc_tls_cache_slot; }
static inline void *tc_tls_owner(void) { return tc_tls_owner_slot; }
static inline void *tc_tls_empty(void) { return tc_empty_cache; }
static inline void tc_tls_set(void *p, int fast) {
    tc_tls_owner_slot = p;
    tc_tls_cache_slot = (fast && p) ? p : tc_empty_cache;
}
/* Set once the thread's cache has been destroyed at thread exit: later frees
 * from other key destructors go straight to the central stores instead of
 * building a cache nobody would flush. */
static __thread int tc_tls_exiting_flag __attribute__((tls_model("initial-exec")));
static inline int tc_tls_exiting(void) { return tc_tls_exiting_flag; }
static inline void tc_tls_set_exiting(void) { tc_tls_exiting_flag = 1; }
#endif
