"""The influence worker: claim a job, score the response, refine its weights, post the
ledger adjustment, store the result (and let the queue delete the text).

One job, step by step (`InfluenceWorker.process`):

1. Nothing to score: the text is gone (retention passed) -> `expired`; the adapter is no
   longer active, or was replaced since the response (another snapshot) -> `done` with a note;
   the adapter has no influence index (`influence_index` in its registration metadata, and
   the scorer accepts it) -> `done`, note "no influence index", no adjustment.
2. Score (in a thread; a heartbeat extends the lease for as long as the job runs), then
   `refine_attribution` with the snapshot's record -> contributor map and the contributors'
   record counts as baseline (from lineage).
3. `metering.ledger.adjustments.reattribute` re-splits the posted usage event by the refined
   contributor weights (parts per million). Its event not posted yet (`EventNotPosted`) ->
   the job is put back for `not_posted_delay_s`, not counted as an attempt; its month closed
   (`MonthClosed`) -> `expired` with the reason (statements are final; the inline span
   weights stand).
4. Store the result and finish `done`. If the worker dies anywhere before that, its lease runs
   out and another worker redoes the job: the scorer is deterministic and re-applying the
   same weights posts nothing, so the ledger sees one adjustment.

A scoring error is a failed attempt: retried with exponential backoff, `failed` after
`QueuePolicy.max_attempts`; so is a lease that keeps running out (a job that kills its
worker).

`build_worker` wires the real worker (configured queue, gradient scorer on the served base
model, lineage, ledger adjustments) for `run_worker` (the `royalty influence worker`
process), `run_due_jobs` (`royalty influence run`) and the month close.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from attribution.errors import NotFound
from attribution.influence.api import (
    InfluenceResult,
    InfluenceScorer,
    NoInfluenceIndex,
    UnknownAdapter,
)
from attribution.influence.queue import TEXT_EXPIRED, ClaimedJob, InfluenceQueue, JobResult
from attribution.influence.refine import refine_attribution
from attribution.lineage import LineageService
from gateway.influence import influence_queue
from metering import metrics as metering_metrics
from metering.ledger.adjustments import AdjustmentError, EventNotPosted, MonthClosed

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from royalty.settings import Settings

log = logging.getLogger(__name__)

Outcome = Literal["done", "skipped", "postponed", "expired", "retry", "failed", "lost"]
Adjust = Callable[[str, Mapping[int, int]], Awaitable[int | None]]
"""(request id, {contributor account id: weight > 0}) -> the adjustment txn, or None."""

NOT_POSTED = "usage event not posted yet"
NO_INDEX = "no influence index"
SCORED_KEPT = 1024
"""Scored jobs kept in memory while their usage event is not posted yet."""


@dataclass(frozen=True)
class _Adapter:
    weights_sha256: str
    snapshot_id: str
    indexed: bool
    record_contributors: dict[int, int]
    baseline: dict[int, int]


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class InfluenceWorker:
    def __init__(
        self,
        queue: InfluenceQueue,
        scorer: InfluenceScorer,
        lineage: LineageService,
        adjust: Adjust,
        *,
        name: str | None = None,
        not_posted_delay_s: float = 5.0,
        top_k: int = 32,
    ) -> None:
        self.queue = queue
        self.scorer = scorer
        self.lineage = lineage
        self.adjust = adjust
        self.name = name or worker_name()
        self.not_posted_delay_s = not_posted_delay_s
        self.top_k = top_k
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.waiting: set[str] = set()
        """Jobs whose last outcome was `postponed` (their usage event is not posted yet)."""
        self._adapters: dict[str, _Adapter] = {}
        self._scored: collections.OrderedDict[str, tuple[InfluenceResult, dict[str, Any]]] = (
            collections.OrderedDict()
        )

    # --- loops ------------------------------------------------------------------------------
    async def run_once(self, *, month: dt.date | None = None) -> Outcome | None:
        """Claim and process one job; None when no job is due."""
        jobs = await self.queue.claim(self.name, limit=1, month=month)
        if not jobs:
            return None
        try:
            async with self._leased(jobs[0].request_id):  # loading, scoring, adjusting
                outcome = await self.process(jobs[0])
        except asyncio.CancelledError:  # stopped (SIGTERM): give the job back now
            with contextlib.suppress(Exception):
                give_back = self.queue.postpone(
                    self.name, jobs[0].request_id, 0.0, "worker stopped"
                )
                await asyncio.wait_for(give_back, 5.0)
            raise
        self.outcomes[outcome] += 1
        if outcome == "postponed":
            self.waiting.add(jobs[0].request_id)
        else:
            self.waiting.discard(jobs[0].request_id)
        return outcome

    async def run_due(self, *, month: dt.date | None = None) -> collections.Counter[str]:
        """Process every job due now (of `month` and earlier when given). Jobs put back to wait
        for their usage event are not waited for: they stay queued, counted as postponed."""
        before = collections.Counter(self.outcomes)
        while await self.run_once(month=month) is not None:
            pass
        await self.publish_depth()
        return self.outcomes - before

    async def settle(
        self, month: dt.date, *, timeout_s: float = 300.0, poll_s: float = 0.5
    ) -> tuple[collections.Counter[str], int]:
        """Before `month` closes: process its jobs (and earlier months') until none is left,
        waiting for retries and for jobs other workers hold. Returns the outcomes and how many
        jobs are still unfinished: those waiting for a usage event that is not in Postgres yet
        (it will post to a later month, where its adjustment then goes), or all of them
        when `timeout_s` ran out."""
        deadline = time.monotonic() + timeout_s
        total: collections.Counter[str] = collections.Counter()
        while True:
            total += await self.run_due(month=month)
            counts = await self.queue.counts(month=month)
            stuck = counts.by_state.get("running", 0) == 0 and counts.by_state.get(
                "queued", 0
            ) <= len(self.waiting)
            if counts.depth == 0 or stuck or time.monotonic() > deadline:
                return total, counts.depth
            await asyncio.sleep(poll_s)

    async def run(
        self, *, idle_s: float = 1.0, sweep_every_s: float = 60.0, depth_every_s: float = 5.0
    ) -> None:
        """Work until cancelled: claim and process jobs, publish the queue depth, sweep
        expired text now and then. Survives Postgres outages and its own bugs: a job whose
        processing raised stays leased, is retried after the lease, and fails after
        `max_attempts` (a poison job cannot stop the worker)."""
        last_sweep = last_depth = 0.0
        while True:
            try:
                now = time.monotonic()
                if now - last_sweep > sweep_every_s:
                    swept = await self.queue.sweep()
                    if swept:
                        log.info("retention sweep deleted the text of %d jobs", swept)
                    last_sweep = now
                if now - last_depth > depth_every_s:
                    await self.publish_depth()
                    last_depth = now
                if await self.run_once() is None:
                    await asyncio.sleep(idle_s)
            except Exception as e:  # Postgres away, or a bug on one job: log, go on
                log.warning("influence worker: %r; retrying in %.1fs", e, idle_s)
                await asyncio.sleep(idle_s)

    async def publish_depth(self) -> None:
        metering_metrics.attribution_queue(await self.queue.depth())

    # --- one job ----------------------------------------------------------------------------
    async def process(self, job: ClaimedJob) -> Outcome:
        q, me, rid = self.queue, self.name, job.request_id
        if job.attempts > q.policy.max_attempts:
            error = f"gave up after {job.attempts - 1} attempts (its worker died or hung)"
            await q.finish(me, rid, "failed", error=error)
            return "failed"
        if job.prompt is None or job.output is None:
            await q.finish(me, rid, "expired", error=TEXT_EXPIRED)
            return "expired"
        adapter = await self._adapter(job.adapter)
        if adapter is None:
            await q.finish(me, rid, "done", note="the adapter is no longer active")
            return "skipped"
        snap = (job.attribution or {}).get("snapshot_id")
        if snap is not None and snap != adapter.snapshot_id:
            await q.finish(me, rid, "done", note="the adapter was replaced since the response")
            return "skipped"
        if not adapter.indexed:
            await q.finish(me, rid, "done", note=NO_INDEX)
            return "skipped"
        scored = self._scored.pop(rid, None)  # scored before, when its event was not posted
        if scored is None:
            try:
                scored = await self._score(job, adapter)
            except Exception as e:
                if isinstance(e, UnknownAdapter):
                    self._adapters.pop(job.adapter, None)  # registered again next time
                log.warning("influence job %s failed: %r", rid, e)
                return "retry" if await q.fail(me, rid, repr(e)) == "queued" else "failed"
        result, refined = scored
        weights = {c["id"]: c["weight_ppm"] for c in refined["contributors"] if c["weight_ppm"]}
        try:
            txn = await self.adjust(rid, weights)
        except EventNotPosted:
            # Kept so that the retry does not score again (bounded: oldest out first).
            self._scored[rid] = scored
            while len(self._scored) > SCORED_KEPT:
                self._scored.popitem(last=False)
            await q.postpone(me, rid, self.not_posted_delay_s, NOT_POSTED)
            return "postponed"
        except MonthClosed as e:
            await q.finish(me, rid, "expired", error=str(e))
            return "expired"
        except AdjustmentError as e:
            await q.finish(me, rid, "done", note=str(e))
            return "skipped"
        stored = JobResult(
            method=result.method,
            weights_version=str(refined["methods"].get("weights", "")),
            refined_method=str(refined["method"]),
            top_records=list(refined["influence"]["records"]),
            contributors=list(refined["contributors"]),
            seconds=result.seconds,
            adjustment_txn=txn,
        )
        return "done" if await q.complete(me, rid, stored) else "lost"

    async def _score(
        self, job: ClaimedJob, adapter: _Adapter
    ) -> tuple[InfluenceResult, dict[str, Any]]:
        assert job.prompt is not None and job.output is not None
        result = await asyncio.to_thread(
            self.scorer.score, job.adapter, job.prompt, job.output, top_k=self.top_k
        )
        metering_metrics.attribution_observed("influence", result.seconds)
        refined = refine_attribution(
            job.attribution, result, adapter.record_contributors, adapter.baseline,
            adapter=job.adapter, snapshot_id=adapter.snapshot_id,
        )  # fmt: skip
        return result, refined

    @contextlib.asynccontextmanager
    async def _leased(self, request_id: str) -> Any:
        """Extend the job's lease while the body runs (at a third of the lease)."""
        every = max(self.queue.policy.lease_s / 3, 0.05)

        async def beat() -> None:
            while True:
                await asyncio.sleep(every)
                with contextlib.suppress(Exception):
                    await self.queue.heartbeat(self.name, [request_id])

        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _adapter(self, name: str) -> _Adapter | None:
        """The adapter as registered now, loaded into the scorer (again when replaced)."""
        try:
            reg = await self.lineage.get(name)
        except NotFound:
            self._adapters.pop(name, None)
            return None
        known = self._adapters.get(name)
        if (
            known is not None
            and known.weights_sha256 == reg.weights_sha256
            and (not known.indexed or self.scorer.knows(name))
        ):
            return known
        indexed = bool(reg.metadata.get("influence_index"))
        if indexed:
            try:
                await asyncio.to_thread(self.scorer.register, name, Path(reg.path))
            except NoInfluenceIndex as e:
                log.warning("adapter %s: %s", name, e)
                indexed = False
        contributors: dict[int, int] = {}
        try:
            if indexed:
                after = 0
                while page := await self.lineage.records(name, after=after, limit=10_000):
                    contributors.update({r.record_id: r.contributor_account_id for r in page})
                    after = page[-1].position + 1
            baseline = await self.lineage.contributor_shares(name) if indexed else {}
        except NotFound:  # retired while we read it
            self._adapters.pop(name, None)
            return None
        loaded = _Adapter(reg.weights_sha256, reg.snapshot_id, indexed, contributors, baseline)
        self._adapters[name] = loaded
        return loaded


def ledger_adjuster(engine: Any) -> Adjust:
    """`Adjust` over metering's `reattribute`, with the adapters of the lineage registry."""
    from metering.ledger.adjustments import reattribute
    from royalty.adapter_directory import LineageAdapterDirectory

    directory = LineageAdapterDirectory(engine)

    async def adjust(request_id: str, weights: Mapping[int, int]) -> int | None:
        return await reattribute(engine, directory, request_id, weights)

    return adjust


def gradient_scorer(settings: Settings) -> InfluenceScorer:
    """The real scorer over the served base model (the demo models unless configured)."""
    from attribution.influence.scorer import GradientInfluence
    from royalty.runtime import demo_models_dir
    from serving.registry import ModelRegistry

    tree = demo_models_dir(settings, progress=False)
    base = ModelRegistry.from_manifest(tree, settings.models.base_model).bases[0]
    return GradientInfluence(Path(base.path))


def build_worker(
    engine: AsyncEngine, settings: Settings, scorer: InfluenceScorer | None = None
) -> InfluenceWorker:
    """The worker `royalty influence worker|run` and the month close run: the configured
    queue, the real scorer (unless `scorer` is given), the lineage registry and the ledger's
    adjustments."""
    return InfluenceWorker(
        influence_queue(engine, settings.influence.retention_s),
        scorer if scorer is not None else gradient_scorer(settings),
        LineageService(engine),
        ledger_adjuster(engine),
    )


async def run_due_jobs(
    engine: AsyncEngine, settings: Settings, *, until_empty: bool = False, timeout_s: float = 300.0
) -> tuple[dict[str, int], int]:
    """Process the queued jobs due now (`royalty influence run`); with `until_empty`, also wait
    for retries and for jobs other workers hold, at most `timeout_s`. Returns the outcomes and
    how many jobs are left. The worker (and its scorer) is built only if jobs wait."""
    queue = influence_queue(engine, settings.influence.retention_s)
    if (await queue.counts()).depth == 0:
        return {}, 0
    worker = build_worker(engine, settings)
    if until_empty:
        far = dt.date(9999, 12, 1)
        outcomes, left = await worker.settle(far, timeout_s=timeout_s)
    else:
        outcomes = await worker.run_due()
        left = (await queue.counts()).depth
    return dict(outcomes), left


async def run_worker(
    engine: AsyncEngine,
    settings: Settings,
    *,
    idle_s: float = 1.0,
    metrics_port: int | None = None,
    metrics_host: str = "0.0.0.0",
) -> None:
    """The worker process (`royalty influence worker`): score queued responses until
    SIGTERM, with Prometheus metrics (queue depth, scoring time: `royalty_attribution_*`) on
    `metrics_port` when given. SIGTERM cancels: the job in flight keeps its lease until it
    runs out, then is redone."""
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, metrics_host)
    worker = build_worker(engine, settings)
    task = asyncio.ensure_future(worker.run(idle_s=idle_s))
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
