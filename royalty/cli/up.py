"""`royalty up`: the gateway, its engines and workers, until SIGTERM (`royalty.server`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.logging import RichHandler

from royalty.cli.options import DataDir, DbUrl, err, settings_for


def _logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False, rich_tracebacks=False)],
    )


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
        bool,
        typer.Option(
            help="Mint a demo API key once ready (only for the demo models on their own "
            "engine; ROYALTY_DEMO_KEY=0 also turns it off)."
        ),
    ] = True,
) -> None:
    """Run the gateway, its engines and the usage shipper until SIGTERM; flush usage; exit 0."""
    from royalty.server import serve

    _logging()
    settings = settings_for(
        data_dir, database_url, host=host, port=port,
        engine_urls=tuple(engine_url) if engine_url else None, models_dir=models_dir,
    )  # fmt: skip
    _run_fast(serve(settings, demo_key=demo_key))


def _run_fast(coro: Coroutine[Any, Any, None]) -> None:
    """Run the server on uvloop where it is installed (uvicorn's `loop=` setting only applies
    when uvicorn creates the loop itself)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    uvloop.run(coro)
