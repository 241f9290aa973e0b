"""What every `royalty` command shares: the `--data-dir` and `--database-url` options, the
settings they make, a migrated database engine, and the console for messages (stderr:
stdout carries results)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from royalty.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

err = Console(stderr=True)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", envvar="ROYALTY_HOME", help="Data directory (default .royalty)."),
]
DbUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url", envvar="DATABASE_URL", help="PostgreSQL URL; embedded server when unset."
    ),
]


def settings_for(data_dir: Path | None, database_url: str | None, **kw: object) -> Settings:
    return Settings.from_env().with_(data_dir=data_dir, database_url=database_url, **kw)


@asynccontextmanager
async def migrated_engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    from royalty.db import create_engine, migrate, resolve_database_url

    engine = create_engine(
        resolve_database_url(settings.database_url, settings.data_dir), pool_size=2
    )
    try:
        await migrate(engine)
        yield engine
    finally:
        await engine.dispose()
