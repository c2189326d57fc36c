/* fuzz_validate.c - libFuzzer harness for the validation core (make fuzz).
 *
 * At start-up it compiles the schemas listed in $CTX_FUZZ_SCHEMAS/index.txt
 * (one "file.fds type vfield" per line, written by tests/torture/fuzz_inputs.py).
 * Each input is: one selector byte (schema = byte % count, bit 7 = allow
 * unknown fields, bits 4-6 pick a max depth) followed by the payload given to
 * ctx_Validate. A verdict is checked for consistency: a status is one of the
 * documented codes, an accepted payload has a clean status. Memory errors and
 * undefined behaviour are ASan's and UBSan's to find. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctx_core.h"
#include "fuzz_common.h"

static fuzz_Ref refs[FUZZ_MAX_SCHEMAS];
static int nschemas;

int LLVMFuzzerInitialize(int* argc, char*** argv) {
  (void)argc;
  (void)argv;
  nschemas = fuzz_LoadRefs("fuzz_validate", refs);
  fprintf(stderr, "fuzz_validate: %d schemas loaded\n", nschemas);
  return 0;
}

int LLVMFuzzerTestOneInput(const unsigned char* data, size_t size) {
  if (size == 0) return 0;
  unsigned sel = data[0];
  static const int depths[8] = {32, 0, 1, 2, 5, 16, 64, 100};
  ctx_Limits limits;
  ctx_Limits_Default(&limits);
  limits.allow_unknown = (sel & 0x80) != 0;
  limits.max_depth = depths[(sel >> 4) & 7];
  const ctx_Schema* schema = refs[(sel & 0x0f) % nschemas].schema;
  /* a heap copy of exactly the payload, so ASan sees any read past its end */
  size_t n = size - 1;
  char* buf = malloc(n ? n : 1);
  memcpy(buf, data + 1, n);
  ctx_PayloadVersion version;
  ctx_Status st;
  ctx_Status_Clear(&st);
  bool ok = ctx_Validate(schema, buf, n, &limits, &version, &st);
  free(buf);
  if (ok ? st.code != kCtx_Ok
         : (st.code != kCtx_Invalid && st.code != kCtx_TooBig && st.code != kCtx_Version &&
            st.code != kCtx_NoMemory)) {
    fprintf(stderr, "fuzz_validate: inconsistent verdict ok=%d code=%d msg=%s\n", ok,
            (int)st.code, st.msg);
    abort();
  }
  if (!ok && memchr(st.msg, '\0', sizeof st.msg) == NULL) abort(); /* unterminated message */
  return 0;
}
