"""cffi builder of ``ctxlink._ctxcore``: the module's own validation core, for the SDK.

The extension compiles the very files the Redis module compiles (``module/core/*.c``, which
never include the Redis header) and links the same static upb runtime (``build/libupb.a``), so a
payload checked locally gets exactly the verdict ``CTX.CAS`` would give it.

    make ext                               # builds build/libupb.a first, then this
    python sdk/ctxlink/_ffi_build.py       # the same, once build/libupb.a exists

The result, ``sdk/ctxlink/_ctxcore.<abi>.so``, sits next to the package sources, so an editable
install (``pip install -e .``) imports it as ``ctxlink._ctxcore``. It is optional: without it the
SDK validates on the server only (see :mod:`ctxlink._local`).

Include directories and flags follow the Makefile (``CTX_INCLUDES``, ``-fvisibility=hidden``;
third-party headers as ``-isystem``), so the core is compiled the way the module compiles it.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import sysconfig

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CORE = os.path.join(ROOT, "module", "core")
BUILD = os.path.join(ROOT, "build")
DEPS = os.path.join(BUILD, "_deps")
PB = os.path.join(DEPS, "protobuf")
LIBUPB = os.path.join(BUILD, "libupb.a")
TMPDIR = os.path.join(BUILD, "cffi")

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
bool ctx_SchemaName_Check(const char* name, size_t len, ctx_Status* status);
void ctx_Digest(const char* type, size_t type_len, const char* vfield, size_t vfield_len,
                const char* fds, size_t fds_len, char out[41]);

bool ctx_Validate(const ctx_Schema* schema, const char* buf, size_t len,
                  const ctx_Limits* limits, ctx_PayloadVersion* version,
                  ctx_Status* status);
"""

# Same include directories as the Makefile: our headers first, third-party ones as -isystem
# (upb's inline functions are not warning-clean).
DEP_DIRS = [PB, os.path.join(PB, "utf8_range"), os.path.join(DEPS, "redis")]
SOURCES = sorted(glob.glob(os.path.join(CORE, "*.c")))

ffi = FFI()
ffi.cdef(CDEF)
ffi.set_source(
    "ctxlink._ctxcore",
    '#include "ctx_core.h"\n',
    sources=SOURCES,
    include_dirs=[os.path.join(ROOT, "module"), CORE],
    extra_compile_args=[
        "-std=gnu11",
        "-fvisibility=hidden",
        "-ffunction-sections",
        "-fdata-sections",
        *[arg for d in DEP_DIRS for arg in ("-isystem", d)],
    ],
    # upb objects keep hidden visibility; only PyInit__ctxcore is exported.
    extra_objects=[LIBUPB],
    extra_link_args=["-Wl,--gc-sections", "-Wl,--exclude-libs,ALL"],
)


def build(verbose: bool = False) -> str:
    """Compiles the extension under build/cffi and copies it next to this file; returns its path."""
    missing = [p for p in (LIBUPB, os.path.join(PB, "upb")) if not os.path.exists(p)]
    if missing:
        raise SystemExit(f"_ffi_build: {', '.join(missing)} missing: run `make` first")
    os.makedirs(TMPDIR, exist_ok=True)
    built = ffi.compile(tmpdir=TMPDIR, verbose=verbose)
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    target = os.path.join(HERE, "_ctxcore" + suffix)
    tmp = target + ".tmp"
    shutil.copyfile(built, tmp)
    os.replace(tmp, target)  # atomic: a running interpreter keeps its mapped copy
    return target


if __name__ == "__main__":
    print(build(verbose="-v" in sys.argv[1:]))
