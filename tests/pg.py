"""Fresh PostgreSQL databases for tests: on the machine's server when it answers
(`TEST_DATABASE_URL`, default the local server), else on a private pgserver instance."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator

import asyncpg
from sqlalchemy.engine import make_url

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def _server_url() -> str:
    url = os.environ.get("TEST_DATABASE_URL", DEFAULT_SERVER)
    try:
        asyncio.run(_ping(url))
        return url
    except (TimeoutError, OSError, asyncpg.PostgresError):
        import pgserver

        return str(pgserver.get_server(tempfile.mkdtemp(prefix="royalty-pg-")).get_uri())


async def _ping(url: str) -> None:
    conn = await asyncpg.connect(url, timeout=3)
    await conn.close()


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    server = _server_url()
    name = "royalty_test_" + uuid.uuid4().hex[:12]
    asyncio.run(_admin(server, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
