"""Database wiring: which PostgreSQL to use, the async engine, and schema migrations.

`DATABASE_URL` wins when set; otherwise a private server from the `pgserver` wheel runs
under the project's data directory (the embedded default). Each package owns its tables and
SQL; this module only hands them an `AsyncEngine`.

Migrations: one Alembic environment (`royalty/migrations/env.py`) over several histories that
share one `alembic_version` table. The shared base history (`royalty/migrations/versions`,
0001-0014, the one linear history of earlier releases) is frozen; each package in
`OWN_HISTORIES` writes its tables' later revisions in `<package>/migrations/versions`, on a
branch labelled with its name that starts from the base's head, 0014. `migrate` upgrades to
`heads` (every branch), so a database an older release left at 0014, or earlier, upgrades in
place.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
"""The Alembic environment: env.py, the revision template and the shared base history."""
SHARED_BASE = MIGRATIONS_DIR / "versions"
SHARED_BASE_HEAD = "0014"
"""The last revision of the shared base history; every package's history starts from it."""
OWN_HISTORIES = ("core", "gateway", "attribution", "metering")
"""The packages with a migration history of their own (branch label = package name)."""


def async_url(url: str) -> str:
    """The SQLAlchemy asyncpg form of a libpq-style URL (postgresql://...)."""
    u = make_url(url)
    return u.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def create_engine(url: str, *, pool_size: int = 10, **kw: Any) -> AsyncEngine:
    return create_async_engine(
        async_url(url), pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, **kw
    )


def history_dir(package: str) -> Path:
    """Where `package` keeps its revisions: `<package>/migrations/versions`, found where the
    package is installed (a source checkout or a wheel) without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "migrations" / "versions"


def version_locations() -> list[Path]:
    """Every history's directory: the shared base first, then each package's own."""
    return [SHARED_BASE, *(history_dir(p) for p in OWN_HISTORIES)]


def _option(value: str) -> str:
    return value.replace("%", "%%")  # Alembic's options are ConfigParser values


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", _option(str(MIGRATIONS_DIR)))
    locations = os.pathsep.join(str(p) for p in version_locations())
    cfg.set_main_option("version_locations", _option(locations))
    # How `version_locations` splits: `path_separator` since Alembic 1.16, the (then
    # deprecated) `version_path_separator` before; each version reads the first it knows.
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_path_separator", "os")
    cfg.attributes["url"] = url
    return cfg


async def migrate(engine: AsyncEngine, revision: str = "heads") -> None:
    """Bring the schema to `revision` (by default the head of every history), inside one
    transaction."""

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
