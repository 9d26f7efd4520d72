/* A table of allocator entry points, so the same workload and benchmark code
 * runs against tcalloc (through its capsule), the C library's malloc (which is
 * gperftools/jemalloc/mimalloc when a child process runs under LD_PRELOAD),
 * or any other allocator C code hands over in a capsule of this name holding
 * a tc_allocator_t * that outlives the capsule's users. */
#ifndef TC_HARNESS_H
#define TC_HARNESS_H
#include <stddef.h>
#include <stdlib.h>

#define TC_ALLOCATOR_CAPSULE "tcalloc.stress.allocator"

typedef struct {
    const char *name;
    void *(*malloc)(size_t);
    void  (*free)(void *);
    void *(*calloc)(size_t, size_t);
    void *(*realloc)(void *, size_t);
} tc_allocator_t;

static inline tc_allocator_t tc_allocator_system(void) {
    tc_allocator_t a = {"system", malloc, free, calloc, realloc};
    return a;
}
#endif
