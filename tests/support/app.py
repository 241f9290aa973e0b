"""The gateway app over a real PostgreSQL database, in Litestar's test client: the one way
integration tests serve HTTP against Postgres.

    async def wire(services: Services, engine: AsyncEngine) -> None:
        services.metering = MeteringService(engine)

    async with app_over_postgres(database_url, wire) as client:
        ...

The test client runs the app on an event loop of its own, and an asyncpg connection belongs to
the loop that opened it: the app's engine is therefore made there, at the app's startup, and a
test's own `engine` fixture (made on the test's loop) serves only the test's direct queries.
The app authenticates against the real `PostgresKeyStore` without a cache (`ttl_s=0`: a key the
test creates works at once); `wire(services, engine)` plugs in the other Postgres-backed
services the test exercises and may return a cleanup, run at shutdown before the engine is
disposed. Everything else comes from `make_harness` (fake engine, in-memory usage sink).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.app import create_app
from gateway.auth import Authenticator, PostgresKeyStore
from gateway.container import Services
from royalty.db import create_engine
from support.gateway_harness import Harness, make_harness

Cleanup = Callable[[], Awaitable[None]]
Wire = Callable[[Services, AsyncEngine], Awaitable[Cleanup | None]]


@asynccontextmanager
async def app_over_postgres(
    database_url: str,
    wire: Wire | None = None,
    *,
    harness: Harness | None = None,
    pool_size: int = 4,
) -> AsyncIterator[AsyncTestClient[Any]]:
    h = harness or make_harness()
    engines: list[AsyncEngine] = []
    cleanups: list[Cleanup] = []

    async def start() -> None:
        engine = create_engine(database_url, pool_size=pool_size)
        engines.append(engine)
        h.services.auth = Authenticator(PostgresKeyStore(engine), ttl_s=0.0)
        if wire is not None and (cleanup := await wire(h.services, engine)) is not None:
            cleanups.append(cleanup)

    async def stop() -> None:
        for cleanup in cleanups:
            await cleanup()
        for engine in engines:
            await engine.dispose()

    app = create_app(h.services, on_startup=[start], on_shutdown=[stop])
    async with AsyncTestClient(app=app) as client:
        yield client
