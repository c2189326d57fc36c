"""Exceptions raised by the ctxlink SDK.

Every ctxlink error derives from one root, so ``except CtxError`` catches them all (only
arguments of the wrong Python type raise a plain ``TypeError``, see below). Errors the server
replies with keep the server's message (code included) as their text.

    CtxError                    root of every ctxlink exception
    ├── ServerError             the server (module or Lua script) replied with a ctxlink error code;
    │   │                       also a ``redis.exceptions.ResponseError``
    │   ├── ValidationError     CTXINVALID: the payload fails validation against the schema
    │   ├── SchemaError         CTXSCHEMA: unknown/mismatched/missing schema, bad descriptor set
    │   ├── VersionError        CTXVERSION: the payload's version field is not expected + 1
    │   ├── PayloadTooLarge     CTXTOOBIG: the payload or its decoded form is over the limit
    │   ├── FieldError          CTXFIELD: a field list names a field the schema's message does not
    │   │                       have at the top level, or its version field (also raised by
    │   │                       ``update(reads=...)`` before anything is sent)
    │   └── WrongTypeError      WRONGTYPE: the key exists and is not a context
    ├── ConflictError           ``update`` gave up (``retries`` or ``timeout``); ``.current`` is the
    │   │                       last state, ``.changed`` the fields another writer changed
    │   └── ContextReplacedError CTXGONE: the context was deleted and re-created since the
    │                           snapshot the write was based on (also a ``ServerError``)
    ├── OutcomeUnknownError     a write was sent, its reply was lost, and whether it was applied
    │                           cannot be settled (``.key``, ``.write_id``): it may have landed
    ├── NotFoundError           ``update`` found no context and had no ``default`` to create one;
    │                           ``wait``: the context was deleted meanwhile (or is absent)
    ├── EngineError             the requested engine is unavailable (no module, no Lua scripts)
    ├── ArgumentError           an argument is out of range or malformed; nothing was sent (also a
    │                           ``ValueError``)
    └── MessageTypeError        the message class is not the type the schema stores; nothing was
                                written (also a ``TypeError``)

``SchemaError`` is also raised without a server reply when a descriptor set does not parse, and
``ValidationError`` by ``migrate`` when a stored payload does not parse even leniently. The
wrong kind of client for the front end (a ``redis.asyncio`` client given to ``ctxlink.connect``,
or the reverse) and arguments of the wrong Python type raise ``TypeError``.

Other error replies (``ERR`` syntax errors, ``NOPERM``, ``READONLY`` ...) and connection problems
pass through as the client library's own exceptions (``redis.exceptions.*``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from redis.exceptions import ResponseError

if TYPE_CHECKING:  # pragma: no cover
    from ctxlink._types import Snapshot

__all__ = [
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
    "EXCEPTION_CLASSES",
    "error_from_reply",
]


class CtxError(Exception):
    """Root of every exception the ctxlink SDK raises."""


class ServerError(CtxError, ResponseError):
    """An error reply carrying a ctxlink error code; ``str(exc)`` is the server's full message.

    Also a ``redis.exceptions.ResponseError``, so ``except ResponseError`` still catches it.
    """

    code: str = ""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationError(ServerError):
    """CTXINVALID: the payload does not decode or validate against the newest schema revision."""

    code = "CTXINVALID"


class SchemaError(ServerError):
    """CTXSCHEMA: unknown, mismatched or required schema, or a bad/incompatible descriptor set."""

    code = "CTXSCHEMA"


class VersionError(ServerError):
    """CTXVERSION: the payload's version field is not ``expected_version + 1``."""

    code = "CTXVERSION"


class PayloadTooLarge(ServerError):
    """CTXTOOBIG: the payload (or the memory needed to decode it) is over the server's limit."""

    code = "CTXTOOBIG"


class WrongTypeError(ServerError):
    """WRONGTYPE: the key exists and is not a context (neither a v2 context string nor a
    protocol 1 context hash; docs/PROTOCOL.md, "Type rule")."""

    code = "WRONGTYPE"


class FieldError(ServerError):
    """CTXFIELD: a field list (``CTX.PATCH`` FIELDS/READS, ``update(reads=...)``) names a field
    that is not a top-level field of the schema's message, names its version field, or names a
    field twice; or a patch payload holds a field it does not list."""

    code = "CTXFIELD"


class ConflictError(CtxError):
    """``update`` gave up: other writers kept changing what it depends on until ``retries`` or
    ``timeout`` ran out. ``key`` is the context's key, ``current`` the last state it saw,
    ``changed`` the names of the fields of its read and write set that the last conflict reported
    (empty for a whole-context write), ``attempts`` how many times ``fn`` was called."""

    def __init__(
        self,
        message: str,
        current: "Optional[Snapshot]",
        changed: tuple[str, ...] = (),
        attempts: int = 0,
        key: object = None,
    ) -> None:
        super().__init__(message)
        self.current = current
        self.changed = changed
        self.attempts = attempts
        self.key = key


class ContextReplacedError(ConflictError, ServerError):
    """CTXGONE: the context was deleted and re-created since the snapshot this write was based
    on (its incarnation is another one); nothing was written. ``update`` never retries it: the
    caller's function decided on the old context, and its result must not land on the new one.
    ``key`` names the context when known; ``current`` is None (read the new context first)."""

    code = "CTXGONE"

    def __init__(self, message: str, key: object = None) -> None:
        ConflictError.__init__(self, message, None, (), 0, key)
        self.message = message


class OutcomeUnknownError(CtxError):
    """A write was sent, its reply was lost (timeout, reset, connection error), and whether the
    server applied it cannot be settled: re-sending it found neither its write id in the
    context's window of recent writes nor a state it could not have produced (more writes than the
    window holds happened since), or the deadline passed first. The write **may have landed**:
    read the context before deciding what to do. ``key`` and ``write_id`` name it."""

    def __init__(self, message: str, key: object = None, write_id: object = None) -> None:
        super().__init__(message)
        self.key = key
        self.write_id = write_id


class NotFoundError(CtxError, LookupError):
    """``update`` found no context under the key and was given no ``default`` to create one;
    ``wait``: the context was deleted (or expired) meanwhile, or is absent at the call."""


class EngineError(CtxError):
    """The requested engine cannot run: the module is not loaded or the Lua scripts are missing."""


class ArgumentError(CtxError, ValueError):
    """An argument's value is out of range or malformed (``expected_version`` -1, a URL that is
    not ``redis://``...); raised before anything is sent."""


class CursorExpiredError(CtxError):
    """``store.changes``: the change feed no longer holds every change after the cursor given
    (more were added meanwhile than its ``feed`` setting keeps); start again with
    ``cursor=None`` (docs/PROTOCOL.md, "Change feed")."""


class MessageTypeError(CtxError, TypeError):
    """The message class given is not the message type the context's schema stores; ``expected``
    is that type's full name, ``got`` the class's. Raised before anything is written."""

    def __init__(self, message: str, expected: str = "", got: str = "") -> None:
        super().__init__(message)
        self.expected = expected
        self.got = got


#: Error-reply code (first word of the reply) -> exception class, like redis-py's table.
EXCEPTION_CLASSES: dict[str, type[ServerError]] = {
    "CTXINVALID": ValidationError,
    "CTXSCHEMA": SchemaError,
    "CTXVERSION": VersionError,
    "CTXTOOBIG": PayloadTooLarge,
    "CTXFIELD": FieldError,
    "WRONGTYPE": WrongTypeError,
    "CTXGONE": ContextReplacedError,
}


def error_from_reply(message: str) -> Optional[ServerError]:
    """The ctxlink exception for an error reply's text, or None when the code is not ours.

    Error replies coming out of a Lua script may carry a prefix added by Redis (``ERR ...``,
    ``user_script:...``); the code is looked for as the first word, then after such a prefix.
    """
    code = message.split(" ", 1)[0]
    cls = EXCEPTION_CLASSES.get(code)
    if cls is not None:
        return cls(message)
    for code, cls in EXCEPTION_CLASSES.items():
        pos = message.find(code + " ")
        if pos > 0 and message[pos - 1] in " :":
            return cls(message[pos:])
    return None
