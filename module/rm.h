/* rm.h - includes the Redis module API header once per file.
 *
 * The header defines its function pointers where REDISMODULE_API is empty;
 * only ctxlink.c (which defines CTX_RM_MAIN) gets the definitions, the other
 * files see extern declarations. */
#ifndef CTX_RM_H_
#define CTX_RM_H_

#ifndef CTX_RM_MAIN
#define REDISMODULE_API extern
#endif
/* Redis 6.2 files RedisModule_NotifyKeyspaceEvent under the experimental API
 * (stable since 7.0). */
#define REDISMODULE_EXPERIMENTAL_API
#include "redismodule.h"

#endif /* CTX_RM_H_ */
