"""Closing a month: the whole workflow `royalty payouts close` runs, in its order.

1. Post every queued usage event (`royalty.workers.ledger.post_queued`): the month's charges
   are all in the ledger before it freezes.
2. Settle the month's influence jobs (`settle_month`): run them (and earlier months') to the
   end, or with `skip_influence` expire them. Influence adjusts posted events of open months
   only, so it runs before the freeze; jobs still waiting for their usage event adjust a later
   month.
3. Freeze (`metering.payouts.close.PostgresPayouts.close`): wash-traffic holds
   (`metering.payouts.holds`), statements per payee, the Merkle root and proofs.

A closed month never changes: closing it again skips steps 1 and 2 and reports it as already
closed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.influence import influence_queue
from metering.payouts.close import MonthClose, PostgresPayouts
from metering.payouts.holds import WashPolicy
from royalty.workers.influence import build_worker
from royalty.workers.ledger import PostingProgress, post_queued

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from royalty.settings import Settings
    from royalty.workers.influence import InfluenceWorker


async def close_month(
    engine: AsyncEngine,
    settings: Settings,
    month: dt.date,
    *,
    skip_influence: bool = False,
    posting_progress: PostingProgress | None = None,
    say: Callable[[str], object] = lambda line: None,
) -> MonthClose:
    """Close `month` (the first day of it); `say` hears one line on the influence jobs."""
    payouts = PostgresPayouts(engine)
    if await payouts.month(month) is None:
        await post_queued(engine, posting_progress)
        say(await settle_month(engine, settings, month, skip=skip_influence))
    return await payouts.close(month, wash=WashPolicy())


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
    queue = influence_queue(engine, settings.influence.retention_s)
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
