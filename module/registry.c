/* registry.c - the schema registry: plain keys in the keyspace, plus a cache
 * of compiled schemas keyed by the entry's digest. Every use reads the digest
 * of the entry it needs, so replication, restarts, FLUSHALL, other databases
 * and other slots' copies are always picked up, and two definitions under one
 * name (two databases, two slots) each keep their compiled form. */
#include <stdio.h>
#include <string.h>

#include "ctx_module.h"
#include "sha1.h"

#define CTX_CACHE_MAX 64 /* compiled schemas kept; the oldest-keyed one goes first */

static RedisModuleDict *compiled; /* digest (40 hex chars) -> ctx_Schema* */
static RedisModuleDict *keynames; /* name -> __ctx:schema:<name>, spares the hot path */

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

void ctx_Registry_Remember(const char *digest, ctx_Schema *schema) {
  if (RedisModule_DictGetC(compiled, (void *)digest, 40, NULL)) {
    ctx_Schema_Free(schema); /* the same definition is compiled already */
    return;
  }
  if (RedisModule_DictSize(compiled) >= CTX_CACHE_MAX) {
    RedisModuleDictIter *it = RedisModule_DictIteratorStartC(compiled, "^", NULL, 0);
    size_t klen;
    ctx_Schema *victim = NULL;
    char *k = RedisModule_DictNextC(it, &klen, (void **)&victim);
    char key[40];
    if (k && klen == 40) memcpy(key, k, 40);
    RedisModule_DictIteratorStop(it);
    if (k && klen == 40) {
      RedisModule_DictDelC(compiled, key, 40, NULL);
      ctx_Schema_Free(victim);
    }
  }
  RedisModule_DictSetC(compiled, (void *)digest, 40, schema);
}

static void free_all(void) {
  RedisModuleDictIter *it = RedisModule_DictIteratorStartC(compiled, "^", NULL, 0);
  ctx_Schema *schema;
  while (RedisModule_DictNextC(it, NULL, (void **)&schema)) ctx_Schema_Free(schema);
  RedisModule_DictIteratorStop(it);
  RedisModule_FreeDict(NULL, compiled);
  it = RedisModule_DictIteratorStartC(keynames, "^", NULL, 0);
  RedisModuleString *name;
  while (RedisModule_DictNextC(it, NULL, (void **)&name)) RedisModule_FreeString(NULL, name);
  RedisModule_DictIteratorStop(it);
  RedisModule_FreeDict(NULL, keynames);
}

void ctx_Registry_Clear(void) {
  free_all();
  compiled = RedisModule_CreateDict(NULL);
  keynames = RedisModule_CreateDict(NULL);
}

long long ctx_Registry_CacheSize(void) {
  return (long long)RedisModule_DictSize(compiled);
}

/* The standalone registry key of `name`, made once. */
static RedisModuleString *standalone_keyname(const char *name, size_t len) {
  RedisModuleString *k = RedisModule_DictGetC(keynames, (void *)name, len, NULL);
  if (!k) {
    k = ctx_Registry_KeyName(NULL, name, len, -1);
    RedisModule_DictSetC(keynames, (void *)name, len, k);
  }
  return k;
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
  RedisModuleString *kname = slot < 0 ? NULL : ctx_Registry_KeyName(ctx, name, len, slot);
  RedisModuleKey *key = RedisModule_OpenKey(
      ctx, kname ? kname : standalone_keyname(name, len), REDISMODULE_READ);
  int nl = len > 120 ? 120 : (int)len;

  if (RedisModule_KeyType(key) != REDISMODULE_KEYTYPE_HASH) {
    ctx_Status_Set(st, kCtx_Schema, "unknown schema '%.*s'", nl, name);
    goto done;
  }
  RedisModule_HashGet(key, REDISMODULE_HASH_NONE, ctx_names.digest, &digest, NULL);
  size_t dlen;
  const char *d = str_or_empty(digest, &dlen);
  if (dlen == 40) {
    result = RedisModule_DictGetC(compiled, (void *)d, 40, NULL);
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
  ctx_Registry_Remember(computed, s);
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
  compiled = RedisModule_CreateDict(NULL);
  keynames = RedisModule_CreateDict(NULL);
  if (RedisModule_SubscribeToServerEvent) {
    RedisModule_SubscribeToServerEvent(ctx, RedisModuleEvent_FlushDB,
                                       on_wholesale_change);
    RedisModule_SubscribeToServerEvent(ctx, RedisModuleEvent_Loading,
                                       on_wholesale_change);
  }
  return REDISMODULE_OK;
}
