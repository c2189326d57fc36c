/* value_roundtrip.c - round trip and hostile bytes for module/core/ctx_value.c (protocol 3).
 *
 * Built with ASan and UBSan by tests/test_core_hardening.py (or by hand:
 *   cc -fsanitize=address,undefined -Imodule/core -isystem build/_deps/protobuf \
 *      -isystem build/_deps/protobuf/utf8_range tests/torture/value_roundtrip.c \
 *      module/core/\*.c build/libupb.a -o /tmp/value_roundtrip).
 * Each round writes a chain of up to 39 v3 values (whole writes and patches of random field
 * bits), parsing every value written and checking the replay digest and the clock rule, then
 * mutates the last one (random bytes, truncation, header fields, the v2 magic) into an
 * exact-size buffer: ctx_Value_Parse must never read outside it, and whatever it accepts must
 * survive the conflict rule and a rewrite. Argument: rounds (default 200000). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ctx_value.h"

static unsigned long long rng = 88172645463325252ULL;
static unsigned long long next(void) { /* xorshift64 */
  rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }

static void check_written(const char* buf, size_t len) {
  ctx_Value v;
  if (!ctx_Value_Parse(buf, len, &v)) { fprintf(stderr, "written value does not parse\n"); abort(); }
  if (v.format != 3) abort();
}

int main(int argc, char** argv) {
  long rounds = argc > 1 ? atol(argv[1]) : 200000;
  char out[4096], out2[4096];
  unsigned char inc[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  long iterations = 0, parsed = 0;
  for (long round = 0; round < rounds; round++) {
    /* a valid chain of writes */
    ctx_Clocks c;
    ctx_Clocks_Whole(&c, 1);
    size_t len = ctx_Value_Size(NULL, CTX_WINDOW_DEFAULT, &c, 5, 2, 10);
    ctx_Value_Write(out, NULL, CTX_WINDOW_DEFAULT, 1, 7, inc, &c, NULL, "order", 5, "by", 2, "0123456789", 10);
    check_written(out, len);
    ctx_Value v;
    uint64_t shadow[31]; /* the clock each bit must have */
    for (int bit = 0; bit < 31; bit++) shadow[bit] = 1;
    int writes = (int)(next() % 40);
    for (int w = 0; w < writes; w++) {
      if (!ctx_Value_Parse(out, len, &v)) abort();
      uint64_t nv = v.version + 1;
      if (next() % 4 == 0) {
        ctx_Clocks_Whole(&c, nv);
        for (int bit = 0; bit < 31; bit++) shadow[bit] = nv;
      } else {
        uint32_t bits = (uint32_t)next() & (uint32_t)next();
        ctx_Clocks_Patch(&c, &v, nv, bits);
        for (int bit = 0; bit < 31; bit++) {
          if (bits & (1u << bit)) shadow[bit] = nv;
        }
      }
      unsigned char d[8];
      for (int i = 0; i < 8; i++) d[i] = (unsigned char)next();
      /* a window that changes from write to write (WINDOW set again): at most `win` records */
      int win = 1 + (int)(next() % 48);
      size_t l2 = ctx_Value_Size(&v, win, &c, v.schema_len, v.by_len, v.payload_len);
      if (l2 > sizeof(out2)) abort();
      ctx_Value_Write(out2, &v, win, nv, 9, v.incarnation, &c, d, v.schema, v.schema_len,
                      v.updated_by, v.by_len, v.payload, v.payload_len);
      check_written(out2, l2);
      ctx_Value nv_;
      ctx_Value_Parse(out2, l2, &nv_);
      if (ctx_Value_FindWrite(&nv_, d) != nv) abort();
      if (nv_.n != (v.n < win ? v.n : win - 1) + 1) abort();
      /* every clock is what the writes made it; the conflict rule follows the clocks */
      uint64_t base = next() % (nv + 2);
      for (uint32_t f = 1; f <= 62; f++) {
        int bit = (int)((f - 1) % 31);
        if (ctx_Value_Clock(&nv_, bit) != shadow[bit]) abort();
        bool want = base > nv || (base < nv && (nv_.floor > base || shadow[bit] > base));
        if (ctx_Value_FieldChanged(&nv_, base, f) != want) abort();
      }
      memcpy(out, out2, l2);
      len = l2;
    }
    /* hostile mutations: must never crash */
    char h[4096];
    memcpy(h, out, len);
    size_t hl = len;
    int muts = 1 + (int)(next() % 4);
    for (int m = 0; m < muts; m++) {
      switch (next() % 4) {
        case 0: if (hl) h[next() % hl] = (char)next(); break;
        case 1: hl = next() % (hl + 1); break;
        case 2: if (hl > 44) h[20 + next() % 24] = (char)next(); break;
        case 3: if (hl > 40) h[36 + next() % 4] = (char)next(); break;
      }
    }
    if (next() % 5 == 0 && hl >= 4) h[3] = 2;  /* read as v2 */
    char* exact = malloc(hl ? hl : 1);  /* exact-size buffer: ASan sees any overread */
    memcpy(exact, h, hl);
    if (ctx_Value_Parse(exact, hl, &v)) {
      parsed++;
      for (uint64_t base = 0; base < 4; base++) {
        for (uint32_t f = 1; f < 40; f++) (void)ctx_Value_FieldChanged(&v, v.version - base, f);
      }
      (void)ctx_Value_OldestKnown(&v);
      unsigned char z[8] = {0};
      (void)ctx_Value_FindWrite(&v, z);
      if (v.version < (uint64_t)INT64_MAX) {
        ctx_Clocks_Patch(&c, &v, v.version + 1, 0x10);
        size_t l2 = ctx_Value_Size(&v, CTX_WINDOW_DEFAULT, &c, v.schema_len, v.by_len, v.payload_len);
        if (l2 <= sizeof(out2)) {
          unsigned char in2[8] = {9, 9, 9, 9, 9, 9, 9, 9};
          ctx_Value_Write(out2, &v, CTX_WINDOW_DEFAULT, v.version + 1, 1, v.incarnation ? v.incarnation : in2, &c,
                          NULL, v.schema, v.schema_len, v.updated_by, v.by_len, v.payload,
                          v.payload_len);
          check_written(out2, l2);
        }
      }
    }
    free(exact);
    iterations++;
  }
  printf("ok: %ld rounds, %ld hostile values parsed\n", iterations, parsed);
  return 0;
}
