"""What every framework adapter shares: its messages, its schemas, its Store.

- :func:`messages` builds the message classes of ``proto/ctxlink_<name>.proto`` from the
  descriptor set the build ships as ``ctxlink/integrations/<name>.pb`` (a private descriptor pool,
  as ``ctxlink._order_schema`` does).
- One rule for every adapter's schemas (each adapter lists them as :class:`SchemaSpec`):
  :func:`has_schema` decides whether the registry already holds a spec's exact definition
  (message type, descriptor set, history, and window when the spec names one);
  :func:`ensure_schemas` (sync) and :func:`ensure_schemas_async` (asyncio) register only the
  specs it does not hold: when all are there, one read per schema and no write. Identical
  registrations racing from several processes all succeed (both engines), so neither retries.
- The ACL: a registration the client's ACL refuses raises :class:`SetupRequiredError` saying to
  run ``ctxlink schema push`` or the adapter's ``setup()`` once with an account that may. A
  registry the ACL may not even *read* (a module-engine agent without rights on ``__ctx:*``, as
  docs/PROTOCOL.md's line for Redis 6.2, or denied ``CTX.SCHEMA.GET``) is trusted to hold the
  schemas, as an administrator's ``setup()`` left them: nothing is registered, the adapter
  works, and when the schema is in fact missing the first write raises
  :class:`SetupRequiredError` naming ``setup()`` and ``ctxlink schema push`` (every adapter
  maps its writes' errors through :func:`raise_setup_error` / :func:`setup_guard`).
- A write the server refuses for an unknown schema while the adapter registers its schemas is
  sent again for about 1.5 s (:func:`schema_waits`, :func:`next_schema_wait`): another
  client's registration may still be on its way (on a cluster it reaches the primaries one
  after the other, so this client may have seen it on one and skipped registering). The refused
  write was not applied, so sending it again is safe.
- :func:`open_store` turns the constructors' ``redis_url=`` / ``redis_client=`` / ``store=``
  into a ctxlink Store.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, Iterator, NoReturn, Optional, Sequence

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from ctxlink._exceptions import ContextReplacedError, SchemaError
from ctxlink._registry import SchemaInfo, build_descriptor_set
from ctxlink._sync import Store, connect

__all__ = ["SchemaSpec", "SetupRequiredError", "messages", "has_schema", "ensure_schemas",
           "ensure_schemas_async", "raise_setup_error", "setup_guard", "schema_waits",
           "next_schema_wait",
           "open_store", "check_prefix", "upsert"]


class SetupRequiredError(SchemaError):
    """The adapter's schemas are missing (or differ) and this client may not register them:
    an administrator runs ``ctxlink schema push`` or the adapter's ``setup()`` once. A
    :class:`ctxlink.SchemaError`."""


@dataclass(frozen=True)
class SchemaSpec:
    """One schema an adapter needs: registry name, message class, settings."""

    name: str
    message_class: Any
    version_field: str = "version"
    history: int = 0
    #: write records each context keeps (None: the schema's, 16 for a new name); raise it for
    #: contexts many processes append to, so a re-send after a lost reply is still settled
    window: Optional[int] = None


_classes: dict[str, dict[str, Any]] = {}


def messages(name: str, package: str) -> dict[str, Any]:
    """The message classes of ``proto/ctxlink_<name>.proto`` (package ``package``), by short
    name. ImportError naming the build step when the descriptor set is missing."""
    got = _classes.get(name)
    if got is not None:
        return got
    data = resources.files("ctxlink.integrations").joinpath(f"{name}.pb")
    try:
        raw = data.read_bytes()
    except FileNotFoundError:
        raise ImportError(
            f"ctxlink/integrations/{name}.pb is missing: it is generated from "
            f"proto/ctxlink_{name}.proto at build time; in a source checkout run `make ext` "
            "(or `python build/gen_order.py`)"
        ) from None
    fds = descriptor_pb2.FileDescriptorSet.FromString(raw)
    pool = descriptor_pool.DescriptorPool()
    for f in fds.file:
        pool.Add(f)
    out: dict[str, Any] = {}
    for f in fds.file:
        if f.package != package:
            continue
        for m in f.message_type:
            desc = pool.FindMessageTypeByName(f"{package}.{m.name}")
            out[m.name] = message_factory.GetMessageClass(desc)
    _classes[name] = out
    return out


def _is_noperm(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) is the server's ACL refusal."""
    seen: Optional[BaseException] = exc
    while seen is not None:
        text = str(seen)
        if "NOPERM" in text or "no permissions" in text.lower():
            return True
        seen = seen.__cause__
    return False


def _setup_hint(adapter: str) -> str:
    return (f"have an administrator run `ctxlink schema push` or {adapter}.setup() once with an "
            "account that may write the schema registry")


def has_schema(info: Optional[SchemaInfo], spec: SchemaSpec) -> bool:
    """True when the registry entry ``info`` (None: absent) is exactly ``spec``'s definition:
    message type, descriptor set, history, and window when the spec names one."""
    return (info is not None
            and info.message_type == spec.message_class.DESCRIPTOR.full_name
            and info.descriptor_set == build_descriptor_set(spec.message_class.DESCRIPTOR)
            and info.history == spec.history
            and (spec.window is None or info.window == spec.window))


def _read_refused(exc: Exception) -> bool:
    """After a registry read raised ``exc``: True when the ACL refused it (the caller then
    trusts an administrator's setup() and registers nothing), else False (re-raise)."""
    return _is_noperm(exc)


def _raise_refused(exc: Exception, spec: SchemaSpec, adapter: str) -> NoReturn:
    """Raises for a registration that raised ``exc``: SetupRequiredError when the ACL refused
    it, else ``exc`` itself."""
    if _is_noperm(exc):
        raise SetupRequiredError(
            f"schema {spec.name!r} ({adapter}) is missing or differs and this client's ACL may "
            f"not write the schema registry ({exc}): {_setup_hint(adapter)}") from exc
    raise exc


def _register_kwargs(spec: SchemaSpec) -> dict[str, Any]:
    return {"version_field": spec.version_field, "history": spec.history or None,
            "window": spec.window}


def ensure_schemas(store: Store, specs: Sequence[SchemaSpec], adapter: str) -> int:
    """Registers each spec the registry lacks exactly (:func:`has_schema`); returns how many
    it registered (0: nothing was written). A registry this client's ACL may not read is
    trusted to hold them (an administrator's setup()): nothing is registered and a write that
    then meets a missing schema raises :class:`SetupRequiredError` (:func:`setup_guard`). A
    registration the ACL refuses: :class:`SetupRequiredError` naming setup() and
    ``ctxlink schema push``."""
    wrote = 0
    for spec in specs:
        try:
            info = store.get_schema(spec.name)
        except Exception as exc:
            if _read_refused(exc):
                continue
            raise
        if has_schema(info, spec):
            continue
        try:
            store.register_schema(spec.name, spec.message_class, **_register_kwargs(spec))
        except Exception as exc:
            _raise_refused(exc, spec, adapter)
        wrote += 1
    return wrote


async def ensure_schemas_async(store: Any, specs: Sequence[SchemaSpec], adapter: str) -> int:
    """:func:`ensure_schemas` on a :class:`ctxlink.aio.Store`, with the same guarantees."""
    wrote = 0
    for spec in specs:
        try:
            info = await store.get_schema(spec.name)
        except Exception as exc:
            if _read_refused(exc):
                continue
            raise
        if has_schema(info, spec):
            continue
        try:
            await store.register_schema(spec.name, spec.message_class, **_register_kwargs(spec))
        except Exception as exc:
            _raise_refused(exc, spec, adapter)
        wrote += 1
    return wrote


def raise_setup_error(exc: Exception, adapter: str) -> NoReturn:
    """Raises for ``exc``, raised by one of an adapter's writes: the server's "unknown schema"
    becomes :class:`SetupRequiredError` naming ``{adapter}.setup()`` and ``ctxlink schema
    push``; any other exception is raised as it is."""
    if (isinstance(exc, SchemaError) and not isinstance(exc, SetupRequiredError)
            and "unknown schema" in str(exc)):
        raise SetupRequiredError(
            f"the server does not know a schema {adapter} writes ({exc}): "
            f"{_setup_hint(adapter)}") from exc
    raise exc


#: the pauses between the sends of a write the server refused for an unknown schema (1.55 s)
_SCHEMA_WAITS = (0.05, 0.1, 0.2, 0.4, 0.8)


def schema_waits(registers: bool) -> Iterator[float]:
    """The pauses of one write (:func:`next_schema_wait`): none when the adapter does not
    register its schemas (an administrator's ``setup()`` did: an unknown schema is an error at
    once)."""
    return iter(_SCHEMA_WAITS if registers else ())


def next_schema_wait(exc: SchemaError, adapter: str, waits: Iterator[float]) -> float:
    """After one of an adapter's writes raised ``exc``: the pause before it is sent again
    (an unknown schema, while ``waits`` lasts), else :func:`raise_setup_error`."""
    pause = next(waits, None) if "unknown schema" in str(exc) else None
    if pause is None:
        raise_setup_error(exc, adapter)
    return pause


@contextmanager
def setup_guard(adapter: str) -> Iterator[None]:
    """Around an adapter's writes (sync or asyncio code alike): :func:`raise_setup_error`."""
    try:
        yield
    except SchemaError as exc:
        raise_setup_error(exc, adapter)


def check_prefix(prefix: str) -> str:
    """A key prefix: a non-empty str without whitespace."""
    if not isinstance(prefix, str) or not prefix or any(c.isspace() for c in prefix):
        raise ValueError(f"key prefix must be a non-empty str without whitespace, got {prefix!r}")
    return prefix


def open_store(
    redis_url: Optional[str], redis_client: Any, store: Optional[Store]
) -> tuple[Store, bool]:
    """A Store from exactly one of the three; True when the caller owns it (built from a URL)."""
    given = [x is not None for x in (redis_url, redis_client, store)]
    if sum(given) != 1:
        raise ValueError("pass exactly one of redis_url=, redis_client= or store=")
    if store is not None:
        return store, False
    if redis_client is not None:
        return connect(redis_client), False
    assert redis_url is not None
    return connect(redis_url), True


def upsert(store: Store, key: str, fn: Any, *, adapter: str, registers: bool = True,
           **kwargs: Any) -> Any:
    """``store.update(key, fn, **kwargs)``, called again when the context was deleted and
    created again meanwhile (:class:`ContextReplacedError`): an adapter's read-modify-write
    whose ``fn`` decides from the state it is given (never from an older read) may simply run
    on the new context. A missing schema: sent again for about 1.5 s when the adapter
    ``registers`` its schemas (:func:`next_schema_wait`), then :class:`SetupRequiredError`."""
    waits = schema_waits(registers)
    while True:
        try:
            return store.update(key, fn, **kwargs)
        except ContextReplacedError:
            continue
        except SchemaError as exc:
            time.sleep(next_schema_wait(exc, adapter, waits))
