/* ctx_compat.c - the compatibility rules between two revisions of a schema,
 * in categories named after buf's (WIRE, WIRE_JSON; docs/PROTOCOL.md,
 * "Compatibility categories"), and the one change decision both engines call
 * (ctx_Schema_CheckChange: the module directly, the SDK through cffi). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "ctx_core.h"
#include "ctx_internal.h"
#include "upb/reflection/def.h"

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

static bool pairs_push(pair_list* l, ctx_PtrIndex* seen, const upb_MessageDef* a,
                       const upb_MessageDef* b) {
  if (ctx_PtrIndex_Get(seen, a, b) >= 0) return true;
  if (!ctx_PtrIndex_Put(seen, a, b, 0)) return false;
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
  ctx_PtrIndex seen = {0};      /* message pairs queued */
  ctx_PtrIndex enums_seen = {0}; /* enum pairs checked */
  bool ok = false;
  if (!pairs_push(&work, &seen, ctx_Schema_MessageDef(prev), ctx_Schema_MessageDef(next))) goto oom;
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
        if (ctx_PtrIndex_Get(&enums_seen, ea, eb) < 0) {
          if (!ctx_PtrIndex_Put(&enums_seen, ea, eb, 0)) goto oom;
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
