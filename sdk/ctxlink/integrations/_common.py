"""What every framework adapter shares: its messages, its schemas, its Store.

- :func:`messages` builds the message classes of ``proto/ctxlink_<name>.proto`` from the
  descriptor set the build ships as ``ctxlink/integrations/<name>.pb`` (a private descriptor pool,
  as ``ctxlink._order_schema`` does).
- :func:`ensure_schemas` registers an adapter's schemas only when the registry lacks that exact
  definition: when it is there, one read per schema and no write. When the caller's ACL cannot
  write the registry, :class:`SetupRequiredError` says to run ``ctxlink schema push`` or the
  adapter's ``setup()`` once with an account that may.
- :func:`ensure_schemas_async`: the same for a :class:`ctxlink.aio.Store` (the asyncio adapters).
- :func:`open_store` turns the constructors' ``redis_url=`` / ``redis_client=`` / ``store=``
  into a ctxlink Store.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any, Optional, Sequence

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from ctxlink._exceptions import ContextReplacedError, CtxError, SchemaError
from ctxlink._registry import build_descriptor_set
from ctxlink._sync import Store, connect

__all__ = ["SchemaSpec", "SetupRequiredError", "messages", "ensure_schemas",
           "ensure_schemas_async", "open_store", "check_prefix", "upsert"]


class SetupRequiredError(CtxError):
    """The adapter's schemas are missing (or differ) and this client may not register them."""


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
    seen: Optional[BaseException] = exc
    while seen is not None:
        text = str(seen)
        if "NOPERM" in text or "no permissions" in text.lower():
            return True
        seen = seen.__cause__
    return False


def ensure_schemas(store: Store, specs: Sequence[SchemaSpec], adapter: str) -> int:
    """Registers each spec whose exact definition (message type, descriptor set, history, and
    window when the spec names one) the registry lacks; returns how many it registered (0:
    nothing was written)."""
    wrote = 0
    for spec in specs:
        want = build_descriptor_set(spec.message_class.DESCRIPTOR)
        try:
            info = store.get_schema(spec.name)
        except Exception as exc:
            if _is_noperm(exc):
                raise SetupRequiredError(
                    f"this client's ACL may not read the schema registry ({exc}): have an "
                    f"administrator run `ctxlink schema push` or {adapter}.setup() once, then "
                    f"build the {adapter} with register=False"
                ) from exc
            raise
        if (info is not None and info.message_type == spec.message_class.DESCRIPTOR.full_name
                and info.descriptor_set == want and info.history == spec.history
                and (spec.window is None or info.window == spec.window)):
            continue
        try:
            store.register_schema(spec.name, spec.message_class,
                                  version_field=spec.version_field,
                                  history=spec.history or None, window=spec.window)
        except Exception as exc:
            if _is_noperm(exc):
                raise SetupRequiredError(
                    f"schema {spec.name!r} ({adapter}) is not registered and this client's ACL "
                    "may not write the schema registry: have an administrator run "
                    f"`ctxlink schema push` for it or call {adapter}.setup() once with an account "
                    f"that may ({exc})"
                ) from exc
            raise
        wrote += 1
    return wrote


async def ensure_schemas_async(store: Any, specs: Sequence[SchemaSpec], adapter: str) -> int:
    """:func:`ensure_schemas` on a :class:`ctxlink.aio.Store`. A registration that races another
    process registering the same definition reads the registry again (up to three times)."""
    wrote = 0
    for spec in specs:
        want = build_descriptor_set(spec.message_class.DESCRIPTOR)
        for attempt in range(3):
            try:
                info = await store.get_schema(spec.name)
            except Exception as exc:
                if _is_noperm(exc):
                    raise SetupRequiredError(
                        f"this client's ACL may not read the schema registry ({exc}): have an "
                        f"administrator run `ctxlink schema push` or {adapter}.setup() once, "
                        f"then build the {adapter} with register=False"
                    ) from exc
                raise
            if (info is not None
                    and info.message_type == spec.message_class.DESCRIPTOR.full_name
                    and info.descriptor_set == want and info.history == spec.history):
                break
            try:
                await store.register_schema(spec.name, spec.message_class,
                                            version_field=spec.version_field,
                                            history=spec.history or None)
            except SchemaError:
                if attempt == 2:
                    raise
                continue  # another process registered it meanwhile: compare again
            except Exception as exc:
                if _is_noperm(exc):
                    raise SetupRequiredError(
                        f"schema {spec.name!r} ({adapter}) is not registered and this client's "
                        "ACL may not write the schema registry: have an administrator run "
                        f"`ctxlink schema push` for it or call {adapter}.setup() once with an "
                        f"account that may ({exc})"
                    ) from exc
                raise
            wrote += 1
            break
    return wrote


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


def upsert(store: Store, key: str, fn: Any, **kwargs: Any) -> Any:
    """``store.update(key, fn, **kwargs)``, called again when the context was deleted and
    created again meanwhile (:class:`ContextReplacedError`): an adapter's read-modify-write
    whose ``fn`` decides from the state it is given (never from an older read) may simply run
    on the new context."""
    while True:
        try:
            return store.update(key, fn, **kwargs)
        except ContextReplacedError:
            continue
