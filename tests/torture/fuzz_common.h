/* fuzz_common.h - what the two libFuzzer harnesses share (make fuzz): reading a
 * file, and compiling the reference schemas listed in $CTX_FUZZ_SCHEMAS/index.txt
 * (one "file.fds type vfield" per line, written by tests/torture/fuzz_inputs.py).
 * Any failure here is a broken setup, not a finding: the harness exits with 2. */
#ifndef CTX_FUZZ_COMMON_H_
#define CTX_FUZZ_COMMON_H_

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctx_core.h"

#define FUZZ_MAX_SCHEMAS 32

typedef struct {
  ctx_Schema* schema;
  char type[256];
  char vfield[128];
} fuzz_Ref;

static char* fuzz_ReadFile(const char* path, size_t* len) {
  FILE* f = fopen(path, "rb");
  if (f == NULL) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char* buf = malloc(n > 0 ? (size_t)n : 1);
  if (buf == NULL || n < 0 || fread(buf, 1, (size_t)n, f) != (size_t)n) {
    fclose(f);
    free(buf);
    return NULL;
  }
  fclose(f);
  *len = (size_t)n;
  return buf;
}

/* Compiles every schema of the index into refs (at most FUZZ_MAX_SCHEMAS);
 * returns how many. `who` names the harness in error messages. */
static int fuzz_LoadRefs(const char* who, fuzz_Ref* refs) {
  const char* dir = getenv("CTX_FUZZ_SCHEMAS");
  if (dir == NULL) dir = "build/fuzz/schemas";
  char path[4096], file[256];
  snprintf(path, sizeof path, "%s/index.txt", dir);
  FILE* idx = fopen(path, "r");
  if (idx == NULL) {
    fprintf(stderr, "%s: cannot open %s (run tests/torture/fuzz_inputs.py)\n", who, path);
    exit(2);
  }
  int n = 0;
  while (n < FUZZ_MAX_SCHEMAS &&
         fscanf(idx, "%255s %255s %127s", file, refs[n].type, refs[n].vfield) == 3) {
    size_t len = 0;
    snprintf(path, sizeof path, "%s/%s", dir, file);
    char* fds = fuzz_ReadFile(path, &len);
    if (fds == NULL) {
      fprintf(stderr, "%s: cannot read %s\n", who, path);
      exit(2);
    }
    ctx_Status st;
    ctx_Status_Clear(&st);
    refs[n].schema = ctx_Schema_Build(fds, len, refs[n].type, strlen(refs[n].type),
                                      refs[n].vfield, strlen(refs[n].vfield),
                                      CTX_DEFAULT_MAX_SCHEMA_BYTES, &st);
    free(fds);
    if (refs[n].schema == NULL) {
      fprintf(stderr, "%s: schema %s (%s) does not compile: %s %s\n", who, file,
              refs[n].type, ctx_Code_Prefix(st.code), st.msg);
      exit(2);
    }
    n++;
  }
  fclose(idx);
  if (n == 0) {
    fprintf(stderr, "%s: no schemas in %s\n", who, dir);
    exit(2);
  }
  return n;
}

#endif /* CTX_FUZZ_COMMON_H_ */
