"""metering's `AdapterDirectory` (who owns an adapter, whose records trained it) answered from
attribution's lineage: the composition the ledger posting and influence workers need."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from attribution.lineage import LineageService
from metering.ledger.sources import AdapterInfo

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)


class LineageAdapterDirectory:
    """metering's `AdapterDirectory` over attribution's lineage: the owner, and the snapshot's
    contributors weighted by their record counts. Cached per process for a minute (a name's
    lineage only changes when the adapter is replaced)."""

    def __init__(self, engine: AsyncEngine, ttl_s: float = 60.0) -> None:
        self._lineage = LineageService(engine)
        self._ttl_s = ttl_s
        self._cache: dict[str, tuple[float, AdapterInfo | None]] = {}

    async def adapter(self, name: str) -> AdapterInfo | None:
        from attribution.errors import NotFound

        hit = self._cache.get(name)
        if hit is not None and time.monotonic() - hit[0] < self._ttl_s:
            return hit[1]
        info: AdapterInfo | None
        try:
            found = await self._lineage.get(name)
            info = AdapterInfo(found.owner_account_id, await self._lineage.contributor_shares(name))
        except NotFound:
            info = None
        self._cache[name] = (time.monotonic(), info)
        return info
