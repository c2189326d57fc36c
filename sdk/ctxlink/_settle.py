"""Sending a write exactly once: re-sending the very same attempt (same write id) after a lost
reply, telling a replayed write from a conflict, and OutcomeUnknownError when that cannot be
settled (docs/PROTOCOL.md, "Write ids")."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable, Optional

from redis.exceptions import ResponseError

from ctxlink._exceptions import (
    ContextReplacedError,
    CtxError,
    OutcomeUnknownError,
    WrongTypeError,
)
from ctxlink._instr import Cmd, LoadScript, Op, Sleep, T, Write
from ctxlink._protocol import Outcome
from ctxlink._send import TRANSPORT_ERRORS, WriteNotSent, _not_sent
from ctxlink._state import State
from ctxlink._types import Backoff

UPDATE_TIMEOUT = 30.0

#: How often ``cas``/``delete`` re-send a write whose reply was lost before giving up with
#: OutcomeUnknownError (``update`` re-sends until its deadline).
CAS_RESENDS = 3


def _send_settled(
    st: State,
    key: Any,
    send: Callable[[], Op[Any]],
    write_id: Any,
    deadline: Optional[float],
    resends: Optional[int],
    pause: Optional[Backoff] = None,
    sent: bool = False,
) -> Op[tuple[Any, bool]]:
    """Sends a write until a reply arrives: after a transport error the very same attempt
    (same id) is sent again, after a backoff, while ``resends`` and ``deadline`` allow. Then:
    the client's error when no send ever went out (the write certainly did not run), else
    OutcomeUnknownError. Returns (reply, whether an earlier send may have landed). ``sent``: a
    send of this very attempt went out already (its reply was lost)."""
    tries = 0
    while True:
        try:
            return (yield from _reads_not_sent(send())), sent
        except TRANSPORT_ERRORS as exc:
            if not isinstance(exc, WriteNotSent):
                sent = True  # it went out: it may have run
            tries += 1
            if (resends is not None and tries > resends) or (
                deadline is not None and time.monotonic() >= deadline
            ):
                if not sent:  # nothing ever reached the server
                    # the client's own error (WriteNotSent wraps it)
                    raise exc.__cause__ if isinstance(exc.__cause__, Exception) else exc  # noqa: B904
                raise OutcomeUnknownError(
                    f"the reply to a write of {key!r} (write id {write_id!r}) was lost and "
                    f"re-sending it did not settle whether it was applied: it may have landed; "
                    f"read the context before deciding ({type(exc).__name__}: {exc})",
                    key,
                    write_id,
                ) from exc
            yield Sleep((pause or st.backoff).delay(tries))
        except ResponseError as exc:
            if isinstance(exc, ContextReplacedError) and exc.key is None:
                exc.key = key
            # the write's own checks after the replay check (CTXINVALID, CTXVERSION, ...) prove
            # that no send of it ran; an error before them (OOM, READONLY, LOADING's kin,
            # WRONGTYPE, CTXGONE, CLUSTERDOWN, NOPERM) says nothing about the send whose reply
            # was lost (CTXGONE: it may have landed on the context that was deleted since)
            if not sent or (isinstance(exc, CtxError) and not isinstance(
                    exc, (WrongTypeError, ContextReplacedError))):
                raise
            raise OutcomeUnknownError(
                f"the reply to a write of {key!r} (write id {write_id!r}) was lost and the "
                f"re-sent write was refused before the server could tell whether it had been "
                f"applied: it may have landed; read the context before deciding "
                f"({type(exc).__name__}: {exc})",
                key,
                write_id,
            ) from exc


def _reads_not_sent(op: Op[T]) -> Op[T]:
    """Runs ``op`` (one try of a write); a transport error of a read it makes on the way (the
    context's schema, ``SCRIPT LOAD`` after ``NOSCRIPT``, a plan) is thrown into it as
    :class:`WriteNotSent`: that try did not send the write, but an earlier one may have, so the
    caller decides (re-send, then OutcomeUnknownError) instead of the read's error ending it."""
    reply: Any = None
    error: Optional[BaseException] = None
    while True:
        try:
            instr = op.send(reply) if error is None else op.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        reply, error = None, None
        if type(instr) is Cmd or type(instr) is LoadScript:
            instr = replace(instr, settle=True)
        try:
            reply = yield instr
        except TRANSPORT_ERRORS as exc:
            error = exc if type(instr) is Write or isinstance(exc, WriteNotSent) else (
                _not_sent(exc))
        except BaseException as exc:  # noqa: B036 - handed to the op, as the front end would
            error = exc


def _ambiguous(
    outcome: Outcome, expected: int, resent: bool, inc: Optional[str] = None
) -> bool:
    """A conflict reply to a re-sent write that cannot tell whether the first send landed: the
    write id is not in the window (else the reply says "replayed"), but the window does not
    reach back to the version that write would have produced, or the context is gone, or (a
    create, ``inc`` its fresh incarnation) the context is another one than the create made:
    it may have been created by the first send, deleted and created again by someone else."""
    if not resent or outcome.result.ok:
        return False
    current = outcome.result.current
    if current is None:
        return expected > 0
    if expected == 0 and inc and current[5] != inc:
        return True
    return outcome.oldest is None or expected + 1 < outcome.oldest


def _unknown(key: Any, write_id: Any) -> OutcomeUnknownError:
    return OutcomeUnknownError(
        f"the reply to a write of {key!r} (write id {write_id!r}) was lost, and by the time it "
        "was re-sent more writes had happened than the context's window of recent write ids "
        "holds (or the context was deleted): it may have landed; read the context before "
        "deciding",
        key,
        write_id,
    )
