/* ctx_sha1.c - SHA-1 (FIPS 180-4), used to fingerprint registry entries (so
 * that a cached schema is never confused with a different one under the same
 * name) and write ids. Not for security. Written for ctxlink. */
#include "ctx_sha1.h"

#include <stdio.h>
#include <string.h>

#include "ctx_core.h"

static uint32_t rol(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

/* One 64-byte block, fully unrolled with a 16-word rolling schedule (about
 * twice as fast as the 80-word loop: CTX.CAS and CTX.PATCH hash every write id). */
#define SHA1_W(i)                                                                  \
  (w[(i)&15] = rol(w[((i) + 13) & 15] ^ w[((i) + 8) & 15] ^ w[((i) + 2) & 15] ^ \
                   w[(i)&15],                                                  \
                   1))
#define SHA1_W0(i) w[i]
#define SHA1_F1(b, c, d) ((d) ^ ((b) & ((c) ^ (d))))
#define SHA1_F2(b, c, d) ((b) ^ (c) ^ (d))
#define SHA1_F3(b, c, d) ((((b) | (c)) & (d)) | ((b) & (c)))
#define SHA1_R(a, b, c, d, e, F, k, x)          \
  do {                                          \
    e += rol(a, 5) + F(b, c, d) + (k) + (x);    \
    b = rol(b, 30);                             \
  } while (0)
#define SHA1_R5(i, F, k, X)                   \
  SHA1_R(a, b, c, d, e, F, k, X(i));          \
  SHA1_R(e, a, b, c, d, F, k, X((i) + 1));    \
  SHA1_R(d, e, a, b, c, F, k, X((i) + 2));    \
  SHA1_R(c, d, e, a, b, F, k, X((i) + 3));    \
  SHA1_R(b, c, d, e, a, F, k, X((i) + 4))

static void block(uint32_t h[5], const uint8_t* p) {
  uint32_t w[16];
  for (int i = 0; i < 16; i++) {
    w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
           (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
  }
  uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
  SHA1_R5(0, SHA1_F1, 0x5A827999, SHA1_W0);
  SHA1_R5(5, SHA1_F1, 0x5A827999, SHA1_W0);
  SHA1_R5(10, SHA1_F1, 0x5A827999, SHA1_W0);
  SHA1_R(a, b, c, d, e, SHA1_F1, 0x5A827999, w[15]);
  SHA1_R(e, a, b, c, d, SHA1_F1, 0x5A827999, SHA1_W(16));
  SHA1_R(d, e, a, b, c, SHA1_F1, 0x5A827999, SHA1_W(17));
  SHA1_R(c, d, e, a, b, SHA1_F1, 0x5A827999, SHA1_W(18));
  SHA1_R(b, c, d, e, a, SHA1_F1, 0x5A827999, SHA1_W(19));
  SHA1_R5(20, SHA1_F2, 0x6ED9EBA1, SHA1_W);
  SHA1_R5(25, SHA1_F2, 0x6ED9EBA1, SHA1_W);
  SHA1_R5(30, SHA1_F2, 0x6ED9EBA1, SHA1_W);
  SHA1_R5(35, SHA1_F2, 0x6ED9EBA1, SHA1_W);
  SHA1_R5(40, SHA1_F3, 0x8F1BBCDC, SHA1_W);
  SHA1_R5(45, SHA1_F3, 0x8F1BBCDC, SHA1_W);
  SHA1_R5(50, SHA1_F3, 0x8F1BBCDC, SHA1_W);
  SHA1_R5(55, SHA1_F3, 0x8F1BBCDC, SHA1_W);
  SHA1_R5(60, SHA1_F2, 0xCA62C1D6, SHA1_W);
  SHA1_R5(65, SHA1_F2, 0xCA62C1D6, SHA1_W);
  SHA1_R5(70, SHA1_F2, 0xCA62C1D6, SHA1_W);
  SHA1_R5(75, SHA1_F2, 0xCA62C1D6, SHA1_W);
  h[0] += a;
  h[1] += b;
  h[2] += c;
  h[3] += d;
  h[4] += e;
}

void ctx_Sha1_Init(ctx_Sha1* s) {
  static const uint32_t init[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE,
                                   0x10325476, 0xC3D2E1F0};
  memcpy(s->h, init, sizeof(init));
  s->len = 0;
  s->used = 0;
}

void ctx_Sha1_Update(ctx_Sha1* s, const void* data, size_t n) {
  const uint8_t* p = data;
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

/* Word by word (one byte swap each), not byte by byte with a shift each. */
static void store_be32(uint8_t* p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

void ctx_Sha1_Final(ctx_Sha1* s, uint8_t out[20]) {
  uint64_t bits = s->len * 8;
  s->buf[s->used++] = 0x80;
  if (s->used > 56) {
    memset(s->buf + s->used, 0, 64 - s->used);
    block(s->h, s->buf);
    s->used = 0;
  }
  memset(s->buf + s->used, 0, 56 - s->used);
  store_be32(s->buf + 56, (uint32_t)(bits >> 32));
  store_be32(s->buf + 60, (uint32_t)bits);
  block(s->h, s->buf);
  s->used = 0;
  for (int i = 0; i < 5; i++) store_be32(out + 4 * i, s->h[i]);
}

void ctx_Sha1_HexFinal(ctx_Sha1* s, char out[41]) {
  uint8_t raw[20];
  ctx_Sha1_Final(s, raw);
  static const char hex[] = "0123456789abcdef";
  for (int i = 0; i < 20; i++) {
    out[2 * i] = hex[raw[i] >> 4];
    out[2 * i + 1] = hex[raw[i] & 15];
  }
  out[40] = '\0';
}

void ctx_Digest(const char* type, size_t type_len, const char* vfield, size_t vfield_len,
                const char* fds, size_t fds_len, char out[41]) {
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

/* ---- the write id's digest ---------------------------------------------- */

void ctx_WriteDigest(const char* id, size_t len, unsigned char out[8]) {
  ctx_Sha1 sh;
  uint8_t raw[20];
  ctx_Sha1_Init(&sh);
  ctx_Sha1_Update(&sh, id, len);
  ctx_Sha1_Final(&sh, raw);
  memcpy(out, raw, 8);
}
