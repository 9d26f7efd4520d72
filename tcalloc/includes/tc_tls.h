/* The thread's cache pointer. Included by the engine module ONLY: the
 * variable is static, so every module including this header would get a slot
 * of its own. initial-exec: read as one %fs-relative load instead of a
 * __tls_get_addr call, which a dlopen'd extension otherwise pays on every
 * malloc and free (glibc reserves static TLS surplus for such modules; we use
 * 8 bytes of it). */
#ifndef TC_TLS_H
#define TC_TLS_H
static __thread void *tc_tls_cache_slot __attribute__((tls_model("initial-exec")));
static inline void *tc_tls_get(void) { return tc_tls_cache_slot; }
static inline void tc_tls_set(void *p) { tc_tls_cache_slot = p; }
#endif
