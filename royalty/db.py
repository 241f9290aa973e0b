"""Database wiring: which PostgreSQL to use, the async engine, and schema migrations.

`DATABASE_URL` wins when set; otherwise a private server from the `pgserver` wheel runs
under the project's data directory (the embedded default). Each package owns its tables and
SQL; this module only hands them an `AsyncEngine`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def async_url(url: str) -> str:
    """The SQLAlchemy asyncpg form of a libpq-style URL (postgresql://...)."""
    u = make_url(url)
    return u.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def create_engine(url: str, *, pool_size: int = 10, **kw: Any) -> AsyncEngine:
    return create_async_engine(
        async_url(url), pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, **kw
    )


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["url"] = url
    return cfg


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to `revision`, inside one transaction."""

    def _run(sync_conn: Any) -> None:
        cfg = alembic_config(str(engine.url))
        cfg.attributes["connection"] = sync_conn
        command.upgrade(cfg, revision)

    async with engine.begin() as conn:
        await conn.run_sync(_run)


def embedded_postgres(data_dir: Path) -> str:
    """Start (or reuse) the private PostgreSQL under `data_dir`; returns its URL.

    pgserver keeps the server running across processes that share the directory and stops it
    when the last user exits.
    """
    import pgserver  # imported lazily: only the embedded default needs the wheel

    data_dir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(str(data_dir), cleanup_mode="stop")
    uri: str = server.get_uri()
    log.info("embedded PostgreSQL at %s", data_dir)
    return uri


def resolve_database_url(explicit: str | None, data_dir: Path) -> str:
    return explicit if explicit else embedded_postgres(data_dir / "pg")
