"""The asyncpg connection under an SQLAlchemy pool: metering's SQL is plain, named asyncpg
statements with bound parameters (COPY and arrays need the driver itself)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine


@asynccontextmanager
async def driver(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection's asyncpg driver; invalidated (not pooled again) after a failure
    SQLAlchemy did not see, e.g. a cancellation mid-transaction."""
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        drv: asyncpg.Connection = raw.driver_connection
        try:
            yield drv
        except BaseException:
            await conn.invalidate()
            raise
