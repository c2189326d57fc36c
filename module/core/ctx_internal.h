/* ctx_internal.h - what the core's own files share; not part of the API. */
#ifndef CTX_INTERNAL_H_
#define CTX_INTERNAL_H_

#include "ctx_core.h"
#include "upb/reflection/def.h"

const upb_MessageDef* ctx_Schema_MessageDef(const ctx_Schema* s);
const upb_FieldDef* ctx_Schema_VersionFieldDef(const ctx_Schema* s);
/* True when a required field is reachable from the root message. */
bool ctx_Schema_HasRequired(const ctx_Schema* s);

#endif /* CTX_INTERNAL_H_ */
