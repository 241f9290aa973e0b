"""`royalty training worker|status`: the adapter training queue behind `POST /v1/adapters`.

Thin: parses arguments, opens the database and runs the worker (`royalty.workers.training`)
over the model factory's trainer on the served base model. `royalty factory train` stays the
operator's foreground command: it trains in its own process, without the queue.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from royalty.cli.options import DataDir, DbUrl, fail, run_with_settings, settings_for

training_app = typer.Typer(
    no_args_is_help=True,
    help="Adapter training jobs (POST /v1/adapters): the queue and its worker.",
)


@training_app.command("worker")
def training_worker(
    idle: Annotated[float, typer.Option(help="Seconds to wait when no job is due.")] = 2.0,
    nice: Annotated[
        int,
        typer.Option(
            help="Scheduling niceness to run at (0-19): training is long background work that "
            "must not take CPU from the gateway, the engine and the other workers."
        ),
    ] = 15,
    models_dir: Annotated[
        Path | None,
        typer.Option(help="Base model tree (a model factory build); default: the demo models."),
    ] = None,
    adapters_dir: Annotated[
        Path | None, typer.Option(help="Where adapters are written (default DATA_DIR/adapters).")
    ] = None,
    data_dir: DataDir = None,
    database_url: DbUrl = None,
) -> None:
    """Train queued adapters continuously until SIGTERM (royalty up runs one as a child
    process; run more anywhere that reaches Postgres and the adapters directory: they share
    the queue with SKIP LOCKED and leases)."""
    import logging
    import os

    from factory.build import ManifestError, load_manifest
    from royalty.runtime import demo_models_dir
    from royalty.workers.training import run_worker

    if nice > 0:
        # Minutes of torch CPU per job: at full priority it would compete with the gateway's
        # streams and a CPU engine on small machines.
        os.nice(min(nice, 19))
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel("WARNING")
    settings = settings_for(
        data_dir, database_url, models_dir=models_dir, adapters_dir=adapters_dir
    )
    tree = demo_models_dir(settings, progress=False)
    try:
        base = load_manifest(tree, verify=False)
    except ManifestError as e:
        raise fail(f"{tree} is not a model factory build, nothing to train on: {e}") from None
    adapters = settings.resolved_adapters_dir
    run_with_settings(settings, lambda e: run_worker(e, base, adapters, idle_s=idle))


@training_app.command("status")
def training_status(data_dir: DataDir = None, database_url: DbUrl = None) -> None:
    """Training jobs by state and the age of the oldest queued one."""
    from attribution.training_jobs import PostgresTrainingJobs

    settings = settings_for(data_dir, database_url)
    counts = run_with_settings(settings, lambda e: PostgresTrainingJobs(e).counts())
    states = " ".join(f"{s}={n}" for s, n in counts.by_state.items())
    age = "-" if counts.oldest_queued_s is None else f"{counts.oldest_queued_s:.1f}s"
    sys.stdout.write(f"{states} oldest_queued={age}\n")
