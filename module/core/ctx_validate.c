/* ctx_validate.c - checking one payload against a schema.
 *
 * One pass over the wire bytes, driven by the schema's plans: structure, wire
 * types, unknown fields, UTF-8, closed enums, depth and proto2 required fields,
 * with the exact field path in every error; it also reads the version field.
 *
 * upb's decoder is not used: it accepts unknown fields and keeps wrongly typed
 * known fields as unknown data (so the walk must enforce that policy anyway),
 * and everything it checks besides required fields (tags and lengths of at
 * most 5 bytes, end-group numbers, UTF-8, closed enums, depth) the walk checks
 * too. Required fields are checked here, exactly as lua/cas.lua and upb's
 * decoder do: one presence record per message instance; all occurrences of a
 * singular message (or group) field within one parent instance share one child
 * record (they merge), each occurrence of a repeated one gets its own; a
 * record is checked at the end of every occurrence of its message. The first
 * missing field is reported; structural errors found later still win (the walk
 * goes on, without presence records). Presence memory is O(payload) and capped
 * by a budget (docs/PROTOCOL.md, "Validation").
 */
#include <stdio.h>
#include <string.h>

#include "ctx_core.h"
#include "ctx_internal.h"
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

/* ---- presence records for required fields ------------------------------------
 *
 * A record is a uint64_t bit set (a bit per required field: upb refuses
 * messages with more than 63), named by an id (1, 2, ...). The table maps
 * (record, 2 * number + 1) -> the child record of the singular message field
 * `number`. Records live in fixed chunks (no copying as they grow); the table
 * doubles at 3/4 load (which keeps the peak of a resize within the budget). Every byte counts against the budget. */

#define PRES_CHUNK 4096 /* records per chunk */

typedef struct {
  uint32_t rec; /* 0: empty slot */
  uint32_t key;
  uint32_t val;
} pres_slot;

typedef struct {
  uint64_t** chunks;
  size_t nchunks, chunks_cap;
  uint32_t nrecs;
  pres_slot* slots;
  size_t cap, len;
  size_t used, budget; /* bytes */
} presence;

static void* pres_alloc(presence* pr, size_t bytes) {
  if (bytes > pr->budget - pr->used) return NULL;
  void* p = ctx_calloc(1, bytes);
  if (p) pr->used += bytes;
  return p;
}

static void pres_release(presence* pr, void* p, size_t bytes) {
  if (!p) return;
  ctx_free(p);
  pr->used -= bytes;
}

static void pres_free(presence* pr) {
  for (size_t i = 0; i < pr->nchunks; i++) {
    pres_release(pr, pr->chunks[i], PRES_CHUNK * sizeof(uint64_t));
  }
  pres_release(pr, pr->chunks, pr->chunks_cap * sizeof(*pr->chunks));
  pres_release(pr, pr->slots, pr->cap * sizeof(*pr->slots));
  pr->chunks = NULL;
  pr->slots = NULL;
  pr->nchunks = pr->chunks_cap = pr->cap = pr->len = 0;
  pr->nrecs = 0;
}

/* A new, empty record; 0 when over budget. */
static uint32_t pres_new(presence* pr) {
  if (pr->nrecs == UINT32_MAX - 1) return 0;
  if (pr->nrecs == pr->nchunks * PRES_CHUNK) {
    if (pr->nchunks == pr->chunks_cap) {
      size_t cap = pr->chunks_cap ? pr->chunks_cap * 2 : 16;
      uint64_t** chunks = pres_alloc(pr, cap * sizeof(*chunks));
      if (!chunks) return 0;
      if (pr->nchunks) memcpy(chunks, pr->chunks, pr->nchunks * sizeof(*chunks));
      pres_release(pr, pr->chunks, pr->chunks_cap * sizeof(*chunks));
      pr->chunks = chunks;
      pr->chunks_cap = cap;
    }
    uint64_t* chunk = pres_alloc(pr, PRES_CHUNK * sizeof(uint64_t));
    if (!chunk) return 0;
    pr->chunks[pr->nchunks++] = chunk;
  }
  return ++pr->nrecs;
}

static uint64_t* pres_rec(const presence* pr, uint32_t id) {
  return &pr->chunks[(id - 1) / PRES_CHUNK][(id - 1) % PRES_CHUNK];
}

static size_t pres_hash(uint32_t rec, uint32_t key) {
  uint64_t x = ((uint64_t)rec << 32 | key) * 0x9E3779B97F4A7C15ull;
  return (size_t)(x ^ (x >> 29));
}

static pres_slot* pres_lookup(const presence* pr, uint32_t rec, uint32_t key) {
  if (!pr->cap) return NULL;
  for (size_t i = pres_hash(rec, key) & (pr->cap - 1);; i = (i + 1) & (pr->cap - 1)) {
    pres_slot* sl = &pr->slots[i];
    if (!sl->rec) return NULL;
    if (sl->rec == rec && sl->key == key) return sl;
  }
}

/* The slot of (rec, key), added (val 0) when new: *fresh tells. NULL when
 * over budget. */
static pres_slot* pres_insert(presence* pr, uint32_t rec, uint32_t key, bool* fresh) {
  pres_slot* sl = pres_lookup(pr, rec, key);
  *fresh = sl == NULL;
  if (sl) return sl;
  if (4 * (pr->len + 1) > 3 * pr->cap) {
    size_t cap = pr->cap ? pr->cap * 2 : 256;
    pres_slot* slots = pres_alloc(pr, cap * sizeof(*slots));
    if (!slots) return NULL;
    for (size_t i = 0; i < pr->cap; i++) {
      const pres_slot* o = &pr->slots[i];
      if (!o->rec) continue;
      size_t j = pres_hash(o->rec, o->key) & (cap - 1);
      while (slots[j].rec) j = (j + 1) & (cap - 1);
      slots[j] = *o;
    }
    pres_release(pr, pr->slots, pr->cap * sizeof(*slots));
    pr->slots = slots;
    pr->cap = cap;
  }
  size_t j = pres_hash(rec, key) & (pr->cap - 1);
  while (pr->slots[j].rec) j = (j + 1) & (pr->cap - 1);
  pr->slots[j] = (pres_slot){rec, key, 0};
  pr->len++;
  return &pr->slots[j];
}

typedef struct {
  const ctx_Limits* limits;
  ctx_Status* status;
  const ctx_MsgPlan* plans;   /* the schema's messages; [0] is the root */
  const upb_FieldDef* vfield; /* the root's version field */
  uint64_t vraw;              /* its last value on the wire (0 when absent) */
  presence pres;              /* required-field presence (while tracking) */
  bool tracking;              /* presence records are kept */
  bool missing;               /* a required field is missing (status holds it) */
} walker;

/* ---- wire primitives --------------------------------------------------------- */

/* Reads a varint of at most 10 bytes whose value fits 64 bits. Tags and
 * lengths are further limited to 5 bytes (as upb's decoder does). */
static const char* read_varint_long(const char* p, const char* end, uint64_t* out) {
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

/* The same, with one-byte varints (most tags, lengths and small values) read
 * without the loop. */
static inline const char* read_varint(const char* p, const char* end, uint64_t* out) {
  if (p < end && !(*p & 0x80)) {
    *out = (uint8_t)*p;
    return p + 1;
  }
  return read_varint_long(p, end, out);
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

/* ---- required fields ------------------------------------------------------------ */

static bool over_budget(walker* w) {
  ctx_Status_Set(w->status, kCtx_TooBig,
                 "checking required fields needs more than %zu bytes", w->pres.budget);
  return false;
}

/* Notes that required field `fp` occurs in record `rec`. */
static void mark_required(walker* w, uint32_t rec, const ctx_FieldPlan* fp) {
  *pres_rec(&w->pres, rec) |= (uint64_t)1 << fp->req;
}

/* The record for one occurrence of message field `fp` in record `rec`: a new
 * one for a repeated field, the same one for every occurrence of a singular
 * field (they merge). 0 when over budget (status set). */
static uint32_t child_rec(walker* w, uint32_t rec, const ctx_FieldPlan* fp) {
  uint32_t id;
  if (fp->repeated) {
    if (!(id = pres_new(&w->pres))) over_budget(w);
    return id;
  }
  bool fresh;
  pres_slot* sl = pres_insert(&w->pres, rec, 2u * fp->number + 1, &fresh);
  if (!sl) return over_budget(w), 0;
  if (fresh) {
    if (!(id = pres_new(&w->pres))) return over_budget(w), 0;
    sl->val = id;
  }
  return sl->val;
}

/* At the end of an occurrence of a message: its record must hold every
 * required field. The first missing one is reported and tracking stops. */
static void check_required(walker* w, const frame* fr, const ctx_MsgPlan* mp,
                           uint32_t rec) {
  if (!mp->nrequired) return;
  uint64_t r = *pres_rec(&w->pres, rec);
  uint64_t all = mp->nrequired >= 64 ? ~(uint64_t)0 : ((uint64_t)1 << mp->nrequired) - 1;
  if ((r & all) == all) return;
  int first = __builtin_ctzll(~r & all);
  char path[160];
  path[0] = '\0';
  size_t at = frame_path(fr, path, sizeof(path));
  if (at) at = append(path, sizeof(path), at, ".");
  append(path, sizeof(path), at, upb_FieldDef_Name(mp->required[first]->def));
  ctx_Status_Set(w->status, kCtx_Invalid, "field '%s': required field is missing", path);
  w->missing = true;
  w->tracking = false;
  pres_free(&w->pres);
}

/* ---- the walk ------------------------------------------------------------------- */

static bool enum_ok(const ctx_FieldPlan* fp, uint64_t v) {
  return !fp->closed_enum || upb_EnumDef_CheckNumber(fp->closed_enum, (int32_t)v);
}

static bool walk_message(walker* w, const frame* fr, const ctx_MsgPlan* mp,
                         uint32_t rec, const char* p, const char* end, int depth,
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

/* `rec` is the message's presence record (used only while w->tracking). */
static bool walk_message(walker* w, const frame* fr, const ctx_MsgPlan* mp,
                         uint32_t rec, const char* p, const char* end, int depth,
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
        if (w->tracking) check_required(w, fr, mp, rec);
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
    if (w->tracking && fp->req >= 0) mark_required(w, rec, fp);

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
          uint32_t crec = 0;
          if (w->tracking && !(crec = child_rec(w, rec, fp))) return false;
          frame child = {fr, f, start, tag_at};
          if (!walk_message(w, &child, &w->plans[fp->sub], crec, p, vend, depth + 1, 0,
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
        uint32_t crec = 0;
        if (w->tracking && !(crec = child_rec(w, rec, fp))) return false;
        frame child = {fr, f, start, tag_at};
        const char* after = NULL;
        if (!walk_message(w, &child, &w->plans[fp->sub], crec, p, end, depth + 1,
                          number, &after)) {
          return false;
        }
        p = after;
        break;
      }
    }
  }
  if (group_number) return fail_at(w, fr, NULL, group_number, "group is not closed");
  if (w->tracking) check_required(w, fr, mp, rec);
  return true;
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
  walker w = {limits, status, ctx_Schema_Plans(schema), ctx_Schema_VersionFieldDef(schema),
              0, {0}, false, false};
  w.pres.budget = ctx_RequiredBudget(len);
  uint32_t root_rec = 0;
  if (ctx_Schema_HasRequired(schema)) {
    w.tracking = true;
    if (!(root_rec = pres_new(&w.pres))) {
      pres_free(&w.pres);
      return over_budget(&w);
    }
  }
  frame root = {NULL, NULL, buf, buf};
  bool ok = walk_message(&w, &root, &w.plans[0], root_rec, buf, buf + len, 0, 0, NULL);
  pres_free(&w.pres);
  if (!ok) return false;
  if (!version_from_wire(w.vfield, w.vraw, version)) {
    ctx_Status_Set(status, kCtx_Schema, "version field is not an integer");
    return false;
  }
  return !w.missing;
}
