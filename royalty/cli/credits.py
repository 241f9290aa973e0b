"""`royalty credits add|show`: consumer credit (`royalty.admin` over `metering.ledger`).
Amounts are typed as decimal credits and parsed exactly."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from royalty.cli.options import DataDir, DbUrl, fail, run_with_engine

credits_app = typer.Typer(no_args_is_help=True, help="Consumer credit: top up, show.")


@credits_app.command("add")
def credits_add(
    account: Annotated[str, typer.Option(help="Consumer account name (created if new).")],
    amount: Annotated[str, typer.Option(help="Credits, a decimal string (exact, <= 6 places).")],
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            help="Credit at most once per key: a rerun with the same key and arguments changes "
            "nothing (prints the first run's result); with other arguments it fails (exit 1)."
        ),
    ] = None,
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Top up an account's credit (the account is created if new); prints the available
    credit."""
    from gateway.routes.metering import MAX_IDEMPOTENCY_KEY
    from metering.ledger.book import IdempotencyConflict
    from metering.money import MoneyError, format_micros, parse_credits
    from royalty.admin import add_credits

    try:
        micros = parse_credits(amount)
    except MoneyError as e:
        raise fail(str(e), 2) from None
    if idempotency_key is not None and not (
        0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY
        and all(" " <= c <= "~" for c in idempotency_key)
    ):
        raise fail(f"--idempotency-key: 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters", 2)
    try:
        available = run_with_engine(
            data_dir, database_url, lambda e: add_credits(e, account, micros, idempotency_key)
        )
    except IdempotencyConflict as e:
        raise fail(str(e), 1) from None
    except ValueError as e:
        raise fail(str(e), 2) from None
    sys.stdout.write(f"{account} {format_micros(available)}\n")


@credits_app.command("show")
def credits_show(
    account: Annotated[str, typer.Option(help="Account name.")],
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Print an account's balance, held (reserved) and available credit."""
    from metering.money import format_micros
    from royalty.admin import credit_balance

    try:
        b = run_with_engine(data_dir, database_url, lambda e: credit_balance(e, account))
    except ValueError as e:
        raise fail(str(e)) from None
    sys.stdout.write(
        f"balance={format_micros(b.balance)} held={format_micros(b.held)} "
        f"available={format_micros(b.available)}\n"
    )
