"""The schema registry operations (``register_schema``, ``schemas``, ``get_schema``,
``drop_schema``) and what they take: a message class or descriptor-set bytes
(:func:`resolve_schema_source`), :class:`SchemaInfo`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FileDescriptor
from google.protobuf.message import DecodeError, Message

from ctxlink import _native
from ctxlink._cluster import registry_copies
from ctxlink._exceptions import ArgumentError, SchemaError
from ctxlink._feed import FEED_CLUSTER_MSG, check_feed_arg
from ctxlink._history import check_history_args
from ctxlink._instr import Cmd, Op
from ctxlink._lua import _evalsha, forget_plans
from ctxlink._protocol import MODULE, _bytes, _text
from ctxlink._schema_rules import _schema_error, check_compat_arg, register_lua
from ctxlink._state import State
from ctxlink._types import note_schema_type
from ctxlink._window import WINDOW_DEFAULT, check_window_arg


@dataclass(frozen=True)
class SchemaInfo:
    """A registry entry, as ``get_schema`` returns it: the definition, its revision and its
    settings (``compat``: "WIRE_JSON" or "WIRE"; ``history``: changes kept per context, 0 = off;
    ``history_payloads``: history entries keep the payload; ``feed``: changes kept in the
    schema's change feed, 0 = off; ``window``: write records each context keeps, the reach of
    replays and of ``rebase`` for appends)."""

    name: str
    message_type: str
    descriptor_set: bytes
    revision: int
    compat: str = "WIRE_JSON"
    history: int = 0
    history_payloads: bool = False
    feed: int = 0
    window: int = WINDOW_DEFAULT


def build_descriptor_set(desc: Descriptor | FileDescriptor) -> bytes:
    """A serialized FileDescriptorSet with ``desc``'s file and every transitive import,
    dependencies first."""
    root = desc if isinstance(desc, FileDescriptor) else desc.file
    ordered: list[FileDescriptor] = []
    seen: set[str] = set()

    def visit(f: FileDescriptor) -> None:
        if f.name in seen:
            return
        seen.add(f.name)
        for dep in f.dependencies:
            visit(dep)
        ordered.append(f)

    visit(root)
    fds = descriptor_pb2.FileDescriptorSet()
    for f in ordered:
        f.CopyToProto(fds.file.add())
    return bytes(fds.SerializeToString())


def resolve_schema_source(source: Any, message_type: str | None) -> tuple[str, bytes]:
    """(message type, descriptor set) from a message class/instance/descriptor or a set's bytes."""
    if message_type is not None and not isinstance(message_type, str):
        raise TypeError(f"message_type must be a str, not {type(message_type).__name__}")
    desc = getattr(source, "DESCRIPTOR", source)
    if isinstance(desc, Descriptor):
        if message_type is not None and message_type != desc.full_name:
            raise ArgumentError(
                f"message_type {message_type!r} is not the class's type {desc.full_name!r}; "
                "leave message_type out when passing a class"
            )
        return desc.full_name, build_descriptor_set(desc)
    if isinstance(source, descriptor_pb2.FileDescriptorSet):
        source = source.SerializeToString()
    if isinstance(source, (bytes, bytearray, memoryview)):
        fds = bytes(source)
        if message_type is not None:
            return message_type, fds  # the C core judges the set (the module's texts)
        try:
            parsed = descriptor_pb2.FileDescriptorSet.FromString(fds)
        except DecodeError as exc:
            # the core's verdict on the bytes, as CTX.SCHEMA.SET words it
            _native.compile_schema(fds, "", None)
            raise _schema_error(
                f"the descriptor set does not parse as a FileDescriptorSet ({exc}); pass the "
                "message class, or the bytes protoc --include_imports --descriptor_set_out writes"
            ) from None
        names = [
            (f.package + "." if f.package else "") + m.name
            for f in parsed.file
            for m in f.message_type
        ]
        if not names:
            raise _schema_error(
                "the descriptor set defines no message; pass the message class, or the bytes "
                "protoc --include_imports --descriptor_set_out writes"
            )
        if message_type is None:
            if len(names) != 1:
                raise ArgumentError(
                    f"message_type= is required: the set defines {len(names)} messages "
                    f"({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
                )
            message_type = names[0]
        return message_type, fds
    if isinstance(source, str):
        raise TypeError(
            "register_schema needs a message class or descriptor-set bytes, not a str "
            "(read the .pb file in binary mode)"
        )
    raise TypeError(
        "register_schema needs a generated message class (or instance, or Descriptor) or "
        f"serialized FileDescriptorSet bytes, not {type(source).__name__}"
    )


def check_message_class(cls: Any, what: str) -> None:
    """TypeError unless ``cls`` is a generated protobuf message class."""
    if not (isinstance(cls, type) and issubclass(cls, Message)):
        hint = " (pass the class, not an instance)" if isinstance(cls, Message) else ""
        raise TypeError(
            f"{what} must be a generated protobuf message class, not {type(cls).__name__}{hint}"
        )


def _admin(st: State, args: tuple[Any, ...], write: bool) -> Op[Any]:
    """A keyless schema command; on a cluster it goes to every primary (write) or any node."""
    reply = yield Cmd(args, nodes=("primaries" if write else "random") if st.cluster else None)
    return reply


def op_register_schema(
    st: State,
    name: str,
    source: Any,
    force: bool,
    version_field: str | None,
    message_type: str | None,
    compat: str | None = None,
    history: int | None = None,
    history_payloads: bool | None = None,
    feed: int | None = None,
    window: int | None = None,
) -> Op[int]:
    """Registers a schema. ``compat`` ("WIRE_JSON" or "WIRE") sets the entry's compatibility
    category; None keeps the entry's (WIRE_JSON for a new name). Both engines decide the change
    with the C core (docs/PROTOCOL.md, "Compatibility categories"). ``history`` (0..1000) and
    ``history_payloads`` set the entry's history settings; None keeps the entry's (off for a new
    name); other settings for the same definition are a new revision (docs/PROTOCOL.md,
    "History"). ``window`` (1..255) sets how many write records each context keeps (None keeps
    the entry's; 16 for a new name): a larger window lets more concurrent writers re-send a
    write whose reply was lost and still learn its outcome."""
    if not isinstance(name, str):
        raise TypeError(f"the schema name must be a str, not {type(name).__name__}")
    if version_field is not None and (not isinstance(version_field, str) or not version_field):
        raise ArgumentError(f"version_field must be a non-empty field name, not {version_field!r}")
    mode = check_compat_arg(compat)
    hist, hpay = check_history_args(history, history_payloads)
    fd = check_feed_arg(feed)
    win = check_window_arg(window)
    if fd and st.cluster:  # as CTX.SCHEMA.SET and schema_set.lua refuse it; nothing sent
        raise SchemaError(FEED_CLUSTER_MSG)
    type_name, fds = resolve_schema_source(source, message_type)
    vfield = version_field or "version"
    if st.engine == MODULE:
        args: tuple[Any, ...] = ("CTX.SCHEMA.SET", name, type_name, fds)
        if force:
            args += ("FORCE",)
        if version_field is not None:
            args += ("VERSIONFIELD", version_field)
        if mode is not None:
            args += ("COMPAT", mode)
        if hist is not None:
            args += ("HISTORY", hist)
        if hpay is not None:
            args += ("HISTORYPAYLOADS", "yes" if hpay else "no")
        if fd is not None:
            args += ("FEED", fd)
        if win is not None:
            args += ("WINDOW", win)
        revision = int((yield from _admin(st, args, write=True)))
    else:
        revision = yield from register_lua(st, name, type_name, fds, force, vfield, mode,
                                           hist, hpay, fd, win)
    st.vfield_by_schema[name] = vfield
    st.vfield_by_type[type_name] = vfield
    st.type_by_schema[name] = type_name
    note_schema_type(name, type_name)
    # the Lua engine's plan script of this name was made from the entry as it was (a repair
    # keeps the digest): make it again from the entry on next use
    forget_plans(st, name)
    st.history_by_schema.pop(name, None)  # read again with the plan (Lua engine)
    st.feed_by_schema.pop(name, None)
    if st.local is not None:  # local check: recompile from the registry on next use
        st.local.forget(name)
    return revision


def op_schemas(st: State) -> Op[list[str]]:
    if st.engine == MODULE:
        reply = yield from _admin(st, ("CTX.SCHEMA.LIST",), write=False)
    else:
        reply = yield from _evalsha(st, "schema_list", (registry_copies(st, "")[0][1],), ())
    return sorted(_text(n) for n in (reply or []))


def op_get_schema(st: State, name: str) -> Op[SchemaInfo | None]:
    if st.engine == MODULE:
        reply = yield from _admin(st, ("CTX.SCHEMA.GET", name), write=False)
    else:
        reply = yield from _evalsha(st, "schema_get", (registry_copies(st, name)[0][0],), ())
    if reply is None:
        return None
    type_name, fds, revision = reply[:3]
    if len(reply) < 6:  # a module without history settings
        return SchemaInfo(name, _text(type_name), _bytes(fds), int(revision))
    compat, hist, hpay = reply[3:6]
    feed = int(reply[6]) if len(reply) > 6 else 0  # a server before the change feed: off
    window = int(reply[7]) if len(reply) > 7 else WINDOW_DEFAULT  # before WINDOW: the default
    return SchemaInfo(name, _text(type_name), _bytes(fds), int(revision), _text(compat),
                      int(hist), bool(int(hpay)), feed, window)


def op_drop_schema(st: State, name: str) -> Op[bool]:
    if st.engine == MODULE:
        reply = yield from _admin(st, ("CTX.SCHEMA.DEL", name), write=True)
    else:
        removed = 0
        for entry, index in registry_copies(st, name):
            removed |= int((yield from _evalsha(st, "schema_del", (entry, index), (name,))))
        reply = removed
    st.vfield_by_schema.pop(name, None)
    st.type_by_schema.pop(name, None)
    if st.local is not None:  # local check: forget the dropped schema
        st.local.forget(name)
    return bool(int(reply))
