/* compat.h - the Redis 7.0 command-info API, declared from its documentation
 * for headers that predate it (the pinned 6.2 header does).
 *
 * The functions are looked up at load time with RedisModule_GetApi and may be
 * NULL: on Redis 6.2 the module then registers first/last/step keys only. */
#ifndef CTX_COMPAT_H_
#define CTX_COMPAT_H_

#include <stddef.h>
#include <stdint.h>

#include "rm.h"

#ifndef REDISMODULE_CMD_KEY_RO
#define CTX_DECLARE_COMMAND_INFO 1
#endif

#ifdef CTX_DECLARE_COMMAND_INFO
typedef struct RedisModuleCommand RedisModuleCommand;

#define REDISMODULE_CMD_KEY_RO (1ULL << 0)
#define REDISMODULE_CMD_KEY_RW (1ULL << 1)
#define REDISMODULE_CMD_KEY_OW (1ULL << 2)
#define REDISMODULE_CMD_KEY_RM (1ULL << 3)
#define REDISMODULE_CMD_KEY_ACCESS (1ULL << 4)
#define REDISMODULE_CMD_KEY_UPDATE (1ULL << 5)
#define REDISMODULE_CMD_KEY_INSERT (1ULL << 6)
#define REDISMODULE_CMD_KEY_DELETE (1ULL << 7)

typedef enum {
  REDISMODULE_KSPEC_BS_INVALID = 0,
  REDISMODULE_KSPEC_BS_UNKNOWN,
  REDISMODULE_KSPEC_BS_INDEX,
  REDISMODULE_KSPEC_BS_KEYWORD
} RedisModuleKeySpecBeginSearchType;

typedef enum {
  REDISMODULE_KSPEC_FK_OMITTED = 0,
  REDISMODULE_KSPEC_FK_UNKNOWN,
  REDISMODULE_KSPEC_FK_RANGE,
  REDISMODULE_KSPEC_FK_KEYNUM
} RedisModuleKeySpecFindKeysType;

typedef enum {
  REDISMODULE_ARG_TYPE_STRING,
  REDISMODULE_ARG_TYPE_INTEGER,
  REDISMODULE_ARG_TYPE_DOUBLE,
  REDISMODULE_ARG_TYPE_KEY,
  REDISMODULE_ARG_TYPE_PATTERN,
  REDISMODULE_ARG_TYPE_UNIX_TIME,
  REDISMODULE_ARG_TYPE_PURE_TOKEN,
  REDISMODULE_ARG_TYPE_ONEOF,
  REDISMODULE_ARG_TYPE_BLOCK
} RedisModuleCommandArgType;

typedef struct RedisModuleCommandArg {
  const char *name;
  RedisModuleCommandArgType type;
  int key_spec_index;
  const char *token;
  const char *summary;
  const char *since;
  int flags;
  const char *deprecated_since;
  struct RedisModuleCommandArg *subargs;
  const char *display_text;
} RedisModuleCommandArg;

typedef struct {
  const char *since;
  const char *changes;
} RedisModuleCommandHistoryEntry;

typedef struct {
  const char *notes;
  uint64_t flags;
  RedisModuleKeySpecBeginSearchType begin_search_type;
  union {
    struct { int pos; } index;
    struct { const char *keyword; int startfrom; } keyword;
  } bs;
  RedisModuleKeySpecFindKeysType find_keys_type;
  union {
    struct { int lastkey; int keystep; int limit; } range;
    struct { int keynumidx; int firstkey; int keystep; } keynum;
  } fk;
} RedisModuleCommandKeySpec;

typedef struct {
  int version;
  size_t sizeof_historyentry;
  size_t sizeof_keyspec;
  size_t sizeof_arg;
} RedisModuleCommandInfoVersion;

typedef struct {
  const RedisModuleCommandInfoVersion *version;
  const char *summary;
  const char *complexity;
  const char *since;
  RedisModuleCommandHistoryEntry *history;
  const char *tips;
  int arity;
  RedisModuleCommandKeySpec *key_specs;
  RedisModuleCommandArg *args;
} RedisModuleCommandInfo;
#endif /* CTX_DECLARE_COMMAND_INFO */

/* Filled by ctx_compat_Init; NULL where the server lacks the API. */
extern RedisModuleCommand *(*ctx_GetCommand)(RedisModuleCtx *ctx, const char *name);
extern int (*ctx_SetCommandInfo)(RedisModuleCommand *command,
                                 const RedisModuleCommandInfo *info);
extern const RedisModuleCommandInfoVersion ctx_CommandInfoVersion;

void ctx_compat_Init(void);

#endif /* CTX_COMPAT_H_ */
