"""Dashboard sessions in Postgres (issue 13, item 9): the store keeps only a digest of the
session id and the key's id; sessions end when idle 8 h, 24 h after sign-in, at sign-out and
when their key is revoked; every gateway replica sees the same sessions."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine
from support.gateway_harness import make_harness

from gateway.app import create_app
from gateway.auth import Authenticator, KeyStoreUnavailable, PostgresKeyStore
from gateway.dashboard import COOKIE
from gateway.dashboard_sessions import PostgresDashboardSessions, session_digest
from metering.pg import driver
from royalty.db import create_engine

pytestmark = pytest.mark.integration
CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')


async def rows(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with driver(engine) as conn:
        return [dict(r) for r in await conn.fetch("SELECT * FROM dashboard_sessions")]


AGE = {
    "created_at": "UPDATE dashboard_sessions SET created_at = now() - make_interval(secs => $1)",
    "seen_at": "UPDATE dashboard_sessions SET seen_at = now() - make_interval(secs => $1)",
}


async def age(engine: AsyncEngine, column: str, hours: float) -> None:
    async with driver(engine) as conn:
        await conn.execute(AGE[column], hours * 3600.0)


async def test_a_session_stores_no_secret_and_ends_every_way(engine: AsyncEngine) -> None:
    keys = PostgresKeyStore(engine)
    key, info = await keys.create("ops", frozenset({"admin"}), None, None)
    sessions = PostgresDashboardSessions(engine)

    session_id = await sessions.create(info)
    [row] = await rows(engine)
    assert row["session_sha256"] == session_digest(session_id) and row["key_id"] == info.key_id
    stored = repr(row)
    assert session_id not in stored and key not in stored
    assert await sessions.lookup(session_id) == info
    assert await sessions.lookup(session_id + "x") is None

    await age(engine, "seen_at", 7.9)  # idle for less than 8 h: alive, and marked used
    assert await sessions.lookup(session_id) == info
    await age(engine, "seen_at", 8.1)
    assert await sessions.lookup(session_id) is None

    await age(engine, "seen_at", 0)
    await age(engine, "created_at", 24.1)  # in use all along, but signed in over 24 h ago
    assert await sessions.lookup(session_id) is None

    fresh = await sessions.create(info)  # a sign-in sweeps the expired rows
    assert [r["session_sha256"] for r in await rows(engine)] == [session_digest(fresh)]
    await sessions.delete(fresh)
    assert await sessions.lookup(fresh) is None and await rows(engine) == []

    revoked = await sessions.create(info)
    assert await sessions.lookup(revoked) == info
    assert await keys.revoke(info.key_id)
    assert await sessions.lookup(revoked) is None  # at once: no cache in between


async def test_an_unreachable_store_is_unavailable_not_signed_out() -> None:
    dead = create_engine("postgresql://nobody@127.0.0.1:9/nothing", pool_size=1)
    try:
        with pytest.raises(KeyStoreUnavailable):
            await PostgresDashboardSessions(dead).lookup("whatever")
    finally:
        await dead.dispose()


@pytest.fixture
async def replicas(database_url: str) -> AsyncIterator[list[AsyncTestClient[Any]]]:
    """Two gateway apps on one database, as two replicas behind a load balancer."""
    engines: list[AsyncEngine] = []
    clients = []
    for _ in range(2):
        h = make_harness()
        e = create_engine(database_url, pool_size=2)
        engines.append(e)
        h.services.auth = Authenticator(PostgresKeyStore(e), ttl_s=0.0)
        h.services.dashboard_sessions = PostgresDashboardSessions(e)
        clients.append(AsyncTestClient(app=create_app(h.services)))
    try:
        for c in clients:
            await c.__aenter__()
        yield clients
    finally:
        for c in clients:
            await c.__aexit__(None, None, None)
        for e in engines:
            await e.dispose()


async def test_replicas_share_sessions(
    engine: AsyncEngine, replicas: list[AsyncTestClient[Any]]
) -> None:
    a, b = replicas
    key, _ = await PostgresKeyStore(engine).create("ops", frozenset({"admin"}), None, None)
    page = await a.get("/dashboard")
    csrf = CSRF_FIELD.search(page.text).group(1)  # type: ignore[union-attr]
    r = await a.post("/dashboard/login", data={"key": key, "csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303
    session_id = a.cookies[COOKIE]
    b.cookies.set(COOKIE, session_id, path="/dashboard")  # the balancer sends the next one to b
    page = await b.get("/dashboard")
    assert page.status_code == 200
    logout = CSRF_FIELD.search(page.text).group(1)  # type: ignore[union-attr]
    r = await b.post("/dashboard/logout", data={"csrf": logout}, follow_redirects=False)
    assert r.status_code == 303
    assert (await a.get("/dashboard/data")).status_code == 401  # signed out everywhere
    assert await rows(engine) == []
