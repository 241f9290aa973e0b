"""The ledger worker: price, split and post queued usage events (`metering.ledger.posting`),
release expired credit holds, and watch the ledger.

`posting_worker` is the one place a `PostingWorker` is wired for real use (over the lineage
registry's adapters and the usage events' own attribution): the worker process
(`run_worker`, what `royalty ledger worker` and `royalty up`'s child run), `royalty ledger
post` and the month close (`post_queued`) all get theirs from it. Posting is idempotent by
event id, so any number of these may run at once: they share the queue with SKIP LOCKED.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from metering.ledger.posting import PostingWorker
from metering.ledger.sources import UsageEventAttribution
from royalty.adapter_directory import LineageAdapterDirectory

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger("royalty.ledger")

PostingProgress = Callable[[int], AbstractContextManager[Callable[[int], None]]]
"""Given how many events wait, a context (a progress bar) whose value is told how many each
batch posted."""


def posting_worker(engine: AsyncEngine) -> PostingWorker:
    return PostingWorker(engine, LineageAdapterDirectory(engine), UsageEventAttribution(engine))


async def post_queued(engine: AsyncEngine, progress: PostingProgress | None = None) -> int:
    """Post every queued usage event now; returns how many were posted."""
    worker = posting_worker(engine)
    depth = await worker.queue_depth()
    if depth == 0:
        return 0
    if progress is None:
        return await worker.drain()
    with progress(depth) as advance:
        return await worker.drain(advance)


async def run_worker(
    engine: AsyncEngine,
    *,
    idle_s: float = 1.0,
    sweep_every_s: float = 60.0,
    check_every_s: float = 0.0,
    metrics_port: int | None = None,
    metrics_host: str = "0.0.0.0",
) -> None:
    """The worker process: post queued usage events continuously until SIGTERM; release
    expired credit holds every `sweep_every_s` (0: never); check the ledger's invariants
    every `check_every_s` (0: never; violations are logged); with `metrics_port`, serve
    Prometheus metrics there, the dead-letter gauge (what the RoyaltyDeadLetters alert reads)
    among them. SIGTERM cancels every task: a batch in flight rolls back and is posted next
    time."""
    from core.deadletters import DeadLetterSampler, PostgresDeadLetterStore
    from metering.budgets.expiry import HoldSweeper

    tasks = [asyncio.ensure_future(posting_worker(engine).run(idle_s=idle_s))]
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, metrics_host)
        sampler = DeadLetterSampler(PostgresDeadLetterStore(engine))
        tasks.append(asyncio.ensure_future(sampler.run()))
    if sweep_every_s > 0:
        tasks.append(asyncio.ensure_future(HoldSweeper(engine).run(sweep_every_s)))
    if check_every_s > 0:
        tasks.append(asyncio.ensure_future(_check_every(engine, check_every_s)))
    stop = asyncio.gather(*tasks)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await stop


async def _check_every(engine: AsyncEngine, every_s: float) -> None:
    from metering.ledger.audit import check

    while True:
        try:
            for broken in await check(engine):
                log.error("ledger invariant violated: %s", broken)
        except Exception:  # a failed check is retried; the posting goes on
            log.exception("ledger check failed")
        await asyncio.sleep(every_s)
