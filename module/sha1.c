/* sha1.c - SHA-1 (FIPS 180-4), used only to fingerprint registry entries so
 * that a cached schema is never confused with a different one under the same
 * name. Not for security. Written for ctxlink. */
#include "sha1.h"

#include <string.h>

static uint32_t rol(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

static void block(uint32_t h[5], const uint8_t *p) {
  uint32_t w[80];
  for (int i = 0; i < 16; i++) {
    w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
           (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
  }
  for (int i = 16; i < 80; i++) w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
  uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
  for (int i = 0; i < 80; i++) {
    uint32_t f, k;
    if (i < 20) {
      f = (b & c) | (~b & d);
      k = 0x5A827999;
    } else if (i < 40) {
      f = b ^ c ^ d;
      k = 0x6ED9EBA1;
    } else if (i < 60) {
      f = (b & c) | (b & d) | (c & d);
      k = 0x8F1BBCDC;
    } else {
      f = b ^ c ^ d;
      k = 0xCA62C1D6;
    }
    uint32_t t = rol(a, 5) + f + e + k + w[i];
    e = d;
    d = c;
    c = rol(b, 30);
    b = a;
    a = t;
  }
  h[0] += a;
  h[1] += b;
  h[2] += c;
  h[3] += d;
  h[4] += e;
}

void ctx_Sha1_Init(ctx_Sha1 *s) {
  static const uint32_t init[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE,
                                   0x10325476, 0xC3D2E1F0};
  memcpy(s->h, init, sizeof(init));
  s->len = 0;
  s->used = 0;
}

void ctx_Sha1_Update(ctx_Sha1 *s, const void *data, size_t n) {
  const uint8_t *p = data;
  s->len += n;
  while (n) {
    size_t take = 64 - s->used;
    if (take > n) take = n;
    memcpy(s->buf + s->used, p, take);
    s->used += take;
    p += take;
    n -= take;
    if (s->used == 64) {
      block(s->h, s->buf);
      s->used = 0;
    }
  }
}

void ctx_Sha1_HexFinal(ctx_Sha1 *s, char out[41]) {
  uint64_t bits = s->len * 8;
  uint8_t pad = 0x80;
  ctx_Sha1_Update(s, &pad, 1);
  pad = 0;
  while (s->used != 56) ctx_Sha1_Update(s, &pad, 1);
  uint8_t lenbuf[8];
  for (int i = 0; i < 8; i++) lenbuf[i] = (uint8_t)(bits >> (56 - 8 * i));
  ctx_Sha1_Update(s, lenbuf, 8);
  static const char hex[] = "0123456789abcdef";
  for (int i = 0; i < 20; i++) {
    uint8_t b = (uint8_t)(s->h[i / 4] >> (24 - 8 * (i % 4)));
    out[2 * i] = hex[b >> 4];
    out[2 * i + 1] = hex[b & 15];
  }
  out[40] = '\0';
}
