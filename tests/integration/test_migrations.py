"""The migrations add up: upgrade to head, down to nothing, and up again give the same schema,
and every table a package owns is there."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from royalty.db import alembic_config

pytestmark = pytest.mark.integration

SCHEMA = text(
    """
    SELECT table_name, column_name, data_type, is_nullable
    FROM information_schema.columns WHERE table_schema = 'public'
    ORDER BY table_name, column_name
    """
)


async def _schema(engine: AsyncEngine) -> list[tuple[str, str, str, str]]:
    async with engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(SCHEMA)).all()]  # type: ignore[misc]


async def _run(engine: AsyncEngine, fn: str, revision: str) -> None:
    def go(sync_conn) -> None:  # type: ignore[no-untyped-def]
        cfg = alembic_config(str(engine.url))
        cfg.attributes["connection"] = sync_conn
        getattr(command, fn)(cfg, revision)

    async with engine.begin() as conn:
        await conn.run_sync(go)


async def test_down_and_up_again_gives_the_same_schema(engine: AsyncEngine) -> None:
    at_head = await _schema(engine)  # the fixture migrated to head
    tables = {t for t, *_ in at_head}
    assert {"accounts", "api_keys", "usage_events"} <= tables  # gateway, metering
    assert {"datanets", "contributions", "snapshots"} <= tables  # attribution
    await _run(engine, "downgrade", "base")
    assert [r for r in await _schema(engine) if r[0] != "alembic_version"] == []
    await _run(engine, "upgrade", "head")
    assert await _schema(engine) == at_head
