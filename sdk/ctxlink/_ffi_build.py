"""cffi builder of ``ctxlink._ctxcore``: the module's own validation core, for the SDK.

The extension compiles the very files the Redis module compiles (``module/core/*.c``, which
never include the Redis header) against the same pinned upb runtime, so a payload checked locally
gets exactly the verdict ``CTX.CAS`` would give it. It is a required part of the SDK.

This file only declares the extension (``ffi``). ``setup.py`` builds it through cffi's
setuptools integration (``cffi_modules=["sdk/ctxlink/_ffi_build.py:ffi"]``) together with the
static library ``ctxlink_upb``, which setup.py compiles from the upb sources that
``build/fetch_deps.py`` fetches and verifies (its ``upb_sources()`` is the list the Makefile uses
for ``build/libupb.a`` too). Every way of building runs that code:

    pip install . | pip wheel . | python -m build    # wheel: ctxlink/_ctxcore.abi3.so
    make ext                                         # in place, for the editable dev install:
                                                     # sdk/ctxlink/_ctxcore.abi3.so (git-ignored)
    python sdk/ctxlink/_ffi_build.py                 # the same as make ext

Include directories and flags follow the Makefile (``CTX_INCLUDES``, ``-fvisibility=hidden``;
third-party headers as ``-isystem``), so the core is compiled the way the module compiles it.
The wheel does not ship this file (setup.py leaves it out): it needs the source tree.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CORE = os.path.join(ROOT, "module", "core")
PB = os.path.join(ROOT, "build", "_deps", "protobuf")

# The part of module/core/ctx_core.h the SDK calls. "..." lets the C compiler fill in constant
# values, enum values, array sizes and struct layout from the real header.
CDEF = """
typedef enum {
    kCtx_Ok, kCtx_Invalid, kCtx_TooBig, kCtx_Version, kCtx_Schema, kCtx_NoMemory, ...
} ctx_Code;

#define CTX_STATUS_MSG_MAX ...
#define CTX_DEFAULT_MAX_PAYLOAD_BYTES ...
#define CTX_DEFAULT_MAX_DEPTH ...
#define CTX_MAX_DEPTH_LIMIT ...
#define CTX_DEFAULT_MAX_SCHEMA_BYTES ...

typedef struct {
    ctx_Code code;
    char msg[...];
    ...;
} ctx_Status;

typedef struct {
    size_t max_payload_bytes;
    int max_depth;
    bool allow_unknown;
    ...;
} ctx_Limits;

typedef struct {
    int64_t value;
    bool in_range;
    ...;
} ctx_PayloadVersion;

typedef struct ctx_Schema ctx_Schema;

const char* ctx_Code_Prefix(ctx_Code code);
void ctx_Status_Clear(ctx_Status* s);
void ctx_Limits_Default(ctx_Limits* l);

ctx_Schema* ctx_Schema_Build(const char* fds, size_t fds_len, const char* type,
                             size_t type_len, const char* vfield, size_t vfield_len,
                             size_t max_schema_bytes, ctx_Status* status);
void ctx_Schema_Free(ctx_Schema* s);
const char* ctx_Schema_TypeName(const ctx_Schema* s);
const char* ctx_Schema_VersionField(const ctx_Schema* s);
size_t ctx_Schema_MemoryBytes(const ctx_Schema* s);
size_t ctx_AllocatedBytes(void);

typedef enum { kCtx_Compat_WireJson, kCtx_Compat_Wire, ... } ctx_Compat;
bool ctx_Compat_Parse(const char* s, size_t len, ctx_Compat* out);
const char* ctx_Compat_Name(ctx_Compat mode);
bool ctx_Schema_CheckCompatible(const ctx_Schema* prev, const ctx_Schema* next,
                                ctx_Compat mode, ctx_Status* status);
bool ctx_Schema_CheckChange(const ctx_Schema* prev, const ctx_Schema* next,
                            ctx_Compat mode, bool force, ctx_Status* status);
#define CTX_SCHEMA_NAME_MAX ...
#define CTX_HISTORY_MAX ...
#define CTX_HISTORY_PAYLOAD_MAX ...
#define CTX_FEED_MAX ...
#define CTX_WINDOW_MAX ...
#define CTX_WINDOW_DEFAULT ...
bool ctx_SchemaName_Check(const char* name, size_t len, ctx_Status* status);
void ctx_Digest(const char* type, size_t type_len, const char* vfield, size_t vfield_len,
                const char* fds, size_t fds_len, char out[41]);

bool ctx_Validate(const ctx_Schema* schema, const char* buf, size_t len,
                  const ctx_Limits* limits, ctx_PayloadVersion* version,
                  ctx_Status* status);

void ctx_free(void* p);
bool ctx_Schema_LuaPlan(const ctx_Schema* s, const char digest[40], char** out,
                        size_t* out_len, ctx_Status* status);
void ctx_WriteDigest(const char* id, size_t len, unsigned char out[8]);
"""

# Same include directories as the Makefile: our headers first, third-party ones as -isystem
# (upb's inline functions are not warning-clean). Paths relative to the root, as setuptools wants.
DEP_DIRS = [PB, os.path.join(PB, "utf8_range")]
SOURCES = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(CORE, "*.c")))
HEADERS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(CORE, "*.h")))

ffi = FFI()
ffi.cdef(CDEF)
ffi.set_source(
    "ctxlink._ctxcore",
    '#include "ctx_core.h"\n',
    sources=SOURCES,
    # A change to a header or to the upb pin rebuilds the extension.
    depends=[*HEADERS, os.path.join("build", "fetch_deps.py")],
    include_dirs=[os.path.join(ROOT, "module"), CORE],
    extra_compile_args=[
        "-std=gnu11",
        "-fvisibility=hidden",
        "-ffunction-sections",
        "-fdata-sections",
        *[arg for d in DEP_DIRS for arg in ("-isystem", d)],
    ],
    # Linked with setup.py's static ctxlink_upb (hidden visibility); only PyInit__ctxcore is
    # exported.
    extra_link_args=["-Wl,--gc-sections", "-Wl,--exclude-libs,ALL", "-Wl,--strip-debug"],
)


def build_in_place() -> int:
    """Builds sdk/ctxlink/_ctxcore.abi3.so in place (what ``make ext`` runs); exit status."""
    cmd = [sys.executable, "setup.py", "-q", "build_clib", "build_ext", "--inplace"]
    return subprocess.call(cmd, cwd=ROOT)


if __name__ == "__main__":
    sys.exit(build_in_place())
