/* ctx_value.h - the stored context value of protocol v2 and the field splice.
 *
 * Pure logic, no Redis header and no allocation: the caller sizes and owns
 * every buffer (compute the size, allocate, then fill). See docs/PROTOCOL.md,
 * "Storage format" and "CTX.PATCH".
 *
 *   offset 0  "CTX" 0x02
 *          4  version     u64 LE (>= 1)
 *         12  updated_ms  u64 LE
 *         20  n           u8, window records (0..16), newest first
 *         21  s           u8, schema name length (1..128)
 *         22  b           u16 LE, updated_by length
 *         24  n records of 12 bytes: digest[8] (SHA-1 prefix of the write id,
 *             zero without id), mask u32 LE
 *             then schema name, updated_by, payload
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

#define CTX_VALUE_HEADER 24
#define CTX_VALUE_RECORD 12
#define CTX_VALUE_WINDOW 16
#define CTX_VALUE_SCHEMA_MAX 128
#define CTX_VALUE_BY_MAX 65535
#define CTX_WRITE_ID_MAX 64
#define CTX_DIGEST_LEN 8
#define CTX_MASK_WHOLE 0x80000000u
#define CTX_FIELD_NUMBER_MAX 536870911u

/* A parsed value: pointers into the caller's buffer. */
typedef struct {
  uint64_t version;
  uint64_t updated_ms;
  int n;                        /* window records */
  const unsigned char* window;  /* n * CTX_VALUE_RECORD bytes, newest first */
  const char* schema;
  size_t schema_len;
  const char* updated_by;
  size_t by_len;
  const char* payload;
  size_t payload_len;
} ctx_Value;

/* True when buf holds a v2 context value (the type rule); fills `out`. */
bool ctx_Value_Parse(const char* buf, size_t len, ctx_Value* out);

/* The oldest version the window describes: version - n + 1. */
uint64_t ctx_Value_OldestKnown(const ctx_Value* v);

/* The version produced by the write whose digest is `digest`, or 0 when it is
 * not in the window (an all-zero digest never matches). */
uint64_t ctx_Value_FindWrite(const ctx_Value* v, const unsigned char digest[CTX_DIGEST_LEN]);

/* OR of the masks of the writes that produced base+1 .. version. False when
 * the window does not reach back to base + 1 (base < oldest_known - 1). */
bool ctx_Value_MaskSince(const ctx_Value* v, uint64_t base, uint32_t* mask);

/* The mask bit of top-level field `number` (>= 1). */
static inline uint32_t ctx_FieldBit(uint32_t number) {
  return (uint32_t)1 << ((number - 1) % 31);
}

/* Size of a value written with ctx_Value_Write; `prev` (may be NULL) is the
 * value it replaces, whose newest records stay in the window. */
size_t ctx_Value_Size(const ctx_Value* prev, size_t schema_len, size_t by_len,
                      size_t payload_len);

/* Writes the value into `out` (ctx_Value_Size bytes): version, the new record
 * (digest may be NULL: zero), the newest records of `prev`, schema, writer and
 * payload. `prev` may point into a different buffer than `out`. */
void ctx_Value_Write(char* out, const ctx_Value* prev, uint64_t version,
                     uint64_t updated_ms, const unsigned char* digest, uint32_t mask,
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

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* CTX_VALUE_H_ */
