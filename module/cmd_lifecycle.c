/* cmd_lifecycle.c - CTX.GET, CTX.DEL and CTX.TOUCH: reading a context,
 * deleting it at an expected version and setting its expiry. Shared
 * plumbing is in cmd_data.c (cmd_data.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cmd_data.h"
#include "core/ctx_value.h"
#include "ctx_module.h"
#include "metrics.h"

/* ---- CTX.GET key ---- */
int ctx_GetCommand_(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  if (argc != 2) return RedisModule_WrongArity(ctx);
  RedisModuleKey *key = RedisModule_OpenKey(ctx, argv[1], REDISMODULE_READ);
  ctx_State s;
  switch (state_read(key, &s)) {
    case kState_Absent:
      ctx_stats.get_misses++;
      RedisModule_ReplyWithNull(ctx);
      break;
    case kState_WrongType:
      reply_wrongtype(ctx);
      break;
    case kState_Context:
      ctx_stats.get_hits++;
      reply_state(ctx, &s, 6);
      break;
  }
  state_free(ctx, &s);
  RedisModule_CloseKey(key);
  return REDISMODULE_OK;
}

/* ---- CTX.DEL key expected_version [ID write_id] [INC incarnation] ---- */
int ctx_DelCommand(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  if (argc < 3) return RedisModule_WrongArity(ctx);
  if (argc % 2 == 0) return RedisModule_ReplyWithError(ctx, "ERR syntax error");
  long long expected;
  if (!parse_version(argv[2], &expected)) return reply_bad_version(ctx, "expected_version");
  ctx_WriteOpts o;
  memset(&o, 0, sizeof(o));
  for (int i = 3; i < argc; i += 2) {
    int r = parse_write_opt(ctx, argv, argc, i, kOpt_Id | kOpt_Inc, &o);
    if (r < 0) return REDISMODULE_OK;
    if (r == 0) return RedisModule_ReplyWithError(ctx, "ERR syntax error");
  }

  RedisModuleKey *key =
      RedisModule_OpenKey(ctx, argv[1], REDISMODULE_READ | REDISMODULE_WRITE);
  ctx_State s;
  switch (state_read(key, &s)) {
    case kState_WrongType:
      reply_wrongtype(ctx);
      break;
    case kState_Absent:
      ctx_Metrics_Conflict(kCtx_Conflict_Stale, argv[1], 0, expected); /* metrics.c */
      reply_conflict(ctx, &s, o.id != NULL);
      break;
    case kState_Context:
      if (!check_incarnation(ctx, &s, expected, &o)) break;
      if (s.v.version != (uint64_t)expected) {
        ctx_Metrics_Conflict(kCtx_Conflict_Stale, argv[1], (long long)s.v.version,
                             expected); /* metrics.c */
        reply_conflict(ctx, &s, o.id != NULL);
        break;
      }
      /* history.c: a `delete` entry in the schema's change feed, when it has one */
      ctx_Feed_Delete(ctx, argv[1], s.v.schema, s.v.schema_len, (unsigned long long)s.v.version,
                      s.v.incarnation, o.id);
      RedisModule_DeleteKey(key);
      RedisModule_Replicate(ctx, "DEL", "s", argv[1]);
      ctx_History_Drop(ctx, argv[1]); /* history.c: the history goes with the context */
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

/* ---- CTX.TOUCH key milliseconds ---- */
int ctx_TouchCommand(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  if (argc != 3) return RedisModule_WrongArity(ctx);
  long long ms;
  if (!parse_ms(argv[2], &ms)) {
    return RedisModule_ReplyWithError(
        ctx, "ERR milliseconds must be an integer from 1 to 1000000000000000");
  }
  RedisModuleKey *key =
      RedisModule_OpenKey(ctx, argv[1], REDISMODULE_READ | REDISMODULE_WRITE);
  ctx_State s;
  switch (state_read(key, &s)) {
    case kState_WrongType:
      reply_wrongtype(ctx);
      break;
    case kState_Absent:
      RedisModule_ReplyWithLongLong(ctx, 0);
      break;
    case kState_Context: {
      long long at = (long long)RedisModule_Milliseconds() + ms;
      set_abs_expire(key, at);
      RedisModule_Replicate(ctx, "PEXPIREAT", "sl", argv[1], at);
      ctx_History_Expire(ctx, argv[1], at); /* history.c: the stream expires with it */
      RedisModule_SignalModifiedKey(ctx, argv[1]);
      RedisModule_NotifyKeyspaceEvent(ctx, REDISMODULE_NOTIFY_GENERIC, "expire", argv[1]);
      ctx_stats.touch_ok++;
      RedisModule_ReplyWithLongLong(ctx, 1);
      break;
    }
  }
  state_free(ctx, &s);
  RedisModule_CloseKey(key);
  return REDISMODULE_OK;
}
