/* ctx_sha1.h - a small SHA-1: registry digests (ctx_Digest) and write-id digests.
 *
 * Part of the core: no Redis header, so the module and the SDK's extension hash alike. */
#ifndef CTX_SHA1_H_
#define CTX_SHA1_H_

#include <stddef.h>
#include <stdint.h>

typedef struct {
  uint32_t h[5];
  uint64_t len;
  uint8_t buf[64];
  size_t used;
} ctx_Sha1;

void ctx_Sha1_Init(ctx_Sha1* s);
void ctx_Sha1_Update(ctx_Sha1* s, const void* data, size_t n);
void ctx_Sha1_Final(ctx_Sha1* s, uint8_t out[20]);
void ctx_Sha1_HexFinal(ctx_Sha1* s, char out[41]);

#endif /* CTX_SHA1_H_ */
