/* tcalloc public C API.
 *
 * Get the table once (with the GIL held), then call it from any thread, with or
 * without the GIL:
 *
 *     #include "tcalloc.h"          // include dir: tcalloc.get_include()
 *     static TcallocCAPI *tc;
 *     ...  tc = TcallocCAPI_Import();  if (!tc) return NULL;   // Python error set
 *     void *p = tc->malloc(64);  ...  tc->free(p);
 *
 * Every entry point behaves as its C standard namesake: malloc(0) returns a
 * unique non-NULL pointer, free(NULL) does nothing, failure returns NULL with
 * errno = ENOMEM and a call that succeeds leaves errno as it was (also when an
 * attempt inside it failed first), calloc checks nmemb*size for overflow, aligned_alloc takes a
 * power-of-two alignment (EINVAL otherwise). free() of a pointer that is not on
 * tcalloc's heap, of a pointer inside a large block, or of a large block already
 * freed aborts the process with a message naming the pointer, as does a double
 * free of a small block still in the thread's cache; a pointer inside a small
 * block, or a small block freed twice after it left the cache, is caught only
 * with TCALLOC_DEBUG=1 (docs/reliability.md has the table).
 *
 * The import functions below are declared when Python.h is included before
 * this header.
 */
#ifndef TCALLOC_H
#define TCALLOC_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TCALLOC_CAPI_ABI_VERSION 1
#define TCALLOC_CAPI_CAPSULE_NAME "tcalloc._C_API"

typedef struct {
    unsigned int abi_version;                        /* 1 */
    void  *(*malloc)(size_t size);
    void   (*free)(void *ptr);
    void  *(*calloc)(size_t nmemb, size_t size);
    void  *(*realloc)(void *ptr, size_t size);
    void  *(*aligned_alloc)(size_t alignment, size_t size);
    size_t (*usable_size)(void *ptr);
} TcallocCAPI;

/* Extension table for tcalloc's own integrations (buffer pools, NumPy handler,
 * interpreter hook) and for C users who need more than the standard calls.
 * Capsule "tcalloc._C_API_EXT" at tcalloc._C_API_EXT. */
#define TCALLOC_EXT_ABI_VERSION 1
#define TCALLOC_EXT_CAPSULE_NAME "tcalloc._C_API_EXT"

typedef struct {
    unsigned int abi_version;                        /* 1 */
    /* 1 if ptr is the start of a live or free block in tcalloc's heap, else 0
     * (a small span's tail, past its last block, is not a block start).
     * Lock-free (a pagemap read); never faults, whatever the pointer. */
    int    (*owns)(const void *ptr);
    /* Heap bytes in use by the application (all threads, approximate while
     * other threads run). */
    size_t (*bytes_in_use)(void);
} TcallocExtAPI;

#if defined(Py_PYTHON_H)
/* Returns the table, or NULL with a Python exception set. Needs the GIL. */
static inline TcallocCAPI *TcallocCAPI_Import(void) {
    TcallocCAPI *api = (TcallocCAPI *)PyCapsule_Import(TCALLOC_CAPI_CAPSULE_NAME, 0);
    if (api && api->abi_version != TCALLOC_CAPI_ABI_VERSION) {
        PyErr_Format(PyExc_ImportError, "tcalloc C API ABI %u, this code expects %u",
                     api->abi_version, TCALLOC_CAPI_ABI_VERSION);
        return NULL;
    }
    return api;
}
static inline TcallocExtAPI *TcallocExtAPI_Import(void) {
    TcallocExtAPI *api = (TcallocExtAPI *)PyCapsule_Import(TCALLOC_EXT_CAPSULE_NAME, 0);
    if (api && api->abi_version != TCALLOC_EXT_ABI_VERSION) {
        PyErr_Format(PyExc_ImportError, "tcalloc ext API ABI %u, this code expects %u",
                     api->abi_version, TCALLOC_EXT_ABI_VERSION);
        return NULL;
    }
    return api;
}
#endif

#ifdef __cplusplus
}
#endif
#endif /* TCALLOC_H */
