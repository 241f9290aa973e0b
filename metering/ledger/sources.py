"""Seams metering reads through: who owns an adapter and who contributed to it, and
per-response attribution weights. The integrator wires the real implementations
(attribution's adapter registry and lineage); the in-memory fakes serve tests and benches.

Until per-response attribution exists, the baseline applies: an adapter's data share is
divided among its snapshot's contributors weighted by their record counts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from sqlalchemy.ext.asyncio import AsyncEngine


@dataclass(frozen=True, slots=True)
class AdapterInfo:
    owner_account_id: int | None
    baseline: Mapping[int, int] = field(default_factory=dict)
    """contributor account id -> record count in the adapter's training snapshot."""


@runtime_checkable
class AdapterDirectory(Protocol):
    async def adapter(self, name: str) -> AdapterInfo | None:
        """The adapter's owner and baseline weights; None for an unknown adapter (its data and
        owner shares then go to the protocol treasury, like a base-model request)."""
        ...


@runtime_checkable
class AttributionSource(Protocol):
    async def weights(self, event_ids: Sequence[str]) -> Mapping[str, Mapping[int, int]]:
        """Per-response weights for those events that have them: event id -> {contributor
        account id: integer weight > 0}. Events left out use the adapter's baseline."""
        ...


class InMemoryAdapterDirectory:
    def __init__(self, adapters: Mapping[str, AdapterInfo] | None = None) -> None:
        self.adapters: dict[str, AdapterInfo] = dict(adapters or {})

    async def adapter(self, name: str) -> AdapterInfo | None:
        return self.adapters.get(name)


class InMemoryAttributionSource:
    def __init__(self, weights: Mapping[str, Mapping[int, int]] | None = None) -> None:
        self.by_event: dict[str, dict[int, int]] = {k: dict(v) for k, v in (weights or {}).items()}

    async def weights(self, event_ids: Sequence[str]) -> Mapping[str, Mapping[int, int]]:
        return {e: self.by_event[e] for e in event_ids if e in self.by_event}


class NoAttribution:
    """No per-response weights yet: every event uses its adapter's baseline."""

    async def weights(self, event_ids: Sequence[str]) -> Mapping[str, Mapping[int, int]]:
        return {}


SELECT_RESPONSE_WEIGHTS = """
SELECT request_id, attribution -> 'contributors' AS contributors
FROM usage_events
WHERE request_id = ANY($1::text[]) AND attribution IS NOT NULL
"""


class UsageEventAttribution:
    """Per-response weights from the usage events themselves: the `attribution` object the
    gateway stored with each adapter response (`contributors: [{id, weight_ppm}]`, integer
    parts of royalty-weights/1 or /2). Events without one use the baseline."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def weights(self, event_ids: Sequence[str]) -> Mapping[str, Mapping[int, int]]:
        if not event_ids:
            return {}
        from metering.pg import driver

        async with driver(self._engine) as conn:
            rows = await conn.fetch(SELECT_RESPONSE_WEIGHTS, list(event_ids))
        out: dict[str, dict[int, int]] = {}
        for r in rows:
            found = r["contributors"]
            if isinstance(found, str | bytes):
                found = json.loads(found)
            parts = {
                int(c["id"]): int(c["weight_ppm"])
                for c in found or ()
                if isinstance(c, dict) and int(c.get("weight_ppm") or 0) > 0
            }
            if parts:
                out[r["request_id"]] = parts
        return out
