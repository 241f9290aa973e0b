"""The training worker: claim a queued adapter training job, train it on its snapshot, register
the adapter, and finish the job (`attribution.training_jobs`).

One job, step by step (`TrainingWorker.process`):

1. A job claimed more than `TrainingPolicy.max_attempts` times kept losing its worker (killed,
   out of memory): it fails for good instead of being trained again.
2. Train (`Trainer`; the real one is `snapshot_trainer`, i.e. `royalty.training.
   train_on_snapshot`, torch in a thread). While it runs, a heartbeat every second extends
   the lease and stores the progress (step, loss) that `GET /v1/adapters/jobs/{id}` shows.
   If the heartbeat learns that the lease was lost (another worker took the job after this
   one stalled), or the worker is stopping, the next training step raises and the attempt
   ends without registering anything.
3. Success: the adapter is registered (gateways serve it within ~1 s, `AdapterSync`), and the
   job is `succeeded` with it. A worker killed between the two leaves the job running; it is
   trained again after the lease, finds its cached build and registers the same build again,
   which is a no-op: one adapter.
4. Failure: permanent (`is_permanent_failure`: no such datanet or snapshot, a snapshot of
   another datanet or without records, the name taken by another build, an error the
   database blames on the data) -> `failed` at once, with the error's type and message;
   anything else (the database away, a torch error, a full disk) -> retried with backoff,
   `failed` after `max_attempts`.

A SIGTERM gives the job back at once (`release`, the attempt not counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sqlalchemy import exc as sa_exc

from attribution.errors import DatanetError
from attribution.training_jobs import TrainingJob, TrainingJobs
from core.sqlstate import is_permanent, is_transient

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from attribution.lineage import RegisteredAdapter
    from factory.build import DemoModels

log = logging.getLogger(__name__)

Outcome = Literal["succeeded", "retry", "failed", "lost", "released"]
OnStep = Callable[[int, float], None]
"""(steps done, loss): called by the training loop after every step, from its thread."""
Trainer = Callable[[TrainingJob, OnStep], Awaitable["RegisteredAdapter"]]
"""Train and register the job's adapter, reporting progress through `OnStep`."""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Aborted(Exception):
    """Raised from a training step when the attempt must end: lease lost, worker stopping."""


def is_permanent_failure(exc: BaseException) -> bool:
    """Training the same job again would fail the same way: the request names what does not
    exist or cannot be trained (attribution's domain errors, `ValueError`s such as a snapshot
    with no records), or the database rejects its data (`core.sqlstate`)."""
    if is_transient(exc):
        return False
    return isinstance(exc, DatanetError | ValueError) or is_permanent(exc)


def error_of(exc: BaseException) -> tuple[str, str]:
    """(type, message) of an error as the job shows it. For SQLAlchemy's wrapper, the driver's
    error underneath (the wrapper's text repeats the statement and its parameters)."""
    if isinstance(exc, sa_exc.StatementError) and exc.orig is not None:
        exc = exc.orig.__cause__ or exc.orig
    return type(exc).__name__, str(exc) or type(exc).__name__


@dataclasses.dataclass
class _Progress:
    step: int = 0
    loss: float | None = None
    abort: str | None = None
    """Set (from the event loop) when the attempt must end; the next step raises it."""
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def on_step(self, done: int, loss: float) -> None:  # the training thread
        with self.lock:
            self.step, self.loss = done, loss
            if self.abort is not None:
                raise Aborted(self.abort)

    def read(self) -> tuple[int, float | None]:
        with self.lock:
            return self.step, self.loss


class TrainingWorker:
    def __init__(
        self,
        jobs: TrainingJobs,
        trainer: Trainer,
        *,
        name: str | None = None,
        progress_every_s: float = 1.0,
    ) -> None:
        self.jobs = jobs
        self.trainer = trainer
        self.name = name or worker_name()
        self.progress_every_s = progress_every_s
        self.outcomes: dict[str, int] = {}

    async def run_once(self) -> Outcome | None:
        """Claim and process one job; None when no job is due."""
        job = await self.jobs.claim(self.name)
        if job is None:
            return None
        log.info("training job %s: adapter %s on %s (attempt %d)", job.id,
                 job.request.adapter, job.request.datanet, job.attempts)  # fmt: skip
        outcome = await self.process(job)
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        log.info("training job %s: %s", job.id, outcome)
        return outcome

    async def run(self, *, idle_s: float = 2.0) -> None:
        """Work until cancelled. Survives Postgres outages and its own bugs: a job whose
        processing raised stays leased, is taken again after the lease, and fails after
        `max_attempts` (a poison job cannot stop the worker)."""
        while True:
            try:
                if await self.run_once() is None:
                    await asyncio.sleep(idle_s)
            except Exception as e:  # Postgres away, or a bug: log, go on
                log.warning("training worker: %r; retrying in %.1fs", e, idle_s)
                await asyncio.sleep(idle_s)

    async def process(self, job: TrainingJob) -> Outcome:
        q, me = self.jobs, self.name
        if job.attempts > q.policy.max_attempts:
            error = f"gave up after {job.attempts - 1} attempts (its worker died or hung)"
            await q.fail(me, job.id, error, error_type="WorkerLost", permanent=True)
            return "failed"
        progress = _Progress()
        beat = asyncio.create_task(self._heartbeat(job.id, progress))
        try:
            adapter = await self.trainer(job, progress.on_step)
        except Aborted:
            return "lost"
        except asyncio.CancelledError:  # stopping (SIGTERM): end the training, give the job back
            progress.abort = "worker stopped"
            with contextlib.suppress(Exception):
                await asyncio.wait_for(q.release(me, job.id), 5.0)
            raise
        except Exception as e:
            if progress.abort is not None:  # the lease was lost first: not ours to report
                return "lost"
            kind, message = error_of(e)
            permanent = is_permanent_failure(e)
            log.warning("training job %s failed (%s): %s: %s", job.id,
                        "permanent" if permanent else "will retry", kind, message)  # fmt: skip
            state = await q.fail(me, job.id, message, error_type=kind, permanent=permanent)
            if state is None:
                return "lost"
            return "retry" if state == "queued" else "failed"
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        step, loss = progress.read()  # the last steps may have come after the last beat
        return "succeeded" if await q.succeed(me, job.id, adapter, step=step, loss=loss) else "lost"

    async def _heartbeat(self, job_id: str, progress: _Progress) -> None:
        """Extend the lease and store the progress, at least every `progress_every_s` and
        three times per lease; a lost lease ends the attempt at its next step."""
        every = max(min(self.progress_every_s, self.jobs.policy.lease_s / 3), 0.05)
        while True:
            await asyncio.sleep(every)
            step, loss = progress.read()
            try:
                held = await self.jobs.heartbeat(self.name, job_id, step=step, loss=loss)
            except Exception as e:  # Postgres away: the lease runs on; try again
                log.warning("training job %s: heartbeat failed: %r", job_id, e)
                continue
            if not held:
                log.warning("training job %s: lease lost; ending this attempt", job_id)
                progress.abort = "lease lost"
                return


def snapshot_trainer(engine: AsyncEngine, base: DemoModels, adapters_dir: Path) -> Trainer:
    """`Trainer` over the model factory: the owner's account (created if new), the recipe
    with the job's steps, `train_on_snapshot` (torch, imported on the first job)."""

    async def train(job: TrainingJob, on_step: OnStep) -> RegisteredAdapter:
        from attribution.lineage import LineageService
        from attribution.service import DatanetService
        from core.accounts import account_id
        from factory.adapters import AdapterRecipe
        from royalty.training import train_on_snapshot

        r = job.request
        recipe = AdapterRecipe()
        if r.steps is not None:
            recipe = dataclasses.replace(
                recipe, train=dataclasses.replace(recipe.train, steps=r.steps)
            )
        t0 = time.monotonic()
        trained = await train_on_snapshot(
            DatanetService(engine),
            LineageService(engine),
            base,
            adapters_dir,
            datanet=r.datanet,
            name=r.adapter,
            owner_account_id=await account_id(engine, r.owner),
            snapshot_id=r.snapshot_id,
            recipe=recipe,
            replace=r.replace,
            progress=False,
            on_step=on_step,
        )
        log.info("adapter %s registered in %.1fs (build %s)", r.adapter,
                 time.monotonic() - t0, "cached" if trained.build.cached else "trained")  # fmt: skip
        return trained.adapter

    return train


async def run_worker(
    engine: AsyncEngine, base: DemoModels, adapters_dir: Path, *, idle_s: float = 2.0
) -> None:
    """The worker process (`royalty training worker`): train queued adapters until SIGTERM.
    SIGTERM cancels: the job in flight is given back to the queue (trained again by whoever
    claims it next); a SIGKILL leaves it to its lease."""
    from attribution.training_jobs import PostgresTrainingJobs

    worker = TrainingWorker(
        PostgresTrainingJobs(engine), snapshot_trainer(engine, base, adapters_dir)
    )
    task = asyncio.ensure_future(worker.run(idle_s=idle_s))
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
