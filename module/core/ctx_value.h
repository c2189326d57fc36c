/* ctx_value.h - the stored context value (protocol 3, format v3; v2 read) and
 * the field splice.
 *
 * Pure logic, no Redis header and no allocation: the caller sizes and owns
 * every buffer (compute the size, allocate, then fill). See docs/PROTOCOL.md,
 * "Storage format" and "CTX.PATCH".
 *
 * v3 (written):
 *   offset 0  "CTX" 0x03
 *          4  version      u64 LE (>= 1)
 *         12  updated_ms   u64 LE
 *         20  incarnation  8 bytes, never all zero
 *         28  floor        u64 LE: version of the newest whole-context write
 *         36  cmask        u32 LE: field bits whose clock is above floor (bit 31 clear)
 *         40  n            u8, window records (0..CTX_WINDOW_MAX), newest first
 *         41  s            u8, schema name length (1..128)
 *         42  b            u16 LE, updated_by length
 *         44  k = popcount(cmask) clock deltas, u32 LE, ascending bit order
 *             then n records of 8 bytes (SHA-1 prefix of the write id, zero
 *             without id), schema name, updated_by, payload
 *
 * v2 (read only; its first write stores v3):
 *   offset 0  "CTX" 0x02, 4 version, 12 updated_ms, 20 n, 21 s, 22 b (u16),
 *          24 n records of 12 bytes: digest[8], mask u32 LE (bit 31: whole
 *             context), then schema name, updated_by, payload
 */
#ifndef CTX_VALUE_H_
#define CTX_VALUE_H_

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ctx_core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CTX_VALUE_HEADER 24    /* the smallest header of any string format (v2) */
#define CTX_VALUE_HEADER_V3 44
#define CTX_VALUE_RECORD 12    /* v2 window record */
#define CTX_VALUE_RECORD_V3 8  /* v3 window record: the digest alone */
#define CTX_VALUE_SCHEMA_MAX 128
#define CTX_VALUE_BY_MAX 65535
#define CTX_WRITE_ID_MAX 64
#define CTX_DIGEST_LEN 8
#define CTX_INC_LEN 8
#define CTX_FIELD_BITS 31
#define CTX_MASK_WHOLE 0x80000000u /* v2 only */
#define CTX_DELTA_MAX 0xFFFFFFFFu
#define CTX_FIELD_NUMBER_MAX 536870911u

/* A parsed value: pointers into the caller's buffer. */
typedef struct {
  int format;                   /* 3, 2, or 1 (a protocol-1 hash the caller filled in) */
  uint64_t version;
  uint64_t updated_ms;
  int n;                        /* window records */
  const unsigned char* window;  /* n records, newest first (stride: ctx_Value_RecordSize) */
  const unsigned char* incarnation; /* CTX_INC_LEN bytes; NULL before v3 */
  uint64_t floor;               /* v3 */
  uint32_t cmask;               /* v3 */
  const unsigned char* deltas;  /* v3: popcount(cmask) u32 LE */
  const char* schema;
  size_t schema_len;
  const char* updated_by;
  size_t by_len;
  const char* payload;
  size_t payload_len;
} ctx_Value;

/* The field clocks a write stores (v3): floor, cmask and one delta per bit. */
typedef struct {
  uint64_t floor;
  uint32_t cmask;
  uint32_t delta[CTX_FIELD_BITS]; /* by bit; only bits in cmask are meaningful */
} ctx_Clocks;

/* True when buf holds a v3 or v2 context value (the type rule); fills `out`. */
bool ctx_Value_Parse(const char* buf, size_t len, ctx_Value* out);

/* Bytes per window record of v's format. */
static inline size_t ctx_Value_RecordSize(const ctx_Value* v) {
  return v->format >= 3 ? CTX_VALUE_RECORD_V3 : CTX_VALUE_RECORD;
}

/* The oldest version the window describes: version - n + 1. */
uint64_t ctx_Value_OldestKnown(const ctx_Value* v);

/* The version produced by the write whose digest is `digest`, or 0 when it is
 * not in the window (an all-zero digest never matches). */
uint64_t ctx_Value_FindWrite(const ctx_Value* v, const unsigned char digest[CTX_DIGEST_LEN]);

/* v2/v1 only: OR of the masks of the writes that produced base+1 .. version.
 * False when the window does not reach back to base + 1. */
bool ctx_Value_MaskSince(const ctx_Value* v, uint64_t base, uint32_t* mask);

/* The mask bit of top-level field `number` (>= 1). */
static inline uint32_t ctx_FieldBit(uint32_t number) {
  return (uint32_t)1 << ((number - 1) % CTX_FIELD_BITS);
}

/* v3: the clock of bit index `bit` (0..30): floor + delta, or floor. */
uint64_t ctx_Value_Clock(const ctx_Value* v, int bit);

/* The patch conflict rule for one field of U = FIELDS u READS: true when a
 * write based on `base` must report field `number` as changed. base > version:
 * true; base == version: false; else v3: floor > base or clock > base; v2/v1:
 * the window-mask rule (the whole bit, or a window that does not reach back,
 * counts as every field). */
bool ctx_Value_FieldChanged(const ctx_Value* v, uint64_t base, uint32_t number);

/* The clocks of a whole-context write (create, CTX.CAS): floor = version, no
 * deltas. */
void ctx_Clocks_Whole(ctx_Clocks* c, uint64_t version);

/* The clocks of a CTX.PATCH of `prev` (v3: its clocks; v2/v1: floor = its
 * version) that produces `version` and writes the fields of `bits`. When a
 * delta would exceed CTX_DELTA_MAX the result is ctx_Clocks_Whole(version). */
void ctx_Clocks_Patch(ctx_Clocks* c, const ctx_Value* prev, uint64_t version, uint32_t bits);

/* 16 lowercase hex digits and a NUL. */
void ctx_Incarnation_Hex(const unsigned char inc[CTX_INC_LEN], char out[2 * CTX_INC_LEN + 1]);

/* Parses 16 hex digits (either case), not all zero. */
bool ctx_Incarnation_Parse(const char* s, size_t len, unsigned char out[CTX_INC_LEN]);

/* True when all CTX_INC_LEN bytes are zero. */
bool ctx_Incarnation_IsZero(const unsigned char inc[CTX_INC_LEN]);

/* The records a write keeps of `prev` (may be NULL) under a window of `window` records
 * (clamped to 1..CTX_WINDOW_MAX): min(prev->n, window - 1), so the written value holds at most
 * `window` records; a value written under a larger window is trimmed by its next write. */
int ctx_Value_KeptRecords(const ctx_Value* prev, int window);

/* Size of a v3 value written with ctx_Value_Write; `prev` (may be NULL) is the
 * value it replaces, whose newest digests stay in the window of `window`
 * records (the schema's WINDOW setting). */
size_t ctx_Value_Size(const ctx_Value* prev, int window, const ctx_Clocks* clocks,
                      size_t schema_len, size_t by_len, size_t payload_len);

/* Writes the v3 value into `out` (ctx_Value_Size bytes, same `window`):
 * version, the incarnation, the clocks, the new record (digest may be NULL:
 * zero), the newest digests of `prev` (any format, ctx_Value_KeptRecords of
 * them), schema, writer and payload. `prev` and the strings must not overlap
 * `out`. */
void ctx_Value_Write(char* out, const ctx_Value* prev, int window, uint64_t version,
                     uint64_t updated_ms, const unsigned char inc[CTX_INC_LEN],
                     const ctx_Clocks* clocks, const unsigned char* digest,
                     const char* schema, size_t schema_len, const char* by,
                     size_t by_len, const char* payload, size_t payload_len);

/* ---- schema facts a patch needs ---- */

/* True when `number` is a top-level field of the schema's message. */
bool ctx_Schema_HasTopField(const ctx_Schema* s, uint32_t number);

/* How the version field is put on the wire by the splice. */
typedef enum {
  kCtx_VEnc_Varint = 0,   /* int32, int64, uint32, uint64 */
  kCtx_VEnc_Zigzag = 1,   /* sint32, sint64 */
  kCtx_VEnc_Fixed32 = 2,  /* fixed32, sfixed32 */
  kCtx_VEnc_Fixed64 = 3,  /* fixed64, sfixed64 */
} ctx_VersionEncoding;

typedef struct {
  uint32_t number;
  ctx_VersionEncoding enc;
  uint64_t max; /* the largest version the field's type holds */
} ctx_VersionField;

void ctx_Schema_VersionFieldInfo(const ctx_Schema* s, ctx_VersionField* out);

/* Checks the writer's field numbers (FIELDS, then READS, each in the order
 * given) against the schema: kCtx_Field for a number that is not a top-level
 * field or is the version field. */
bool ctx_Patch_CheckFields(const ctx_Schema* s, const uint32_t* fields, int nfields,
                           const uint32_t* reads, int nreads, ctx_Status* status);

/* The splice (docs/PROTOCOL.md, "CTX.PATCH"): the fields of `cur` not in
 * `fields` and not the version field, then every field of `patch`, then the
 * version field with `version`. With out == NULL only computes *out_len.
 * Errors: kCtx_Field (a field of `patch` not in `fields`), kCtx_Invalid
 * (unparseable top-level structure of `patch` or `cur`). */
bool ctx_Splice(const char* cur, size_t cur_len, const char* patch, size_t patch_len,
                const uint32_t* fields, int nfields, const ctx_VersionField* vf,
                uint64_t version, char* out, size_t* out_len, ctx_Status* status);

/* ctx_Splice with APPEND fields `apps` (docs/PROTOCOL.md, "Appends"): the
 * patch may also hold fields of `apps`, whose stored occurrences stay (the new
 * ones follow them); with napps > 0 the version field goes first instead of
 * last. napps == 0 is ctx_Splice. */
bool ctx_SpliceAppend(const char* cur, size_t cur_len, const char* patch, size_t patch_len,
                      const uint32_t* fields, int nfields, const uint32_t* apps, int napps,
                      const ctx_VersionField* vf, uint64_t version, char* out,
                      size_t* out_len, ctx_Status* status);

/* The version field's bytes as the splice writes them; out may be NULL. At
 * most 15 bytes. */
size_t ctx_PutVersion(char* out, const ctx_VersionField* vf, uint64_t version);

/* The length of the version field at the start of `cur` when `cur` starts
 * with exactly the bytes ctx_PutVersion writes for `version` (forward
 * parsing from offset 0 is unambiguous), else 0. */
size_t ctx_Append_VersionPrefix(const char* cur, size_t cur_len, const ctx_VersionField* vf,
                                uint64_t version);

/* Checks the APPEND numbers: top-level, not the version field, repeated (a
 * map is: its entries are appended), not in FIELDS (kCtx_Field). */
bool ctx_Append_CheckFields(const ctx_Schema* s, const uint32_t* apps, int napps,
                            const uint32_t* fields, int nfields, ctx_Status* status);

/* True when the top-level message has proto2 required fields (an append's new
 * elements alone cannot be validated then). */
bool ctx_Schema_TopHasRequired(const ctx_Schema* s);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* CTX_VALUE_H_ */
