"""`royalty prices set|list`: versioned prices (`metering.catalog`). Amounts are typed as
decimal credits per million tokens and parsed exactly."""

from __future__ import annotations

import datetime as dt
import sys
from typing import Annotated

import typer
from rich.console import Console

from royalty.cli.options import DataDir, DbUrl, fail, run_with_engine

prices_app = typer.Typer(no_args_is_help=True, help="Versioned prices per base model and adapter.")


@prices_app.command("set")
def prices_set(
    base_model: Annotated[str, typer.Option(help="Base model name.")],
    input_credits: Annotated[
        str, typer.Option("--input", help="Credits per million input tokens.")
    ],
    output_credits: Annotated[
        str, typer.Option("--output", help="Credits per million output tokens.")
    ],
    adapter: Annotated[str, typer.Option(help="Adapter name; empty = the base model itself.")] = "",
    effective_from: Annotated[
        str | None, typer.Option(help="ISO 8601 time with zone (default: now).")
    ] = None,
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Add a price version; prints its id (the version stored with every charge)."""
    from metering.catalog import CatalogError, PostgresCatalog
    from metering.money import MoneyError, parse_credits

    try:
        pin = parse_credits(input_credits, allow_zero=True)
        pout = parse_credits(output_credits, allow_zero=True)
        when = dt.datetime.fromisoformat(effective_from) if effective_from else None
    except (MoneyError, ValueError) as e:
        raise fail(str(e), 2) from None
    if when is not None and when.tzinfo is None:
        raise fail("--effective-from needs a time zone, e.g. 2026-12-01T00:00:00+00:00", 2)
    try:
        price = run_with_engine(
            data_dir, database_url,
            lambda e: PostgresCatalog(e).set_price(base_model, adapter, pin, pout, when),
        )  # fmt: skip
    except CatalogError as e:
        raise fail(str(e), 2) from None
    sys.stdout.write(f"{price.id}\n")


@prices_app.command("list")
def prices_list(data_dir: DataDir = None, database_url: DbUrl = None) -> None:
    """List every price version (credits per million tokens)."""
    from rich.table import Table

    from metering.catalog import PostgresCatalog
    from metering.money import format_micros

    prices = run_with_engine(data_dir, database_url, lambda e: PostgresCatalog(e).prices())
    table = Table("version", "base model", "adapter", "input / M", "output / M", "effective from")
    for p in prices:
        table.add_row(
            str(p.id), p.base_model, p.adapter or "-", format_micros(p.input_micros_per_m),
            format_micros(p.output_micros_per_m), p.effective_from.isoformat(),
        )  # fmt: skip
    Console(width=200).print(table)
