"""Keeping a gateway's model registry equal to the registered adapters of its base model."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from attribution.lineage import LineageService
from attribution.responses import ResponseAttributor
from serving.registry import Adapter, ModelRegistry

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


class AdapterSync:
    """Keeps a gateway's `ModelRegistry` equal to the registered adapters of its base model:
    new registrations appear, retired ones disappear. Polls (a small indexed query) so
    that every gateway process converges on its own, whoever registered the adapter."""

    def __init__(
        self,
        lineage: LineageService,
        registry: ModelRegistry,
        base_name: str,
        base_weights_sha256: str,
        *,
        interval_s: float = 1.0,
        attributor: ResponseAttributor | None = None,
    ) -> None:
        self.attributor = attributor
        self.lineage = lineage
        self.registry = registry
        self.base_name = base_name
        self.base_weights_sha256 = base_weights_sha256
        self.interval_s = interval_s
        self._managed: dict[str, str] = {}  # adapter name -> weights sha256
        self._task: asyncio.Task[None] | None = None

    async def sync_once(self) -> None:
        rows = [
            a
            for a in await self.lineage.active()
            if a.base_weights_sha256 == self.base_weights_sha256
        ]
        seen = {a.name for a in rows}
        for name in list(self._managed):
            if name not in seen:
                self.registry.remove_adapter(name)
                if self.attributor is not None:
                    self.attributor.forget(name)
                del self._managed[name]
                log.info("adapter %s retired", name)
        for a in rows:
            if self._managed.get(a.name) == a.weights_sha256:
                continue
            if a.name in {b.name for b in self.registry.bases}:
                log.warning("adapter %s shadows a base model name; not served", a.name)
                continue
            self.registry.add_adapter(
                Adapter(
                    a.name,
                    self.base_name,
                    a.path,
                    created=a.created,
                    owned_by=a.owner,
                    example_prompt=a.metadata.get("example_prompt"),
                )
            )
            if self.attributor is not None:
                shares = await self.lineage.contributor_shares(a.name)
                index = a.metadata.get("span_index")
                await asyncio.to_thread(
                    self.attributor.register,
                    a.name,
                    a.snapshot_id,
                    shares,
                    Path(index) if isinstance(index, str) else None,
                )
            self._managed[a.name] = a.weights_sha256
            log.info("adapter %s registered (snapshot %s)", a.name, a.snapshot_id)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="adapter-sync")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.sync_once()
            except Exception as e:  # Postgres down: keep serving what we have
                log.warning("adapter sync failed: %s", e)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
