"""`royalty`: the command line. Thin: it parses arguments and calls package APIs."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler

from gateway.settings import Settings

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="Royalty: pay the people behind a model."
)
keys_app = typer.Typer(no_args_is_help=True, help="API keys.")
models_app = typer.Typer(no_args_is_help=True, help="Models: build and list.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
app.add_typer(keys_app, name="keys")
app.add_typer(models_app, name="models")
app.add_typer(db_app, name="db")

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


def _settings(data_dir: Path | None, database_url: str | None, **kw: object) -> Settings:
    return Settings.from_env().with_(data_dir=data_dir, database_url=database_url, **kw)


def _logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False, rich_tracebacks=False)],
    )


@app.command()
def up(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    engine_url: Annotated[
        list[str] | None,
        typer.Option("--engine-url", help="External vLLM server (repeatable); none = start one."),
    ] = None,
    models_dir: Annotated[
        Path | None, typer.Option(help="Model tree with manifest.json; default: the demo models.")
    ] = None,
    data_dir: DataDir = None,
    database_url: DbUrl = None,
    demo_key: Annotated[
        bool, typer.Option(help="Create and print a demo API key once ready.")
    ] = True,
) -> None:
    """Run the gateway, its engines and the usage shipper until SIGTERM; flush usage; exit 0."""
    from gateway.server import serve

    _logging()
    settings = _settings(
        data_dir, database_url, host=host, port=port,
        engine_urls=tuple(engine_url) if engine_url else None, models_dir=models_dir,
    )  # fmt: skip
    _run_fast(serve(settings, demo_key=demo_key))


@keys_app.command("create")
def keys_create(
    account: Annotated[str, typer.Option(help="Account the key spends for (created if new).")],
    scope: Annotated[
        list[str] | None,
        typer.Option("--scope", help="inference, contributor, curator, admin (repeatable)."),
    ] = None,
    rpm: Annotated[
        int | None, typer.Option(help="Requests per minute (default: server's).")
    ] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute (default: server's).")] = None,
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Create an API key; prints only the key on stdout (it is stored hashed, shown once)."""
    from gateway.admin import create_key

    try:
        key = asyncio.run(
            create_key(_settings(data_dir, database_url), account, scope or ["inference"], rpm, tpm)
        )
    except ValueError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    sys.stdout.write(key + "\n")


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[int, typer.Argument(help="Key id.")],
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Revoke a key (takes effect within the gateway's key cache TTL)."""
    from gateway.admin import revoke_key

    if not asyncio.run(revoke_key(_settings(data_dir, database_url), key_id)):
        err.print(f"no active key with id {key_id}")
        raise typer.Exit(1)


@models_app.command("build")
def models_build(data_dir: DataDir = None) -> None:
    """Build the demo base model and adapters (cached by content hash)."""
    from serving.factory import build_demo_models

    s = _settings(data_dir, None)
    models = build_demo_models(s.data_dir / "models", progress=True)
    sys.stdout.write(str(models.root) + "\n")


@db_app.command("migrate")
def db_migrate(data_dir: DataDir = None, database_url: DbUrl = None) -> None:
    """Bring the schema up to date."""
    from gateway.admin import migrate_only

    asyncio.run(migrate_only(_settings(data_dir, database_url)))


def _run_fast(coro: Coroutine[Any, Any, None]) -> None:
    """Run the server on uvloop where it is installed (uvicorn's `loop=` setting only applies
    when uvicorn creates the loop itself)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    uvloop.run(coro)


def main() -> None:
    app()
