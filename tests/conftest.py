"""Shared fixtures. Tests are split by what they need: `unit` (nothing), `integration` (a real
PostgreSQL), `e2e` (the real vLLM CPU engine, the built demo models, the official OpenAI SDK)."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

sys.path.insert(0, str(Path(__file__).parent))

from support.pg import (
    DEFAULT_TEST_DATABASE_URL,
    PrivatePostgres,
    create_database,
    drop_database,
    migrated,
    reachable,
)

from royalty.db import create_engine


@pytest.fixture(scope="session")
async def postgres_server_url() -> AsyncIterator[str]:
    """Admin URL of a server the suite may create databases on."""
    url = os.environ.get("TEST_DATABASE_URL", DEFAULT_TEST_DATABASE_URL)
    if await reachable(url):
        yield url
        return
    server = PrivatePostgres()
    try:
        server.start()
        yield server.url
    finally:
        server.destroy()


@pytest.fixture
async def database_url(postgres_server_url: str) -> AsyncIterator[str]:
    """A fresh database, migrated to head, dropped after the test."""
    url = await create_database(postgres_server_url)
    try:
        await migrated(url)
        yield url
    finally:
        await drop_database(postgres_server_url, url)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(database_url, pool_size=4)
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started server of this test's own, which the test may stop and start at will."""
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.destroy()
