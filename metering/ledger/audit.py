"""Ledger invariants, checked in SQL over the whole ledger (tests, the simulation, and
operators before a close). Each check returns a readable violation or nothing.

Stale credit holds are a violation, not a note: every hold expires (DESIGN.md, invariant 8),
and a reservation still there `STALE_HOLD_GRACE_S` after its expiry, with no usage event to
post, means the sweeper is not running or is failing. Nothing is mis-booked, but the
consumer's credit is denied to them; at scale that ends in every request getting 402, which
is what an operator must hear about before it happens. The grace (several sweep periods of
the ledger worker) keeps a check that runs between two sweeps from crying wolf.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from metering.budgets.expiry import EXPIRED
from metering.pg import driver

STALE_HOLD_GRACE_S = 300.0
"""Seconds past its expiry after which a reservation the sweeper should have released is
reported (the ledger worker sweeps every 60 s by default)."""

CHECKS: dict[str, str] = {
    "unbalanced transactions": """
        SELECT count(*) FROM (SELECT txn_id FROM ledger_entries GROUP BY txn_id
                              HAVING sum(amount) <> 0) t
    """,
    "cached balance differs from the sum of entries": """
        SELECT count(*) FROM ledger_accounts a
        LEFT JOIN (SELECT account_id, sum(amount) AS s FROM ledger_entries GROUP BY account_id) e
               ON e.account_id = a.id
        WHERE a.balance <> coalesce(e.s, 0)
    """,
    "event whose splits do not sum to its charge": """
        SELECT count(*) FROM usage_postings p
        WHERE p.charge <> (SELECT coalesce(sum(x), 0) FROM unnest(p.amounts) AS x)
    """,
    "usage entries that differ from their events' postings": """
        WITH moves AS (
            SELECT txn_id, payer_id AS account_id, month, -charge AS amount FROM usage_postings
            UNION ALL
            SELECT p.txn_id, s.payee, p.month, s.amount
            FROM usage_postings p, unnest(p.payees, p.amounts) AS s(payee, amount)
        ), expected AS (
            SELECT txn_id, account_id, month, sum(amount) AS amount FROM moves
            GROUP BY txn_id, account_id, month HAVING sum(amount) <> 0
        ), actual AS (
            SELECT e.txn_id, e.account_id, e.month, sum(e.amount) AS amount
            FROM ledger_entries e JOIN ledger_transactions t ON t.id = e.txn_id
            WHERE t.kind = 'usage' GROUP BY e.txn_id, e.account_id, e.month
        )
        SELECT count(*) FROM expected x FULL JOIN actual a USING (txn_id, account_id, month)
        WHERE x.amount IS DISTINCT FROM a.amount
    """,
    "adjustments that do not sum to zero or differ from their entries": """
        WITH moves AS (
            SELECT a.txn_id, s.payee AS account_id, a.month, s.amount
            FROM usage_adjustments a, unnest(a.payees, a.amounts) AS s(payee, amount)
        ), expected AS (
            SELECT txn_id, account_id, month, sum(amount) AS amount FROM moves
            GROUP BY txn_id, account_id, month HAVING sum(amount) <> 0
        ), actual AS (
            SELECT e.txn_id, e.account_id, e.month, sum(e.amount) AS amount
            FROM ledger_entries e JOIN ledger_transactions t ON t.id = e.txn_id
            WHERE t.kind = 'adjustment' GROUP BY e.txn_id, e.account_id, e.month
        )
        SELECT (SELECT count(*) FROM expected x FULL JOIN actual a USING (txn_id, account_id, month)
                WHERE x.amount IS DISTINCT FROM a.amount)
             + (SELECT count(*) FROM usage_adjustments a
                WHERE (SELECT coalesce(sum(x), 0) FROM unnest(a.amounts) AS x) <> 0)
    """,
    # A posting dead letter (dead, or discarded by an operator) takes its event off the
    # queue unposted; a replayed one put it back on the queue.
    "usage event not exactly one of posted, queued or dead-lettered": """
        SELECT count(*) FROM usage_events e
        WHERE (EXISTS (SELECT 1 FROM usage_postings p WHERE p.event_id = e.request_id))::int
            + (EXISTS (SELECT 1 FROM usage_unposted q WHERE q.event_id = e.request_id))::int
            + (EXISTS (SELECT 1 FROM dead_letters d WHERE d.queue = 'posting'
                       AND d.item_key = e.request_id AND d.state <> 'replayed'))::int <> 1
    """,
    "closed month whose totals changed or do not conserve": """
        WITH per_kind AS (
            SELECT e.month, la.kind, sum(e.amount) AS amount
            FROM ledger_entries e JOIN ledger_accounts la ON la.id = e.account_id
            JOIN ledger_months m ON m.month = e.month
            GROUP BY e.month, la.kind
        ), charges AS (
            SELECT p.month, sum(p.charge) AS charges, count(*) AS events FROM usage_postings p
            JOIN ledger_months m ON m.month = p.month GROUP BY p.month
        )
        SELECT count(*) FROM ledger_months m
        LEFT JOIN charges c ON c.month = m.month
        WHERE m.charges <> coalesce(c.charges, 0) OR m.event_count <> coalesce(c.events, 0)
           OR m.fees <> coalesce((SELECT amount FROM per_kind k WHERE k.month = m.month
                                  AND k.kind = 'treasury'), 0)
           OR m.withheld <> coalesce((SELECT amount FROM per_kind k WHERE k.month = m.month
                                      AND k.kind = 'withheld'), 0)
           OR m.payouts <> coalesce((SELECT sum(amount) FROM per_kind k WHERE k.month = m.month
                            AND k.kind IN ('contributor', 'adapter_owner', 'operator')), 0)
           OR m.charges <> m.payouts + m.fees + m.withheld
           OR m.payouts + m.fees <> (SELECT coalesce(sum(amount), 0) FROM statements s
                                     WHERE s.month = m.month)
    """,
    "usage postings that name a missing transaction, account, price or policy": """
        SELECT count(*) FROM usage_postings p
        WHERE NOT EXISTS (SELECT 1 FROM ledger_transactions t WHERE t.id = p.txn_id)
           OR NOT EXISTS (SELECT 1 FROM ledger_accounts a WHERE a.id = p.payer_id)
           OR (p.price_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM prices x WHERE x.id = p.price_id))
           OR NOT EXISTS (SELECT 1 FROM split_policies s WHERE s.id = p.policy_id)
           OR EXISTS (SELECT 1 FROM unnest(p.payees) AS x(id)
                      WHERE NOT EXISTS (SELECT 1 FROM ledger_accounts a WHERE a.id = x.id))
    """,
    "held credit differs from open reservations": """
        SELECT count(*) FROM ledger_accounts a
        LEFT JOIN (SELECT account_id, sum(amount) AS s FROM budget_reservations
                   GROUP BY account_id) r ON r.account_id = a.id
        WHERE a.held <> coalesce(r.s, 0)
    """,
    "withheld entries without a readable reason": """
        SELECT count(*) FROM (
            SELECT e.txn_id, sum(e.amount) AS amount FROM ledger_entries e
            JOIN ledger_accounts la ON la.id = e.account_id AND la.kind = 'withheld'
            GROUP BY e.txn_id
        ) w
        WHERE w.amount <> (SELECT coalesce(sum(amount), 0) FROM withheld_items i
                           WHERE i.txn_id = w.txn_id)
    """,
}


IMBALANCE = "SELECT coalesce(sum(amount), 0) FROM ledger_entries"
# Reservations expired `$1` seconds ago or more that nothing will release but the sweeper.
STALE_HOLDS = f"""
SELECT count(*), coalesce(sum(b.amount), 0)::bigint FROM budget_reservations b
WHERE b.expires_at < now() - make_interval(secs => $1) AND {EXPIRED}
"""  # noqa: S608 (fixed SQL fragments, no input)


async def imbalance(engine: AsyncEngine) -> int:
    """The sum of every ledger entry: 0 unless a transaction is unbalanced."""
    async with driver(engine) as conn:
        return int(await conn.fetchval(IMBALANCE))


async def check(engine: AsyncEngine) -> list[str]:
    """`violations`, and the ledger-imbalance metrics set from the same check."""
    import time

    from metering import metrics

    broken = await violations(engine)
    metrics.ledger_checked(await imbalance(engine), time.time())
    return broken


async def violations(
    engine: AsyncEngine, *, stale_hold_grace_s: float = STALE_HOLD_GRACE_S
) -> list[str]:
    """Every invariant that does not hold, with how many rows break it."""
    out = []
    async with driver(engine) as conn:
        for name, sql in CHECKS.items():
            n = int(await conn.fetchval(sql))
            if n:
                out.append(f"{name}: {n}")
        n, amount = await conn.fetchrow(STALE_HOLDS, stale_hold_grace_s)
        if n:
            out.append(
                f"credit holds expired over {stale_hold_grace_s:g} s ago and never released "
                f"(is the sweeper running? `royalty ledger sweep`): {n} holding "
                f"{amount} micro-credits"
            )
    return out
