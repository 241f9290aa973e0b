"""`royalty influence worker|status|run`: the gradient influence queue from the command line.

Thin: parses arguments, opens the database, builds the worker (`royalty.workers.influence`)
over the real scorer (`attribution.influence.scorer.GradientInfluence` on the served base
model) and runs it. `settle_month` is what `royalty payouts close` calls before a close.
Registered in `royalty/cli/main.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from gateway.influence import influence_queue
from royalty.cli.options import DataDir, DbUrl, err, migrated_engine, settings_for

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from attribution.influence.api import InfluenceScorer
    from royalty.settings import Settings
    from royalty.workers.influence import InfluenceWorker

T = TypeVar("T")

influence_app = typer.Typer(
    no_args_is_help=True, help="Gradient influence: the job queue and its worker."
)

ModelsDir = Annotated[
    Path | None,
    typer.Option(help="Model tree with manifest.json (its base model); default: the demo models."),
]


def gradient_scorer(settings: Settings) -> InfluenceScorer:
    """The real scorer over the served base model (the demo models unless configured)."""
    from attribution.influence.scorer import GradientInfluence
    from royalty.runtime import demo_models_dir
    from serving.registry import ModelRegistry

    tree = demo_models_dir(settings, progress=False)
    base = ModelRegistry.from_manifest(tree, settings.base_model).bases[0]
    return GradientInfluence(Path(base.path))


def build_worker(
    engine: AsyncEngine, settings: Settings, scorer: InfluenceScorer | None = None
) -> InfluenceWorker:
    from attribution.lineage import LineageService
    from royalty.workers.influence import InfluenceWorker, ledger_adjuster

    return InfluenceWorker(
        influence_queue(engine, settings),
        scorer if scorer is not None else gradient_scorer(settings),
        LineageService(engine),
        ledger_adjuster(engine),
    )


async def settle_month(
    engine: AsyncEngine,
    settings: Settings,
    month: dt.date,
    *,
    skip: bool = False,
    timeout_s: float = 300.0,
    worker: InfluenceWorker | None = None,
) -> str:
    """Before `month` closes: run its queued influence jobs (and earlier months') to the end,
    or with `skip` expire them. Returns what happened, one line for the operator. `worker`:
    one built elsewhere (tests); by default the real scorer's, built only if jobs wait."""
    queue = influence_queue(engine, settings)
    waiting = (await queue.counts(month=month)).depth
    label = month.strftime("%Y-%m")
    if waiting == 0:
        return f"influence: no jobs of {label} or earlier waiting"
    if skip:
        n = await queue.expire_month(month, f"month {label} closed with --skip-influence")
        return f"influence: {n} jobs of {label} or earlier expired (--skip-influence)"
    worker = worker or build_worker(engine, settings)
    outcomes, left = await worker.settle(month, timeout_s=timeout_s)
    done = ", ".join(f"{k}={v}" for k, v in sorted(outcomes.items())) or "nothing to do"
    line = f"influence: {waiting} jobs of {label} or earlier: {done}"
    if left:
        line += (
            f"; {left} left unfinished (their usage events are not posted yet, or the "
            "timeout ran out): adjustments of events posted later go to a later month"
        )
    return line


def _run_with_engine(settings: Settings, fn: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    async def go() -> T:
        async with migrated_engine(settings) as engine:
            return await fn(engine)

    return asyncio.run(go())


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
    import signal

    if nice > 0:
        # Scoring takes up to seconds of torch CPU per response; at full priority it competes
        # with the gateway's streams and a CPU engine on small machines.
        os.nice(min(nice, 19))

    if metrics_port is not None:  # queue depth, scoring time (royalty_attribution_*)
        from prometheus_client import start_http_server

        start_http_server(metrics_port, metrics_host)

    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel("WARNING")
    settings = settings_for(data_dir, database_url, models_dir=models_dir)

    async def run(engine: AsyncEngine) -> None:
        worker = build_worker(engine, settings)
        task = asyncio.ensure_future(worker.run(idle_s=idle))
        # SIGTERM cancels: the job in flight keeps its lease until it runs out, then is redone.
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    _run_with_engine(settings, run)


@influence_app.command("status")
def influence_status(data_dir: DataDir = None, database_url: DbUrl = None) -> None:
    """Jobs by state and the age of the oldest queued one."""
    settings = settings_for(data_dir, database_url)
    counts = _run_with_engine(settings, lambda e: influence_queue(e, settings).counts())
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
    settings = settings_for(data_dir, database_url, models_dir=models_dir)

    async def go(engine: AsyncEngine) -> tuple[dict[str, int], int]:
        queue = influence_queue(engine, settings)
        if (await queue.counts()).depth == 0:
            return {}, 0
        worker = build_worker(engine, settings)
        if until_empty:
            far = dt.date(9999, 12, 1)
            outcomes, left = await worker.settle(far, timeout_s=timeout)
        else:
            outcomes = await worker.run_due()
            left = (await queue.counts()).depth
        return dict(outcomes), left

    outcomes, left = _run_with_engine(settings, go)
    done = " ".join(f"{k}={v}" for k, v in sorted(outcomes.items()))
    if left:
        err.print(f"{left} jobs left (waiting for their usage events, retries or other workers)")
    sys.stdout.write(f"{done or 'nothing to do'} left={left}\n")
