"""`royalty report`: a month's payout report as CSV, HTML or PDF (`metering.reports`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from royalty.cli.options import DataDir, DbUrl, Month, fail, month_of, run_with_engine


def report(
    month: Month,
    fmt: Annotated[str, typer.Option("--format", help="csv, html or pdf.")],
    output: Annotated[Path, typer.Option(help="File to write.")],
    account: Annotated[
        str | None, typer.Option(help="A contributor's own report (default: the operator's).")
    ] = None,
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Write a month's payout report (operator, or one contributor with --account)."""
    from metering.reports.pdf import render_pdf
    from metering.reports.render import render_text
    from royalty.admin import month_report

    if fmt not in ("csv", "html", "pdf"):
        raise fail("--format is csv, html or pdf", 2)
    when = month_of(month)
    try:
        data = run_with_engine(data_dir, database_url, lambda e: month_report(e, when, account))
    except (LookupError, ValueError) as e:
        raise fail(str(e)) from None
    if fmt == "pdf":
        output.write_bytes(render_pdf(data))
    else:
        output.write_text(render_text(data, fmt), encoding="utf-8")
    sys.stdout.write(f"{output}\n")
