"""The opt-in local check (``connect(local_check=True)``).

Before CTX.CAS / cas.lua, the payload is checked with the module's own validation core
(:mod:`ctxlink._local`, the cffi extension) against the schema's descriptor set (fetched once
with get_schema): the schema the write names, else the context's schema as this Store last saw
it (confirmed by reading the context again before a refusal). A payload the core rejects raises
the exception the server would raise, without sending the write. Everything else (no schema
name known, schema missing or not compiling, out of memory) is left to the server, which stays
the authority. Before refusing, the registry entry is read again (one round trip, on rejects
only), so a schema re-registered by someone else is not judged with a stale copy.
"""

from __future__ import annotations

from typing import Any, Optional

from ctxlink._cluster import registry_key_for
from ctxlink._exceptions import SchemaError
from ctxlink._instr import Cmd, Op
from ctxlink._protocol import MODULE, _text
from ctxlink._registry import op_get_schema
from ctxlink._state import State


def enable_local_check(st: State) -> None:
    """Turns the local check on (the extension is part of the SDK: it is always there)."""
    from ctxlink import _local

    st.local = _local.LocalValidator(
        max_payload_bytes=st.max_payload_bytes,
        max_depth=st.max_depth,
        unknown_fields=st.unknown_fields,
    )


def _local_read_limits(st: State) -> Op[None]:
    """Module engine: the limits that count are the module's load-time arguments (INFO ctx)."""
    st.local_limits_read = True
    if st.engine != MODULE:
        return
    try:
        info = yield Cmd(("INFO", "ctx"), nodes="random" if st.cluster else None)
    except Exception:
        return
    if not isinstance(info, dict):
        return
    values = {_text(k): v for k, v in info.items()}
    try:
        if "ctx_max_payload_bytes" in values:
            st.local.max_payload_bytes = int(values["ctx_max_payload_bytes"])
        if "ctx_max_depth" in values:
            st.local.max_depth = int(values["ctx_max_depth"])
        if "ctx_unknown_fields" in values:
            st.local.unknown_fields = _text(values["ctx_unknown_fields"])
    except (TypeError, ValueError):
        return


def _local_load(st: State, name: str, key: Any = None) -> Op[Any]:
    """Fetches and compiles schema ``name`` for the local check (a ``LocalSchema`` whose
    ``vfield`` is None when the registry's version field name could not be read); None when the
    schema is unknown or does not compile (the server then answers)."""
    info = yield from op_get_schema(st, name)
    if info is None:
        st.local.forget(name)
        return None
    vfield = st.vfield_by_schema.get(name)
    if vfield is None:
        try:
            value = yield Cmd(("HGET", registry_key_for(st, name, key), "vfield"))
        except Exception:  # no ACL right on __ctx:* ... the version rule is then not checked
            value = None
        vfield = _text(value) if value else None
    try:
        return st.local.set_schema(name, info.descriptor_set, info.message_type, vfield)
    except (SchemaError, MemoryError):
        st.local.forget(name)
        return None


def _local_precheck(
    st: State, key: Any, expected: int, raw: bytes, schema: Optional[str], own_version: bool
) -> Op[None]:
    from ctxlink import _local

    # A write without SCHEMA is checked against the context's schema as this Store last saw it
    # (an earlier write's or conflict's reply). That may be stale (the context was deleted and
    # created again with another schema): before refusing, the context is read again and a
    # schema other than the cached one leaves the verdict to the server.
    cached = schema is None
    known = st.key_schema.get(key) if schema is None and expected > 0 else schema
    if known is None:
        return
    name: str = known
    if not st.local_limits_read:
        yield from _local_read_limits(st)
    entry = st.local.get_schema(name)
    if entry is None:
        entry = yield from _local_load(st, name, key)
        if entry is None:
            return
    for attempt in range(2):
        code, message = st.local.check_cas(entry, raw, expected)
        if code == "CTXVERSION" and not (own_version and entry.vfield is not None):
            code = None  # the SDK set the version itself, or we do not know the field's name
        if code not in ("CTXINVALID", "CTXTOOBIG", "CTXVERSION"):
            return
        if attempt == 0:  # confirm against the current registry entry before refusing
            if cached:
                from ctxlink._write import op_get  # (_write imports this module)

                current = yield from op_get(st, key)
                if current is None or current.schema != name:
                    st.key_schema.pop(key)
                    return
            fresh = yield from _local_load(st, name, key)
            if fresh is None:
                return
            if fresh is entry:
                break
            entry = fresh
    _local.raise_for(code, message)
