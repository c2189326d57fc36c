"""Protocol 3 through the SDK and the raw commands, on both engines (the ``backend`` fixture: the
module's CTX.* commands, or the Lua scripts through ``ctxlink.connect(engine="lua")``):

- the incarnation: minted at the create, kept by every write, new after delete + re-create; a
  write based on the old one is ``ContextReplacedError`` (CTXGONE) and the successor stays byte
  for byte as it was, also when it is the re-send of a write whose reply was lost;
- field clocks: writers of disjoint fields never conflict, however many writes land between a
  writer's read and its write (the 16-record window no longer decides);
- TTL: ``PX`` / ``ttl=`` on create, kept by updates, replaced when given; ``touch``; every bad
  ttl refused before anything is sent;
- parity: the module and the Lua engine store the same bytes for the same writes under the same
  incarnation.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable

import pytest
import redis
from backends import make_backend, start_engine_server
from ctxvalue import decode, encode_v2
from faultproxy import FaultProxy
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from wire import f_varint

import ctxlink

ORDER_TYPE = "ctxlink.example.Order"
WIDE_TYPE = "ctxlink.test.clock.Wide"
INC_A = "0123456789abcdef"
INC_B = "fedcba9876543210"
#: updates per run of the disjoint-writers test, split among the writers: 8 writers
#: x 500 (16 writers: 250 each); a few seconds per engine (CTX_CLOCK_UPDATES to change it)
UPDATES = int(os.environ.get("CTX_CLOCK_UPDATES", "4000"))


def write_matcher(store: ctxlink.Store) -> Callable[[list[bytes]], bool]:
    """Matches the write commands of ``store``'s engine (CTX.CAS / CTX.PATCH, or the plan
    scripts of cas.lua), for the fault proxy."""
    def match(args: list[bytes]) -> bool:
        if not args:
            return False
        name = args[0].upper()
        shas = {sc.sha.encode() for n, sc in list(store._st.scripts.items())
                if n.split(":", 1)[0] in ("cas", "patch") and ":" in n}
        return name in (b"CTX.CAS", b"CTX.PATCH") or (
            name in (b"EVALSHA", b"EVALSHA_RO") and args[1] in shas)

    return match


def wide_fds(fields: int = 20) -> bytes:
    """A proto3 message ``Wide``: ``version`` (1) and int64 fields f2 .. f<fields + 1>, each on
    its own clock bit."""
    f = descriptor_pb2.FileDescriptorProto(name="clock_wide.proto", package="ctxlink.test.clock",
                                           syntax="proto3")
    m = f.message_type.add(name="Wide")
    t, opt = descriptor_pb2.FieldDescriptorProto.TYPE_INT64, \
        descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    m.field.add(name="version", number=1, type=t, label=opt)
    for n in range(2, fields + 2):
        m.field.add(name=f"f{n}", number=n, type=t, label=opt)
    return descriptor_pb2.FileDescriptorSet(file=[f]).SerializeToString()


def wide_class() -> Any:
    pool = descriptor_pool.DescriptorPool()
    for f in descriptor_pb2.FileDescriptorSet.FromString(wide_fds()).file:
        pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(WIDE_TYPE))


Wide = wide_class()


@pytest.fixture
def store(backend, engine, pb) -> ctxlink.Store:
    """An SDK Store on the backend's server, the engine under test; schemas "order" and "wide"."""
    s = ctxlink.connect(backend.server.client(), engine=engine)
    s.register_schema("order", pb.fds("order"), message_type=ORDER_TYPE)
    s.register_schema("wide", wide_fds(), message_type=WIDE_TYPE)
    return s


def order_cls(pb):
    return pb.Order


# --------------------------------------------------------------------------- incarnation


def test_the_incarnation_survives_updates(store, pb):
    Order = order_cls(pb)
    assert store.cas("o:i", 0, Order(order_id="o"), schema="order").ok
    first = store.get("o:i")
    inc = first.incarnation
    assert len(inc) == 16 and int(inc, 16) != 0 and inc == inc.lower()
    assert decode(store.client.get("o:i")).inc_hex == inc
    assert store.cas("o:i", 1, Order(order_id="o", base_price=5)).ok
    store.update("o:i", lambda o: setattr(o, "discount", 3), message_class=Order)
    store.update("o:i", lambda o: setattr(o, "base_price", 9), message_class=Order, reads=[])
    last = store.get("o:i")
    assert last.version == 4 and last.incarnation == inc


def test_delete_and_recreate_gives_a_new_incarnation(store, pb):
    Order = order_cls(pb)
    store.cas("o:d", 0, Order(order_id="o"), schema="order")
    old = store.get("o:d").incarnation
    assert store.delete("o:d", 1, incarnation=old).ok
    store.cas("o:d", 0, Order(order_id="o"), schema="order")
    new = store.get("o:d").incarnation
    assert len(new) == 16 and new != old


def test_a_write_based_on_the_old_incarnation_is_context_replaced(store, pb):
    """The successor is at the same version as the snapshot: only the incarnation tells them
    apart. cas, delete and update refuse; update does not call fn again; nothing changes."""
    Order = order_cls(pb)
    store.cas("o:g", 0, Order(order_id="old"), schema="order")
    snap = store.get("o:g")
    other = ctxlink.connect(store.client, engine=store.engine)

    def replace() -> None:
        other.delete("o:g", 1)
        other.cas("o:g", 0, Order(order_id="new"), schema="order")

    replace()
    successor = store.client.get("o:g")
    with pytest.raises(ctxlink.ContextReplacedError) as info:
        store.cas("o:g", 1, Order(order_id="mine"), incarnation=snap.incarnation)
    assert isinstance(info.value, ctxlink.ConflictError) and info.value.key == "o:g"
    text = str(info.value)
    assert text.startswith("CTXGONE the context was deleted and re-created (incarnation ")
    assert f"this write was based on {snap.incarnation})" in text
    with pytest.raises(ctxlink.ContextReplacedError):
        store.delete("o:g", 1, incarnation=snap.incarnation)
    assert store.client.get("o:g") == successor

    # update: fn sees the old context; the context is replaced before its write lands
    calls = []

    def fn(o: Any) -> None:
        calls.append(o.order_id)
        if len(calls) == 1:
            replace()
        o.base_price += 1

    for reads in (None, []):
        calls.clear()
        before = store.client.get("o:g")
        with pytest.raises(ctxlink.ContextReplacedError):
            store.update("o:g", fn, message_class=Order, reads=reads)
        assert len(calls) == 1  # never retried on the successor
        after = store.client.get("o:g")
        assert after != before and decode(after).version == 1  # replace() ran, nothing else
        assert decode(after).payload == Order(order_id="new", version=1).SerializeToString()


def test_raw_inc_rules(backend, pb):
    """INC on the commands: checked only when the key exists and the base is >= 1; a create
    takes it as the new context's incarnation; a v2 value has none."""
    pb.register(backend)
    assert backend.cas("o:r", 0, pb.order(1), schema="order", write_id="c", inc=INC_A) == 1
    assert decode(backend.r.get("o:r")).inc_hex == INC_A
    assert backend.get("o:r")[5] == INC_A.encode()
    # the same incarnation, any case: accepted
    assert backend.cas("o:r", 1, pb.order(2), inc=INC_A.upper()) == 2
    before = backend.r.get("o:r")
    with pytest.raises(redis.ResponseError) as info:
        backend.cas("o:r", 2, pb.order(3), inc=INC_B)
    assert str(info.value).endswith(
        f"the context was deleted and re-created (incarnation {INC_A}, this write was based on "
        f"{INC_B})")
    with pytest.raises(redis.ResponseError, match="CTXGONE"):
        backend.patch("o:r", 2, f_varint(4, 1), [4], inc=INC_B)
    with pytest.raises(redis.ResponseError, match="CTXGONE"):
        backend.delete("o:r", 2, write_id="d", inc=INC_B)
    assert backend.r.get("o:r") == before
    # base 0 on a present key: a conflict (the reply carries the stored incarnation)
    reply = backend.cas("o:r", 0, pb.order(1), schema="order", write_id="x", inc=INC_B)
    assert reply[0] == 2 and reply[-1] == INC_A.encode()
    # absent key, base >= 1: the nil conflict, INC not checked
    assert backend.cas("o:none", 3, pb.order(4), inc=INC_B) is None
    # a v2 value has no incarnation: any INC is CTXGONE ("none")
    backend.r.set("o:v2", encode_v2(1, 5, [], b"order", b"", pb.order(1)))
    with pytest.raises(redis.ResponseError) as info:
        backend.cas("o:v2", 1, pb.order(2), inc=INC_A)
    assert "(incarnation none, this write was based on" in str(info.value)
    assert backend.get("o:v2")[5] == b""
    # its first write without INC upgrades it to v3 with a minted incarnation
    assert backend.cas("o:v2", 1, pb.order(2)) == 2
    v = decode(backend.r.get("o:v2"))
    assert v.format == 3 and len(v.incarnation) == 8 and v.incarnation != bytes(8)


def test_the_resend_of_a_write_to_a_replaced_context_is_refused(store, backend, pb):
    """The first send of an update lands (reply lost), the context is then deleted and
    re-created by another agent; the SDK's re-send carries the old incarnation: refused
    (CTXGONE before the replay check), never replayed from nor applied to the successor. The
    outcome of the first send cannot be told from the reply: OutcomeUnknownError."""
    Order = order_cls(pb)
    other = ctxlink.connect(store.client, engine=store.engine)
    store.cas("o:rs", 0, Order(order_id="old"), schema="order")
    successor: list[bytes] = []

    def replace(_: Any) -> None:
        snap = other.get("o:rs")
        assert snap.version == 2  # the first send landed
        other.delete("o:rs", 2)
        other.cas("o:rs", 0, Order(order_id="new"), schema="order")
        other.cas("o:rs", 1, Order(order_id="new", discount=1))  # the same version again
        successor.append(store.client.get("o:rs"))

    with FaultProxy(backend.server.port) as proxy:
        agent = ctxlink.connect(redis.Redis(port=proxy.port), engine=store.engine)
        proxy.arm(write_matcher(agent), times=1, hook=replace)
        with pytest.raises(ctxlink.OutcomeUnknownError) as info:
            agent.update("o:rs", lambda o: setattr(o, "base_price", 7), message_class=Order)
        assert isinstance(info.value.__cause__, ctxlink.ContextReplacedError)
        assert proxy.faults == 1
        agent.client.close()
    assert store.client.get("o:rs") == successor[0]
    assert store.get("o:rs").decode(Order).base_price == 0


def test_the_resend_of_a_create_that_finds_another_context_is_outcome_unknown(store, backend, pb):
    """A create lands (reply lost), is deleted and created again by another agent: the re-send
    gets a conflict whose incarnation is not the one the create minted. The window alone would
    call it a plain conflict (the write id is not in the successor's window, which reaches
    version 1); the incarnation says it may have landed."""
    Order = order_cls(pb)
    other = ctxlink.connect(store.client, engine=store.engine)

    def replace(_: Any) -> None:
        assert other.get("o:rc").version == 1  # the first send landed
        other.delete("o:rc", 1)
        other.cas("o:rc", 0, Order(order_id="theirs"), schema="order")

    with FaultProxy(backend.server.port) as proxy:
        agent = ctxlink.connect(redis.Redis(port=proxy.port), engine=store.engine)
        proxy.arm(write_matcher(agent), times=1, hook=replace)
        with pytest.raises(ctxlink.OutcomeUnknownError):
            agent.cas("o:rc", 0, Order(order_id="mine"), schema="order")
        agent.client.close()
    assert store.get("o:rc").decode(Order).order_id == "theirs"


# --------------------------------------------------------------------------- field clocks


@pytest.mark.parametrize("writers", [8, 16])
def test_writers_of_disjoint_fields_never_conflict(store, backend, engine, writers):
    """Each writer patches its own field (``update(reads=[])``); between one writer's read and
    its write any number of others land. Two runs; zero conflicts: every update's fn ran once."""
    per_writer = UPDATES // writers
    for run in range(2):
        key = f"w:{writers}:{run}"
        store.cas(key, 0, Wide(), schema="wide")
        conflicts = [0] * writers
        errors: list[BaseException] = []

        def work(i: int, key: str = key, conflicts: list[int] = conflicts,
                 errors: list[BaseException] = errors) -> None:
            s = ctxlink.connect(backend.server.client(), engine=engine)
            field = f"f{i + 2}"
            try:
                for _ in range(per_writer):
                    up = s.update(key, lambda m: setattr(m, field, getattr(m, field) + 1),
                                  message_class=Wide, reads=[])
                    conflicts[i] += up.attempts - 1
            except BaseException as exc:  # noqa: B036 - reported below
                errors.append(exc)
            finally:
                s.client.close()

        threads = [threading.Thread(target=work, args=(i,)) for i in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert conflicts == [0] * writers, conflicts
        final = store.get(key)
        assert final.version == 1 + per_writer * writers
        msg = final.decode(Wide)
        assert [getattr(msg, f"f{i + 2}") for i in range(writers)] == [per_writer] * writers


def test_a_patch_older_than_the_window_conflicts_only_on_changed_fields(backend, pb):
    pb.register(backend)
    backend.cas("o:c", 0, pb.order(1), schema="order")
    for v in range(2, 40):  # 38 patches of field 5: far past the 16-record window
        assert backend.patch("o:c", v - 1, f_varint(5, v), [5])[0] == v
    # based on version 1: fields 4 and 6 did not change since, field 5 did
    assert backend.patch("o:c", 1, f_varint(4, 7), [4], reads=[6])[0] == 40
    reply = backend.patch("o:c", 1, f_varint(6, 1), [6], reads=[5], write_id="k")
    assert reply[0] == 40 and reply[5:7] == [40 - 16 + 1, [5]]
    # a CTX.CAS moves the floor: everything counts as changed for an older base
    backend.cas("o:c", 40, pb.order(41))
    reply = backend.patch("o:c", 39, f_varint(6, 1), [6], write_id="k2")
    assert reply[0] == 41 and reply[6] == [6]
    v = decode(backend.r.get("o:c"))
    assert (v.floor, v.clocks) == (41, {})


# --------------------------------------------------------------------------- TTL and touch


def test_ttl_on_create_kept_by_updates_replaced_when_given(store, pb):
    Order = order_cls(pb)
    r = store.client
    assert store.cas("t:1", 0, Order(order_id="o"), schema="order", ttl=100).ok
    assert 90_000 < r.pttl("t:1") <= 100_000
    store.cas("t:1", 1, Order(order_id="o", base_price=1))
    store.update("t:1", lambda o: setattr(o, "discount", 1), message_class=Order)
    store.update("t:1", lambda o: setattr(o, "base_price", 2), message_class=Order, reads=[])
    assert 90_000 < r.pttl("t:1") <= 100_000  # kept by cas, update and patch
    store.update("t:1", lambda o: setattr(o, "discount", 2), message_class=Order, ttl=500)
    assert 490_000 < r.pttl("t:1") <= 500_000
    store.update("t:1", lambda o: setattr(o, "base_price", 3), message_class=Order, reads=[],
                 ttl=2.5)
    assert 0 < r.pttl("t:1") <= 2500
    assert store.cas("t:1", 6, Order(order_id="o"), ttl=1000).ok
    assert 990_000 < r.pttl("t:1") <= 1_000_000
    # a create without ttl has none; a conflict or replay changes nothing
    store.cas("t:2", 0, Order(order_id="o"), schema="order", write_id="t2")
    assert r.pttl("t:2") == -1
    assert store.cas("t:2", 0, Order(order_id="o"), schema="order", write_id="t2",
                     ttl=5).replayed
    assert not store.cas("t:2", 7, Order(order_id="o"), ttl=5).ok
    assert r.pttl("t:2") == -1
    # update(default=...) creates with the ttl
    store.update("t:3", lambda o: None, message_class=Order, schema="order",
                 default=lambda: Order(order_id="d"), ttl=60)
    assert 50_000 < r.pttl("t:3") <= 60_000


def test_touch(store, pb):
    Order = order_cls(pb)
    r = store.client
    store.cas("t:t", 0, Order(order_id="o"), schema="order")
    before = r.get("t:t")
    assert store.touch("t:t", 30) is True
    assert 25_000 < r.pttl("t:t") <= 30_000 and r.get("t:t") == before
    assert store.touch("t:t", 0.0004) is True  # rounds up to 1 ms
    assert store.touch("t:none", 10) is False
    r.set("t:plain", b"hello")
    with pytest.raises(ctxlink.WrongTypeError):
        store.touch("t:plain", 10)
    assert r.pttl("t:plain") == -1


@pytest.mark.parametrize("ttl", [0, -1, -0.5, float("nan"), float("inf"), True, False,
                                 10**13, 1e13])
def test_every_bad_ttl_is_refused_before_anything_is_sent(store, pb, ttl):
    Order = order_cls(pb)
    r = store.client
    store.cas("t:b", 0, Order(order_id="o"), schema="order")
    before = r.get("t:b")
    r.config_resetstat()
    calls = [
        lambda: store.cas("t:b", 1, Order(order_id="x"), ttl=ttl),
        lambda: store.cas("t:new", 0, Order(order_id="x"), schema="order", ttl=ttl),
        lambda: store.update("t:b", lambda o: None, message_class=Order, ttl=ttl),
        lambda: store.update("t:b", lambda o: None, message_class=Order, reads=[], ttl=ttl),
        lambda: store.touch("t:b", ttl),
    ]
    for call in calls:
        with pytest.raises(ctxlink.ArgumentError) as info:
            call()
        assert isinstance(info.value, ValueError) and "ttl" in str(info.value)
    sent = {k for k in r.info("commandstats")
            if not k.startswith(("cmdstat_config", "cmdstat_info"))}
    assert sent == set(), sent
    assert r.get("t:b") == before and r.pttl("t:b") == -1 and not r.exists("t:new")
    with pytest.raises(TypeError):
        store.touch("t:b", "10")  # type: ignore[arg-type]


def test_aio_touch_and_ttl(backend, engine, pb):
    import asyncio

    import ctxlink.aio

    Order = pb.Order

    async def main() -> None:
        s = await ctxlink.aio.connect(f"redis://127.0.0.1:{backend.server.port}", engine=engine)
        await s.register_schema("order", pb.fds("order"), message_type=ORDER_TYPE)
        assert (await s.cas("a:1", 0, Order(order_id="o"), schema="order", ttl=20)).ok
        up = await s.update("a:1", lambda o: setattr(o, "discount", 1), message_class=Order,
                            reads=[], ttl=40)
        assert up.version == 2
        assert await s.touch("a:1", 50) is True and await s.touch("a:none", 5) is False
        with pytest.raises(ctxlink.aio.ArgumentError):
            await s.touch("a:1", 0)
        await s.close()

    asyncio.run(main())
    assert 45_000 < backend.r.pttl("a:1") <= 50_000


# --------------------------------------------------------------------------- parity


def test_module_and_lua_store_the_same_bytes_under_the_same_incarnation(module_servers, pb):
    """The same writes (ids and incarnation given) on both engines: identical values but for
    updated_ms; replies identical but for updated_ms."""
    steps = [
        ("cas", ("p:1", 0, pb.order(1)), {"schema": "order", "write_id": "a", "inc": INC_A}),
        ("patch", ("p:1", 1, f_varint(4, 5), [4]), {"write_id": "b", "inc": INC_A}),
        ("patch", ("p:1", 2, f_varint(5, 5), [5]), {"reads": [4], "write_id": "c"}),
        ("patch", ("p:1", 1, f_varint(6, 1), [6]), {"reads": [9], "write_id": "d", "px": 90000}),
        ("patch", ("p:1", 1, f_varint(6, 2), [6]), {"reads": [4], "write_id": "e"}),
        ("cas", ("p:1", 4, pb.order(5)), {"write_id": "f", "inc": INC_A}),
        ("patch", ("p:1", 5, f_varint(7, 1), [7]), {"write_id": "g"}),
        ("patch", ("p:2", 0, f_varint(4, 1), [4]), {"schema": "order", "write_id": "h",
                                                      "inc": INC_B}),
        ("patch", ("p:2", 1, f_varint(4, 2), [4]), {"write_id": "i", "inc": INC_B}),
    ]
    values: dict[str, Any] = {}
    replies: dict[str, Any] = {}
    for engine in ("module", "lua"):
        b = make_backend(engine, start_engine_server(module_servers, engine))
        pb.register(b)
        got = []
        for method, args, kw in steps:
            try:
                reply = getattr(b, method)(*args, **kw)
            except redis.ResponseError as exc:
                reply = str(exc)
            if isinstance(reply, list) and len(reply) >= 6:
                reply = [reply[0], reply[1], reply[2], "<ms>", *reply[4:]]
            got.append(reply)
        replies[engine] = got
        values[engine] = {k: b.r.get(k) for k in ("p:1", "p:2")}
        assert 0 < b.r.pttl("p:1") <= 90000 and b.r.pttl("p:2") == -1
    assert replies["module"] == replies["lua"]
    for key in ("p:1", "p:2"):
        m, lu = values["module"][key], values["lua"][key]
        assert m[:12] == lu[:12] and m[20:] == lu[20:], key  # all but updated_ms
    v = decode(values["lua"]["p:1"])
    assert v.inc_hex == INC_A and v.floor == 5 and v.clock(7) == 6
    assert decode(values["lua"]["p:2"]).inc_hex == INC_B


# --------------------------------------------------------------------------- on a cluster

#: updates per run on the 3-primary cluster (the cluster costs more per update: a smaller run)
CLUSTER_UPDATES = int(os.environ.get("CTX_CLOCK_CLUSTER_UPDATES", "800"))


@pytest.fixture(scope="module", params=["module", "lua"])
def cluster_engine(request) -> Any:
    """(engine, nodes): test_cluster.py's 3 primaries + 1 replica, with the module or stock."""
    from test_cluster import _cluster

    gen = _cluster(module=request.param == "module")
    nodes = next(gen)
    yield request.param, nodes
    gen.close()


@pytest.mark.parametrize("writers", [8, 16])
def test_writers_of_disjoint_fields_never_conflict_on_a_cluster(cluster_engine, writers):
    from redis.cluster import RedisCluster

    engine, nodes = cluster_engine
    rc = RedisCluster(host="127.0.0.1", port=nodes[0].port)
    store = ctxlink.connect(rc, engine=engine)
    if "wide" not in store.schemas():
        store.register_schema("wide", wide_fds(), message_type=WIDE_TYPE)
    per_writer = CLUSTER_UPDATES // writers
    for run in range(2):
        key = f"cw:{writers}:{run}"
        store.cas(key, 0, Wide(), schema="wide")
        conflicts = [0] * writers
        errors: list[BaseException] = []

        def work(i: int, key: str = key, conflicts: list[int] = conflicts,
                 errors: list[BaseException] = errors) -> None:
            client = RedisCluster(host="127.0.0.1", port=nodes[0].port)
            s = ctxlink.connect(client, engine=engine)
            field = f"f{i + 2}"
            try:
                for _ in range(per_writer):
                    up = s.update(key, lambda m: setattr(m, field, getattr(m, field) + 1),
                                  message_class=Wide, reads=[])
                    conflicts[i] += up.attempts - 1
            except BaseException as exc:  # noqa: B036 - reported below
                errors.append(exc)
            finally:
                client.close()

        threads = [threading.Thread(target=work, args=(i,)) for i in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert conflicts == [0] * writers, conflicts
        final = store.get(key)
        assert final.version == 1 + per_writer * writers
    rc.close()


def test_touch_runs_under_maxmemory(store, pb):
    """CTX.TOUCH (write fast, not deny-oom) and touch.lua (allow-oom) set an expiry when the
    server is out of memory; a write that needs memory is refused."""
    Order = order_cls(pb)
    r = store.client
    store.cas("t:oom", 0, Order(order_id="o"), schema="order")
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", 1)
    try:
        assert store.touch("t:oom", 30) is True
        with pytest.raises(redis.ResponseError, match="maxmemory"):
            store.cas("t:oom", 1, Order(order_id="x"))
    finally:
        r.config_set("maxmemory", 0)
    assert 25_000 < r.pttl("t:oom") <= 30_000 and store.get("t:oom").version == 1


def test_incarnation_arguments(store, pb):
    """``incarnation=`` takes a Snapshot's: "" (a value an older release wrote) is none; a bad
    one is refused before anything is sent."""
    Order = order_cls(pb)
    r = store.client
    r.set("o:old", encode_v2(1, 5, [], b"order", b"", Order(version=1).SerializeToString()))
    snap = store.get("o:old")
    assert snap.incarnation == ""
    assert store.cas("o:old", 1, Order(order_id="x"), incarnation=snap.incarnation).ok
    new = store.get("o:old")
    assert len(new.incarnation) == 16  # the upgrade minted one
    r.config_resetstat()
    for bad in ("0" * 16, "xyz", "0123456789abcdeg", "0x23456789abcdef", " " * 16):
        with pytest.raises(ctxlink.ArgumentError):
            store.cas("o:old", 2, Order(order_id="y"), incarnation=bad)
        with pytest.raises(ctxlink.ArgumentError):
            store.delete("o:old", 2, incarnation=bad)
    with pytest.raises(TypeError):
        store.cas("o:old", 2, Order(order_id="y"), incarnation=b"0123456789abcdef")
    sent = {k for k in r.info("commandstats")
            if not k.startswith(("cmdstat_config", "cmdstat_info"))}
    assert sent == set(), sent
    assert store.get("o:old") == new
    assert store.delete("o:old", 2, incarnation=new.incarnation.upper()).ok
