"""The world the influence integration tests share: accounts, a price, one adapter
("recipes", 12 records of three contributors), usage events with their influence jobs, a
`FakeLineage` standing in for the adapter registry, and a worker process to kill (kill -9)."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from attribution.errors import NotFound
from attribution.influence.fake import FakeInfluence
from attribution.influence.queue import NewJob, PostgresInfluenceQueue, QueuePolicy
from metering.catalog import PostgresCatalog
from metering.ledger.adjustments import reattribute
from metering.ledger.posting import PostingWorker
from metering.ledger.sources import AdapterInfo, InMemoryAdapterDirectory, UsageEventAttribution
from metering.pg import driver
from metering.usage.store import PostgresUsageStore
from royalty.db import create_engine
from royalty.workers.influence import Adjust, InfluenceWorker
from support.usage_events import usage_event

T0 = dt.datetime(2026, 10, 5, tzinfo=dt.UTC)
OCTOBER = dt.date(2026, 10, 1)
CONTRIBUTORS = ("carol", "dan", "erin")
RECORDS_EACH = 4
POLICY = dict(max_text_age_s=400 * 86400.0)


class FakeLineage:
    """The three methods of `LineageService` the worker reads, over one adapter."""

    def __init__(self, records: dict[int, int], *, indexed: bool = True) -> None:
        self.records_of = records
        self.indexed = indexed

    async def get(self, name: str) -> Any:
        if name != "recipes":
            raise NotFound(name)
        meta = {"influence_index": "influence/index.json"} if self.indexed else {}
        return SimpleNamespace(
            name=name, snapshot_id="snap-1", weights_sha256="w1", path="/nonexistent",
            metadata=meta,
        )  # fmt: skip

    async def records(self, name: str, *, after: int = 0, limit: int = 1000) -> list[Any]:
        rows = sorted(self.records_of.items())[after : after + limit]
        return [
            SimpleNamespace(position=after + i, record_id=r, contributor_account_id=c)
            for i, (r, c) in enumerate(rows)
        ]

    async def contributor_shares(self, name: str) -> dict[int, int]:
        return dict(collections.Counter(self.records_of.values()))


@dataclass
class World:
    engine: AsyncEngine
    ids: dict[str, int]
    records: dict[int, int]
    """record id -> contributor account id"""
    texts: dict[int, str]
    directory: InMemoryAdapterDirectory

    def config(self, database_url: str, **extra: Any) -> str:
        return json.dumps(
            {
                "database_url": database_url,
                "ids": self.ids,
                "texts": self.texts,
                "records": self.records,
                **extra,
            }  # fmt: skip
        )

    def scorer(self, **kw: Any) -> FakeInfluence:
        return FakeInfluence({"recipes": sorted(self.records)}, texts=self.texts, **kw)

    def adjuster(self, engine: AsyncEngine | None = None) -> Adjust:
        async def adjust(request_id: str, weights: Any) -> int | None:
            return await reattribute(engine or self.engine, self.directory, request_id, weights)

        return adjust

    def worker(
        self, engine: AsyncEngine | None = None, *, name: str, policy: QueuePolicy | None = None,
        lineage: FakeLineage | None = None, **kw: Any,
    ) -> InfluenceWorker:  # fmt: skip
        return InfluenceWorker(
            PostgresInfluenceQueue(engine or self.engine, policy or QueuePolicy(**POLICY)),
            kw.pop("scorer", None) or self.scorer(),
            lineage or FakeLineage(self.records),  # type: ignore[arg-type]
            self.adjuster(engine),
            name=name, **kw,
        )  # fmt: skip

    def output(self, i: int) -> str:
        """Event i's output quotes one record verbatim: the scorer names it first."""
        return f"Here you go. {self.texts[self.record_for(i)]} Enjoy."

    def record_for(self, i: int) -> int:
        return sorted(self.records)[i % len(self.records)]


def inline_attribution(ids: dict[str, int]) -> dict[str, Any]:
    """A span-less (baseline) inline attribution, as the gateway attaches one."""
    parts = [333_334, 333_333, 333_333]
    return {
        "object": "attribution", "adapter": "recipes", "snapshot_id": "snap-1",
        "method": "baseline", "methods": {"weights": "royalty-weights/1"}, "spans": [],
        "top_records": [],
        "contributors": [
            {"id": ids[c], "weight": p / 1e6, "weight_ppm": p}
            for c, p in zip(CONTRIBUTORS, parts, strict=True)
        ],
    }  # fmt: skip


async def make_world(engine: AsyncEngine) -> World:
    async with driver(engine) as conn:
        rows = await conn.fetch(
            "INSERT INTO accounts (name) SELECT unnest($1::text[]) RETURNING name, id",
            ["owner", *CONTRIBUTORS, "payer"],
        )
    ids = {r["name"]: r["id"] for r in rows}
    await PostgresCatalog(engine).set_price("tiny", "", 1_000_000, 1_000_000, T0 - dt.timedelta(9))
    records, texts = {}, {}
    for k, who in enumerate(CONTRIBUTORS):
        for j in range(RECORDS_EACH):
            rid = 1000 + k * RECORDS_EACH + j
            records[rid] = ids[who]
            texts[rid] = f"Record {rid}: {who}'s smoky soup number {j} with rare spice z{rid}q."
    shares = dict(collections.Counter(records.values()))
    directory = InMemoryAdapterDirectory({"recipes": AdapterInfo(ids["owner"], shares)})
    return World(engine, ids, records, texts, directory)


async def add_events(w: World, n: int, *, post: bool = True, prefix: str = "e") -> list[str]:
    inline = inline_attribution(w.ids)
    events = [
        usage_event(
            f"{prefix}{i:04d}",
            account_id=w.ids["payer"],
            started_at=T0 + dt.timedelta(minutes=i),
            prompt_tokens=1000,
            completion_tokens=1000,
            attribution=json.dumps(inline),
        )
        for i in range(n)
    ]
    await PostgresUsageStore(w.engine).insert_batch(events)
    if post:
        await post_all(w)
    jobs = [
        NewJob(
            request_id=e.request_id,
            adapter="recipes",
            account_id=w.ids["payer"],
            prompt=[{"role": "user", "content": f"A soup, please ({i})"}],
            output=w.output(i),
            attribution=inline,
            created_at=e.started_at,
        )  # fmt: skip
        for i, e in enumerate(events)
    ]
    await PostgresInfluenceQueue(w.engine, QueuePolicy(**POLICY)).enqueue(jobs)
    return [e.request_id for e in events]


async def post_all(w: World) -> None:
    await PostingWorker(w.engine, w.directory, UsageEventAttribution(w.engine)).drain()


async def fetch(engine: AsyncEngine, sql: str, *args: Any) -> list[Any]:
    async with driver(engine) as conn:
        return list(await conn.fetch(sql, *args))


def as_json(value: Any) -> Any:
    """jsonb as the pooled connection decodes it (text, or already decoded)."""
    return json.loads(value) if isinstance(value, str) else value


async def earnings(w: World) -> dict[str, int]:
    rows = await fetch(
        w.engine,
        "SELECT la.owner_id, coalesce(sum(e.amount), 0) AS total FROM ledger_accounts la "
        "LEFT JOIN ledger_entries e ON e.account_id = la.id "
        "WHERE la.kind = 'contributor' GROUP BY la.owner_id",
    )
    by_owner = {r["owner_id"]: int(r["total"]) for r in rows}
    return {c: by_owner.get(w.ids[c], 0) for c in CONTRIBUTORS}


async def assert_no_text_left(engine: AsyncEngine) -> None:
    (row,) = await fetch(
        engine,
        "SELECT count(*) FILTER (WHERE prompt IS NOT NULL OR output IS NOT NULL) AS with_text, "
        "count(*) AS n FROM influence_jobs",
    )
    assert row["n"] > 0 and row["with_text"] == 0


def child_main(config_json: str) -> None:
    """A worker process for the kill -9 tests (run by `python -c`); never returns normally."""
    cfg = json.loads(config_json)

    async def main() -> None:
        engine = create_engine(cfg["database_url"], pool_size=2)
        ids = cfg["ids"]
        records = {int(k): v for k, v in cfg["records"].items()}
        texts = {int(k): v for k, v in cfg["texts"].items()}
        shares = dict(collections.Counter(records.values()))
        directory = InMemoryAdapterDirectory({"recipes": AdapterInfo(ids["owner"], shares)})
        scorer = FakeInfluence({"recipes": sorted(records)}, texts=texts)
        if cfg["mode"] == "scoring":
            scorer.delay_s = 120.0  # killed in here

        async def adjust(request_id: str, weights: Any) -> int | None:
            txn = await reattribute(engine, directory, request_id, weights)
            if cfg["mode"] == "after_adjust":
                print(f"adjusted {txn}", flush=True)
                await asyncio.sleep(120)  # killed in here, before the job is marked done
            return txn

        worker = InfluenceWorker(
            PostgresInfluenceQueue(engine, QueuePolicy(lease_s=cfg["lease_s"], **POLICY)),
            scorer, FakeLineage(records), adjust, name="doomed",  # type: ignore[arg-type]
        )  # fmt: skip
        await worker.run(idle_s=0.05)

    asyncio.run(main())


def spawn_worker(config: str) -> subprocess.Popen[str]:
    # tests/, for this module and those it imports as the suite does (support.usage_events)
    paths = [str(Path(__file__).parents[1])]
    code = f"import sys; sys.path[:0] = {paths!r}; import support.influence_world as t; " \
        "t.child_main(sys.argv[1])"  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-c", code, config], stdout=subprocess.PIPE, text=True,
        cwd=Path(__file__).parents[2],
    )  # fmt: skip


async def wait_for_row(engine: AsyncEngine, sql: str, *args: Any, within_s: float = 30) -> None:
    deadline = time.monotonic() + within_s
    while not await fetch(engine, sql, *args):
        assert time.monotonic() < deadline, f"timed out waiting for: {sql}"
        await asyncio.sleep(0.05)
