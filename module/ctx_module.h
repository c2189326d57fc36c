/* ctx_module.h - what the module's files share: configuration, counters,
 * the schema registry and the command handlers. */
#ifndef CTX_MODULE_H_
#define CTX_MODULE_H_

#include <string.h>
#include <strings.h>

#include "core/ctx_core.h"
#include "rm.h"

/* ---- configuration (module arguments, fixed at load) ---- */
typedef struct {
  ctx_Limits limits;
  size_t max_schema_bytes;
  size_t schema_cache_bytes; /* compiled-schema cache byte limit */
} ctx_Config;

#define CTX_DEFAULT_SCHEMA_CACHE_BYTES ((size_t)256 << 20)
#define CTX_MAX_SCHEMA_CACHE_BYTES ((long long)1 << 40)

extern ctx_Config ctx_config;

/* ---- INFO ctx counters ---- */
typedef struct {
  long long cas_ok;
  long long cas_conflicts; /* conflicts of CTX.CAS, CTX.PATCH and CTX.DEL */
  long long patch_ok;
  long long replays; /* writes answered "replayed" from the window */
  long long del_ok;
  long long touch_ok; /* CTX.TOUCH that set an expiry */
  long long gone;     /* writes refused with CTXGONE (incarnation mismatch) */
  long long get_hits;
  long long get_misses;
  long long rejected_invalid;
  long long rejected_version;
  long long rejected_toobig;
  long long rejected_schema;
  long long rejected_field;
} ctx_Stats;

extern ctx_Stats ctx_stats;

/* Field names made once at load, so the hot path allocates no name strings. */
typedef struct {
  RedisModuleString *raw, *version, *schema, *updated_ms, *updated_by, *digest, *empty;
  RedisModuleString *keepttl; /* the last argument of every propagated SET */
  RedisModuleString *history, *hpayload; /* registry entry fields (history.c) */
  RedisModuleString *feed;               /* registry entry field (history.c, the change feed) */
  RedisModuleString *window;             /* registry entry field: the write-id window */
} ctx_Names;

extern ctx_Names ctx_names;

/* True when the (binary) argument is `word`, ignoring ASCII case: an option keyword. Unlike
 * strcasecmp on the C string, "ID\0junk" is not "ID". */
static inline bool ctx_ArgIs(RedisModuleString *arg, const char *word) {
  size_t len;
  const char *p = RedisModule_StringPtrLen(arg, &len);
  return len == strlen(word) && !strncasecmp(p, word, len);
}

/* Replies with "<CODE> <message>" for a core status. Always returns
 * REDISMODULE_OK so handlers can `return ctx_ReplyStatus(...)`. */
int ctx_ReplyStatus(RedisModuleCtx *ctx, const ctx_Status *st);

/* ---- the schema registry (registry.c) ---- */

/* The registry's key names (see docs/PROTOCOL.md, "Schema registry"). */
#define CTX_REGISTRY_INDEX "__ctx:schemas"
/* True when `name` is a legal schema name (the core's ctx_SchemaName_Check);
 * else replies "CTXSCHEMA " CTX_BAD_NAME_MSG. */
int ctx_Registry_CheckName(RedisModuleCtx *ctx, RedisModuleString *name);

/* Registry key names. `slot` -1: the standalone names (__ctx:schema:<name>,
 * __ctx:schemas); a slot: that slot's copy in a cluster (__ctx:{<tag>}:...). */
RedisModuleString *ctx_Registry_KeyName(RedisModuleCtx *ctx, const char *name,
                                        size_t len, int slot);
RedisModuleString *ctx_Registry_IndexName(RedisModuleCtx *ctx, int slot);

/* The compiled newest revision of schema `name` from the registry copy of
 * `slot` (-1 standalone), or NULL with st set (CTXSCHEMA invalid schema name /
 * unknown schema / entry that does not compile). The schema stays owned by the
 * registry and is valid until the next registry call (Resolve, Remember,
 * Clear): use it within the command. A schema too large for the cache is kept
 * only until then. */
const ctx_Schema *ctx_Registry_Resolve(RedisModuleCtx *ctx, const char *name,
                                       size_t len, int slot, ctx_Status *st);

/* ---- Redis Cluster (cluster.c) ---- */
#define CTX_SLOTS 16384
int ctx_Cluster_Init(RedisModuleCtx *ctx);
bool ctx_Cluster_Enabled(void);
int ctx_KeySlot(const char *key, size_t len);
const char *ctx_SlotTag(int slot);
int ctx_Cluster_ServedSlots(RedisModuleCtx *ctx, unsigned char *served, bool replicas_too);

/* Puts a freshly built schema in the cache under its 40-character `digest`
 * (takes ownership; the schema may be freed at once). */
void ctx_Registry_Remember(const char *digest, ctx_Schema *schema);
void ctx_Registry_Clear(void);

typedef struct {
  long long schemas;   /* compiled schemas kept */
  long long bytes;     /* bytes they hold (ctx_Schema_MemoryBytes) */
  long long evictions; /* entries dropped to stay within the limits */
  long long keynames;  /* cached registry key names */
} ctx_CacheStats;

void ctx_Registry_CacheStats(ctx_CacheStats *out);
int ctx_Registry_Init(RedisModuleCtx *ctx);

/* The history settings of a registry entry: `history` (changes kept per
 * context, 0 = off, at most CTX_HISTORY_MAX) and `hpayload` ("1": entries keep
 * the payload). Absent or unreadable fields count as off. */
typedef struct {
  int history;
  bool payloads;
  int feed; /* changes kept in the schema's feed `__ctxf:<name>` (0 = off, <= CTX_FEED_MAX) */
  int window; /* write records kept per context (1..CTX_WINDOW_MAX; the WINDOW setting) */
} ctx_HistorySettings;

/* An entry's stored `feed` (NULL, unreadable or out of range: 0). */
int ctx_FeedSetting_Read(RedisModuleString *feed);

/* An entry's stored `window` (NULL, unreadable or out of 1..CTX_WINDOW_MAX:
 * CTX_WINDOW_DEFAULT, so entries written before the setting keep 16 records). */
int ctx_WindowSetting_Read(RedisModuleString *window);

/* The window a write of the schema the last ctx_Registry_Resolve found keeps
 * (CTX_WINDOW_DEFAULT when it found none). */
int ctx_Registry_LastWindow(void);

/* Parses an entry's stored settings (either may be NULL). */
void ctx_HistorySettings_Read(RedisModuleString *history, RedisModuleString *hpayload,
                              ctx_HistorySettings *out);

/* The settings of the entry the last ctx_Registry_Resolve found (read with its
 * digest, in the same HashGet); zero when it found none. */
void ctx_Registry_LastSettings(ctx_HistorySettings *out);

/* ---- per-context history (history.c; docs/PROTOCOL.md, "History") ---- */
typedef enum { kCtx_Change_Create, kCtx_Change_Update, kCtx_Change_Patch } ctx_ChangeKind;

/* A write's history: the settings, and the stream's key name while it is to be written. */
typedef struct {
  int n;
  bool payloads;
  RedisModuleString *key;
  int feed_n;                  /* the schema's FEED setting */
  RedisModuleString *feed_key; /* `__ctxf:<schema>` while the feed is to be written */
  RedisModuleString *ckey;     /* the context's key name (the caller's) */
} ctx_History;

/* `__ctxh:<key>`, on a cluster `__ctxh:{<slot tag>}:<key>` (the caller frees it). */
RedisModuleString *ctx_History_KeyName(RedisModuleCtx *ctx, RedisModuleString *keyname);

/* Before a write, after the schema was resolved: takes the entry's settings
 * (and, with history on, the stream's key name). */
void ctx_History_Prepare(RedisModuleCtx *ctx, RedisModuleString *keyname, ctx_History *h);

/* The same, knowing the schema name: also takes the schema's change feed (standalone only). */
void ctx_History_PrepareFeed(RedisModuleCtx *ctx, RedisModuleString *keyname, const char *schema,
                             size_t slen, ctx_History *h);

/* After a successful write of `key`: appends the change (read back from the
 * stored value) with XADD MAXLEN = n, `<version>-0`; a create drops a leftover
 * stream first; the stream takes the context's expiry (as written: a PX or the
 * kept one); the entry's incarnation is the written value's. Releases `h`. */
void ctx_History_Append(RedisModuleCtx *ctx, ctx_History *h, RedisModuleKey *key,
                        ctx_ChangeKind kind, const uint32_t *fields, int nfields,
                        RedisModuleString *write_id);

/* Frees what Prepare took when the write did not happen. */
void ctx_History_Release(RedisModuleCtx *ctx, ctx_History *h);

/* CTX.DEL: the context's history goes with it. */
void ctx_History_Drop(RedisModuleCtx *ctx, RedisModuleString *keyname);

/* CTX.DEL of a context of schema `schema` (version, incarnation from its value): a `delete`
 * entry in the schema's change feed, when it has one. */
void ctx_Feed_Delete(RedisModuleCtx *ctx, RedisModuleString *keyname, const char *schema,
                     size_t slen, unsigned long long version, const uint8_t *incarnation,
                     RedisModuleString *write_id);

/* CTX.TOUCH (protocol 3): the stream, when there is one, expires at `at_ms` too
 * (PEXPIREAT, propagated). */
void ctx_History_Expire(RedisModuleCtx *ctx, RedisModuleString *keyname, long long at_ms);

/* ---- command handlers ---- */
int ctx_GetCommand_(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int ctx_CasCommand(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int ctx_PatchCommand(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int ctx_DelCommand(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int ctx_WaitCommand(RedisModuleCtx *ctx, RedisModuleString **argv, int argc); /* cmd_wait.c */
int ctx_Wait_Init(RedisModuleCtx *ctx);
/* FLUSHDB / FLUSHALL: called from the registry's FlushDB event handler (a module has one
 * handler per event). */
void ctx_Wait_OnFlush(uint64_t subevent, void *data);
int ctx_TouchCommand(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int ctx_SchemaSetCommand(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int ctx_SchemaGetCommand(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int ctx_SchemaListCommand(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);
int ctx_SchemaDelCommand(RedisModuleCtx *ctx, RedisModuleString **argv, int argc);

#endif /* CTX_MODULE_H_ */
