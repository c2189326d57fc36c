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

#define MAX_SCHEMAS 32

static ctx_Schema* schemas[MAX_SCHEMAS];
static int nschemas;

static char* read_file(const char* path, size_t* len) {
  FILE* f = fopen(path, "rb");
  if (f == NULL) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char* buf = malloc(n > 0 ? (size_t)n : 1);
  if (buf == NULL || fread(buf, 1, (size_t)n, f) != (size_t)n) {
    fclose(f);
    free(buf);
    return NULL;
  }
  fclose(f);
  *len = (size_t)n;
  return buf;
}

int LLVMFuzzerInitialize(int* argc, char*** argv) {
  (void)argc;
  (void)argv;
  const char* dir = getenv("CTX_FUZZ_SCHEMAS");
  if (dir == NULL) dir = "build/fuzz/schemas";
  char path[4096], file[256], type[256], vfield[128];
  snprintf(path, sizeof path, "%s/index.txt", dir);
  FILE* idx = fopen(path, "r");
  if (idx == NULL) {
    fprintf(stderr, "fuzz_validate: cannot open %s (run tests/torture/fuzz_inputs.py)\n", path);
    exit(2);
  }
  while (nschemas < MAX_SCHEMAS &&
         fscanf(idx, "%255s %255s %127s", file, type, vfield) == 3) {
    size_t len = 0;
    snprintf(path, sizeof path, "%s/%s", dir, file);
    char* fds = read_file(path, &len);
    if (fds == NULL) {
      fprintf(stderr, "fuzz_validate: cannot read %s\n", path);
      exit(2);
    }
    ctx_Status st;
    ctx_Status_Clear(&st);
    ctx_Schema* s = ctx_Schema_Build(fds, len, type, strlen(type), vfield,
                                     strlen(vfield), CTX_DEFAULT_MAX_SCHEMA_BYTES, &st);
    free(fds);
    if (s == NULL) {
      fprintf(stderr, "fuzz_validate: schema %s (%s) rejected: %s %s\n", file, type,
              ctx_Code_Prefix(st.code), st.msg);
      exit(2);
    }
    schemas[nschemas++] = s;
  }
  fclose(idx);
  if (nschemas == 0) {
    fprintf(stderr, "fuzz_validate: no schemas in %s\n", dir);
    exit(2);
  }
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
  const ctx_Schema* schema = schemas[(sel & 0x0f) % nschemas];
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
