/* fuzz_schema.c - libFuzzer harness for schema compilation (make fuzz).
 *
 * Each input is one selector byte and a serialized FileDescriptorSet. The
 * selector picks the message type and version field among the lines of
 * $CTX_FUZZ_SCHEMAS/index.txt (written by tests/torture/fuzz_inputs.py, whose
 * .fds files, prefixed with their selector, are the seeds). A set that
 * compiles is checked for compatibility with itself (must hold), against the
 * reference schema of the same line, and used to validate a few payloads. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctx_core.h"
#include "fuzz_common.h"

static fuzz_Ref refs[FUZZ_MAX_SCHEMAS];
static int ntypes;

int LLVMFuzzerInitialize(int* argc, char*** argv) {
  (void)argc;
  (void)argv;
  ntypes = fuzz_LoadRefs("fuzz_schema", refs);
  return 0;
}

static void check_status(const ctx_Status* st, bool ok) {
  if (ok ? st->code != kCtx_Ok : st->code == kCtx_Ok) abort();
  if (memchr(st->msg, '\0', sizeof st->msg) == NULL) abort();
}

int LLVMFuzzerTestOneInput(const unsigned char* data, size_t size) {
  if (size == 0) return 0;
  int i = data[0] % ntypes;
  size_t n = size - 1;
  char* fds = malloc(n ? n : 1);
  memcpy(fds, data + 1, n);
  ctx_Status st;
  ctx_Status_Clear(&st);
  ctx_Schema* s = ctx_Schema_Build(fds, n, refs[i].type, strlen(refs[i].type), refs[i].vfield,
                                   strlen(refs[i].vfield), 1 << 16, &st);
  free(fds);
  if (s == NULL) {
    if (st.code != kCtx_Schema && st.code != kCtx_NoMemory) abort();
    check_status(&st, false);
    return 0;
  }
  ctx_Status_Clear(&st);
  if (!ctx_Schema_CheckCompatible(s, s, kCtx_Compat_WireJson, &st)) {
    fprintf(stderr, "fuzz_schema: a schema is not compatible with itself: %s\n", st.msg);
    abort();
  }
  ctx_Status_Clear(&st);
  check_status(&st, ctx_Schema_CheckCompatible(refs[i].schema, s, (ctx_Compat)(i & 1), &st));
  ctx_Status_Clear(&st);
  check_status(&st, ctx_Schema_CheckCompatible(s, refs[i].schema, (ctx_Compat)(i & 1), &st));
  static const char* payloads[] = {"", "\x08\x01", "\x10\x01", "\x0a\x00", "\x12\x02\x08\x01",
                                   "\x1a\x03\x0a\x01\x61", "\x0b\x0c", "\x08\x01\x08\x02"};
  ctx_Limits limits;
  ctx_Limits_Default(&limits);
  for (size_t k = 0; k < sizeof payloads / sizeof *payloads; k++) {
    ctx_PayloadVersion v;
    ctx_Status_Clear(&st);
    check_status(&st, ctx_Validate(s, payloads[k], strlen(payloads[k]), &limits, &v, &st));
  }
  ctx_Schema_Free(s);
  return 0;
}
