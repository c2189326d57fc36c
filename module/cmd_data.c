/* cmd_data.c - CTX.CAS and the plumbing every context write shares: reading
 * a context (state_read), the replies (reply_state, reply_conflict, ...),
 * write options (parse_write_opt), incarnations, the schema a write uses,
 * write_value and the expiry helpers. CTX.PATCH is in cmd_patch.c; CTX.GET,
 * CTX.DEL and CTX.TOUCH in cmd_lifecycle.c; cmd_data.h declares what they share.
 *
 * A context is a string in storage format v3 (module/core/ctx_value.h,
 * docs/PROTOCOL.md "Storage format"); a v2 string and a v1 context hash
 * {raw, version, schema, updated_ms, updated_by} are still read, and their
 * first write replaces them with a v3 string. Every write is
 * `SET key <value> KEEPTTL` (or `PXAT <absolute ms>` with PX) on the
 * replication stream. Handlers follow one order: arity, argument parsing, key
 * type, incarnation, replay, version, schema, validation, write, propagation,
 * reply. Every error path replies once and leaves through `done`, which frees
 * what was taken. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cmd_data.h"
#include "core/ctx_value.h"
#include "ctx_module.h"
#include "metrics.h"

void state_free(RedisModuleCtx *ctx, ctx_State *s) {
  RedisModuleString **all[] = {&s->h_raw, &s->h_ver, &s->h_schema, &s->h_ms, &s->h_by};
  for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
    if (*all[i]) RedisModule_FreeString(ctx, *all[i]);
    *all[i] = NULL;
  }
}

const char *str_or_empty(RedisModuleString *s, size_t *len) {
  if (!s) {
    *len = 0;
    return "";
  }
  return RedisModule_StringPtrLen(s, len);
}

/* A v1 context hash: read as a context with an empty window. */
static state_kind state_read_v1(RedisModuleKey *key, ctx_State *s) {
  const ctx_Names *n = &ctx_names;
  RedisModule_HashGet(key, REDISMODULE_HASH_NONE, n->version, &s->h_ver, n->schema,
                      &s->h_schema, n->raw, &s->h_raw, n->updated_ms, &s->h_ms,
                      n->updated_by, &s->h_by, NULL);
  long long ver, ms = 0;
  if (!s->h_ver || RedisModule_StringToLongLong(s->h_ver, &ver) != REDISMODULE_OK ||
      ver < 1) {
    return kState_WrongType;
  }
  if (s->h_ms) RedisModule_StringToLongLong(s->h_ms, &ms);
  s->v1 = true;
  s->v.format = 1;
  s->v.version = (uint64_t)ver;
  s->v.updated_ms = (uint64_t)ms;
  s->v.n = 0;
  s->v.window = NULL;
  s->v.schema = str_or_empty(s->h_schema, &s->v.schema_len);
  s->v.updated_by = str_or_empty(s->h_by, &s->v.by_len);
  s->v.payload = str_or_empty(s->h_raw, &s->v.payload_len);
  return kState_Context;
}

/* Reads the context at `key` (the type rule of docs/PROTOCOL.md). */
state_kind state_read(RedisModuleKey *key, ctx_State *s) {
  memset(s, 0, sizeof(*s));
  switch (RedisModule_KeyType(key)) {
    case REDISMODULE_KEYTYPE_EMPTY:
      s->kind = kState_Absent;
      break;
    case REDISMODULE_KEYTYPE_HASH:
      s->kind = state_read_v1(key, s);
      break;
    case REDISMODULE_KEYTYPE_STRING: {
      /* The length first: short strings (integers among them) are never
       * touched by StringDMA. */
      size_t len = RedisModule_ValueLength(key);
      const char *p = len >= CTX_VALUE_HEADER ? RedisModule_StringDMA(key, &len, REDISMODULE_READ)
                                              : NULL;
      s->kind = p && ctx_Value_Parse(p, len, &s->v) ? kState_Context : kState_WrongType;
      break;
    }
    default:
      s->kind = kState_WrongType;
  }
  return s->kind;
}

/* The incarnation element: 16 lowercase hex digits, "" before v3. */
void reply_incarnation(RedisModuleCtx *ctx, const ctx_State *s) {
  if (!s->v.incarnation) {
    RedisModule_ReplyWithStringBuffer(ctx, "", 0);
    return;
  }
  char hex[2 * CTX_INC_LEN + 1];
  ctx_Incarnation_Hex(s->v.incarnation, hex);
  RedisModule_ReplyWithStringBuffer(ctx, hex, 2 * CTX_INC_LEN);
}

/* [version, raw, schema, updated_ms, updated_by, incarnation] when nelem is 6;
 * with nelem 8 [version, raw, schema, updated_ms, updated_by, oldest_known]
 * and the caller adds `changed`, then reply_incarnation. */
void reply_state(RedisModuleCtx *ctx, const ctx_State *s, int nelem) {
  const ctx_Value *v = &s->v;
  RedisModule_ReplyWithArray(ctx, nelem);
  RedisModule_ReplyWithLongLong(ctx, (long long)v->version);
  RedisModule_ReplyWithStringBuffer(ctx, v->payload, v->payload_len);
  RedisModule_ReplyWithStringBuffer(ctx, v->schema, v->schema_len);
  RedisModule_ReplyWithLongLong(ctx, (long long)v->updated_ms);
  RedisModule_ReplyWithStringBuffer(ctx, v->updated_by, v->by_len);
  if (nelem == 8) {
    RedisModule_ReplyWithLongLong(ctx, (long long)ctx_Value_OldestKnown(v));
  } else {
    reply_incarnation(ctx, s);
  }
}

/* The conflict reply of CTX.CAS / CTX.DEL: nil without a context, else the
 * state (eight elements, changed = [], when the command carried an id). */
int reply_conflict(RedisModuleCtx *ctx, const ctx_State *s, bool with_id) {
  ctx_stats.cas_conflicts++;
  if (s->kind != kState_Context) return RedisModule_ReplyWithNull(ctx);
  reply_state(ctx, s, with_id ? 8 : 6);
  if (with_id) {
    RedisModule_ReplyWithArray(ctx, 0);
    reply_incarnation(ctx, s);
  }
  return REDISMODULE_OK;
}

int reply_replayed(RedisModuleCtx *ctx, uint64_t version) {
  ctx_stats.replays++;
  RedisModule_ReplyWithArray(ctx, 2);
  RedisModule_ReplyWithSimpleString(ctx, "replayed");
  return RedisModule_ReplyWithLongLong(ctx, (long long)version);
}

int reply_wrongtype(RedisModuleCtx *ctx) {
  return RedisModule_ReplyWithError(
      ctx, "WRONGTYPE Operation against a key that is not a ctxlink context");
}

bool parse_version(RedisModuleString *arg, long long *out) {
  return RedisModule_StringToLongLong(arg, out) == REDISMODULE_OK && *out >= 0 &&
         *out <= CTX_VERSION_MAX;
}

int reply_bad_version(RedisModuleCtx *ctx, const char *what) {
  char buf[128];
  snprintf(buf, sizeof(buf), "ERR %s must be an integer from 0 to 9223372036854775806",
           what);
  return RedisModule_ReplyWithError(ctx, buf);
}

int ctx_ReplyStatus(RedisModuleCtx *ctx, const ctx_Status *st) {
  char buf[CTX_STATUS_MSG_MAX + 16];
  snprintf(buf, sizeof(buf), "%s %s", ctx_Code_Prefix(st->code), st->msg);
  return RedisModule_ReplyWithError(ctx, buf);
}

/* ---- options shared by the writes ---- */

/* Parses a PX / CTX.TOUCH duration: 1 .. 10^15 milliseconds. */
bool parse_ms(RedisModuleString *arg, long long *out) {
  return RedisModule_StringToLongLong(arg, out) == REDISMODULE_OK && *out >= 1 &&
         *out <= CTX_PX_MAX;
}

/* Takes SCHEMA / BY / ID / INC / PX at argv[i] (allowed: a mask of them).
 * Returns 1 when consumed (two arguments), 0 when argv[i] is not one of them,
 * -1 after an error reply. */

int parse_write_opt(RedisModuleCtx *ctx, RedisModuleString **argv, int argc, int i,
                    int allowed, ctx_WriteOpts *o) {
  RedisModuleString **slot = NULL;
  int which = 0;
  if (ctx_ArgIs(argv[i], "SCHEMA")) slot = &o->schema, which = kOpt_Schema;
  else if (ctx_ArgIs(argv[i], "BY")) slot = &o->by, which = kOpt_By;
  else if (ctx_ArgIs(argv[i], "ID")) slot = &o->id, which = kOpt_Id;
  else if (ctx_ArgIs(argv[i], "INC")) slot = &o->inc, which = kOpt_Inc;
  else if (ctx_ArgIs(argv[i], "PX")) slot = &o->px, which = kOpt_Px;
  if (!slot || !(allowed & which)) return 0;
  if (*slot || i + 1 >= argc) {
    RedisModule_ReplyWithError(ctx, "ERR syntax error");
    return -1;
  }
  size_t len;
  const char *val = RedisModule_StringPtrLen(argv[i + 1], &len);
  if (which == kOpt_Inc && !ctx_Incarnation_Parse(val, len, o->incarnation)) {
    RedisModule_ReplyWithError(ctx, "ERR INC must be 16 hex digits, not all zero");
    return -1;
  }
  if (which == kOpt_Px && !parse_ms(argv[i + 1], &o->px_ms)) {
    RedisModule_ReplyWithError(ctx, "ERR PX must be an integer from 1 to 1000000000000000");
    return -1;
  }
  if (which == kOpt_Id && (len < 1 || len > CTX_WRITE_ID_MAX)) {
    RedisModule_ReplyWithError(ctx, "ERR write id must be 1 to 64 bytes");
    return -1;
  }
  if (which == kOpt_By && len > CTX_VALUE_BY_MAX) {
    RedisModule_ReplyWithError(ctx, "ERR writer id is longer than 65535 bytes");
    return -1;
  }
  *slot = argv[i + 1];
  return 1;
}

/* The first 8 bytes of SHA-1(id). */
void write_digest(RedisModuleString *id, unsigned char out[CTX_DIGEST_LEN]) {
  size_t len;
  const char *p = RedisModule_StringPtrLen(id, &len);
  ctx_WriteDigest(p, len, out); /* the core's: the SDK sends the Lua engine the same bytes */
}

/* Step 3 of every write: with INC and a base version >= 1, an existing
 * context must carry that incarnation (a v1/v2 value has none). False after
 * the CTXGONE reply. */
bool check_incarnation(RedisModuleCtx *ctx, const ctx_State *s, long long base,
                       const ctx_WriteOpts *o) {
  if (!o->inc || base < 1 || s->kind != kState_Context) return true;
  if (s->v.incarnation && memcmp(s->v.incarnation, o->incarnation, CTX_INC_LEN) == 0) {
    return true;
  }
  char stored[2 * CTX_INC_LEN + 1], given[2 * CTX_INC_LEN + 1], buf[160];
  if (s->v.incarnation) {
    ctx_Incarnation_Hex(s->v.incarnation, stored);
  } else {
    memcpy(stored, "none", 5);
  }
  ctx_Incarnation_Hex(o->incarnation, given);
  snprintf(buf, sizeof(buf),
           "CTXGONE the context was deleted and re-created (incarnation %s, this write was "
           "based on %s)",
           stored, given);
  ctx_stats.gone++;
  RedisModule_ReplyWithError(ctx, buf);
  return false;
}

/* The incarnation a write stores: the context's own (v3); INC on a create;
 * else 8 fresh random bytes (a create without INC, an upgrade of v1/v2). */
void write_incarnation(const ctx_State *s, const ctx_WriteOpts *o,
                       unsigned char out[CTX_INC_LEN]) {
  if (s->kind == kState_Context && s->v.incarnation) {
    memcpy(out, s->v.incarnation, CTX_INC_LEN);
    return;
  }
  if (s->kind == kState_Absent && o->inc) {
    memcpy(out, o->incarnation, CTX_INC_LEN);
    return;
  }
  do {
    RedisModule_GetRandomBytes(out, CTX_INC_LEN);
  } while (ctx_Incarnation_IsZero(out));
}

/* ---- schema and writing ---- */

/* The schema a write uses: SCHEMA on create; the stored one on update (equal
 * to SCHEMA when given). NULL with st set. */
const ctx_Schema *write_schema(RedisModuleCtx *ctx, RedisModuleString *keyname,
                               const ctx_State *s, RedisModuleString *schema_arg,
                               const char **name, size_t *nlen, ctx_Status *st) {
  if (s->kind == kState_Absent) {
    if (!schema_arg) {
      ctx_Status_Set(st, kCtx_Schema, "schema required to create a context");
      return NULL;
    }
    *name = RedisModule_StringPtrLen(schema_arg, nlen);
  } else {
    if (s->v.schema_len == 0) {
      ctx_Status_Set(st, kCtx_Schema, "the context has no schema field");
      return NULL;
    }
    size_t al;
    const char *a = schema_arg ? RedisModule_StringPtrLen(schema_arg, &al) : NULL;
    if (a && (al != s->v.schema_len || memcmp(a, s->v.schema, al) != 0)) {
      size_t sl = s->v.schema_len;
      ctx_Status_Set(st, kCtx_Schema, "schema mismatch: the context uses '%.*s', not '%.*s'",
                     (int)(sl > 120 ? 120 : sl), s->v.schema, (int)(al > 120 ? 120 : al), a);
      return NULL;
    }
    *name = s->v.schema;
    *nlen = s->v.schema_len;
  }
  int slot = -1; /* in a cluster: the registry copy of the key's own slot */
  if (ctx_Cluster_Enabled()) {
    size_t klen;
    const char *k = RedisModule_StringPtrLen(keyname, &klen);
    slot = ctx_KeySlot(k, klen);
  }
  return ctx_Registry_Resolve(ctx, *name, *nlen, slot, st);
}

/* Sets the key's expiry to the absolute time `at` (Unix ms). On Redis 6.2
 * (no RM_SetAbsExpire) as the time left from now, at least 1 ms: the
 * primary's own expiry may then be later than the propagated `at` by the
 * time between two clock reads; replicas and the AOF get `at` exactly. */
void set_abs_expire(RedisModuleKey *key, long long at) {
  if (RedisModule_SetAbsExpire) {
    RedisModule_SetAbsExpire(key, (mstime_t)at);
    return;
  }
  long long left = at - (long long)RedisModule_Milliseconds();
  RedisModule_SetExpire(key, (mstime_t)(left > 0 ? left : 1));
}

/* Stores the new value of `key` and propagates `SET key value KEEPTTL`, or
 * with PX `SET key value PXAT <now + px>` (an absolute time, so a replica or
 * an AOF replayed later expires the key at the same moment). Reads `s` (the
 * window it extends, maybe the schema name and payload) before writing.
 * Without PX the TTL survives: a string that does not grow is rewritten in
 * place (no key re-insert, the expiry untouched); otherwise the key is
 * replaced by a string of the exact size and its expiry restored. */
bool write_value(RedisModuleCtx *ctx, RedisModuleKey *key, RedisModuleString *keyname,
                 const ctx_State *s, uint64_t version, const ctx_WriteOpts *o,
                 const ctx_Clocks *clocks, const char *schema, size_t schema_len,
                 const char *payload, size_t payload_len, ctx_Status *st) {
  const ctx_Value *prev = s->kind == kState_Context ? &s->v : NULL;
  size_t by_len;
  const char *by_p = str_or_empty(o->by, &by_len);
  /* the window of the schema write_schema resolved (its WINDOW setting) */
  int window = ctx_Registry_LastWindow();
  size_t size = ctx_Value_Size(prev, window, clocks, schema_len, by_len, payload_len);
  /* RM_StringTruncate refuses more than 512 MiB: the key would be deleted and
   * the copy below would go to StringDMA's read-only placeholder (a crash).
   * max-payload-bytes may be 512 MiB, so header + BY can push a value over. */
  if (size > CTX_STRING_MAX) {
    ctx_Status_Set(st, kCtx_TooBig, "the stored value would be %zu bytes, over Redis' %d MiB "
                   "string limit", size, CTX_STRING_MAX >> 20);
    return false;
  }
  char stackbuf[1024];
  char *buf = size <= sizeof(stackbuf) ? stackbuf : RedisModule_Alloc(size);
  unsigned char inc[CTX_INC_LEN];
  write_incarnation(s, o, inc);
  mstime_t now = RedisModule_Milliseconds();
  ctx_Value_Write(buf, prev, window, version, (uint64_t)now, inc, clocks, o->id ? o->digest : NULL,
                  schema, schema_len, by_p, by_len, payload, payload_len);

  bool in_place = prev && !s->v1 && size <= RedisModule_ValueLength(key);
  /* A new string goes in as one object that the key and the replication
   * stream share, as SET shares its argument (one allocation and one copy
   * fewer). Strings of up to 44 bytes would be made embedded by
   * RM_CreateString: they keep the truncate-and-copy path, a raw string. */
  RedisModuleString *val =
      !in_place && size > CTX_EMBSTR_MAX ? RedisModule_CreateString(ctx, buf, size) : NULL;
  if (!in_place && s->kind != kState_Absent) {
    mstime_t expire = RedisModule_GetAbsExpire ? RedisModule_GetAbsExpire(key)
                                               : RedisModule_GetExpire(key);
    RedisModule_DeleteKey(key);
    if (val) {
      RedisModule_StringSet(key, val);
    } else {
      RedisModule_StringTruncate(key, size); /* a new string of exactly `size` bytes */
    }
    if (expire != REDISMODULE_NO_EXPIRE && !o->px) {
      if (RedisModule_GetAbsExpire) {
        RedisModule_SetAbsExpire(key, expire);
      } else {
        RedisModule_SetExpire(key, expire);
      }
    }
  } else if (val) {
    RedisModule_StringSet(key, val);
  } else {
    RedisModule_StringTruncate(key, size);
  }
  if (!val) {
    size_t len;
    char *dst = RedisModule_StringDMA(key, &len, REDISMODULE_WRITE);
    memcpy(dst, buf, size);
  }
  long long at = o->px ? (long long)now + o->px_ms : 0;
  if (o->px) set_abs_expire(key, at);
  if (val && o->px) {
    RedisModule_Replicate(ctx, "SET", "sscl", keyname, val, "PXAT", at);
  } else if (val) {
    RedisModule_Replicate(ctx, "SET", "sss", keyname, val, ctx_names.keepttl);
  } else if (o->px) {
    RedisModule_Replicate(ctx, "SET", "sbcl", keyname, buf, size, "PXAT", at);
  } else {
    RedisModule_Replicate(ctx, "SET", "sbs", keyname, buf, size, ctx_names.keepttl);
  }
  if (val) RedisModule_FreeString(ctx, val);
  if (buf != stackbuf) RedisModule_Free(buf);
  RedisModule_SignalModifiedKey(ctx, keyname);
  RedisModule_NotifyKeyspaceEvent(ctx, REDISMODULE_NOTIFY_STRING, "set", keyname);
  return true;
}

void count_rejection(const ctx_Status *st) {
  switch (st->code) {
    case kCtx_Invalid: ctx_stats.rejected_invalid++; break;
    case kCtx_TooBig: ctx_stats.rejected_toobig++; break;
    case kCtx_Version: ctx_stats.rejected_version++; break;
    case kCtx_Schema: ctx_stats.rejected_schema++; break;
    case kCtx_Field: ctx_stats.rejected_field++; break;
    default: break;
  }
}

/* ---- CTX.CAS key expected_version payload [SCHEMA name] [BY writer] [ID write_id]
 *              [INC incarnation] [PX milliseconds] ---- */
int ctx_CasCommand(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  if (argc < 4) return RedisModule_WrongArity(ctx);

  long long expected;
  if (!parse_version(argv[2], &expected)) return reply_bad_version(ctx, "expected_version");
  ctx_WriteOpts o;
  memset(&o, 0, sizeof(o));
  for (int i = 4; i < argc; i += 2) {
    int r = parse_write_opt(ctx, argv, argc, i,
                            kOpt_Schema | kOpt_By | kOpt_Id | kOpt_Inc | kOpt_Px, &o);
    if (r < 0) return REDISMODULE_OK;
    if (r == 0) return RedisModule_ReplyWithError(ctx, "ERR syntax error");
  }
  if (o.id) write_digest(o.id, o.digest);

  ctx_State s;
  ctx_Status st;
  RedisModuleKey *key =
      RedisModule_OpenKey(ctx, argv[1], REDISMODULE_READ | REDISMODULE_WRITE);
  state_kind kind = state_read(key, &s);
  if (kind == kState_WrongType) {
    reply_wrongtype(ctx);
    goto done;
  }
  if (!check_incarnation(ctx, &s, expected, &o)) goto done;
  if (o.id && kind == kState_Context) {
    uint64_t produced = ctx_Value_FindWrite(&s.v, o.digest);
    if (produced) {
      reply_replayed(ctx, produced);
      goto done;
    }
  }
  long long current = kind == kState_Context ? (long long)s.v.version : 0;
  if (current != expected) {
    ctx_Metrics_Conflict(kCtx_Conflict_Stale, argv[1], current, expected); /* metrics.c */
    reply_conflict(ctx, &s, o.id != NULL);
    goto done;
  }

  const char *name;
  size_t nlen;
  const ctx_Schema *schema = write_schema(ctx, argv[1], &s, o.schema, &name, &nlen, &st);
  if (!schema) goto reject;

  size_t plen;
  const char *payload = RedisModule_StringPtrLen(argv[3], &plen);
  ctx_PayloadVersion pv;
  if (!ctx_Validate(schema, payload, plen, &ctx_config.limits, &pv, &st)) goto reject;
  if (!pv.in_range || pv.value != expected + 1) {
    if (pv.in_range) {
      ctx_Status_Set(&st, kCtx_Version, "payload version is %lld, expected %lld",
                     (long long)pv.value, expected + 1);
    } else {
      ctx_Status_Set(&st, kCtx_Version, "payload version is out of range, expected %lld",
                     expected + 1);
    }
    goto reject;
  }

  ctx_Clocks clocks;
  ctx_Clocks_Whole(&clocks, (uint64_t)expected + 1);
  ctx_History hist; /* history.c: the change goes to the context's history, when kept */
  ctx_History_PrepareFeed(ctx, argv[1], name, nlen, &hist);
  if (!write_value(ctx, key, argv[1], &s, (uint64_t)expected + 1, &o, &clocks, name, nlen,
                   payload, plen, &st)) {
    ctx_History_Release(ctx, &hist);
    goto reject;
  }
  ctx_History_Append(ctx, &hist, key, kind == kState_Absent ? kCtx_Change_Create
                     : kCtx_Change_Update, NULL, 0, o.id);
  ctx_stats.cas_ok++;
  RedisModule_ReplyWithLongLong(ctx, expected + 1);
  goto done;

reject:
  if (st.code == kCtx_Schema && kind == kState_Context) { /* metrics.c */
    ctx_Metrics_Conflict(kCtx_Conflict_Schema, argv[1], 0, 0);
  }
  count_rejection(&st);
  ctx_ReplyStatus(ctx, &st);
done:
  state_free(ctx, &s);
  RedisModule_CloseKey(key);
  return REDISMODULE_OK;
}
