/* Platform shims, wrapped once (lxml rwlock.pxi style): atomics, the spinlock
 * with its performance counters, the thread-local cache slot, OS memory calls,
 * the monotonic clock and the fatal-error reporter. Everything is static
 * inline so each extension module that includes it gets its own copy of the
 * code, never of shared state (no variables are defined here).
 *
 * Memory ordering: single-writer counters use relaxed loads/stores (plain movs
 * on x86-64) so readers in stats() see torn-free values without a data race.
 */
#ifndef TC_PLATFORM_H
#define TC_PLATFORM_H

#if !defined(__linux__)
#error "tcalloc supports Linux only (futexes, MAP_FIXED_NOREPLACE, mremap)"
#endif

#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <errno.h>
#include <time.h>
#include <unistd.h>
#include <sched.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <linux/futex.h>
#include <stdlib.h>
#include "tc_config.h"

#define TC_LIKELY(x)   __builtin_expect(!!(x), 1)
#define TC_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define TC_CACHELINE 64

/* ---- atomics ----------------------------------------------------------- */
static inline uint64_t tc_load_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline int64_t tc_load_i64(const int64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void tc_store_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline void tc_store_i64(int64_t *p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline void tc_store_u32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
/* Increment of a counter only its owner writes (no lock prefix). */
static inline void tc_inc_owned(uint64_t *p, uint64_t v) {
    __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + v, __ATOMIC_RELAXED);
}
static inline uint64_t tc_atomic_add_u64(uint64_t *p, uint64_t v) { return __atomic_add_fetch(p, v, __ATOMIC_RELAXED); }
static inline uint64_t tc_atomic_sub_u64(uint64_t *p, uint64_t v) { return __atomic_sub_fetch(p, v, __ATOMIC_RELAXED); }
/* *p = max(*p, v), lock-free (a peak several threads may raise at once). */
static inline void tc_atomic_max_u64(uint64_t *p, uint64_t v) {
    uint64_t cur = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (v > cur && !__atomic_compare_exchange_n(p, &cur, v, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
}
static inline uint32_t tc_load_u32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline int tc_load_int(const int *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void tc_store_int(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline void *tc_load_acquire_ptr(void *const *p) { return __atomic_load_n((void **)p, __ATOMIC_ACQUIRE); }
static inline void *tc_load_relaxed_ptr(void *const *p) { return __atomic_load_n((void **)p, __ATOMIC_RELAXED); }
static inline void tc_store_release_ptr(void **p, void *v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void tc_store_relaxed_ptr(void **p, void *v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline uint8_t tc_load_u8(const uint8_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void tc_store_u8(uint8_t *p, uint8_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline void tc_prefetch(const void *p) { __builtin_prefetch(p, 1, 3); }
static inline void tc_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Waiting on another thread: spin `limit` times (the peer may be running on
 * the other core), then yield (with more threads than cores the peer needs
 * this one). */
static inline void tc_spin_backoff(uint64_t *spins, uint64_t limit) {
    if (++*spins < limit) {
        tc_cpu_relax();
    } else {
        *spins = 0;
        sched_yield();
    }
}

/* ---- clock --------------------------------------------------------------- */
static inline uint64_t tc_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- spinlock -------------------------------------------------------------
 * state: 0 free, 1 held, 2 held and a waiter may sleep on the futex.
 * Spin TC_SPIN_LIMIT times (cheap when the holder is running on the other
 * core), then sleep on a futex: on a 2-core machine with more threads than
 * cores, a spinner must not burn the time slice its preempted holder needs.
 * Counters are written only while the lock is held. One cache line per lock
 * so arrays of locks do not false-share. */
#ifndef TC_SPIN_LIMIT
#define TC_SPIN_LIMIT 64
#endif
typedef struct {
    int state;
    int _pad;
    uint64_t acquisitions;
    uint64_t contended;
    uint64_t spins;
    uint64_t wait_ns;
} __attribute__((aligned(TC_CACHELINE))) tc_spinlock_t;

static inline void tc_spinlock_init(tc_spinlock_t *l) { memset(l, 0, sizeof(*l)); }

static inline void tc_futex_wait(int *addr, int val) {
    syscall(SYS_futex, addr, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}
/* Sleep while *addr == val, for at most ns nanoseconds or until woken. */
static inline void tc_futex_wait_for(int *addr, int val, long ns) {
    struct timespec ts;
    ts.tv_sec = ns / 1000000000L;
    ts.tv_nsec = ns % 1000000000L;
    syscall(SYS_futex, addr, FUTEX_WAIT_PRIVATE, val, &ts, NULL, 0);
}
static inline void tc_futex_wake(int *addr, int n) {
    syscall(SYS_futex, addr, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
}

static void __attribute__((noinline)) tc_spinlock_lock_slow(tc_spinlock_t *l) {
#if TCALLOC_LOCK_STATS
    uint64_t t0 = tc_now_ns();
#endif
    uint64_t spins = 0;
    /* Spin phase: take the lock as 0 -> 1 while nobody sleeps on it. */
    for (int i = 0; i < TC_SPIN_LIMIT; i++) {
        int s = __atomic_load_n(&l->state, __ATOMIC_RELAXED);
        if (s == 0) {
            int expected = 0;
            if (__atomic_compare_exchange_n(&l->state, &expected, 1, 0,
                                            __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
                goto acquired;
        } else if (s == 2) {
            break;                      /* others sleep already: join them */
        }
        tc_cpu_relax();
        spins++;
    }
    /* Sleep phase (Drepper's mutex): from here on the lock is only ever
     * taken by exchanging in 2. Taking it as 0 -> 1 after a wake-up would
     * erase the mark of the other sleepers, and the next unlock would wake
     * nobody: a lost wake-up, a thread asleep forever. */
    while (__atomic_exchange_n(&l->state, 2, __ATOMIC_ACQUIRE) != 0)
        tc_futex_wait(&l->state, 2);
acquired:
#if TCALLOC_LOCK_STATS
    tc_inc_owned(&l->acquisitions, 1);
    tc_inc_owned(&l->contended, 1);
    tc_inc_owned(&l->spins, spins);
    tc_inc_owned(&l->wait_ns, tc_now_ns() - t0);
#else
    (void)spins;
#endif
}

static inline void tc_spinlock_lock(tc_spinlock_t *l) {
    int expected = 0;
    if (TC_LIKELY(__atomic_compare_exchange_n(&l->state, &expected, 1, 0,
                                              __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))) {
#if TCALLOC_LOCK_STATS
        tc_inc_owned(&l->acquisitions, 1);
#endif
        return;
    }
    tc_spinlock_lock_slow(l);
}

static inline void tc_spinlock_unlock(tc_spinlock_t *l) {
    if (TC_UNLIKELY(__atomic_exchange_n(&l->state, 0, __ATOMIC_RELEASE) == 2))
        tc_futex_wake(&l->state, 1);
}

/* After fork() the child has one thread: whoever held a lock is gone. */
static inline void tc_spinlock_reset(tc_spinlock_t *l) { __atomic_store_n(&l->state, 0, __ATOMIC_RELAXED); }

/* ---- OS memory ---------------------------------------------------------- */
/* Anonymous private mapping, zero-filled; NULL on failure (errno set). */
static inline void *tc_os_map(size_t size) {
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}
/* Map exactly at `hint` if that range is free (never clobbers a mapping);
 * NULL otherwise. Lets the heap grow contiguously, so spans from successive
 * growths can coalesce. */
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
static inline void *tc_os_map_at(void *hint, size_t size) {
    void *p = mmap(hint, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (p == MAP_FAILED) return NULL;
    if (p != hint) { munmap(p, size); return NULL; }   /* pre-4.17 kernels ignore the flag */
    return p;
}
static inline int tc_os_unmap(void *p, size_t size) { return munmap(p, size); }
/* Give pages back: RSS drops now, the range reads as zeros when touched again. */
static inline int tc_os_release(void *p, size_t size) { return madvise(p, size, MADV_DONTNEED); }

/* 0 if every OS page of [p, p+size) is mapped (p page aligned), -1 if any
 * is not: mincore fails with ENOMEM on a range with a hole in it. */
static inline int tc_os_range_mapped(void *p, size_t size) {
    unsigned char vec[4096];
    size_t os_page = (size_t)sysconf(_SC_PAGESIZE), chunk = sizeof(vec) * os_page, off, len;
    for (off = 0; off < size; off += chunk) {
        len = size - off < chunk ? size - off : chunk;
        if (mincore((char *)p + off, len, vec) != 0 && errno == ENOMEM)
            return -1;
    }
    return 0;
}

/* After a page move to dst failed: make [dst, dst+size) mapped again.
 * Linux 5.7 to at least 6.6 (newer ones check first) unmap the destination
 * of mremap(MREMAP_FIXED) before they check the source, so a source that
 * spans two mappings (the pages of an earlier move stay a mapping of their
 * own) fails with EFAULT and leaves a hole where dst was, and so does any
 * failure that comes after that unmap. 0 if dst is whole again (left alone,
 * or the hole mapped anew: it reads as zeros), -1 if part of the hole is now
 * another mapping's (a thread's mmap took it meanwhile): those addresses
 * belong to tcalloc's heap, which the caller cannot give up without losing
 * track of its pages. */
static inline int tc_os_restore_after_move(void *dst, size_t size) {
    if (tc_os_map_at(dst, size) == dst)
        return 0;                   /* the whole range was a hole */
    return tc_os_range_mapped(dst, size);
}

/* Move the pages of [src, src+size) to [dst, dst+size) without copying
 * them (both page aligned, not overlapping, inside tcalloc's mappings): the
 * page tables move, src stays mapped and reads as zeros, with no resident
 * pages. 0 on success. -1 with errno otherwise (EINVAL before Linux 5.7,
 * which lacks MREMAP_DONTUNMAP): nothing has moved and dst is mapped (its
 * contents undefined). -2 if dst could not be mapped again after the
 * failure (tc_os_restore_after_move): the caller must abort. */
#if defined(MREMAP_FIXED) && !defined(MREMAP_DONTUNMAP)
#define MREMAP_DONTUNMAP 4      /* Linux 5.7; older headers lack the name */
#endif
static inline int tc_os_move(void *src, void *dst, size_t size) {
#ifdef MREMAP_FIXED               /* mremap's flags: Linux, with _GNU_SOURCE */
    void *r = mremap(src, size, size, MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP, dst);
    int err;
    if (r == dst) return 0;
    err = r == MAP_FAILED ? errno : EINVAL;   /* another address: cannot happen with MREMAP_FIXED */
    if (tc_os_restore_after_move(dst, size) != 0) return -2;
    errno = err;
    return -1;
#else
    (void)src; (void)dst; (void)size;
    errno = ENOSYS;
    return -1;
#endif
}

/* How many mappings the process has (lines of /proc/self/maps), or -1 if
 * that cannot be read. For tc_os_move's callers, which keep well under the
 * kernel's limit (vm.max_map_count, 65530 by default). */
static inline long tc_os_mapping_count(void) {
    char buf[4096];
    long n = 0;
    ssize_t got, i;
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    while ((got = read(fd, buf, sizeof(buf))) > 0)
        for (i = 0; i < got; i++)
            n += buf[i] == '\n';
    close(fd);
    return got < 0 ? -1 : n;
}

/* 1 if any OS page of [p, p+size) is resident (p page aligned), 0 if none.
 * On error, 1: the caller then keeps treating the memory as backed. mincore
 * in chunks of 4096 OS pages, so the vector stays on the stack. */
static inline int tc_os_any_resident(void *p, size_t size) {
    unsigned char vec[4096];
    size_t os_page = (size_t)sysconf(_SC_PAGESIZE), chunk = sizeof(vec) * os_page, off, len, i;
    for (off = 0; off < size; off += chunk) {
        len = size - off < chunk ? size - off : chunk;
        if (mincore((char *)p + off, len, vec) != 0)
            return 1;
        for (i = 0; i < (len + os_page - 1) / os_page; i++)
            if (vec[i] & 1)
                return 1;
    }
    return 0;
}

/* memset the resident OS pages of [p, p+size) (p page aligned) to byte and
 * leave the others alone: debug mode's poison for a freed large block, which
 * must not commit pages the program never touched. On a mincore error the
 * whole chunk is filled. */
static inline void tc_os_fill_resident(void *p, size_t size, int byte) {
    unsigned char vec[4096];
    size_t os_page = (size_t)sysconf(_SC_PAGESIZE), chunk = sizeof(vec) * os_page, off, len, i, n;
    for (off = 0; off < size; off += chunk) {
        len = size - off < chunk ? size - off : chunk;
        if (mincore((char *)p + off, len, vec) != 0) {
            memset((char *)p + off, byte, len);
            continue;
        }
        for (i = 0; i < (len + os_page - 1) / os_page; i++) {
            if (vec[i] & 1) {
                n = len - i * os_page < os_page ? len - i * os_page : os_page;
                memset((char *)p + off + i * os_page, byte, n);
            }
        }
    }
}

/* ---- fatal errors ------------------------------------------------------- */
/* Heap corruption: say what and where on stderr without allocating, then abort.
   unused: a user's extension that cimports tcalloc.buffer includes this header
   and never calls it (-Werror builds). */
static void __attribute__((noreturn, noinline, cold, unused)) tc_fatal_ptr(const char *what, const void *ptr) {
    char buf[256];
    static const char hex[] = "0123456789abcdef";
    size_t n = 0;
    const char *pre = "tcalloc: fatal: ";
    while (*pre && n < sizeof buf) buf[n++] = *pre++;
    while (*what && n < sizeof buf - 24) buf[n++] = *what++;
    const char *mid = " (pointer 0x";
    while (*mid && n < sizeof buf) buf[n++] = *mid++;
    uintptr_t v = (uintptr_t)ptr;
    int started = 0;
    for (int shift = 60; shift >= 0; shift -= 4) {
        int d = (int)((v >> shift) & 0xf);
        if (d || started || shift == 0) { buf[n++] = hex[d]; started = 1; }
    }
    buf[n++] = ')';
    buf[n++] = '\n';
    ssize_t r = write(2, buf, n);
    (void)r;
    abort();
}

/* An internal invariant broken (TCALLOC_ASSERTS builds): the engine's own
   bug, not the program's. Same output path as tc_fatal_ptr. */
static void __attribute__((noreturn, noinline, cold, unused)) tc_assert_fail(const char *what, const char *file, int line) {
    char buf[320];
    size_t n = 0, cap = sizeof buf - 16;   /* room for the line number, ")\n" */
    const char *parts[] = {"tcalloc: internal invariant broken: ", what, " (", file, ":"};
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
        for (const char *c = parts[i]; *c && n < cap; c++) buf[n++] = *c;
    char digits[12];
    int d = 0;
    do { digits[d++] = (char)('0' + line % 10); line /= 10; } while (line > 0 && d < 11);
    while (d > 0) buf[n++] = digits[--d];
    buf[n++] = ')';
    buf[n++] = '\n';
    ssize_t r = write(2, buf, n);
    (void)r;
    abort();
}
#if TCALLOC_ASSERTS
#define TC_ASSERT(cond, what) (TC_LIKELY(cond) ? (void)0 : tc_assert_fail((what), __FILE__, __LINE__))
#else
#define TC_ASSERT(cond, what) ((void)0)
#endif

static inline int tc_is_pow2(size_t x) { return x && !(x & (x - 1)); }
static inline int tc_ctz64(uint64_t x) { return __builtin_ctzll(x); }
static inline int tc_clz64(uint64_t x) { return __builtin_clzll(x); }
static inline int tc_mul_overflow(size_t a, size_t b, size_t *out) { return __builtin_mul_overflow(a, b, out); }
static inline void tc_set_errno(int e) { errno = e; }
static inline int tc_get_errno(void) { return errno; }

#endif /* TC_PLATFORM_H */
