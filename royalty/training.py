"""Training an adapter on a datanet snapshot: the composition of `attribution` (datanets,
snapshots, the adapter registry) and `factory` (the training itself).

`train_on_snapshot` is what `royalty factory train`, the demo bootstrap and the training
worker (`royalty.workers.training`) call: read the snapshot's records in order, train (or
find the identical cached build), register the adapter with its lineage. A running gateway
picks registrations up by itself (`royalty.adapter_sync`), so a new adapter is served
without a restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attribution.lineage import AdapterRegistration, LineageService, RegisteredAdapter
from attribution.service import DatanetService
from factory.adapters import (
    AdapterBuild,
    AdapterRecipe,
    SnapshotRef,
    TrainingExample,
    build_adapter,
)
from factory.build import DemoModels

if TYPE_CHECKING:
    pass

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
