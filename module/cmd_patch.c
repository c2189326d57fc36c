/* cmd_patch.c - CTX.PATCH: a field-level write of a context (FIELDS) and
 * its APPEND form, with an in-place append to a v3 value when no field
 * changes. Shared write plumbing is in cmd_data.c (cmd_data.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cmd_data.h"
#include "core/ctx_value.h"
#include "ctx_module.h"
#include "metrics.h"

/* ---- CTX.PATCH ---- */

typedef struct {
  uint32_t value;
  int pos;
} numpos;

static int cmp_numpos(const void *a, const void *b) {
  const numpos *x = a, *y = b;
  if (x->value != y->value) return x->value < y->value ? -1 : 1;
  return x->pos - y->pos;
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

/* Parses `count` field numbers at argv[i..]; replies and returns false on a
 * bad number or a number given twice (the first repeat in argument order). */
static bool parse_fields(RedisModuleCtx *ctx, RedisModuleString **argv, int i, int count,
                         const char *list, uint32_t *out) {
  for (int k = 0; k < count; k++) {
    long long f;
    if (RedisModule_StringToLongLong(argv[i + k], &f) != REDISMODULE_OK || f < 1 ||
        f > CTX_FIELD_NUMBER_MAX) {
      RedisModule_ReplyWithError(ctx,
                                 "ERR field numbers must be integers from 1 to 536870911");
      return false;
    }
    out[k] = (uint32_t)f;
  }
  if (count < 2) return true;
  numpos *np = RedisModule_Alloc(sizeof(*np) * (size_t)count);
  for (int k = 0; k < count; k++) np[k] = (numpos){out[k], k};
  qsort(np, (size_t)count, sizeof(*np), cmp_numpos);
  int first = -1; /* argument position of the earliest repeat */
  for (int k = 1; k < count; k++) {
    if (np[k].value == np[k - 1].value && (first < 0 || np[k].pos < first)) first = np[k].pos;
  }
  RedisModule_Free(np);
  if (first >= 0) {
    char buf[96];
    snprintf(buf, sizeof(buf), "ERR field %u is listed twice in %s", out[first], list);
    RedisModule_ReplyWithError(ctx, buf);
    return false;
  }
  return true;
}

/* Parses the count at argv[i] of FIELDS/READS: 0..(arguments left). */
static bool parse_count(RedisModuleString *arg, int left, int min, int *out) {
  long long n;
  if (RedisModule_StringToLongLong(arg, &n) != REDISMODULE_OK || n < min || n > left) {
    return false;
  }
  *out = (int)n;
  return true;
}

/* An append without FIELDS to a v3 value whose payload starts with the version
 * field (docs/PROTOCOL.md, "Appends", the in-place path): the header and the
 * version field are rewritten where they are and the new elements are added
 * after the stored bytes (RM_StringTruncate grows the string geometrically),
 * so the time does not depend on the context's length. Only the new elements
 * are validated: the stored payload was valid and an element is validated
 * alone exactly as inside the message. Returns 0 when the value does not fit
 * the path (the caller splices), 1 when written, -1 with st set on a refusal.
 * Propagates `SETRANGE key 0 <header and version field>` and `APPEND key
 * <elements>` (and `PEXPIREAT` with PX), which Redis wraps in MULTI/EXEC. */
static int append_in_place(RedisModuleCtx *ctx, RedisModuleKey *key, RedisModuleString *keyname,
                           const ctx_State *s, const ctx_Schema *schema,
                           const ctx_VersionField *vf, const ctx_WriteOpts *o,
                           const ctx_Clocks *clocks, const char *q, size_t qlen,
                           ctx_Status *st) {
  const ctx_Value *v = &s->v;
  /* cmask != 0: a splice rebuilt the payload after the last whole write, so the version
   * field occurs once (a CTX.CAS payload may repeat it; the last occurrence counts) */
  if (v->format != 3 || s->v1 || v->cmask == 0 || ctx_Schema_TopHasRequired(schema)) return 0;
  uint64_t cur = v->version;
  size_t vlen = ctx_Append_VersionPrefix(v->payload, v->payload_len, vf, cur);
  if (!vlen || ctx_PutVersion(NULL, vf, cur + 1) != vlen) return 0;
  size_t by_len;
  const char *by_p = str_or_empty(o->by, &by_len);
  size_t old_total = RedisModule_ValueLength(key);
  size_t old_hdr = old_total - v->payload_len;
  if (v->payload_len + qlen > ctx_config.limits.max_payload_bytes) {
    ctx_Status_Set(st, kCtx_TooBig, "payload is %zu bytes, the limit is %zu",
                   v->payload_len + qlen, ctx_config.limits.max_payload_bytes);
    return -1;
  }
  if (old_total + qlen > CTX_STRING_MAX) return 0; /* the splice path reports it */
  /* the new elements alone, whether or not the write then goes in place: an error names
   * them as cas.lua does (items[0], not their index in the merged payload) */
  ctx_PayloadVersion pv;
  if (!ctx_Validate(schema, q, qlen, &ctx_config.limits, &pv, st)) return -1;
  int window = ctx_Registry_LastWindow(); /* of the schema write_schema resolved */
  if (ctx_Value_Size(v, window, clocks, v->schema_len, by_len, 0) != old_hdr) return 0;

  size_t plen = old_hdr + vlen;
  char stackbuf[512];
  char *buf = plen <= sizeof(stackbuf) ? stackbuf : RedisModule_Alloc(plen);
  char venc[24];
  ctx_PutVersion(venc, vf, cur + 1);
  unsigned char inc[CTX_INC_LEN];
  write_incarnation(s, o, inc);
  mstime_t now = RedisModule_Milliseconds();
  /* reads `v` (the window, schema name) before the string moves */
  ctx_Value_Write(buf, v, window, cur + 1, (uint64_t)now, inc, clocks, o->id ? o->digest : NULL,
                  v->schema, v->schema_len, by_p, by_len, venc, vlen);
  RedisModule_StringTruncate(key, old_total + qlen);
  size_t len;
  char *dst = RedisModule_StringDMA(key, &len, REDISMODULE_WRITE);
  memcpy(dst, buf, plen);
  if (qlen) memcpy(dst + old_total, q, qlen);
  long long at = o->px ? (long long)now + o->px_ms : 0;
  if (o->px) set_abs_expire(key, at);
  RedisModule_Replicate(ctx, "SETRANGE", "slb", keyname, 0LL, buf, plen);
  if (qlen) RedisModule_Replicate(ctx, "APPEND", "sb", keyname, q, qlen);
  if (o->px) RedisModule_Replicate(ctx, "PEXPIREAT", "sl", keyname, at);
  if (buf != stackbuf) RedisModule_Free(buf);
  RedisModule_SignalModifiedKey(ctx, keyname);
  RedisModule_NotifyKeyspaceEvent(ctx, REDISMODULE_NOTIFY_STRING, "set", keyname);
  return 1;
}

/* CTX.PATCH key base_version payload FIELDS n f1..fn [APPEND m a1..am]
 *           [READS m r1..rm] [SCHEMA name] [BY writer] [ID write_id] [INC incarnation] [PX ms] */
int ctx_PatchCommand(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  if (argc < 4) return RedisModule_WrongArity(ctx);

  long long base;
  if (!parse_version(argv[2], &base)) return reply_bad_version(ctx, "base_version");
  ctx_WriteOpts o;
  memset(&o, 0, sizeof(o));
  uint32_t *fields = NULL, *reads = NULL, *uni = NULL, *apps = NULL, *wrote = NULL;
  int nfields = -1, nreads = -1, napps = -1, nuni = 0;
  char *merged = NULL;
  RedisModuleKey *key = NULL;
  ctx_State s;
  memset(&s, 0, sizeof(s));
  ctx_Status st;

  /* 1. syntax */
  for (int i = 4; i < argc;) {
    int r = parse_write_opt(ctx, argv, argc, i,
                            kOpt_Schema | kOpt_By | kOpt_Id | kOpt_Inc | kOpt_Px, &o);
    if (r < 0) goto done;
    if (r > 0) {
      i += 2;
      continue;
    }
    bool is_fields = ctx_ArgIs(argv[i], "FIELDS"), is_reads = ctx_ArgIs(argv[i], "READS");
    bool is_app = ctx_ArgIs(argv[i], "APPEND");
    int *cnt = is_fields ? &nfields : is_app ? &napps : &nreads;
    if ((!is_fields && !is_reads && !is_app) || *cnt >= 0 || i + 1 >= argc) {
      RedisModule_ReplyWithError(ctx, "ERR syntax error");
      goto done;
    }
    if (!parse_count(argv[i + 1], argc - i - 2, is_reads ? 0 : 1, cnt)) {
      RedisModule_ReplyWithError(
          ctx, is_fields ? "ERR FIELDS needs a count from 1 to the field numbers that follow"
               : is_app  ? "ERR APPEND needs a count from 1 to the field numbers that follow"
                         : "ERR READS needs a count from 0 to the field numbers that follow");
      goto done;
    }
    uint32_t **list = is_fields ? &fields : is_app ? &apps : &reads;
    *list = RedisModule_Alloc(sizeof(uint32_t) * (size_t)(*cnt + 1));
    if (!parse_fields(ctx, argv, i + 2, *cnt,
                      is_fields ? "FIELDS" : is_app ? "APPEND" : "READS", *list)) {
      goto done;
    }
    i += 2 + *cnt;
  }
  if (nfields < 0 && napps < 0) {
    RedisModule_ReplyWithError(ctx, "ERR FIELDS is required");
    goto done;
  }
  if (nfields < 0) nfields = 0;
  if (napps < 0) napps = 0;
  if (nreads < 0) nreads = 0;
  if (o.id) write_digest(o.id, o.digest);
  /* U = FIELDS u READS, ascending, each once */
  uni = RedisModule_Alloc(sizeof(uint32_t) * (size_t)(nfields + nreads + 1));
  if (nfields) memcpy(uni, fields, sizeof(uint32_t) * (size_t)nfields);
  if (nreads) memcpy(uni + nfields, reads, sizeof(uint32_t) * (size_t)nreads);
  qsort(uni, (size_t)(nfields + nreads), sizeof(uint32_t), cmp_u32);
  for (int k = 0; k < nfields + nreads; k++) {
    if (nuni == 0 || uni[nuni - 1] != uni[k]) uni[nuni++] = uni[k];
  }

  /* 2. key type */
  key = RedisModule_OpenKey(ctx, argv[1], REDISMODULE_READ | REDISMODULE_WRITE);
  state_kind kind = state_read(key, &s);
  if (kind == kState_WrongType) {
    reply_wrongtype(ctx);
    goto done;
  }
  /* 3. incarnation */
  if (!check_incarnation(ctx, &s, base, &o)) goto done;
  /* 4. replay */
  if (o.id && kind == kState_Context) {
    uint64_t produced = ctx_Value_FindWrite(&s.v, o.digest);
    if (produced) {
      reply_replayed(ctx, produced);
      goto done;
    }
  }
  /* 5. conflict */
  uint64_t cur = kind == kState_Context ? s.v.version : 0;
  if (kind == kState_Absent && base != 0) {
    ctx_Metrics_Conflict(kCtx_Conflict_Stale, argv[1], 0, base); /* metrics.c */
    ctx_stats.cas_conflicts++;
    RedisModule_ReplyWithNull(ctx);
    goto done;
  }
  if (kind == kState_Context && (uint64_t)base != cur) {
    int nchanged = 0;
    for (int k = 0; k < nuni; k++) {
      if (ctx_Value_FieldChanged(&s.v, (uint64_t)base, uni[k])) uni[nchanged++] = uni[k];
    }
    if (nchanged) {
      ctx_Metrics_PatchConflict(argv[1], cur, (uint64_t)base, uni, nchanged, fields,
                                nfields); /* metrics.c */
      ctx_stats.cas_conflicts++;
      reply_state(ctx, &s, 8);
      RedisModule_ReplyWithArray(ctx, nchanged);
      for (int k = 0; k < nchanged; k++) RedisModule_ReplyWithLongLong(ctx, uni[k]);
      reply_incarnation(ctx, &s);
      goto done;
    }
  }
  /* 5b. an append with an id whose base the window does not cover: a re-send
   * of it could not be told from a new write, so it is refused unapplied */
  if (napps && o.id && kind == kState_Context &&
      (uint64_t)base + 1 < ctx_Value_OldestKnown(&s.v)) {
    RedisModule_ReplyWithArray(ctx, 2); /* not a conflict: no counter */
    RedisModule_ReplyWithSimpleString(ctx, "rebase");
    RedisModule_ReplyWithLongLong(ctx, (long long)cur);
    goto done;
  }
  /* 6. schema */
  const char *name;
  size_t nlen;
  const ctx_Schema *schema = write_schema(ctx, argv[1], &s, o.schema, &name, &nlen, &st);
  if (!schema) goto reject;
  /* 7. fields */
  if (!ctx_Patch_CheckFields(schema, fields, nfields, reads, nreads, &st)) goto reject;
  if (!ctx_Append_CheckFields(schema, apps, napps, fields, nfields, &st)) goto reject;
  /* the fields this write changes, for the clocks and the history */
  wrote = RedisModule_Alloc(sizeof(uint32_t) * (size_t)(nfields + napps + 1));
  if (nfields) memcpy(wrote, fields, sizeof(uint32_t) * (size_t)nfields);
  if (napps) memcpy(wrote + nfields, apps, sizeof(uint32_t) * (size_t)napps);
  ctx_VersionField vf;
  ctx_Schema_VersionFieldInfo(schema, &vf);
  if (cur + 1 > vf.max) {
    ctx_Status_Set(&st, kCtx_Version, "version %llu does not fit the version field",
                   (unsigned long long)(cur + 1));
    goto reject;
  }
  size_t plen, mlen;
  const char *payload = RedisModule_StringPtrLen(argv[3], &plen);
  ctx_Clocks clocks;
  if (kind == kState_Absent) {
    ctx_Clocks_Whole(&clocks, cur + 1);
  } else {
    uint32_t bits = 0;
    for (int k = 0; k < nfields + napps; k++) bits |= ctx_FieldBit(wrote[k]);
    ctx_Clocks_Patch(&clocks, &s.v, cur + 1, bits);
  }
  /* 8a. an append: in place when the value allows */
  if (napps && nfields == 0 && kind == kState_Context) {
    size_t sl;
    /* the new elements must be APPEND fields (the splice's check, no copy) */
    if (!ctx_SpliceAppend("", 0, payload, plen, NULL, 0, apps, napps, &vf, cur + 1, NULL,
                          &sl, &st)) {
      goto reject;
    }
    ctx_History ah; /* history.c */
    ctx_History_PrepareFeed(ctx, argv[1], s.v.schema, s.v.schema_len, &ah);
    int r = append_in_place(ctx, key, argv[1], &s, schema, &vf, &o, &clocks, payload, plen,
                            &st);
    if (r < 0) {
      ctx_History_Release(ctx, &ah);
      goto reject;
    }
    if (r > 0) {
      ctx_History_Append(ctx, &ah, key, kCtx_Change_Patch, wrote, napps, o.id);
      ctx_stats.patch_ok++;
      RedisModule_ReplyWithLongLong(ctx, (long long)(cur + 1));
      goto done;
    }
    ctx_History_Release(ctx, &ah);
  }
  /* 8. the splice */
  const char *cp = kind == kState_Context ? s.v.payload : "";
  size_t clen = kind == kState_Context ? s.v.payload_len : 0;
  if (!ctx_SpliceAppend(cp, clen, payload, plen, fields, nfields, apps, napps, &vf, cur + 1,
                        NULL, &mlen, &st)) {
    goto reject;
  }
  /* Step 9's size check before the merged payload is built: a large stored
   * payload plus a large patch would otherwise take up to 1 GB (two 512 MB
   * bulk strings) only to be refused. Same reply as ctx_Validate's. */
  if (mlen > ctx_config.limits.max_payload_bytes) {
    ctx_Status_Set(&st, kCtx_TooBig, "payload is %zu bytes, the limit is %zu", mlen,
                   ctx_config.limits.max_payload_bytes);
    goto reject;
  }
  merged = RedisModule_Alloc(mlen ? mlen : 1);
  ctx_SpliceAppend(cp, clen, payload, plen, fields, nfields, apps, napps, &vf, cur + 1, merged,
                   &mlen, &st);
  /* 9. size and validation of the merged payload */
  ctx_PayloadVersion pv;
  if (!ctx_Validate(schema, merged, mlen, &ctx_config.limits, &pv, &st)) goto reject;

  /* 10. write */
  /* `name` may point into the stored value: write_value reads it before the
   * key is replaced. */
  ctx_History hist; /* history.c */
  ctx_History_PrepareFeed(ctx, argv[1], name, nlen, &hist);
  if (!write_value(ctx, key, argv[1], &s, cur + 1, &o, &clocks, name, nlen, merged, mlen,
                   &st)) {
    ctx_History_Release(ctx, &hist);
    goto reject;
  }
  ctx_History_Append(ctx, &hist, key, kind == kState_Absent ? kCtx_Change_Create
                     : kCtx_Change_Patch, wrote, nfields + napps, o.id);
  ctx_stats.patch_ok++;
  if (napps) { /* an append replies the version alone: the payload may be long */
    RedisModule_ReplyWithLongLong(ctx, (long long)(cur + 1));
    goto done;
  }
  RedisModule_ReplyWithArray(ctx, 2);
  RedisModule_ReplyWithLongLong(ctx, (long long)(cur + 1));
  RedisModule_ReplyWithStringBuffer(ctx, merged, mlen);
  goto done;

reject:
  if (st.code == kCtx_Schema && s.kind == kState_Context) { /* metrics.c */
    ctx_Metrics_Conflict(kCtx_Conflict_Schema, argv[1], 0, 0);
  }
  count_rejection(&st);
  ctx_ReplyStatus(ctx, &st);
done:
  if (fields) RedisModule_Free(fields);
  if (reads) RedisModule_Free(reads);
  if (apps) RedisModule_Free(apps);
  if (wrote) RedisModule_Free(wrote);
  if (uni) RedisModule_Free(uni);
  if (merged) RedisModule_Free(merged);
  state_free(ctx, &s);
  if (key) RedisModule_CloseKey(key);
  return REDISMODULE_OK;
}
