/* ctxlink.c - module entry point: arguments, command table, INFO.
 *
 *   redis-server --loadmodule build/ctxlink.so [max-payload-bytes N]
 *       [max-depth N] [unknown-fields reject|allow] [max-schema-bytes N]
 *       [schema-cache-bytes N]
 */
#define CTX_RM_MAIN
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "compat.h"
#include "ctx_module.h"
#include "metrics.h"

#define CTX_MODULE_NAME "ctx"
#define CTX_MODULE_VERSION CTXLINK_VERSION_NUM /* pyproject.toml's version, from the Makefile */
#define CTX_PROTOCOL 3        /* docs/PROTOCOL.md; INFO ctx_protocol */

ctx_Config ctx_config;
ctx_Stats ctx_stats;
ctx_Names ctx_names;

static RedisModuleString *make_name(const char *s) {
  return RedisModule_CreateString(NULL, s, strlen(s));
}

static void make_names(void) {
  ctx_names.raw = make_name("raw");
  ctx_names.version = make_name("version");
  ctx_names.schema = make_name("schema");
  ctx_names.updated_ms = make_name("updated_ms");
  ctx_names.updated_by = make_name("updated_by");
  ctx_names.digest = make_name("digest");
  ctx_names.empty = make_name("");
  ctx_names.keepttl = make_name("KEEPTTL");
  ctx_names.history = make_name("history");
  ctx_names.hpayload = make_name("hpayload");
  ctx_names.feed = make_name("feed");
  ctx_names.window = make_name("window");
}

/* ---- the core's allocator: Redis' ---- */

static void *redis_malloc(size_t n) { return RedisModule_Alloc(n); }
static void *redis_realloc(void *p, size_t n) { return RedisModule_Realloc(p, n); }
static void redis_free(void *p) { RedisModule_Free(p); }

/* ---- Redis 7 command info, looked up at load ---- */

RedisModuleCommand *(*ctx_GetCommand)(RedisModuleCtx *ctx, const char *name);
int (*ctx_SetCommandInfo)(RedisModuleCommand *command,
                          const RedisModuleCommandInfo *info);
int (*ctx_SetCommandACLCategories)(RedisModuleCommand *command, const char *categories);
const RedisModuleCommandInfoVersion ctx_CommandInfoVersion = {
    1, sizeof(RedisModuleCommandHistoryEntry), sizeof(RedisModuleCommandKeySpec),
    sizeof(RedisModuleCommandArg)};

void ctx_compat_Init(void) {
  if (RedisModule_GetApi("RedisModule_GetCommand", (void *)&ctx_GetCommand) !=
      REDISMODULE_OK) {
    ctx_GetCommand = NULL;
  }
  if (RedisModule_GetApi("RedisModule_SetCommandInfo", (void *)&ctx_SetCommandInfo) !=
      REDISMODULE_OK) {
    ctx_SetCommandInfo = NULL;
  }
  if (RedisModule_GetApi("RedisModule_SetCommandACLCategories",
                         (void *)&ctx_SetCommandACLCategories) != REDISMODULE_OK) {
    ctx_SetCommandACLCategories = NULL; /* Redis < 7.2 */
  }
}

/* ---- the command table: reads like docs/PROTOCOL.md ---- */

#define KEY_NONE 0
#define KEY_READ (REDISMODULE_CMD_KEY_RO | REDISMODULE_CMD_KEY_ACCESS)
#define KEY_UPDATE \
  (REDISMODULE_CMD_KEY_RW | REDISMODULE_CMD_KEY_ACCESS | REDISMODULE_CMD_KEY_UPDATE)
#define KEY_DELETE \
  (REDISMODULE_CMD_KEY_RW | REDISMODULE_CMD_KEY_ACCESS | REDISMODULE_CMD_KEY_DELETE)

typedef struct {
  const char *name;
  RedisModuleCmdFunc fn;
  const char *flags;
  const char *acl; /* ACL categories (Redis 7.2+) */
  int arity;          /* Redis convention: -N means at least N */
  uint64_t key_flags; /* KEY_NONE: the command names no key */
  const char *summary;
  const char *since; /* module version that added the command; NULL: 0.1.0 */
} ctx_CommandSpec;

static const ctx_CommandSpec kCommands[] = {
    {"ctx.get", ctx_GetCommand_, "readonly fast", "read fast", 2, KEY_READ,
     "Read a context: [version, raw, schema, updated_ms, updated_by, incarnation] or nil.",
     NULL},
    {"ctx.cas", ctx_CasCommand, "write deny-oom", "write", -4, KEY_UPDATE,
     "Create or update a context if its version is expected_version.", NULL},
    {"ctx.patch", ctx_PatchCommand, "write deny-oom", "write", -4, KEY_UPDATE,
     "Write some top-level fields of a context if none it reads or writes changed.", "0.2.0"},
    {"ctx.del", ctx_DelCommand, "write deny-oom", "write", -3, KEY_DELETE,
     "Delete a context if its version is expected_version.", NULL},
    {"ctx.wait", ctx_WaitCommand, "readonly", "read blocking", 4, KEY_READ,
     "Block until a context's version is above after_version: CTX.GET's reply, or nil.", "0.3.0"},
    {"ctx.touch", ctx_TouchCommand, "write fast", "write fast", 3, KEY_UPDATE,
     "Set a context's time to live in milliseconds: 1, or 0 when there is none.", "0.3.0"},
    {"ctx.schema.set", ctx_SchemaSetCommand, "write deny-oom", "write", -4, KEY_NONE,
     "Register or update a schema from a FileDescriptorSet.", NULL},
    {"ctx.schema.get", ctx_SchemaGetCommand, "readonly", "read", 2, KEY_NONE,
     "Get a schema: [message_type, descriptor_set, revision] or nil.", NULL},
    {"ctx.schema.list", ctx_SchemaListCommand, "readonly", "read", 1, KEY_NONE,
     "List registered schema names.", NULL},
    {"ctx.schema.del", ctx_SchemaDelCommand, "write", "write", 2, KEY_NONE,
     "Remove a schema.", NULL},
};

static int register_command(RedisModuleCtx *ctx, const ctx_CommandSpec *c) {
  int key = c->key_flags != KEY_NONE;
  if (RedisModule_CreateCommand(ctx, c->name, c->fn, c->flags, key, key, key) ==
      REDISMODULE_ERR) {
    return REDISMODULE_ERR;
  }
  if (!ctx_GetCommand || !ctx_SetCommandInfo) return REDISMODULE_OK; /* Redis < 7 */
  RedisModuleCommand *cmd = ctx_GetCommand(ctx, c->name);
  if (!cmd) return REDISMODULE_ERR;
  if (ctx_SetCommandACLCategories &&
      ctx_SetCommandACLCategories(cmd, c->acl) == REDISMODULE_ERR) {
    return REDISMODULE_ERR;
  }
  RedisModuleCommandKeySpec specs[2];
  memset(specs, 0, sizeof(specs));
  specs[0].flags = c->key_flags;
  specs[0].begin_search_type = REDISMODULE_KSPEC_BS_INDEX;
  specs[0].bs.index.pos = 1;
  specs[0].find_keys_type = REDISMODULE_KSPEC_FK_RANGE;
  specs[0].fk.range.lastkey = 0;
  specs[0].fk.range.keystep = 1;
  specs[0].fk.range.limit = 0;
  RedisModuleCommandInfo info;
  memset(&info, 0, sizeof(info));
  info.version = &ctx_CommandInfoVersion;
  info.summary = c->summary;
  info.since = c->since ? c->since : "0.1.0";
  info.arity = c->arity;
  info.key_specs = key ? specs : NULL;
  return ctx_SetCommandInfo(cmd, &info);
}

/* ---- module arguments ---- */

static bool parse_size(RedisModuleString *s, long long lo, long long hi, long long *out) {
  return RedisModule_StringToLongLong(s, out) == REDISMODULE_OK && *out >= lo && *out <= hi;
}

static int parse_args(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  ctx_Limits_Default(&ctx_config.limits);
  ctx_config.max_schema_bytes = CTX_DEFAULT_MAX_SCHEMA_BYTES;
  ctx_config.schema_cache_bytes = CTX_DEFAULT_SCHEMA_CACHE_BYTES;
  if (argc % 2) {
    RedisModule_Log(ctx, "warning",
                    "ctxlink: module argument '%s' has no value (arguments come in "
                    "pairs: name value)",
                    RedisModule_StringPtrLen(argv[argc - 1], NULL));
    return REDISMODULE_ERR;
  }
  for (int i = 0; i < argc; i += 2) {
    const char *name = RedisModule_StringPtrLen(argv[i], NULL);
    const char *value = RedisModule_StringPtrLen(argv[i + 1], NULL);
    long long v;
    bool ok = true;
    if (!strcasecmp(name, "max-payload-bytes")) {
      ok = parse_size(argv[i + 1], 1, 512LL << 20, &v);
      if (ok) ctx_config.limits.max_payload_bytes = (size_t)v;
    } else if (!strcasecmp(name, "max-depth")) {
      ok = parse_size(argv[i + 1], 1, CTX_MAX_DEPTH_LIMIT, &v);
      if (ok) ctx_config.limits.max_depth = (int)v;
    } else if (!strcasecmp(name, "max-schema-bytes")) {
      ok = parse_size(argv[i + 1], 1, 512LL << 20, &v);
      if (ok) ctx_config.max_schema_bytes = (size_t)v;
    } else if (!strcasecmp(name, "schema-cache-bytes")) {
      ok = parse_size(argv[i + 1], 0, CTX_MAX_SCHEMA_CACHE_BYTES, &v);
      if (ok) ctx_config.schema_cache_bytes = (size_t)v;
    } else if (!strcasecmp(name, "unknown-fields")) {
      ok = !strcasecmp(value, "reject") || !strcasecmp(value, "allow");
      if (ok) ctx_config.limits.allow_unknown = !strcasecmp(value, "allow");
    } else {
      RedisModule_Log(ctx, "warning", "ctxlink: unknown module argument '%s'", name);
      return REDISMODULE_ERR;
    }
    if (!ok) {
      RedisModule_Log(ctx, "warning", "ctxlink: bad value '%s' for module argument '%s'",
                      value, name);
      return REDISMODULE_ERR;
    }
  }
  return REDISMODULE_OK;
}

/* ---- INFO ctx ---- */

static void info_func(RedisModuleInfoCtx *ctx, int for_crash_report) {
  (void)for_crash_report;
  RedisModule_InfoAddSection(ctx, "stats");
  RedisModule_InfoAddFieldLongLong(ctx, "protocol", CTX_PROTOCOL);
  RedisModule_InfoAddFieldLongLong(ctx, "cas_ok", ctx_stats.cas_ok);
  RedisModule_InfoAddFieldLongLong(ctx, "cas_conflicts", ctx_stats.cas_conflicts);
  RedisModule_InfoAddFieldLongLong(ctx, "patch_ok", ctx_stats.patch_ok);
  RedisModule_InfoAddFieldLongLong(ctx, "replays", ctx_stats.replays);
  RedisModule_InfoAddFieldLongLong(ctx, "del_ok", ctx_stats.del_ok);
  RedisModule_InfoAddFieldLongLong(ctx, "touch_ok", ctx_stats.touch_ok);
  RedisModule_InfoAddFieldLongLong(ctx, "gone", ctx_stats.gone);
  RedisModule_InfoAddFieldLongLong(ctx, "get_hits", ctx_stats.get_hits);
  RedisModule_InfoAddFieldLongLong(ctx, "get_misses", ctx_stats.get_misses);
  RedisModule_InfoAddFieldLongLong(ctx, "rejected_invalid", ctx_stats.rejected_invalid);
  RedisModule_InfoAddFieldLongLong(ctx, "rejected_version", ctx_stats.rejected_version);
  RedisModule_InfoAddFieldLongLong(ctx, "rejected_toobig", ctx_stats.rejected_toobig);
  RedisModule_InfoAddFieldLongLong(ctx, "rejected_schema", ctx_stats.rejected_schema);
  RedisModule_InfoAddFieldLongLong(ctx, "rejected_field", ctx_stats.rejected_field);
  ctx_CacheStats cs;
  ctx_Registry_CacheStats(&cs);
  RedisModule_InfoAddFieldLongLong(ctx, "schemas_loaded", cs.schemas);
  RedisModule_InfoAddFieldLongLong(ctx, "schema_cache_bytes", cs.bytes);
  RedisModule_InfoAddFieldLongLong(ctx, "schema_cache_evictions", cs.evictions);
  RedisModule_InfoAddFieldLongLong(ctx, "schema_keynames_cached", cs.keynames);
  RedisModule_InfoAddFieldLongLong(ctx, "core_allocated_bytes",
                                   (long long)ctx_AllocatedBytes());
  ctx_Metrics_Info(ctx); /* the "conflicts" section: metrics.c */
  RedisModule_InfoAddSection(ctx, "config");
  RedisModule_InfoAddFieldLongLong(ctx, "max_payload_bytes",
                                   (long long)ctx_config.limits.max_payload_bytes);
  RedisModule_InfoAddFieldLongLong(ctx, "max_depth", ctx_config.limits.max_depth);
  RedisModule_InfoAddFieldCString(ctx, "unknown_fields",
                                  ctx_config.limits.allow_unknown ? "allow" : "reject");
  RedisModule_InfoAddFieldLongLong(ctx, "max_schema_bytes",
                                   (long long)ctx_config.max_schema_bytes);
  RedisModule_InfoAddFieldLongLong(ctx, "schema_cache_bytes_limit",
                                   (long long)ctx_config.schema_cache_bytes);
}

__attribute__((visibility("default"))) int RedisModule_OnLoad(RedisModuleCtx *ctx,
                                                              RedisModuleString **argv,
                                                              int argc) {
  if (RedisModule_Init(ctx, CTX_MODULE_NAME, CTX_MODULE_VERSION, REDISMODULE_APIVER_1) ==
      REDISMODULE_ERR) {
    return REDISMODULE_ERR;
  }
  ctx_compat_Init();
  /* Before anything reaches the core: its memory and upb's go through Redis'
   * allocator, so used_memory, maxmemory and MEMORY STATS see it. */
  static const ctx_Allocator redis_alloc = {redis_malloc, redis_realloc, redis_free};
  ctx_SetAllocator(&redis_alloc);
  if (parse_args(ctx, argv, argc) == REDISMODULE_ERR) return REDISMODULE_ERR;
  make_names();
  RedisModule_SetModuleOptions(ctx, REDISMODULE_OPTIONS_HANDLE_IO_ERRORS |
                                        REDISMODULE_OPTION_NO_IMPLICIT_SIGNAL_MODIFIED);
  for (size_t i = 0; i < sizeof(kCommands) / sizeof(kCommands[0]); i++) {
    if (register_command(ctx, &kCommands[i]) == REDISMODULE_ERR) {
      RedisModule_Log(ctx, "warning", "ctxlink: cannot register %s", kCommands[i].name);
      return REDISMODULE_ERR;
    }
  }
  if (RedisModule_RegisterInfoFunc(ctx, info_func) == REDISMODULE_ERR) {
    return REDISMODULE_ERR;
  }
  if (ctx_Cluster_Init(ctx) == REDISMODULE_ERR) return REDISMODULE_ERR;
  if (ctx_Wait_Init(ctx) == REDISMODULE_ERR) return REDISMODULE_ERR;
  return ctx_Registry_Init(ctx);
}
