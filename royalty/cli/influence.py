"""`royalty influence worker|status|run`: the gradient influence queue from the command line.

Thin: parses arguments, opens the database and runs the worker (`royalty.workers.influence`)
over the real scorer (`attribution.influence.scorer.GradientInfluence` on the served base
model). The month close settles the month's jobs itself (`royalty.month_close`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from gateway.influence import influence_queue
from royalty.cli.options import DataDir, DbUrl, err, run_with_settings, settings_for

influence_app = typer.Typer(
    no_args_is_help=True, help="Gradient influence: the job queue and its worker."
)

ModelsDir = Annotated[
    Path | None,
    typer.Option(help="Model tree with manifest.json (its base model); default: the demo models."),
]


@influence_app.command("worker")
def influence_worker(
    idle: Annotated[float, typer.Option(help="Seconds to wait when no job is due.")] = 1.0,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve Prometheus metrics (/metrics) on this port (default: none)."),
    ] = None,
    metrics_host: Annotated[str, typer.Option(help="Address for --metrics-port.")] = "0.0.0.0",
    nice: Annotated[
        int,
        typer.Option(
            help="Scheduling niceness to run at (0-19): scoring is background work that must "
            "not take CPU from the gateway and the engine on a shared machine."
        ),
    ] = 10,
    models_dir: ModelsDir = None,
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Score queued responses continuously until SIGTERM (royalty up runs one as a child
    process; run more anywhere: they share the queue with SKIP LOCKED and leases)."""
    import logging
    import os

    from royalty.workers.influence import run_worker

    if nice > 0:
        # Scoring takes up to seconds of torch CPU per response; at full priority it competes
        # with the gateway's streams and a CPU engine on small machines.
        os.nice(min(nice, 19))
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel("WARNING")
    settings = settings_for(data_dir, database_url, models_dir=models_dir)
    run_with_settings(
        settings,
        lambda e: run_worker(
            e, settings, idle_s=idle, metrics_port=metrics_port, metrics_host=metrics_host
        ),
    )


@influence_app.command("status")
def influence_status(data_dir: DataDir = None, database_url: DbUrl = None) -> None:
    """Jobs by state and the age of the oldest queued one."""
    settings = settings_for(data_dir, database_url)
    counts = run_with_settings(
        settings, lambda e: influence_queue(e, settings.influence.retention_s).counts()
    )
    states = " ".join(f"{s}={n}" for s, n in counts.by_state.items())
    age = "-" if counts.oldest_queued_s is None else f"{counts.oldest_queued_s:.1f}s"
    sys.stdout.write(f"{states} oldest_queued={age}\n")


@influence_app.command("run")
def influence_run(
    until_empty: Annotated[
        bool,
        typer.Option(
            "--until-empty",
            help="Also wait for retries and for jobs other workers hold, until none is left.",
        ),
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --until-empty waits at most.")] = 300.0,
    models_dir: ModelsDir = None,
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Process the queued influence jobs that are due now, then exit (for scripts)."""
    from royalty.workers.influence import run_due_jobs

    settings = settings_for(data_dir, database_url, models_dir=models_dir)
    outcomes, left = run_with_settings(
        settings,
        lambda e: run_due_jobs(e, settings, until_empty=until_empty, timeout_s=timeout),
    )
    done = " ".join(f"{k}={v}" for k, v in sorted(outcomes.items()))
    if left:
        err.print(f"{left} jobs left (waiting for their usage events, retries or other workers)")
    sys.stdout.write(f"{done or 'nothing to do'} left={left}\n")
