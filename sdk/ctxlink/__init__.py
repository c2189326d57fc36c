"""ctxlink: versioned, schema-validated shared context for cooperating agents, on Redis.

    import redis, ctxlink
    store = ctxlink.connect(redis.Redis())          # module if loaded, else the Lua scripts
                                                    # (or a URL: ctxlink.connect("redis://..."))
    store.register_schema("order", Order)
    store.cas("order:1", 0, Order(order_id="o-1"), schema="order")
    version, order = store.update("order:1", lambda o: setattr(o, "discount", 5),
                                  message_class=Order)

``ctxlink.aio`` is the same API for ``redis.asyncio`` clients. A throwaway redis-server for
trying it out: ``from ctxlink.embedded import EmbeddedRedis`` (not imported by ``import ctxlink``).

The Lua engine reads its scripts from ``ctxlink/lua/*.lua`` inside an installed package, else from
``lua/`` at the root of the source checkout (``Path(ctxlink.__file__).parents[2] / "lua"``).
"""

from ctxlink._exceptions import (
    ArgumentError,
    ConflictError,
    ContextReplacedError,
    CtxError,
    CursorExpiredError,
    EngineError,
    FieldError,
    MessageTypeError,
    NotFoundError,
    OutcomeUnknownError,
    PayloadTooLarge,
    SchemaError,
    ServerError,
    ValidationError,
    VersionError,
    WrongTypeError,
)
from ctxlink._feed import ChangeBatch
from ctxlink._history import Change
from ctxlink._registry import SchemaInfo
from ctxlink._sync import Store, connect
from ctxlink._types import Backoff, CasResult, Snapshot, Updated

__all__ = [
    "connect",
    "Store",
    "Snapshot",
    "CasResult",
    "Updated",
    "Backoff",
    "SchemaInfo",
    "Change",
    "ChangeBatch",
    "CtxError",
    "CursorExpiredError",
    "ServerError",
    "ValidationError",
    "SchemaError",
    "VersionError",
    "PayloadTooLarge",
    "WrongTypeError",
    "FieldError",
    "ConflictError",
    "ContextReplacedError",
    "OutcomeUnknownError",
    "NotFoundError",
    "EngineError",
    "ArgumentError",
    "MessageTypeError",
    "__version__",
]


def _package_version() -> str:
    """The installed distribution's version: the one version number, set in pyproject.toml."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ctxlink")
    except PackageNotFoundError:  # sdk/ on sys.path without an install (pip install -e .)
        return "0+unknown"


__version__ = _package_version()
