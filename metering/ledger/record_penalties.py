"""Penalties on one training record: its future credits are withheld and the open months'
credits that came from it are reversed to `withheld`, with a reason its contributor reads.

What a record earned from one event is not a ledger fact: the ledger pays contributors. The
rule (docs/payouts.md, "Per-record penalties"): the response's stored attribution names the
record in `top_records` with its weight w_r (parts per million of the response) and its
contributor c with `weight_ppm` W_c (w_r from the stored `weight`, exactly parts / 10**6, or
its `weight_ppm` where stored); the record's part of what c was paid for the event is

    withheld = floor(paid_to_c × w_r / W_c)

(c's records and c's pooled part together make W_c, so this never exceeds what c was paid;
the floor leaves the odd micro-credit with the contributor). An event whose attribution does
not name the record (a baseline response, or the record outside the response's top records)
gives the record no share that can be told apart, and nothing is withheld for it.

Applied in three places with the same rule: the posting worker (future credits), the penalty
itself (open months' credits, reversed once: a record is penalised at most once), and
influence adjustments (a re-split does not hand the record's part back).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from metering import metrics
from metering.ledger.book import (
    CLOSE_LOCK_KEY,
    LOCK_EXCLUSIVE,
    LedgerError,
    WithheldItem,
    ensure_accounts,
    post_withholding,
    system_payees,
)
from metering.pg import driver
from metering.pricing import Split

INSERT_RECORD_PENALTY = """
INSERT INTO record_penalties (record_id, contributor_id, reason) VALUES ($1, $2, $3)
ON CONFLICT (record_id) DO NOTHING RETURNING id
"""
SELECT_RECORD_PENALTY = "SELECT id FROM record_penalties WHERE record_id = $1"
SELECT_RECORD_PENALTIES = "SELECT id, record_id, contributor_id, reason FROM record_penalties"
# The penalised records named by these events' attribution, with the record's weight and its
# contributor's integer weight in the same response.
RECORD_SHARES = """
SELECT e.request_id, pr.record_id,
       coalesce((t ->> 'weight_ppm')::bigint,
                round((t ->> 'weight')::numeric * 1000000)::bigint, 0) AS record_ppm,
       (SELECT (c ->> 'weight_ppm')::bigint
        FROM jsonb_array_elements(e.attribution -> 'contributors') c
        WHERE (c ->> 'id')::bigint = pr.contributor_id) AS contributor_ppm
FROM usage_events e
CROSS JOIN LATERAL jsonb_array_elements(CASE jsonb_typeof(e.attribution -> 'top_records')
                                        WHEN 'array' THEN e.attribution -> 'top_records' END) t
JOIN unnest($2::bigint[], $3::bigint[]) AS pr(record_id, contributor_id)
  ON (t ->> 'id')::bigint = pr.record_id
WHERE e.request_id = ANY($1::text[])
"""
# Open months' postings naming the record, with what they paid its contributor.
OPEN_RECORD_CREDITS = """
SELECT p.event_id, p.month, s.amount AS paid
FROM usage_postings p
JOIN usage_events e ON e.request_id = p.event_id
CROSS JOIN LATERAL unnest(p.payees, p.amounts) AS s(payee, amount)
WHERE NOT EXISTS (SELECT 1 FROM ledger_months m WHERE m.month = p.month)
  AND s.payee = $2
  AND e.attribution -> 'top_records' @> jsonb_build_array(jsonb_build_object('id', $1::bigint))
ORDER BY p.event_id
"""
MONTH_BALANCE = (
    "SELECT coalesce(sum(amount), 0) FROM ledger_entries WHERE month = $1 AND account_id = $2"
)
SELECT_CONTRIBUTOR_LEDGER = (
    "SELECT id FROM ledger_accounts WHERE kind = 'contributor' AND owner_id = ANY($1::bigint[])"
)


@dataclass(frozen=True, slots=True)
class RecordPenalty:
    id: int
    record_id: int
    contributor_id: int
    reason: str

    def label(self) -> str:
        return f"penalty (record {self.record_id}): {self.reason}"


def record_part(paid: int, record_ppm: int, contributor_ppm: int) -> int:
    """The record's part of `paid` (see the module docstring); 0 when unknown."""
    if paid <= 0 or record_ppm <= 0 or contributor_ppm <= 0:
        return 0
    return min(paid, paid * record_ppm // contributor_ppm)


async def active(conn: asyncpg.Connection) -> list[RecordPenalty]:
    return [RecordPenalty(**dict(r)) for r in await conn.fetch(SELECT_RECORD_PENALTIES)]


async def record_shares(
    conn: asyncpg.Connection, event_ids: Sequence[str], penalties: Sequence[RecordPenalty]
) -> dict[str, list[tuple[RecordPenalty, int, int]]]:
    """event id -> [(penalty, record ppm, contributor ppm)] for the events naming a
    penalised record (one query for all of them)."""
    if not penalties or not event_ids:
        return {}
    by_record = {p.record_id: p for p in penalties}
    out: dict[str, list[tuple[RecordPenalty, int, int]]] = {}
    for r in await conn.fetch(
        RECORD_SHARES, list(event_ids), [p.record_id for p in penalties],
        [p.contributor_id for p in penalties],
    ):  # fmt: skip
        out.setdefault(r["request_id"], []).append(
            (by_record[r["record_id"]], int(r["record_ppm"]), int(r["contributor_ppm"] or 0))
        )
    return out


def withhold_records(
    payees: list[int],
    amounts: list[int],
    named: Sequence[tuple[RecordPenalty, int, int]],
    contributors: Mapping[int, int],
    withheld_account: int,
) -> list[tuple[int, int, RecordPenalty]]:
    """One event's split, in place: each penalised record's part, computed from what its
    contributor was paid before any of them moved, goes to `withheld_account`. Returns
    (contributor ledger account, amount, penalty) for what moved."""
    paid_before = dict(zip(payees, amounts, strict=True))
    moved_out = []
    for pen, rppm, cppm in named:
        ledger = contributors.get(pen.contributor_id)
        if ledger is None:
            continue
        part = record_part(paid_before.get(ledger, 0), rppm, cppm)
        moved = withhold_from_split(payees, amounts, ledger, withheld_account, part)
        if moved:
            moved_out.append((ledger, moved, pen))
    return moved_out


def withhold_from_split(
    payees: list[int], amounts: list[int], ledger: int, withheld_account: int, part: int
) -> int:
    """Move up to `part` of `ledger`'s cell of one split to `withheld_account`, in place;
    returns what moved (the split's sum is unchanged)."""
    if ledger not in payees or part <= 0:
        return 0
    i = payees.index(ledger)
    moved = min(part, amounts[i])
    amounts[i] -= moved
    if amounts[i] == 0:
        del payees[i], amounts[i]
    if withheld_account in payees:
        amounts[payees.index(withheld_account)] += moved
    else:
        payees.append(withheld_account)
        amounts.append(moved)
    return moved


async def withhold_in_batch(
    conn: asyncpg.Connection,
    rows: list[tuple[object, ...]],
    sums: dict[tuple[int, dt.date], int],
    contributors: Mapping[int, int],
    withheld_account: int,
) -> list[tuple[dt.date, int, int, str]]:
    """The posting worker's part: withhold penalised records' parts of a computed batch
    (posting rows, per-(account, month) sums, both changed in place); returns the withheld
    items (month, beneficiary, amount, reason)."""
    penalties = await active(conn)
    if not penalties:
        return []
    by_id = {str(r[0]): r for r in rows if r[5]}  # events with an adapter
    items: list[tuple[dt.date, int, int, str]] = []
    for event_id, named in (await record_shares(conn, list(by_id), penalties)).items():
        row = by_id[event_id]
        payees, amounts, month = row[9], row[10], row[2]
        assert isinstance(payees, list) and isinstance(amounts, list)
        assert isinstance(month, dt.date)
        for ledger, moved, pen in withhold_records(
            payees, amounts, named, contributors, withheld_account
        ):
            sums[(ledger, month)] = sums.get((ledger, month), 0) - moved
            sums[(withheld_account, month)] = sums.get((withheld_account, month), 0) + moved
            items.append((month, ledger, moved, pen.label()))
    return items


async def withhold_in_split(
    conn: asyncpg.Connection,
    event_id: str,
    split: Split,
    contributors: Mapping[int, int],
    withheld_account: int,
) -> None:
    """An influence adjustment's part: the re-split of `event_id` withholds penalised records'
    parts too (by the record's fraction of its contributor in the stored attribution), so
    re-attribution never hands them back."""
    named = (await record_shares(conn, [event_id], await active(conn))).get(event_id, [])
    for ledger, moved, pen in withhold_records(
        split.payees, split.amounts, named, contributors, withheld_account
    ):
        split.withheld.append((ledger, moved, pen.label()))


async def penalize_record(
    engine: AsyncEngine, record_id: int, contributor_id: int, reason: str
) -> tuple[int, int]:
    """Penalise a record (of `contributor_id`, as attribution knows it): its future credits
    are withheld and the open months' credits from it reversed into `withheld`. Returns
    (penalty id, micro-credits reversed). A record is penalised once."""
    if not reason.strip():
        raise LedgerError("a penalty needs a reason the contributor can read")
    async with driver(engine) as conn, conn.transaction():
        # Exclusive: a batch in flight that read the penalties before this one committed
        # finishes first and its credits are reversed below; later batches see the penalty.
        await conn.execute(LOCK_EXCLUSIVE, CLOSE_LOCK_KEY)
        found = await conn.fetchval(INSERT_RECORD_PENALTY, record_id, contributor_id, reason)
        if found is None:
            existing = await conn.fetchval(SELECT_RECORD_PENALTY, record_id)
            raise LedgerError(f"record {record_id} is already penalised (penalty #{existing})")
        pen = RecordPenalty(int(found), record_id, contributor_id, reason)
        payees, _ = await system_payees(conn)
        ledger = (await ensure_accounts(conn, "contributor", [contributor_id]))[contributor_id]
        per_month: dict[dt.date, int] = {}
        credits = await conn.fetch(OPEN_RECORD_CREDITS, record_id, ledger)
        shares = await record_shares(conn, [r["event_id"] for r in credits], [pen])
        for r in credits:
            _, rppm, cppm = (shares.get(r["event_id"]) or [(pen, 0, 0)])[0]
            part = record_part(int(r["paid"]), rppm, cppm)
            if part:
                per_month[r["month"]] = per_month.get(r["month"], 0) + part
        items: list[WithheldItem] = []
        for month, part in sorted(per_month.items()):
            # never below zero: earlier reversals (a contributor penalty) may have taken it
            amount = min(part, int(await conn.fetchval(MONTH_BALANCE, month, ledger)))
            if amount > 0:
                why = f"penalty reversal #{pen.id} (record {record_id}): {reason}"
                items.append((month, ledger, amount, why))
        memo = f"record penalty #{pen.id}: {reason}"
        await post_withholding(conn, "penalty", memo, items, payees.withheld)
        reversed_ = sum(i[2] for i in items)
    metrics.penalty_applied(reversed_)
    return pen.id, reversed_
