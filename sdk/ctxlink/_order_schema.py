"""The reference scenario's ``ctxlink.example.Order``, without protoc.

``proto/order.proto`` is the source of truth. This module builds the same file descriptor by hand
(a ``FileDescriptorProto`` written out in Python, not generated code) so that the demo runs from an
installed package, where neither the ``.proto`` file nor protoc is available. A test checks that
every message, field (name, number, type, label, type name) and enum value matches what protoc
makes from ``proto/order.proto``.

    from ctxlink._order_schema import Order, OrderStatus
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = ["FILE_NAME", "PACKAGE", "file_descriptor_proto", "Order", "LineItem", "OrderStatus"]

FILE_NAME = "order.proto"
PACKAGE = "ctxlink.example"

_F = descriptor_pb2.FieldDescriptorProto
_OPTIONAL = _F.LABEL_OPTIONAL
_REPEATED = _F.LABEL_REPEATED

# (name, number, type, label, type_name) in the order of proto/order.proto
_LINE_ITEM_FIELDS = (
    ("sku", 1, _F.TYPE_STRING, _OPTIONAL, ""),
    ("quantity", 2, _F.TYPE_UINT32, _OPTIONAL, ""),
)
_ORDER_FIELDS = (
    ("order_id", 1, _F.TYPE_STRING, _OPTIONAL, ""),
    ("version", 2, _F.TYPE_INT64, _OPTIONAL, ""),
    ("status", 3, _F.TYPE_ENUM, _OPTIONAL, f".{PACKAGE}.OrderStatus"),
    ("base_price", 4, _F.TYPE_INT64, _OPTIONAL, ""),
    ("discount", 5, _F.TYPE_INT64, _OPTIONAL, ""),
    ("final_price", 6, _F.TYPE_INT64, _OPTIONAL, ""),
    ("inventory_reserved", 7, _F.TYPE_BOOL, _OPTIONAL, ""),
    ("last_updated_by", 8, _F.TYPE_STRING, _OPTIONAL, ""),
    ("last_updated_epoch", 9, _F.TYPE_INT64, _OPTIONAL, ""),
    ("items", 10, _F.TYPE_MESSAGE, _REPEATED, f".{PACKAGE}.LineItem"),
)
_ORDER_STATUS = (
    ("ORDER_STATUS_UNSPECIFIED", 0),
    ("ORDER_STATUS_NEW", 1),
    ("ORDER_STATUS_RESERVED", 2),
    ("ORDER_STATUS_PRICED", 3),
    ("ORDER_STATUS_READY", 4),
    ("ORDER_STATUS_REJECTED", 5),
)


def _json_name(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _add_message(
    fdp: descriptor_pb2.FileDescriptorProto, name: str, fields: tuple[Any, ...]
) -> None:
    msg = fdp.message_type.add(name=name)
    for fname, number, ftype, label, type_name in fields:
        f = msg.field.add(
            name=fname, number=number, type=ftype, label=label, json_name=_json_name(fname)
        )
        if type_name:
            f.type_name = type_name


def file_descriptor_proto() -> descriptor_pb2.FileDescriptorProto:
    """A new ``FileDescriptorProto`` equal in content to protoc's for ``proto/order.proto``."""
    fdp = descriptor_pb2.FileDescriptorProto(name=FILE_NAME, package=PACKAGE, syntax="proto3")
    enum = fdp.enum_type.add(name="OrderStatus")
    for name, number in _ORDER_STATUS:
        enum.value.add(name=name, number=number)
    _add_message(fdp, "LineItem", _LINE_ITEM_FIELDS)
    _add_message(fdp, "Order", _ORDER_FIELDS)
    return fdp


# A private pool: no clash with a protoc-generated order_pb2 the application may import.
_pool = descriptor_pool.DescriptorPool()
_file = _pool.Add(file_descriptor_proto())
Order: Any = message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"{PACKAGE}.Order"))
LineItem: Any = message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"{PACKAGE}.LineItem"))
OrderStatus = {name: number for name, number in _ORDER_STATUS}
