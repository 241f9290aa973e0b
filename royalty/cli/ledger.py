"""`royalty ledger post|worker|sweep|check`: the ledger (`royalty.workers.ledger` posts,
`metering.budgets.expiry` sweeps, `metering.ledger.audit` checks)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from royalty.cli.options import DataDir, DbUrl, err, progress_bar, run_with_engine

ledger_app = typer.Typer(no_args_is_help=True, help="The ledger: post usage, check invariants.")


@ledger_app.command("post")
def ledger_post(data_dir: DataDir = None, database_url: DbUrl = None) -> None:
    """Price, split and post every queued usage event now; prints how many."""
    from royalty.workers.ledger import post_queued

    posted = run_with_engine(
        data_dir, database_url,
        lambda e: post_queued(e, lambda depth: progress_bar("posting usage", depth)),
    )  # fmt: skip
    sys.stdout.write(f"{posted}\n")


@ledger_app.command("worker")
def ledger_worker(
    idle: Annotated[float, typer.Option(help="Seconds to wait when the queue is empty.")] = 1.0,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve Prometheus metrics (/metrics) on this port (default: none)."),
    ] = None,
    metrics_host: Annotated[str, typer.Option(help="Address for --metrics-port.")] = "0.0.0.0",
    check_every: Annotated[
        float, typer.Option(help="Seconds between ledger invariant checks (default 0: never).")
    ] = 0.0,
    sweep_every: Annotated[
        float,
        typer.Option(help="Seconds between sweeps of expired credit holds (0: never)."),
    ] = 60.0,
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Post queued usage events continuously until SIGTERM (royalty up runs one in a child
    process; run more anywhere: they share the queue with SKIP LOCKED); release expired
    credit holds every --sweep-every seconds; check the ledger's invariants every
    --check-every seconds (metrics and log)."""
    from royalty.workers.ledger import run_worker

    run_with_engine(
        data_dir, database_url,
        lambda e: run_worker(
            e, idle_s=idle, sweep_every_s=sweep_every, check_every_s=check_every,
            metrics_port=metrics_port, metrics_host=metrics_host,
        ),
    )  # fmt: skip


@ledger_app.command("sweep")
def ledger_sweep(data_dir: DataDir = None, database_url: DbUrl = None) -> None:
    """Release every expired credit hold whose request recorded no usage now (the ledger
    worker does this every --sweep-every seconds); prints how many and how much."""
    from metering.budgets.expiry import HoldSweeper
    from metering.money import format_micros

    done = run_with_engine(data_dir, database_url, lambda e: HoldSweeper(e).sweep())
    sys.stdout.write(
        f"released {done.holds} expired holds ({format_micros(done.amount)} credits)\n"
    )


@ledger_app.command("check")
def ledger_check(data_dir: DataDir = None, database_url: DbUrl = None) -> None:
    """Check every ledger invariant; exit 1 and name the broken ones."""
    from metering.ledger.audit import check

    broken = run_with_engine(data_dir, database_url, check)
    for b in broken:
        err.print(f"[red]violated:[/red] {b}")
    if broken:
        raise typer.Exit(1)
    sys.stdout.write("ledger ok\n")
