/* cmd_wait.c - CTX.WAIT: block until a context's version is above a given one.
 *
 *   CTX.WAIT key after_version timeout_ms
 *
 * Replies (docs/PROTOCOL.md, "CTX.WAIT"): CTX.GET's reply as soon as the
 * context's version is above after_version (at once when it already is); nil
 * at the timeout (timeout_ms 0: none, as BLPOP); "CTXDELETED ..." when the
 * context is deleted while the client waits, or is absent at the call with
 * after_version > 0 (absent with after_version 0: it waits for the create).
 *
 * How waiters wake up, without polling:
 *   - a waiter is a client blocked with RedisModule_BlockClientOnKeys on the
 *     key, remembered in `waiters` (a dict of key -> list) for the deletions;
 *   - every keyspace event on a waited key (the module's own writes raise
 *     "set", CTX.DEL "del"; raw SET, RESTORE, RENAME ... too) signals the key
 *     ready; Redis runs the reply callback after the command (after EXEC or
 *     the script), which replies when the version is above after_version;
 *   - deletions (del, expired, evicted, rename_from, move_from events, and
 *     FLUSHDB / FLUSHALL through the FlushDB server event) unblock the
 *     key's waiters at once with CTXDELETED: Redis serves a key-blocked
 *     module client only while its key exists.
 * Inside MULTI or a script (or wherever the client may not block) the command
 * answers at once: the context, or nil as at the timeout. */
#include <stdio.h>
#include <string.h>

#include "core/ctx_value.h"
#include "ctx_module.h"

#define CTX_WAIT_TIMEOUT_MAX ((long long)1 << 40) /* ms, about 34 years */
#define CTX_WAIT_VERSION_MAX (INT64_MAX - 1)

#define CTX_WAIT_DELETED_MSG "CTXDELETED the context was deleted while waiting"
#define CTX_WAIT_ABSENT_MSG "CTXDELETED no context at this key (after_version > 0)"

typedef struct ctx_Waiter {
  RedisModuleBlockedClient *bc;
  char *dkey; /* the `waiters` key: db (4 bytes) + key name */
  size_t dlen;
  struct ctx_Waiter *prev, *next;
  bool present; /* a context was there when the client blocked */
  bool deleted; /* unblocked by a deletion: the timeout callback says so */
} ctx_Waiter;

static RedisModuleDict *waiters; /* dkey -> first ctx_Waiter of that key */
static long long nwaiters;

/* ---- the waiter registry ---- */

/* The `waiters` key of (db, key): the db in 4 bytes, then the key name, in
 * `buf` (`cap` bytes) when it fits, else in an allocation the caller frees. */
static char *dict_key(int db, RedisModuleString *key, char *buf, size_t cap, size_t *len) {
  size_t klen;
  const char *p = RedisModule_StringPtrLen(key, &klen);
  *len = klen + 4;
  char *out = *len <= cap ? buf : RedisModule_Alloc(*len);
  out[0] = (char)(db >> 24);
  out[1] = (char)(db >> 16);
  out[2] = (char)(db >> 8);
  out[3] = (char)db;
  memcpy(out + 4, p, klen);
  return out;
}

static void waiter_link(ctx_Waiter *w) {
  ctx_Waiter *head = RedisModule_DictGetC(waiters, w->dkey, w->dlen, NULL);
  w->prev = NULL;
  w->next = head;
  if (head) {
    head->prev = w;
    RedisModule_DictReplaceC(waiters, w->dkey, w->dlen, w);
  } else {
    RedisModule_DictSetC(waiters, w->dkey, w->dlen, w);
  }
  nwaiters++;
}

static void waiter_unlink(ctx_Waiter *w) {
  if (w->next) w->next->prev = w->prev;
  if (w->prev) {
    w->prev->next = w->next;
  } else if (w->next) {
    RedisModule_DictReplaceC(waiters, w->dkey, w->dlen, w->next);
  } else {
    RedisModule_DictDelC(waiters, w->dkey, w->dlen, NULL);
  }
  nwaiters--;
}

/* free_privdata: runs once per waiter, whatever ended the wait (reply,
 * timeout, deletion, disconnect). */
static void waiter_free(RedisModuleCtx *ctx, void *privdata) {
  ctx_Waiter *w = privdata;
  if (!w) return;
  waiter_unlink(w);
  RedisModule_Free(w->dkey);
  RedisModule_Free(w);
  (void)ctx;
}

/* Unblocks the waiters of a list with CTXDELETED (through the timeout
 * callback, which RedisModule_UnblockClient runs for key-blocked clients).
 * `flushed`: only those that blocked on a context (a flush says nothing about
 * a key that was absent, while a "del" event means it was created meanwhile). */
static void wake_deleted(ctx_Waiter *w, bool flushed) {
  while (w) {
    ctx_Waiter *next = w->next; /* waiter_free runs later, in beforeSleep */
    if (!w->deleted && (w->present || !flushed)) {
      w->deleted = true;
      RedisModule_UnblockClient(w->bc, NULL);
    }
    w = next;
  }
}

/* ---- reading the version ---- */

typedef enum { kWait_Absent, kWait_Context, kWait_WrongType } wait_kind;

/* The context's version (the type rule of docs/PROTOCOL.md: a v2 string or a
 * v1 hash). */
static wait_kind wait_read(RedisModuleCtx *ctx, RedisModuleString *keyname, uint64_t *version) {
  RedisModuleKey *key = RedisModule_OpenKey(ctx, keyname, REDISMODULE_READ);
  wait_kind kind = kWait_WrongType;
  switch (RedisModule_KeyType(key)) {
    case REDISMODULE_KEYTYPE_EMPTY:
      kind = kWait_Absent;
      break;
    case REDISMODULE_KEYTYPE_STRING: {
      size_t len = RedisModule_ValueLength(key);
      const char *p =
          len >= CTX_VALUE_HEADER ? RedisModule_StringDMA(key, &len, REDISMODULE_READ) : NULL;
      ctx_Value v;
      if (p && ctx_Value_Parse(p, len, &v)) {
        *version = v.version;
        kind = kWait_Context;
      }
      break;
    }
    case REDISMODULE_KEYTYPE_HASH: {
      RedisModuleString *ver = NULL;
      long long n;
      RedisModule_HashGet(key, REDISMODULE_HASH_NONE, ctx_names.version, &ver, NULL);
      if (ver && RedisModule_StringToLongLong(ver, &n) == REDISMODULE_OK && n >= 1) {
        *version = (uint64_t)n;
        kind = kWait_Context;
      }
      if (ver) RedisModule_FreeString(ctx, ver);
      break;
    }
    default:
      break;
  }
  RedisModule_CloseKey(key);
  return kind;
}

/* CTX.GET's reply for the key (the same code: the same shape, the same
 * WRONGTYPE). */
static int reply_get(RedisModuleCtx *ctx, RedisModuleString **argv) {
  RedisModuleString *get_argv[2] = {argv[0], argv[1]};
  return ctx_GetCommand_(ctx, get_argv, 2);
}

/* ---- callbacks ---- */

/* The key was signaled: reply when the version is above after_version (or the
 * key is no context any more); REDISMODULE_ERR keeps the client blocked. */
static int wait_ready(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  (void)argc;
  long long after;
  RedisModule_StringToLongLong(argv[2], &after); /* checked by the command */
  uint64_t version = 0;
  switch (wait_read(ctx, argv[1], &version)) {
    case kWait_Absent:
      return REDISMODULE_ERR; /* deletions are answered by wake_deleted */
    case kWait_WrongType:
      return reply_get(ctx, argv);
    case kWait_Context:
      /* Incarnations: once the value carries one, a waiter
       * that blocked on a context should also compare it with the one it
       * saw at block time (kept in ctx_Waiter) and answer CTXDELETED when
       * it differs: a RESTORE or RENAME of another context onto the key is a
       * write here, not a deletion. */
      if (version > (uint64_t)after) return reply_get(ctx, argv);
      return REDISMODULE_ERR;
  }
  return REDISMODULE_ERR;
}

/* The timeout, or RedisModule_UnblockClient after a deletion. */
static int wait_timeout(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  (void)argv;
  (void)argc;
  ctx_Waiter *w = RedisModule_GetBlockedClientPrivateData(ctx);
  if (w && w->deleted) return RedisModule_ReplyWithError(ctx, CTX_WAIT_DELETED_MSG);
  return RedisModule_ReplyWithNull(ctx);
}

/* ---- CTX.WAIT key after_version timeout_ms ---- */
int ctx_WaitCommand(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  if (argc != 4) return RedisModule_WrongArity(ctx);
  long long after, timeout;
  if (RedisModule_StringToLongLong(argv[2], &after) != REDISMODULE_OK || after < 0 ||
      after > CTX_WAIT_VERSION_MAX) {
    return RedisModule_ReplyWithError(
        ctx, "ERR after_version must be an integer from 0 to 9223372036854775806");
  }
  if (RedisModule_StringToLongLong(argv[3], &timeout) != REDISMODULE_OK || timeout < 0 ||
      timeout > CTX_WAIT_TIMEOUT_MAX) {
    return RedisModule_ReplyWithError(
        ctx, "ERR timeout_ms must be an integer from 0 (no timeout) to 1099511627776");
  }

  uint64_t version = 0;
  wait_kind kind = wait_read(ctx, argv[1], &version);
  switch (kind) {
    case kWait_WrongType:
      return reply_get(ctx, argv);
    case kWait_Context:
      if (version > (uint64_t)after) return reply_get(ctx, argv);
      break;
    case kWait_Absent:
      if (after > 0) return RedisModule_ReplyWithError(ctx, CTX_WAIT_ABSENT_MSG);
      break; /* waits for the create */
  }
  int flags = RedisModule_GetContextFlags(ctx);
  if (flags & (REDISMODULE_CTX_FLAGS_MULTI | REDISMODULE_CTX_FLAGS_LUA |
               REDISMODULE_CTX_FLAGS_DENY_BLOCKING)) {
    return RedisModule_ReplyWithNull(ctx); /* never blocks there: as at the timeout */
  }

  ctx_Waiter *w = RedisModule_Calloc(1, sizeof(*w));
  w->present = kind == kWait_Context;
  w->dkey = dict_key(RedisModule_GetSelectedDb(ctx), argv[1], NULL, 0, &w->dlen);
  w->bc = RedisModule_BlockClientOnKeys(ctx, wait_ready, wait_timeout, waiter_free, timeout,
                                        &argv[1], 1, w);
  waiter_link(w);
  return REDISMODULE_OK;
}

/* ---- what wakes waiters ---- */

static bool is_deletion(const char *event) {
  static const char *const kDeletions[] = {"del",    "expired",   "evicted",
                                           "rename_from", "move_from"};
  for (size_t i = 0; i < sizeof(kDeletions) / sizeof(kDeletions[0]); i++) {
    if (!strcmp(event, kDeletions[i])) return true;
  }
  return false;
}

static int on_keyspace(RedisModuleCtx *ctx, int type, const char *event,
                       RedisModuleString *key) {
  (void)type;
  if (nwaiters == 0) return REDISMODULE_OK;
  char buf[256];
  size_t len;
  char *dk = dict_key(RedisModule_GetSelectedDb(ctx), key, buf, sizeof(buf), &len);
  ctx_Waiter *w = RedisModule_DictGetC(waiters, dk, len, NULL);
  if (dk != buf) RedisModule_Free(dk);
  if (!w) return REDISMODULE_OK;
  if (is_deletion(event)) {
    wake_deleted(w, false);
  } else {
    RedisModule_SignalKeyAsReady(ctx, key);
  }
  return REDISMODULE_OK;
}

/* FLUSHDB / FLUSHALL (and a replica's full resync): every waiter of the
 * flushed database(s) sees its context deleted. Called by registry.c's FlushDB
 * handler: a module has one handler per server event. */
void ctx_Wait_OnFlush(uint64_t sub, void *data) {
  if (sub != REDISMODULE_SUBEVENT_FLUSHDB_END || nwaiters == 0) return;
  const RedisModuleFlushInfo *fi = data;
  RedisModuleDictIter *it = RedisModule_DictIteratorStartC(waiters, "^", NULL, 0);
  size_t len;
  void *head;
  char *k;
  while ((k = RedisModule_DictNextC(it, &len, &head)) != NULL) {
    const unsigned char *b = (const unsigned char *)k;
    int db = (int)((uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3]);
    if (fi->dbnum == -1 || fi->dbnum == db) wake_deleted(head, true);
  }
  RedisModule_DictIteratorStop(it);
}

int ctx_Wait_Init(RedisModuleCtx *ctx) {
  waiters = RedisModule_CreateDict(NULL);
  int types = REDISMODULE_NOTIFY_GENERIC | REDISMODULE_NOTIFY_STRING | REDISMODULE_NOTIFY_HASH |
              REDISMODULE_NOTIFY_EXPIRED | REDISMODULE_NOTIFY_EVICTED;
  return RedisModule_SubscribeToKeyspaceEvents(ctx, types, on_keyspace);
}
