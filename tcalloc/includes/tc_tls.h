/* The thread's cache pointer. Included by the engine module ONLY: the
 * variable is static, so every module including this header would get a slot
 * of its own. initial-exec: read as one %fs-relative load instead of a
 * __tls_get_addr call, which a dlopen'd extension otherwise pays on every
 * malloc and free (glibc reserves static TLS surplus for such modules; we use
 * 8 bytes of it). */
#ifndef TC_TLS_H
#define TC_TLS_H
static __thread void *tc_tls_cache_slot __attribute__((tls_model("initial-exec")));
/* The thread's cache, always; the slot above holds it too unless debug
 * checks are on, in which case it stays NULL so every call takes the slow
 * path (where the checks are) and the fast path carries no debug test. */
static __thread void *tc_tls_owner_slot __attribute__((tls_model("initial-exec")));
static inline void *tc_tls_get(void) { return tc_tls_cache_slot; }
static inline void *tc_tls_owner(void) { return tc_tls_owner_slot; }
static inline void tc_tls_set(void *p, int fast) {
    tc_tls_owner_slot = p;
    tc_tls_cache_slot = fast ? p : NULL;
}
/* Set once the thread's cache has been destroyed at thread exit: later frees
 * from other key destructors go straight to the central stores instead of
 * building a cache nobody would flush. */
static __thread int tc_tls_exiting_flag __attribute__((tls_model("initial-exec")));
static inline int tc_tls_exiting(void) { return tc_tls_exiting_flag; }
static inline void tc_tls_set_exiting(void) { tc_tls_exiting_flag = 1; }
#endif
