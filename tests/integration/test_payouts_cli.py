"""The scripted-use contract through the CLI against real Postgres: credits add, prices,
payouts close (twice: a no-op), verify (and a tampered statement failing it), reports."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pypdfium2 as pdfium
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from support.usage_events import usage_event
from typer.testing import CliRunner, Result

from metering.pg import driver
from metering.usage.store import PostgresUsageStore
from royalty.cli.main import app

pytestmark = pytest.mark.integration


async def royalty(database_url: str, *args: str) -> Result:
    # The CLI runs its own event loop: give it a thread.
    return await asyncio.to_thread(
        CliRunner().invoke, app, [*args, "--database-url", database_url], catch_exceptions=False
    )


async def test_scripted_use(engine: AsyncEngine, database_url: str, tmp_path: Path) -> None:
    r = await royalty(database_url, "credits", "add", "--account", "acme", "--amount", "12.5")
    assert r.exit_code == 0 and r.stdout == "acme 12.500000\n"
    r = await royalty(database_url, "credits", "add", "--account", "acme", "--amount", "0.0000001")
    assert r.exit_code == 2
    r = await royalty(database_url, "credits", "add", "--account", "acme", "--amount", "-3")
    assert r.exit_code == 2
    r = await royalty(
        database_url, "prices", "set", "--base-model", "tiny", "--input", "1.5", "--output", "4",
        "--effective-from", "2026-01-01T00:00:00+00:00",
    )  # fmt: skip
    assert r.exit_code == 0 and r.stdout.strip().isdigit()
    r = await royalty(database_url, "prices", "list")
    assert "1.500000" in r.stdout and "4.000000" in r.stdout
    async with driver(engine) as conn:
        acme = await conn.fetchval("SELECT id FROM accounts WHERE name = 'acme'")
    t0 = dt.datetime(2026, 10, 5, tzinfo=dt.UTC)
    events = [
        usage_event(
            f"cli-{i}",
            account_id=acme,
            started_at=t0 + dt.timedelta(hours=i),
            adapter=None,
            prompt_tokens=1000 + i,
            completion_tokens=100,
        )
        for i in range(50)
    ]
    await PostgresUsageStore(engine).insert_batch(events)
    r = await royalty(database_url, "payouts", "close", "--month", "2026-10")
    assert r.exit_code == 0 and "closed: root=" in r.stdout and "events=50" in r.stdout
    first = r.stdout.split("root=")[1].split()[0]
    r = await royalty(database_url, "payouts", "close", "--month", "2026-10")
    assert r.exit_code == 0 and "already closed" in r.stdout and first in r.stdout
    r = await royalty(database_url, "payouts", "verify", "--month", "2026-10")
    assert r.exit_code == 0 and "2 statements verify" in r.stdout  # operator and treasury
    r = await royalty(database_url, "payouts", "verify", "--month", "2026-09")
    assert r.exit_code == 1  # not closed: nothing verifies
    r = await royalty(database_url, "payouts", "close", "--month", "2026-13")
    assert r.exit_code == 2
    r = await royalty(database_url, "ledger", "check")
    assert r.exit_code == 0 and r.stdout == "ledger ok\n"
    r = await royalty(database_url, "credits", "show", "--account", "acme")
    assert r.exit_code == 0 and "held=0.000000" in r.stdout
    for fmt in ("csv", "html", "pdf"):
        out = tmp_path / f"report.{fmt}"
        r = await royalty(
            database_url, "report", "--month", "2026-10", "--format", fmt, "--output", str(out)
        )
        assert r.exit_code == 0, r.output
    assert "summary,events" not in (tmp_path / "report.csv").read_text()
    assert "summary,revenue,," in (tmp_path / "report.csv").read_text()
    assert "<svg" in (tmp_path / "report.html").read_text()
    assert len(pdfium.PdfDocument((tmp_path / "report.pdf").read_bytes())) == 4

    # A statement altered behind the ledger's back no longer verifies.
    async with driver(engine) as conn, conn.transaction():
        await conn.execute("ALTER TABLE statements DISABLE TRIGGER statements_append_only")
        await conn.execute("UPDATE statements SET amount = amount + 1 WHERE payee = 'operator'")
        await conn.execute("ALTER TABLE statements ENABLE TRIGGER statements_append_only")
    r = await royalty(database_url, "payouts", "verify", "--month", "2026-10")
    assert r.exit_code == 1 and "operator" in r.output
