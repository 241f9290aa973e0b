"""What the influence job queue itself costs, in one run against PostgreSQL:

- enqueue: the gateway's batched insert (`InfluenceQueue.enqueue`, 500 jobs a statement)
  against one statement per job, in jobs/s;
- drain: one worker against two racing workers over the same number of jobs, with a scorer
  and ledger adjustment that do nothing, so what is left is the queue's own round trips
  (claim with SKIP LOCKED, complete with the text deletion), in jobs/s.

    .venv/bin/python bench/influence_queue.py [--jobs 5000] [--database-url URL]

Uses a fresh database (created and dropped) on the server of `--database-url` (default the
machine's PostgreSQL). Prints one line per measurement and the machine's load average, since
shared machines skew these numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))

from pg import create_database, drop_database, migrated

from attribution.influence.api import InfluenceResult
from attribution.influence.queue import NewJob, PostgresInfluenceQueue
from royalty.db import create_engine
from royalty.workers.influence import InfluenceWorker


class NoScorer:
    def register(self, adapter: str, adapter_dir: Path) -> None: ...
    def forget(self, adapter: str) -> None: ...
    def knows(self, adapter: str) -> bool:
        return True

    def score(self, adapter: str, prompt: Any, output: str, *, top_k: int = 32) -> Any:
        return InfluenceResult("none/0", (), 0.0)


class OneAdapter:
    async def get(self, name: str) -> Any:
        return SimpleNamespace(
            snapshot_id="s", weights_sha256="w", path="/", metadata={"influence_index": "x"}
        )

    async def records(self, name: str, *, after: int = 0, limit: int = 1000) -> list[Any]:
        return [SimpleNamespace(position=0, record_id=1, contributor_account_id=1)][after:]

    async def contributor_shares(self, name: str) -> dict[int, int]:
        return {1: 1}


async def no_adjustment(request_id: str, weights: Any) -> int | None:
    return None


def jobs(n: int, prefix: str) -> list[NewJob]:
    now = dt.datetime.now(dt.UTC)
    return [
        NewJob(
            f"{prefix}{i:07d}",
            "recipes",
            1,
            [{"role": "user", "content": "x" * 200}],
            "y" * 400,
            {"snapshot_id": "s", "spans": []},
            now,
        )  # fmt: skip
        for i in range(n)
    ]


async def drain(url: str, workers: int) -> float:
    engines = [create_engine(url, pool_size=2) for _ in range(workers)]
    ws = [
        InfluenceWorker(
            PostgresInfluenceQueue(e),
            NoScorer(),
            OneAdapter(),
            no_adjustment,  # type: ignore[arg-type]
            name=f"bench-{k}",
        )  # fmt: skip
        for k, e in enumerate(engines)
    ]
    t0 = time.perf_counter()
    await asyncio.gather(*(w.run_due() for w in ws))
    seconds = time.perf_counter() - t0
    for e in engines:
        await e.dispose()
    return seconds


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    a = ap.parse_args()
    url = await create_database(a.database_url)
    try:
        await migrated(url)
        engine = create_engine(url, pool_size=2)
        q = PostgresInfluenceQueue(engine)
        t0 = time.perf_counter()
        for k in range(0, a.jobs, 500):
            await q.enqueue(jobs(a.jobs, "b")[k : k + 500])
        batched = time.perf_counter() - t0
        single_n = min(a.jobs, 2000)
        t0 = time.perf_counter()
        for j in jobs(single_n, "s"):
            await q.enqueue([j])
        single = time.perf_counter() - t0
        print(f"enqueue batched (500/statement): {a.jobs / batched:,.0f} jobs/s")
        print(f"enqueue one per statement:       {single_n / single:,.0f} jobs/s")
        await q.expire_month(dt.date(9999, 12, 1), "bench reset")  # drain from a clean queue
        for workers in (1, 2):
            await q.enqueue(jobs(a.jobs, f"d{workers}-"))
            seconds = await drain(url, workers)
            print(f"drain, {workers} worker(s): {a.jobs / seconds:,.0f} jobs/s "
                  f"({seconds * 1e3 / a.jobs:.2f} ms/job)")  # fmt: skip
            left = await q.depth()
            assert left == 0, left
        await engine.dispose()
    finally:
        await drop_database(a.database_url, url)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()}")


if __name__ == "__main__":
    asyncio.run(main())
