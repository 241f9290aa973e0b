"""Reading usage events back: one response's attribution, and the responses that credited a
contributor. Named SQL over `usage_events` (this package's table); no prompt or output text
is stored, so none can be returned."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

SELECT_EVENT_ATTRIBUTION = text(
    """
    SELECT request_id, account_id, model, adapter, status, started_at,
           attribution::text AS attribution
    FROM usage_events WHERE request_id = :request_id
    """
)

# Containment on the GIN-indexed contributors list (migration 0007).
SELECT_CREDITING_EVENTS = text(
    """
    SELECT request_id, adapter, started_at, attribution::text AS attribution
    FROM usage_events
    WHERE attribution -> 'contributors' @> CAST(:probe AS jsonb)
      AND (CAST(:before AS timestamptz) IS NULL OR started_at < CAST(:before AS timestamptz))
    ORDER BY started_at DESC, request_id
    LIMIT :limit
    """
)


class EventAttribution(msgspec.Struct):
    request_id: str
    account_id: int
    model: str
    adapter: str | None
    status: str
    started_at: dt.datetime
    attribution: dict[str, Any] | None


class Credit(msgspec.Struct):
    """One response that credited a contributor: their weight, and their records it named."""

    request_id: str
    adapter: str | None
    started_at: dt.datetime
    weight: float
    weight_ppm: int
    method: str
    records: list[int]


class UsageQueries:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def attribution(self, request_id: str) -> EventAttribution | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(SELECT_EVENT_ATTRIBUTION, {"request_id": request_id})).first()
        if row is None:
            return None
        return EventAttribution(
            request_id=row.request_id,
            account_id=row.account_id,
            model=row.model,
            adapter=row.adapter,
            status=row.status,
            started_at=row.started_at,
            attribution=json.loads(row.attribution) if row.attribution else None,
        )

    async def credits_of(
        self, contributor_account_id: int, *, limit: int = 100, before: dt.datetime | None = None
    ) -> list[Credit]:
        probe = json.dumps([{"id": contributor_account_id}])
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    SELECT_CREDITING_EVENTS, {"probe": probe, "limit": limit, "before": before}
                )
            ).all()
        out = []
        for r in rows:
            att = json.loads(r.attribution)
            mine = next(c for c in att["contributors"] if c["id"] == contributor_account_id)
            records = sorted(
                {
                    t["id"]
                    for t in att.get("top_records", ())
                    if t["contributor"] == contributor_account_id
                }
            )
            out.append(
                Credit(
                    request_id=r.request_id,
                    adapter=r.adapter,
                    started_at=r.started_at,
                    weight=mine["weight"],
                    weight_ppm=mine["weight_ppm"],
                    method=att.get("method", ""),
                    records=records,
                )
            )
        return out
