"""Wash-traffic holds, applied when a month closes: earnings that look bought are withheld for
review instead of paid, each with a reason the payee can read.

Three heuristics (thresholds in `WashPolicy`, versioned; docs/payouts.md), judged per
(adapter, payer) over the events posted to the month being closed, in this order:

1. dominant payer: one payer made at least `dominant_ppm` of an adapter's revenue over at
   least `min_events` events: all of that payer's events on the adapter;
2. repeated prompts: a payer sent the same prompt digest (`usage_events.prompt_digest`, a
   keyed digest of the normalised prompt) to an adapter at least `repeat_min_events` times,
   and those repeats are at least `repeat_share_ppm` of the payer's events on the adapter:
   the repeated events;
3. bursts: some `burst_window_s` window holds at least `burst_min_events` of a payer's events
   on an adapter and at least `burst_factor` times the payer's median events per active
   minute there: the events inside such windows (an evenly paced heavy user has no window far
   above its own median).

The adapter owner's and contributors' shares of a flagged event (its `usage_postings` split)
move to `withheld` ("hold for review: ..."), capped by what the payee has in the month, in one
`hold` transaction of the month being closed. Each held event gets a `held_events` row (its
primary key): an event flagged by two heuristics is held once, by the first, and running the
holds again holds nothing more (the close itself is a no-op once the month is closed).
Releasing a hold after review is a reversing transaction (`PostgresLedger.reverse`), which
lands in the open month.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from metering.ledger.book import (
    OPEN_HOLDS_TOTAL,
    WithheldItem,
    post_withholding,
    system_payees,
)

DOMINANT_PAYERS = """
WITH per AS (
    SELECT adapter, payer_id, sum(charge) AS revenue, count(*) AS events
    FROM usage_postings WHERE month = $1 AND adapter <> '' GROUP BY adapter, payer_id
), total AS (
    SELECT adapter, sum(revenue) AS revenue, sum(events) AS events FROM per GROUP BY adapter
)
SELECT per.adapter, per.payer_id, per.revenue, total.revenue AS adapter_revenue
FROM per JOIN total USING (adapter)
WHERE total.events >= $2 AND total.revenue > 0 AND per.revenue * 1000000 >= $3 * total.revenue
ORDER BY per.adapter, per.payer_id
"""
EVENTS_OF_PAYER = """
SELECT event_id FROM usage_postings
WHERE month = $1 AND adapter = $2 AND payer_id = $3 AND charge > 0 ORDER BY event_id
"""
# One pass over the month's charged adapter events (hash aggregates, no sort) finds the
# candidates of both other rules: (adapter, payer, prompt digest) sent at least the repeat
# minimum (digests of NULL, from before they existed, never count), and (adapter, payer) with
# a window-long bucket holding at least half the burst minimum (a window spans at most two
# such buckets, so a window with the minimum has a bucket with half of it). Only candidates
# are looked at further, so a month of ordinary traffic costs this one pass.
CANDIDATES = """
SELECT p.adapter, p.payer_id, e.prompt_digest, GROUPING(e.prompt_digest) AS bucketed,
       count(*) AS n
FROM usage_postings p JOIN usage_events e ON e.request_id = p.event_id
WHERE p.month = $1 AND p.adapter <> '' AND p.charge > 0
GROUP BY GROUPING SETS (
    (p.adapter, p.payer_id, e.prompt_digest),
    (p.adapter, p.payer_id, date_bin($4::interval, e.started_at, timestamptz '2000-01-01'))
)
HAVING CASE WHEN GROUPING(e.prompt_digest) = 0
            THEN e.prompt_digest IS NOT NULL AND count(*) >= $2
            ELSE 2 * count(*) >= $3 END
"""
# Every charged event of the given (adapter, payer) pairs in the month.
EVENTS_OF_PAIRS = """
SELECT p.adapter, p.payer_id, p.event_id, e.prompt_digest
FROM usage_postings p JOIN usage_events e ON e.request_id = p.event_id
JOIN unnest($2::text[], $3::bigint[]) AS c(adapter, payer_id)
  ON c.adapter = p.adapter AND c.payer_id = p.payer_id
WHERE p.month = $1 AND p.charge > 0
"""
# For candidate pairs: a peak is an event whose trailing window [t - w, t] holds
# >= greatest(min, factor x median events per active minute) of the pair's events; an event
# is in a burst when a peak lies in [t, t + w] (it is inside that peak's window).
BURSTS = """
WITH ev AS MATERIALIZED (
    SELECT p.event_id, p.adapter, p.payer_id, e.started_at
    FROM usage_postings p JOIN usage_events e ON e.request_id = p.event_id
    JOIN unnest($5::text[], $6::bigint[]) AS c(adapter, payer_id)
      ON c.adapter = p.adapter AND c.payer_id = p.payer_id
    WHERE p.month = $1 AND p.charge > 0
), minutes AS (
    SELECT adapter, payer_id, count(*) AS n FROM ev
    GROUP BY adapter, payer_id, date_trunc('minute', started_at)
), typical AS (
    SELECT adapter, payer_id, percentile_disc(0.5) WITHIN GROUP (ORDER BY n) AS median
    FROM minutes GROUP BY adapter, payer_id HAVING sum(n) >= $2
), windowed AS (
    SELECT ev.event_id, ev.adapter, ev.payer_id, ev.started_at, t.median,
           count(*) OVER (PARTITION BY ev.adapter, ev.payer_id ORDER BY ev.started_at
                          RANGE BETWEEN $4::interval PRECEDING AND CURRENT ROW) AS recent
    FROM ev JOIN typical t USING (adapter, payer_id)
), flagged AS (
    SELECT *, recent >= greatest($2, $3 * median) AS peak FROM windowed
), spread AS (
    SELECT event_id, adapter, payer_id, median,
           bool_or(peak) OVER (PARTITION BY adapter, payer_id ORDER BY started_at
                               RANGE BETWEEN CURRENT ROW AND $4::interval FOLLOWING) AS in_burst,
           max(CASE WHEN peak THEN recent END) OVER (PARTITION BY adapter, payer_id) AS busiest
    FROM flagged
)
SELECT adapter, payer_id, median, busiest, array_agg(event_id ORDER BY event_id) AS event_ids
FROM spread WHERE in_burst
GROUP BY adapter, payer_id, median, busiest ORDER BY adapter, payer_id
"""
HELD_IN_MONTH = "SELECT event_id FROM held_events WHERE month = $1"
EARNED_FROM_EVENTS = """
SELECT s.payee, sum(s.amount) AS amount
FROM usage_postings p, unnest(p.payees, p.amounts) AS s(payee, amount)
WHERE p.event_id = ANY($1::text[])
  AND s.payee IN (SELECT id FROM ledger_accounts WHERE kind IN ('contributor', 'adapter_owner'))
GROUP BY s.payee ORDER BY s.payee
"""
MONTH_BALANCE = (
    "SELECT coalesce(sum(amount), 0) FROM ledger_entries WHERE month = $1 AND account_id = $2"
)
INSERT_HELD_EVENTS = """
INSERT INTO held_events (event_id, month, heuristic, txn_id)
SELECT e, $2, h, $3 FROM unnest($1::text[], $4::text[]) AS x(e, h)
"""


@dataclass(frozen=True, slots=True)
class WashPolicy:
    """Wash-traffic thresholds. Change a value, change `version` (it is named in every
    hold's reason, so a payee can tell which rules held their earnings)."""

    version: str = "royalty-wash/2"
    dominant_ppm: int = 800_000
    """A payer with at least this share of an adapter's monthly revenue (parts per million)."""
    min_events: int = 20
    """Adapters with fewer events in the month are not judged for a dominant payer."""
    repeat_min_events: int = 20
    """Repeated prompts: the same prompt digest sent at least this often to one adapter..."""
    repeat_share_ppm: int = 300_000
    """...and making at least this share of the payer's events on that adapter."""
    burst_min_events: int = 30
    """Bursts: at least this many of a payer's events on an adapter in one window..."""
    burst_factor: int = 10
    """...and at least this many times the payer's median events per active minute there."""
    burst_window_s: int = 60


@dataclass(frozen=True, slots=True)
class Flagged:
    heuristic: str
    reason: str
    event_ids: Sequence[str]


async def flagged_events(
    conn: asyncpg.Connection, month: dt.date, policy: WashPolicy
) -> list[Flagged]:
    """What each heuristic flags in `month`, in order (an event may appear more than once;
    `apply_holds` holds it once, for the first)."""
    out: list[Flagged] = []
    rule = f"wash-traffic check {policy.version}"
    for r in await conn.fetch(DOMINANT_PAYERS, month, policy.min_events, policy.dominant_ppm):
        share = int(r["revenue"]) * 100 // int(r["adapter_revenue"])
        reason = (
            f"hold for review: one payer made {share}% of adapter {r['adapter']!r}'s revenue "
            f"this month ({rule}: dominant payer)"
        )
        ids = [
            e["event_id"]
            for e in await conn.fetch(EVENTS_OF_PAYER, month, r["adapter"], r["payer_id"])
        ]
        out.append(Flagged("dominant_payer", reason, ids))
    window = dt.timedelta(seconds=policy.burst_window_s)
    repeats: list[tuple[str, int, str]] = []
    busy: set[tuple[str, int]] = set()
    for r in await conn.fetch(
        CANDIDATES, month, policy.repeat_min_events, policy.burst_min_events, window
    ):
        if r["bucketed"]:
            busy.add((r["adapter"], r["payer_id"]))
        else:
            repeats.append((r["adapter"], r["payer_id"], r["prompt_digest"]))
    out += await _repeated_prompts(conn, month, policy, repeats, rule)
    pairs = sorted(busy)
    for r in await conn.fetch(
        BURSTS, month, policy.burst_min_events, policy.burst_factor, window,
        [a for a, _ in pairs], [p for _, p in pairs],
    ) if pairs else ():  # fmt: skip
        reason = (
            f"hold for review: one payer sent up to {r['busiest']} requests to adapter "
            f"{r['adapter']!r} within {policy.burst_window_s} s, against its usual {r['median']} "
            f"a minute ({rule}: bursts)"
        )
        out.append(Flagged("burst", reason, list(r["event_ids"])))
    return out


async def _repeated_prompts(
    conn: asyncpg.Connection,
    month: dt.date,
    policy: WashPolicy,
    candidates: list[tuple[str, int, str]],
    rule: str,
) -> list[Flagged]:
    """Of the (adapter, payer, digest) sent often enough, those that are also at least
    `repeat_share_ppm` of the payer's events on the adapter, with their events."""
    if not candidates:
        return []
    pairs = sorted({(a, p) for a, p, _ in candidates})
    wanted = set(candidates)
    total: dict[tuple[str, int], int] = {}
    events: dict[tuple[str, int, str], list[str]] = {}
    for r in await conn.fetch(EVENTS_OF_PAIRS, month, [a for a, _ in pairs], [p for _, p in pairs]):
        pair = (r["adapter"], r["payer_id"])
        total[pair] = total.get(pair, 0) + 1
        key = (*pair, r["prompt_digest"])
        if key in wanted:
            events.setdefault(key, []).append(r["event_id"])
    out = []
    for key in sorted(events):
        ids, events_of_payer = sorted(events[key]), total[key[:2]]
        if len(ids) * 1_000_000 < policy.repeat_share_ppm * events_of_payer:
            continue
        reason = (
            f"hold for review: one payer sent the same prompt {len(ids)} times to adapter "
            f"{key[0]!r} this month ({len(ids) * 100 // events_of_payer}% of its requests "
            f"there; {rule}: repeated prompts)"
        )
        out.append(Flagged("repeated_prompt", reason, ids))
    return out


async def apply_holds(conn: asyncpg.Connection, month: dt.date, policy: WashPolicy) -> int:
    """Inside the close's transaction: withhold flagged earnings; returns the amount held."""
    flagged = await flagged_events(conn, month, policy)
    if not flagged:
        return 0
    held = {r["event_id"] for r in await conn.fetch(HELD_IN_MONTH, month)}
    payees, _ = await system_payees(conn)
    items: list[WithheldItem] = []
    new_events: list[tuple[str, str]] = []
    left: dict[int, int] = {}
    for f in flagged:
        ids = [e for e in f.event_ids if e not in held]
        if not ids:
            continue
        held.update(ids)
        new_events += [(e, f.heuristic) for e in ids]
        for e in await conn.fetch(EARNED_FROM_EVENTS, ids):
            payee = e["payee"]
            if payee not in left:
                left[payee] = int(await conn.fetchval(MONTH_BALANCE, month, payee))
            amount = min(int(e["amount"]), left[payee])
            if amount > 0:
                left[payee] -= amount
                items.append((month, payee, amount, f.reason))
    if not new_events:
        return 0
    memo = "wash-traffic holds at close"
    txn = await post_withholding(conn, "hold", memo, items, payees.withheld, always=True)
    await conn.execute(
        INSERT_HELD_EVENTS, [e for e, _ in new_events], month, txn, [h for _, h in new_events]
    )
    return sum(i[2] for i in items)


async def open_holds_total(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval(OPEN_HOLDS_TOTAL))
