"""Budgets: reserve a request's most possible cost before serving, settle it after.

A consumer's spendable credit is `balance - held` of its ledger account. `reserve` is one
conditional UPDATE (`... WHERE balance - held >= amount`): Postgres row locking serialises
concurrent reservations from any number of gateway processes, so the held total never
exceeds the balance. `settle` replaces the estimate by the actual cost, which the estimate
bounds (`metering.budgets.gate`), so an account can overspend by at most one request's
reservation. The posting worker deletes an event's reservation in the same transaction that
debits its charge, so the charge is never counted twice nor missed in between.

Every reservation expires (`expires_at`, `hold_s` after it was made: the engine timeout plus
the shipping lag). A request that never wrote a usage record (the gateway was killed, its
usage write failed) would otherwise hold its credit forever: `metering.budgets.expiry` releases
expired holds that have no usage event waiting to post.

Each of `RESERVE`, `SETTLE`, `SETTLE_MANY` is one statement, atomic on its own: no explicit
transaction (BEGIN and COMMIT would be two more round trips on every request). `settle_many`
settles a batch in one round trip (the gateway's `BudgetGate` groups concurrent settles).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from sqlalchemy.ext.asyncio import AsyncEngine

from core.errors import QuotaExceeded
from metering.pg import driver

DEFAULT_HOLD_S = 900.0
"""How long a reservation holds by default: a 600 s engine timeout plus 5 minutes for its
usage record to ship (`ROYALTY_BUDGET_HOLD_S`)."""


class InsufficientCredit(QuotaExceeded):
    def __init__(self, account_id: int, needed: int, available: int) -> None:
        super().__init__(
            f"account {account_id} has {available} micro-credits available, {needed} needed"
        )
        self.account_id = account_id
        self.needed = needed
        self.available = available


@runtime_checkable
class Budgets(Protocol):
    async def reserve(self, account_id: int, request_id: str, amount: int) -> None:
        """Hold `amount` of the account's credit for `request_id`, or InsufficientCredit."""
        ...

    async def reserve_many(self, reservations: Sequence[tuple[int, str, int]]) -> set[str]:
        """Hold each (account id, request id, amount) that fits, in one round trip where
        possible; returns the request ids now held. The others may still fit alone (a batch
        is all-or-nothing per account): ask `reserve` for them."""
        ...

    async def settle(self, request_id: str, actual: int) -> None:
        """The request cost `actual`: hold that until its usage event posts."""
        ...

    async def settle_many(self, settlements: Sequence[tuple[str, int]]) -> None:
        """`settle` for each (request id, actual cost), in one round trip where possible."""
        ...

    async def release(self, request_id: str) -> None:
        """The request was not served: free its reservation."""
        ...

    async def available(self, account_id: int) -> int: ...


RESERVE = """
WITH acct AS (
    UPDATE ledger_accounts SET held = held + $2
    WHERE kind = 'consumer' AND owner_id = $1 AND balance - held >= $2
    RETURNING id
)
INSERT INTO budget_reservations (request_id, account_id, amount, expires_at)
SELECT $3, id, $2, now() + make_interval(secs => $4) FROM acct
RETURNING account_id
"""
SETTLE = """
WITH r AS (
    SELECT request_id, account_id, amount FROM budget_reservations
    WHERE request_id = $1 FOR UPDATE
), upd AS (
    UPDATE budget_reservations b SET amount = $2, settled = true FROM r
    WHERE b.request_id = r.request_id
    RETURNING r.account_id, r.amount AS old
)
UPDATE ledger_accounts a SET held = a.held + $2 - upd.old FROM upd WHERE a.id = upd.account_id
"""
# RESERVE for many requests at once: per account, the requests in order while their running
# sum fits what is available, held in one guarded UPDATE (re-checked on the locked row, so
# the held total never passes the balance whatever runs concurrently); only requests whose
# account's UPDATE succeeded get a reservation row. The rest are answered one by one.
RESERVE_MANY = """
WITH r AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[]) WITH ORDINALITY
        AS r(owner_id, request_id, amount, ord)
), acct AS (
    SELECT id, owner_id, balance - held AS avail FROM ledger_accounts
    WHERE kind = 'consumer' AND owner_id = ANY($1::bigint[])
    ORDER BY id FOR UPDATE
), ranked AS (
    SELECT r.request_id, r.amount, acct.id AS account_id, acct.avail,
           sum(r.amount) OVER (PARTITION BY acct.id ORDER BY r.ord) AS upto
    FROM r JOIN acct ON acct.owner_id = r.owner_id
), fits AS (
    SELECT request_id, amount, account_id FROM ranked WHERE upto <= avail
), upd AS (
    UPDATE ledger_accounts a SET held = a.held + f.total
    FROM (SELECT account_id, sum(amount) AS total FROM fits GROUP BY account_id) f
    WHERE a.id = f.account_id AND a.balance - a.held >= f.total
    RETURNING a.id
)
INSERT INTO budget_reservations (request_id, account_id, amount, expires_at)
SELECT fits.request_id, fits.account_id, fits.amount, now() + make_interval(secs => $4)
FROM fits JOIN upd ON upd.id = fits.account_id
RETURNING request_id
"""
# SETTLE for many requests (distinct ids): rows locked in the same order as SETTLE and the
# posting worker's RELEASE_RESERVATIONS (reservations, then accounts).
SETTLE_MANY = """
WITH s AS (
    SELECT * FROM unnest($1::text[], $2::bigint[]) AS s(request_id, actual)
), r AS (
    SELECT b.request_id, b.account_id, b.amount AS old, s.actual
    FROM budget_reservations b JOIN s ON s.request_id = b.request_id
    FOR UPDATE OF b
), upd AS (
    UPDATE budget_reservations b SET amount = r.actual, settled = true FROM r
    WHERE b.request_id = r.request_id
    RETURNING r.account_id, r.actual - r.old AS delta
), per_account AS (
    SELECT account_id, sum(delta) AS delta FROM upd GROUP BY account_id
)
UPDATE ledger_accounts a SET held = a.held + p.delta FROM per_account p WHERE a.id = p.account_id
"""
RELEASE = """
WITH gone AS (DELETE FROM budget_reservations WHERE request_id = $1 RETURNING account_id, amount)
UPDATE ledger_accounts a SET held = a.held - gone.amount FROM gone WHERE a.id = gone.account_id
"""
AVAILABLE = "SELECT balance - held FROM ledger_accounts WHERE kind = 'consumer' AND owner_id = $1"


class PostgresBudgets:
    def __init__(self, engine: AsyncEngine, *, hold_s: float = DEFAULT_HOLD_S) -> None:
        if hold_s <= 0:
            raise ValueError("a reservation must hold for a positive time")
        self._engine = engine
        self.hold_s = float(hold_s)
        """Seconds a reservation holds before the sweeper may release it."""

    async def reserve(self, account_id: int, request_id: str, amount: int) -> None:
        if amount < 0:
            raise ValueError("a reservation is >= 0")
        if amount == 0:
            return  # a free request (e.g. an unpriced model) needs no credit and holds none
        async with driver(self._engine) as conn:
            got = await conn.fetchval(RESERVE, account_id, amount, request_id, self.hold_s)
            if got is None:  # for the message only: the refusal was decided atomically above
                have = await conn.fetchval(AVAILABLE, account_id)
                raise InsufficientCredit(account_id, amount, int(have or 0))

    async def reserve_many(self, reservations: Sequence[tuple[int, str, int]]) -> set[str]:
        if any(amount <= 0 for _, _, amount in reservations):
            raise ValueError("a batched reservation is > 0")
        if not reservations:
            return set()
        owners, ids, amounts = (list(c) for c in zip(*reservations, strict=True))
        async with driver(self._engine) as conn:
            rows = await conn.fetch(RESERVE_MANY, owners, ids, amounts, self.hold_s)
        return {r[0] for r in rows}

    async def settle(self, request_id: str, actual: int) -> None:
        if actual < 0:
            raise ValueError("a cost is >= 0")
        async with driver(self._engine) as conn:
            await conn.execute(SETTLE, request_id, actual)

    async def settle_many(self, settlements: Sequence[tuple[str, int]]) -> None:
        last = dict(settlements)  # one request settled twice in a batch: the last one holds
        if not last:
            return
        if any(a < 0 for a in last.values()):
            raise ValueError("a cost is >= 0")
        async with driver(self._engine) as conn:
            await conn.execute(SETTLE_MANY, list(last), list(last.values()))

    async def release(self, request_id: str) -> None:
        async with driver(self._engine) as conn:
            await conn.execute(RELEASE, request_id)

    async def available(self, account_id: int) -> int:
        async with driver(self._engine) as conn:
            return int(await conn.fetchval(AVAILABLE, account_id) or 0)


@dataclass
class _Held:
    account_id: int
    amount: int


class InMemoryBudgets:
    """The test double: same contract; `balances` are set by the test (credit top-ups)."""

    def __init__(self, balances: dict[int, int] | None = None) -> None:
        self.balances: dict[int, int] = dict(balances or {})
        self.held: dict[str, _Held] = {}
        self._lock = asyncio.Lock()

    def _held_by(self, account_id: int) -> int:
        return sum(h.amount for h in self.held.values() if h.account_id == account_id)

    async def reserve(self, account_id: int, request_id: str, amount: int) -> None:
        if amount == 0:
            return
        async with self._lock:
            have = self.balances.get(account_id, 0) - self._held_by(account_id)
            if have < amount:
                raise InsufficientCredit(account_id, amount, have)
            self.held[request_id] = _Held(account_id, amount)

    async def settle(self, request_id: str, actual: int) -> None:
        async with self._lock:
            if request_id in self.held:
                self.held[request_id].amount = actual

    async def reserve_many(self, reservations: Sequence[tuple[int, str, int]]) -> set[str]:
        held: set[str] = set()
        for account_id, request_id, amount in reservations:
            try:
                await self.reserve(account_id, request_id, amount)
            except InsufficientCredit:
                continue
            held.add(request_id)
        return held

    async def settle_many(self, settlements: Sequence[tuple[str, int]]) -> None:
        for request_id, actual in settlements:
            await self.settle(request_id, actual)

    async def release(self, request_id: str) -> None:
        async with self._lock:
            self.held.pop(request_id, None)

    def post(self, request_id: str) -> None:
        """What posting does: the charge leaves the balance, the hold goes."""
        h = self.held.pop(request_id, None)
        if h is not None:
            self.balances[h.account_id] = self.balances.get(h.account_id, 0) - h.amount

    async def available(self, account_id: int) -> int:
        return self.balances.get(account_id, 0) - self._held_by(account_id)
