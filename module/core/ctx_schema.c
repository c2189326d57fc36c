/* ctx_schema.c - building schemas from descriptor sets (and the walk plans
 * ctx_validate.c and ctx_luaplan.c use), the status helpers and the
 * schema-name rule. The compatibility rules between two revisions are in
 * ctx_compat.c. */
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
static int plan_index(ctx_Schema* s, ctx_PtrIndex* ix, const upb_MessageDef* m, int* cap) {
  int known = ctx_PtrIndex_Get(ix, m, NULL);
  if (known >= 0) return known;
  if (!ctx_PtrIndex_Put(ix, m, NULL, s->nplans)) return -1;
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

static bool build_plans_with(ctx_Schema* s, ctx_PtrIndex* ix, int* capp);

/* Builds the walk's plans for every message reachable from the root, breadth
 * first, and notes whether any of them has a required field. */
static bool build_plans(ctx_Schema* s) {
  int cap = 0;
  ctx_PtrIndex ix = {0};
  bool ok = build_plans_with(s, &ix, &cap);
  ctx_free(ix.slots);
  return ok;
}

static bool build_plans_with(ctx_Schema* s, ctx_PtrIndex* ix, int* capp) {
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
