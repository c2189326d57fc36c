/* metrics.h - conflict metrics of INFO ctx: conflicts by cause, a histogram of
 * the version lag of conflicts, and the hottest keys by conflicts.
 *
 * The command handlers call ctx_Metrics_Conflict / ctx_Metrics_PatchConflict
 * once per conflict; ctxlink.c's INFO function calls ctx_Metrics_Info. Memory
 * is bounded: CTX_HOT_KEYS entries of at most CTX_HOT_KEY_BYTES name bytes,
 * allocated through Redis' allocator. docs/PROTOCOL.md ("INFO ctx") documents
 * the fields. */
#ifndef CTX_METRICS_H_
#define CTX_METRICS_H_

#include <stdint.h>

#include "rm.h"

typedef enum {
  kCtx_Conflict_Stale,  /* CTX.CAS / CTX.DEL (or a patch on a missing context): stale version */
  kCtx_Conflict_Field,  /* CTX.PATCH: one of its FIELDS changed since its base */
  kCtx_Conflict_Read,   /* CTX.PATCH: only fields of its READS changed */
  kCtx_Conflict_Schema, /* a write on an existing context refused with CTXSCHEMA */
  kCtx_Conflict_Causes
} ctx_ConflictCause;

#define CTX_HOT_KEYS 16         /* keys tracked (and shown) by the top-k sketch */
#define CTX_HOT_KEY_BYTES 128   /* bytes of a key name kept; longer names are cut */
#define CTX_LAG_BUCKETS 11      /* lag <= 1, 2, 4, ..., 1024; then +inf */

/* One conflict on `key`. For the version causes `current - expected` goes to
 * the lag histogram (a lag <= 0, a write ahead of the stored version, is
 * counted apart); a schema conflict has no lag (pass 0, 0). */
void ctx_Metrics_Conflict(ctx_ConflictCause cause, RedisModuleString *key, long long current,
                          long long expected);

/* A CTX.PATCH conflict: `changed` (n) are the field numbers the reply lists;
 * the cause is Field when one of them is in `fields` (nfields), else Read (or
 * Stale when the base is ahead of the stored version). */
void ctx_Metrics_PatchConflict(RedisModuleString *key, uint64_t current, uint64_t base,
                               const uint32_t *changed, int n, const uint32_t *fields,
                               int nfields);

/* The fields of INFO ctx's "conflicts" section. */
void ctx_Metrics_Info(RedisModuleInfoCtx *ctx);

#endif /* CTX_METRICS_H_ */
