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
 * The entry is added with the stream API on the open key and propagated as
 * the XADD a client would send (RedisModule_Replicate); the rarer DEL and
 * PEXPIREAT go through RedisModule_Call with "!". All of it reaches replicas
 * and the AOF inside the same MULTI/EXEC as the command's own SET or DEL, so
 * the history and the value never part.
 *
 * The change feed (docs/PROTOCOL.md, "Change feed") is built here too, from the same field
 * list: a schema whose entry has `feed` n > 0 (standalone servers only) gets every change of its
 * contexts in `__ctxf:<schema>`, with an automatic id, `MAXLEN = n`, the fields above plus `v`
 * (the version) and `key`; CTX.DEL adds a `delete` entry (ctx_Feed_Delete). The id the stream
 * API assigned is the one propagated, so replicas and the AOF hold the same ids. */
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
  h->feed_n = 0;
  h->feed_key = NULL;
  h->ckey = keyname;
}

/* `__ctxf:<schema>` (the caller frees it). */
static RedisModuleString *feed_keyname(RedisModuleCtx *ctx, const char *schema, size_t slen) {
  RedisModuleString *f = RedisModule_CreateString(ctx, "__ctxf:", 7);
  RedisModule_StringAppendBuffer(ctx, f, schema, slen);
  return f;
}

void ctx_History_PrepareFeed(RedisModuleCtx *ctx, RedisModuleString *keyname, const char *schema,
                             size_t slen, ctx_History *h) {
  ctx_History_Prepare(ctx, keyname, h);
  ctx_HistorySettings set;
  ctx_Registry_LastSettings(&set);
  /* A cluster has no feed (refused at registration; docs/PROTOCOL.md, "Change feed"). */
  if (set.feed > 0 && !ctx_Cluster_Enabled()) {
    h->feed_n = set.feed;
    h->feed_key = feed_keyname(ctx, schema, slen);
  }
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

/* XADD `fkey` MAXLEN = n * <fields>: the stream API with an automatic id, trimmed exactly, then
 * the same XADD with the id it got on the replication stream (argv[4] is the id's slot). A key
 * of another type under the reserved prefix is replaced. */
static void append_feed(RedisModuleCtx *ctx, RedisModuleString *fkey, RedisModuleString **argv,
                        int argc, int first_field, int n) {
  RedisModuleKey *fk = RedisModule_OpenKey(ctx, fkey, REDISMODULE_READ | REDISMODULE_WRITE);
  int t = RedisModule_KeyType(fk);
  bool dropped = t != REDISMODULE_KEYTYPE_EMPTY && t != REDISMODULE_KEYTYPE_STREAM;
  if (dropped) RedisModule_DeleteKey(fk);
  RedisModuleStreamID id;
  int64_t npairs = (argc - first_field) / 2;
  if (RedisModule_StreamAdd(fk, REDISMODULE_STREAM_ADD_AUTOID, &id, argv + first_field,
                            npairs) != REDISMODULE_OK) {
    RedisModule_CloseKey(fk);
    return; /* the id space is exhausted (last id 18446744073709551615-...): nothing to add */
  }
  RedisModule_StreamTrimByLength(fk, 0, n);
  RedisModule_CloseKey(fk);
  char buf[48];
  int idlen = snprintf(buf, sizeof(buf), "%llu-%llu", (unsigned long long)id.ms,
                       (unsigned long long)id.seq);
  RedisModuleString *ids = RedisModule_CreateString(ctx, buf, (size_t)idlen);
  RedisModuleString *saved = argv[4];
  argv[4] = ids;
  if (dropped) RedisModule_Replicate(ctx, "DEL", "s", fkey);
  RedisModule_Replicate(ctx, "XADD", "v", argv, (size_t)argc);
  argv[4] = saved;
  RedisModule_FreeString(ctx, ids);
  RedisModule_SignalModifiedKey(ctx, fkey);
  RedisModule_NotifyKeyspaceEvent(ctx, REDISMODULE_NOTIFY_STREAM, "xadd", fkey);
}

void ctx_History_Append(RedisModuleCtx *ctx, ctx_History *h, RedisModuleKey *key,
                        ctx_ChangeKind kind, const uint32_t *fields, int nfields,
                        RedisModuleString *write_id) {
  if (!h->key && !h->feed_key) return;
  size_t len;
  const char *p = RedisModule_StringDMA(key, &len, REDISMODULE_READ);
  ctx_Value v;
  if (!p || !ctx_Value_Parse(p, len, &v)) goto done; /* cannot happen after a write */

  /* The XADD as a client would send it: argv[0..4] the command's head, then the fields. The
   * constant words are made once (never freed: the module lives as long as the server). */
  static RedisModuleString *word[12];
  enum { W_MAXLEN, W_EQ, W_K, W_I, W_T, W_B, W_W, W_F, W_P, W_O, W_KEY, W_V };
  if (!word[0]) {
    const char *const text[] = {"MAXLEN", "=", "k", "i", "t", "b", "w", "f", "p", "o", "key", "v"};
    for (int i = 0; i < 12; i++) word[i] = RedisModule_CreateString(NULL, text[i], strlen(text[i]));
  }
  RedisModuleString *argv[24], *made[10];
  int argc = 0, nmade = 0;
#define CTX_MADE(s) (made[nmade++] = (s))
  char buf[48];
  argv[argc++] = h->key;
  argv[argc++] = word[W_MAXLEN];
  argv[argc++] = word[W_EQ];
  argv[argc++] = CTX_MADE(RedisModule_CreateStringFromLongLong(ctx, h->key ? h->n : h->feed_n));
  int idlen = snprintf(buf, sizeof(buf), "%llu-0", (unsigned long long)v.version);
  argv[argc++] = CTX_MADE(RedisModule_CreateString(ctx, buf, (size_t)idlen));
  int first_field = argc;
  argv[argc++] = word[W_K];
  argv[argc++] = CTX_MADE(RedisModule_CreateString(ctx, kind_names[kind], strlen(kind_names[kind])));
  argv[argc++] = word[W_I];
  char inc[2 * CTX_INC_LEN + 1] = "";
  if (v.incarnation) ctx_Incarnation_Hex(v.incarnation, inc);
  argv[argc++] = CTX_MADE(RedisModule_CreateString(ctx, inc, strlen(inc)));
  argv[argc++] = word[W_T];
  argv[argc++] = CTX_MADE(RedisModule_CreateStringFromLongLong(ctx, (long long)v.updated_ms));
  argv[argc++] = word[W_B];
  argv[argc++] = CTX_MADE(RedisModule_CreateString(ctx, v.updated_by, v.by_len));
  argv[argc++] = word[W_W];
  argv[argc++] = write_id ? write_id : ctx_names.empty;
  if (kind == kCtx_Change_Patch && nfields > 0) {
    argv[argc++] = word[W_F];
    argv[argc++] = CTX_MADE(fields_text(ctx, fields, nfields));
  }
  if (h->payloads) {
    if (v.payload_len <= CTX_HISTORY_PAYLOAD_MAX) {
      argv[argc++] = word[W_P];
      argv[argc++] = CTX_MADE(RedisModule_CreateString(ctx, v.payload, v.payload_len));
    } else {
      argv[argc++] = word[W_O];
      argv[argc++] = CTX_MADE(RedisModule_CreateStringFromLongLong(ctx, (long long)v.payload_len));
    }
  }
#undef CTX_MADE
  if (!h->key) goto feed;

  /* The stream API on the open key, then the same XADD on the replication stream (one
   * MULTI/EXEC with the value's SET): no command dispatch on the hot path. */
  RedisModuleKey *hk = RedisModule_OpenKey(ctx, h->key, REDISMODULE_READ | REDISMODULE_WRITE);
  int t = RedisModule_KeyType(hk);
  /* A create starts a fresh history: whatever is there belongs to a predecessor (a raw DEL, an
   * expiry); so does a key of another type under the reserved prefix. */
  bool dropped = t != REDISMODULE_KEYTYPE_EMPTY &&
                 (kind == kCtx_Change_Create || t != REDISMODULE_KEYTYPE_STREAM);
  if (dropped) RedisModule_DeleteKey(hk);
  RedisModuleStreamID id = {v.version, 0};
  int64_t npairs = (argc - first_field) / 2;
  if (RedisModule_StreamAdd(hk, 0, &id, argv + first_field,
                            npairs) != REDISMODULE_OK) {
    /* An id at or below the stream's last: the stream outlived its context (history switched
     * off and on around a re-create). Start it again (the Lua engine does the same). */
    RedisModule_DeleteKey(hk);
    dropped = true;
    RedisModule_StreamAdd(hk, 0, &id, argv + first_field, npairs);
  }
  RedisModule_StreamTrimByLength(hk, 0, h->n); /* exact: MAXLEN = n */
  RedisModule_CloseKey(hk);
  if (dropped) {
    RedisModule_Replicate(ctx, "DEL", "s", h->key);
    RedisModule_NotifyKeyspaceEvent(ctx, REDISMODULE_NOTIFY_GENERIC, "del", h->key);
  }
  RedisModule_Replicate(ctx, "XADD", "v", argv, (size_t)argc);
  RedisModule_SignalModifiedKey(ctx, h->key);
  RedisModule_NotifyKeyspaceEvent(ctx, REDISMODULE_NOTIFY_STREAM, "xadd", h->key);
  mirror_expire(ctx, key, h->key);
feed:
  if (h->feed_key) {
    /* The same entry, plus the version and the context's key, in the schema's feed: auto id,
     * MAXLEN = feed_n. */
    argv[0] = h->feed_key;
    RedisModuleString *n = RedisModule_CreateStringFromLongLong(ctx, h->feed_n);
    RedisModuleString *ver = RedisModule_CreateStringFromLongLong(ctx, (long long)v.version);
    argv[3] = n;
    argv[argc++] = word[W_V];
    argv[argc++] = ver;
    argv[argc++] = word[W_KEY];
    argv[argc++] = h->ckey;
    append_feed(ctx, h->feed_key, argv, argc, first_field, h->feed_n);
    RedisModule_FreeString(ctx, ver);
    RedisModule_FreeString(ctx, n);
  }
  for (int i = 0; i < nmade; i++) RedisModule_FreeString(ctx, made[i]);
done:
  ctx_History_Release(ctx, h);
}

void ctx_History_Release(RedisModuleCtx *ctx, ctx_History *h) {
  if (h->key) RedisModule_FreeString(ctx, h->key);
  h->key = NULL;
  if (h->feed_key) RedisModule_FreeString(ctx, h->feed_key);
  h->feed_key = NULL;
}

void ctx_History_Drop(RedisModuleCtx *ctx, RedisModuleString *keyname) {
  RedisModuleString *hkey = ctx_History_KeyName(ctx, keyname);
  drop_key(ctx, hkey);
  RedisModule_FreeString(ctx, hkey);
}

void ctx_History_Expire(RedisModuleCtx *ctx, RedisModuleString *keyname, long long at_ms) {
  RedisModuleString *hkey = ctx_History_KeyName(ctx, keyname);
  if (key_type(ctx, hkey) != REDISMODULE_KEYTYPE_EMPTY) {
    RedisModuleCallReply *r = RedisModule_Call(ctx, "PEXPIREAT", "!sl", hkey, at_ms);
    if (r) RedisModule_FreeCallReply(r);
  }
  RedisModule_FreeString(ctx, hkey);
}

void ctx_Feed_Delete(RedisModuleCtx *ctx, RedisModuleString *keyname, const char *schema,
                     size_t slen, unsigned long long version, const uint8_t *incarnation,
                     RedisModuleString *write_id) {
  if (ctx_Cluster_Enabled() || slen == 0) return;
  /* The entry's `feed` alone (no compile: a delete needs no schema); a name that is not a valid
   * schema name finds no entry. */
  RedisModuleString *ekey = ctx_Registry_KeyName(ctx, schema, slen, -1);
  RedisModuleKey *ek = RedisModule_OpenKey(ctx, ekey, REDISMODULE_READ);
  RedisModuleString *fs = NULL;
  if (RedisModule_KeyType(ek) == REDISMODULE_KEYTYPE_HASH) {
    RedisModule_HashGet(ek, REDISMODULE_HASH_NONE, ctx_names.feed, &fs, NULL);
  }
  RedisModule_CloseKey(ek);
  RedisModule_FreeString(ctx, ekey);
  ctx_HistorySettings set = {0, false, ctx_FeedSetting_Read(fs), CTX_WINDOW_DEFAULT};
  if (fs) RedisModule_FreeString(ctx, fs);
  if (set.feed <= 0) return;
  RedisModuleString *fkey = feed_keyname(ctx, schema, slen);
  char ver[24], inc[2 * CTX_INC_LEN + 1] = "", ms[24];
  snprintf(ver, sizeof(ver), "%llu", version);
  if (incarnation) ctx_Incarnation_Hex(incarnation, inc);
  snprintf(ms, sizeof(ms), "%lld", (long long)RedisModule_Milliseconds());
  RedisModuleString *argv[20];
  int argc = 0;
  /* The fields in a write's order: k i t b w, then v key. */
  const char *const head[] = {"MAXLEN", "=", NULL, "*", "k", "delete", "i", inc, "t", ms,
                              "b", "", "w"};
  argv[argc++] = fkey;
  for (int i = 0; i < 13; i++) {
    argv[argc++] = head[i] ? RedisModule_CreateString(ctx, head[i], strlen(head[i]))
                           : RedisModule_CreateStringFromLongLong(ctx, set.feed);
  }
  argv[argc++] = write_id ? write_id : ctx_names.empty; /* argv[14] */
  const char *const tail[] = {"v", ver, "key"};
  for (int i = 0; i < 3; i++) argv[argc++] = RedisModule_CreateString(ctx, tail[i], strlen(tail[i]));
  argv[argc++] = keyname;
  append_feed(ctx, fkey, argv, argc, 5, set.feed);
  for (int i = 1; i < argc - 1; i++) {
    if (i != 14) RedisModule_FreeString(ctx, argv[i]);
  }
  RedisModule_FreeString(ctx, fkey);
}
