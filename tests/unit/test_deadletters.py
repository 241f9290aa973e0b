"""The dead-letter store's contract (in memory; tests/integration/test_deadletters_pg.py runs
the same against Postgres) and the one classification of errors every retrying queue uses."""

from __future__ import annotations

import asyncpg
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import exc as sa_exc

from core.deadletters import (
    MAX_KEY_CHARS,
    DeadLetterSampler,
    DeadLetterStore,
    InMemoryDeadLetterStore,
    NewDeadLetter,
    item_key,
)
from core.sqlstate import (
    DataRejected,
    blames_the_data,
    describe,
    is_permanent,
    is_transient,
    sqlstate_of,
    storable_text,
)


def wrapped(inner: BaseException) -> sa_exc.DBAPIError:
    """What SQLAlchemy raises for a driver error: DBAPIError(orig=adapter error from inner)."""

    class AdapterError(Exception):
        sqlstate = getattr(inner, "sqlstate", None)

    orig = AdapterError(str(inner))
    orig.__cause__ = inner
    return sa_exc.DBAPIError("INSERT ...", {}, orig)


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionResetError("reset"),
        TimeoutError(),
        asyncpg.ConnectionDoesNotExistError("gone"),
        asyncpg.CannotConnectNowError("starting up"),  # 57P03
        asyncpg.AdminShutdownError("terminating"),  # 57P01
        asyncpg.TooManyConnectionsError("too many"),  # 53300
        asyncpg.SerializationError("race"),  # 40001
        asyncpg.DeadlockDetectedError("deadlock"),  # 40P01
        wrapped(asyncpg.AdminShutdownError("terminating")),
        sa_exc.TimeoutError("QueuePool limit reached"),
    ],
)
def test_transient_errors(exc: BaseException) -> None:
    assert is_transient(exc) and not is_permanent(exc) and not blames_the_data(exc)


@pytest.mark.parametrize(
    ("exc", "state"),
    [
        (asyncpg.CharacterNotInRepertoireError("0x00"), "22021"),  # a NUL in text
        (asyncpg.UntranslatableCharacterError("\\u0000"), "22P05"),  # a NUL in jsonb
        (asyncpg.NumericValueOutOfRangeError("bigint"), "22003"),
        (asyncpg.ProgramLimitExceededError("index row size"), "54000"),
        (asyncpg.CheckViolationError("prompt_tokens >= 0"), "23514"),
        (wrapped(asyncpg.CharacterNotInRepertoireError("0x00")), "22021"),
        (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), None),
        (OverflowError("value out of int32 range"), None),
        (DataRejected("refused", sqlstate="22021"), "22021"),
    ],
)
def test_the_data_is_to_blame(exc: BaseException, state: str | None) -> None:
    assert blames_the_data(exc) and is_permanent(exc) and not is_transient(exc)
    assert sqlstate_of(exc) == state


@pytest.mark.parametrize(
    "exc",
    [asyncpg.UndefinedColumnError("no column"), asyncpg.FeatureNotSupportedError("no")],
)
def test_permanent_but_not_the_items_fault_is_never_dead_lettered(exc: BaseException) -> None:
    assert is_permanent(exc) and not blames_the_data(exc) and not is_transient(exc)


def test_unknown_errors_are_neither() -> None:
    for exc in (RuntimeError("a bug"), KeyError("x"), TypeError("y")):
        assert not is_transient(exc) and not is_permanent(exc) and not blames_the_data(exc)


def test_error_text_is_storable() -> None:
    text = describe(ValueError("bad \x00 value \ud800 " + "x" * 10_000))
    assert "\x00" not in text and len(text) <= 4000
    text.encode("utf-8")
    assert text.startswith("ValueError: bad  value \\ud800")
    assert storable_text("plain") == "plain"


def test_item_keys_are_storable_unique_and_bounded() -> None:
    assert item_key("req_0123abcd") == "req_0123abcd"
    keys = [item_key(k) for k in ("a\x00b", "a\\u0000b", "a\ud800b", "a\\ud800b", "a\\b")]
    assert len(set(keys)) == len(keys), "escaping is injective"
    for k in keys:
        assert "\x00" not in k
        k.encode("utf-8")
    long_a, long_b = item_key("x" * 9000 + "a"), item_key("x" * 9000 + "b")
    assert len(long_a) == MAX_KEY_CHARS and long_a != long_b


def letter(key: str, error: str = "refused", payload: bytes = b"\x00payload") -> NewDeadLetter:
    return NewDeadLetter("usage", key, payload, error, "22021")


async def test_put_is_idempotent_and_a_replayed_item_that_fails_again_comes_back() -> None:
    store = InMemoryDeadLetterStore()
    assert isinstance(store, DeadLetterStore)
    metric = ("royalty_dead_letters_total", {"queue": "usage"})
    before = REGISTRY.get_sample_value(*metric) or 0.0
    assert await store.put([letter("r1"), letter("r2"), letter("r1")]) == 2
    assert await store.put([letter("r1")]) == 0, "a replayed put adds nothing"
    assert (REGISTRY.get_sample_value(*metric) or 0.0) - before == 2
    [one, two] = await store.list()
    assert (one.item_key, one.state, one.payload, one.failures) == ("r1", "dead", b"\x00payload", 1)
    assert await store.pending() == {"usage": 2, "influence": 0, "posting": 0}

    replayed = await store.mark_replayed(one.id, "fixed the model name")
    assert replayed is not None and replayed.state == "dead"  # as it was
    assert await store.mark_replayed(one.id) is None, "only a dead letter is resolved"
    assert await store.mark_discarded(two.id, "test traffic", forget_payload=True) is not None
    again = await store.get(two.id)
    assert again is not None and again.state == "discarded" and again.payload == b""
    assert again.resolution == "test traffic" and again.resolved_at is not None
    assert await store.list(state="dead") == []

    # r1 fails again after its replay: the same row is dead again, never silently lost.
    assert await store.put([letter("r1", error="refused again")]) == 1
    revived = await store.get(one.id)
    assert revived is not None and revived.state == "dead" and revived.failures == 2
    assert revived.error == "refused again" and revived.resolved_at is None
    # A discarded item stays discarded.
    assert await store.put([letter("r2")]) == 0
    assert [x.id for x in await store.list(queue="usage", state="dead")] == [one.id]


async def test_the_sampler_sets_the_pending_gauge() -> None:
    store = InMemoryDeadLetterStore()
    await store.put([letter("a"), letter("b"), NewDeadLetter("posting", "c", b"", "x")])
    assert await DeadLetterSampler(store).sample_once() == {
        "usage": 2,
        "influence": 0,
        "posting": 1,
    }
    for queue, n in (("usage", 2), ("influence", 0), ("posting", 1)):
        assert REGISTRY.get_sample_value("royalty_dead_letters_pending", {"queue": queue}) == n
