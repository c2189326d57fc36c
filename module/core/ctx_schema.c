/* ctx_schema.c - building schemas from descriptor sets, the compatibility
 * rules between two revisions of a schema (categories WIRE and WIRE_JSON), and
 * the schema-name rule. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctx_core.h"
#include "ctx_internal.h"
#include "google/protobuf/descriptor.upb.h"
#include "upb/base/status.h"
#include "upb/reflection/def.h"

struct ctx_Schema {
  upb_DefPool* pool;
  upb_Arena* arena; /* holds the parsed FileDescriptorSet */
  const upb_MessageDef* msg;
  const upb_FieldDef* vfield;
  bool has_required;
  ctx_MsgPlan* plans; /* [0] is the root */
  const upb_MessageDef** plan_defs;
  int nplans;
  size_t memory_bytes; /* growth of ctx_AllocatedBytes while building it */
};

/* ---- status ------------------------------------------------------------ */

const char* ctx_Code_Prefix(ctx_Code code) {
  switch (code) {
    case kCtx_Ok: return "OK";
    case kCtx_Invalid: return "CTXINVALID";
    case kCtx_TooBig: return "CTXTOOBIG";
    case kCtx_Version: return "CTXVERSION";
    case kCtx_Schema: return "CTXSCHEMA";
    case kCtx_NoMemory: return "ERR";
    case kCtx_Field: return "CTXFIELD";
  }
  return "ERR";
}

void ctx_Status_Clear(ctx_Status* s) {
  s->code = kCtx_Ok;
  s->msg[0] = '\0';
}

void ctx_Status_Set(ctx_Status* s, ctx_Code code, const char* fmt, ...) {
  va_list ap;
  s->code = code;
  va_start(ap, fmt);
  vsnprintf(s->msg, sizeof(s->msg), fmt, ap);
  va_end(ap);
}

void ctx_Limits_Default(ctx_Limits* l) {
  l->max_payload_bytes = CTX_DEFAULT_MAX_PAYLOAD_BYTES;
  l->max_depth = CTX_DEFAULT_MAX_DEPTH;
  l->allow_unknown = false;
}

/* ---- building ------------------------------------------------------------ */

static bool view_eq(upb_StringView a, upb_StringView b) {
  return a.size == b.size && (a.size == 0 || memcmp(a.data, b.data, a.size) == 0);
}

/* Prints at most 120 bytes of a name coming from the client. */
#define NAME_FMT "%.*s"
#define NAME_ARG(v) (int)((v).size > 120 ? 120 : (v).size), (v).data

static bool is_integer_ctype(upb_CType t) {
  return t == kUpb_CType_Int32 || t == kUpb_CType_Int64 ||
         t == kUpb_CType_UInt32 || t == kUpb_CType_UInt64;
}

/* ---- file names: a hash set over the set's files, and their import order ---- */

typedef struct {
  const google_protobuf_FileDescriptorProto* const* files;
  size_t n;
  int32_t* slots; /* file index, -1: empty */
  size_t cap;     /* power of two, >= 2n */
} name_index;

static upb_StringView file_name(const name_index* ni, size_t i) {
  return google_protobuf_FileDescriptorProto_name(ni->files[i]);
}

static size_t name_hash(upb_StringView v) {
  uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
  for (size_t i = 0; i < v.size; i++) {
    h ^= (uint8_t)v.data[i];
    h *= 0x100000001b3ull;
  }
  return (size_t)(h ^ (h >> 32));
}

/* The index of the file named `v`, or -1. */
static int32_t name_find(const name_index* ni, upb_StringView v) {
  for (size_t i = name_hash(v) & (ni->cap - 1);; i = (i + 1) & (ni->cap - 1)) {
    int32_t f = ni->slots[i];
    if (f < 0 || view_eq(file_name(ni, (size_t)f), v)) return f;
  }
}

/* Indexes every file name; a name given twice is an error naming the
 * duplicated file that comes first in the set. */
static bool name_index_build(name_index* ni, ctx_Status* status) {
  ni->cap = 16;
  while (ni->cap < 2 * ni->n) ni->cap *= 2;
  ni->slots = ctx_malloc(ni->cap * sizeof(*ni->slots));
  if (!ni->slots) {
    ctx_Status_Set(status, kCtx_NoMemory, "out of memory");
    return false;
  }
  memset(ni->slots, 0xff, ni->cap * sizeof(*ni->slots));
  int32_t dup = -1;
  for (size_t i = 0; i < ni->n; i++) {
    upb_StringView v = file_name(ni, i);
    size_t j = name_hash(v) & (ni->cap - 1);
    for (; ni->slots[j] >= 0; j = (j + 1) & (ni->cap - 1)) {
      if (view_eq(file_name(ni, (size_t)ni->slots[j]), v)) break;
    }
    if (ni->slots[j] < 0) {
      ni->slots[j] = (int32_t)i;
    } else if (dup < 0 || ni->slots[j] < dup) {
      dup = ni->slots[j];
    }
  }
  if (dup >= 0) {
    upb_StringView v = file_name(ni, (size_t)dup);
    ctx_Status_Set(status, kCtx_Schema,
                   "bad descriptor set: file '" NAME_FMT "' appears twice", NAME_ARG(v));
    return false;
  }
  return true;
}

/* Adds every file of the set to `pool`, each after the files it imports, in
 * time linear in the files and imports: Kahn's algorithm over the import
 * graph (no recursion). */
static bool add_files(upb_DefPool* pool,
                      const google_protobuf_FileDescriptorProto* const* files,
                      size_t n, ctx_Status* status) {
  name_index ni = {files, n, NULL, 0};
  size_t* first = NULL;   /* CSR: dependents of file i are users[first[i]..first[i+1]) */
  int32_t* users = NULL;
  int32_t* pending = NULL; /* imports not loaded yet, per file */
  int32_t* queue = NULL;
  bool ok = false;
  if (n > INT32_MAX / 2) {
    ctx_Status_Set(status, kCtx_Schema, "bad descriptor set: too many files");
    return false;
  }
  if (!name_index_build(&ni, status)) goto done;

  /* Every import must be in the set; name the first one that is not. */
  size_t nedges = 0;
  for (size_t i = 0; i < n; i++) {
    size_t ndeps;
    const upb_StringView* deps = google_protobuf_FileDescriptorProto_dependency(files[i], &ndeps);
    for (size_t d = 0; d < ndeps; d++) {
      if (name_find(&ni, deps[d]) < 0) {
        upb_StringView name = file_name(&ni, i);
        ctx_Status_Set(status, kCtx_Schema,
                       "bad descriptor set: missing import '" NAME_FMT
                       "' needed by '" NAME_FMT "'",
                       NAME_ARG(deps[d]), NAME_ARG(name));
        goto done;
      }
    }
    nedges += ndeps;
  }
  first = ctx_calloc(n + 1, sizeof(*first));
  users = ctx_malloc((nedges ? nedges : 1) * sizeof(*users));
  pending = ctx_calloc(n, sizeof(*pending));
  queue = ctx_malloc(n * sizeof(*queue));
  if (!first || !users || !pending || !queue) goto oom;
  for (size_t i = 0; i < n; i++) {
    size_t ndeps;
    const upb_StringView* deps = google_protobuf_FileDescriptorProto_dependency(files[i], &ndeps);
    pending[i] = (int32_t)ndeps;
    for (size_t d = 0; d < ndeps; d++) first[name_find(&ni, deps[d]) + 1]++;
  }
  for (size_t i = 0; i < n; i++) first[i + 1] += first[i];
  {
    size_t* fill = ctx_malloc((n ? n : 1) * sizeof(*fill));
    if (!fill) goto oom;
    memcpy(fill, first, n * sizeof(*fill));
    for (size_t i = 0; i < n; i++) {
      size_t ndeps;
      const upb_StringView* deps =
          google_protobuf_FileDescriptorProto_dependency(files[i], &ndeps);
      for (size_t d = 0; d < ndeps; d++) users[fill[name_find(&ni, deps[d])]++] = (int32_t)i;
    }
    ctx_free(fill);
  }

  size_t head = 0, tail = 0;
  for (size_t i = 0; i < n; i++) {
    if (!pending[i]) queue[tail++] = (int32_t)i;
  }
  upb_Status us;
  while (head < tail) {
    size_t i = (size_t)queue[head++];
    upb_Status_Clear(&us);
    if (!upb_DefPool_AddFile(pool, files[i], &us)) {
      upb_StringView name = file_name(&ni, i);
      ctx_Status_Set(status, kCtx_Schema, "bad descriptor set: file '" NAME_FMT "': %s",
                     NAME_ARG(name), upb_Status_ErrorMessage(&us));
      goto done;
    }
    for (size_t u = first[i]; u < first[i + 1]; u++) {
      if (--pending[users[u]] == 0) queue[tail++] = users[u];
    }
  }
  if (tail < n) {
    /* Every file left waits for another file left: following unloaded imports
     * from any of them enters a cycle within n steps. */
    size_t at = 0;
    while (!pending[at]) at++;
    for (size_t step = 0; step < n; step++) {
      size_t ndeps;
      const upb_StringView* deps =
          google_protobuf_FileDescriptorProto_dependency(files[at], &ndeps);
      for (size_t d = 0; d < ndeps; d++) {
        int32_t j = name_find(&ni, deps[d]);
        if (pending[j]) {
          at = (size_t)j;
          break;
        }
      }
    }
    upb_StringView name = file_name(&ni, at);
    ctx_Status_Set(status, kCtx_Schema,
                   "bad descriptor set: import cycle through '" NAME_FMT "'", NAME_ARG(name));
    goto done;
  }
  ok = true;
  goto done;
oom:
  ctx_Status_Set(status, kCtx_NoMemory, "out of memory");
done:
  ctx_free(ni.slots);
  ctx_free(first);
  ctx_free(users);
  ctx_free(pending);
  ctx_free(queue);
  return ok;
}

#define CTX_DENSE_MAX 256

/* ---- a small hash index: (pointer, pointer) -> int, so that schemas with many
 * message types compile in linear time ---------------------------------------- */

typedef struct {
  const void* a;
  const void* b;
  int value;
} idx_slot;

typedef struct {
  idx_slot* slots; /* a == NULL: empty */
  size_t cap, len;
} ptr_index;

static size_t idx_hash(const void* a, const void* b) {
  uint64_t x = (uint64_t)(uintptr_t)a * 0x9E3779B97F4A7C15ull;
  x ^= (uint64_t)(uintptr_t)b * 0xC2B2AE3D27D4EB4Full;
  return (size_t)(x ^ (x >> 31));
}

static int idx_get(const ptr_index* ix, const void* a, const void* b) {
  if (!ix->cap) return -1;
  for (size_t i = idx_hash(a, b) & (ix->cap - 1);; i = (i + 1) & (ix->cap - 1)) {
    const idx_slot* sl = &ix->slots[i];
    if (!sl->a) return -1;
    if (sl->a == a && sl->b == b) return sl->value;
  }
}

static bool idx_put(ptr_index* ix, const void* a, const void* b, int value) {
  if (2 * (ix->len + 1) > ix->cap) {
    size_t cap = ix->cap ? ix->cap * 2 : 64;
    idx_slot* slots = ctx_calloc(cap, sizeof(*slots));
    if (!slots) return false;
    for (size_t i = 0; i < ix->cap; i++) {
      const idx_slot* sl = &ix->slots[i];
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
  ix->slots[j] = (idx_slot){a, b, value};
  ix->len++;
  return true;
}

static int wire_type_of(const upb_FieldDef* f) {
  switch (upb_FieldDef_Type(f)) {
    case kUpb_FieldType_Double:
    case kUpb_FieldType_Fixed64:
    case kUpb_FieldType_SFixed64:
      return 1;
    case kUpb_FieldType_Float:
    case kUpb_FieldType_Fixed32:
    case kUpb_FieldType_SFixed32:
      return 5;
    case kUpb_FieldType_String:
    case kUpb_FieldType_Bytes:
    case kUpb_FieldType_Message:
      return 2;
    case kUpb_FieldType_Group:
      return 3;
    default:
      return 0;
  }
}

static int cmp_field_plans(const void* a, const void* b) {
  uint32_t x = ((const ctx_FieldPlan*)a)->number, y = ((const ctx_FieldPlan*)b)->number;
  return x < y ? -1 : x > y;
}

static void free_plans(ctx_Schema* s) {
  for (int i = 0; i < s->nplans; i++) {
    ctx_free(s->plans[i].fields);
    ctx_free(s->plans[i].dense);
    ctx_free(s->plans[i].required);
  }
  ctx_free(s->plans);
  ctx_free(s->plan_defs);
}

/* Index of `m` in the schema's message list, appending it when new. */
static int plan_index(ctx_Schema* s, ptr_index* ix, const upb_MessageDef* m, int* cap) {
  int known = idx_get(ix, m, NULL);
  if (known >= 0) return known;
  if (!idx_put(ix, m, NULL, s->nplans)) return -1;
  if (s->nplans == *cap) {
    int ncap = *cap ? *cap * 2 : 8;
    const upb_MessageDef** defs = ctx_realloc(s->plan_defs, (size_t)ncap * sizeof(*defs));
    if (!defs) return -1;
    s->plan_defs = defs;
    ctx_MsgPlan* plans = ctx_realloc(s->plans, (size_t)ncap * sizeof(*plans));
    if (!plans) return -1;
    s->plans = plans;
    *cap = ncap;
  }
  s->plan_defs[s->nplans] = m;
  memset(&s->plans[s->nplans], 0, sizeof(ctx_MsgPlan));
  return s->nplans++;
}

static bool build_plans_with(ctx_Schema* s, ptr_index* ix, int* capp);

/* Builds the walk's plans for every message reachable from the root, breadth
 * first, and notes whether any of them has a required field. */
static bool build_plans(ctx_Schema* s) {
  int cap = 0;
  ptr_index ix = {0};
  bool ok = build_plans_with(s, &ix, &cap);
  ctx_free(ix.slots);
  return ok;
}

static bool build_plans_with(ctx_Schema* s, ptr_index* ix, int* capp) {
  int cap = *capp; /* capacity of s->plans / s->plan_defs */
  if (plan_index(s, ix, s->msg, &cap) < 0) return false;
  for (int i = 0; i < s->nplans; i++) {
    const upb_MessageDef* m = s->plan_defs[i];
    int n = upb_MessageDef_FieldCount(m);
    ctx_FieldPlan* fields = ctx_calloc(n ? (size_t)n : 1, sizeof(*fields));
    if (!fields) return false;
    s->plans[i].fields = fields;
    s->plans[i].nfields = n;
    uint32_t max_number = 0;
    for (int j = 0; j < n; j++) {
      const upb_FieldDef* f = upb_MessageDef_Field(m, j);
      ctx_FieldPlan* fp = &fields[j];
      fp->def = f;
      fp->number = upb_FieldDef_Number(f);
      fp->wire_type = (uint8_t)wire_type_of(f);
      fp->sub = -1;
      if (fp->number > max_number) max_number = fp->number;
      if (upb_FieldDef_IsRequired(f)) s->has_required = true;
      switch (upb_FieldDef_CType(f)) {
        case kUpb_CType_String: fp->kind = kCtx_Kind_String; break;
        case kUpb_CType_Bytes: fp->kind = kCtx_Kind_Bytes; break;
        case kUpb_CType_Message:
          fp->kind = fp->wire_type == 3 ? kCtx_Kind_Group : kCtx_Kind_Message;
          break;
        default: fp->kind = kCtx_Kind_Scalar; break;
      }
      if (upb_FieldDef_CType(f) == kUpb_CType_Enum &&
          upb_EnumDef_IsClosed(upb_FieldDef_EnumSubDef(f))) {
        fp->closed_enum = upb_FieldDef_EnumSubDef(f);
      }
      fp->repeated = upb_FieldDef_IsRepeated(f);
      fp->req = -1;
      fp->packable = fp->repeated && fp->kind == kCtx_Kind_Scalar;
      if (fp->kind == kCtx_Kind_Message || fp->kind == kCtx_Kind_Group) {
        /* plan_index may move s->plans: keep no pointer into it across. */
        int sub = plan_index(s, ix, upb_FieldDef_MessageSubDef(f), &cap);
        if (sub < 0) return false;
        s->plans[i].fields[j].sub = sub;
      }
    }
    ctx_MsgPlan* mp = &s->plans[i];
    qsort(mp->fields, (size_t)n, sizeof(*mp->fields), cmp_field_plans);
    mp->dense_len = max_number + 1 < CTX_DENSE_MAX ? max_number + 1 : CTX_DENSE_MAX;
    mp->dense = ctx_malloc(mp->dense_len * sizeof(*mp->dense));
    if (!mp->dense) return false;
    for (uint32_t k = 0; k < mp->dense_len; k++) mp->dense[k] = -1;
    for (int j = 0; j < n; j++) {
      if (mp->fields[j].number < mp->dense_len) mp->dense[mp->fields[j].number] = (int16_t)j;
      if (upb_FieldDef_IsRequired(mp->fields[j].def)) mp->fields[j].req = mp->nrequired++;
    }
    if (mp->nrequired > 64) return false; /* upb refuses more than 63 */
    if (mp->nrequired) {
      mp->required = ctx_calloc((size_t)mp->nrequired, sizeof(*mp->required));
      if (!mp->required) return false;
      for (int j = 0; j < n; j++) {
        if (mp->fields[j].req >= 0) mp->required[mp->fields[j].req] = &mp->fields[j];
      }
    }
  }
  return true;
}

ctx_Schema* ctx_Schema_Build(const char* fds, size_t fds_len, const char* type,
                             size_t type_len, const char* vfield,
                             size_t vfield_len, size_t max_schema_bytes,
                             ctx_Status* status) {
  ctx_Status_Clear(status);
  if (fds_len > max_schema_bytes) {
    ctx_Status_Set(status, kCtx_Schema,
                   "bad descriptor set: %zu bytes, the limit is %zu", fds_len,
                   max_schema_bytes);
    return NULL;
  }
  ctx_EnsureUpbHooks();
  size_t live_before = ctx_AllocatedBytes();
  if (!vfield) {
    vfield = "version";
    vfield_len = 7;
  }
  ctx_Schema* s = ctx_calloc(1, sizeof(*s));
  if (!s) goto oom;
  s->arena = upb_Arena_New();
  s->pool = upb_DefPool_New();
  if (!s->arena || !s->pool) goto oom;

  google_protobuf_FileDescriptorSet* set =
      google_protobuf_FileDescriptorSet_parse(fds, fds_len, s->arena);
  if (!set) {
    ctx_Status_Set(status, kCtx_Schema,
                   "bad descriptor set: not a serialized FileDescriptorSet");
    goto fail;
  }
  size_t n;
  const google_protobuf_FileDescriptorProto* const* files =
      google_protobuf_FileDescriptorSet_file(set, &n);
  if (n == 0) {
    ctx_Status_Set(status, kCtx_Schema, "bad descriptor set: it holds no file");
    goto fail;
  }
  if (!add_files(s->pool, files, n, status)) goto fail;

  upb_StringView tv = {type, type_len};
  s->msg = upb_DefPool_FindMessageByNameWithSize(s->pool, type, type_len);
  if (!s->msg) {
    ctx_Status_Set(status, kCtx_Schema,
                   "message type '" NAME_FMT "' is not in the descriptor set",
                   NAME_ARG(tv));
    goto fail;
  }
  upb_StringView vv = {vfield, vfield_len};
  s->vfield = upb_MessageDef_FindFieldByNameWithSize(s->msg, vfield, vfield_len);
  if (!s->vfield) {
    /* Names cut so that the fix stays in the message: its fixed text is 147 bytes, which leaves
     * 108 of CTX_STATUS_MSG_MAX - 1 for the type (at most 56) and the field, quoted twice (at
     * most 26 each). */
    int vl = (int)(vv.size > 26 ? 26 : vv.size);
    ctx_Status_Set(status, kCtx_Schema,
                   "message '%.56s' has no top-level field '%.*s' to hold the context "
                   "version: add an integer field '%.*s' or name one with VERSIONFIELD "
                   "(version_field= in the SDK)",
                   upb_MessageDef_FullName(s->msg), vl, vv.data, vl, vv.data);
    goto fail;
  }
  if (upb_FieldDef_IsRepeated(s->vfield) ||
      !is_integer_ctype(upb_FieldDef_CType(s->vfield))) {
    ctx_Status_Set(status, kCtx_Schema,
                   "version field '%s' of '%s' must be a singular integer field",
                   upb_FieldDef_Name(s->vfield), upb_MessageDef_FullName(s->msg));
    goto fail;
  }
  if (!build_plans(s)) goto oom;
  {
    size_t live_after = ctx_AllocatedBytes();
    s->memory_bytes = live_after > live_before ? live_after - live_before : 0;
  }
  return s;

oom:
  ctx_Status_Set(status, kCtx_NoMemory, "out of memory");
fail:
  ctx_Schema_Free(s);
  return NULL;
}

void ctx_Schema_Free(ctx_Schema* s) {
  if (!s) return;
  free_plans(s);
  if (s->pool) upb_DefPool_Free(s->pool);
  if (s->arena) upb_Arena_Free(s->arena);
  ctx_free(s);
}

const char* ctx_Schema_TypeName(const ctx_Schema* s) {
  return upb_MessageDef_FullName(s->msg);
}

const char* ctx_Schema_VersionField(const ctx_Schema* s) {
  return upb_FieldDef_Name(s->vfield);
}

size_t ctx_Schema_MemoryBytes(const ctx_Schema* s) { return s->memory_bytes; }

const upb_MessageDef* ctx_Schema_MessageDef(const ctx_Schema* s) { return s->msg; }
const upb_FieldDef* ctx_Schema_VersionFieldDef(const ctx_Schema* s) {
  return s->vfield;
}
bool ctx_Schema_HasRequired(const ctx_Schema* s) { return s->has_required; }
const ctx_MsgPlan* ctx_Schema_Plans(const ctx_Schema* s) { return s->plans; }

/* ---- compatibility --------------------------------------------------------- */

typedef enum {
  kWire_Varint,
  kWire_ZigZag,
  kWire_Fixed32,
  kWire_Fixed64,
  kWire_Bytes,
  kWire_Message,
  kWire_Group,
} wire_class;

static wire_class field_class(const upb_FieldDef* f) {
  switch (upb_FieldDef_Type(f)) {
    case kUpb_FieldType_Int32:
    case kUpb_FieldType_Int64:
    case kUpb_FieldType_UInt32:
    case kUpb_FieldType_UInt64:
    case kUpb_FieldType_Bool:
    case kUpb_FieldType_Enum:
      return kWire_Varint;
    case kUpb_FieldType_SInt32:
    case kUpb_FieldType_SInt64:
      return kWire_ZigZag;
    case kUpb_FieldType_Fixed32:
    case kUpb_FieldType_SFixed32:
    case kUpb_FieldType_Float:
      return kWire_Fixed32;
    case kUpb_FieldType_Fixed64:
    case kUpb_FieldType_SFixed64:
    case kUpb_FieldType_Double:
      return kWire_Fixed64;
    case kUpb_FieldType_String:
    case kUpb_FieldType_Bytes:
      return kWire_Bytes;
    case kUpb_FieldType_Message:
      return kWire_Message;
    case kUpb_FieldType_Group:
      return kWire_Group;
  }
  return kWire_Bytes;
}

/* How a field is written, for messages: "varint", "repeated bytes", ... */
static const char* class_name(wire_class c) {
  switch (c) {
    case kWire_Varint: return "varint";
    case kWire_ZigZag: return "zigzag";
    case kWire_Fixed32: return "fixed32";
    case kWire_Fixed64: return "fixed64";
    case kWire_Bytes: return "bytes";
    case kWire_Message: return "message";
    case kWire_Group: return "group";
  }
  return "?";
}

typedef struct {
  const upb_MessageDef* prev;
  const upb_MessageDef* next;
} msg_pair;

typedef struct {
  msg_pair* items;
  size_t len, cap;
} pair_list;

static bool pairs_push(pair_list* l, ptr_index* seen, const upb_MessageDef* a,
                       const upb_MessageDef* b) {
  if (idx_get(seen, a, b) >= 0) return true;
  if (!idx_put(seen, a, b, 0)) return false;
  if (l->len == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 16;
    msg_pair* items = ctx_realloc(l->items, cap * sizeof(*items));
    if (!items) return false;
    l->items = items;
    l->cap = cap;
  }
  l->items[l->len++] = (msg_pair){a, b};
  return true;
}

/* ---- compatibility categories -------------------------------------------- */

bool ctx_Compat_Parse(const char* s, size_t len, ctx_Compat* out) {
  static const struct {
    const char* name;
    ctx_Compat mode;
  } names[] = {{"WIRE_JSON", kCtx_Compat_WireJson}, {"WIRE", kCtx_Compat_Wire}};
  for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
    size_t n = strlen(names[i].name);
    if (len != n) continue;
    size_t j = 0;
    while (j < n && (s[j] == names[i].name[j] ||
                     (s[j] >= 'a' && s[j] <= 'z' && s[j] - 'a' + 'A' == names[i].name[j]))) {
      j++;
    }
    if (j == n) {
      *out = names[i].mode;
      return true;
    }
  }
  return false;
}

const char* ctx_Compat_Name(ctx_Compat mode) {
  return mode == kCtx_Compat_Wire ? "WIRE" : "WIRE_JSON";
}

/* How a field's value is written in the JSON form: a reader of one kind
 * cannot parse the other (bytes are base64, enums are value names, bool is
 * true/false, floating point may be "NaN"). */
typedef enum {
  kJson_Integer,
  kJson_Float,
  kJson_Bool,
  kJson_Enum,
  kJson_String,
  kJson_Bytes,
  kJson_Message,
} json_kind;

static json_kind field_json_kind(const upb_FieldDef* f) {
  switch (upb_FieldDef_CType(f)) {
    case kUpb_CType_Float:
    case kUpb_CType_Double: return kJson_Float;
    case kUpb_CType_Bool: return kJson_Bool;
    case kUpb_CType_Enum: return kJson_Enum;
    case kUpb_CType_String: return kJson_String;
    case kUpb_CType_Bytes: return kJson_Bytes;
    case kUpb_CType_Message: return kJson_Message;
    default: return kJson_Integer;
  }
}

static const char* json_kind_name(json_kind k) {
  switch (k) {
    case kJson_Integer: return "integer";
    case kJson_Float: return "floating point";
    case kJson_Bool: return "bool";
    case kJson_Enum: return "enum";
    case kJson_String: return "string";
    case kJson_Bytes: return "bytes, base64 in JSON";
    case kJson_Message: return "message";
  }
  return "?";
}

/* Sets "incompatible schema (<category>, <rule>): <body> (use FORCE to
 * override[, or COMPAT WIRE])". The body is cut so that the whole message,
 * its fix included, fits the status. */
static void set_incompatible(ctx_Status* status, ctx_Compat category, const char* rule,
                             const char* fmt, ...) __attribute__((format(printf, 4, 5)));

static void set_incompatible(ctx_Status* status, ctx_Compat category, const char* rule,
                             const char* fmt, ...) {
  char body[CTX_STATUS_MSG_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(body, sizeof(body), fmt, ap);
  va_end(ap);
  const char* fix = category == kCtx_Compat_WireJson
                        ? " (use FORCE to override, or COMPAT WIRE)"
                        : " (use FORCE to override)";
  char head[96];
  int hl = snprintf(head, sizeof(head), "incompatible schema (%s, %s): ",
                    ctx_Compat_Name(category), rule);
  int room = CTX_STATUS_MSG_MAX - 1 - hl - (int)strlen(fix);
  ctx_Status_Set(status, kCtx_Schema, "%s%.*s%s", head, room < 0 ? 0 : room, body, fix);
}

/* Names from descriptors, cut so that two of them and the rest of a message fit. */
#define SHORT_FMT "%.64s"

/* Rules of the WIRE category on one field number kept by both revisions. */
static bool check_kept_wire(const upb_MessageDef* a, const upb_FieldDef* fa,
                            const upb_FieldDef* fb, ctx_Status* status) {
  bool ra = upb_FieldDef_IsRepeated(fa), rb = upb_FieldDef_IsRepeated(fb);
  if (field_class(fa) != field_class(fb) || ra != rb) {
    set_incompatible(status, kCtx_Compat_Wire,
                     field_class(fa) != field_class(fb) ? "FIELD_WIRE_COMPATIBLE_TYPE"
                                                        : "FIELD_WIRE_COMPATIBLE_CARDINALITY",
                     "field %u of '" SHORT_FMT "' changes from '" SHORT_FMT "' (%s%s) to '"
                     SHORT_FMT "' (%s%s)",
                     (unsigned)upb_FieldDef_Number(fa), upb_MessageDef_FullName(a),
                     upb_FieldDef_Name(fa), ra ? "repeated " : "", class_name(field_class(fa)),
                     upb_FieldDef_Name(fb), rb ? "repeated " : "",
                     class_name(field_class(fb)));
    return false;
  }
  bool qa = upb_FieldDef_IsRequired(fa), qb = upb_FieldDef_IsRequired(fb);
  if (qa != qb) {
    set_incompatible(status, kCtx_Compat_Wire, "FIELD_SAME_REQUIRED",
                     "field '" SHORT_FMT "' (%u) of '" SHORT_FMT "' changes from %s to %s",
                     upb_FieldDef_Name(fb), (unsigned)upb_FieldDef_Number(fa),
                     upb_MessageDef_FullName(a), qa ? "required" : "optional",
                     qb ? "required" : "optional");
    return false;
  }
  return true;
}

/* Rules of the WIRE_JSON category (beyond WIRE) on a kept field number. */
static bool check_kept_json(const upb_MessageDef* a, const upb_FieldDef* fa,
                            const upb_FieldDef* fb, ctx_Status* status) {
  const char* na = upb_FieldDef_Name(fa);
  const char* nb = upb_FieldDef_Name(fb);
  unsigned number = (unsigned)upb_FieldDef_Number(fa);
  if (strcmp(na, nb) != 0) {
    set_incompatible(status, kCtx_Compat_WireJson, "FIELD_SAME_NAME",
                     "field %u of '" SHORT_FMT "' is renamed from '" SHORT_FMT "' to '"
                     SHORT_FMT "'",
                     number, upb_MessageDef_FullName(a), na, nb);
    return false;
  }
  const char* ja = upb_FieldDef_JsonName(fa);
  const char* jb = upb_FieldDef_JsonName(fb);
  if (strcmp(ja, jb) != 0) {
    set_incompatible(status, kCtx_Compat_WireJson, "FIELD_SAME_JSON_NAME",
                     "field '" SHORT_FMT "' (%u) of '" SHORT_FMT "' changes its JSON name from '"
                     SHORT_FMT "' to '" SHORT_FMT "'",
                     na, number, upb_MessageDef_FullName(a), ja, jb);
    return false;
  }
  json_kind ka = field_json_kind(fa), kb = field_json_kind(fb);
  if (ka != kb) {
    set_incompatible(status, kCtx_Compat_WireJson, "FIELD_WIRE_JSON_COMPATIBLE_TYPE",
                     "field '" SHORT_FMT "' (%u) of '" SHORT_FMT "' changes from %s to %s",
                     na, number, upb_MessageDef_FullName(a), json_kind_name(ka),
                     json_kind_name(kb));
    return false;
  }
  return true;
}

/* ENUM_VALUE_SAME_NAME: every value number the previous enum names keeps that
 * name in the next one, if the next one still has the number (JSON writes
 * enum values by name). */
static bool check_enum_json(const upb_EnumDef* a, const upb_EnumDef* b, ctx_Status* status) {
  int n = upb_EnumDef_ValueCount(a);
  for (int i = 0; i < n; i++) {
    const upb_EnumValueDef* va = upb_EnumDef_Value(a, i);
    int32_t number = upb_EnumValueDef_Number(va);
    const upb_EnumValueDef* vb = upb_EnumDef_FindValueByNumber(b, number);
    if (!vb) continue;
    const upb_EnumValueDef* same = upb_EnumDef_FindValueByName(b, upb_EnumValueDef_Name(va));
    if (same && upb_EnumValueDef_Number(same) == number) continue;
    set_incompatible(status, kCtx_Compat_WireJson, "ENUM_VALUE_SAME_NAME",
                     "value %d of enum '" SHORT_FMT "' is renamed from '" SHORT_FMT "' to '"
                     SHORT_FMT "'",
                     (int)number, upb_EnumDef_FullName(a), upb_EnumValueDef_Name(va),
                     upb_EnumValueDef_Name(vb));
    return false;
  }
  return true;
}

/* Required fields of `b` that `a` does not have under their number. */
static bool check_new_required(const upb_MessageDef* a, const upb_MessageDef* b,
                               ctx_Status* status) {
  int nb = upb_MessageDef_FieldCount(b);
  for (int i = 0; i < nb; i++) {
    const upb_FieldDef* fb = upb_MessageDef_Field(b, i);
    if (!upb_FieldDef_IsRequired(fb)) continue;
    if (upb_MessageDef_FindFieldByNumber(a, upb_FieldDef_Number(fb))) continue;
    set_incompatible(status, kCtx_Compat_Wire, "FIELD_REQUIRED_NO_ADD",
                     "new required field '" SHORT_FMT "' (%u) in '" SHORT_FMT "'",
                     upb_FieldDef_Name(fb), (unsigned)upb_FieldDef_Number(fb),
                     upb_MessageDef_FullName(b));
    return false;
  }
  return true;
}

bool ctx_Schema_CheckCompatible(const ctx_Schema* prev, const ctx_Schema* next,
                                ctx_Compat mode, ctx_Status* status) {
  ctx_Status_Clear(status);
  bool json = mode == kCtx_Compat_WireJson;
  pair_list work = {0};
  ptr_index seen = {0};      /* message pairs queued */
  ptr_index enums_seen = {0}; /* enum pairs checked */
  bool ok = false;
  if (!pairs_push(&work, &seen, prev->msg, next->msg)) goto oom;
  /* `work` only grows; every pair is visited once (recursive types end). */
  for (size_t w = 0; w < work.len; w++) {
    const upb_MessageDef* a = work.items[w].prev;
    const upb_MessageDef* b = work.items[w].next;
    int na = upb_MessageDef_FieldCount(a);
    for (int i = 0; i < na; i++) {
      const upb_FieldDef* fa = upb_MessageDef_Field(a, i);
      const upb_FieldDef* fb =
          upb_MessageDef_FindFieldByNumber(b, upb_FieldDef_Number(fa));
      if (!fb) {
        if (upb_FieldDef_IsRequired(fa)) {
          set_incompatible(status, kCtx_Compat_Wire, "FIELD_REQUIRED_NO_DELETE",
                           "required field '" SHORT_FMT "' (%u) of '" SHORT_FMT
                           "' was removed",
                           upb_FieldDef_Name(fa), (unsigned)upb_FieldDef_Number(fa),
                           upb_MessageDef_FullName(a));
          goto done;
        }
        continue;
      }
      if (!check_kept_wire(a, fa, fb, status)) goto done;
      if (json && !check_kept_json(a, fa, fb, status)) goto done;
      if (upb_FieldDef_IsSubMessage(fa) &&
          !pairs_push(&work, &seen, upb_FieldDef_MessageSubDef(fa),
                      upb_FieldDef_MessageSubDef(fb))) {
        goto oom;
      }
      if (json && upb_FieldDef_CType(fa) == kUpb_CType_Enum) {
        const upb_EnumDef* ea = upb_FieldDef_EnumSubDef(fa);
        const upb_EnumDef* eb = upb_FieldDef_EnumSubDef(fb);
        if (idx_get(&enums_seen, ea, eb) < 0) {
          if (!idx_put(&enums_seen, ea, eb, 0)) goto oom;
          if (!check_enum_json(ea, eb, status)) goto done;
        }
      }
    }
    if (!check_new_required(a, b, status)) goto done;
  }
  ok = true;
  goto done;
oom:
  ctx_Status_Set(status, kCtx_NoMemory, "out of memory");
done:
  ctx_free(work.items);
  ctx_free(seen.slots);
  ctx_free(enums_seen.slots);
  return ok;
}

bool ctx_Schema_CheckChange(const ctx_Schema* prev, const ctx_Schema* next,
                            ctx_Compat mode, bool force, ctx_Status* status) {
  ctx_Status_Clear(status);
  if (force) return true;
  if (!prev) {
    ctx_Status_Set(status, kCtx_Schema,
                   "the registered revision cannot be read; use FORCE to replace it");
    return false;
  }
  return ctx_Schema_CheckCompatible(prev, next, mode, status);
}

/* ---- schema names ---------------------------------------------------------- */

bool ctx_SchemaName_Check(const char* name, size_t len, ctx_Status* status) {
  bool ok = len >= 1 && len <= CTX_SCHEMA_NAME_MAX;
  for (size_t i = 0; ok && i < len; i++) {
    char c = name[i];
    ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         c == '_' || c == '.' || c == '-' || c == ':';
  }
  if (!ok && status) ctx_Status_Set(status, kCtx_Schema, "%s", CTX_BAD_NAME_MSG);
  return ok;
}
