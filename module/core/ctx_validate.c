/* ctx_validate.c - checking one payload against a schema.
 *
 * Two passes, both bounded by the payload:
 *   1. a wire walk driven by the upb message definition: structure, wire
 *      types, unknown fields, UTF-8, closed enums and depth, with the exact
 *      field path in every error (upb's decoder accepts unknown fields and
 *      keeps wrongly typed known fields as unknown data, so this policy must be
 *      enforced here); it also reads the version field;
 *   2. for schemas with proto2 required fields (at any depth), upb_Decode with
 *      required-field checks into an arena with a byte budget. Schemas without
 *      them skip the decode: it could only repeat what the walk established.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctx_core.h"
#include "ctx_internal.h"
#include "upb/mem/arena.h"
#include "upb/reflection/message.h"
#include "upb/util/required_fields.h"
#include "upb/wire/decode.h"
#include "utf8_range.h"

enum {
  kWT_Varint = 0,
  kWT_Fixed64 = 1,
  kWT_Delimited = 2,
  kWT_StartGroup = 3,
  kWT_EndGroup = 4,
  kWT_Fixed32 = 5,
};

/* One message being walked; the chain leads back to the root. */
typedef struct frame {
  const struct frame* parent;
  const upb_FieldDef* field;  /* the field in `parent` holding this message */
  const char* parent_start;   /* start of the parent message's bytes */
  const char* field_tag;      /* where that field's tag starts in the parent */
} frame;

typedef struct {
  const ctx_Limits* limits;
  ctx_Status* status;
  const ctx_MsgPlan* plans;   /* the schema's messages; [0] is the root */
  const upb_FieldDef* vfield; /* the root's version field */
  uint64_t vraw;              /* its last value on the wire (0 when absent) */
} walker;

/* ---- wire primitives --------------------------------------------------------- */

/* Reads a varint of at most 10 bytes whose value fits 64 bits. Tags and
 * lengths are further limited to 5 bytes (as upb's decoder does). */
static const char* read_varint(const char* p, const char* end, uint64_t* out) {
  uint64_t v = 0;
  for (int i = 0; i < 10; i++) {
    if (p >= end) return NULL;
    uint8_t b = (uint8_t)*p++;
    if (i == 9 && b > 1) return NULL;
    v |= (uint64_t)(b & 0x7f) << (7 * i);
    if (!(b & 0x80)) {
      *out = v;
      return p;
    }
  }
  return NULL;
}

/* Skips one value of wire type `wt` whose tag was just read (value checks only
 * for structure). Groups nest, bounded by the depth limit. */
static const char* skip_value(const char* p, const char* end, uint32_t number,
                              int wt, int depth, int max_depth) {
  uint64_t v;
  switch (wt) {
    case kWT_Varint:
      return read_varint(p, end, &v);
    case kWT_Fixed64:
      return end - p < 8 ? NULL : p + 8;
    case kWT_Fixed32:
      return end - p < 4 ? NULL : p + 4;
    case kWT_Delimited: {
      const char* len_at = p;
      p = read_varint(p, end, &v);
      if (!p || p - len_at > 5 || v > (uint64_t)(end - p)) return NULL;
      return p + v;
    }
    case kWT_StartGroup:
      if (depth + 1 > max_depth) return NULL;
      while (p < end) {
        uint64_t tag;
        const char* tag_at = p;
        p = read_varint(p, end, &tag);
        if (!p || p - tag_at > 5 || tag > UINT32_MAX || (tag >> 3) == 0) return NULL;
        int w = (int)(tag & 7);
        if (w == kWT_EndGroup) return (tag >> 3) == number ? p : NULL;
        p = skip_value(p, end, (uint32_t)(tag >> 3), w, depth + 1, max_depth);
        if (!p) return NULL;
      }
      return NULL;
    default:
      return NULL;
  }
}

/* ---- error paths --------------------------------------------------------------- */

/* How many times field `number` occurs in [start, stop), bytes already walked. */
static size_t count_occurrences(const char* start, const char* stop,
                                uint32_t number) {
  size_t n = 0;
  const char* p = start;
  while (p && p < stop) {
    uint64_t tag;
    p = read_varint(p, stop, &tag);
    if (!p) break;
    if ((tag >> 3) == number) n++;
    p = skip_value(p, stop, (uint32_t)(tag >> 3), (int)(tag & 7), 0,
                   CTX_MAX_DEPTH_LIMIT + 1);
  }
  return n;
}

static size_t append(char* buf, size_t size, size_t at, const char* s) {
  size_t len = strlen(s);
  if (at < size) {
    size_t room = size - at - 1;
    memcpy(buf + at, s, len < room ? len : room);
    buf[at + (len < room ? len : room)] = '\0';
  }
  return at + len;
}

static size_t frame_path(const frame* fr, char* buf, size_t size) {
  if (!fr || !fr->field) return 0;
  size_t at = frame_path(fr->parent, buf, size);
  if (at) at = append(buf, size, at, ".");
  at = append(buf, size, at, upb_FieldDef_Name(fr->field));
  if (upb_FieldDef_IsRepeated(fr->field)) {
    char idx[32];
    snprintf(idx, sizeof(idx), "[%zu]",
             count_occurrences(fr->parent_start, fr->field_tag,
                               upb_FieldDef_Number(fr->field)));
    at = append(buf, size, at, idx);
  }
  return at;
}

static bool fail_at(walker* w, const frame* fr, const upb_FieldDef* f,
                    uint32_t number, const char* why) {
  char path[160];
  path[0] = '\0';
  size_t at = frame_path(fr, path, sizeof(path));
  if (f) {
    if (at) at = append(path, sizeof(path), at, ".");
    append(path, sizeof(path), at, upb_FieldDef_Name(f));
    ctx_Status_Set(w->status, kCtx_Invalid, "field '%s' (%u): %s", path,
                   (unsigned)number, why);
  } else if (number) {
    ctx_Status_Set(w->status, kCtx_Invalid, "%s%sfield %u: %s", path,
                   path[0] ? ": " : "", (unsigned)number, why);
  } else {
    ctx_Status_Set(w->status, kCtx_Invalid, "%s%s%s", path[0] ? path : "",
                   path[0] ? ": " : "", why);
  }
  return false;
}

/* ---- the walk ------------------------------------------------------------------- */

static bool enum_ok(const ctx_FieldPlan* fp, uint64_t v) {
  return !fp->closed_enum || upb_EnumDef_CheckNumber(fp->closed_enum, (int32_t)v);
}

static bool walk_message(walker* w, const frame* fr, const ctx_MsgPlan* mp,
                         const char* p, const char* end, int depth,
                         uint32_t group_number, const char** group_end);

/* A packed run of scalars of field `fp`. */
static bool walk_packed(walker* w, const frame* fr, const ctx_FieldPlan* fp,
                        const char* p, const char* end) {
  const upb_FieldDef* f = fp->def;
  uint32_t number = fp->number;
  int wt = fp->wire_type;
  if (wt == kWT_Fixed32 || wt == kWT_Fixed64) {
    size_t unit = wt == kWT_Fixed32 ? 4 : 8;
    if ((size_t)(end - p) % unit) {
      return fail_at(w, fr, f, number, "packed length is not a multiple of the element size");
    }
    return true;
  }
  while (p < end) {
    uint64_t v;
    p = read_varint(p, end, &v);
    if (!p) return fail_at(w, fr, f, number, "malformed varint in packed field");
    if (!enum_ok(fp, v)) {
      return fail_at(w, fr, f, number, "value is not in the enum");
    }
  }
  return true;
}

static bool walk_message(walker* w, const frame* fr, const ctx_MsgPlan* mp,
                         const char* p, const char* end, int depth,
                         uint32_t group_number, const char** group_end) {
  const char* start = p;
  char why[96];
  while (p < end) {
    const char* tag_at = p;
    uint64_t tag;
    p = read_varint(p, end, &tag);
    if (!p || p - tag_at > 5) return fail_at(w, fr, NULL, 0, "malformed tag");
    if (tag > UINT32_MAX) return fail_at(w, fr, NULL, 0, "tag out of range");
    uint32_t number = (uint32_t)(tag >> 3);
    int wt = (int)(tag & 7);
    if (number == 0) return fail_at(w, fr, NULL, 0, "field number 0");
    if (wt == kWT_EndGroup) {
      if (group_number && number == group_number) {
        *group_end = p;
        return true;
      }
      return fail_at(w, fr, NULL, number, "unmatched end-group");
    }
    if (wt > kWT_Fixed32) return fail_at(w, fr, NULL, number, "invalid wire type");

    const ctx_FieldPlan* fp = ctx_MsgPlan_Find(mp, number);
    if (!fp) {
      if (!w->limits->allow_unknown) {
        return fail_at(w, fr, NULL, number, "unknown field");
      }
      p = skip_value(p, end, number, wt, depth, w->limits->max_depth);
      if (!p) return fail_at(w, fr, NULL, number, "malformed value");
      continue;
    }

    const upb_FieldDef* f = fp->def;
    int want = fp->wire_type;
    bool packed = wt == kWT_Delimited && fp->packable;
    if (wt != want && !packed) {
      snprintf(why, sizeof(why), "wire type %d, expected %d", wt, want);
      return fail_at(w, fr, f, number, why);
    }

    uint64_t v;
    switch (wt) {
      case kWT_Varint:
        p = read_varint(p, end, &v);
        if (!p) return fail_at(w, fr, f, number, "malformed varint");
        if (!enum_ok(fp, v)) {
          return fail_at(w, fr, f, number, "value is not in the enum");
        }
        if (f == w->vfield && depth == 0) w->vraw = v;
        break;
      case kWT_Fixed64:
      case kWT_Fixed32: {
        size_t unit = wt == kWT_Fixed32 ? 4 : 8;
        if ((size_t)(end - p) < unit) return fail_at(w, fr, f, number, "truncated");
        if (f == w->vfield && depth == 0) {
          v = 0;
          for (size_t i = 0; i < unit; i++) v |= (uint64_t)(uint8_t)p[i] << (8 * i);
          w->vraw = v;
        }
        p += unit;
        break;
      }
      case kWT_Delimited: {
        const char* len_at = p;
        p = read_varint(p, end, &v);
        if (!p || p - len_at > 5) return fail_at(w, fr, f, number, "malformed length");
        if (v > (uint64_t)(end - p)) {
          return fail_at(w, fr, f, number, "length runs past the end");
        }
        const char* vend = p + v;
        if (packed) {
          if (!walk_packed(w, fr, fp, p, vend)) return false;
        } else if (fp->kind == kCtx_Kind_String) {
          if (!utf8_range_IsValid(p, (size_t)v)) {
            return fail_at(w, fr, f, number, "invalid UTF-8");
          }
        } else if (fp->kind == kCtx_Kind_Message) {
          if (depth + 1 > w->limits->max_depth) {
            snprintf(why, sizeof(why), "nesting deeper than %d levels",
                     w->limits->max_depth);
            return fail_at(w, fr, f, number, why);
          }
          frame child = {fr, f, start, tag_at};
          if (!walk_message(w, &child, &w->plans[fp->sub], p, vend, depth + 1, 0,
                            NULL)) {
            return false;
          }
        }
        p = vend;
        break;
      }
      case kWT_StartGroup: {
        if (depth + 1 > w->limits->max_depth) {
          snprintf(why, sizeof(why), "nesting deeper than %d levels",
                   w->limits->max_depth);
          return fail_at(w, fr, f, number, why);
        }
        frame child = {fr, f, start, tag_at};
        const char* after = NULL;
        if (!walk_message(w, &child, &w->plans[fp->sub], p, end, depth + 1, number,
                          &after)) {
          return false;
        }
        p = after;
        break;
      }
    }
  }
  if (group_number) return fail_at(w, fr, NULL, group_number, "group is not closed");
  return true;
}

/* ---- decoding with a budget ------------------------------------------------------ */

/* An upb_alloc that refuses to go past a byte budget instead of aborting. */
typedef struct {
  upb_alloc alloc;
  size_t used;
  size_t budget;
} budget_alloc;

static void* budget_fn(upb_alloc* a, void* ptr, size_t oldsize, size_t size,
                       size_t* actual_size) {
  budget_alloc* b = (budget_alloc*)a;
  if (size == 0) {
    ctx_free(ptr);
    b->used -= oldsize <= b->used ? oldsize : b->used;
    return NULL;
  }
  if (size > oldsize && size - oldsize > b->budget - b->used) return NULL;
  void* q = ctx_realloc(ptr, size);
  if (!q) return NULL;
  b->used = b->used - oldsize + size;
  if (actual_size) *actual_size = size;
  return q;
}

/* The version field's value from its last wire value, converted exactly as
 * protobuf parsers do (32-bit types keep the low 32 bits; zigzag for sint). */
static bool version_from_wire(const upb_FieldDef* f, uint64_t raw,
                              ctx_PayloadVersion* out) {
  uint32_t lo = (uint32_t)raw;
  out->in_range = true;
  switch (upb_FieldDef_Type(f)) {
    case kUpb_FieldType_Int32:
    case kUpb_FieldType_SFixed32:
      out->value = (int32_t)lo;
      break;
    case kUpb_FieldType_UInt32:
    case kUpb_FieldType_Fixed32:
      out->value = lo;
      break;
    case kUpb_FieldType_SInt32:
      out->value = (int32_t)((lo >> 1) ^ (0u - (lo & 1)));
      break;
    case kUpb_FieldType_Int64:
    case kUpb_FieldType_SFixed64:
      out->value = (int64_t)raw;
      break;
    case kUpb_FieldType_SInt64:
      out->value = (int64_t)((raw >> 1) ^ (0 - (raw & 1)));
      break;
    case kUpb_FieldType_UInt64:
    case kUpb_FieldType_Fixed64:
      out->in_range = raw <= (uint64_t)INT64_MAX;
      out->value = out->in_range ? (int64_t)raw : -1;
      break;
    default:
      return false;
  }
  return true;
}

bool ctx_Validate(const ctx_Schema* schema, const char* buf, size_t len,
                  const ctx_Limits* limits, ctx_PayloadVersion* version,
                  ctx_Status* status) {
  ctx_Status_Clear(status);
  if (len > limits->max_payload_bytes) {
    ctx_Status_Set(status, kCtx_TooBig, "payload is %zu bytes, the limit is %zu",
                   len, limits->max_payload_bytes);
    return false;
  }
  const upb_MessageDef* m = ctx_Schema_MessageDef(schema);
  walker w = {limits, status, ctx_Schema_Plans(schema), ctx_Schema_VersionFieldDef(schema),
              0};
  frame root = {NULL, NULL, buf, buf};
  if (!walk_message(&w, &root, &w.plans[0], buf, buf + len, 0, 0, NULL)) return false;
  if (!version_from_wire(w.vfield, w.vraw, version)) {
    ctx_Status_Set(status, kCtx_Schema, "version field is not an integer");
    return false;
  }
  if (!ctx_Schema_HasRequired(schema)) return true;

  /* Required fields: upb decodes the payload and checks them at every depth.
   * Depth is already enforced above, so upb gets some slack rather than a
   * second, possibly different, count. */
  char first_block[4096];
  budget_alloc ba = {{budget_fn}, 0, 64 * len + (64u << 10)};
  upb_Arena* arena = upb_Arena_Init(first_block, sizeof(first_block), &ba.alloc);
  if (!arena) {
    ctx_Status_Set(status, kCtx_NoMemory, "out of memory");
    return false;
  }
  bool ok = false;
  const upb_MiniTable* mt = upb_MessageDef_MiniTable(m);
  upb_Message* msg = upb_Message_New(mt, arena);
  if (!msg) {
    ctx_Status_Set(status, kCtx_TooBig, "decoded payload exceeds the memory budget");
    goto done;
  }
  int opts = kUpb_DecodeOption_CheckRequired |
             kUpb_DecodeOption_AlwaysValidateUtf8 |
             (int)upb_DecodeOptions_MaxDepth((uint16_t)(limits->max_depth + 2));
  upb_DecodeStatus ds = upb_Decode(buf, len, msg, mt, NULL, opts, arena);
  if (ds == kUpb_DecodeStatus_MissingRequired) {
    upb_FieldPathEntry* missing = NULL;
    char path[160] = "?";
    if (upb_util_HasUnsetRequired(msg, m, NULL, &missing) && missing) {
      upb_FieldPathEntry* it = missing;
      upb_FieldPath_ToText(&it, path, sizeof(path));
    }
    ctx_free(missing);
    ctx_Status_Set(status, kCtx_Invalid, "field '%s': required field is missing",
                   path);
    goto done;
  }
  if (ds == kUpb_DecodeStatus_OutOfMemory) {
    ctx_Status_Set(status, kCtx_TooBig, "decoded payload exceeds the memory budget");
    goto done;
  }
  if (ds != kUpb_DecodeStatus_Ok) {
    ctx_Status_Set(status, kCtx_Invalid, "payload rejected by the decoder: %s",
                   upb_DecodeStatus_String(ds));
    goto done;
  }
  ok = true;
done:
  upb_Arena_Free(arena);
  return ok;
}
