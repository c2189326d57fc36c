/* ctx_core.h - the ctxlink validation core.
 *
 * Loads schemas from serialized FileDescriptorSets and checks payloads against
 * them with upb. This header and its .c files never include the Redis module
 * header: the Redis module and the SDK's cffi extension compile the very same
 * files, so both reach the very same verdicts.
 *
 * Conventions (upb's): prefixed names, inputs first, a status object for
 * errors, arenas for parse-time memory.
 */
#ifndef CTX_CORE_H_
#define CTX_CORE_H_

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- memory --------------------------------------------------------------
 *
 * Every allocation of the core, and every allocation upb makes (upb allocates
 * only through its global allocator, which ctx_SetAllocator points at these
 * hooks), goes through ctx_malloc & co. The Redis module sets the hooks to
 * RedisModule_Alloc & co on load; without a call the core uses libc (the
 * SDK's cffi extension). Each block carries a 16-byte size header, so the core
 * knows how many bytes are live (ctx_AllocatedBytes) and how many a compiled
 * schema holds (ctx_Schema_MemoryBytes).
 *
 * Set the hooks once, before the core allocates anything: a block must be
 * freed by the allocator that made it. Not thread-safe. */
typedef struct {
  void* (*malloc)(size_t);
  void* (*realloc)(void*, size_t);
  void (*free)(void*);
} ctx_Allocator;

void ctx_SetAllocator(const ctx_Allocator* a); /* NULL restores libc */

void* ctx_malloc(size_t n);
void* ctx_calloc(size_t n, size_t size);
void* ctx_realloc(void* p, size_t n);
void ctx_free(void* p);

/* Bytes currently allocated through the hooks (core and upb, headers included). */
size_t ctx_AllocatedBytes(void);

/* The outcome of a core call. Each code maps to one stable error prefix. */
typedef enum {
  kCtx_Ok = 0,
  kCtx_Invalid = 1,  /* CTXINVALID: the payload fails validation */
  kCtx_TooBig = 2,   /* CTXTOOBIG: payload or its decoded form over a limit */
  kCtx_Version = 3,  /* CTXVERSION: version field is not expected + 1 */
  kCtx_Schema = 4,   /* CTXSCHEMA: bad descriptor set, type, version field... */
  kCtx_NoMemory = 5, /* allocation failed (reported as ERR) */
  kCtx_Field = 6,    /* CTXFIELD: a patch names a field it may not write or read */
} ctx_Code;

#define CTX_STATUS_MSG_MAX 256

typedef struct {
  ctx_Code code;
  char msg[CTX_STATUS_MSG_MAX]; /* human text, without the code prefix */
} ctx_Status;

/* The stable error prefix for a code ("CTXINVALID", ...; "ERR" for NoMemory). */
const char* ctx_Code_Prefix(ctx_Code code);

void ctx_Status_Clear(ctx_Status* s);
void ctx_Status_Set(ctx_Status* s, ctx_Code code, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Limits applied to one payload. */
typedef struct {
  size_t max_payload_bytes; /* larger payloads: kCtx_TooBig */
  int max_depth;            /* message nesting levels below the root */
  bool allow_unknown;       /* accept unknown field numbers */
} ctx_Limits;

#define CTX_DEFAULT_MAX_PAYLOAD_BYTES ((size_t)1 << 20)
#define CTX_DEFAULT_MAX_DEPTH 32
#define CTX_MAX_DEPTH_LIMIT 100
#define CTX_DEFAULT_MAX_SCHEMA_BYTES ((size_t)4 << 20)

void ctx_Limits_Default(ctx_Limits* l);

/* A compiled schema: one message type in its own upb def pool. */
typedef struct ctx_Schema ctx_Schema;

/* Builds a schema from a serialized google.protobuf.FileDescriptorSet.
 * `vfield` may be NULL (then "version"). Files may appear in any order.
 * Returns NULL with status kCtx_Schema (or kCtx_NoMemory) on failure. */
ctx_Schema* ctx_Schema_Build(const char* fds, size_t fds_len, const char* type,
                             size_t type_len, const char* vfield,
                             size_t vfield_len, size_t max_schema_bytes,
                             ctx_Status* status);

void ctx_Schema_Free(ctx_Schema* s);

const char* ctx_Schema_TypeName(const ctx_Schema* s);

/* Bytes a compiled schema holds (def pool, descriptor arena, walk plans): the
 * growth of ctx_AllocatedBytes across its ctx_Schema_Build. */
size_t ctx_Schema_MemoryBytes(const ctx_Schema* s);
const char* ctx_Schema_VersionField(const ctx_Schema* s);

/* ---- compatibility between revisions (docs/PROTOCOL.md, "Compatibility") ----
 *
 * Categories named after buf's breaking-change categories. WIRE: a reader of
 * either revision decodes what the other wrote, field by field. WIRE_JSON (the
 * default): WIRE, and the JSON form of a payload keeps its meaning too (field
 * names, json names, string vs bytes, enum value names). */
typedef enum { kCtx_Compat_WireJson = 0, kCtx_Compat_Wire = 1 } ctx_Compat;

/* "WIRE_JSON" or "WIRE", ASCII case ignored; false for anything else.
 * ctx_Compat_Name gives the canonical (upper-case) name that the registry's
 * `compat` field holds. */
bool ctx_Compat_Parse(const char* s, size_t len, ctx_Compat* out);
const char* ctx_Compat_Name(ctx_Compat mode);

/* True when `next` keeps every rule of `mode` against `prev`. Otherwise false
 * with kCtx_Schema: "incompatible schema (<CATEGORY>, <RULE>): ... (use FORCE
 * to override[, or COMPAT WIRE])" naming the field (or kCtx_NoMemory). */
bool ctx_Schema_CheckCompatible(const ctx_Schema* prev, const ctx_Schema* next,
                                ctx_Compat mode, ctx_Status* status);

/* The whole decision of a registration over an existing entry, shared by both
 * engines: `force` -> true; `prev` NULL (the registered revision does not
 * parse) -> false with kCtx_Schema "the registered revision cannot be read;
 * use FORCE to replace it"; else ctx_Schema_CheckCompatible. */
bool ctx_Schema_CheckChange(const ctx_Schema* prev, const ctx_Schema* next,
                            ctx_Compat mode, bool force, ctx_Status* status);

/* ---- the registry's rules ------------------------------------------------ */

#define CTX_SCHEMA_NAME_MAX 128
/* Per-context history (docs/PROTOCOL.md, "History"): the most changes a schema's
 * HISTORY setting keeps per context, and the most payload bytes an entry keeps
 * (a larger payload is recorded without it). */
#define CTX_HISTORY_MAX 1000
#define CTX_HISTORY_PAYLOAD_MAX 65536
/* The change feed (docs/PROTOCOL.md, "Change feed"): the most changes a schema's FEED
 * setting keeps in its stream `__ctxf:<schema>`. */
#define CTX_FEED_MAX 10000000
/* The write-id window (docs/PROTOCOL.md, "Storage format" and "Write ids"): the most write
 * records a schema's WINDOW setting keeps per context (the value header's count is one byte),
 * and the window of a schema without the setting. */
#define CTX_WINDOW_MAX 255
#define CTX_WINDOW_DEFAULT 16
#define CTX_BAD_NAME_MSG "invalid schema name: 1 to 128 bytes of A-Z a-z 0-9 _ . - :"

/* True when `name` is a legal schema name: 1 to CTX_SCHEMA_NAME_MAX bytes of
 * A-Z a-z 0-9 _ . - : (nothing else, no trailing newline). Otherwise false
 * with kCtx_Schema CTX_BAD_NAME_MSG. `status` may be NULL. */
bool ctx_SchemaName_Check(const char* name, size_t len, ctx_Status* status);

/* The registry entry's `digest`: lowercase hex SHA-1 of
 * "<len>:<type><len>:<vfield><fds>" (lengths in decimal bytes), NUL-terminated
 * in `out`. It names the validation definition; the compat setting is not in it. */
void ctx_Digest(const char* type, size_t type_len, const char* vfield,
                size_t vfield_len, const char* fds, size_t fds_len, char out[41]);

/* The version carried by a valid payload. */
typedef struct {
  int64_t value;
  bool in_range; /* false when an unsigned value does not fit int64 */
} ctx_PayloadVersion;

/* The bytes ctx_Validate may hold to check the required fields of a payload
 * of `len` bytes: CTX_REQUIRED_BUDGET_PER_BYTE * len + CTX_REQUIRED_BUDGET_BASE
 * (docs/PROTOCOL.md, "Validation"). Going over it is kCtx_TooBig. */
#define CTX_REQUIRED_BUDGET_PER_BYTE 32
#define CTX_REQUIRED_BUDGET_BASE ((size_t)64 << 10)
static inline size_t ctx_RequiredBudget(size_t len) {
  return CTX_REQUIRED_BUDGET_PER_BYTE * len + CTX_REQUIRED_BUDGET_BASE;
}

/* Validates `buf` against `schema` under `limits`; on success fills
 * `version` with the payload's version field. Memory: the walk recurses once
 * per nesting level (at most max_depth) and, for schemas with proto2 required
 * fields, holds at most ctx_RequiredBudget(len) bytes. */
bool ctx_Validate(const ctx_Schema* schema, const char* buf, size_t len,
                  const ctx_Limits* limits, ctx_PayloadVersion* version,
                  ctx_Status* status);

/* ---- Lua plan ----------------------------------------------------------------
 *
 * The Lua engine's validation plan for `s`, as a Lua fragment (module/core/
 * ctx_luaplan.c documents what it defines; docs/PROTOCOL.md, "The validation
 * plan"): the SDK puts it between lua/prelude.lua and the body of cas.lua.
 * `digest` is the registry entry's digest (40 lowercase hex digits). On
 * success *out holds *out_len bytes (NUL-terminated) from ctx_malloc: the
 * caller frees them with ctx_free. */
bool ctx_Schema_LuaPlan(const ctx_Schema* s, const char digest[40], char** out,
                        size_t* out_len, ctx_Status* status);

/* The digest of write id `id` a window record holds: the first 8 bytes of
 * SHA-1(id) (the module's CTX.CAS/PATCH ... ID; the SDK passes it to the Lua
 * engine's cas.lua, ARGV[19], so the script does not hash). */
void ctx_WriteDigest(const char* id, size_t len, unsigned char out[8]);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* CTX_CORE_H_ */
