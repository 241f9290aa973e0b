"""What every `royalty` command shares: the `--data-dir` and `--database-url` options, the
settings they make, a migrated database engine, the console for messages (stderr: stdout
carries results), errors, `--month` and progress bars."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console

from royalty.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")

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


def settings_for(
    data_dir: Path | None,
    database_url: str | None,
    *,
    host: str | None = None,
    port: int | None = None,
    engine_urls: tuple[str, ...] | None = None,
    models_dir: Path | None = None,
    adapters_dir: Path | None = None,
) -> Settings:
    """The settings from the environment, with what the command line says (an option not
    given, None, leaves them)."""
    return Settings.from_env().with_(
        data_dir=data_dir,
        database={"url": database_url},
        http={"host": host, "port": port},
        engines={"urls": engine_urls},
        models={"dir": models_dir, "adapters_dir": adapters_dir},
    )


@asynccontextmanager
async def migrated_engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    from royalty.db import create_engine, migrate, resolve_database_url

    engine = create_engine(
        resolve_database_url(settings.database.url, settings.data_dir), pool_size=2
    )
    try:
        await migrate(engine)
        yield engine
    finally:
        await engine.dispose()


def run_with_engine(
    data_dir: Path | None, database_url: str | None, fn: Callable[[AsyncEngine], Awaitable[T]]
) -> T:
    """`fn` over a migrated engine of the database the options name."""
    return run_with_settings(settings_for(data_dir, database_url), fn)


def run_with_settings(settings: Settings, fn: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """`fn` over a migrated engine of `settings`' database."""

    async def go() -> T:
        async with migrated_engine(settings) as engine:
            return await fn(engine)

    return asyncio.run(go())


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `message` as an error; raise what this returns."""
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


Month = Annotated[str, typer.Option("--month", help="Month as YYYY-MM (UTC).")]


def month_of(text: str) -> dt.date:
    """The month a `--month` names (its first day); exit 2 when it names none."""
    from metering.money import parse_month

    try:
        return parse_month(text)
    except ValueError as e:
        raise fail(str(e), 2) from None


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A transient progress bar on stderr; its value advances it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=err, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
