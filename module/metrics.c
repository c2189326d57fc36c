/* metrics.c - conflict metrics of INFO ctx (see metrics.h).
 *
 * Hot keys: a space-saving sketch (Metwally, Agrawal, El Abbadi 2005) of
 * CTX_HOT_KEYS counters. A key already tracked gets +1; a new key takes a free
 * counter, or replaces the smallest one and inherits its count (+1), the
 * replaced count becoming the entry's `error` (the most its count can be over
 * the truth). Any key with more than total/CTX_HOT_KEYS conflicts is tracked.
 * A key's identity is its length, a 64-bit hash of all its bytes and its first
 * CTX_HOT_KEY_BYTES bytes (the part kept and shown). */
#include "metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  char *name;        /* CTX_HOT_KEY_BYTES bytes, Redis' allocator; NULL: slot unused */
  size_t kept;       /* bytes of the name kept */
  size_t len;        /* the key's full length */
  uint64_t hash;     /* FNV-1a of the full key */
  long long count;   /* conflicts counted (over-estimate by at most `error`) */
  long long error;
} hot_key;

static struct {
  long long by_cause[kCtx_Conflict_Causes];
  long long lag[CTX_LAG_BUCKETS + 1]; /* per bucket (not cumulative); last: > 1024 */
  long long lag_sum;
  long long lag_ahead; /* expected version ahead of the stored one */
  hot_key hot[CTX_HOT_KEYS];
} m;

static uint64_t fnv1a(const char *p, size_t n) {
  uint64_t h = 14695981039346656037ULL;
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)p[i];
    h *= 1099511628211ULL;
  }
  return h;
}

static void count_lag(long long lag) {
  if (lag <= 0) {
    m.lag_ahead++;
    return;
  }
  int b = 0; /* smallest b with lag <= 2^b */
  while (b < CTX_LAG_BUCKETS && lag > (1LL << b)) b++;
  m.lag[b]++;
  m.lag_sum += lag;
}

static void count_key(RedisModuleString *key) {
  size_t len;
  const char *p = RedisModule_StringPtrLen(key, &len);
  size_t kept = len < CTX_HOT_KEY_BYTES ? len : CTX_HOT_KEY_BYTES;
  uint64_t h = fnv1a(p, len);
  hot_key *victim = NULL;
  for (int i = 0; i < CTX_HOT_KEYS; i++) {
    hot_key *e = &m.hot[i];
    if (e->count > 0 && e->hash == h && e->len == len && !memcmp(e->name, p, kept)) {
      e->count++;
      return;
    }
    if (!victim || e->count < victim->count) victim = e;
  }
  if (!victim->name) victim->name = RedisModule_Alloc(CTX_HOT_KEY_BYTES);
  memcpy(victim->name, p, kept);
  victim->kept = kept;
  victim->len = len;
  victim->hash = h;
  victim->error = victim->count; /* 0 for a free slot */
  victim->count++;
}

void ctx_Metrics_Conflict(ctx_ConflictCause cause, RedisModuleString *key, long long current,
                          long long expected) {
  m.by_cause[cause]++;
  if (cause != kCtx_Conflict_Schema) count_lag(current - expected);
  count_key(key);
}

void ctx_Metrics_PatchConflict(RedisModuleString *key, uint64_t current, uint64_t base,
                               const uint32_t *changed, int n, const uint32_t *fields,
                               int nfields) {
  ctx_ConflictCause cause = kCtx_Conflict_Read;
  if (base > current) {
    cause = kCtx_Conflict_Stale;
  } else {
    for (int i = 0; i < n && cause == kCtx_Conflict_Read; i++) {
      for (int k = 0; k < nfields; k++) {
        if (changed[i] == fields[k]) {
          cause = kCtx_Conflict_Field;
          break;
        }
      }
    }
  }
  ctx_Metrics_Conflict(cause, key, (long long)current, (long long)base);
}

/* ---- INFO ---- */

/* Writes `p` (n bytes) to `out` (room for 4 * n + 1) with every byte outside
 * '!'..'~', and the bytes INFO's syntax uses (',' ':' '=' '"' '\\'), as \xHH:
 * the value stays one field of one line whatever the key holds. */
static void escape(const char *p, size_t n, char *out) {
  static const char hex[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)p[i];
    if (c > ' ' && c < 0x7f && !strchr(",:=\"\\", c)) {
      *out++ = (char)c;
    } else {
      *out++ = '\\';
      *out++ = 'x';
      *out++ = hex[c >> 4];
      *out++ = hex[c & 15];
    }
  }
  *out = '\0';
}

static int by_count_desc(const void *a, const void *b) {
  const hot_key *x = *(const hot_key *const *)a, *y = *(const hot_key *const *)b;
  if (x->count != y->count) return x->count > y->count ? -1 : 1;
  return 0;
}

void ctx_Metrics_Info(RedisModuleInfoCtx *ctx) {
  RedisModule_InfoAddSection(ctx, "conflicts");
  RedisModule_InfoAddFieldLongLong(ctx, "conflicts_stale_version",
                                   m.by_cause[kCtx_Conflict_Stale]);
  RedisModule_InfoAddFieldLongLong(ctx, "conflicts_changed_field",
                                   m.by_cause[kCtx_Conflict_Field]);
  RedisModule_InfoAddFieldLongLong(ctx, "conflicts_changed_read",
                                   m.by_cause[kCtx_Conflict_Read]);
  RedisModule_InfoAddFieldLongLong(ctx, "conflicts_schema", m.by_cause[kCtx_Conflict_Schema]);
  /* Cumulative power-of-two buckets, as Prometheus' `le`: lag <= 1, <= 2, ... */
  long long cum = 0;
  char name[32];
  for (int b = 0; b < CTX_LAG_BUCKETS; b++) {
    cum += m.lag[b];
    snprintf(name, sizeof(name), "conflict_lag_le_%lld", 1LL << b);
    RedisModule_InfoAddFieldLongLong(ctx, name, cum);
  }
  cum += m.lag[CTX_LAG_BUCKETS];
  RedisModule_InfoAddFieldLongLong(ctx, "conflict_lag_le_inf", cum);
  RedisModule_InfoAddFieldLongLong(ctx, "conflict_lag_sum", m.lag_sum);
  RedisModule_InfoAddFieldLongLong(ctx, "conflict_lag_ahead", m.lag_ahead);

  const hot_key *order[CTX_HOT_KEYS];
  int n = 0;
  for (int i = 0; i < CTX_HOT_KEYS; i++) {
    if (m.hot[i].count > 0) order[n++] = &m.hot[i];
  }
  qsort(order, (size_t)n, sizeof(order[0]), by_count_desc);
  char key[CTX_HOT_KEY_BYTES * 4 + 1];
  for (int i = 0; i < n; i++) {
    const hot_key *e = order[i];
    escape(e->name, e->kept, key);
    snprintf(name, sizeof(name), "hotkey_%d", i);
    RedisModule_InfoBeginDictField(ctx, name);
    RedisModule_InfoAddFieldCString(ctx, "key", key);
    RedisModule_InfoAddFieldLongLong(ctx, "len", (long long)e->len);
    RedisModule_InfoAddFieldLongLong(ctx, "conflicts", e->count);
    RedisModule_InfoAddFieldLongLong(ctx, "error", e->error);
    RedisModule_InfoEndDictField(ctx);
  }
}
