"""The reference scenario's ``ctxlink.example.Order``, built from ``proto/order.proto``.

The build runs protoc on ``proto/order.proto`` (build/gen_order.py) and ships the serialized
FileDescriptorSet as ``ctxlink/order.pb``; the classes are made from it here, in a private
descriptor pool, with ``message_factory.GetMessageClass``. (A serialized descriptor does not
depend on the protobuf runtime's version; generated ``*_pb2.py`` code does.)

    from ctxlink._order_schema import Order, OrderStatus
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = ["FILE_NAME", "PACKAGE", "file_descriptor_proto", "Order", "LineItem", "OrderStatus"]

FILE_NAME = "order.proto"
PACKAGE = "ctxlink.example"
_DATA = "order.pb"


def _descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    data = resources.files("ctxlink").joinpath(_DATA)
    try:
        raw = data.read_bytes()
    except FileNotFoundError:
        raise ImportError(
            f"ctxlink/{_DATA} is missing: it is generated from proto/order.proto at build time; "
            "in a source checkout run `make ext` (or `python build/gen_order.py`)"
        ) from None
    return descriptor_pb2.FileDescriptorSet.FromString(raw)


def file_descriptor_proto() -> descriptor_pb2.FileDescriptorProto:
    """A new ``FileDescriptorProto`` of ``proto/order.proto``, as protoc made it."""
    for f in _descriptor_set().file:
        if f.name == FILE_NAME:
            return f
    raise ImportError(f"ctxlink/{_DATA} does not describe {FILE_NAME}")  # pragma: no cover


# A private pool: no clash with a protoc-generated order_pb2 the application may import.
_pool = descriptor_pool.DescriptorPool()
_pool.Add(file_descriptor_proto())
Order: Any = message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"{PACKAGE}.Order"))
LineItem: Any = message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"{PACKAGE}.LineItem"))
OrderStatus = {
    v.name: v.number for v in _pool.FindEnumTypeByName(f"{PACKAGE}.OrderStatus").values
}
