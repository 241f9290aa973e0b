"""Expired budget reservations are released: no hold outlives its request by much.

A reservation is normally removed by the posting worker, in the transaction that debits the
request's charge. A request that never wrote a usage record (the gateway was killed or ran
out of memory, its usage write failed) has no event to post, so nothing would ever remove its
reservation: the account's credit stays held, and once enough has leaked every request gets
402. `HoldSweeper` releases the reservations past their `expires_at` that have no usage event
waiting to post (none was ever written, or it was posted or set aside without releasing). A
reservation whose usage event is still queued is left alone: the posting worker releases it
when it debits the charge.

Concurrency: the sweeper, the posting worker and the gateway's settles may reach the same
reservation at once; exactly one of them removes it, and only the one that removed it lowers
the account's `held`, by what it removed (`DELETE ... RETURNING`), so `held` stays the sum of
the reservations that remain. Locks are taken in the posting worker's order, accounts (by id)
before reservations, and the sweeper skips a reservation someone else has locked (`SKIP
LOCKED`) instead of waiting for it: no deadlock with posting, settling or reserving.

A reservation released early (a request that outran `expires_at`) costs nothing but its
guard: its settle finds no row and changes nothing, and its charge still posts in full.

One bad account stops nobody else's release: when a batch fails because of its data (an
account whose `held` no longer covers its reservations violates `held >= 0`, SQLSTATE class
23), the sweep goes on account by account and sets the failing accounts aside, logged; the
audit reports them (held credit differs from open reservations, stale holds). A failure that
is not the data's (the database is down) ends the sweep; the next period tries again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from core.sqlstate import blames_the_data, describe, is_transient
from metering import metrics
from metering.pg import driver

log = logging.getLogger(__name__)

# What "expired and not going to be posted" means, shared by the statements below and the
# audit: past `expires_at`, and no usage event of the request waits in the posting queue.
EXPIRED = """
    b.expires_at < now()
    AND NOT EXISTS (SELECT 1 FROM usage_unposted q WHERE q.event_id = b.request_id)
"""
# The accounts of the oldest expired holds, locked in id order (the posting worker's order):
# all but the accounts set aside ($2), or only one ($3).
LOCK_ACCOUNTS = f"""
SELECT a.id FROM ledger_accounts a
WHERE a.id IN (
    SELECT b.account_id FROM budget_reservations b
    WHERE {EXPIRED} AND b.account_id <> ALL($2::bigint[])
      AND ($3::bigint IS NULL OR b.account_id = $3::bigint)
    ORDER BY b.expires_at LIMIT $1
)
ORDER BY a.id FOR UPDATE
"""  # noqa: S608 (fixed SQL fragments, no input)
# The accounts that have expired holds, for sweeping one by one.
EXPIRED_ACCOUNTS = f"""
SELECT DISTINCT b.account_id FROM budget_reservations b
WHERE {EXPIRED} AND b.account_id <> ALL($1::bigint[])
"""  # noqa: S608 (fixed SQL fragments, no input)
# Those accounts' expired holds (re-checked on a fresh snapshot; rows someone else holds a
# lock on are skipped), removed, and the accounts' held lowered by exactly what was removed.
RELEASE_EXPIRED = f"""
WITH stale AS (
    SELECT b.request_id FROM budget_reservations b
    WHERE b.account_id = ANY($1::bigint[]) AND {EXPIRED}
    ORDER BY b.expires_at LIMIT $2
    FOR UPDATE OF b SKIP LOCKED
), gone AS (
    DELETE FROM budget_reservations b USING stale WHERE b.request_id = stale.request_id
    RETURNING b.account_id, b.amount
), per_account AS (
    SELECT account_id, sum(amount) AS amount FROM gone GROUP BY account_id
), lowered AS (
    UPDATE ledger_accounts a SET held = a.held - p.amount
    FROM per_account p WHERE a.id = p.account_id
    RETURNING a.id
)
SELECT count(*), coalesce(sum(amount), 0)::bigint FROM gone
"""  # noqa: S608 (fixed SQL fragments, no input)


@dataclass(frozen=True, slots=True)
class Swept:
    holds: int
    """Reservations released."""
    amount: int
    """Micro-credits they held."""

    def __add__(self, other: Swept) -> Swept:
        return Swept(self.holds + other.holds, self.amount + other.amount)


class HoldSweeper:
    def __init__(self, engine: AsyncEngine, *, batch_size: int = 1000) -> None:
        if batch_size < 1:
            raise ValueError("a sweep batch holds at least one reservation")
        self._engine = engine
        self.batch_size = batch_size

    async def sweep_batch(self, *, skip: Sequence[int] = (), only: int | None = None) -> Swept:
        """Release up to `batch_size` expired holds, in one transaction; not those of the
        ledger accounts in `skip`; only those of account `only` if given."""
        async with driver(self._engine) as conn, conn.transaction():
            rows = await conn.fetch(LOCK_ACCOUNTS, self.batch_size, list(skip), only)
            accounts = [r[0] for r in rows]
            if not accounts:
                return Swept(0, 0)
            n, amount = await conn.fetchrow(RELEASE_EXPIRED, accounts, self.batch_size)
        done = Swept(int(n), int(amount))
        if done.holds:  # counted once committed
            metrics.budget_holds_expired(done.holds, done.amount)
        return done

    async def sweep(self) -> Swept:
        """Release every hold expired now; returns how many and how much."""
        total = Swept(0, 0)
        broken: set[int] = set()
        while True:
            try:
                done = await self.sweep_batch(skip=sorted(broken))
            except Exception as e:
                if not blames_the_data(e):
                    raise
                done = await self._one_account_at_a_time(broken, e)
            total += done
            # A short batch is the last; so is an empty one (what is left is locked by
            # someone who is releasing it, or will be swept next time).
            if done.holds < self.batch_size:
                return total

    async def _one_account_at_a_time(self, broken: set[int], cause: BaseException) -> Swept:
        log.warning("a sweep of expired credit holds failed (%s); sweeping account by "
                    "account", describe(cause))  # fmt: skip
        async with driver(self._engine) as conn:
            accounts = [r[0] for r in await conn.fetch(EXPIRED_ACCOUNTS, sorted(broken))]
        total = Swept(0, 0)
        for account in sorted(accounts):
            try:
                while True:
                    done = await self.sweep_batch(only=account)
                    total += done
                    if done.holds < self.batch_size:
                        break
            except Exception as e:
                if not blames_the_data(e):
                    raise
                broken.add(account)
                log.error(
                    "expired credit holds of ledger account %d cannot be released: %s "
                    "(`royalty ledger check` names what is inconsistent)", account, describe(e),
                )  # fmt: skip
        return total

    async def run(self, every_s: float) -> None:
        """Sweep every `every_s` seconds until cancelled; a failed sweep is logged and tried
        again next period (whatever the error, a later sweep redoes the same work)."""
        while True:
            try:
                done = await self.sweep()
                if done.holds:
                    log.warning(
                        "released %d expired credit holds (%d micro-credits) whose requests "
                        "never recorded usage", done.holds, done.amount,
                    )  # fmt: skip
            except Exception as e:
                if is_transient(e):
                    log.warning("sweeping expired credit holds failed (%s); retrying in %g s",
                                describe(e), every_s)  # fmt: skip
                else:
                    log.exception("sweeping expired credit holds failed; retrying in %g s",
                                  every_s)  # fmt: skip
            await asyncio.sleep(every_s)
