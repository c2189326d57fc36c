/* registry.c - the schema registry: plain keys in the keyspace, plus a cache
 * of compiled schemas keyed by name and checked against the entry's digest on
 * every use (so replication, restarts, FLUSHALL and hand edits are picked up). */
#include <stdio.h>
#include <string.h>

#include "ctx_module.h"
#include "sha1.h"

typedef struct {
  char digest[41];
  ctx_Schema *schema;
  RedisModuleString *keyname; /* __ctx:schema:<name> (standalone), kept for the hot path */
} cache_entry;

static RedisModuleDict *cache; /* name -> cache_entry* */

int ctx_Registry_CheckName(RedisModuleCtx *ctx, RedisModuleString *name) {
  size_t len;
  const char *s = RedisModule_StringPtrLen(name, &len);
  bool ok = len >= 1 && len <= CTX_SCHEMA_NAME_MAX;
  for (size_t i = 0; ok && i < len; i++) {
    char c = s[i];
    ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-' || c == ':';
  }
  if (!ok) {
    RedisModule_ReplyWithError(
        ctx, "CTXSCHEMA invalid schema name: 1 to 128 bytes of A-Z a-z 0-9 _ . - :");
  }
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

void ctx_Registry_Digest(const char *type, size_t type_len, const char *vfield,
                         size_t vfield_len, const char *fds, size_t fds_len,
                         char out[41]) {
  char num[32];
  ctx_Sha1 s;
  ctx_Sha1_Init(&s);
  int n = snprintf(num, sizeof(num), "%zu:", type_len);
  ctx_Sha1_Update(&s, num, (size_t)n);
  ctx_Sha1_Update(&s, type, type_len);
  n = snprintf(num, sizeof(num), "%zu:", vfield_len);
  ctx_Sha1_Update(&s, num, (size_t)n);
  ctx_Sha1_Update(&s, vfield, vfield_len);
  ctx_Sha1_Update(&s, fds, fds_len);
  ctx_Sha1_HexFinal(&s, out);
}

static void entry_free(cache_entry *e) {
  if (!e) return;
  ctx_Schema_Free(e->schema);
  RedisModule_FreeString(NULL, e->keyname);
  RedisModule_Free(e);
}

void ctx_Registry_Remember(const char *name, size_t len, const char *digest,
                           ctx_Schema *schema) {
  cache_entry *e = RedisModule_Alloc(sizeof(*e));
  memcpy(e->digest, digest, 41);
  e->schema = schema;
  e->keyname = ctx_Registry_KeyName(NULL, name, len, -1);
  cache_entry *old = NULL;
  RedisModule_DictDelC(cache, (void *)name, len, &old);
  entry_free(old);
  RedisModule_DictSetC(cache, (void *)name, len, e);
}

void ctx_Registry_Forget(const char *name, size_t len) {
  cache_entry *old = NULL;
  if (RedisModule_DictDelC(cache, (void *)name, len, &old) == REDISMODULE_OK) {
    entry_free(old);
  }
}

void ctx_Registry_Clear(void) {
  RedisModuleDictIter *it = RedisModule_DictIteratorStartC(cache, "^", NULL, 0);
  cache_entry *e;
  while (RedisModule_DictNextC(it, NULL, (void **)&e)) entry_free(e);
  RedisModule_DictIteratorStop(it);
  RedisModule_FreeDict(NULL, cache);
  cache = RedisModule_CreateDict(NULL);
}

long long ctx_Registry_CacheSize(void) {
  return (long long)RedisModule_DictSize(cache);
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
  const ctx_Schema *result = NULL;
  RedisModuleString *type = NULL, *fds = NULL, *vfield = NULL, *digest = NULL;
  cache_entry *e = RedisModule_DictGetC(cache, (void *)name, len, NULL);
  bool cached_name = e && slot < 0;
  RedisModuleString *kname = cached_name ? NULL : ctx_Registry_KeyName(ctx, name, len, slot);
  RedisModuleKey *key =
      RedisModule_OpenKey(ctx, cached_name ? e->keyname : kname, REDISMODULE_READ);
  int nl = len > 120 ? 120 : (int)len;

  if (RedisModule_KeyType(key) != REDISMODULE_KEYTYPE_HASH) {
    ctx_Status_Set(st, kCtx_Schema, "unknown schema '%.*s'", nl, name);
    goto done;
  }
  RedisModule_HashGet(key, REDISMODULE_HASH_NONE, ctx_names.digest, &digest, NULL);
  size_t dlen;
  const char *d = str_or_empty(digest, &dlen);
  if (e && dlen == 40 && memcmp(e->digest, d, 40) == 0) {
    result = e->schema;
    goto done;
  }

  /* Not cached, or the entry changed: compile it from the keyspace. */
  RedisModule_HashGet(key, REDISMODULE_HASH_CFIELDS, "type", &type, "fds", &fds,
                      "vfield", &vfield, NULL);
  size_t tl, fl, vl;
  const char *t = str_or_empty(type, &tl);
  const char *f = str_or_empty(fds, &fl);
  const char *v = str_or_empty(vfield, &vl);
  char computed[41];
  ctx_Registry_Digest(t, tl, v, vl, f, fl, computed);
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
  ctx_Registry_Remember(name, len, computed, s);
  result = s;

done:
  RedisModule_CloseKey(key);
  if (kname) RedisModule_FreeString(ctx, kname);
  if (type) RedisModule_FreeString(ctx, type);
  if (fds) RedisModule_FreeString(ctx, fds);
  if (vfield) RedisModule_FreeString(ctx, vfield);
  if (digest) RedisModule_FreeString(ctx, digest);
  return result;
}

/* The keyspace was replaced or emptied wholesale: drop every compiled schema;
 * the next use recompiles from whatever the keyspace now holds. The digest
 * check alone would catch this too; this just releases memory early. */
static void on_wholesale_change(RedisModuleCtx *ctx, RedisModuleEvent eid,
                                uint64_t subevent, void *data) {
  (void)ctx;
  (void)eid;
  (void)subevent;
  (void)data;
  ctx_Registry_Clear();
}

int ctx_Registry_Init(RedisModuleCtx *ctx) {
  cache = RedisModule_CreateDict(NULL);
  if (RedisModule_SubscribeToServerEvent) {
    RedisModule_SubscribeToServerEvent(ctx, RedisModuleEvent_FlushDB,
                                       on_wholesale_change);
    RedisModule_SubscribeToServerEvent(ctx, RedisModuleEvent_Loading,
                                       on_wholesale_change);
  }
  return REDISMODULE_OK;
}
