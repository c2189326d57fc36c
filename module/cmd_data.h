/* cmd_data.h - internal to the context commands (cmd_data.c, cmd_patch.c,
 * cmd_lifecycle.c): the context as read, the write options and the shared
 * helpers cmd_data.c defines. */
#ifndef CTXLINK_CMD_DATA_H
#define CTXLINK_CMD_DATA_H

#include <stdbool.h>
#include <stdint.h>

#include "core/ctx_value.h"
#include "ctx_module.h"

#define CTX_VERSION_MAX (INT64_MAX - 1)
#define CTX_STRING_MAX (512 * 1024 * 1024) /* RM_StringTruncate's limit */
#define CTX_EMBSTR_MAX 44 /* OBJ_ENCODING_EMBSTR_SIZE_LIMIT: longer strings are raw */
#define CTX_PX_MAX 1000000000000000LL /* PX and CTX.TOUCH: at most 10^15 ms */

typedef enum { kState_Absent, kState_Context, kState_WrongType } state_kind;

/* A context as read: `v` points into the key's string (v2) or into the hash
 * fields below (v1, n = 0). Valid until the key is written. */
typedef struct {
  state_kind kind;
  bool v1;
  ctx_Value v;
  RedisModuleString *h_raw, *h_ver, *h_schema, *h_ms, *h_by;
} ctx_State;

typedef struct {
  RedisModuleString *schema, *by, *id, *inc, *px;
  unsigned char digest[CTX_DIGEST_LEN]; /* of id, when given */
  unsigned char incarnation[CTX_INC_LEN]; /* of inc, when given */
  long long px_ms;                       /* of px, when given */
} ctx_WriteOpts;

/* The options parse_write_opt takes (a mask of them). */
enum { kOpt_Schema = 1, kOpt_By = 2, kOpt_Id = 4, kOpt_Inc = 8, kOpt_Px = 16 };

void state_free(RedisModuleCtx *ctx, ctx_State *s);
const char *str_or_empty(RedisModuleString *s, size_t *len);
state_kind state_read(RedisModuleKey *key, ctx_State *s);
void reply_incarnation(RedisModuleCtx *ctx, const ctx_State *s);
void reply_state(RedisModuleCtx *ctx, const ctx_State *s, int nelem);
int reply_conflict(RedisModuleCtx *ctx, const ctx_State *s, bool with_id);
int reply_replayed(RedisModuleCtx *ctx, uint64_t version);
int reply_wrongtype(RedisModuleCtx *ctx);
bool parse_version(RedisModuleString *arg, long long *out);
int reply_bad_version(RedisModuleCtx *ctx, const char *what);
bool parse_ms(RedisModuleString *arg, long long *out);
int parse_write_opt(RedisModuleCtx *ctx, RedisModuleString **argv, int argc, int i,
                    int allowed, ctx_WriteOpts *o);
void write_digest(RedisModuleString *id, unsigned char out[CTX_DIGEST_LEN]);
bool check_incarnation(RedisModuleCtx *ctx, const ctx_State *s, long long base,
                       const ctx_WriteOpts *o);
void write_incarnation(const ctx_State *s, const ctx_WriteOpts *o,
                       unsigned char out[CTX_INC_LEN]);
const ctx_Schema *write_schema(RedisModuleCtx *ctx, RedisModuleString *keyname,
                               const ctx_State *s, RedisModuleString *schema_arg,
                               const char **name, size_t *nlen, ctx_Status *st);
void set_abs_expire(RedisModuleKey *key, long long at);
bool write_value(RedisModuleCtx *ctx, RedisModuleKey *key, RedisModuleString *keyname,
                 const ctx_State *s, uint64_t version, const ctx_WriteOpts *o,
                 const ctx_Clocks *clocks, const char *schema, size_t schema_len,
                 const char *payload, size_t payload_len, ctx_Status *st);
void count_rejection(const ctx_Status *st);

#endif
