"""The cheap paths of the budget gate must not weaken it: settles of concurrent requests are
grouped into one statement, a request that held nothing costs no settle at all, and a
grouped settle gives exactly what settling one by one gives (Postgres and in memory)."""

from __future__ import annotations

import asyncio
import datetime as dt
import random

import asyncpg
import pytest
import sqlalchemy.exc
from sqlalchemy.ext.asyncio import AsyncEngine

from metering.budgets.gate import BudgetGate, BudgetUnavailable
from metering.budgets.store import InMemoryBudgets, InsufficientCredit, PostgresBudgets
from metering.catalog import PostgresCatalog
from metering.ledger.audit import violations
from metering.ledger.book import PostgresLedger
from metering.pg import driver
from metering.pricing import Price, PriceBook

pytestmark = pytest.mark.integration

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


async def new_account(engine: AsyncEngine, name: str) -> int:
    async with driver(engine) as conn:
        return int(
            await conn.fetchval("INSERT INTO accounts (name) VALUES ($1) RETURNING id", name)
        )


async def test_settle_many_equals_settling_one_by_one(engine: AsyncEngine) -> None:
    a, b = await new_account(engine, "a"), await new_account(engine, "b")
    ledger = PostgresLedger(engine)
    await ledger.top_up(a, 10_000)
    await ledger.top_up(b, 10_000)
    budgets = PostgresBudgets(engine)
    rng = random.Random(3)
    held = {f"r{i}": (a if i % 3 else b, rng.randint(10, 200)) for i in range(40)}
    for rid, (acct, amount) in held.items():
        await budgets.reserve(acct, rid, amount)
    actual = {rid: rng.randint(0, amount) for rid, (_, amount) in held.items()}
    batch = [(rid, cost) for rid, cost in actual.items()]
    batch.append(("never-reserved", 5))  # unknown ids change nothing
    batch.append(("r0", actual["r0"]))  # a repeat in one batch: settled once, same value
    await budgets.settle_many(batch)
    for acct in (a, b):
        want = 10_000 - sum(actual[r] for r, (x, _) in held.items() if x == acct)
        assert await budgets.available(acct) == want
    await budgets.settle_many(batch)  # settling again is idempotent
    assert await budgets.available(a) == 10_000 - sum(
        actual[r] for r, (x, _) in held.items() if x == a
    )
    assert await violations(engine) == []
    with pytest.raises(ValueError):
        await budgets.settle_many([("r1", -1)])


async def test_reserve_is_still_exact_under_concurrency(engine: AsyncEngine) -> None:
    """One statement per reservation (no explicit transaction): still never over the balance."""
    acct = await new_account(engine, "spender")
    await PostgresLedger(engine).top_up(acct, 500)
    budgets = PostgresBudgets(engine)

    async def one(i: int) -> int:
        try:
            await budgets.reserve(acct, f"c{i}", 7)
        except InsufficientCredit:
            return 0
        return 7

    got = await asyncio.gather(*(one(i) for i in range(120)))
    assert sum(got) == 7 * (500 // 7)
    assert await budgets.available(acct) == 500 % 7
    with pytest.raises(asyncpg.UniqueViolationError):  # a request id holds once
        await budgets.reserve(acct, "c0", 0 + 1)
    assert await budgets.available(acct) == 500 % 7
    assert await violations(engine) == []


class CountingBudgets(InMemoryBudgets):
    def __init__(self, balances: dict[int, int]) -> None:
        super().__init__(balances)
        self.settle_calls = 0
        self.batches: list[int] = []

    async def settle(self, request_id: str, actual: int) -> None:
        self.settle_calls += 1
        await super().settle(request_id, actual)

    async def settle_many(self, settlements: list[tuple[str, int]]) -> None:  # type: ignore[override]
        self.batches.append(len(settlements))
        await asyncio.sleep(0.01)  # a round trip, during which the next batch gathers
        for rid, actual in settlements:
            await InMemoryBudgets.settle(self, rid, actual)


class Book:
    def __init__(self, book: PriceBook) -> None:
        self._book = book

    async def book(self) -> PriceBook:
        return self._book


def priced_book() -> PriceBook:
    return PriceBook(
        [Price(1, "tiny", "", 1_000_000, 2_000_000, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))]
    )


async def test_concurrent_settles_are_grouped_and_unheld_requests_cost_nothing() -> None:
    budgets = CountingBudgets({1: 10**9})
    gate = BudgetGate(budgets, Book(priced_book()), default_max_tokens=100)
    for i in range(50):
        await gate.reserve(1, f"r{i}", "tiny", "", prompt_bytes=10, max_tokens=20)
    assert len(budgets.held) == 50
    await asyncio.gather(
        *(gate.settle(f"r{i}", "tiny", "", NOW, 5, i % 7, charged=i % 5 != 0) for i in range(50))
    )
    # every hold is now the actual cost (0 for the uncharged), written in a few statements
    for i in range(50):
        assert budgets.held[f"r{i}"].amount == (5 + 2 * (i % 7) if i % 5 else 0)
    assert sum(budgets.batches) == 50 and len(budgets.batches) <= 3
    assert budgets.settle_calls == 0
    # a settle of a request this gate never reserved (or already settled) asks nothing
    await gate.settle("r0", "tiny", "", NOW, 1, 1, charged=True)
    await gate.settle("other", "tiny", "", NOW, 1, 1, charged=True)
    assert sum(budgets.batches) == 50
    assert budgets.held["r0"].amount == 0


async def test_an_unpriced_model_reserves_and_settles_nothing() -> None:
    budgets = CountingBudgets({1: 0})  # no credit at all: a free model still serves
    gate = BudgetGate(budgets, Book(PriceBook()))
    assert await gate.reserve(1, "free", "tiny", "", prompt_bytes=10, max_tokens=20) == 0
    await gate.settle("free", "tiny", "", NOW, 5, 5, charged=True)
    assert budgets.batches == [] and budgets.settle_calls == 0


class FlakyBudgets(CountingBudgets):
    fail = True

    async def settle_many(self, settlements: list[tuple[str, int]]) -> None:  # type: ignore[override]
        if self.fail:
            raise OSError("connection reset")
        await super().settle_many(settlements)


async def test_a_failed_grouped_settle_keeps_the_estimate_held() -> None:
    budgets = FlakyBudgets({1: 1_000})
    gate = BudgetGate(budgets, Book(priced_book()), default_max_tokens=100)
    held = await gate.reserve(1, "r", "tiny", "", prompt_bytes=10, max_tokens=20)
    await gate.settle("r", "tiny", "", NOW, 1, 1, charged=True)  # logs, does not raise
    assert budgets.held["r"].amount == held  # conservative: the larger estimate stays held
    assert await budgets.available(1) == 1_000 - held
    budgets.fail = False
    await gate.settle("s", "tiny", "", NOW, 1, 1, charged=True)  # the gate carries on
    assert budgets.batches == []  # "s" held nothing


async def test_the_gate_over_postgres_groups_settles(engine: AsyncEngine) -> None:
    acct = await new_account(engine, "buyer")
    await PostgresLedger(engine).top_up(acct, 1_000_000)
    catalog = PostgresCatalog(engine)
    await catalog.set_price(
        "tiny", "", 1_000_000, 2_000_000, dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    )
    gate = BudgetGate(PostgresBudgets(engine), catalog, default_max_tokens=100)
    n = 40
    await asyncio.gather(
        *(gate.reserve(acct, f"g{i}", "tiny", "", prompt_bytes=10, max_tokens=50) for i in range(n))
    )
    await asyncio.gather(
        *(gate.settle(f"g{i}", "tiny", "", NOW, 10, i, charged=True) for i in range(n))
    )
    assert gate.settle_batches < n
    spent = sum(10 + 2 * i for i in range(n))
    assert await PostgresBudgets(engine).available(acct) == 1_000_000 - spent
    assert await violations(engine) == []


async def test_reserve_many_holds_a_prefix_that_fits_and_nothing_more(engine: AsyncEngine) -> None:
    a, b, broke = [await new_account(engine, n) for n in ("a", "b", "broke")]
    ledger = PostgresLedger(engine)
    await ledger.top_up(a, 100)
    await ledger.top_up(b, 1_000)
    budgets = PostgresBudgets(engine)
    got = await budgets.reserve_many(
        [(a, "a1", 60), (b, "b1", 500), (a, "a2", 30), (a, "a3", 20), (a, "a4", 5),
         (broke, "x1", 1), (b, "b2", 500)]
    )  # fmt: skip
    # a: 60 + 30 fit, 20 would pass 100 (and a4 after it is not tried in the group)
    assert got == {"a1", "a2", "b1", "b2"}
    assert await budgets.available(a) == 10
    assert await budgets.available(b) == 0
    # a duplicate request id fails the whole statement: nothing of it is held
    with pytest.raises(asyncpg.UniqueViolationError):
        await budgets.reserve_many([(a, "a5", 5), (a, "a1", 1)])
    assert await budgets.available(a) == 10
    with pytest.raises(ValueError):
        await budgets.reserve_many([(a, "z", 0)])
    assert await violations(engine) == []


async def test_grouped_reservations_from_two_gateways_never_overspend(
    engine: AsyncEngine, database_url: str
) -> None:
    from royalty.db import create_engine

    acct = await new_account(engine, "spender")
    await PostgresLedger(engine).top_up(acct, 5_000)
    catalog = PostgresCatalog(engine)
    await catalog.set_price(
        "tiny", "", 1_000_000, 1_000_000, dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    )
    other = create_engine(database_url, pool_size=4)
    try:
        gates = [
            BudgetGate(PostgresBudgets(e), PostgresCatalog(e), prompt_overhead_tokens=0)
            for e in (engine, other)
        ]
        rng = random.Random(11)
        asks = [rng.randint(10, 200) for _ in range(160)]  # max_tokens = cost (no prompt)

        async def one(i: int) -> int:
            try:
                return await gates[i % 2].reserve(acct, f"q{i}", "tiny", "", 0, asks[i])
            except InsufficientCredit as e:
                assert e.needed == asks[i]
                return 0

        got = await asyncio.gather(*(one(i) for i in range(len(asks))))
        held = sum(got)
        assert 0 < held <= 5_000
        refused = [a for a, g in zip(asks, got, strict=True) if g == 0]
        assert refused and 5_000 - held < min(refused)  # nothing refused that still fits
        assert sum(g.reserve_batches for g in gates) < len(asks)  # grouped
        assert await PostgresBudgets(engine).available(acct) == 5_000 - held
        assert await violations(engine) == []
    finally:
        await other.dispose()


class NoConnectionBook:
    """The price book's pool cannot connect: SQLAlchemy wraps asyncpg's error."""

    async def book(self) -> PriceBook:
        raise sqlalchemy.exc.DBAPIError(
            "connect", None, asyncpg.TooManyConnectionsError("sorry, too many clients already")
        )


async def test_a_pool_that_cannot_connect_fails_open_not_500() -> None:
    """Seen in a benchmark: 'too many clients' while loading prices was an unhandled error."""
    gate = BudgetGate(CountingBudgets({1: 10**9}), NoConnectionBook())
    assert await gate.reserve(1, "r", "tiny", "", 10, 10) == 0
    assert gate.unchecked == 1
    await gate.settle("r", "tiny", "", NOW, 1, 1, charged=True)  # nothing held, nothing asked
    closed = BudgetGate(CountingBudgets({1: 10**9}), NoConnectionBook(), fail_open=False)
    with pytest.raises(BudgetUnavailable):
        await closed.reserve(1, "r", "tiny", "", 10, 10)


class StuckBudgets(CountingBudgets):
    async def settle_many(self, settlements: list[tuple[str, int]]) -> None:  # type: ignore[override]
        await asyncio.sleep(3600)


async def test_a_cancelled_writer_leaves_no_settle_waiting_forever() -> None:
    budgets = StuckBudgets({1: 10**6})
    gate = BudgetGate(budgets, Book(priced_book()))
    for rid in ("a", "b"):
        await gate.reserve(1, rid, "tiny", "", prompt_bytes=1, max_tokens=1)
    first = asyncio.ensure_future(gate.settle("a", "tiny", "", NOW, 1, 1, charged=True))
    await asyncio.sleep(0.01)  # "a" is being written; "b" waits for the next batch
    second = asyncio.ensure_future(gate.settle("b", "tiny", "", NOW, 1, 1, charged=True))
    await asyncio.sleep(0.01)
    writer = gate._settles._writer
    assert writer is not None
    writer.cancel()
    done, pending = await asyncio.wait([first, second], timeout=2)
    assert not pending and all(t.cancelled() for t in done)
    assert gate._settles._writer is None  # the next settle starts a new writer
