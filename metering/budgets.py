"""Budgets: reserve a request's most possible cost before serving, settle it after.

A consumer's spendable credit is `balance - held` of its ledger account. `reserve` is one
conditional UPDATE (`... WHERE balance - held >= amount`): Postgres row locking serialises
concurrent reservations from any number of gateway processes, so the held total never
exceeds the balance. `settle` replaces the estimate by the actual cost, which the estimate
bounds (it prices max_tokens), so an account can overspend by at most one request's
reservation. The posting worker deletes an event's reservation in the same transaction that
debits its charge, so the charge is never counted twice nor missed in between.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from sqlalchemy.ext.asyncio import AsyncEngine

from metering.pg import driver


class InsufficientCredit(Exception):
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

    async def settle(self, request_id: str, actual: int) -> None:
        """The request cost `actual`: hold that until its usage event posts."""
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
INSERT INTO budget_reservations (request_id, account_id, amount)
SELECT $3, id, $2 FROM acct
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
RELEASE = """
WITH gone AS (DELETE FROM budget_reservations WHERE request_id = $1 RETURNING account_id, amount)
UPDATE ledger_accounts a SET held = a.held - gone.amount FROM gone WHERE a.id = gone.account_id
"""
AVAILABLE = "SELECT balance - held FROM ledger_accounts WHERE kind = 'consumer' AND owner_id = $1"


class PostgresBudgets:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def reserve(self, account_id: int, request_id: str, amount: int) -> None:
        if amount < 0:
            raise ValueError("a reservation is >= 0")
        if amount == 0:
            return  # a free request (e.g. an unpriced model) needs no credit and holds none
        async with driver(self._engine) as conn, conn.transaction():
            got = await conn.fetchval(RESERVE, account_id, amount, request_id)
            if got is None:
                have = await conn.fetchval(AVAILABLE, account_id)
                raise InsufficientCredit(account_id, amount, int(have or 0))

    async def settle(self, request_id: str, actual: int) -> None:
        if actual < 0:
            raise ValueError("a cost is >= 0")
        async with driver(self._engine) as conn, conn.transaction():
            await conn.execute(SETTLE, request_id, actual)

    async def release(self, request_id: str) -> None:
        async with driver(self._engine) as conn, conn.transaction():
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
