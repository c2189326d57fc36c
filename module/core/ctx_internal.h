/* ctx_internal.h - what the core's own files share; not part of the API. */
#ifndef CTX_INTERNAL_H_
#define CTX_INTERNAL_H_

#include "ctx_core.h"
#include "upb/reflection/def.h"

/* Points upb's global allocator at the core hooks (idempotent). */
void ctx_EnsureUpbHooks(void);

/* A small open-addressing hash index: (pointer, pointer) -> int, so that
 * schemas with many message types compile and compare in linear time
 * (ctx_index.c). Zero-initialise; free with ctx_free(ix.slots). */
typedef struct {
  const void* a; /* NULL: an empty slot */
  const void* b;
  int value;
} ctx_PtrIndexSlot;

typedef struct {
  ctx_PtrIndexSlot* slots;
  size_t cap, len;
} ctx_PtrIndex;

/* The value stored for (a, b), or -1. */
int ctx_PtrIndex_Get(const ctx_PtrIndex* ix, const void* a, const void* b);
/* Stores (a, b) -> value; (a, b) must not be there yet. False when out of memory. */
bool ctx_PtrIndex_Put(ctx_PtrIndex* ix, const void* a, const void* b, int value);

const upb_MessageDef* ctx_Schema_MessageDef(const ctx_Schema* s);
const upb_FieldDef* ctx_Schema_VersionFieldDef(const ctx_Schema* s);
/* True when a required field is reachable from the root message. */
bool ctx_Schema_HasRequired(const ctx_Schema* s);

/* The wire walk's view of a schema, computed once when it is built: per
 * message reachable from the root, its fields by number, with what the walk
 * needs to know precomputed (no upb lookups on the hot path). */
typedef enum {
  kCtx_Kind_Scalar = 0,
  kCtx_Kind_String = 1, /* UTF-8 checked */
  kCtx_Kind_Bytes = 2,
  kCtx_Kind_Message = 3,
  kCtx_Kind_Group = 4,
} ctx_Kind;

typedef struct {
  const upb_FieldDef* def;
  const upb_EnumDef* closed_enum; /* non-NULL for closed enums */
  uint32_t number;
  int32_t sub;       /* plan index of the message type (Message, Group), else -1 */
  uint8_t wire_type; /* the wire type of one unpacked value */
  uint8_t kind;      /* ctx_Kind */
  bool packable;     /* repeated scalar: wire type 2 (packed) is accepted too */
  bool repeated;
  int32_t req;       /* proto2 required: index among the message's required fields, else -1 */
} ctx_FieldPlan;

typedef struct {
  ctx_FieldPlan* fields; /* sorted by number */
  int nfields;
  int16_t* dense;        /* number -> index in fields, or -1, for numbers < dense_len */
  uint32_t dense_len;
  int nrequired;         /* required fields; their `req` is 0..nrequired-1 by number */
  const ctx_FieldPlan** required; /* the required fields by `req` */
} ctx_MsgPlan;

/* The plans; index 0 is the root message. */
const ctx_MsgPlan* ctx_Schema_Plans(const ctx_Schema* s);

static inline const ctx_FieldPlan* ctx_MsgPlan_Find(const ctx_MsgPlan* mp,
                                                    uint32_t number) {
  if (number < mp->dense_len) {
    int i = mp->dense[number];
    return i < 0 ? NULL : &mp->fields[i];
  }
  int lo = 0, hi = mp->nfields - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2;
    uint32_t n = mp->fields[mid].number;
    if (n == number) return &mp->fields[mid];
    if (n < number) lo = mid + 1; else hi = mid - 1;
  }
  return NULL;
}

#endif /* CTX_INTERNAL_H_ */
