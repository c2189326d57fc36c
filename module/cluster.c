/* cluster.c - what the registry needs to know about Redis Cluster: key slots,
 * one hash tag per slot, and the slots this node serves.
 *
 * In a cluster every slot carries its own copy of the registry under a hash
 * tag of that slot (docs/PROTOCOL.md, "Redis Cluster"), so a command only ever
 * touches keys of the slot it was routed to. */
#include <stdio.h>
#include <string.h>

#include "ctx_module.h"

#define CTX_SLOTS 16384

static bool cluster_mode;
static char (*slot_tags)[8]; /* slot -> smallest decimal integer hashing to it */

/* CRC16-CCITT (XMODEM), the checksum Redis Cluster maps keys with. */
static uint16_t crc16(const char *buf, size_t len) {
  uint16_t crc = 0;
  for (size_t i = 0; i < len; i++) {
    crc ^= (uint16_t)((uint8_t)buf[i] << 8);
    for (int b = 0; b < 8; b++) {
      crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
  }
  return crc;
}

int ctx_KeySlot(const char *key, size_t len) {
  const char *open = memchr(key, '{', len);
  if (open) {
    size_t rest = len - (size_t)(open - key) - 1;
    const char *close = memchr(open + 1, '}', rest);
    if (close && close > open + 1) return crc16(open + 1, (size_t)(close - open - 1)) & (CTX_SLOTS - 1);
  }
  return crc16(key, len) & (CTX_SLOTS - 1);
}

bool ctx_Cluster_Enabled(void) { return cluster_mode; }

const char *ctx_SlotTag(int slot) { return slot_tags[slot]; }

int ctx_Cluster_Init(RedisModuleCtx *ctx) {
  cluster_mode = (RedisModule_GetContextFlags(ctx) & REDISMODULE_CTX_FLAGS_CLUSTER) != 0;
  if (!cluster_mode) return REDISMODULE_OK;
  slot_tags = RedisModule_Calloc(CTX_SLOTS, sizeof(*slot_tags));
  int missing = CTX_SLOTS;
  char num[8];
  for (unsigned n = 0; missing > 0 && n < 10000000; n++) {
    int len = snprintf(num, sizeof(num), "%u", n);
    int slot = crc16(num, (size_t)len) & (CTX_SLOTS - 1);
    if (slot_tags[slot][0]) continue;
    memcpy(slot_tags[slot], num, (size_t)len + 1);
    missing--;
  }
  if (missing) {
    RedisModule_Log(ctx, "warning", "ctxlink: could not find a hash tag for every slot");
    return REDISMODULE_ERR;
  }
  return REDISMODULE_OK;
}

/* Marks in `served` the slots whose primary is this node (or, with
 * `replicas_too`, whose primary this node replicates). Returns how many. */
int ctx_Cluster_ServedSlots(RedisModuleCtx *ctx, unsigned char *served, bool replicas_too) {
  memset(served, 0, CTX_SLOTS);
  const char *me = RedisModule_GetMyClusterID();
  size_t melen = REDISMODULE_NODE_ID_LEN; /* the ID is not NUL-terminated */
  RedisModuleCallReply *r = RedisModule_Call(ctx, "CLUSTER", "c", "SLOTS");
  int count = 0;
  if (!me || !r || RedisModule_CallReplyType(r) != REDISMODULE_REPLY_ARRAY) goto done;
  size_t nranges = RedisModule_CallReplyLength(r);
  for (size_t i = 0; i < nranges; i++) {
    RedisModuleCallReply *range = RedisModule_CallReplyArrayElement(r, i);
    size_t nelem = RedisModule_CallReplyLength(range);
    if (nelem < 3) continue;
    long long from = RedisModule_CallReplyInteger(RedisModule_CallReplyArrayElement(range, 0));
    long long to = RedisModule_CallReplyInteger(RedisModule_CallReplyArrayElement(range, 1));
    bool mine = false;
    for (size_t j = 2; j < nelem && !mine && (j == 2 || replicas_too); j++) {
      RedisModuleCallReply *node = RedisModule_CallReplyArrayElement(range, j);
      if (RedisModule_CallReplyLength(node) < 3) continue;
      size_t idlen;
      const char *id =
          RedisModule_CallReplyStringPtr(RedisModule_CallReplyArrayElement(node, 2), &idlen);
      mine = id && idlen == melen && memcmp(id, me, idlen) == 0;
    }
    if (!mine || from < 0 || to >= CTX_SLOTS || from > to) continue;
    for (long long s = from; s <= to; s++) {
      if (!served[s]) count++;
      served[s] = 1;
    }
  }
done:
  if (r) RedisModule_FreeCallReply(r);
  return count;
}
