"""The reference scenario, run three times: last-write-wins HGET/HSET, then ctxlink (whole
contexts), then ctxlink with declared read sets.

Three agents share one order context each:

- the **Router** creates the order (``base_price``), then adds a shipping surcharge to it;
- the **Fulfillment Checker** reserves inventory (``inventory_reserved = True``);
- the **Pricing Agent** applies the order's coupon (``discount``) and computes ``final_price``.

After the Router has created an order, the three agents work on it at the same moment (a barrier
per order), each in its own thread: read, think for a random moment, write. ``--lanes`` groups of
three threads run side by side on different orders. Every agent keeps ``final_price = base_price -
discount`` true for the state it read.

The naive run stores the encoded order with ``HSET key raw <bytes>`` and reads it with ``HGET``:
the last writer wins. The second run uses ``Store.update`` on the whole context (CAS on the
version, retry from the state the conflict reply carries). The third run declares, per agent, the
fields its decision depends on (``update(..., reads=[...])``): each agent writes only the fields
it owns, the server merges them, and only a change to a field an agent read or writes is a
conflict. There the agents leave the bookkeeping fields alone (``last_updated_*``: the context's
``updated_by``/``updated_ms`` say the same) and ``status`` (derived from the other fields), so the
Fulfillment Checker, which reads nothing, never conflicts. At the end every order is read back and
checked:

- **lost updates**: agent effects missing from the stored order (not reserved, wrong discount,
  surcharge missing); the intended effects are known, so this is counted, not estimated;
- **stale writes**: writes made on a state that another write had already replaced, i.e. the
  number of writes performed minus the version the order ends at (each write stores the version
  it read + 1);
- **inconsistent prices**: stored ``final_price != base_price - discount``.

Latencies are per command round trip as the client sees it (from sending the command to
reading its reply on the connection): the read command (``HGET`` / ``CTX.GET`` / the Lua get
script) and the write command (``HSET`` / ``CTX.CAS`` / ``CTX.PATCH`` / the Lua cas script).

    ctxlink demo [--engine module|lua] [--orders N] [--module PATH]
"""

from __future__ import annotations

import functools
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import redis

import ctxlink
from ctxlink._order_schema import Order, OrderStatus
from ctxlink._send import _get_args
from ctxlink.embedded import EmbeddedRedis, find_module, missing_module_text

__all__ = ["run_demo", "RunResult"]

NEW = OrderStatus["ORDER_STATUS_NEW"]
RESERVED = OrderStatus["ORDER_STATUS_RESERVED"]
PRICED = OrderStatus["ORDER_STATUS_PRICED"]
READY = OrderStatus["ORDER_STATUS_READY"]

SHIPPING = 499  # the Router's surcharge, in cents
AGENTS = ("fulfillment", "pricing", "router")
WRITES_PER_ORDER = 4  # create + three concurrent agent writes


# ---------------------------------------------------------------------------------------------
# measuring


class TimedRedis(redis.Redis):
    """A redis-py client that records the round-trip time of every read and write command.

    Timed on the connection (from sending a command to reading its reply), so the SDK's writes,
    which go out on a pooled connection without ``execute_command`` (ctxlink._send), are timed
    like everything else."""

    def __init__(self, **kwargs: Any) -> None:
        owner = self

        class TimedConnection(redis.Connection):
            _ctx_sent: Optional[tuple[tuple[Any, ...], float]] = None

            def send_command(self, *cargs: Any, **ckwargs: Any) -> None:
                self._ctx_sent = (cargs, time.perf_counter())
                # redis-py leaves send_command unannotated
                super().send_command(*cargs, **ckwargs)  # type: ignore[no-untyped-call]

            def read_response(self, *rargs: Any, **rkwargs: Any) -> Any:
                try:
                    return super().read_response(*rargs, **rkwargs)
                finally:
                    sent = getattr(self, "_ctx_sent", None)
                    if sent is not None:
                        self._ctx_sent = None
                        owner._record(sent[0], time.perf_counter() - sent[1])

        pool = redis.ConnectionPool(connection_class=TimedConnection, **kwargs)
        super().__init__(connection_pool=pool)
        self.reads: list[float] = []
        self.writes: list[float] = []
        self.read_shas: set[str] = set()
        self.write_shas: set[str] = set()

    def _record(self, args: tuple[Any, ...], dt: float) -> None:
        if not args:
            return
        name = args[0]
        if name in ("HGET", "CTX.GET", "EVALSHA_RO") or (
                name == "EVALSHA" and args[1] in self.read_shas):
            self.reads.append(dt)  # list.append is atomic: no lock needed between threads
        elif name in ("HSET", "CTX.CAS", "CTX.PATCH", "EVALSHA"):  # EVALSHA: get or a cas
            self.writes.append(dt)


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, int(round(p / 100.0 * (len(ordered) - 1)))))
    return ordered[k]


@dataclass
class RunResult:
    label: str
    orders: int
    writes_done: int = 0  # successful writes (create + agent steps)
    write_attempts: int = 0  # write commands sent (conflicts included)
    conflicts: Optional[int] = None  # None: the method cannot see them
    conflicts_by: Optional[dict[str, int]] = None  # per agent
    gave_up: int = 0
    lost: dict[str, int] = field(default_factory=lambda: {a: 0 for a in AGENTS})
    orders_with_loss: int = 0
    stale_writes: int = 0
    inconsistent: int = 0
    doubled: int = 0  # the router's surcharge applied more than once
    reads: list[float] = field(default_factory=list)
    writes: list[float] = field(default_factory=list)
    wall: float = 0.0

    @property
    def lost_total(self) -> int:
        return sum(self.lost.values())


# ---------------------------------------------------------------------------------------------
# the scenario


def coupon(i: int) -> int:
    """The discount the Pricing Agent must apply to order i (independent of the price)."""
    return 100 * (1 + i % 7)


def base_price(i: int) -> int:
    return 5_000 + 37 * (i % 1000)


def new_order(i: int) -> Any:
    order = Order(
        order_id=f"o-{i}",
        version=1,
        status=NEW,
        base_price=base_price(i),
        last_updated_by="router",
        last_updated_epoch=int(time.time() * 1000),
    )
    order.items.add(sku=f"SKU-{i % 97}", quantity=1 + i % 3)
    return order


def reserve(o: Any) -> None:
    o.inventory_reserved = True
    o.status = READY if o.status in (PRICED, READY) else RESERVED
    o.last_updated_by = "fulfillment"
    o.last_updated_epoch = int(time.time() * 1000)


def price(o: Any, i: int) -> None:
    o.discount = coupon(i)
    o.final_price = o.base_price - o.discount
    o.status = READY if o.status in (RESERVED, READY) else PRICED
    o.last_updated_by = "pricing"
    o.last_updated_epoch = int(time.time() * 1000)


def surcharge(o: Any) -> None:
    o.base_price += SHIPPING
    if o.discount or o.status in (PRICED, READY):
        o.final_price = o.base_price - o.discount
    o.last_updated_by = "router"
    o.last_updated_epoch = int(time.time() * 1000)


class Method:
    """How agents read and write an order: naive HGET/HSET or ctxlink."""

    label = ""

    def create(self, i: int) -> None:
        raise NotImplementedError

    def step(
        self, i: int, agent: str, change: Callable[[Any], None], think: Callable[[], None]
    ) -> None:
        raise NotImplementedError

    def final(self, i: int) -> Any:
        raise NotImplementedError


class Naive(Method):
    """Plain HGET/HSET of the encoded order: no version check, the last write wins."""

    def __init__(self, client: TimedRedis) -> None:
        self.r = client
        self.label = "naive HGET/HSET"

    @staticmethod
    def key(i: int) -> str:
        return f"naive:order:{i}"

    def create(self, i: int) -> None:
        self.r.hset(self.key(i), "raw", new_order(i).SerializeToString())

    def step(
        self, i: int, agent: str, change: Callable[[Any], None], think: Callable[[], None]
    ) -> None:
        order = Order.FromString(self.r.hget(self.key(i), "raw"))
        think()
        change(order)
        order.version += 1
        self.r.hset(self.key(i), "raw", order.SerializeToString())

    def final(self, i: int) -> Any:
        return Order.FromString(self.r.hget(self.key(i), "raw"))


def reserve_own(o: Any) -> None:
    o.inventory_reserved = True


def price_own(o: Any, i: int) -> None:
    o.discount = coupon(i)
    o.final_price = o.base_price - o.discount


def surcharge_own(o: Any) -> None:
    o.base_price += SHIPPING
    if o.discount:
        o.final_price = o.base_price - o.discount


#: The declared-reads run: what each agent writes, and the fields its decision depends on.
OWN_CHANGES: dict[str, Callable[[Any, int], None]] = {
    "fulfillment": lambda o, i: reserve_own(o),
    "pricing": price_own,
    "router": lambda o, i: surcharge_own(o),
}
READS: dict[str, list[str]] = {
    "fulfillment": [],
    "pricing": ["base_price"],
    "router": ["discount"],
}


class WithCtxlink(Method):
    """Store.update: read, change, write with the version; on a conflict, redo from the new state.

    ``declared``: each agent writes only its own fields with its read set (CTX.PATCH)."""

    def __init__(self, store: ctxlink.Store, declared: bool = False) -> None:
        self.store = store
        self.declared = declared
        self.label = f"ctxlink ({store.engine}{', reads' if declared else ''})"
        self.lock = threading.Lock()
        self.attempts = 0
        self.gave_up = 0
        self.gave_up_on: dict[int, int] = {}
        self.conflicts_by: dict[str, int] = {a: 0 for a in AGENTS}

    def key(self, i: int) -> str:
        return f"{'declared:' if self.declared else ''}order:{i}"

    def create(self, i: int) -> None:
        result = self.store.cas(self.key(i), 0, new_order(i), schema="order", by="router")
        if not result.ok:
            raise RuntimeError(f"order {i} already exists")
        with self.lock:
            self.attempts += 1

    def step(
        self, i: int, agent: str, change: Callable[[Any], None], think: Callable[[], None]
    ) -> None:
        reads: Optional[list[str]] = None
        if self.declared:
            own = OWN_CHANGES[agent]
            change, reads = (lambda o: own(o, i)), READS[agent]

        def fn(order: Any) -> None:
            think()
            change(order)

        try:
            done = self.store.update(self.key(i), fn, message_class=Order, by=agent, reads=reads)
            n = done.attempts
        except ctxlink.ConflictError as exc:
            n = getattr(exc, "attempts", 1)
            with self.lock:
                self.gave_up += 1
                self.gave_up_on[i] = self.gave_up_on.get(i, 0) + 1
        with self.lock:
            self.attempts += n
            self.conflicts_by[agent] += n - 1

    def final(self, i: int) -> Any:
        snap = self.store.get(self.key(i))
        assert snap is not None, f"order {i} was never created"
        return snap.decode(Order)


def run_scenario(method: Method, client: TimedRedis, orders: int, lanes: int,
                 think_ms: float, seed: int) -> RunResult:
    lanes = max(1, min(lanes, orders))
    errors: list[BaseException] = []
    barriers = [threading.Barrier(3) for _ in range(lanes)]

    def lane_orders(lane: int) -> range:
        return range(lane, orders, lanes)

    def worker(lane: int, agent: str) -> None:
        rng = random.Random(seed * 1000 + lane * 10 + AGENTS.index(agent))

        def think() -> None:
            time.sleep(rng.uniform(0, think_ms / 1000.0))

        barrier = barriers[lane]
        try:
            for i in lane_orders(lane):
                if agent == "router":
                    method.create(i)
                barrier.wait(timeout=60)  # the three agents start on order i together
                if agent == "fulfillment":
                    method.step(i, agent, reserve, think)
                elif agent == "pricing":
                    method.step(i, agent, functools.partial(price, i=i), think)
                else:
                    method.step(i, agent, surcharge, think)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)
            barrier.abort()

    # one connection per thread, opened before the clock starts (connecting is not a read)
    pool = client.connection_pool
    conns = [pool.get_connection(*_get_args(pool)) for _ in range(3 * lanes)]  # redis-py 5: a name
    for conn in conns:
        pool.release(conn)
    del client.reads[:], client.writes[:]
    threads = [
        threading.Thread(target=worker, args=(lane, agent), name=f"{agent}-{lane}", daemon=True)
        for lane in range(lanes)
        for agent in AGENTS
    ]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{method.label}: an agent failed: {errors[0]!r}") from errors[0]

    res = RunResult(method.label, orders, wall=wall)
    res.reads, res.writes = list(client.reads), list(client.writes)
    res.writes_done = WRITES_PER_ORDER * orders
    if isinstance(method, WithCtxlink):
        res.write_attempts = method.attempts
        res.gave_up = method.gave_up
        res.writes_done -= method.gave_up
        res.conflicts = method.attempts - res.writes_done  # every failed attempt conflicted
        res.conflicts_by = dict(method.conflicts_by)
    else:
        res.write_attempts = res.writes_done
    gave_up_on = method.gave_up_on if isinstance(method, WithCtxlink) else {}
    for i in range(orders):
        o = method.final(i)
        missing = {
            "fulfillment": not o.inventory_reserved,
            "pricing": o.discount != coupon(i),
            "router": o.base_price != base_price(i) + SHIPPING,
        }
        for agent, lost in missing.items():
            res.lost[agent] += lost
        res.orders_with_loss += any(missing.values())
        res.stale_writes += WRITES_PER_ORDER - gave_up_on.get(i, 0) - o.version
        res.inconsistent += o.final_price != o.base_price - o.discount
        res.doubled += o.base_price - base_price(i) > SHIPPING
    return res


# ---------------------------------------------------------------------------------------------
# report


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


def _pct(n: int, d: int) -> str:
    if not d:
        return str(n)
    share = 100.0 * n / d
    if n < d:
        share = min(share, 99.9)  # 1999 of 2000 is not 100.0%
    return f"{n} ({share:.1f}%)"


def format_table(results: Sequence[RunResult]) -> str:
    rows: list[tuple[str, list[str]]] = [
        ("orders", [str(r.orders) for r in results]),
        ("agent writes (incl. create)", [str(r.writes_done) for r in results]),
        ("lost updates (effects missing)",
         [_pct(r.lost_total, 3 * r.orders) for r in results]),
        ("  fulfillment / pricing / router",
         [" / ".join(str(r.lost[a]) for a in AGENTS) for r in results]),
        ("orders with a lost update", [_pct(r.orders_with_loss, r.orders) for r in results]),
        ("stale writes (on outdated read)", [_pct(r.stale_writes, r.writes_done) for r in results]),
        ("final_price != base - discount", [str(r.inconsistent) for r in results]),
        ("surcharge applied twice", [str(r.doubled) for r in results]),
        ("conflicts retried (rate)",
         ["not detected" if r.conflicts is None else _pct(r.conflicts, r.write_attempts)
          for r in results]),
        ("  by fulfillment / pricing / router",
         ["-" if r.conflicts_by is None else " / ".join(str(r.conflicts_by[a]) for a in AGENTS)
          for r in results]),
        ("updates given up", ["-" if r.conflicts is None else str(r.gave_up) for r in results]),
        ("p50 read latency", [_ms(percentile(r.reads, 50)) for r in results]),
        ("p99 write latency", [_ms(percentile(r.writes, 99)) for r in results]),
        ("reads / writes timed", [f"{len(r.reads)} / {len(r.writes)}" for r in results]),
        ("wall time", [f"{r.wall:.2f} s" for r in results]),
    ]
    w0 = max(len(name) for name, _ in rows)
    widths = [max(len(r.label), *(len(v[k]) for _, v in rows)) for k, r in enumerate(results)]
    def row(first: str, cells: list[str]) -> str:
        return "  ".join([first] + [c.rjust(w) for c, w in zip(cells, widths, strict=True)])

    lines = [row(" " * w0, [r.label for r in results])]
    lines.append("  ".join(["-" * w0] + ["-" * w for w in widths]))
    for name, values in rows:
        lines.append(row(name.ljust(w0), values))
    return "\n".join(lines)


def _url_kwargs(url: str) -> dict[str, Any]:
    """host, port, db, username, password of a ``redis://`` URL."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise ValueError(f"the demo runs on a redis:// URL, not {url!r}")
    path = parts.path.strip("/")
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 6379,
        "db": int(path) if path else 0,
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password is not None else None,
    }


def run_demo(
    engine: str = "module",
    orders: int = 2000,
    module: Optional[str] = None,
    lanes: int = 4,
    think_ms: float = 1.0,
    seed: int = 1,
    out: Callable[[str], None] = print,
    url: Optional[str] = None,
) -> int:
    """Runs both methods on one throwaway redis-server, or on the server at ``url`` (a
    ``redis://`` URL; its data stays there: the keys ``order:<n>``, ``declared:order:<n>`` and
    ``naive:order:<n>`` must not exist yet); returns 0 when ctxlink lost nothing."""
    if engine not in ("module", "lua", "auto"):
        raise ValueError("engine must be 'module', 'lua' or 'auto'")
    if url is not None:
        client = TimedRedis(**_url_kwargs(url))
        where = f"{client.info('server').get('redis_version', '?')} at {url.split('@')[-1]}"
        return _run_all(client, engine, orders, lanes, think_ms, seed, out, where)
    module_path: Optional[Path] = None
    if engine in ("module", "auto"):
        engine = "module"
        module_path = Path(module) if module else find_module()
        if not module_path.exists():
            out(f"ctxlink demo: {missing_module_text(module_path)}; or use --engine lua")
            return 2
    with EmbeddedRedis(module=module_path) as server:
        client = TimedRedis(host="127.0.0.1", port=server.port)
        version = client.info("server").get("redis_version", "?")
        where = f"with {module_path}" if module_path else "stock, no module"
        return _run_all(client, engine, orders, lanes, think_ms, seed, out,
                        f"{version} on 127.0.0.1:{server.port} ({where})")


def _run_all(client: TimedRedis, engine: str, orders: int, lanes: int, think_ms: float,
             seed: int, out: Callable[[str], None], where: str) -> int:
    with client:
        out(f"redis-server {where}")
        out(f"{orders} orders; {lanes} lanes x 3 agents (router, fulfillment, pricing) = "
            f"{3 * min(lanes, orders)} threads; each agent: read, think 0-{think_ms:g} ms, write\n")

        store = ctxlink.connect(client, engine=engine)  # type: ignore[arg-type]
        store.register_schema("order", Order)
        if store.engine == "lua":
            scripts = store._st.scripts
            client.read_shas = {scripts["get"].sha}

        results = []
        for method in (Naive(client), WithCtxlink(store), WithCtxlink(store, declared=True)):
            out(f"running {method.label} ...")
            results.append(run_scenario(method, client, orders, lanes, think_ms, seed))

    out("")
    out(format_table(results))
    naive, ours, declared = results
    out("")
    out(f"naive: {naive.lost_total} agent updates lost on {naive.orders_with_loss} of "
        f"{naive.orders} orders, silently. ctxlink: {ours.lost_total} lost, "
        f"{ours.conflicts} conflicts detected and retried from the state in the conflict reply; "
        f"with declared reads: {declared.lost_total} lost, {declared.conflicts} conflicts, "
        f"all between agents whose fields overlap.")
    clean = all(r.lost_total == 0 and r.inconsistent == 0 and r.doubled == 0
                for r in (ours, declared))
    return 0 if clean else 1
