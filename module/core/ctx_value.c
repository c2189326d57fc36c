/* ctx_value.c - the context value (v3 written, v2 read), its write window, and the field splice
 * of CTX.PATCH (see ctx_value.h). No allocation: callers own the buffers. */
#include "ctx_value.h"

#include <string.h>

#include "ctx_internal.h"

static const char kMagic2[4] = {'C', 'T', 'X', 0x02};
static const char kMagic3[4] = {'C', 'T', 'X', 0x03};

static uint64_t get_u64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

static uint32_t get_u32(const unsigned char* p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put_u64(unsigned char* p, uint64_t v) {
  for (int i = 0; i < 8; i++, v >>= 8) p[i] = (unsigned char)v;
}

static void put_u32(unsigned char* p, uint32_t v) {
  for (int i = 0; i < 4; i++, v >>= 8) p[i] = (unsigned char)v;
}

/* ---- the value ---------------------------------------------------------- */

static int popcount32(uint32_t x) {
  int n = 0;
  for (; x; x &= x - 1) n++;
  return n;
}

bool ctx_Incarnation_IsZero(const unsigned char inc[CTX_INC_LEN]) {
  for (int i = 0; i < CTX_INC_LEN; i++) {
    if (inc[i]) return false;
  }
  return true;
}

void ctx_Incarnation_Hex(const unsigned char inc[CTX_INC_LEN], char out[2 * CTX_INC_LEN + 1]) {
  static const char kHex[] = "0123456789abcdef";
  for (int i = 0; i < CTX_INC_LEN; i++) {
    out[2 * i] = kHex[inc[i] >> 4];
    out[2 * i + 1] = kHex[inc[i] & 15];
  }
  out[2 * CTX_INC_LEN] = 0;
}

static int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool ctx_Incarnation_Parse(const char* s, size_t len, unsigned char out[CTX_INC_LEN]) {
  if (len != 2 * CTX_INC_LEN) return false;
  for (int i = 0; i < CTX_INC_LEN; i++) {
    int hi = hex_digit(s[2 * i]), lo = hex_digit(s[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = (unsigned char)(hi << 4 | lo);
  }
  return !ctx_Incarnation_IsZero(out);
}

/* The common tail of both formats: schema, updated_by, payload after `pos`. */
static bool parse_tail(const char* buf, size_t len, size_t pos, size_t s, size_t b,
                       ctx_Value* out) {
  if (pos > len || s + b > len - pos) return false;
  out->schema = buf + pos;
  out->schema_len = s;
  out->updated_by = buf + pos + s;
  out->by_len = b;
  out->payload = buf + pos + s + b;
  out->payload_len = len - pos - s - b;
  return true;
}

static bool parse_v2(const char* buf, size_t len, ctx_Value* out) {
  const unsigned char* p = (const unsigned char*)buf;
  uint64_t version = get_u64(p + 4);
  int n = p[20];
  size_t s = p[21];
  size_t b = (size_t)p[22] | (size_t)p[23] << 8;
  if (version < 1 || n > CTX_WINDOW_MAX || s < 1 || s > CTX_VALUE_SCHEMA_MAX) return false;
  /* Every write adds one record and one version, so n <= version, and a version
   * is a signed 64-bit reply. A hand-made value beyond either would make
   * version - i and version - n + 1 wrap (replayed/oldest_known replies of
   * 2^64 - k, a spurious or missed conflict): it is not a context. */
  if (version > (uint64_t)INT64_MAX || (uint64_t)n > version) return false;
  memset(out, 0, sizeof(*out));
  out->format = 2;
  out->version = version;
  out->updated_ms = get_u64(p + 12);
  out->n = n;
  out->window = p + CTX_VALUE_HEADER;
  return parse_tail(buf, len, CTX_VALUE_HEADER + (size_t)n * CTX_VALUE_RECORD, s, b, out);
}

static bool parse_v3(const char* buf, size_t len, ctx_Value* out) {
  const unsigned char* p = (const unsigned char*)buf;
  if (len < CTX_VALUE_HEADER_V3) return false;
  uint64_t version = get_u64(p + 4);
  uint64_t floor = get_u64(p + 28);
  uint32_t cmask = get_u32(p + 36);
  int n = p[40];
  size_t s = p[41];
  size_t b = (size_t)p[42] | (size_t)p[43] << 8;
  if (version < 1 || version > (uint64_t)INT64_MAX || n > CTX_WINDOW_MAX ||
      (uint64_t)n > version || s < 1 || s > CTX_VALUE_SCHEMA_MAX) {
    return false;
  }
  if (floor < 1 || floor > version || (cmask & CTX_MASK_WHOLE)) return false;
  if (ctx_Incarnation_IsZero(p + 20)) return false;
  size_t k = (size_t)popcount32(cmask);
  size_t pos = CTX_VALUE_HEADER_V3 + 4 * k;
  if (pos > len) return false;
  /* Every clock is a version that happened: floor < floor + delta <= version. */
  for (size_t i = 0; i < k; i++) {
    uint32_t d = get_u32(p + CTX_VALUE_HEADER_V3 + 4 * i);
    if (d < 1 || (uint64_t)d > version - floor) return false;
  }
  if ((size_t)n * CTX_VALUE_RECORD_V3 > len - pos) return false;
  memset(out, 0, sizeof(*out));
  out->format = 3;
  out->version = version;
  out->updated_ms = get_u64(p + 12);
  out->incarnation = p + 20;
  out->floor = floor;
  out->cmask = cmask;
  out->deltas = p + CTX_VALUE_HEADER_V3;
  out->n = n;
  out->window = p + pos;
  return parse_tail(buf, len, pos + (size_t)n * CTX_VALUE_RECORD_V3, s, b, out);
}

bool ctx_Value_Parse(const char* buf, size_t len, ctx_Value* out) {
  if (len < CTX_VALUE_HEADER) return false;
  if (memcmp(buf, kMagic3, 4) == 0) return parse_v3(buf, len, out);
  if (memcmp(buf, kMagic2, 4) == 0) return parse_v2(buf, len, out);
  return false;
}

uint64_t ctx_Value_OldestKnown(const ctx_Value* v) {
  return v->version - (uint64_t)v->n + 1;
}

uint64_t ctx_Value_FindWrite(const ctx_Value* v, const unsigned char digest[CTX_DIGEST_LEN]) {
  static const unsigned char zero[CTX_DIGEST_LEN] = {0};
  if (memcmp(digest, zero, CTX_DIGEST_LEN) == 0) return 0;
  size_t stride = ctx_Value_RecordSize(v);
  for (int i = 0; i < v->n; i++) {
    if (memcmp(v->window + (size_t)i * stride, digest, CTX_DIGEST_LEN) == 0) {
      return v->version - (uint64_t)i;
    }
  }
  return 0;
}

bool ctx_Value_MaskSince(const ctx_Value* v, uint64_t base, uint32_t* mask) {
  *mask = 0;
  if (base >= v->version) return true;
  if (base + 1 < ctx_Value_OldestKnown(v)) return false;
  uint64_t count = v->version - base; /* records 0 .. count-1 */
  for (uint64_t i = 0; i < count; i++) {
    *mask |= get_u32(v->window + i * CTX_VALUE_RECORD + CTX_DIGEST_LEN);
  }
  return true;
}

uint64_t ctx_Value_Clock(const ctx_Value* v, int bit) {
  uint32_t b = (uint32_t)1 << bit;
  if (!(v->cmask & b)) return v->floor;
  int idx = popcount32(v->cmask & (b - 1)); /* deltas are in ascending bit order */
  return v->floor + get_u32(v->deltas + 4 * (size_t)idx);
}

bool ctx_Value_FieldChanged(const ctx_Value* v, uint64_t base, uint32_t number) {
  if (base > v->version) return true;
  if (base == v->version) return false;
  if (v->format >= 3) {
    return v->floor > base || ctx_Value_Clock(v, (int)((number - 1) % CTX_FIELD_BITS)) > base;
  }
  uint32_t m;
  if (!ctx_Value_MaskSince(v, base, &m)) return true;
  return (m & CTX_MASK_WHOLE) || (m & ctx_FieldBit(number));
}

void ctx_Clocks_Whole(ctx_Clocks* c, uint64_t version) {
  memset(c, 0, sizeof(*c));
  c->floor = version;
}

void ctx_Clocks_Patch(ctx_Clocks* c, const ctx_Value* prev, uint64_t version, uint32_t bits) {
  memset(c, 0, sizeof(*c));
  if (prev->format >= 3) {
    c->floor = prev->floor;
    c->cmask = prev->cmask;
    int idx = 0;
    for (int bit = 0; bit < CTX_FIELD_BITS; bit++) {
      if (prev->cmask & ((uint32_t)1 << bit)) {
        c->delta[bit] = get_u32(prev->deltas + 4 * (size_t)idx++);
      }
    }
  } else {
    /* An upgrade: every field counts as changed at the version it had. */
    c->floor = prev->version;
  }
  if (version - c->floor > CTX_DELTA_MAX) {
    ctx_Clocks_Whole(c, version);
    return;
  }
  bits &= ~CTX_MASK_WHOLE;
  for (int bit = 0; bit < CTX_FIELD_BITS; bit++) {
    if (bits & ((uint32_t)1 << bit)) c->delta[bit] = (uint32_t)(version - c->floor);
  }
  c->cmask |= bits;
}

int ctx_Value_KeptRecords(const ctx_Value* prev, int window) {
  if (!prev) return 0;
  if (window < 1) window = 1;
  if (window > CTX_WINDOW_MAX) window = CTX_WINDOW_MAX;
  return prev->n < window ? prev->n : window - 1;
}

size_t ctx_Value_Size(const ctx_Value* prev, int window, const ctx_Clocks* clocks,
                      size_t schema_len, size_t by_len, size_t payload_len) {
  return CTX_VALUE_HEADER_V3 + 4 * (size_t)popcount32(clocks->cmask) +
         (size_t)(ctx_Value_KeptRecords(prev, window) + 1) * CTX_VALUE_RECORD_V3 + schema_len +
         by_len + payload_len;
}

void ctx_Value_Write(char* out, const ctx_Value* prev, int window, uint64_t version,
                     uint64_t updated_ms, const unsigned char inc[CTX_INC_LEN],
                     const ctx_Clocks* clocks, const unsigned char* digest,
                     const char* schema, size_t schema_len, const char* by,
                     size_t by_len, const char* payload, size_t payload_len) {
  unsigned char* p = (unsigned char*)out;
  int kept = ctx_Value_KeptRecords(prev, window);
  memcpy(p, kMagic3, 4);
  put_u64(p + 4, version);
  put_u64(p + 12, updated_ms);
  memcpy(p + 20, inc, CTX_INC_LEN);
  put_u64(p + 28, clocks->floor);
  put_u32(p + 36, clocks->cmask);
  p[40] = (unsigned char)(kept + 1);
  p[41] = (unsigned char)schema_len;
  p[42] = (unsigned char)(by_len & 0xff);
  p[43] = (unsigned char)(by_len >> 8);
  p += CTX_VALUE_HEADER_V3;
  for (int bit = 0; bit < CTX_FIELD_BITS; bit++) {
    if (clocks->cmask & ((uint32_t)1 << bit)) {
      put_u32(p, clocks->delta[bit]);
      p += 4;
    }
  }
  if (digest) {
    memcpy(p, digest, CTX_DIGEST_LEN);
  } else {
    memset(p, 0, CTX_DIGEST_LEN);
  }
  p += CTX_VALUE_RECORD_V3;
  size_t stride = kept ? ctx_Value_RecordSize(prev) : 0;
  for (int i = 0; i < kept; i++, p += CTX_VALUE_RECORD_V3) {
    memcpy(p, prev->window + (size_t)i * stride, CTX_DIGEST_LEN);
  }
  memcpy(p, schema, schema_len);
  p += schema_len;
  if (by_len) memcpy(p, by, by_len);
  p += by_len;
  if (payload_len) memcpy(p, payload, payload_len);
}

/* ---- schema facts ------------------------------------------------------- */

bool ctx_Schema_HasTopField(const ctx_Schema* s, uint32_t number) {
  return ctx_MsgPlan_Find(&ctx_Schema_Plans(s)[0], number) != NULL;
}

void ctx_Schema_VersionFieldInfo(const ctx_Schema* s, ctx_VersionField* out) {
  const upb_FieldDef* f = ctx_Schema_VersionFieldDef(s);
  out->number = upb_FieldDef_Number(f);
  switch (upb_FieldDef_Type(f)) {
    case kUpb_FieldType_SInt32:
      out->enc = kCtx_VEnc_Zigzag; out->max = INT32_MAX; break;
    case kUpb_FieldType_SInt64:
      out->enc = kCtx_VEnc_Zigzag; out->max = INT64_MAX; break;
    case kUpb_FieldType_Fixed32:
      out->enc = kCtx_VEnc_Fixed32; out->max = UINT32_MAX; break;
    case kUpb_FieldType_SFixed32:
      out->enc = kCtx_VEnc_Fixed32; out->max = INT32_MAX; break;
    case kUpb_FieldType_Fixed64:
    case kUpb_FieldType_SFixed64:
      out->enc = kCtx_VEnc_Fixed64; out->max = INT64_MAX; break;
    case kUpb_FieldType_Int32:
      out->enc = kCtx_VEnc_Varint; out->max = INT32_MAX; break;
    case kUpb_FieldType_UInt32:
      out->enc = kCtx_VEnc_Varint; out->max = UINT32_MAX; break;
    default: /* int64, uint64 */
      out->enc = kCtx_VEnc_Varint; out->max = INT64_MAX; break;
  }
}

static bool check_one(const ctx_Schema* s, uint32_t vnum, uint32_t f, ctx_Status* st) {
  if (f == vnum) {
    ctx_Status_Set(st, kCtx_Field, "field %u is the version field", f);
    return false;
  }
  if (!ctx_Schema_HasTopField(s, f)) {
    const char* t = ctx_Schema_TypeName(s);
    ctx_Status_Set(st, kCtx_Field, "field %u is not a field of '%.120s'", f, t);
    return false;
  }
  return true;
}

bool ctx_Patch_CheckFields(const ctx_Schema* s, const uint32_t* fields, int nfields,
                           const uint32_t* reads, int nreads, ctx_Status* status) {
  uint32_t vnum = upb_FieldDef_Number(ctx_Schema_VersionFieldDef(s));
  for (int i = 0; i < nfields; i++) {
    if (!check_one(s, vnum, fields[i], status)) return false;
  }
  for (int i = 0; i < nreads; i++) {
    if (!check_one(s, vnum, reads[i], status)) return false;
  }
  return true;
}

/* ---- the splice --------------------------------------------------------- */

enum { kWT_Varint = 0, kWT_I64 = 1, kWT_Len = 2, kWT_SGroup = 3, kWT_EGroup = 4, kWT_I32 = 5 };

#define SPLICE_MAX_GROUP_DEPTH 100

static bool read_varint(const unsigned char* p, size_t len, size_t* pos, uint64_t* out) {
  uint64_t v = 0;
  for (int i = 0; i < 10; i++) {
    if (*pos >= len) return false;
    unsigned char c = p[(*pos)++];
    v |= (uint64_t)(c & 0x7f) << (7 * i);
    if (!(c & 0x80)) {
      *out = v;
      return true;
    }
  }
  return false;
}

/* Reads a tag at *pos: field number and wire type. */
static bool read_tag(const unsigned char* p, size_t len, size_t* pos, uint32_t* num,
                     int* wt) {
  uint64_t t;
  if (!read_varint(p, len, pos, &t)) return false;
  if (t >> 32) return false;
  *num = (uint32_t)(t >> 3);
  *wt = (int)(t & 7);
  return *num >= 1 && *num <= CTX_FIELD_NUMBER_MAX;
}

/* Skips the value of a field whose tag was just read (a group through its
 * end-group tag). */
static bool skip_value(const unsigned char* p, size_t len, size_t* pos, uint32_t num, int wt,
                       int depth) {
  uint64_t v;
  switch (wt) {
    case kWT_Varint:
      return read_varint(p, len, pos, &v);
    case kWT_I64:
      if (len - *pos < 8) return false;
      *pos += 8;
      return true;
    case kWT_I32:
      if (len - *pos < 4) return false;
      *pos += 4;
      return true;
    case kWT_Len:
      if (!read_varint(p, len, pos, &v) || v > len - *pos) return false;
      *pos += (size_t)v;
      return true;
    case kWT_SGroup:
      if (depth >= SPLICE_MAX_GROUP_DEPTH) return false;
      for (;;) {
        uint32_t n;
        int w;
        if (!read_tag(p, len, pos, &n, &w)) return false;
        if (w == kWT_EGroup) return n == num;
        if (!skip_value(p, len, pos, n, w, depth + 1)) return false;
      }
    default:
      return false;
  }
}

static bool in_list(const uint32_t* list, int n, uint32_t x) {
  for (int i = 0; i < n; i++) {
    if (list[i] == x) return true;
  }
  return false;
}

static size_t put_varint(unsigned char* out, uint64_t v) {
  size_t n = 0;
  do {
    unsigned char c = v & 0x7f;
    v >>= 7;
    if (v) c |= 0x80;
    if (out) out[n] = c;
    n++;
  } while (v);
  return n;
}

/* The version field on the wire; out may be NULL (length only). */
static size_t put_version(unsigned char* out, const ctx_VersionField* vf, uint64_t version) {
  int wt = vf->enc == kCtx_VEnc_Fixed32   ? kWT_I32
           : vf->enc == kCtx_VEnc_Fixed64 ? kWT_I64
                                          : kWT_Varint;
  size_t n = put_varint(out, ((uint64_t)vf->number << 3) | (uint64_t)wt);
  unsigned char* o = out ? out + n : NULL;
  switch (vf->enc) {
    case kCtx_VEnc_Varint:
      return n + put_varint(o, version);
    case kCtx_VEnc_Zigzag:
      return n + put_varint(o, version << 1); /* zigzag of a positive number */
    case kCtx_VEnc_Fixed32:
      if (o) put_u32(o, (uint32_t)version);
      return n + 4;
    case kCtx_VEnc_Fixed64:
      if (o) put_u64(o, version);
      return n + 8;
  }
  return n;
}

bool ctx_Splice(const char* cur, size_t cur_len, const char* patch, size_t patch_len,
                const uint32_t* fields, int nfields, const ctx_VersionField* vf,
                uint64_t version, char* out, size_t* out_len, ctx_Status* status) {
  return ctx_SpliceAppend(cur, cur_len, patch, patch_len, fields, nfields, NULL, 0, vf,
                          version, out, out_len, status);
}

bool ctx_SpliceAppend(const char* cur, size_t cur_len, const char* patch, size_t patch_len,
                      const uint32_t* fields, int nfields, const uint32_t* apps, int napps,
                      const ctx_VersionField* vf, uint64_t version, char* out,
                      size_t* out_len, ctx_Status* status) {
  const unsigned char* q = (const unsigned char*)patch;
  const unsigned char* c = (const unsigned char*)cur;
  unsigned char* o = (unsigned char*)out;
  size_t total = 0, pos = 0;

  /* The patch first: it alone can hold bad input. */
  while (pos < patch_len) {
    uint32_t num;
    int wt;
    if (!read_tag(q, patch_len, &pos, &num, &wt) || wt == kWT_EGroup ||
        !skip_value(q, patch_len, &pos, num, wt, 0)) {
      ctx_Status_Set(status, kCtx_Invalid, "payload is not valid protobuf wire format");
      return false;
    }
    if (!in_list(fields, nfields, num) && !in_list(apps, napps, num)) {
      ctx_Status_Set(status, kCtx_Field, napps ? "payload holds field %u, which is not in "
                     "FIELDS or APPEND" : "payload holds field %u, which is not in FIELDS", num);
      return false;
    }
  }
  /* With APPEND the version field goes first, where an append rewrites it in
   * place (docs/PROTOCOL.md, "Appends"). */
  if (napps) total += put_version(o, vf, version);
  /* The current fields that stay, in their order. */
  pos = 0;
  while (pos < cur_len) {
    size_t start = pos;
    uint32_t num;
    int wt;
    if (!read_tag(c, cur_len, &pos, &num, &wt) || wt == kWT_EGroup ||
        !skip_value(c, cur_len, &pos, num, wt, 0)) {
      ctx_Status_Set(status, kCtx_Invalid, "the stored payload is not valid protobuf wire format");
      return false;
    }
    if (num == vf->number || in_list(fields, nfields, num)) continue;
    if (o) memcpy(o + total, c + start, pos - start);
    total += pos - start;
  }
  /* The patch, byte for byte, then the version. */
  if (o && patch_len) memcpy(o + total, q, patch_len);
  total += patch_len;
  if (!napps) total += put_version(o ? o + total : NULL, vf, version);
  *out_len = total;
  return true;
}

size_t ctx_PutVersion(char* out, const ctx_VersionField* vf, uint64_t version) {
  return put_version((unsigned char*)out, vf, version);
}

size_t ctx_Append_VersionPrefix(const char* cur, size_t cur_len, const ctx_VersionField* vf,
                                uint64_t version) {
  unsigned char enc[24];
  size_t n = put_version(enc, vf, version);
  return n <= cur_len && memcmp(cur, enc, n) == 0 ? n : 0;
}

bool ctx_Append_CheckFields(const ctx_Schema* s, const uint32_t* apps, int napps,
                            const uint32_t* fields, int nfields, ctx_Status* status) {
  uint32_t vnum = upb_FieldDef_Number(ctx_Schema_VersionFieldDef(s));
  for (int i = 0; i < napps; i++) {
    if (!check_one(s, vnum, apps[i], status)) return false;
    const ctx_FieldPlan* fp = ctx_MsgPlan_Find(&ctx_Schema_Plans(s)[0], apps[i]);
    if (!upb_FieldDef_IsRepeated(fp->def)) { /* a map too: its entries are appended */
      ctx_Status_Set(status, kCtx_Field, "field %u is not a repeated field (APPEND)", apps[i]);
      return false;
    }
    if (in_list(fields, nfields, apps[i])) {
      ctx_Status_Set(status, kCtx_Field, "field %u is in FIELDS and APPEND", apps[i]);
      return false;
    }
  }
  return true;
}

bool ctx_Schema_TopHasRequired(const ctx_Schema* s) {
  return ctx_Schema_Plans(s)[0].nrequired > 0;
}
