/* ctx_index.c - a small hash index (pointer, pointer) -> int, for the schema
 * builder (message plans) and the compatibility check (message and enum pairs
 * already visited). Open addressing, linear probing, load factor <= 1/2. */
#include <stdint.h>

#include "ctx_core.h"
#include "ctx_internal.h"

static size_t idx_hash(const void* a, const void* b) {
  uint64_t x = (uint64_t)(uintptr_t)a * 0x9E3779B97F4A7C15ull;
  x ^= (uint64_t)(uintptr_t)b * 0xC2B2AE3D27D4EB4Full;
  return (size_t)(x ^ (x >> 31));
}

int ctx_PtrIndex_Get(const ctx_PtrIndex* ix, const void* a, const void* b) {
  if (!ix->cap) return -1;
  for (size_t i = idx_hash(a, b) & (ix->cap - 1);; i = (i + 1) & (ix->cap - 1)) {
    const ctx_PtrIndexSlot* sl = &ix->slots[i];
    if (!sl->a) return -1;
    if (sl->a == a && sl->b == b) return sl->value;
  }
}

bool ctx_PtrIndex_Put(ctx_PtrIndex* ix, const void* a, const void* b, int value) {
  if (2 * (ix->len + 1) > ix->cap) {
    size_t cap = ix->cap ? ix->cap * 2 : 64;
    ctx_PtrIndexSlot* slots = ctx_calloc(cap, sizeof(*slots));
    if (!slots) return false;
    for (size_t i = 0; i < ix->cap; i++) {
      const ctx_PtrIndexSlot* sl = &ix->slots[i];
      if (!sl->a) continue;
      size_t j = idx_hash(sl->a, sl->b) & (cap - 1);
      while (slots[j].a) j = (j + 1) & (cap - 1);
      slots[j] = *sl;
    }
    ctx_free(ix->slots);
    ix->slots = slots;
    ix->cap = cap;
  }
  size_t j = idx_hash(a, b) & (ix->cap - 1);
  while (ix->slots[j].a) j = (j + 1) & (ix->cap - 1);
  ix->slots[j] = (ctx_PtrIndexSlot){a, b, value};
  ix->len++;
  return true;
}
