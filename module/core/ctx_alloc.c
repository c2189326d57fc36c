/* ctx_alloc.c - the core's allocation hooks, shared with upb.
 *
 * Each block starts with a 16-byte header holding its size (16 keeps the
 * payload as aligned as malloc's), so frees need no size from the caller
 * (upb_free passes none) and a global counter knows the live bytes. */
#include <stdlib.h>
#include <string.h>

#include "ctx_core.h"
#include "upb/mem/alloc.h"

#define CTX_ALLOC_HEADER 16

static ctx_Allocator g_hooks = {malloc, realloc, free};
static size_t g_live; /* updated with atomic adds */

static void count(size_t add, size_t sub) {
  if (add) __atomic_add_fetch(&g_live, add, __ATOMIC_RELAXED);
  if (sub) __atomic_sub_fetch(&g_live, sub, __ATOMIC_RELAXED);
}

void* ctx_malloc(size_t n) {
  if (n > SIZE_MAX - CTX_ALLOC_HEADER) return NULL;
  char* b = g_hooks.malloc(n + CTX_ALLOC_HEADER);
  if (!b) return NULL;
  memcpy(b, &n, sizeof(n));
  count(n + CTX_ALLOC_HEADER, 0);
  return b + CTX_ALLOC_HEADER;
}

void* ctx_calloc(size_t n, size_t size) {
  if (size && n > SIZE_MAX / size) return NULL;
  void* p = ctx_malloc(n * size);
  if (p) memset(p, 0, n * size);
  return p;
}

void* ctx_realloc(void* p, size_t n) {
  if (!p) return ctx_malloc(n);
  if (n > SIZE_MAX - CTX_ALLOC_HEADER) return NULL;
  char* b = (char*)p - CTX_ALLOC_HEADER;
  size_t old;
  memcpy(&old, b, sizeof(old));
  char* nb = g_hooks.realloc(b, n + CTX_ALLOC_HEADER);
  if (!nb) return NULL;
  memcpy(nb, &n, sizeof(n));
  if (n > old) count(n - old, 0); else count(0, old - n);
  return nb + CTX_ALLOC_HEADER;
}

void ctx_free(void* p) {
  if (!p) return;
  char* b = (char*)p - CTX_ALLOC_HEADER;
  size_t n;
  memcpy(&n, b, sizeof(n));
  count(0, n + CTX_ALLOC_HEADER);
  g_hooks.free(b);
}

size_t ctx_AllocatedBytes(void) {
  return __atomic_load_n(&g_live, __ATOMIC_RELAXED);
}

/* upb's global allocator: size 0 frees, anything else reallocates. */
static void* upb_hook(upb_alloc* alloc, void* ptr, size_t oldsize, size_t size,
                      size_t* actual_size) {
  (void)alloc;
  (void)oldsize;
  (void)actual_size;
  if (size == 0) {
    ctx_free(ptr);
    return NULL;
  }
  return ctx_realloc(ptr, size);
}

void ctx_SetAllocator(const ctx_Allocator* a) {
  if (a && a->malloc && a->realloc && a->free) {
    g_hooks = *a;
  } else {
    g_hooks = (ctx_Allocator){malloc, realloc, free};
  }
  upb_alloc_global.func = upb_hook;
}

/* For the core's entry points that may be reached without ctx_SetAllocator
 * (the cffi build): route upb through the hooks before its first allocation. */
void ctx_EnsureUpbHooks(void) {
  if (upb_alloc_global.func != upb_hook) upb_alloc_global.func = upb_hook;
}
