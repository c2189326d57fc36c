/* cmd_schema.c - CTX.SCHEMA.SET / GET / LIST / DEL: the schema registry.
 *
 * The registry is ordinary keys (docs/PROTOCOL.md, "Schema registry"), written
 * through RedisModule_Call with "!" so each write is propagated, counted as a
 * change and signalled exactly like the command a client would have sent.
 *
 * A standalone server has one copy of the registry. A cluster node has one
 * copy per slot it serves (docs/PROTOCOL.md, "Redis Cluster"): writes go to
 * every copy, reads use the first. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ctx_module.h"

/* The registry copies a schema command works on: {-1} on a standalone server,
 * else the served slots. */
typedef struct {
  int *slots;
  int n;
} copies;

static void copies_free(copies *c) {
  if (c->slots) RedisModule_Free(c->slots);
  c->slots = NULL;
  c->n = 0;
}

/* Fills `c`; replies and returns false when a cluster node serves no slot. */
static bool copies_get(RedisModuleCtx *ctx, copies *c, bool replicas_too) {
  c->n = 0;
  if (!ctx_Cluster_Enabled()) {
    c->slots = RedisModule_Alloc(sizeof(int));
    c->slots[c->n++] = -1;
    return true;
  }
  unsigned char *served = RedisModule_Alloc(CTX_SLOTS);
  int count = ctx_Cluster_ServedSlots(ctx, served, replicas_too);
  c->slots = RedisModule_Alloc((size_t)(count ? count : 1) * sizeof(int));
  for (int s = 0; s < CTX_SLOTS; s++) {
    if (served[s]) c->slots[c->n++] = s;
  }
  RedisModule_Free(served);
  if (c->n == 0) {
    copies_free(c);
    RedisModule_ReplyWithError(ctx, "CTXSCHEMA this cluster node serves no slot");
    return false;
  }
  return true;
}

static int key_type(RedisModuleCtx *ctx, RedisModuleString *name);

/* For reads: the first copy that exists here (slot configuration may lag a
 * resharding for a moment), else the first copy. */
static int first_present(RedisModuleCtx *ctx, const copies *c, const char *name, size_t nlen) {
  for (int i = 0; i < c->n; i++) {
    RedisModuleString *k = name ? ctx_Registry_KeyName(ctx, name, nlen, c->slots[i])
                                : ctx_Registry_IndexName(ctx, c->slots[i]);
    int t = key_type(ctx, k);
    RedisModule_FreeString(ctx, k);
    if (t != REDISMODULE_KEYTYPE_EMPTY) return c->slots[i];
  }
  return c->slots[0];
}

static int reply_cmd_error(RedisModuleCtx *ctx, RedisModuleCallReply *r) {
  size_t len = 0;
  const char *msg = r ? RedisModule_CallReplyStringPtr(r, &len) : NULL;
  char buf[200];
  snprintf(buf, sizeof(buf), "ERR registry write failed: %.*s",
           msg ? (int)(len > 150 ? 150 : len) : 7, msg ? msg : "refused");
  return RedisModule_ReplyWithError(ctx, buf);
}

static bool call_ok(RedisModuleCallReply *r) {
  return r && RedisModule_CallReplyType(r) != REDISMODULE_REPLY_ERROR;
}

static int key_type(RedisModuleCtx *ctx, RedisModuleString *name) {
  RedisModuleKey *k = RedisModule_OpenKey(ctx, name, REDISMODULE_READ);
  int t = RedisModule_KeyType(k);
  RedisModule_CloseKey(k);
  return t;
}

/* True when the name index can take SADD/SREM; else replies CTXSCHEMA, so a
 * registry write never stops half-way. */
static bool index_usable(RedisModuleCtx *ctx, int slot) {
  RedisModuleString *iname = ctx_Registry_IndexName(ctx, slot);
  int t = key_type(ctx, iname);
  if (t != REDISMODULE_KEYTYPE_EMPTY && t != REDISMODULE_KEYTYPE_SET) {
    char buf[160];
    size_t len;
    const char *n = RedisModule_StringPtrLen(iname, &len);
    snprintf(buf, sizeof(buf), "CTXSCHEMA the registry index '%.*s' holds another type",
             (int)len, n);
    RedisModule_ReplyWithError(ctx, buf);
  }
  RedisModule_FreeString(ctx, iname);
  return t == REDISMODULE_KEYTYPE_EMPTY || t == REDISMODULE_KEYTYPE_SET;
}

/* The entry's compatibility setting: its `compat` field; absent (entries written before the
 * setting existed) or unreadable counts as WIRE_JSON, the strictest. */
static ctx_Compat compat_of(RedisModuleString *field) {
  ctx_Compat mode = kCtx_Compat_WireJson;
  if (field) {
    size_t len;
    const char *p = RedisModule_StringPtrLen(field, &len);
    if (!ctx_Compat_Parse(p, len, &mode)) mode = kCtx_Compat_WireJson;
  }
  return mode;
}

/* True when the index of the copy of `slot` lists `name` (a name removed from it by hand, or a
 * registration whose SADD did not happen, is repaired by registering again). */
static bool indexed(RedisModuleCtx *ctx, int slot, const char *name, size_t nlen) {
  RedisModuleString *ix = ctx_Registry_IndexName(ctx, slot);
  RedisModuleCallReply *r = RedisModule_Call(ctx, "SISMEMBER", "sb", ix, name, nlen);
  bool ok = r && RedisModule_CallReplyType(r) == REDISMODULE_REPLY_INTEGER &&
            RedisModule_CallReplyInteger(r) == 1;
  if (r) RedisModule_FreeCallReply(r);
  RedisModule_FreeString(ctx, ix);
  return ok;
}

/* True when every copy is an entry whose `digest` is `digest`, whose setting is `mode` and whose
 * content still hashes to the digest (checked on the first copy; the others are written together
 * with it), and whose index lists the name. */
static bool copies_hold(RedisModuleCtx *ctx, const copies *c, const char *name, size_t nlen,
                        const char *digest, ctx_Compat mode, const ctx_HistorySettings *hs) {
  for (int i = 0; i < c->n; i++) {
    RedisModuleString *k = ctx_Registry_KeyName(ctx, name, nlen, c->slots[i]);
    RedisModuleKey *key = RedisModule_OpenKey(ctx, k, REDISMODULE_READ);
    RedisModuleString *d = NULL, *type = NULL, *fds = NULL, *vf = NULL, *cm = NULL;
    RedisModuleString *hi = NULL, *hp = NULL;
    bool ok = RedisModule_KeyType(key) == REDISMODULE_KEYTYPE_HASH;
    if (ok) {
      RedisModuleString *fe = NULL, *wi = NULL;
      RedisModule_HashGet(key, REDISMODULE_HASH_CFIELDS, "history", &hi, "hpayload", &hp, "feed",
                          &fe, "window", &wi, NULL);
      ctx_HistorySettings have;
      ctx_HistorySettings_Read(hi, hp, &have);
      have.feed = ctx_FeedSetting_Read(fe);
      have.window = ctx_WindowSetting_Read(wi);
      if (fe) RedisModule_FreeString(ctx, fe);
      if (wi) RedisModule_FreeString(ctx, wi);
      ok = have.history == hs->history && have.payloads == hs->payloads && have.feed == hs->feed &&
           have.window == hs->window;
    }
    if (ok && i == 0) {
      RedisModule_HashGet(key, REDISMODULE_HASH_CFIELDS, "digest", &d, "type", &type, "fds",
                          &fds, "vfield", &vf, "compat", &cm, NULL);
      ok = d && type && fds && vf;
      if (ok) {
        size_t tl, fl, vl;
        const char *t = RedisModule_StringPtrLen(type, &tl);
        const char *f = RedisModule_StringPtrLen(fds, &fl);
        const char *v = RedisModule_StringPtrLen(vf, &vl);
        char computed[41];
        ctx_Digest(t, tl, v, vl, f, fl, computed);
        ok = memcmp(computed, digest, 40) == 0;
      }
    } else if (ok) {
      RedisModule_HashGet(key, REDISMODULE_HASH_CFIELDS, "digest", &d, "compat", &cm, NULL);
    }
    if (ok) {
      size_t dl;
      const char *dp = d ? RedisModule_StringPtrLen(d, &dl) : NULL;
      ok = dp && dl == 40 && memcmp(dp, digest, 40) == 0 &&
           compat_of(cm) == mode;
    }
    RedisModuleString *all[] = {d, type, fds, vf, cm, hi, hp};
    for (size_t j = 0; j < 7; j++) {
      if (all[j]) RedisModule_FreeString(ctx, all[j]);
    }
    RedisModule_CloseKey(key);
    RedisModule_FreeString(ctx, k);
    if (ok) ok = indexed(ctx, c->slots[i], name, nlen);
    if (!ok) return false;
  }
  return true;
}

/* True when the entry of `name` in the copy of `slot` has its fields and its content hashes to
 * its digest. The compiled-schema cache trusts the digest field; a registration checks the
 * content, so an entry edited by hand is "cannot be read" whether or not its old content is
 * still compiled here (the same verdict as the Lua engine's registration). */
static bool entry_intact(RedisModuleCtx *ctx, const char *name, size_t nlen, int slot) {
  RedisModuleString *k = ctx_Registry_KeyName(ctx, name, nlen, slot);
  RedisModuleKey *key = RedisModule_OpenKey(ctx, k, REDISMODULE_READ);
  RedisModuleString *d = NULL, *type = NULL, *fds = NULL, *vf = NULL;
  bool ok = RedisModule_KeyType(key) == REDISMODULE_KEYTYPE_HASH;
  if (ok) {
    RedisModule_HashGet(key, REDISMODULE_HASH_CFIELDS, "digest", &d, "type", &type, "fds", &fds,
                        "vfield", &vf, NULL);
    ok = d && type && fds && vf;
  }
  if (ok) {
    size_t tl, fl, vl, dl;
    const char *t = RedisModule_StringPtrLen(type, &tl);
    const char *f = RedisModule_StringPtrLen(fds, &fl);
    const char *v = RedisModule_StringPtrLen(vf, &vl);
    const char *dp = RedisModule_StringPtrLen(d, &dl);
    char computed[41];
    ctx_Digest(t, tl, v, vl, f, fl, computed);
    ok = dl == 40 && memcmp(computed, dp, 40) == 0;
  }
  RedisModuleString *all[] = {d, type, fds, vf};
  for (size_t j = 0; j < 4; j++) {
    if (all[j]) RedisModule_FreeString(ctx, all[j]);
  }
  RedisModule_CloseKey(key);
  RedisModule_FreeString(ctx, k);
  return ok;
}

/* HISTORY n: 0 .. CTX_HISTORY_MAX. */
static bool parse_history(RedisModuleString *arg, int *out) {
  long long n;
  if (RedisModule_StringToLongLong(arg, &n) != REDISMODULE_OK || n < 0 ||
      n > CTX_HISTORY_MAX) {
    return false;
  }
  *out = (int)n;
  return true;
}

/* HISTORYPAYLOADS yes|no (any ASCII case). */
static bool parse_yes_no(RedisModuleString *arg, bool *out) {
  if (ctx_ArgIs(arg, "yes")) *out = true;
  else if (ctx_ArgIs(arg, "no")) *out = false;
  else return false;
  return true;
}

/* FEED n: 0 .. CTX_FEED_MAX. */
static bool parse_feed(RedisModuleString *arg, int *out) {
  long long n;
  if (RedisModule_StringToLongLong(arg, &n) != REDISMODULE_OK || n < 0 || n > CTX_FEED_MAX) {
    return false;
  }
  *out = (int)n;
  return true;
}

/* WINDOW n: 1 .. CTX_WINDOW_MAX. */
static bool parse_window(RedisModuleString *arg, int *out) {
  long long n;
  if (RedisModule_StringToLongLong(arg, &n) != REDISMODULE_OK || n < 1 || n > CTX_WINDOW_MAX) {
    return false;
  }
  *out = (int)n;
  return true;
}

#define CTX_HISTORY_ARG_MSG "ERR HISTORY must be an integer from 0 to 1000"
#define CTX_WINDOW_ARG_MSG "ERR WINDOW must be an integer from 1 to 255"
#define CTX_FEED_ARG_MSG "ERR FEED must be an integer from 0 to 10000000"
#define CTX_FEED_CLUSTER_MSG                                                             \
  "CTXSCHEMA a change feed needs a standalone server or a replica set (Redis Cluster: " \
  "see docs/PROTOCOL.md, \"Change feed\")"
#define CTX_HPAYLOAD_ARG_MSG "ERR HISTORYPAYLOADS must be yes or no"

/* CTX.SCHEMA.SET name message_type descriptor_set [FORCE] [VERSIONFIELD field]
 *                [COMPAT WIRE|WIRE_JSON] [HISTORY n] [HISTORYPAYLOADS yes|no] [FEED n]
 *                [WINDOW n] */
int ctx_SchemaSetCommand(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  if (argc < 4) return RedisModule_WrongArity(ctx);
  bool force = false;
  RedisModuleString *vfield_arg = NULL, *compat_arg = NULL, *hist_arg = NULL, *hpay_arg = NULL;
  RedisModuleString *feed_arg = NULL, *win_arg = NULL;
  for (int i = 4; i < argc; i++) {
    if (ctx_ArgIs(argv[i], "FORCE") && !force) {
      force = true;
    } else if (ctx_ArgIs(argv[i], "VERSIONFIELD") && !vfield_arg && i + 1 < argc) {
      vfield_arg = argv[++i];
    } else if (ctx_ArgIs(argv[i], "COMPAT") && !compat_arg && i + 1 < argc) {
      compat_arg = argv[++i];
    } else if (ctx_ArgIs(argv[i], "HISTORY") && !hist_arg && i + 1 < argc) {
      hist_arg = argv[++i];
    } else if (ctx_ArgIs(argv[i], "HISTORYPAYLOADS") && !hpay_arg && i + 1 < argc) {
      hpay_arg = argv[++i];
    } else if (ctx_ArgIs(argv[i], "FEED") && !feed_arg && i + 1 < argc) {
      feed_arg = argv[++i];
    } else if (ctx_ArgIs(argv[i], "WINDOW") && !win_arg && i + 1 < argc) {
      win_arg = argv[++i];
    } else {
      return RedisModule_ReplyWithError(ctx, "ERR syntax error");
    }
  }
  /* Settings not given keep the entry's (a new name: off, a window of CTX_WINDOW_DEFAULT). */
  ctx_HistorySettings hs = {0, false, 0, CTX_WINDOW_DEFAULT};
  if (hist_arg && !parse_history(hist_arg, &hs.history)) {
    return RedisModule_ReplyWithError(ctx, CTX_HISTORY_ARG_MSG);
  }
  if (hpay_arg && !parse_yes_no(hpay_arg, &hs.payloads)) {
    return RedisModule_ReplyWithError(ctx, CTX_HPAYLOAD_ARG_MSG);
  }
  if (feed_arg && !parse_feed(feed_arg, &hs.feed)) {
    return RedisModule_ReplyWithError(ctx, CTX_FEED_ARG_MSG);
  }
  if (win_arg && !parse_window(win_arg, &hs.window)) {
    return RedisModule_ReplyWithError(ctx, CTX_WINDOW_ARG_MSG);
  }
  if (hs.feed > 0 && ctx_Cluster_Enabled()) {
    return RedisModule_ReplyWithError(ctx, CTX_FEED_CLUSTER_MSG);
  }
  ctx_Compat mode = kCtx_Compat_WireJson;
  if (compat_arg) {
    size_t cl;
    const char *cp = RedisModule_StringPtrLen(compat_arg, &cl);
    if (!ctx_Compat_Parse(cp, cl, &mode)) {
      ctx_Status bad;
      ctx_Status_Set(&bad, kCtx_Schema, "unknown COMPAT '%.*s': use WIRE_JSON or WIRE",
                     (int)(cl > 32 ? 32 : cl), cp);
      return ctx_ReplyStatus(ctx, &bad);
    }
  }
  if (!ctx_Registry_CheckName(ctx, argv[1])) return REDISMODULE_OK;

  size_t nlen, tlen, flen, vlen = 7;
  const char *name = RedisModule_StringPtrLen(argv[1], &nlen);
  const char *type = RedisModule_StringPtrLen(argv[2], &tlen);
  const char *fds = RedisModule_StringPtrLen(argv[3], &flen);
  const char *vfield = vfield_arg ? RedisModule_StringPtrLen(vfield_arg, &vlen) : "version";

  ctx_Status st;
  copies c = {0};
  RedisModuleString *kname = NULL, *iname = NULL, *revstr = NULL, *prev_digest = NULL;
  RedisModuleString *prev_compat = NULL, *prev_hist = NULL, *prev_hpay = NULL, *prev_feed = NULL;
  RedisModuleString *prev_win = NULL;
  ctx_HistorySettings prev_hs = {0, false, 0, CTX_WINDOW_DEFAULT};
  ctx_Schema *next =
      ctx_Schema_Build(fds, flen, type, tlen, vfield, vlen, ctx_config.max_schema_bytes, &st);
  if (!next) {
    ctx_ReplyStatus(ctx, &st);
    goto done;
  }
  char digest[41];
  ctx_Digest(type, tlen, vfield, vlen, fds, flen, digest);
  if (!copies_get(ctx, &c, false)) goto done;

  /* The previous revision, from the first copy that exists (all copies are written together; a
   * lost copy, deleted by hand or in a failover, must not make the name look new). */
  int ref = first_present(ctx, &c, name, nlen);
  long long revision = 0;
  kname = ctx_Registry_KeyName(ctx, name, nlen, ref);
  RedisModuleKey *key = RedisModule_OpenKey(ctx, kname, REDISMODULE_READ);
  int ktype = RedisModule_KeyType(key);
  if (ktype == REDISMODULE_KEYTYPE_HASH) {
    RedisModule_HashGet(key, REDISMODULE_HASH_CFIELDS, "revision", &revstr, "digest",
                        &prev_digest, "compat", &prev_compat, "history", &prev_hist,
                        "hpayload", &prev_hpay, "feed", &prev_feed, "window", &prev_win, NULL);
    if (revstr) RedisModule_StringToLongLong(revstr, &revision);
    /* Without COMPAT the entry keeps its setting; so do HISTORY and HISTORYPAYLOADS. */
    if (!compat_arg) mode = compat_of(prev_compat);
    ctx_HistorySettings_Read(prev_hist, prev_hpay, &prev_hs);
    if (!hist_arg) hs.history = prev_hs.history;
    if (!hpay_arg) hs.payloads = prev_hs.payloads;
    prev_hs.feed = ctx_FeedSetting_Read(prev_feed);
    if (!feed_arg) hs.feed = prev_hs.feed;
    prev_hs.window = ctx_WindowSetting_Read(prev_win);
    if (!win_arg) hs.window = prev_hs.window;
  }
  RedisModule_CloseKey(key);
  /* The same definition under another setting is a change (a new revision). */
  bool same = false;
  if (prev_digest && compat_of(prev_compat) == mode && prev_hs.history == hs.history &&
      prev_hs.payloads == hs.payloads && prev_hs.feed == hs.feed &&
      prev_hs.window == hs.window) {
    size_t dl;
    const char *d = RedisModule_StringPtrLen(prev_digest, &dl);
    same = dl == 40 && memcmp(d, digest, 40) == 0;
  }
  /* Every copy must be writable before any is written: no half-done registration. */
  for (int i = 0; i < c.n; i++) {
    RedisModuleString *k = ctx_Registry_KeyName(ctx, name, nlen, c.slots[i]);
    int t = key_type(ctx, k);
    RedisModule_FreeString(ctx, k);
    if (t != REDISMODULE_KEYTYPE_EMPTY && t != REDISMODULE_KEYTYPE_HASH) {
      RedisModule_ReplyWithError(ctx, "CTXSCHEMA the registry key holds another type");
      goto done;
    }
    if (!index_usable(ctx, c.slots[i])) goto done;
  }
  /* The very same definition again changes nothing, if every copy holds it intact; else the
   * copies are written again under the same revision (a repair, not a new revision). */
  bool keep_revision = false;
  if (same && revision > 0) {
    if (copies_hold(ctx, &c, name, nlen, digest, mode, &hs)) {
      RedisModule_ReplyWithLongLong(ctx, revision);
      goto done;
    }
    keep_revision = true;
  }
  /* The change decision is the core's (ctx_Schema_CheckChange), the same on both engines:
   * checked against the setting the entry will have after this write. */
  if (ktype == REDISMODULE_KEYTYPE_HASH && !keep_revision) {
    const ctx_Schema *prev = NULL;
    if (!force && entry_intact(ctx, name, nlen, ref)) {
      prev = ctx_Registry_Resolve(ctx, name, nlen, ref, &st);
    }
    if (!ctx_Schema_CheckChange(prev, next, mode, force, &st)) {
      ctx_ReplyStatus(ctx, &st);
      goto done;
    }
  }
  if (!keep_revision) {
    if (revision < 0 || revision >= INT64_MAX) revision = 0;
    revision++;
  }

  if (revstr) RedisModule_FreeString(ctx, revstr);
  revstr = RedisModule_CreateStringFromLongLong(ctx, revision);
  char histnum[16];
  snprintf(histnum, sizeof(histnum), "%d", hs.history);
  char feednum[16];
  snprintf(feednum, sizeof(feednum), "%d", hs.feed);
  char winnum[16];
  snprintf(winnum, sizeof(winnum), "%d", hs.window);
  for (int i = 0; i < c.n; i++) {
    RedisModuleString *k = ctx_Registry_KeyName(ctx, name, nlen, c.slots[i]);
    RedisModuleString *ix = ctx_Registry_IndexName(ctx, c.slots[i]);
    /* s: RedisModuleString, c: C string, b: buffer and length. */
    RedisModuleCallReply *r1 = RedisModule_Call(
        ctx, "HSET", "!scscscscbcccccccccccc", k, "type", argv[2], "fds", argv[3], "revision",
        revstr, "vfield", vfield, vlen, "digest", digest, "compat", ctx_Compat_Name(mode),
        "history", histnum, "hpayload", hs.payloads ? "1" : "0", "feed", feednum, "window",
        winnum);
    RedisModuleCallReply *r2 =
        call_ok(r1) ? RedisModule_Call(ctx, "SADD", "!ss", ix, argv[1]) : NULL;
    bool ok = call_ok(r1) && call_ok(r2);
    if (!ok) reply_cmd_error(ctx, call_ok(r1) ? r2 : r1);
    if (r1) RedisModule_FreeCallReply(r1);
    if (r2) RedisModule_FreeCallReply(r2);
    RedisModule_FreeString(ctx, k);
    RedisModule_FreeString(ctx, ix);
    if (!ok) goto done;
  }
  ctx_Registry_Remember(digest, next);
  next = NULL;
  RedisModule_ReplyWithLongLong(ctx, revision);

done:
  ctx_Schema_Free(next);
  copies_free(&c);
  if (revstr) RedisModule_FreeString(ctx, revstr);
  if (prev_digest) RedisModule_FreeString(ctx, prev_digest);
  if (prev_compat) RedisModule_FreeString(ctx, prev_compat);
  if (prev_hist) RedisModule_FreeString(ctx, prev_hist);
  if (prev_hpay) RedisModule_FreeString(ctx, prev_hpay);
  if (prev_feed) RedisModule_FreeString(ctx, prev_feed);
  if (prev_win) RedisModule_FreeString(ctx, prev_win);
  if (kname) RedisModule_FreeString(ctx, kname);
  if (iname) RedisModule_FreeString(ctx, iname);
  return REDISMODULE_OK;
}

/* CTX.SCHEMA.GET name */
int ctx_SchemaGetCommand(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  if (argc != 2) return RedisModule_WrongArity(ctx);
  if (!ctx_Registry_CheckName(ctx, argv[1])) return REDISMODULE_OK;
  copies c = {0};
  if (!copies_get(ctx, &c, true)) return REDISMODULE_OK;
  size_t nlen;
  const char *name = RedisModule_StringPtrLen(argv[1], &nlen);
  RedisModuleString *kname = ctx_Registry_KeyName(ctx, name, nlen, first_present(ctx, &c, name, nlen));
  RedisModuleKey *key = RedisModule_OpenKey(ctx, kname, REDISMODULE_READ);
  RedisModuleString *type = NULL, *fds = NULL, *rev = NULL, *cm = NULL, *hi = NULL, *hp = NULL;
  RedisModuleString *fe = NULL, *wi = NULL;
  long long revision = 0;
  if (RedisModule_KeyType(key) == REDISMODULE_KEYTYPE_HASH) {
    RedisModule_HashGet(key, REDISMODULE_HASH_CFIELDS, "type", &type, "fds", &fds,
                        "revision", &rev, "compat", &cm, "history", &hi, "hpayload", &hp, "feed",
                        &fe, "window", &wi, NULL);
  }
  if (!type || !fds || !rev || RedisModule_StringToLongLong(rev, &revision) != REDISMODULE_OK) {
    RedisModule_ReplyWithNull(ctx);
  } else {
    /* [type, fds, revision, compat, history, history payloads (0/1), feed, window]: the settings at the
     * end, so readers of the first three are unaffected. */
    ctx_HistorySettings hs;
    ctx_HistorySettings_Read(hi, hp, &hs);
    RedisModule_ReplyWithArray(ctx, 8);
    RedisModule_ReplyWithString(ctx, type);
    RedisModule_ReplyWithString(ctx, fds);
    RedisModule_ReplyWithLongLong(ctx, revision);
    const char *cname = ctx_Compat_Name(compat_of(cm));
    RedisModule_ReplyWithStringBuffer(ctx, cname, strlen(cname));
    RedisModule_ReplyWithLongLong(ctx, hs.history);
    RedisModule_ReplyWithLongLong(ctx, hs.payloads ? 1 : 0);
    RedisModule_ReplyWithLongLong(ctx, ctx_FeedSetting_Read(fe)); /* the change feed's FEED */
    RedisModule_ReplyWithLongLong(ctx, ctx_WindowSetting_Read(wi)); /* WINDOW */
  }
  if (fe) RedisModule_FreeString(ctx, fe);
  if (wi) RedisModule_FreeString(ctx, wi);
  if (cm) RedisModule_FreeString(ctx, cm);
  if (hi) RedisModule_FreeString(ctx, hi);
  if (hp) RedisModule_FreeString(ctx, hp);
  if (type) RedisModule_FreeString(ctx, type);
  if (fds) RedisModule_FreeString(ctx, fds);
  if (rev) RedisModule_FreeString(ctx, rev);
  RedisModule_CloseKey(key);
  RedisModule_FreeString(ctx, kname);
  copies_free(&c);
  return REDISMODULE_OK;
}

/* The names in one copy of the index, collected with ScanKey (RedisModule_Call
 * would refuse the key on a cluster replica, which owns no slot). */
typedef struct {
  RedisModuleCtx *ctx;
  RedisModuleString **names;
  size_t len, cap;
} name_list;

static void collect_name(RedisModuleKey *key, RedisModuleString *field,
                         RedisModuleString *value, void *privdata) {
  (void)key;
  (void)value;
  name_list *l = privdata;
  if (l->len == l->cap) {
    l->cap = l->cap ? l->cap * 2 : 16;
    l->names = RedisModule_Realloc(l->names, l->cap * sizeof(*l->names));
  }
  RedisModule_RetainString(l->ctx, field);
  l->names[l->len++] = field;
}

static int cmp_names(const void *a, const void *b) {
  size_t la, lb;
  const char *x = RedisModule_StringPtrLen(*(RedisModuleString *const *)a, &la);
  const char *y = RedisModule_StringPtrLen(*(RedisModuleString *const *)b, &lb);
  int c = memcmp(x, y, la < lb ? la : lb);
  if (c) return c;
  return la < lb ? -1 : la > lb;
}

/* CTX.SCHEMA.LIST */
int ctx_SchemaListCommand(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  (void)argv;
  if (argc != 1) return RedisModule_WrongArity(ctx);
  copies c = {0};
  if (!copies_get(ctx, &c, true)) return REDISMODULE_OK;
  int ref = first_present(ctx, &c, NULL, 0);
  copies_free(&c);
  if (!index_usable(ctx, ref)) return REDISMODULE_OK;
  RedisModuleString *iname = ctx_Registry_IndexName(ctx, ref);
  RedisModuleKey *key = RedisModule_OpenKey(ctx, iname, REDISMODULE_READ);
  name_list l = {ctx, NULL, 0, 0};
  if (RedisModule_KeyType(key) == REDISMODULE_KEYTYPE_SET) {
    RedisModuleScanCursor *cursor = RedisModule_ScanCursorCreate();
    while (RedisModule_ScanKey(key, cursor, collect_name, &l)) {
    }
    RedisModule_ScanCursorDestroy(cursor);
  }
  RedisModule_CloseKey(key);
  RedisModule_FreeString(ctx, iname);
  if (l.len) qsort(l.names, l.len, sizeof(*l.names), cmp_names);
  RedisModule_ReplyWithArray(ctx, (long)l.len);
  for (size_t i = 0; i < l.len; i++) {
    RedisModule_ReplyWithString(ctx, l.names[i]);
    RedisModule_FreeString(ctx, l.names[i]);
  }
  if (l.names) RedisModule_Free(l.names);
  return REDISMODULE_OK;
}

/* CTX.SCHEMA.DEL name */
int ctx_SchemaDelCommand(RedisModuleCtx *ctx, RedisModuleString **argv, int argc) {
  if (argc != 2) return RedisModule_WrongArity(ctx);
  if (!ctx_Registry_CheckName(ctx, argv[1])) return REDISMODULE_OK;
  copies c = {0};
  if (!copies_get(ctx, &c, false)) return REDISMODULE_OK;
  size_t nlen;
  const char *name = RedisModule_StringPtrLen(argv[1], &nlen);
  long long removed = 0;
  for (int i = 0; i < c.n; i++) {
    if (!index_usable(ctx, c.slots[i])) goto done;
  }
  for (int i = 0; i < c.n; i++) {
    RedisModuleString *k = ctx_Registry_KeyName(ctx, name, nlen, c.slots[i]);
    RedisModuleString *ix = ctx_Registry_IndexName(ctx, c.slots[i]);
    RedisModuleCallReply *r1 = NULL, *r2 = NULL;
    bool ok = true;
    if (key_type(ctx, k) != REDISMODULE_KEYTYPE_EMPTY) {
      r1 = RedisModule_Call(ctx, "DEL", "!s", k);
      ok = call_ok(r1);
      if (ok && RedisModule_CallReplyInteger(r1) > 0) removed = 1;
    }
    if (ok) {
      r2 = RedisModule_Call(ctx, "SREM", "!ss", ix, argv[1]);
      ok = call_ok(r2);
      if (ok && RedisModule_CallReplyInteger(r2) > 0) removed = 1;
    }
    if (!ok) reply_cmd_error(ctx, r2 ? r2 : r1);
    if (r1) RedisModule_FreeCallReply(r1);
    if (r2) RedisModule_FreeCallReply(r2);
    RedisModule_FreeString(ctx, k);
    RedisModule_FreeString(ctx, ix);
    if (!ok) goto done;
  }
  RedisModule_ReplyWithLongLong(ctx, removed);
done:
  copies_free(&c);
  return REDISMODULE_OK;
}
