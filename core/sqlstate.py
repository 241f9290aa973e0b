"""One answer, for every queue that retries, to "will trying this again help?".

- **Transient**: retry the same thing unchanged, later. The connection was lost or refused
  (SQLSTATE class 08, `OSError`, `asyncpg.InterfaceError`), the server is shutting down or
  starting (57P01-57P03) or out of resources (53), a transaction lost a serialization race or
  a deadlock (40001, 40P01), or the attempt timed out.
- **Permanent**: the same statement with the same data fails the same way every time:
  data exceptions (22: a NUL in text, a number out of range, invalid JSON), integrity
  violations (23), program limits (54: an index row too large), syntax and undefined objects
  (42), unsupported features (0A).
- **The data's fault** (`blames_the_data`): the permanent errors an *item* causes, so that
  splitting a batch isolates it: classes 22, 23 and 54, and the client-side equivalents the
  driver raises before anything reaches the server (`ValueError`, e.g. text with a lone
  surrogate that cannot be encoded, and `ArithmeticError`, e.g. an integer out of int32
  range), plus `DataRejected`, which stores and test doubles raise themselves. A queue
  dead-letters only these: class 42 or 0A is permanent too, but a wrong schema or statement
  fails every item alike, and dead-lettering a whole queue because of a deploy mistake would be
  worse than stopping it (it is retried, logged and alerted on instead).
- Anything else (a bug, an unknown error) is neither: queues keep retrying it, as before.

SQLAlchemy wraps driver errors (`DBAPIError.orig`, whose `__cause__` is asyncpg's); every
function here looks through those wrappers.
"""

from __future__ import annotations

import asyncpg
from sqlalchemy import exc as sa_exc

TRANSIENT_SQLSTATE_PREFIXES = ("08", "53", "57P0", "40001", "40P01")
"""Lost connections (08), out of resources (53), server shutting down or starting (57P01-03),
serialization failures and deadlocks between concurrent writers (40001, 40P01)."""
DATA_SQLSTATE_CLASSES = ("22", "23", "54")
"""Data exception, integrity constraint violation, program limit exceeded: the item's fault."""
PERMANENT_SQLSTATE_CLASSES = (*DATA_SQLSTATE_CLASSES, "42", "0A")
"""Also syntax error or access rule violation (42) and feature not supported (0A)."""

DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    sa_exc.SQLAlchemyError,
)
"""Everything the database path raises, transient or not: what "the database cannot answer
this now" looks like to a caller that fails open (`metering.budgets.gate`)."""

_CLIENT_DATA_ERRORS = (ValueError, ArithmeticError)
MAX_ERROR_CHARS = 4000


class DataRejected(Exception):
    """An item the store can never take as it is (raised by stores and their test doubles);
    `sqlstate` names the server's reason when there is one."""

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc`, then what it wraps: SQLAlchemy's `orig`, and causes (at most a few deep)."""
    out: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo and len(out) < 8:
        e = todo.pop(0)
        if e is None or any(e is seen for seen in out):
            continue
        out.append(e)
        todo.append(getattr(e, "orig", None))
        todo.append(e.__cause__)
    return out


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE of the first error in `exc`'s chain that has one."""
    for e in _chain(exc):
        state = getattr(e, "sqlstate", None)
        if isinstance(state, str) and state:
            return state
    return None


def is_transient(exc: BaseException) -> bool:
    """Retrying unchanged may succeed: connection lost, server restarting, a lost race, a
    timeout (see the module docstring)."""
    if isinstance(exc, DataRejected):
        return False
    # asyncpg's client-side invalid-input error is an InterfaceError *and* a ValueError: it is
    # the data's fault, and would fail again.
    if isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError):
        return False
    if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        return state.startswith(TRANSIENT_SQLSTATE_PREFIXES)
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        orig = exc.orig
        inner = getattr(orig, "__cause__", None) or orig
        if inner is not None and inner is not exc and is_transient(inner):
            return True
        if isinstance(exc, sa_exc.InterfaceError | sa_exc.OperationalError):
            return not blames_the_data(exc)
        return False
    if isinstance(exc, sa_exc.TimeoutError):  # the pool had no connection to give in time
        return True
    return False


def blames_the_data(exc: BaseException) -> bool:
    """Permanent, and caused by the item's data: split the batch and dead-letter the item."""
    for e in _chain(exc):
        if isinstance(e, DataRejected):
            return True
        state = getattr(e, "sqlstate", None)
        if isinstance(state, str) and state:
            return state[:2] in DATA_SQLSTATE_CLASSES
        if isinstance(e, asyncpg.InterfaceError) and isinstance(e, ValueError):
            return True
        if isinstance(e, _CLIENT_DATA_ERRORS) and not isinstance(e, sa_exc.SQLAlchemyError):
            return True
    return False


def is_permanent(exc: BaseException) -> bool:
    """Retrying unchanged can never succeed (the item's fault, or the statement's)."""
    if blames_the_data(exc):
        return True
    state = sqlstate_of(exc)
    return state is not None and state[:2] in PERMANENT_SQLSTATE_CLASSES


def describe(exc: BaseException) -> str:
    """`Type: message` of an error, storable as text (no NUL, no lone surrogate, capped). For
    SQLAlchemy's wrapper, the driver's error underneath: the wrapper's text repeats the
    statement and its parameters, i.e. the very data (prompts) that must not spread."""
    if isinstance(exc, sa_exc.StatementError) and exc.orig is not None:
        exc = exc.orig.__cause__ or exc.orig
    text = f"{type(exc).__name__}: {exc}"
    detail = getattr(exc, "detail", None)
    if isinstance(detail, str) and detail:
        text = f"{text} ({detail})"
    return storable_text(text)[:MAX_ERROR_CHARS]


def storable_text(text: str) -> str:
    """`text` as Postgres can store it: NUL removed, lone surrogates written as `\\udXXX`."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text
