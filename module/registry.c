/* registry.c - the schema registry: plain keys in the keyspace, plus a cache
 * of compiled schemas keyed by the entry's digest. Every use reads the digest
 * of the entry it needs, so replication, restarts, FLUSHALL, other databases
 * and other slots' copies are always picked up, and two definitions under one
 * name (two databases, two slots) each keep their compiled form. */
#include <stdio.h>
#include <string.h>

#include "ctx_module.h"

/* Compiled schemas: a least-recently-used list over a dict keyed by digest,
 * bounded by a count and by the bytes the schemas hold (module argument
 * schema-cache-bytes). A schema larger than the byte limit is compiled for the
 * command that needs it and freed at the next registry call, never kept. */
#define CTX_CACHE_MAX 64

/* Standalone registry key names of names that resolved to an entry. */
#define CTX_KEYNAMES_MAX 1024

typedef struct cache_node {
  char digest[40];
  ctx_Schema *schema;
  size_t bytes;
  struct cache_node *prev, *next; /* prev: more recently used */
} cache_node;

static RedisModuleDict *compiled; /* digest (40 hex chars) -> cache_node* */
static cache_node *mru, *lru;     /* most / least recently used */
static size_t cache_bytes;
static long long cache_evictions;
static ctx_Schema *transient; /* the last schema too large to keep */
static RedisModuleDict *keynames; /* name -> __ctx:schema:<name> */
static ctx_HistorySettings last_settings; /* of the entry the last Resolve found */

void ctx_HistorySettings_Read(RedisModuleString *history, RedisModuleString *hpayload,
                              ctx_HistorySettings *out) {
  long long n = 0;
  if (!history || RedisModule_StringToLongLong(history, &n) != REDISMODULE_OK || n < 0 ||
      n > CTX_HISTORY_MAX) {
    n = 0;
  }
  out->history = (int)n;
  size_t len = 0;
  const char *p = hpayload ? RedisModule_StringPtrLen(hpayload, &len) : "";
  out->payloads = len == 1 && p[0] == '1';
  out->feed = 0; /* read on its own: ctx_FeedSetting_Read */
  out->window = CTX_WINDOW_DEFAULT; /* read on its own: ctx_WindowSetting_Read */
}

int ctx_FeedSetting_Read(RedisModuleString *feed) {
  long long n = 0;
  if (!feed || RedisModule_StringToLongLong(feed, &n) != REDISMODULE_OK || n < 0 ||
      n > CTX_FEED_MAX) {
    n = 0;
  }
  return (int)n;
}

int ctx_WindowSetting_Read(RedisModuleString *window) {
  long long n = 0;
  if (!window || RedisModule_StringToLongLong(window, &n) != REDISMODULE_OK || n < 1 ||
      n > CTX_WINDOW_MAX) {
    n = CTX_WINDOW_DEFAULT;
  }
  return (int)n;
}

void ctx_Registry_LastSettings(ctx_HistorySettings *out) { *out = last_settings; }

int ctx_Registry_LastWindow(void) {
  return last_settings.window > 0 ? last_settings.window : CTX_WINDOW_DEFAULT;
}

int ctx_Registry_CheckName(RedisModuleCtx *ctx, RedisModuleString *name) {
  size_t len;
  const char *s = RedisModule_StringPtrLen(name, &len);
  ctx_Status st;
  bool ok = ctx_SchemaName_Check(s, len, &st);
  if (!ok) ctx_ReplyStatus(ctx, &st);
  return ok;
}

/* "__ctx:" or, for a slot's copy in a cluster, "__ctx:{<tag>}:". */
static RedisModuleString *registry_prefix(RedisModuleCtx *ctx, int slot) {
  if (slot < 0) return RedisModule_CreateString(ctx, "__ctx:", 6);
  RedisModuleString *k = RedisModule_CreateString(ctx, "__ctx:{", 7);
  const char *tag = ctx_SlotTag(slot);
  RedisModule_StringAppendBuffer(ctx, k, tag, strlen(tag));
  RedisModule_StringAppendBuffer(ctx, k, "}:", 2);
  return k;
}

RedisModuleString *ctx_Registry_KeyName(RedisModuleCtx *ctx, const char *name, size_t len,
                                        int slot) {
  RedisModuleString *k = registry_prefix(ctx, slot);
  RedisModule_StringAppendBuffer(ctx, k, "schema:", 7);
  RedisModule_StringAppendBuffer(ctx, k, name, len);
  return k;
}

RedisModuleString *ctx_Registry_IndexName(RedisModuleCtx *ctx, int slot) {
  RedisModuleString *k = registry_prefix(ctx, slot);
  RedisModule_StringAppendBuffer(ctx, k, "schemas", 7);
  return k;
}

static void lru_unlink(cache_node *n) {
  if (n->prev) n->prev->next = n->next; else mru = n->next;
  if (n->next) n->next->prev = n->prev; else lru = n->prev;
  n->prev = n->next = NULL;
}

static void lru_push_front(cache_node *n) {
  n->prev = NULL;
  n->next = mru;
  if (mru) mru->prev = n;
  mru = n;
  if (!lru) lru = n;
}

static void node_drop(cache_node *n) {
  lru_unlink(n);
  RedisModule_DictDelC(compiled, n->digest, 40, NULL);
  cache_bytes -= n->bytes;
  ctx_Schema_Free(n->schema);
  RedisModule_Free(n);
}

/* Frees the schema handed out last time without being kept: its command is over. */
static void drop_transient(void) {
  if (transient) ctx_Schema_Free(transient);
  transient = NULL;
}

static const ctx_Schema *cache_get(const char *digest) {
  /* The schema used last is asked for again most of the time: a 40-byte
   * compare instead of a walk down the dictionary's radix tree. */
  if (mru && memcmp(mru->digest, digest, 40) == 0) return mru->schema;
  cache_node *n = RedisModule_DictGetC(compiled, (void *)digest, 40, NULL);
  if (!n) return NULL;
  if (n != mru) {
    lru_unlink(n);
    lru_push_front(n);
  }
  return n->schema;
}

/* Keeps `schema` (owned) under `digest`, evicting least recently used entries
 * to stay within both limits. Returns the schema to use for this command. */
static const ctx_Schema *cache_put(const char *digest, ctx_Schema *schema) {
  const ctx_Schema *have = cache_get(digest);
  if (have) {
    ctx_Schema_Free(schema); /* the same definition is compiled already */
    return have;
  }
  size_t bytes = ctx_Schema_MemoryBytes(schema);
  if (bytes > ctx_config.schema_cache_bytes) {
    transient = schema;
    return schema;
  }
  while (lru && (RedisModule_DictSize(compiled) >= CTX_CACHE_MAX ||
                 cache_bytes + bytes > ctx_config.schema_cache_bytes)) {
    node_drop(lru);
    cache_evictions++;
  }
  cache_node *n = RedisModule_Calloc(1, sizeof(*n));
  memcpy(n->digest, digest, 40);
  n->schema = schema;
  n->bytes = bytes;
  RedisModule_DictSetC(compiled, n->digest, 40, n);
  lru_push_front(n);
  cache_bytes += bytes;
  return schema;
}

void ctx_Registry_Remember(const char *digest, ctx_Schema *schema) {
  drop_transient();
  cache_put(digest, schema);
  drop_transient(); /* nobody uses a schema too large to keep after registering it */
}

static void free_keynames(void) {
  RedisModuleDictIter *it = RedisModule_DictIteratorStartC(keynames, "^", NULL, 0);
  RedisModuleString *name;
  while (RedisModule_DictNextC(it, NULL, (void **)&name)) RedisModule_FreeString(NULL, name);
  RedisModule_DictIteratorStop(it);
  RedisModule_FreeDict(NULL, keynames);
}

static void free_all(void) {
  drop_transient();
  while (lru) node_drop(lru);
  RedisModule_FreeDict(NULL, compiled);
  free_keynames();
}

static void create_all(void) {
  compiled = RedisModule_CreateDict(NULL);
  keynames = RedisModule_CreateDict(NULL);
}

void ctx_Registry_Clear(void) {
  free_all();
  create_all();
}

void ctx_Registry_CacheStats(ctx_CacheStats *out) {
  out->schemas = (long long)RedisModule_DictSize(compiled);
  out->bytes = (long long)cache_bytes;
  out->evictions = cache_evictions;
  out->keynames = (long long)RedisModule_DictSize(keynames);
}

/* The standalone registry key of `name`: from the cache, else made (`*made`
 * set: then keyname_done keeps or frees it). */
static RedisModuleString *standalone_keyname(const char *name, size_t len, bool *made) {
  RedisModuleString *k = RedisModule_DictGetC(keynames, (void *)name, len, NULL);
  *made = !k;
  return k ? k : ctx_Registry_KeyName(NULL, name, len, -1);
}

/* Keeps a made key name only for a name that has a registry entry, so the
 * cache holds registered names, not whatever clients ask for; when full it
 * starts over (the names in use come back at once). */
static void keyname_done(const char *name, size_t len, RedisModuleString *k, bool found) {
  if (!found) {
    RedisModule_FreeString(NULL, k);
    return;
  }
  if (RedisModule_DictSize(keynames) >= CTX_KEYNAMES_MAX) {
    free_keynames();
    keynames = RedisModule_CreateDict(NULL);
  }
  RedisModule_DictSetC(keynames, (void *)name, len, k);
}

static const char *str_or_empty(RedisModuleString *s, size_t *len) {
  if (!s) {
    *len = 0;
    return "";
  }
  return RedisModule_StringPtrLen(s, len);
}

const ctx_Schema *ctx_Registry_Resolve(RedisModuleCtx *ctx, const char *name,
                                       size_t len, int slot, ctx_Status *st) {
  drop_transient();
  /* A name that cannot be registered is refused before any lookup: nothing
   * is made or kept for it. */
  if (!ctx_SchemaName_Check(name, len, st)) return NULL;
  const ctx_Schema *result = NULL;
  RedisModuleString *type = NULL, *fds = NULL, *vfield = NULL, *digest = NULL;
  RedisModuleString *hist = NULL, *hpay = NULL, *feed = NULL, *win = NULL;
  bool made = false;
  memset(&last_settings, 0, sizeof(last_settings));
  RedisModuleString *kname = slot < 0 ? standalone_keyname(name, len, &made)
                                      : ctx_Registry_KeyName(ctx, name, len, slot);
  RedisModuleKey *key = RedisModule_OpenKey(ctx, kname, REDISMODULE_READ);
  bool found = RedisModule_KeyType(key) == REDISMODULE_KEYTYPE_HASH;
  int nl = len > 120 ? 120 : (int)len;

  if (!found) {
    ctx_Status_Set(st, kCtx_Schema, "unknown schema '%.*s'", nl, name);
    goto done;
  }
  /* The history settings come with the digest: one lookup, no cache keyed by them. */
  RedisModule_HashGet(key, REDISMODULE_HASH_NONE, ctx_names.digest, &digest,
                      ctx_names.history, &hist, ctx_names.hpayload, &hpay, ctx_names.feed,
                      &feed, ctx_names.window, &win, NULL);
  ctx_HistorySettings_Read(hist, hpay, &last_settings);
  last_settings.feed = ctx_FeedSetting_Read(feed);
  last_settings.window = ctx_WindowSetting_Read(win);
  size_t dlen;
  const char *d = str_or_empty(digest, &dlen);
  if (dlen == 40) {
    result = cache_get(d);
    if (result) goto done;
  }

  /* Not cached, or the entry changed: compile it from the keyspace. */
  RedisModule_HashGet(key, REDISMODULE_HASH_CFIELDS, "type", &type, "fds", &fds,
                      "vfield", &vfield, NULL);
  size_t tl, fl, vl;
  const char *t = str_or_empty(type, &tl);
  const char *f = str_or_empty(fds, &fl);
  const char *v = str_or_empty(vfield, &vl);
  char computed[41];
  ctx_Digest(t, tl, v, vl, f, fl, computed);
  if (!type || !fds || !vfield || dlen != 40 || memcmp(computed, d, 40) != 0) {
    ctx_Status_Set(st, kCtx_Schema,
                   "registry entry for schema '%.*s' is damaged (edited outside "
                   "CTX.SCHEMA.SET?); register the schema again",
                   nl, name);
    goto done;
  }
  ctx_Status cst;
  ctx_Schema *s = ctx_Schema_Build(f, fl, t, tl, v, vl, (size_t)-1, &cst);
  if (!s) {
    ctx_Status_Set(st, cst.code == kCtx_NoMemory ? kCtx_NoMemory : kCtx_Schema,
                   "registry entry for schema '%.*s' does not compile: %s", nl,
                   name, cst.msg);
    goto done;
  }
  result = cache_put(computed, s);

done:
  RedisModule_CloseKey(key);
  if (slot >= 0) {
    RedisModule_FreeString(ctx, kname);
  } else if (made) {
    keyname_done(name, len, kname, found);
  }
  if (type) RedisModule_FreeString(ctx, type);
  if (fds) RedisModule_FreeString(ctx, fds);
  if (vfield) RedisModule_FreeString(ctx, vfield);
  if (digest) RedisModule_FreeString(ctx, digest);
  if (hist) RedisModule_FreeString(ctx, hist);
  if (hpay) RedisModule_FreeString(ctx, hpay);
  if (feed) RedisModule_FreeString(ctx, feed);
  if (win) RedisModule_FreeString(ctx, win);
  if (!result) memset(&last_settings, 0, sizeof(last_settings));
  return result;
}

/* The keyspace was replaced or emptied wholesale: drop every compiled schema;
 * the next use recompiles from whatever the keyspace now holds. The digest
 * check alone would catch this too; this just releases memory early. */
static void on_wholesale_change(RedisModuleCtx *ctx, RedisModuleEvent eid,
                                uint64_t subevent, void *data) {
  (void)ctx;
  (void)subevent;
  (void)data;
  ctx_Registry_Clear();
  if (eid.id == REDISMODULE_EVENT_FLUSHDB) ctx_Wait_OnFlush(subevent, data); /* cmd_wait.c */
}

int ctx_Registry_Init(RedisModuleCtx *ctx) {
  create_all();
  if (RedisModule_SubscribeToServerEvent) {
    RedisModule_SubscribeToServerEvent(ctx, RedisModuleEvent_FlushDB,
                                       on_wholesale_change);
    RedisModule_SubscribeToServerEvent(ctx, RedisModuleEvent_Loading,
                                       on_wholesale_change);
  }
  return REDISMODULE_OK;
}
