/* ctx_luaplan.c - the validation plan of the Lua engine, as Lua source.
 *
 * The Lua engine (lua/cas.lua) walks a payload the way ctx_validate.c does;
 * what it needs to know about the schema comes from a Lua fragment this file
 * emits from the very walk plans ctx_validate.c uses (ctx_internal.h). The
 * SDK generates it through the cffi extension from the descriptor set it read
 * from the registry (as data), prepends it to the body of cas.lua and loads
 * the result with SCRIPT LOAD: nothing executable is read from Redis.
 *
 * The fragment defines (docs/PROTOCOL.md, "The validation plan"):
 *
 *   PLAN_DIGEST   the registry digest the plan belongs to (40 hex)
 *   PLAN_ERR      nil (a fragment of this file always builds)
 *   TYPE          the message type's full name
 *   VF, VK        the version field's number and type name ("int64", ...)
 *   ANY_REQ       true when a required field is reachable from the root
 *   plan(mi)      K, N, SPARSE, T of message mi (1 = the root): K holds one
 *                 code byte per field number 1..#K ('.' for none); N lists
 *                 every field as " <number>:<code><name>"; SPARSE is true when
 *                 some field numbers are above #K (then found in N); T holds,
 *                 per one-byte tag 0..127, the lowercase code of the field when
 *                 the tag's wire type is the field's own (not packed, not a
 *                 group), else '.': the fast walk's table (lua/cas.lua,
 *                 fwalk; it looks two-byte tags up in K)
 *   ref(mi, n)    the message index (message and group fields) or the closed
 *                 enum index (enum fields) of field n of message mi
 *   enum_ok(ei, v)  true when v (an int32) is a value of closed enum ei (an
 *                 if-tree on ei, then one on v)
 *   missing_req(mi, node)  number and name of the first required field of
 *                 message mi that `node` (a set of field numbers) lacks
 *
 * Codes, by what the walk does with a value; lowercase singular, uppercase
 * repeated: 'a' varint, 'b' closed enum (varint), 'c' fixed64, 'd' bytes,
 * 'e' string (UTF-8), 'f' message, 'g' group, 'h' fixed32. The wire type of
 * one unpacked value: a b -> 0, c -> 1, d e f -> 2, g -> 3, h -> 5.
 *
 * Running the fragment (a script body runs on every EVALSHA) allocates four
 * closures and nothing else (a huge schema's plan also makes one closure per
 * region of its own, below, that a lookup passes through): K and N are string constants, made once when
 * the script is loaded; lookups are a byte of K per field, if-trees for ref,
 * enum values and required fields. The size grows by a few bytes per field.
 * Every string literal is escaped (only [A-Za-z0-9_.:-] stay as they are;
 * N separates its entries with spaces, which no field name holds).
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "ctx_core.h"
#include "ctx_internal.h"
#include "ctx_sha1.h"
#include "upb/reflection/def.h"

/* ---- an output buffer ------------------------------------------------------ */

typedef struct {
  char* buf;
  size_t len, cap;
  bool oom;
  const char* params; /* the parameters of the function being written ("mi, n") */
  size_t wrapped;     /* bytes written so far that went into functions of their own */
} lp_out;

static void lp_reserve(lp_out* o, size_t more) {
  if (o->oom || o->len + more + 1 <= o->cap) return;
  size_t cap = o->cap ? o->cap : 4096;
  while (cap < o->len + more + 1) cap *= 2;
  char* b = ctx_realloc(o->buf, cap);
  if (!b) {
    o->oom = true;
    return;
  }
  o->buf = b;
  o->cap = cap;
}

static void lp_put(lp_out* o, const char* s, size_t n) {
  lp_reserve(o, n);
  if (o->oom) return;
  memcpy(o->buf + o->len, s, n);
  o->len += n;
  o->buf[o->len] = '\0';
}

static void lp_str(lp_out* o, const char* s) { lp_put(o, s, strlen(s)); }

static void lp_fmt(lp_out* o, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
static void lp_fmt(lp_out* o, const char* fmt, ...) {
  char tmp[256];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
  va_end(ap);
  if (n < 0) return;
  lp_put(o, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* Nesting is not indented: the fragment is sent with every SCRIPT LOAD. */
static void lp_indent(lp_out* o, int depth) { (void)o, (void)depth; }

/* The bytes of a Lua string literal: every byte outside [A-Za-z0-9_.:-] as a
 * decimal escape (\ddd, three digits, so a digit after it cannot join it). */
static void lp_escape(lp_out* o, const char* s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                 (c >= '0' && c <= '9') || c == '_' || c == '.' || c == ':' || c == '-';
    if (plain) {
      lp_put(o, (const char*)&c, 1);
    } else {
      lp_fmt(o, "\\%03u", (unsigned)c);
    }
  }
}

/* A Lua string literal: '...', escaped. */
static void lp_quote(lp_out* o, const char* s, size_t n) {
  lp_put(o, "'", 1);
  lp_escape(o, s, n);
  lp_put(o, "'", 1);
}

/* ---- Lua's limits ------------------------------------------------------------ */

/* Lua 5.1 compiles a function only while its jumps span at most 131,071 instructions
 * and it holds at most 262,143 constants ("control structure too long", "constant table
 * overflow"): one if-tree over 20,000 messages or enum ranges passes that. So every
 * region the trees below write (an if statement in tail position of its function) that
 * holds more than LP_FN_BYTES of code of its own becomes a function of its own, called in
 * place: `return (function(<params>) <region> end)(<params>)`. Generated code takes at
 * least 3 bytes per instruction and 2 per constant, and a function holds at most four
 * regions of LP_FN_BYTES (a leaf list) and a few bytes, so no function nears a limit.
 * Schemas under LP_FN_BYTES per function (all but huge ones) get no such call. */
#define LP_FN_BYTES 50000

/* Where a region starts: its offset, and how much had gone into functions then. */
typedef struct {
  size_t start, wrapped;
} lp_mark;

static lp_mark lp_open(const lp_out* o) { return (lp_mark){o->len, o->wrapped}; }

/* Ends the region begun at `m`: made a function of its own when its own code (its bytes
 * less those already in functions of their own) is over LP_FN_BYTES. */
static void lp_close(lp_out* o, lp_mark m) {
  size_t own = o->len - m.start - (o->wrapped - m.wrapped);
  if (o->oom || own <= LP_FN_BYTES) return;
  char head[64];
  int hn = snprintf(head, sizeof(head), "return (function(%s)\n", o->params);
  if (hn < 0 || (size_t)hn >= sizeof(head)) {
    o->oom = true;
    return;
  }
  lp_reserve(o, (size_t)hn);
  if (o->oom) return;
  memmove(o->buf + m.start + hn, o->buf + m.start, o->len - m.start + 1);
  memcpy(o->buf + m.start, head, (size_t)hn);
  o->len += (size_t)hn;
  size_t before_tail = o->len;
  lp_fmt(o, "end)(%s)\n", o->params);
  /* the parent keeps only the call: the head and the tail */
  size_t call = (size_t)hn + (o->len - before_tail);
  o->wrapped = m.wrapped + (o->len - m.start) - call;
}

/* ---- the schema's parts ----------------------------------------------------- */

/* How many plans there are: plans are numbered breadth-first from the root,
 * so every index below the largest `sub` seen so far is a plan. */
static int lp_plan_count(const ctx_MsgPlan* plans) {
  int n = 1;
  for (int i = 0; i < n; i++) {
    for (int j = 0; j < plans[i].nfields; j++) {
      if (plans[i].fields[j].sub + 1 > n) n = plans[i].fields[j].sub + 1;
    }
  }
  return n;
}

/* The closed enums met, in order (field by field, plan by plan). */
typedef struct {
  const upb_EnumDef** defs;
  int n, cap;
} lp_enums;

/* The 1-based index of `e`, added when new; 0 when out of memory. */
static int lp_enum_index(lp_enums* es, const upb_EnumDef* e) {
  for (int i = 0; i < es->n; i++) {
    if (es->defs[i] == e) return i + 1;
  }
  if (es->n == es->cap) {
    int cap = es->cap ? es->cap * 2 : 8;
    const upb_EnumDef** d = ctx_realloc(es->defs, (size_t)cap * sizeof(*d));
    if (!d) return 0;
    es->defs = d;
    es->cap = cap;
  }
  es->defs[es->n++] = e;
  return es->n;
}

/* The code letter of a field (lowercase; uppercase when repeated). */
static char lp_code(const ctx_FieldPlan* fp) {
  char c;
  switch (fp->kind) {
    case kCtx_Kind_String: c = 'e'; break;
    case kCtx_Kind_Bytes: c = 'd'; break;
    case kCtx_Kind_Message: c = 'f'; break;
    case kCtx_Kind_Group: c = 'g'; break;
    default:
      if (fp->closed_enum) {
        c = 'b';
      } else if (fp->wire_type == 1) {
        c = 'c';
      } else if (fp->wire_type == 5) {
        c = 'h';
      } else {
        c = 'a';
      }
      break;
  }
  return fp->repeated ? (char)(c - 'a' + 'A') : c;
}

static const char* lp_version_kind(const upb_FieldDef* f) {
  switch (upb_FieldDef_Type(f)) {
    case kUpb_FieldType_Int32: return "int32";
    case kUpb_FieldType_Int64: return "int64";
    case kUpb_FieldType_UInt32: return "uint32";
    case kUpb_FieldType_UInt64: return "uint64";
    case kUpb_FieldType_SInt32: return "sint32";
    case kUpb_FieldType_SInt64: return "sint64";
    case kUpb_FieldType_Fixed32: return "fixed32";
    case kUpb_FieldType_Fixed64: return "fixed64";
    case kUpb_FieldType_SFixed32: return "sfixed32";
    case kUpb_FieldType_SFixed64: return "sfixed64";
    default: return NULL;
  }
}

/* ---- plan(mi) and ref(mi, n) ------------------------------------------------- */

#define LP_LEAF 4 /* at most this many comparisons in a row */

/* An if-tree over the indices [lo, hi) of `t->var` ("mi": message plans, "ei": closed enums),
 * with at most LP_LEAF comparisons in a row; each index's body is written by t->leaf (a plan)
 * or lp_enum_body (an enum). Regions too large for one Lua function become functions. */
typedef void lp_leaf_fn(lp_out* o, lp_enums* es, const ctx_MsgPlan* mp, int depth);

typedef struct {
  const char* var;
  lp_enums* es;
  const ctx_MsgPlan* plans; /* NULL: the tree is over es's enums */
  lp_leaf_fn* leaf;
} lp_tree;

static void lp_enum_body(lp_out* o, const upb_EnumDef* e, int depth);

static void lp_tree_emit(lp_out* o, const lp_tree* t, int lo, int hi, int depth) {
  lp_mark m = lp_open(o);
  if (hi - lo <= LP_LEAF) {
    for (int i = lo; i < hi; i++) {
      lp_indent(o, depth);
      lp_fmt(o, "%s %s == %d then\n", i == lo ? "if" : "elseif", t->var, i + 1);
      if (t->plans) {
        t->leaf(o, t->es, &t->plans[i], depth + 1);
      } else {
        lp_enum_body(o, t->es->defs[i], depth + 1);
      }
    }
    lp_indent(o, depth);
    lp_str(o, "end\n");
    lp_close(o, m);
    return;
  }
  int mid = lo + (hi - lo) / 2;
  lp_indent(o, depth);
  lp_fmt(o, "if %s < %d then\n", t->var, mid + 1);
  lp_tree_emit(o, t, lo, mid, depth + 1);
  lp_indent(o, depth);
  lp_str(o, "else\n");
  lp_tree_emit(o, t, mid, hi, depth + 1);
  lp_indent(o, depth);
  lp_str(o, "end\n");
  lp_close(o, m);
}

static void lp_msg_tree(lp_out* o, lp_enums* es, const ctx_MsgPlan* plans, int n,
                        lp_leaf_fn* leaf) {
  lp_tree t = {"mi", es, plans, leaf};
  lp_tree_emit(o, &t, 0, n, 1);
}

/* Field numbers up to this bound go into K when they are at most twice the
 * field count plus 32 (a sparse message keeps K short; its high numbers are
 * found in N). */
static uint32_t lp_dense_len(const ctx_MsgPlan* mp) {
  uint32_t bound = 2u * (uint32_t)mp->nfields + 32u;
  uint32_t len = 0;
  for (int i = 0; i < mp->nfields; i++) {
    if (mp->fields[i].number <= bound && mp->fields[i].number > len) len = mp->fields[i].number;
  }
  return len;
}

static void lp_plan_leaf(lp_out* o, lp_enums* es, const ctx_MsgPlan* mp, int depth) {
  (void)es;
  uint32_t dense = lp_dense_len(mp);
  char* k = ctx_malloc(dense + 1);
  if (!k) {
    o->oom = true;
    return;
  }
  memset(k, '.', dense);
  bool sparse = false;
  for (int i = 0; i < mp->nfields; i++) {
    if (mp->fields[i].number <= dense) {
      k[mp->fields[i].number - 1] = lp_code(&mp->fields[i]);
    } else {
      sparse = true;
    }
  }
  lp_indent(o, depth);
  lp_str(o, "return ");
  lp_quote(o, k, dense);
  ctx_free(k);
  lp_str(o, ", '");
  for (int i = 0; i < mp->nfields; i++) {
    const ctx_FieldPlan* fp = &mp->fields[i];
    const char* name = upb_FieldDef_Name(fp->def);
    lp_fmt(o, " %u:%c", (unsigned)fp->number, lp_code(fp));
    lp_escape(o, name, strlen(name));
  }
  char t[128];
  memset(t, '.', sizeof(t));
  for (int i = 0; i < mp->nfields; i++) {
    const ctx_FieldPlan* fp = &mp->fields[i];
    uint32_t tag = fp->number * 8u + fp->wire_type;
    if (fp->number <= 15 && fp->kind != kCtx_Kind_Group) {
      t[tag] = (char)(lp_code(fp) | 0x20); /* lowercase */
    }
  }
  lp_fmt(o, "', %s, ", sparse ? "true" : "false");
  lp_quote(o, t, sizeof(t));
  lp_str(o, "\n");
}

/* The fields [lo, hi) of `f` (message, group and enum fields), as an if-tree on
 * `n` returning their ref. */
static void lp_ref_tree(lp_out* o, lp_enums* es, const ctx_FieldPlan** f, int lo, int hi,
                        int depth) {
  lp_mark m = lp_open(o);
  if (hi - lo <= LP_LEAF) {
    for (int i = lo; i < hi; i++) {
      int ref;
      if (f[i]->sub >= 0) {
        ref = f[i]->sub + 1;
      } else if (!(ref = lp_enum_index(es, f[i]->closed_enum))) {
        o->oom = true;
      }
      lp_indent(o, depth);
      lp_fmt(o, "%s n == %u then return %d\n", i == lo ? "if" : "elseif",
             (unsigned)f[i]->number, ref);
    }
    if (hi > lo) {
      lp_indent(o, depth);
      lp_str(o, "end\n");
    }
    lp_close(o, m);
    return;
  }
  int mid = lo + (hi - lo) / 2;
  lp_indent(o, depth);
  lp_fmt(o, "if n < %u then\n", (unsigned)f[mid]->number);
  lp_ref_tree(o, es, f, lo, mid, depth + 1);
  lp_indent(o, depth);
  lp_str(o, "else\n");
  lp_ref_tree(o, es, f, mid, hi, depth + 1);
  lp_indent(o, depth);
  lp_str(o, "end\n");
  lp_close(o, m);
}

static void lp_ref_leaf(lp_out* o, lp_enums* es, const ctx_MsgPlan* mp, int depth) {
  const ctx_FieldPlan** f = ctx_malloc((size_t)(mp->nfields ? mp->nfields : 1) * sizeof(*f));
  if (!f) {
    o->oom = true;
    return;
  }
  int n = 0;
  for (int i = 0; i < mp->nfields; i++) {
    if (mp->fields[i].sub >= 0 || mp->fields[i].closed_enum) f[n++] = &mp->fields[i];
  }
  lp_ref_tree(o, es, f, 0, n, depth);
  ctx_free(f);
}

/* True when some message of the plans has a message, group or enum field. */
static bool lp_any_ref(const ctx_MsgPlan* plans, int nplans) {
  for (int i = 0; i < nplans; i++) {
    for (int j = 0; j < plans[i].nfields; j++) {
      if (plans[i].fields[j].sub >= 0 || plans[i].fields[j].closed_enum) return true;
    }
  }
  return false;
}

static void lp_required_leaf(lp_out* o, lp_enums* es, const ctx_MsgPlan* mp, int depth) {
  (void)es;
  for (int r = 0; r < mp->nrequired; r++) {
    const ctx_FieldPlan* fp = mp->required[r];
    const char* name = upb_FieldDef_Name(fp->def);
    lp_indent(o, depth);
    lp_fmt(o, "if not node[%u] then return %u, ", (unsigned)fp->number, (unsigned)fp->number);
    lp_quote(o, name, strlen(name));
    lp_str(o, " end\n");
  }
}

/* ---- enum_ok(ei, v) ------------------------------------------------------------ */

static int lp_cmp_i32(const void* a, const void* b) {
  int32_t x = *(const int32_t*)a, y = *(const int32_t*)b;
  return (x > y) - (x < y);
}

/* The ranges [lo[i], hi[i]] of values, as an if-tree on `v`. */
static void lp_range_tree(lp_out* o, const int32_t* lo, const int32_t* hi, int a, int b,
                          int depth) {
  lp_mark m = lp_open(o);
  if (b - a <= LP_LEAF) {
    lp_indent(o, depth);
    lp_str(o, "return ");
    for (int i = a; i < b; i++) {
      if (i > a) lp_str(o, " or ");
      if (lo[i] == hi[i]) {
        lp_fmt(o, "v == %d", (int)lo[i]);
      } else {
        lp_fmt(o, "(v >= %d and v <= %d)", (int)lo[i], (int)hi[i]);
      }
    }
    lp_str(o, "\n");
    lp_close(o, m);
    return;
  }
  int mid = a + (b - a) / 2;
  lp_indent(o, depth);
  lp_fmt(o, "if v < %d then\n", (int)lo[mid]);
  lp_range_tree(o, lo, hi, a, mid, depth + 1);
  lp_indent(o, depth);
  lp_str(o, "else\n");
  lp_range_tree(o, lo, hi, mid, b, depth + 1);
  lp_indent(o, depth);
  lp_str(o, "end\n");
  lp_close(o, m);
}

static void lp_enum_body(lp_out* o, const upb_EnumDef* e, int depth) {
  int n = upb_EnumDef_ValueCount(e);
  int32_t* vals = ctx_malloc((size_t)(n ? n : 1) * 3 * sizeof(int32_t));
  if (!vals) {
    o->oom = true;
    return;
  }
  for (int i = 0; i < n; i++) vals[i] = upb_EnumValueDef_Number(upb_EnumDef_Value(e, i));
  qsort(vals, (size_t)n, sizeof(*vals), lp_cmp_i32);
  int32_t* lo = vals + n;
  int32_t* hi = vals + 2 * n;
  int nr = 0;
  for (int i = 0; i < n; i++) {
    if (nr && (int64_t)vals[i] <= (int64_t)hi[nr - 1] + 1) {
      if (vals[i] > hi[nr - 1]) hi[nr - 1] = vals[i];
    } else {
      lo[nr] = hi[nr] = vals[i];
      nr++;
    }
  }
  if (nr) {
    lp_range_tree(o, lo, hi, 0, nr, depth);
  } else {
    lp_indent(o, depth);
    lp_str(o, "return false\n");
  }
  ctx_free(vals);
}

/* ---- the fragment ---------------------------------------------------------------- */

static bool lp_is_hex40(const char* d) {
  for (int i = 0; i < 40; i++) {
    char c = d[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

bool ctx_Schema_LuaPlan(const ctx_Schema* s, const char digest[40], char** out,
                        size_t* out_len, ctx_Status* status) {
  ctx_Status_Clear(status);
  *out = NULL;
  *out_len = 0;
  if (!lp_is_hex40(digest)) {
    ctx_Status_Set(status, kCtx_Schema, "plan digest must be 40 lowercase hex digits");
    return false;
  }
  const upb_FieldDef* vf = ctx_Schema_VersionFieldDef(s);
  const char* vk = lp_version_kind(vf);
  if (!vk) {
    ctx_Status_Set(status, kCtx_Schema, "version field is not an integer");
    return false;
  }
  const ctx_MsgPlan* plans = ctx_Schema_Plans(s);
  int nplans = lp_plan_count(plans);
  lp_out o = {0};
  lp_enums es = {0};

  lp_str(&o, "local PLAN_DIGEST = ");
  lp_quote(&o, digest, 40);
  lp_str(&o, "\nlocal PLAN_ERR = nil\nlocal TYPE = ");
  const char* type = ctx_Schema_TypeName(s);
  lp_quote(&o, type, strlen(type));
  lp_fmt(&o, "\nlocal VF, VK = %u, '%s'\n", (unsigned)upb_FieldDef_Number(vf), vk);
  lp_fmt(&o, "local ANY_REQ = %s\n", ctx_Schema_HasRequired(s) ? "true" : "false");

  o.params = "mi";
  lp_str(&o, "local function plan(mi)\n");
  lp_msg_tree(&o, &es, plans, nplans, lp_plan_leaf);
  lp_str(&o, "end\n");

  o.params = "mi, n";
  lp_str(&o, "local function ref(mi, n)\n");
  if (lp_any_ref(plans, nplans)) lp_msg_tree(&o, &es, plans, nplans, lp_ref_leaf);
  lp_str(&o, "end\n");

  /* enums are numbered while field() is written; their bodies come after */
  lp_str(&o, "local function enum_ok(ei, v)\n");
  o.params = "ei, v";
  if (es.n) {
    lp_fmt(&o, "if ei < 1 or ei > %d then return false end\n", es.n);
    lp_tree t = {"ei", &es, NULL, NULL};
    lp_tree_emit(&o, &t, 0, es.n, 1);
  } else {
    lp_str(&o, " return false\n");
  }
  lp_str(&o, "end\n");

  o.params = "mi, node";
  lp_str(&o, "local function missing_req(mi, node)\n");
  if (ctx_Schema_HasRequired(s)) lp_msg_tree(&o, &es, plans, nplans, lp_required_leaf);
  lp_str(&o, "end\n");

  ctx_free(es.defs);
  if (o.oom) {
    ctx_free(o.buf);
    ctx_Status_Set(status, kCtx_NoMemory, "out of memory");
    return false;
  }
  *out = o.buf;
  *out_len = o.len;
  return true;
}
