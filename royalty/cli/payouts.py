"""`royalty payouts close|verify|penalize`: the monthly close (`royalty.month_close`), its
proofs (`metering.payouts`) and penalties (`royalty.admin`)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from royalty.cli.options import (
    DataDir,
    DbUrl,
    Month,
    err,
    fail,
    month_of,
    progress_bar,
    run_with_engine,
    settings_for,
)

payouts_app = typer.Typer(no_args_is_help=True, help="Monthly close, proofs, penalties.")


@payouts_app.command("close")
def payouts_close(
    month: Month,
    skip_influence: Annotated[
        bool,
        typer.Option(
            "--skip-influence",
            help="Expire the month's unfinished influence jobs instead of running them.",
        ),
    ] = False,
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Post queued usage, finish the month's influence jobs, then freeze the month:
    statements, Merkle root, proofs. A closed month is left as it is (exit 0)."""
    from metering.money import format_micros
    from metering.payouts.close import CloseError
    from royalty.month_close import close_month

    when = month_of(month)
    settings = settings_for(data_dir, database_url)
    try:
        c = run_with_engine(
            data_dir, database_url,
            lambda engine: close_month(
                engine, settings, when, skip_influence=skip_influence,
                posting_progress=lambda depth: progress_bar("posting usage", depth), say=err.print,
            ),
        )  # fmt: skip
    except CloseError as e:
        raise fail(str(e)) from None
    state = "already closed" if c.already_closed else "closed"
    sys.stdout.write(
        f"{month} {state}: root={c.root.hex()} statements={c.statements} events={c.events} "
        f"charges={format_micros(c.charges)} payouts={format_micros(c.payouts)} "
        f"fees={format_micros(c.fees)} withheld={format_micros(c.withheld)}\n"
    )


@payouts_app.command("verify")
def payouts_verify(month: Month, data_dir: DataDir = None, database_url: DbUrl = None) -> None:
    """Check every statement's Merkle proof against the month's root; exit 0 only if all do."""
    from metering.payouts.close import PostgresPayouts

    checked, bad = run_with_engine(
        data_dir, database_url, lambda e: PostgresPayouts(e).verify(month_of(month))
    )
    if bad:
        for b in bad[:20]:
            err.print(f"[red]does not verify:[/red] {b}")
        raise typer.Exit(1)
    sys.stdout.write(f"{month}: {checked} statements verify\n")


@payouts_app.command("penalize")
def payouts_penalize(
    reason: Annotated[str, typer.Option(help="Why (shown to the contributor).")],
    contributor: Annotated[
        str | None, typer.Option(help="Penalise a contributor (account name).")
    ] = None,
    record: Annotated[
        int | None, typer.Option(help="Penalise one training record (its id) instead.")
    ] = None,
    adapter: Annotated[
        str, typer.Option(help="With --contributor: only this adapter's credits (default: all).")
    ] = "",
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Withhold a contributor's (or one record's) future credits and reverse the open months'
    credits into withheld, with the reason the contributor reads."""
    from metering.ledger.book import LedgerError
    from metering.money import format_micros
    from royalty.admin import penalize

    if (contributor is None) == (record is None):
        raise fail("name either --contributor or --record", 2)
    if record is not None and adapter:
        raise fail("--adapter applies to --contributor only", 2)
    try:
        penalty, reversed_ = run_with_engine(
            data_dir, database_url,
            lambda e: penalize(e, reason, contributor=contributor, record=record, adapter=adapter),
        )  # fmt: skip
    except (LedgerError, ValueError) as e:
        raise fail(str(e)) from None
    kind = "record penalty" if record is not None else "penalty"
    sys.stdout.write(f"{kind} {penalty}: reversed {format_micros(reversed_)} credits\n")
