/* cmd_data.c - CTX.GET, CTX.CAS, CTX.DEL: the context commands.
 *
 * A context is a plain hash {raw, version, schema, updated_ms, updated_by}
 * (docs/PROTOCOL.md). Handlers follow one order: arity, argument parsing, key
 * type, version, schema, validation, write, propagation, reply. Every error
 * path replies once and leaves through `done`, which frees what was taken. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "ctx_module.h"

#define CTX_VERSION_MAX (INT64_MAX - 1)

typedef struct {
  RedisModuleString *raw, *version, *schema, *updated_ms, *updated_by;
  long long ver;
} ctx_State;

typedef enum { kState_Absent, kState_Context, kState_WrongType } state_kind;

static void state_free(RedisModuleCtx *ctx, ctx_State *s) {
  RedisModuleString **all[] = {&s->raw, &s->version, &s->schema, &s->updated_ms,
                               &s->updated_by};
  for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
    if (*all[i]) RedisModule_FreeString(ctx, *all[i]);
    *all[i] = NULL;
  }
}

/* Reads the version and schema of the context at `key` (and, with `full`,
 * the other fields too). */
static state_kind state_read(RedisModuleKey *key, ctx_State *s, bool full) {
  memset(s, 0, sizeof(*s));
  int type = RedisModule_KeyType(key);
  if (type == REDISMODULE_KEYTYPE_EMPTY) return kState_Absent;
  if (type != REDISMODULE_KEYTYPE_HASH) return kState_WrongType;
  const ctx_Names *n = &ctx_names;
  if (full) {
    RedisModule_HashGet(key, REDISMODULE_HASH_NONE, n->version, &s->version, n->schema,
                        &s->schema, n->raw, &s->raw, n->updated_ms, &s->updated_ms,
                        n->updated_by, &s->updated_by, NULL);
  } else {
    RedisModule_HashGet(key, REDISMODULE_HASH_NONE, n->version, &s->version, n->schema,
                        &s->schema, NULL);
  }
  if (!s->version || RedisModule_StringToLongLong(s->version, &s->ver) != REDISMODULE_OK ||
      s->ver < 1) {
    return kState_WrongType;
  }
  return kState_Context;
}

static void reply_bulk_or_empty(RedisModuleCtx *ctx, RedisModuleString *s) {
  if (s) {
    RedisModule_ReplyWithString(ctx, s);
  } else {
    RedisModule_ReplyWithStringBuffer(ctx, "", 0);
  }
}

/* [version, raw, schema, updated_ms, updated_by] */
static void reply_state(RedisModuleCtx *ctx, const ctx_State *s) {
  long long ms = 0;
  if (s->updated_ms) RedisModule_StringToLongLong(s->updated_ms, &ms);
  RedisModule_ReplyWithArray(ctx, 5);
  RedisModule_ReplyWithLongLong(ctx, s->ver);
  reply_bulk_or_empty(ctx, s->raw);
  reply_bulk_or_empty(ctx, s->schema);
  RedisModule_ReplyWithLongLong(ctx, ms);
  reply_bulk_or_empty(ctx, s->updated_by);
}

/* The conflict reply: the current state, or nil when there is no context. */
static int reply_conflict(RedisModuleCtx *ctx, RedisModuleKey *key) {
  ctx_stats.cas_conflicts++;
  ctx_State s;
  if (state_read(key, &s, true) != kState_Context) {
    state_free(ctx, &s);
    return RedisModule_ReplyWithNull(ctx);
  }
  reply_state(ctx, &s);
  state_free(ctx, &s);
  return REDISMODULE_OK;
}

static int reply_wrongtype(RedisModuleCtx *ctx) {
  return RedisModule_ReplyWithError(
      ctx, "WRONGTYPE Operation against a key that is not a ctxlink context");
}

static bool parse_version(RedisModuleString *arg, long long *out) {
  return RedisModule_StringToLongLong(arg, out) == REDISMODULE_OK && *out >= 0 &&
         *out <= CTX_VERSION_MAX;
}

static int reply_bad_version(RedisModuleCtx *ctx) {
  return RedisModule_ReplyWithError(
      ctx, "ERR expected_version must be an integer from 0 to 9223372036854775806");
}

int ctx_ReplyStatus(RedisModuleCtx *ctx, const ctx_Status *st) {
  char buf[CTX_STATUS_MSG_MAX + 16];
  snprintf(buf, sizeof(buf), "%s %s", ctx_Code_Prefix(st->code), st->msg);
  return RedisModule_ReplyWithError(ctx, buf);
}

/* CTX.GET key */
int ctx_GetCommand_(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  if (argc != 2) return RedisModule_WrongArity(ctx);
  RedisModuleKey *key = RedisModule_OpenKey(ctx, argv[1], REDISMODULE_READ);
  ctx_State s;
  switch (state_read(key, &s, true)) {
    case kState_Absent:
      ctx_stats.get_misses++;
      RedisModule_ReplyWithNull(ctx);
      break;
    case kState_WrongType:
      reply_wrongtype(ctx);
      break;
    case kState_Context:
      ctx_stats.get_hits++;
      reply_state(ctx, &s);
      break;
  }
  state_free(ctx, &s);
  RedisModule_CloseKey(key);
  return REDISMODULE_OK;
}

static int count_rejection(const ctx_Status *st) {
  switch (st->code) {
    case kCtx_Invalid: ctx_stats.rejected_invalid++; break;
    case kCtx_TooBig: ctx_stats.rejected_toobig++; break;
    case kCtx_Version: ctx_stats.rejected_version++; break;
    case kCtx_Schema: ctx_stats.rejected_schema++; break;
    default: break;
  }
  return 0;
}

/* CTX.CAS key expected_version payload [SCHEMA name] [BY writer] */
int ctx_CasCommand(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  if (argc < 4) return RedisModule_WrongArity(ctx);

  long long expected;
  if (!parse_version(argv[2], &expected)) return reply_bad_version(ctx);
  RedisModuleString *schema_arg = NULL, *by = NULL;
  for (int i = 4; i < argc; i += 2) {
    const char *opt = RedisModule_StringPtrLen(argv[i], NULL);
    RedisModuleString **slot = !strcasecmp(opt, "SCHEMA") ? &schema_arg
                               : !strcasecmp(opt, "BY")   ? &by
                                                          : NULL;
    if (!slot || *slot || i + 1 >= argc) {
      return RedisModule_ReplyWithError(ctx, "ERR syntax error");
    }
    *slot = argv[i + 1];
  }

  ctx_State s;
  ctx_Status st;
  RedisModuleString *verstr = NULL, *msstr = NULL;
  RedisModuleKey *key =
      RedisModule_OpenKey(ctx, argv[1], REDISMODULE_READ | REDISMODULE_WRITE);
  state_kind kind = state_read(key, &s, false);
  if (kind == kState_WrongType) {
    reply_wrongtype(ctx);
    goto done;
  }
  long long current = kind == kState_Context ? s.ver : 0;
  if (current != expected) {
    reply_conflict(ctx, key);
    goto done;
  }

  /* Which schema: named on create, stored on update (and equal if named). */
  RedisModuleString *schema_name = schema_arg;
  if (kind == kState_Absent && !schema_arg) {
    ctx_Status_Set(&st, kCtx_Schema, "schema required to create a context");
    goto reject;
  }
  if (kind == kState_Context) {
    if (!s.schema) {
      ctx_Status_Set(&st, kCtx_Schema, "the context has no schema field");
      goto reject;
    }
    if (schema_arg && RedisModule_StringCompare(schema_arg, s.schema) != 0) {
      size_t al, sl;
      const char *a = RedisModule_StringPtrLen(schema_arg, &al);
      const char *b = RedisModule_StringPtrLen(s.schema, &sl);
      ctx_Status_Set(&st, kCtx_Schema, "schema mismatch: the context uses '%.*s', not '%.*s'",
                     (int)(sl > 120 ? 120 : sl), b, (int)(al > 120 ? 120 : al), a);
      goto reject;
    }
    schema_name = s.schema;
  }
  size_t nlen;
  const char *name = RedisModule_StringPtrLen(schema_name, &nlen);
  int slot = -1; /* in a cluster: the registry copy of the key's own slot */
  if (ctx_Cluster_Enabled()) {
    size_t klen;
    const char *k = RedisModule_StringPtrLen(argv[1], &klen);
    slot = ctx_KeySlot(k, klen);
  }
  const ctx_Schema *schema = ctx_Registry_Resolve(ctx, name, nlen, slot, &st);
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

  /* Write all five fields, then propagate exactly that write. */
  verstr = RedisModule_CreateStringFromLongLong(ctx, expected + 1);
  msstr = RedisModule_CreateStringFromLongLong(ctx, RedisModule_Milliseconds());
  if (!by) by = ctx_names.empty;
  const ctx_Names *n = &ctx_names;
  RedisModule_HashSet(key, REDISMODULE_HASH_NONE, n->raw, argv[3], n->version, verstr,
                      n->schema, schema_name, n->updated_ms, msstr, n->updated_by, by,
                      NULL);
  RedisModule_Replicate(ctx, "HSET", "sssssssssss", argv[1], n->raw, argv[3], n->version,
                        verstr, n->schema, schema_name, n->updated_ms, msstr,
                        n->updated_by, by);
  RedisModule_SignalModifiedKey(ctx, argv[1]);
  RedisModule_NotifyKeyspaceEvent(ctx, REDISMODULE_NOTIFY_HASH, "hset", argv[1]);
  ctx_stats.cas_ok++;
  RedisModule_ReplyWithLongLong(ctx, expected + 1);
  goto done;

reject:
  count_rejection(&st);
  ctx_ReplyStatus(ctx, &st);
done:
  if (verstr) RedisModule_FreeString(ctx, verstr);
  if (msstr) RedisModule_FreeString(ctx, msstr);
  state_free(ctx, &s);
  RedisModule_CloseKey(key);
  return REDISMODULE_OK;
}

/* CTX.DEL key expected_version */
int ctx_DelCommand(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  if (argc != 3) return RedisModule_WrongArity(ctx);
  long long expected;
  if (!parse_version(argv[2], &expected)) return reply_bad_version(ctx);

  RedisModuleKey *key =
      RedisModule_OpenKey(ctx, argv[1], REDISMODULE_READ | REDISMODULE_WRITE);
  ctx_State s;
  switch (state_read(key, &s, false)) {
    case kState_WrongType:
      reply_wrongtype(ctx);
      break;
    case kState_Absent:
      reply_conflict(ctx, key);
      break;
    case kState_Context:
      if (s.ver != expected) {
        reply_conflict(ctx, key);
        break;
      }
      RedisModule_DeleteKey(key);
      RedisModule_Replicate(ctx, "DEL", "s", argv[1]);
      RedisModule_SignalModifiedKey(ctx, argv[1]);
      RedisModule_NotifyKeyspaceEvent(ctx, REDISMODULE_NOTIFY_GENERIC, "del", argv[1]);
      ctx_stats.del_ok++;
      RedisModule_ReplyWithLongLong(ctx, 1);
      break;
  }
  state_free(ctx, &s);
  RedisModule_CloseKey(key);
  return REDISMODULE_OK;
}
