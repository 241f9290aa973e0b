"""The double-entry ledger in Postgres: accounts, top-ups, reversals, penalties, invariants.

Every transaction is a set of entries summing to zero (checked by a deferred trigger at
COMMIT); entries are append-only (a trigger refuses UPDATE and DELETE); a correction is a new
transaction that negates another. `ledger_accounts.balance` is a cache of the sum of the
account's entries, updated in the same transaction as the entries (`version` counts updates).

Sign convention: an entry credits an account when positive. A consumer's balance is its
spendable credit; `external` is the outside world (top-ups are paid in from it, so its
balance is minus all credit ever sold).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from core.errors import Conflict
from metering import metrics
from metering.money import month_start, next_month
from metering.pg import driver
from metering.pricing import Payees

SYSTEM_KINDS = ("operator", "treasury", "withheld", "external")
OWNED_KINDS = ("consumer", "contributor", "adapter_owner")

# Transaction-scoped advisory lock: postings, penalties and reversals take it shared, a month
# close takes it exclusive, so a close sees no half-posted batch and nothing posts into a
# month while it closes.
CLOSE_LOCK_KEY = 0x526F79616C7479  # "Royalty"
LOCK_SHARED = "SELECT pg_advisory_xact_lock_shared($1)"
LOCK_EXCLUSIVE = "SELECT pg_advisory_xact_lock($1)"

SELECT_SYSTEM = "SELECT kind, id FROM ledger_accounts WHERE owner_id IS NULL"
ENSURE_OWNED = """
INSERT INTO ledger_accounts (kind, owner_id)
SELECT $1, o FROM unnest($2::bigint[]) AS o
ON CONFLICT (kind, owner_id) DO NOTHING
"""
SELECT_OWNED = (
    "SELECT owner_id, id FROM ledger_accounts WHERE kind = $1 AND owner_id = ANY($2::bigint[])"
)
SELECT_CLOSED_MONTHS = "SELECT month FROM ledger_months"
INSERT_TXN = (
    "INSERT INTO ledger_transactions (kind, reverses, memo) VALUES ($1, $2, $3) RETURNING id"
)
INSERT_ENTRIES = """
INSERT INTO ledger_entries (txn_id, account_id, month, amount)
SELECT $1, a, m, x FROM unnest($2::bigint[], $3::date[], $4::bigint[]) AS e(a, m, x)
"""
# Lock the touched balance rows in id order: concurrent posters never deadlock.
# NO KEY UPDATE: balances change, keys never do; it does not conflict with the KEY SHARE
# locks that other transactions' foreign-key checks (ledger_entries -> ledger_accounts) take.
LOCK_ACCOUNTS = (
    "SELECT id FROM ledger_accounts WHERE id = ANY($1::bigint[]) ORDER BY id FOR NO KEY UPDATE"
)
APPLY_BALANCES = """
UPDATE ledger_accounts a SET balance = a.balance + d.delta, version = a.version + 1
FROM unnest($1::bigint[], $2::bigint[]) AS d(id, delta) WHERE a.id = d.id
"""
SELECT_TXN_ENTRIES = "SELECT account_id, month, amount FROM ledger_entries WHERE txn_id = $1"
SELECT_TXN = "SELECT kind FROM ledger_transactions WHERE id = $1"
SELECT_REVERSED = "SELECT 1 FROM ledger_transactions WHERE reverses = $1"
SELECT_BALANCE = """
SELECT balance, held, version FROM ledger_accounts WHERE kind = $1 AND owner_id IS NOT DISTINCT FROM $2
"""
INSERT_PENALTY = (
    "INSERT INTO penalties (contributor_id, adapter, reason) VALUES ($1, $2, $3) RETURNING id"
)
SELECT_PENALTIES = "SELECT contributor_id, adapter, reason FROM penalties ORDER BY id"
# A penalised contributor's credits of one open month from matching adapters ('' = all).
PENALTY_CREDITS = """
SELECT coalesce(sum(s.amount), 0)
FROM usage_postings p, unnest(p.payees, p.amounts) AS s(payee, amount)
WHERE p.month = $1 AND s.payee = $2 AND ($3 = '' OR p.adapter = $3)
"""
ALREADY_REVERSED = """
SELECT coalesce(sum(amount), 0) FROM withheld_items
WHERE month = $1 AND beneficiary_id = $2 AND reason LIKE 'penalty reversal%'
"""
MONTH_BALANCE = (
    "SELECT coalesce(sum(amount), 0) FROM ledger_entries WHERE month = $1 AND account_id = $2"
)
OPEN_POSTED_MONTHS = """
SELECT DISTINCT month FROM usage_postings p
WHERE NOT EXISTS (SELECT 1 FROM ledger_months c WHERE c.month = p.month) ORDER BY month
"""
# What open holds keep back now: hold transactions not reversed (the holds gauge).
OPEN_HOLDS_TOTAL = """
SELECT coalesce(sum(w.amount), 0) FROM withheld_items w
JOIN ledger_transactions t ON t.id = w.txn_id AND t.kind = 'hold'
WHERE NOT EXISTS (SELECT 1 FROM ledger_transactions r WHERE r.reverses = t.id)
"""
# Idempotent top-ups (`topup_requests`): a key is claimed, then settled with its result, in the
# top-up's own transaction; a second claim of the same key waits for the first to commit.
TOPUP_KEY_RETENTION = dt.timedelta(days=7)
"""How long a top-up's idempotency key replays its first result (at least 24 h, as Stripe)."""
SWEEP_TOPUP_KEYS = "DELETE FROM topup_requests WHERE created_at < now() - $1::interval"
CLAIM_TOPUP_KEY = """
INSERT INTO topup_requests (idempotency_key, request_sha256, account_id, amount)
VALUES ($1, $2, $3, $4) ON CONFLICT (idempotency_key) DO NOTHING RETURNING 1
"""
SELECT_TOPUP_KEY = (
    "SELECT request_sha256, txn_id, available FROM topup_requests WHERE idempotency_key = $1"
)
SETTLE_TOPUP_KEY = (
    "UPDATE topup_requests SET txn_id = $2, available = $3 WHERE idempotency_key = $1"
)
SELECT_AVAILABLE = "SELECT balance - held FROM ledger_accounts WHERE id = $1"
INSERT_WITHHELD = """
INSERT INTO withheld_items (txn_id, month, beneficiary_id, amount, reason)
SELECT $1, m, b, x, r FROM unnest($2::date[], $3::bigint[], $4::bigint[], $5::text[]) AS w(m, b, x, r)
"""


class LedgerError(Exception):
    pass


class IdempotencyConflict(LedgerError, Conflict):
    """An idempotency key already used for a different request."""


@dataclass(frozen=True, slots=True)
class TopUp:
    txn: int
    available: int
    """The consumer's available credit (balance minus held) right after the top-up."""
    replayed: bool
    """True when this is the first request's result again (nothing was credited now)."""


def open_month_for(month: dt.date, closed: set[dt.date]) -> dt.date:
    """The month an event of `month` posts to: itself, or the first open month after it."""
    while month in closed:
        month = next_month(month)
    return month


async def system_payees(conn: asyncpg.Connection) -> tuple[Payees, int]:
    ids = {r["kind"]: r["id"] for r in await conn.fetch(SELECT_SYSTEM)}
    return Payees(
        treasury=ids["treasury"], operator=ids["operator"], withheld=ids["withheld"]
    ), ids["external"]


async def ensure_accounts(
    conn: asyncpg.Connection, kind: str, owners: Iterable[int]
) -> dict[int, int]:
    """Ledger account ids of `kind` for these gateway accounts, created if new."""
    wanted = sorted(set(owners))
    if not wanted:
        return {}
    found = {r["owner_id"]: r["id"] for r in await conn.fetch(SELECT_OWNED, kind, wanted)}
    missing = [o for o in wanted if o not in found]
    if missing:
        await conn.execute(ENSURE_OWNED, kind, missing)
        found.update(
            {r["owner_id"]: r["id"] for r in await conn.fetch(SELECT_OWNED, kind, missing)}
        )
    return found


async def ensure_accounts_committed(
    conn: asyncpg.Connection, engine: AsyncEngine, kind: str, owners: Iterable[int]
) -> dict[int, int]:
    """`ensure_accounts` for a caller inside a long transaction: missing accounts are created
    and committed on another connection first. Two posters creating the same new accounts
    inside their batches would each wait for the other's uncommitted rows (a deadlock); an
    empty ledger account committed early is harmless."""
    wanted = sorted(set(owners))
    if not wanted:
        return {}
    found = {r["owner_id"]: r["id"] for r in await conn.fetch(SELECT_OWNED, kind, wanted)}
    missing = [o for o in wanted if o not in found]
    if missing:
        async with driver(engine) as other:
            await other.execute(ENSURE_OWNED, kind, missing)
        found.update(
            {r["owner_id"]: r["id"] for r in await conn.fetch(SELECT_OWNED, kind, missing)}
        )
    return found


async def post_entries(
    conn: asyncpg.Connection,
    txn_id: int,
    entries: Sequence[tuple[int, dt.date, int]],
    lock_also: Iterable[int] = (),
) -> None:
    """Append entries (account, month, amount) to `txn_id` and move the cached balances.
    Zero amounts are dropped; the caller's transaction must sum to zero. The touched balance
    rows, and `lock_also` (rows the caller updates next), are locked in id order first."""
    rows = [e for e in entries if e[2] != 0]
    deltas: dict[int, int] = {}
    for a, _, x in rows:
        deltas[a] = deltas.get(a, 0) + x
    ids = sorted(deltas)
    # Lock before the entries go in: their foreign keys take KEY SHARE locks on these rows,
    # which must not be held by us in an order of the INSERT's choosing.
    locked = sorted(set(ids) | set(lock_also))
    if locked:
        await conn.execute(LOCK_ACCOUNTS, locked)
    if not rows:
        return
    await conn.execute(
        INSERT_ENTRIES,
        txn_id,
        [a for a, _, _ in rows],
        [m for _, m, _ in rows],
        [x for _, _, x in rows],
    )
    await conn.execute(APPLY_BALANCES, ids, [deltas[i] for i in ids])


WithheldItem = tuple[dt.date, int, int, str]
"""(month, beneficiary ledger account, amount, reason)"""


async def post_withholding(
    conn: asyncpg.Connection,
    kind: str,
    memo: str,
    items: Sequence[WithheldItem],
    withheld_account: int,
    *,
    always: bool = False,
) -> int | None:
    """One transaction moving each item's amount from its beneficiary to `withheld`, in its
    month, with the item's reason in `withheld_items`. Returns the transaction (None when
    there is nothing to move, unless `always`)."""
    if not items and not always:
        return None
    txn = int(await conn.fetchval(INSERT_TXN, kind, None, memo))
    entries = [(b, m, -x) for m, b, x, _ in items] + [
        (withheld_account, m, x) for m, _, x, _ in items
    ]
    await post_entries(conn, txn, entries)
    if items:
        await conn.execute(
            INSERT_WITHHELD, txn, [i[0] for i in items], [i[1] for i in items],
            [i[2] for i in items], [i[3] for i in items],
        )  # fmt: skip
    return txn


@dataclass(frozen=True, slots=True)
class Balance:
    balance: int
    held: int
    version: int

    @property
    def available(self) -> int:
        return self.balance - self.held


class PostgresLedger:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def top_up(self, account_id: int, micros: int, memo: str = "top-up") -> int:
        """Credit a consumer account from `external`; returns the transaction id."""
        if micros <= 0:
            raise LedgerError("a top-up must be positive")
        async with driver(self._engine) as conn, conn.transaction():
            await conn.execute(LOCK_SHARED, CLOSE_LOCK_KEY)
            txn, _ = await _post_top_up(conn, account_id, micros, memo)
        metrics.credits_minted("consumer", micros)  # counted once committed
        return txn

    async def top_up_once(
        self, key: str, request_sha256: bytes, account_id: int, micros: int, memo: str
    ) -> TopUp:
        """`top_up`, at most once per idempotency `key`: the key's row and the top-up commit in
        one transaction. The same key again with the same request (`request_sha256`, the
        caller's digest of what was asked) returns the first result, `replayed`; with another
        request it raises `IdempotencyConflict`. A concurrent request with the same key waits
        for the first to commit (the key's unique index) and then replays it. Keys are kept
        `TOPUP_KEY_RETENTION`, then swept."""
        if micros <= 0:
            raise LedgerError("a top-up must be positive")
        async with driver(self._engine) as conn, conn.transaction():
            await conn.execute(LOCK_SHARED, CLOSE_LOCK_KEY)
            await conn.execute(SWEEP_TOPUP_KEYS, TOPUP_KEY_RETENTION)
            claimed = await conn.fetchval(CLAIM_TOPUP_KEY, key, request_sha256, account_id, micros)
            if claimed is None:
                first = await conn.fetchrow(SELECT_TOPUP_KEY, key)
                if first["request_sha256"] != request_sha256:
                    raise IdempotencyConflict(
                        "this idempotency key was used with a different request"
                    )
                return TopUp(first["txn_id"], first["available"], replayed=True)
            txn, consumer = await _post_top_up(conn, account_id, micros, memo)
            available = int(await conn.fetchval(SELECT_AVAILABLE, consumer))
            await conn.execute(SETTLE_TOPUP_KEY, key, txn, available)
        metrics.credits_minted("consumer", micros)  # counted once committed
        return TopUp(txn, available, replayed=False)

    async def reverse(self, txn_id: int, memo: str) -> int:
        """A new transaction negating `txn_id`, in the open month (a closed month never
        changes); a transaction is reversed at most once."""
        async with driver(self._engine) as conn, conn.transaction():
            await conn.execute(LOCK_SHARED, CLOSE_LOCK_KEY)
            kind = await conn.fetchval(SELECT_TXN, txn_id)
            if kind is None:
                raise LedgerError(f"no transaction {txn_id}")
            if kind == "usage":
                raise LedgerError("usage batches are corrected by adjustments, not reversed whole")
            if await conn.fetchval(SELECT_REVERSED, txn_id):
                raise LedgerError(f"transaction {txn_id} is already reversed")
            closed = await _closed(conn)
            rows = await conn.fetch(SELECT_TXN_ENTRIES, txn_id)
            new = int(await conn.fetchval(INSERT_TXN, "reversal", txn_id, memo))
            await post_entries(
                conn,
                new,
                [(r["account_id"], open_month_for(r["month"], closed), -r["amount"]) for r in rows],
            )
        if kind == "hold":  # a hold released after review
            async with driver(self._engine) as conn:
                metrics.hold_released(int(await conn.fetchval(OPEN_HOLDS_TOTAL)))
        return new

    async def penalize(self, contributor_id: int, adapter: str, reason: str) -> tuple[int, int]:
        """Withhold a contributor's future credits (from `adapter`, or all with '') and reverse
        their credits of every open month into `withheld`. Returns (penalty id, reversed)."""
        if not reason.strip():
            raise LedgerError("a penalty needs a reason the contributor can read")
        async with driver(self._engine) as conn, conn.transaction():
            await conn.execute(LOCK_SHARED, CLOSE_LOCK_KEY)
            penalty = int(await conn.fetchval(INSERT_PENALTY, contributor_id, adapter, reason))
            payees, _ = await system_payees(conn)
            ledger_id = (await ensure_accounts(conn, "contributor", [contributor_id]))[
                contributor_id
            ]
            withheld: list[WithheldItem] = []
            for r in await conn.fetch(OPEN_POSTED_MONTHS):
                month = r["month"]
                earned = int(await conn.fetchval(PENALTY_CREDITS, month, ledger_id, adapter))
                earned -= int(await conn.fetchval(ALREADY_REVERSED, month, ledger_id))
                amount = min(earned, int(await conn.fetchval(MONTH_BALANCE, month, ledger_id)))
                if amount > 0:
                    withheld.append(
                        (month, ledger_id, amount, f"penalty reversal #{penalty}: {reason}")
                    )
            memo = f"penalty #{penalty}: {reason}"
            await post_withholding(conn, "penalty", memo, withheld, payees.withheld)
            reversed_ = sum(w[2] for w in withheld)
        metrics.penalty_applied(reversed_)
        return penalty, reversed_

    async def balance(self, kind: str, owner_id: int | None) -> Balance:
        async with driver(self._engine) as conn:
            row = await conn.fetchrow(SELECT_BALANCE, kind, owner_id)
        return (
            Balance(0, 0, 0)
            if row is None
            else Balance(row["balance"], row["held"], row["version"])
        )


async def _post_top_up(
    conn: asyncpg.Connection, account_id: int, micros: int, memo: str
) -> tuple[int, int]:
    """The top-up's balanced transaction (consumer +micros, external -micros) in the open
    month, inside the caller's transaction; returns (transaction, consumer ledger account)."""
    _, external = await system_payees(conn)
    consumer = (await ensure_accounts(conn, "consumer", [account_id]))[account_id]
    month = open_month_for(month_start(dt.datetime.now(dt.UTC)), await _closed(conn))
    txn = int(await conn.fetchval(INSERT_TXN, "topup", None, memo))
    await post_entries(conn, txn, [(consumer, month, micros), (external, month, -micros)])
    return txn, consumer


async def _closed(conn: asyncpg.Connection) -> set[dt.date]:
    return {r["month"] for r in await conn.fetch(SELECT_CLOSED_MONTHS)}


async def penalties(conn: asyncpg.Connection) -> dict[tuple[int, str], str]:
    """(contributor account id, adapter or '') -> reason."""
    return {
        (r["contributor_id"], r["adapter"]): r["reason"] for r in await conn.fetch(SELECT_PENALTIES)
    }
