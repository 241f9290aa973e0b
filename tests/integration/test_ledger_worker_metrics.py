"""`royalty ledger worker --metrics-port` (what deploy/ runs): a real process posts queued
usage continuously, serves Prometheus metrics with the credits it minted and the ledger
check's imbalance (0) and time, and exits 0 on SIGTERM."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine
from support.pg import free_port
from support.usage_events import usage_event

from metering.catalog import PostgresCatalog
from metering.pg import driver
from metering.usage.store import PostgresUsageStore

pytestmark = pytest.mark.integration
T0 = dt.datetime(2026, 10, 2, tzinfo=dt.UTC)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


async def test_the_worker_posts_and_serves_its_metrics(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    await PostgresCatalog(engine).set_price("tiny", "", 1_000_000, 3_000_000, T0 - dt.timedelta(days=9))  # fmt: skip
    async with driver(engine) as conn:
        payer = await conn.fetchval("INSERT INTO accounts (name) VALUES ('payer') RETURNING id")
    await PostgresUsageStore(engine).insert_batch(
        [
            usage_event(
                f"w-{i}",
                account_id=payer,
                started_at=T0,
                adapter=None,
                prompt_tokens=1000,
                completion_tokens=100,
            )
            for i in range(50)
        ]
    )
    port = free_port()
    royalty = Path(sys.executable).with_name("royalty")
    log = (tmp_path / "worker.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        str(royalty), "ledger", "worker", "--database-url", database_url, "--idle", "0.2",
        f"--metrics-port={port}", "--metrics-host=127.0.0.1", "--check-every=0.5",
        stdout=log, stderr=log,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            try:
                samples = await asyncio.to_thread(scrape, port)
            except OSError:
                continue  # not listening yet
            if samples.get(("royalty_ledger_last_check_timestamp_seconds", ())) and samples.get(
                ("royalty_credits_minted_microcredits_total", (("payee_kind", "treasury"),))
            ):
                break
        # 50 events x 0.0013 credits, all to the protocol and operator (a base-model request)
        minted = {
            dict(k[1]).get("payee_kind"): v
            for k, v in samples.items()
            if k[0] == "royalty_credits_minted_microcredits_total"
        }
        assert minted.get("treasury", 0) + minted.get("operator", 0) == 50 * 1300, minted
        assert samples[("royalty_ledger_imbalance_microcredits", ())] == 0
        assert samples[("royalty_ledger_last_check_timestamp_seconds", ())] > time.time() - 60
        async with driver(engine) as conn:
            assert await conn.fetchval("SELECT count(*) FROM usage_unposted") == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
        log.close()
    assert code == 0, (tmp_path / "worker.log").read_text()
