/* history.c - per-context history (docs/PROTOCOL.md, "History").
 *
 * A schema whose registry entry has `history` n > 0 keeps the last n changes of
 * each of its contexts in a stream next to the context: `__ctxh:<key>`, on a
 * cluster `__ctxh:{<slot tag>}:<key>` (always the context's own slot). Entry
 * ids are `<version>-0`; fields k (kind), i (incarnation), t (updated_ms),
 * b (writer), w (write id), f (the field numbers a patch touched), p (the
 * payload, with HISTORYPAYLOADS yes and at most CTX_HISTORY_PAYLOAD_MAX bytes)
 * or o (the size of a payload that was left out).
 *
 * Everything is written with RedisModule_Call and "!": the XADD, DEL and
 * PEXPIREAT reach replicas and the AOF inside the same MULTI/EXEC as the
 * command's own SET or DEL, so the history and the value never part. */
#include <stdio.h>
#include <string.h>

#include "core/ctx_value.h"
#include "ctx_module.h"

static const char *const kind_names[] = {"create", "update", "patch"};

RedisModuleString *ctx_History_KeyName(RedisModuleCtx *ctx, RedisModuleString *keyname) {
  size_t klen;
  const char *k = RedisModule_StringPtrLen(keyname, &klen);
  RedisModuleString *h;
  if (ctx_Cluster_Enabled()) {
    const char *tag = ctx_SlotTag(ctx_KeySlot(k, klen));
    h = RedisModule_CreateString(ctx, "__ctxh:{", 8);
    RedisModule_StringAppendBuffer(ctx, h, tag, strlen(tag));
    RedisModule_StringAppendBuffer(ctx, h, "}:", 2);
  } else {
    h = RedisModule_CreateString(ctx, "__ctxh:", 7);
  }
  RedisModule_StringAppendBuffer(ctx, h, k, klen);
  return h;
}

static int key_type(RedisModuleCtx *ctx, RedisModuleString *name) {
  RedisModuleKey *k = RedisModule_OpenKey(ctx, name, REDISMODULE_READ);
  int t = RedisModule_KeyType(k);
  RedisModule_CloseKey(k);
  return t;
}

void ctx_History_Prepare(RedisModuleCtx *ctx, RedisModuleString *keyname, ctx_History *h) {
  ctx_HistorySettings set;
  ctx_Registry_LastSettings(&set);
  h->n = set.history;
  h->payloads = set.payloads;
  h->key = h->n > 0 ? ctx_History_KeyName(ctx, keyname) : NULL;
}

/* DEL of `hkey` (propagated) when it exists. */
static void drop_key(RedisModuleCtx *ctx, RedisModuleString *hkey) {
  if (key_type(ctx, hkey) == REDISMODULE_KEYTYPE_EMPTY) return;
  RedisModuleCallReply *r = RedisModule_Call(ctx, "DEL", "!s", hkey);
  if (r) RedisModule_FreeCallReply(r);
}

/* "5 3 12": the FIELDS numbers as given, one space apart (the Lua engine stores the SDK's
 * FIELDS argument as it is: the same bytes). */
static RedisModuleString *fields_text(RedisModuleCtx *ctx, const uint32_t *fields, int n) {
  RedisModuleString *s = RedisModule_CreateString(ctx, "", 0);
  char num[16];
  for (int i = 0; i < n; i++) {
    int len = snprintf(num, sizeof(num), i ? " %u" : "%u", fields[i]);
    RedisModule_StringAppendBuffer(ctx, s, num, (size_t)len);
  }
  return s;
}

/* The context's absolute expiry in ms, or -1. */
static long long abs_expire(RedisModuleKey *key) {
  if (RedisModule_GetAbsExpire) {
    mstime_t at = RedisModule_GetAbsExpire(key);
    return at == REDISMODULE_NO_EXPIRE ? -1 : (long long)at;
  }
  mstime_t left = RedisModule_GetExpire(key);
  return left == REDISMODULE_NO_EXPIRE ? -1 : (long long)(RedisModule_Milliseconds() + left);
}

/* The stream gets the context's expiry when the context has one and the stream
 * has another (PEXPIREAT, propagated). `px` (the write's own TTL in ms, -1 for
 * none) is not needed here: the context's expiry is read back after the write,
 * which covers it; the Lua engine uses it to save a PTTL. */
static void mirror_expire(RedisModuleCtx *ctx, RedisModuleKey *key, RedisModuleString *hkey) {
  long long at = abs_expire(key);
  if (at < 0) return;
  RedisModuleKey *hk = RedisModule_OpenKey(ctx, hkey, REDISMODULE_READ);
  long long have = abs_expire(hk);
  RedisModule_CloseKey(hk);
  if (have == at) return;
  RedisModuleCallReply *r = RedisModule_Call(ctx, "PEXPIREAT", "!sl", hkey, at);
  if (r) RedisModule_FreeCallReply(r);
}

void ctx_History_Append(RedisModuleCtx *ctx, ctx_History *h, RedisModuleKey *key,
                        ctx_ChangeKind kind, const uint32_t *fields, int nfields,
                        RedisModuleString *write_id, const char *incarnation, size_t inc_len,
                        long long px) {
  (void)px;
  if (!h->key) return;
  size_t len;
  const char *p = RedisModule_StringDMA(key, &len, REDISMODULE_READ);
  ctx_Value v;
  if (!p || !ctx_Value_Parse(p, len, &v)) goto done; /* cannot happen after a write */

  /* A create starts a fresh history: whatever is there belongs to a predecessor. */
  if (kind == kCtx_Change_Create) drop_key(ctx, h->key);

  RedisModuleString *argv[20];
  int argc = 0;
  char buf[48];
  argv[argc++] = h->key;
  argv[argc++] = RedisModule_CreateString(ctx, "MAXLEN", 6);
  argv[argc++] = RedisModule_CreateString(ctx, "=", 1);
  argv[argc++] = RedisModule_CreateStringFromLongLong(ctx, h->n);
  int idlen = snprintf(buf, sizeof(buf), "%llu-0", (unsigned long long)v.version);
  argv[argc++] = RedisModule_CreateString(ctx, buf, (size_t)idlen);
  argv[argc++] = RedisModule_CreateString(ctx, "k", 1);
  argv[argc++] = RedisModule_CreateString(ctx, kind_names[kind], strlen(kind_names[kind]));
  argv[argc++] = RedisModule_CreateString(ctx, "i", 1);
  argv[argc++] = RedisModule_CreateString(ctx, incarnation ? incarnation : "", inc_len);
  argv[argc++] = RedisModule_CreateString(ctx, "t", 1);
  argv[argc++] = RedisModule_CreateStringFromLongLong(ctx, (long long)v.updated_ms);
  argv[argc++] = RedisModule_CreateString(ctx, "b", 1);
  argv[argc++] = RedisModule_CreateString(ctx, v.updated_by, v.by_len);
  argv[argc++] = RedisModule_CreateString(ctx, "w", 1);
  size_t wl = 0;
  const char *w = write_id ? RedisModule_StringPtrLen(write_id, &wl) : "";
  argv[argc++] = RedisModule_CreateString(ctx, w, wl);
  if (kind == kCtx_Change_Patch && nfields > 0) {
    argv[argc++] = RedisModule_CreateString(ctx, "f", 1);
    argv[argc++] = fields_text(ctx, fields, nfields);
  }
  if (h->payloads) {
    if (v.payload_len <= CTX_HISTORY_PAYLOAD_MAX) {
      argv[argc++] = RedisModule_CreateString(ctx, "p", 1);
      argv[argc++] = RedisModule_CreateString(ctx, v.payload, v.payload_len);
    } else {
      argv[argc++] = RedisModule_CreateString(ctx, "o", 1);
      argv[argc++] = RedisModule_CreateStringFromLongLong(ctx, (long long)v.payload_len);
    }
  }
  RedisModuleCallReply *r = RedisModule_Call(ctx, "XADD", "!v", argv, (size_t)argc);
  if (!r || RedisModule_CallReplyType(r) == REDISMODULE_REPLY_ERROR) {
    /* An id at or below the stream's last: the stream outlived its context (a raw DEL, an
     * expiry, history switched off and on around a re-create); or a key of another type
     * under the reserved prefix. Start it again (the Lua engine does the same). */
    if (r) RedisModule_FreeCallReply(r);
    drop_key(ctx, h->key);
    r = RedisModule_Call(ctx, "XADD", "!v", argv, (size_t)argc);
  }
  if (r) RedisModule_FreeCallReply(r);
  for (int i = 1; i < argc; i++) RedisModule_FreeString(ctx, argv[i]);
  mirror_expire(ctx, key, h->key);
done:
  RedisModule_FreeString(ctx, h->key);
  h->key = NULL;
}

void ctx_History_Release(RedisModuleCtx *ctx, ctx_History *h) {
  if (h->key) RedisModule_FreeString(ctx, h->key);
  h->key = NULL;
}

void ctx_History_Drop(RedisModuleCtx *ctx, RedisModuleString *keyname) {
  RedisModuleString *hkey = ctx_History_KeyName(ctx, keyname);
  drop_key(ctx, hkey);
  RedisModule_FreeString(ctx, hkey);
}
