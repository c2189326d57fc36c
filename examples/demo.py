"""A short tour of the ctxlink module on a throwaway server.

Starts redis-server with build/ctxlink.so on a free loopback port, registers the
order schema, then walks through: create, a re-sent create (replayed by its
write id), read, a lost race (conflict), the retry, and a payload the server
refuses. Prints what happened and stops the server. Run with
`.venv/bin/python examples/demo.py` after `make demo` or `make test`
(`make demo` itself runs the SDK's three-agent scenario, `ctxlink demo`).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import redis
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "sdk"))

from ctxlink.embedded import EmbeddedRedis, find_module  # noqa: E402


def compile_schema(proto: Path) -> bytes:
    """protoc --include_imports, via grpcio-tools: the FileDescriptorSet bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", "--include_imports",
             f"--descriptor_set_out={out}", f"-I{proto.parent}", str(proto)],
            check=True,
        )
        return out.read_bytes()


def message_class(fds: bytes, name: str):
    pool = descriptor_pool.DescriptorPool()
    for f in descriptor_pb2.FileDescriptorSet.FromString(fds).file:
        pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


def show(step: str, outcome: object) -> None:
    print(f"  {step:<46} -> {outcome}")


def main() -> int:
    fds = compile_schema(ROOT / "proto" / "order.proto")
    Order = message_class(fds, "ctxlink.example.Order")

    with EmbeddedRedis(module=find_module()) as server:
        r = server.client()
        print(f"redis-server with ctxlink on 127.0.0.1:{server.port}\n")

        rev = r.execute_command("CTX.SCHEMA.SET", "order", "ctxlink.example.Order", fds)
        show("register schema 'order'", f"revision {rev}")

        # The Router creates the order (expected_version 0 = create).
        order = Order(order_id="o-1001", version=1, status=1, base_price=12_500,
                      last_updated_by="router")
        order.items.add(sku="KB-101", quantity=2)
        create = ("CTX.CAS", "order:1001", 0, order.SerializeToString(),
                  "SCHEMA", "order", "BY", "router", "ID", "router-create-1001")
        v = r.execute_command(*create)
        show("router creates order:1001", f"version {v}")

        # The reply was lost (say): the same write with the same id is not applied twice.
        status, v = r.execute_command(*create)
        show("router re-sends the create (same ID)", f"{status.decode()}: version {v}")

        # Fulfillment and Pricing both read version 1.
        ver, raw, schema, updated_ms, by = r.execute_command("CTX.GET", "order:1001")
        show("fulfillment and pricing read", f"version {ver}, schema {schema.decode()}, by {by.decode()}")
        seen_by_pricing = Order.FromString(raw)

        # Fulfillment writes first.
        mine = Order.FromString(raw)
        mine.version, mine.inventory_reserved, mine.status = 2, True, 2
        mine.last_updated_by = "fulfillment"
        v = r.execute_command("CTX.CAS", "order:1001", 1, mine.SerializeToString(), "BY", "fulfillment")
        show("fulfillment reserves inventory", f"version {v}")

        # Pricing's write is based on version 1: a conflict, answered with the current state.
        stale = Order()
        stale.CopyFrom(seen_by_pricing)
        stale.version, stale.discount, stale.final_price = 2, 1_000, 11_500
        reply = r.execute_command("CTX.CAS", "order:1001", 1, stale.SerializeToString(), "BY", "pricing")
        current = Order.FromString(reply[1])
        show("pricing writes on version 1", f"conflict: current is version {reply[0]} "
             f"(inventory_reserved={current.inventory_reserved})")

        # Pricing retries from the state the conflict reply carried: no extra read.
        current.version, current.discount = reply[0] + 1, 1_000
        current.final_price = current.base_price - current.discount
        current.status, current.last_updated_by = 3, "pricing"
        v = r.execute_command("CTX.CAS", "order:1001", reply[0], current.SerializeToString(), "BY", "pricing")
        show("pricing retries on the conflict's state", f"version {v}")

        # A payload the schema does not allow is refused; nothing changes.
        before = r.get("order:1001")  # a context is a plain string
        bad = Order(version=4, order_id="o-1001").SerializeToString() + b"\x52\x03\x0a\x01\xff"
        try:
            r.execute_command("CTX.CAS", "order:1001", 3, bad)
            show("invalid payload", "accepted (unexpected!)")
            return 1
        except redis.ResponseError as e:
            show("agent sends bad UTF-8 in items[0].sku", f"refused: {e}")
        show("stored context after the refusal", "unchanged" if r.get("order:1001") == before else "CHANGED")

        final = Order.FromString(r.execute_command("CTX.GET", "order:1001")[1])
        print(f"\nfinal order: version {final.version}, reserved={final.inventory_reserved}, "
              f"base {final.base_price}, discount {final.discount}, final {final.final_price}")
        stats = r.info("ctx")
        print(f"INFO ctx: cas_ok={stats['ctx_cas_ok']} conflicts={stats['ctx_cas_conflicts']} "
              f"rejected_invalid={stats['ctx_rejected_invalid']}")
    print("server stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
