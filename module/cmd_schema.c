/* cmd_schema.c - CTX.SCHEMA.SET / GET / LIST / DEL: the schema registry.
 *
 * The registry is ordinary keys (docs/PROTOCOL.md, "Schema registry"), written
 * through RedisModule_Call with "!" so each write is propagated, counted as a
 * change and signalled exactly like the command a client would have sent. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ctx_module.h"

static int reply_cmd_error(RedisModuleCtx *ctx, RedisModuleCallReply *r) {
  size_t len;
  const char *msg = r ? RedisModule_CallReplyStringPtr(r, &len) : NULL;
  char buf[200];
  snprintf(buf, sizeof(buf), "ERR registry write failed: %.*s",
           msg ? (int)(len > 150 ? 150 : len) : 7, msg ? msg : "unknown");
  return RedisModule_ReplyWithError(ctx, buf);
}

static bool call_ok(RedisModuleCallReply *r) {
  return r && RedisModule_CallReplyType(r) != REDISMODULE_REPLY_ERROR;
}

/* True when the name index can take SADD/SREM; else replies CTXSCHEMA, so a
 * registry write never stops half-way. */
static bool index_usable(RedisModuleCtx *ctx) {
  RedisModuleString *iname =
      RedisModule_CreateString(ctx, CTX_REGISTRY_INDEX, strlen(CTX_REGISTRY_INDEX));
  RedisModuleKey *k = RedisModule_OpenKey(ctx, iname, REDISMODULE_READ);
  int t = RedisModule_KeyType(k);
  RedisModule_CloseKey(k);
  RedisModule_FreeString(ctx, iname);
  if (t == REDISMODULE_KEYTYPE_EMPTY || t == REDISMODULE_KEYTYPE_SET) return true;
  RedisModule_ReplyWithError(
      ctx, "CTXSCHEMA the registry index '" CTX_REGISTRY_INDEX "' holds another type");
  return false;
}

/* CTX.SCHEMA.SET name message_type descriptor_set [FORCE] [VERSIONFIELD field] */
int ctx_SchemaSetCommand(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  if (argc < 4) return RedisModule_WrongArity(ctx);
  bool force = false;
  RedisModuleString *vfield_arg = NULL;
  for (int i = 4; i < argc; i++) {
    const char *opt = RedisModule_StringPtrLen(argv[i], NULL);
    if (!strcasecmp(opt, "FORCE") && !force) {
      force = true;
    } else if (!strcasecmp(opt, "VERSIONFIELD") && !vfield_arg && i + 1 < argc) {
      vfield_arg = argv[++i];
    } else {
      return RedisModule_ReplyWithError(ctx, "ERR syntax error");
    }
  }
  if (!ctx_Registry_CheckName(ctx, argv[1])) return REDISMODULE_OK;

  size_t nlen, tlen, flen, vlen = 7;
  const char *name = RedisModule_StringPtrLen(argv[1], &nlen);
  const char *type = RedisModule_StringPtrLen(argv[2], &tlen);
  const char *fds = RedisModule_StringPtrLen(argv[3], &flen);
  const char *vfield = vfield_arg ? RedisModule_StringPtrLen(vfield_arg, &vlen) : "version";

  ctx_Status st;
  RedisModuleString *kname = ctx_Registry_KeyName(ctx, name, nlen);
  RedisModuleString *revstr = NULL;
  RedisModuleCallReply *r1 = NULL, *r2 = NULL;
  ctx_Schema *next =
      ctx_Schema_Build(fds, flen, type, tlen, vfield, vlen, ctx_config.max_schema_bytes, &st);
  if (!next) {
    ctx_ReplyStatus(ctx, &st);
    goto done;
  }
  char digest[41];
  ctx_Registry_Digest(type, tlen, vfield, vlen, fds, flen, digest);

  /* The previous revision, if any. */
  long long revision = 0;
  RedisModuleKey *key = RedisModule_OpenKey(ctx, kname, REDISMODULE_READ);
  int ktype = RedisModule_KeyType(key);
  RedisModuleString *prev_digest = NULL;
  if (ktype == REDISMODULE_KEYTYPE_HASH) {
    RedisModule_HashGet(key, REDISMODULE_HASH_CFIELDS, "revision", &revstr, "digest",
                        &prev_digest, NULL);
    if (revstr) RedisModule_StringToLongLong(revstr, &revision);
  }
  RedisModule_CloseKey(key);
  if (revstr) RedisModule_FreeString(ctx, revstr);
  revstr = NULL;
  bool same = false;
  if (prev_digest) {
    size_t dl;
    const char *d = RedisModule_StringPtrLen(prev_digest, &dl);
    same = dl == 40 && memcmp(d, digest, 40) == 0;
    RedisModule_FreeString(ctx, prev_digest);
  }
  if (ktype != REDISMODULE_KEYTYPE_EMPTY && ktype != REDISMODULE_KEYTYPE_HASH) {
    RedisModule_ReplyWithError(ctx, "CTXSCHEMA the registry key holds another type");
    goto done;
  }
  if (!index_usable(ctx)) goto done;
  if (same && revision > 0) {
    /* Registering the very same definition again changes nothing. */
    RedisModule_ReplyWithLongLong(ctx, revision);
    goto done;
  }
  if (ktype == REDISMODULE_KEYTYPE_HASH && !force) {
    const ctx_Schema *prev = ctx_Registry_Resolve(ctx, name, nlen, &st);
    if (!prev) {
      ctx_Status_Set(&st, kCtx_Schema,
                     "the registered revision cannot be read; use FORCE to replace it");
      ctx_ReplyStatus(ctx, &st);
      goto done;
    }
    if (!ctx_Schema_CheckCompatible(prev, next, &st)) {
      ctx_ReplyStatus(ctx, &st);
      goto done;
    }
  }
  if (revision < 0 || revision >= INT64_MAX) revision = 0;
  revision++;

  revstr = RedisModule_CreateStringFromLongLong(ctx, revision);
  /* s: RedisModuleString, c: C string, b: buffer and length. */
  r1 = RedisModule_Call(ctx, "HSET", "!scscscscbcc", kname, "type", argv[2], "fds",
                        argv[3], "revision", revstr, "vfield", vfield, vlen, "digest",
                        digest);
  if (!call_ok(r1)) {
    reply_cmd_error(ctx, r1);
    goto done;
  }
  r2 = RedisModule_Call(ctx, "SADD", "!cs", CTX_REGISTRY_INDEX, argv[1]);
  if (!call_ok(r2)) {
    reply_cmd_error(ctx, r2);
    goto done;
  }
  ctx_Registry_Remember(name, nlen, digest, next);
  next = NULL;
  RedisModule_ReplyWithLongLong(ctx, revision);

done:
  ctx_Schema_Free(next);
  if (r1) RedisModule_FreeCallReply(r1);
  if (r2) RedisModule_FreeCallReply(r2);
  if (revstr) RedisModule_FreeString(ctx, revstr);
  RedisModule_FreeString(ctx, kname);
  return REDISMODULE_OK;
}

/* CTX.SCHEMA.GET name */
int ctx_SchemaGetCommand(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  if (argc != 2) return RedisModule_WrongArity(ctx);
  size_t nlen;
  const char *name = RedisModule_StringPtrLen(argv[1], &nlen);
  RedisModuleString *kname = ctx_Registry_KeyName(ctx, name, nlen);
  RedisModuleKey *key = RedisModule_OpenKey(ctx, kname, REDISMODULE_READ);
  RedisModuleString *type = NULL, *fds = NULL, *rev = NULL;
  long long revision = 0;
  if (RedisModule_KeyType(key) == REDISMODULE_KEYTYPE_HASH) {
    RedisModule_HashGet(key, REDISMODULE_HASH_CFIELDS, "type", &type, "fds", &fds,
                        "revision", &rev, NULL);
  }
  if (!type || !fds || !rev || RedisModule_StringToLongLong(rev, &revision) != REDISMODULE_OK) {
    RedisModule_ReplyWithNull(ctx);
  } else {
    RedisModule_ReplyWithArray(ctx, 3);
    RedisModule_ReplyWithString(ctx, type);
    RedisModule_ReplyWithString(ctx, fds);
    RedisModule_ReplyWithLongLong(ctx, revision);
  }
  if (type) RedisModule_FreeString(ctx, type);
  if (fds) RedisModule_FreeString(ctx, fds);
  if (rev) RedisModule_FreeString(ctx, rev);
  RedisModule_CloseKey(key);
  RedisModule_FreeString(ctx, kname);
  return REDISMODULE_OK;
}

typedef struct {
  const char *ptr;
  size_t len;
} name_ref;

static int cmp_names(const void *a, const void *b) {
  const name_ref *x = a, *y = b;
  size_t n = x->len < y->len ? x->len : y->len;
  int c = memcmp(x->ptr, y->ptr, n);
  if (c) return c;
  return x->len < y->len ? -1 : x->len > y->len;
}

/* CTX.SCHEMA.LIST */
int ctx_SchemaListCommand(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  (void)argv;
  if (argc != 1) return RedisModule_WrongArity(ctx);
  if (!index_usable(ctx)) return REDISMODULE_OK;
  RedisModuleCallReply *r = RedisModule_Call(ctx, "SMEMBERS", "c", CTX_REGISTRY_INDEX);
  if (!r || RedisModule_CallReplyType(r) != REDISMODULE_REPLY_ARRAY) {
    RedisModule_ReplyWithArray(ctx, 0);
    if (r) RedisModule_FreeCallReply(r);
    return REDISMODULE_OK;
  }
  size_t n = RedisModule_CallReplyLength(r);
  name_ref *names = RedisModule_Alloc((n ? n : 1) * sizeof(*names));
  for (size_t i = 0; i < n; i++) {
    RedisModuleCallReply *e = RedisModule_CallReplyArrayElement(r, i);
    names[i].ptr = RedisModule_CallReplyStringPtr(e, &names[i].len);
  }
  qsort(names, n, sizeof(*names), cmp_names);
  RedisModule_ReplyWithArray(ctx, (long)n);
  for (size_t i = 0; i < n; i++) {
    RedisModule_ReplyWithStringBuffer(ctx, names[i].ptr, names[i].len);
  }
  RedisModule_Free(names);
  RedisModule_FreeCallReply(r);
  return REDISMODULE_OK;
}

/* CTX.SCHEMA.DEL name */
int ctx_SchemaDelCommand(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  if (argc != 2) return RedisModule_WrongArity(ctx);
  size_t nlen;
  const char *name = RedisModule_StringPtrLen(argv[1], &nlen);
  RedisModuleString *kname = ctx_Registry_KeyName(ctx, name, nlen);
  long long removed = 0;
  RedisModuleCallReply *r1 = NULL, *r2 = NULL;

  if (!index_usable(ctx)) goto done;
  RedisModuleKey *key = RedisModule_OpenKey(ctx, kname, REDISMODULE_READ);
  bool exists = RedisModule_KeyType(key) != REDISMODULE_KEYTYPE_EMPTY;
  RedisModule_CloseKey(key);
  if (exists) {
    r1 = RedisModule_Call(ctx, "DEL", "!s", kname);
    if (!call_ok(r1)) {
      reply_cmd_error(ctx, r1);
      goto done;
    }
    removed = RedisModule_CallReplyInteger(r1) > 0;
  }
  r2 = RedisModule_Call(ctx, "SREM", "!cs", CTX_REGISTRY_INDEX, argv[1]);
  if (!call_ok(r2)) {
    reply_cmd_error(ctx, r2);
    goto done;
  }
  if (RedisModule_CallReplyInteger(r2) > 0) removed = 1;
  ctx_Registry_Forget(name, nlen);
  RedisModule_ReplyWithLongLong(ctx, removed);

done:
  if (r1) RedisModule_FreeCallReply(r1);
  if (r2) RedisModule_FreeCallReply(r2);
  RedisModule_FreeString(ctx, kname);
  return REDISMODULE_OK;
}
