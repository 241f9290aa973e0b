"""Metering benchmark: usage events priced, split and posted per second, batched
(`metering.ledger.posting.PostingWorker`: COPY of postings + per-batch aggregated entries) against a
naive row-by-row baseline (one transaction per event, one INSERT per entry, one UPDATE per
balance) in the same run on the same database; then the month close (statements, Merkle root
and proofs) at the event count asked for.

    .venv/bin/python bench/ledger.py --events 200000 --naive 5000 --close-events 1000000

Needs a PostgreSQL it may create a database on (`--database-url`, default the machine's
server at 127.0.0.1:5432); the database is dropped at the end. Both posting paths use the
same pricing and split code (`metering.ledger.posting.compute_postings`); only the storage strategy
differs. Generating and shipping the usage events (COPY via `PostgresUsageStore`) is not timed.

Before/after: `--previous N` posts N events with the posting worker's previous statements
(`PREVIOUS_TAKE_BATCH`, the per-entry balance check) in `--rounds` rounds interleaved with
rounds of the current code, on the same growing tables, and prints both rows and their
ratio. "Postgres CPU" counts the run's own backends only (not parallel query workers, which
the previous statements' hash joins used), so it understates the previous statements' cost.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib
import os
import platform
import random
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metering.catalog import PostgresCatalog, load_price_book
from metering.ledger.audit import violations
from metering.ledger.book import (
    CLOSE_LOCK_KEY,
    INSERT_TXN,
    LOCK_SHARED,
    _closed,
    ensure_accounts,
    penalties,
    system_payees,
)
from metering.ledger.posting import POSTING_COLUMNS, PostingWorker, compute_postings
from metering.ledger.sources import AdapterInfo, InMemoryAdapterDirectory
from metering.payouts.close import PostgresPayouts
from metering.pg import driver
from metering.usage.record import UsageRecord
from metering.usage.store import PostgresUsageStore
from royalty.db import create_engine, migrate

MONTH = dt.date(2026, 10, 1)
T0 = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)

# The posting worker's statements before the 2026-11-25 change, for the before/after rows of
# one run: the batch taken through joins (which the planner hashed: a scan of the whole queue
# and of usage_events per batch) and the balance check summing a transaction once per entry.
PREVIOUS_TAKE_BATCH = """
WITH picked AS (
    SELECT event_id FROM usage_unposted WHERE event_id >= $2
    ORDER BY event_id LIMIT $1 FOR UPDATE SKIP LOCKED
), taken AS (
    DELETE FROM usage_unposted u USING picked WHERE u.event_id = picked.event_id
    RETURNING u.event_id
)
SELECT e.request_id, e.account_id, e.base_model, e.adapter, e.status,
       e.prompt_tokens, e.completion_tokens, e.started_at
FROM taken JOIN usage_events e ON e.request_id = taken.event_id
"""
_MIGRATION_0009 = importlib.import_module("royalty.migrations.versions.0009_wash_traffic")
# (the migration holds both versions of the balance check: its upgrade and its downgrade)
PREVIOUS_CHECK_BALANCED = _MIGRATION_0009.CHECK_BALANCED_EVERY_ROW
CURRENT_CHECK_BALANCED = _MIGRATION_0009.CHECK_BALANCED_ONCE

TAKE_ONE = """
DELETE FROM usage_unposted WHERE event_id = (
    SELECT event_id FROM usage_unposted ORDER BY event_id LIMIT 1 FOR UPDATE SKIP LOCKED
) RETURNING event_id
"""
SELECT_EVENT = """
SELECT request_id, account_id, base_model, adapter, status, prompt_tokens, completion_tokens,
       started_at FROM usage_events WHERE request_id = $1
"""
INSERT_ENTRY = (
    "INSERT INTO ledger_entries (txn_id, account_id, month, amount) VALUES ($1, $2, $3, $4)"
)
UPDATE_BALANCE = (
    "UPDATE ledger_accounts SET balance = balance + $2, version = version + 1 WHERE id = $1"
)


@dataclass
class Phase:
    events: int
    wall_s: float
    client_cpu_s: float
    server_cpu_s: float

    @property
    def rate(self) -> float:
        return self.events / self.wall_s

    def row(self, what: str) -> str:
        client = self.client_cpu_s / self.events * 1e6
        server = self.server_cpu_s / self.events * 1e6
        # one Python thread, plus Postgres backends on the other core
        projected = min(1e6 / client, 2e6 / (client + server))
        return (
            f"| {what} | {self.events:,} | {self.wall_s:.2f} | {self.rate:,.0f} | {client:.1f} "
            f"| {server:.1f} | {projected:,.0f} |"
        )


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (Postgres backends are local processes)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def phase(url: str, admin: asyncpg.Connection, dbname: str, fn) -> Phase:  # type: ignore[no-untyped-def]
    """Run `fn(engine)` on a fresh pool; wall time, this process's CPU, and the CPU of the
    Postgres backends that pool started (all of their CPU is this phase's)."""
    engine = create_engine(url, pool_size=2)
    started = await admin.fetchval("SELECT clock_timestamp()")
    t, c = time.perf_counter(), time.process_time()
    try:
        n = await fn(engine)
        wall, client = time.perf_counter() - t, time.process_time() - c
        pids = await admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND backend_start >= $2",
            dbname, started,
        )  # fmt: skip
        server = sum(_proc_cpu_s(r["pid"]) for r in pids)
    finally:
        await engine.dispose()
    return Phase(n, wall, client, server)


SYNTH_MONTH = dt.date(2026, 11, 1)
SYNTH_TXN = "INSERT INTO ledger_transactions (kind, memo) VALUES ('usage', 'synthetic close benchmark') RETURNING id"
# Postings of one synthetic batch, built by the server: every event charges 1,000 micro-credits,
# split 50 / 250 / 200 (treasury, operator, adapter owner) and 500 to one of the contributors.
SYNTH_POSTINGS = """
INSERT INTO usage_postings (event_id, txn_id, month, event_day, payer_id, adapter, price_id,
                            policy_id, charge, payees, amounts)
SELECT 'syn-' || g, $1, $2::date, $2::date + (g % 28)::int, ($3::bigint[])[1 + g % cardinality($3::bigint[])], 'recipes', NULL, 1, 1000,
       ARRAY[$4::bigint, $5::bigint, $6::bigint, ($7::bigint[])[1 + g % cardinality($7::bigint[])]], ARRAY[50, 250, 200, 500]::bigint[]
FROM generate_series($8::bigint, $9::bigint - 1) AS g
"""
SYNTH_ENTRIES = """
INSERT INTO ledger_entries (txn_id, account_id, month, amount)
SELECT $1::bigint, account, $2::date, sum(amount) FROM (
    SELECT payer_id AS account, -charge AS amount FROM usage_postings WHERE txn_id = $1
    UNION ALL
    SELECT s.payee, s.amount FROM usage_postings p, unnest(p.payees, p.amounts) AS s(payee, amount)
    WHERE p.txn_id = $1
) m GROUP BY account
"""
SYNTH_BALANCES = """
UPDATE ledger_accounts a SET balance = a.balance + e.amount, version = a.version + 1
FROM (SELECT account_id, sum(amount) AS amount FROM ledger_entries WHERE txn_id = $1
      GROUP BY account_id) e
WHERE a.id = e.account_id
"""


# The usage events behind synthetic postings (--synthetic-events): what the close's
# wash-traffic checks join with (a distinct prompt per event: the checks' worst case for
# grouping). The queue rows their insert adds are removed: they are posted already.
SYNTH_EVENTS = """
INSERT INTO usage_events (request_id, account_id, key_id, endpoint, model, base_model, adapter,
                          status, http_status, prompt_tokens, completion_tokens, started_at,
                          total_ms, prompt_digest)
SELECT 'syn-' || g, ($2::bigint[])[1 + g % cardinality($2::bigint[])], 1, 'completions',
       'recipes', 'tiny', 'recipes', 'ok', 200, 100, 10,
       $1::date + make_interval(secs => g % (27 * 86400)), 1.0, left(md5(g::text), 32)
FROM generate_series($3::bigint, $4::bigint - 1) AS g
"""
SYNTH_DEQUEUE = "DELETE FROM usage_unposted WHERE event_id >= 'syn-' AND event_id < 'syn.'"


async def synthesize_month(
    engine,
    n: int,
    payers: list[int],
    contributors: list[int],
    owner: int,
    with_events: bool = False,
) -> None:  # type: ignore[no-untyped-def]
    """`n` posted events in SYNTH_MONTH written by SQL (not through the poster), in balanced
    batches of 100,000, so that the close can be timed at sizes the shared machine cannot post
    in the time available."""
    async with driver(engine) as conn:
        system, _ = await system_payees(conn)
        payer_ids = list((await ensure_accounts(conn, "consumer", payers)).values())
        contrib_ids = list((await ensure_accounts(conn, "contributor", contributors)).values())
        owner_id = (await ensure_accounts(conn, "adapter_owner", [owner]))[owner]
        step = 100_000
        for lo in range(0, n, step):
            async with conn.transaction():
                txn = await conn.fetchval(SYNTH_TXN)
                await conn.execute(
                    SYNTH_POSTINGS, txn, SYNTH_MONTH, payer_ids, system.treasury, system.operator,
                    owner_id, contrib_ids, lo, min(lo + step, n),
                )  # fmt: skip
                await conn.execute(SYNTH_ENTRIES, txn, SYNTH_MONTH)
                await conn.execute(SYNTH_BALANCES, txn)
                if with_events:
                    await conn.execute(SYNTH_EVENTS, SYNTH_MONTH, payers, lo, min(lo + step, n))
                    await conn.execute(SYNTH_DEQUEUE)
            print(f"  synthesized {min(lo + step, n):,}/{n:,}", file=sys.stderr, end="\r")
        print(file=sys.stderr)
        await conn.execute("VACUUM ANALYZE usage_postings")
        if with_events:
            await conn.execute("VACUUM ANALYZE usage_events")


async def setup(
    url: str, consumers: int, contributors: int
) -> tuple[InMemoryAdapterDirectory, list[int]]:
    conn = await asyncpg.connect(url)
    try:
        names = [f"consumer-{i}" for i in range(consumers)] + [
            f"contrib-{i}" for i in range(contributors)
        ]
        names += [f"owner-{i}" for i in range(3)]
        rows = await conn.fetch(
            "INSERT INTO accounts (name) SELECT unnest($1::text[]) RETURNING id, name", names
        )
    finally:
        await conn.close()
    ids = {r["name"]: r["id"] for r in rows}
    rng = random.Random(1)
    adapters = {}
    for i, name in enumerate(("recipes", "astronomy", "legal")):
        people = rng.sample(range(contributors), k=min(contributors, 8 + 6 * i))
        adapters[name] = AdapterInfo(
            ids[f"owner-{i}"], {ids[f"contrib-{p}"]: rng.randint(1, 400) for p in people}
        )
    return InMemoryAdapterDirectory(adapters), [ids[f"consumer-{i}"] for i in range(consumers)]


async def ship(engine, payers: list[int], n: int, start: int, progress: bool = True) -> None:  # type: ignore[no-untyped-def]
    store = PostgresUsageStore(engine, timeout_s=600)
    rng = random.Random(start)
    chunk = 50_000
    for lo in range(start, start + n, chunk):
        batch = []
        for i in range(lo, min(lo + chunk, start + n)):
            adapter = rng.choice(("recipes", "astronomy", "legal", None))
            batch.append(
                UsageRecord(
                    request_id=f"{uuid.UUID(int=rng.getrandbits(128))}",
                    account_id=rng.choice(payers),
                    key_id=1,
                    endpoint="chat.completions",
                    model=adapter or "tiny",
                    base_model="tiny",
                    adapter=adapter,
                    status="ok",
                    http_status=200,
                    prompt_tokens=rng.randint(10, 2000),
                    completion_tokens=rng.randint(1, 500),
                    started_at=T0 + dt.timedelta(seconds=i % (27 * 86400)),
                    total_ms=10.0,
                    ttft_ms=1.0,
                    output_sha256=None,
                )  # fmt: skip
            )
        await store.insert_batch(batch)
        if progress:
            print(
                f"  shipped {min(lo + chunk, start + n) - start:,}/{n:,}", file=sys.stderr, end="\r"
            )
    print(file=sys.stderr)


async def naive_post(engine, directory: InMemoryAdapterDirectory, n: int) -> int:  # type: ignore[no-untyped-def]
    """Row by row: one transaction per event, one INSERT per posting and entry, one UPDATE
    per balance. Prices, policies and ledger account ids are read once, as the batched path
    does per batch, so the difference is the storage strategy alone."""
    done = 0
    async with driver(engine) as conn:
        book = await load_price_book(conn)
        system, _ = await system_payees(conn)
        closed, pens = await _closed(conn), await penalties(conn)
        infos = {name: await directory.adapter(name) for name in directory.adapters}
        people = {p for i in infos.values() if i for p in i.baseline}
        contributors = await ensure_accounts(conn, "contributor", people)
        owners = await ensure_accounts(
            conn,
            "adapter_owner",
            {i.owner_account_id for i in infos.values() if i and i.owner_account_id},
        )
        placeholders = ", ".join(f"${i + 1}" for i in range(len(POSTING_COLUMNS)))
        insert_posting = (
            f"INSERT INTO usage_postings ({', '.join(POSTING_COLUMNS)}) VALUES ({placeholders})"  # noqa: S608
        )
        for _ in range(n):
            async with conn.transaction():
                await conn.execute(LOCK_SHARED, CLOSE_LOCK_KEY)
                eid = await conn.fetchval(TAKE_ONE)
                if eid is None:
                    break
                ev = await conn.fetchrow(SELECT_EVENT, eid)
                payers = await ensure_accounts(conn, "consumer", [ev["account_id"]])
                txn = int(await conn.fetchval(INSERT_TXN, "usage", None, "1 usage event"))
                rows, sums, _, _ = compute_postings(
                    [ev], txn, book, system, closed, pens, payers, infos, {}, contributors, owners
                )
                await conn.execute(insert_posting, *rows[0])
                for (account, month), amount in sorted(sums.items()):
                    if amount:
                        await conn.execute(INSERT_ENTRY, txn, account, month, amount)
                        await conn.execute(UPDATE_BALANCE, account, amount)
            done += 1
    return done


def combined(phases: list[Phase]) -> Phase:
    return Phase(
        sum(p.events for p in phases), sum(p.wall_s for p in phases),
        sum(p.client_cpu_s for p in phases), sum(p.server_cpu_s for p in phases),
    )  # fmt: skip


async def current_worker(engine, directory: InMemoryAdapterDirectory, a) -> int:  # type: ignore[no-untyped-def]
    worker = PostingWorker(engine, directory, batch_size=a.batch_size)
    return await worker.drain(concurrency=a.concurrency)


async def previous_worker(engine, directory: InMemoryAdapterDirectory, a) -> int:  # type: ignore[no-untyped-def]
    worker = PostingWorker(engine, directory, batch_size=a.batch_size)
    worker.take_sql = PREVIOUS_TAKE_BATCH
    return await worker.drain(concurrency=a.concurrency)


async def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--database-url",
        default=os.environ.get(
            "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    ap.add_argument(
        "--events", type=int, default=200_000, help="events for the batched posting rate"
    )
    ap.add_argument("--naive", type=int, default=5_000, help="events for the row-by-row baseline")
    ap.add_argument(
        "--close-events", type=int, default=1_000_000, help="events in the month that is closed"
    )
    ap.add_argument("--batch-size", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=2, help="batches in flight")
    ap.add_argument(
        "--synthetic-events", action="store_true",
        help="write the synthetic month's usage events too (what the wash-traffic checks read)",
    )  # fmt: skip
    ap.add_argument(
        "--synthetic-close", type=int, default=0,
        help="also close a month of N events written by SQL (times the close alone)",
    )  # fmt: skip
    ap.add_argument(
        "--previous", type=int, default=None,
        help="events posted with the previous statements (default: --events; 0: skip)",
    )  # fmt: skip
    ap.add_argument(
        "--rounds", type=int, default=4,
        help="before/after rounds, interleaved (each posts 1/rounds of the events)",
    )  # fmt: skip
    ap.add_argument("--keep", action="store_true", help="keep the database")
    a = ap.parse_args()

    name = f"royalty_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(a.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = a.database_url.rsplit("/", 1)[0] + "/" + name
    engine = create_engine(url, pool_size=2)
    try:
        await migrate(engine)
        directory, payers = await setup(url, consumers=1000, contributors=60)
        await PostgresCatalog(engine).set_price(
            "tiny", "", 1_000_000, 3_000_000, T0 - dt.timedelta(days=1)
        )
        await PostgresCatalog(engine).set_price(
            "tiny", "recipes", 2_000_000, 6_000_000, T0 - dt.timedelta(days=1)
        )
        print(
            f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()}",
            file=sys.stderr,
        )

        await ship(engine, payers, a.naive, 0)
        naive = await phase(url, admin, name, lambda e: naive_post(e, directory, a.naive))
        previous = None
        n_previous = a.events if a.previous is None else a.previous
        if n_previous:
            # Before/after in rounds, interleaved on the same growing tables (the machine's
            # load drifts; the previous statements' cost grew with the table).
            rounds = max(a.rounds, 1)
            prev_phases, cur_phases = [], []
            for r in range(rounds):
                await ship(engine, payers, n_previous // rounds, 30_000_000 + r * 1_000_000)
                async with driver(engine) as conn:
                    await conn.execute(PREVIOUS_CHECK_BALANCED)
                prev_phases.append(
                    await phase(url, admin, name, lambda e: previous_worker(e, directory, a))
                )
                async with driver(engine) as conn:
                    await conn.execute(CURRENT_CHECK_BALANCED)
                await ship(engine, payers, a.events // rounds, 10_000_000 + r * 1_000_000)
                cur_phases.append(
                    await phase(url, admin, name, lambda e: current_worker(e, directory, a))
                )
            previous, batched = combined(prev_phases), combined(cur_phases)
        else:
            await ship(engine, payers, a.events, 10_000_000)
            batched = await phase(url, admin, name, lambda e: current_worker(e, directory, a))
        posted = naive.events + batched.events + (previous.events if previous else 0)
        rest = max(a.close_events - posted, 0)
        fill = None
        if rest:
            await ship(engine, payers, rest, 20_000_000)
            fill = await phase(
                url, admin, name,
                lambda e: PostingWorker(e, directory, batch_size=a.batch_size).drain(concurrency=a.concurrency),
            )  # fmt: skip
        async with driver(engine) as conn:
            await conn.execute("VACUUM ANALYZE usage_postings")
            events_in_month = await conn.fetchval(
                "SELECT count(*) FROM usage_postings WHERE month = $1", MONTH
            )
        t = time.perf_counter()
        closed = await PostgresPayouts(engine).close(MONTH)
        close_s = time.perf_counter() - t
        t = time.perf_counter()
        checked, bad = await PostgresPayouts(engine).verify(MONTH)
        verify_s = time.perf_counter() - t
        t = time.perf_counter()
        broken = await violations(engine)
        audit_s = time.perf_counter() - t
        assert not bad and not broken, (bad, broken)
        assert closed.charges == closed.payouts + closed.fees + closed.withheld
        synth = None
        if a.synthetic_close:
            async with driver(engine) as conn:
                contributors = [
                    r["owner_id"]
                    for r in await conn.fetch(
                        "SELECT owner_id FROM ledger_accounts WHERE kind = 'contributor'"
                    )
                ]
                owner = await conn.fetchval("SELECT id FROM accounts WHERE name = 'owner-0'")
            await synthesize_month(
                engine, a.synthetic_close, payers, contributors, owner, a.synthetic_events
            )
            t = time.perf_counter()
            synth_close = await PostgresPayouts(engine).close(SYNTH_MONTH)
            synth_s = time.perf_counter() - t
            t = time.perf_counter()
            _, synth_bad = await PostgresPayouts(engine).verify(SYNTH_MONTH)
            synth_verify_s = time.perf_counter() - t
            assert not synth_bad and synth_close.events == a.synthetic_close
            synth = (synth_close, synth_s, synth_verify_s)
        load = os.getloadavg()

        print(
            "| posting | events | wall s | events/s (wall) | client CPU µs/event "
            "| Postgres CPU µs/event | events/s on 2 idle cores (from CPU) |"
        )
        print("|---|---|---|---|---|---|---|")
        print(naive.row("naive row by row (1 event per transaction)"))
        if previous:
            print(
                previous.row(
                    f"batched, previous statements (join take, per-entry balance check), {a.rounds} rounds interleaved"
                )
            )
        print(
            batched.row(
                f"batched ({a.batch_size:,} per batch, {a.concurrency} in flight)"
                + (", the same rounds" if previous else "")
            )
        )
        if fill:
            print(fill.row("batched, filling the month"))
        print()
        print("| month close | events in month | seconds |")
        print("|---|---|---|")
        print(
            f"| close: {closed.statements} statements, Merkle root and proofs, conservation check | {events_in_month:,} | {close_s:.2f} |"
        )
        print(f"| verify every statement's proof | {events_in_month:,} | {verify_s:.2f} |")
        print(f"| full ledger audit (every invariant, SQL) | {events_in_month:,} | {audit_s:.2f} |")
        if synth:
            sc, ss, sv = synth
            print(
                f"| close, month of SQL-written postings: {sc.statements} statements, root, proofs, conservation | {sc.events:,} | {ss:.2f} |"
            )
            print(f"| verify every statement's proof (that month) | {sc.events:,} | {sv:.2f} |")
        if previous:
            print(f"\nbatched ÷ previous statements (wall): {batched.rate / previous.rate:.2f}×")
        print(
            f"\nbatched ÷ naive (wall): {batched.rate / naive.rate:.0f}×; load average at the end "
            f"{load[0]:.1f}; root {closed.root.hex()}"
        )
    finally:
        await engine.dispose()
        if not a.keep:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
