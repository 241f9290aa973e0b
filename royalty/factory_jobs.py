"""Training an adapter on a datanet snapshot: the composition of `attribution` (datanets,
snapshots, the adapter registry) and `factory` (the training itself).

`train_on_snapshot` is what `royalty factory train` and the demo bootstrap call: read the
snapshot's records in order, train (or find the identical cached build), register the
adapter with its lineage. A running gateway picks registrations up by itself
(`AdapterSync`), so a new adapter is served without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attribution.lineage import AdapterRegistration, LineageService, RegisteredAdapter
from attribution.responses import ResponseAttributor
from attribution.service import DatanetService
from factory.adapters import (
    AdapterBuild,
    AdapterRecipe,
    SnapshotRef,
    TrainingExample,
    build_adapter,
)
from factory.build import DemoModels
from metering.ledger.sources import AdapterInfo
from serving.registry import Adapter, ModelRegistry

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainedAdapter:
    adapter: RegisteredAdapter
    build: AdapterBuild


async def train_on_snapshot(
    datanets: DatanetService,
    lineage: LineageService,
    base: DemoModels,
    adapters_dir: Path,
    *,
    datanet: str,
    name: str,
    owner_account_id: int,
    snapshot_id: str | None = None,
    recipe: AdapterRecipe | None = None,
    metadata: dict[str, Any] | None = None,
    replace: bool = False,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainedAdapter:
    """Train adapter `name` on `snapshot_id` of `datanet` (its latest snapshot when None)
    and register it, owned by `owner_account_id`."""
    d = await datanets.get_datanet_by_name(datanet)
    if snapshot_id is None:
        snaps = await datanets.snapshots(d.id)
        if not snaps:
            from attribution.errors import Invalid

            raise Invalid(f"datanet {datanet!r} has no published snapshot; publish it first")
        snap = snaps[-1]
    else:
        snap = await datanets.get_snapshot(snapshot_id)
        if snap.datanet_id != d.id:
            from attribution.errors import Invalid

            raise Invalid(f"snapshot {snapshot_id} is not a snapshot of datanet {datanet!r}")
    contents = await datanets.snapshot_contents(snap.id)
    examples = [
        TrainingExample(r.record_id, text=r.text, prompt=r.prompt, completion=r.completion)
        for r in contents
    ]
    ref = SnapshotRef(snap.id, snap.root, d.id, d.name, snap.record_count, snap.token_count)
    build = await asyncio.to_thread(
        build_adapter,
        base,
        name,
        ref,
        examples,
        adapters_dir,
        recipe=recipe,
        progress=progress,
        on_step=on_step,
    )
    span_index = await asyncio.to_thread(
        ensure_span_index,
        build.path,
        base,
        [
            (ex.record_id, r.contributor_account_id, ex.document())
            for ex, r in zip(examples, contents, strict=True)
        ],
    )
    influence_index = await asyncio.to_thread(
        ensure_influence_index, build.path, base, examples, progress=progress
    )
    registered = await lineage.register(
        AdapterRegistration(
            name=name,
            base_model=base.base_name,
            base_weights_sha256=base.manifest["base"]["weights_sha256"],
            owner_account_id=owner_account_id,
            path=str(build.path),
            weights_sha256=build.weights_sha256,
            lineage=build.lineage,
            metadata={
                **(metadata or {}),
                "span_index": str(span_index),
                "influence_index": str(influence_index),
            },
        ),
        replace=replace,
    )
    return TrainedAdapter(registered, build)


def ensure_span_index(
    adapter_dir: Path, base: DemoModels, documents: list[tuple[int, int, str]]
) -> Path:
    """The adapter's span index (its training documents under the base's tokenizer), next
    to its weights; built once, atomically."""
    from attribution.responses import build_adapter_index

    return build_adapter_index(adapter_dir, documents, base.base_path / "tokenizer.json")


def ensure_influence_index(
    adapter_dir: Path, base: DemoModels, examples: list[TrainingExample], *, progress: bool = True
) -> Path:
    """The adapter's gradient influence index (projected per-record LoRA gradients), next to
    its weights; built once, atomically."""
    from attribution.influence.gradients import build_influence_index

    return build_influence_index(base.base_path, adapter_dir, examples, progress=progress)


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
