"""Ledger invariants, checked in SQL over the whole ledger (tests, the simulation, and
operators before a close). Each check returns a readable violation or nothing."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from metering.pg import driver

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
    "usage event neither posted nor queued, or both": """
        SELECT count(*) FROM usage_events e
        WHERE (EXISTS (SELECT 1 FROM usage_postings p WHERE p.event_id = e.request_id))
            = (EXISTS (SELECT 1 FROM usage_unposted q WHERE q.event_id = e.request_id))
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


async def violations(engine: AsyncEngine) -> list[str]:
    """Every invariant that does not hold, with how many rows break it."""
    out = []
    async with driver(engine) as conn:
        for name, sql in CHECKS.items():
            n = int(await conn.fetchval(sql))
            if n:
                out.append(f"{name}: {n}")
    return out
