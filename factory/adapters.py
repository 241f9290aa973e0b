"""Train a LoRA adapter on a published datanet snapshot and write its lineage manifest.

Every adapter, the demo ones included, is built here: `build_adapter` takes the snapshot's
records (in snapshot order), trains with PEFT against a built base model with seeded,
deterministic torch, and writes into `out_root/<name>-<key16>/`:

    adapter_config.json, adapter_model.safetensors   PEFT format, served by vLLM at runtime
    checkpoints/step-<n>.safetensors                 LoRA weights after step n (`recipe.checkpoints`
                                                     evenly spaced steps, the last the final
                                                     weights): the influence index's ensemble
    lineage.json                                     what the adapter was made from

`key` hashes everything the weights depend on (factory version, base weights, snapshot,
record contents in order, hyperparameters), so the same inputs find the same directory and
the same bytes: a rebuild is a cache hit, and a rebuild from scratch (another machine, a
deleted cache) gives byte-identical weights. Directories appear atomically (temp + rename).

The factory does not know about datanets' tables: callers hand it `TrainingExample`s and a
`SnapshotRef` (the gateway's factory job reads them from `attribution`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory.build import (
    FACTORY_VERSION,
    DemoModels,
    _build_lock,
    _remove_stale_temps,
    _versions,
)
from factory.corpus import chat_layout
from factory.layout import ADAPTER_WEIGHTS, LINEAGE, sha256_file
from factory.lora import LoraShape, checkpoint_file
from factory.progress import ProgressBars, quiet_offline_hf
from factory.training import TrainParams, document_order

__all__ = [
    "LINEAGE",
    "LINEAGE_FORMAT",
    "AdapterBuild",
    "AdapterCheckpoint",
    "AdapterRecipe",
    "LineageError",
    "SnapshotRef",
    "TrainingExample",
    "build_adapter",
    "load_adapter_build",
]

LINEAGE_FORMAT = 1


@dataclass(frozen=True)
class TrainingExample:
    """One snapshot record as the factory sees it: plain text or a prompt/completion pair."""

    record_id: int
    text: str | None = None
    prompt: str | None = None
    completion: str | None = None

    def document(self) -> str:
        """The training document: the text, or the pair in the chat template's layout."""
        if self.text is not None:
            return self.text
        if self.prompt is None or self.completion is None:
            raise ValueError(f"record {self.record_id} has neither text nor a prompt/completion")
        return chat_layout(self.prompt, self.completion)


@dataclass(frozen=True)
class SnapshotRef:
    id: str
    root: str
    datanet_id: int
    datanet: str
    record_count: int
    token_count: int


@dataclass(frozen=True)
class AdapterRecipe:
    """The hyperparameters; all of them go into the cache key and the lineage."""

    lora: LoraShape = LoraShape()
    train: TrainParams = TrainParams(
        steps=120, batch_size=16, seq_len=128, lr=5e-3, warmup_steps=10
    )
    seed: int = 1235
    threads: int = 2
    """torch threads; fixed so that the weights do not depend on the machine's core count."""
    checkpoints: int = 4
    """LoRA weights saved at this many evenly spaced steps (the last the final weights) for
    royalty-influence/3's checkpoint ensemble; 0 saves none. In the cache key: an adapter
    built before this existed is another build (it keeps working, with a one-checkpoint
    influence index)."""

    @classmethod
    def tiny(cls) -> AdapterRecipe:
        """Seconds, for tests on `FactoryConfig.tiny()` bases."""
        return cls(train=TrainParams(steps=100, batch_size=8, seq_len=64, lr=1e-2, warmup_steps=3))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class AdapterCheckpoint:
    step: int
    path: Path
    sha256: str


@dataclass(frozen=True)
class AdapterBuild:
    name: str
    path: Path
    weights_sha256: str
    lineage: dict[str, Any] = field(repr=False)
    lineage_sha256: str = ""
    cached: bool = False
    checkpoints: tuple[AdapterCheckpoint, ...] = ()
    """Oldest first; empty for builds that saved none (before `AdapterRecipe.checkpoints`)."""


class LineageError(ValueError):
    """A directory holds no complete, intact adapter build."""


def cache_key(
    base: DemoModels,
    snapshot: SnapshotRef,
    examples: Sequence[TrainingExample],
    recipe: AdapterRecipe,
) -> str:
    h = hashlib.sha256()
    h.update(FACTORY_VERSION.encode())
    h.update(b"\0adapter\0")
    h.update(base.manifest["base"]["weights_sha256"].encode())
    h.update(f"\0{snapshot.id}\0{snapshot.root}\0".encode())
    h.update(json.dumps(recipe.to_dict(), sort_keys=True, separators=(",", ":")).encode())
    for ex in examples:
        h.update(f"\0{ex.record_id}\0".encode())
        h.update(ex.document().encode())
    return h.hexdigest()


def load_adapter_build(directory: Path, *, verify: bool = True) -> AdapterBuild:
    """The adapter in `directory`, from its lineage.json (weights checked with `verify`)."""
    directory = Path(directory).absolute()
    try:
        raw = (directory / LINEAGE).read_bytes()
        lineage = json.loads(raw)
        if lineage.get("format") != LINEAGE_FORMAT:
            raise LineageError(f"{directory}: unknown lineage format {lineage.get('format')}")
        weights = lineage["weights_sha256"]
        name = lineage["adapter"]
        checkpoints = tuple(
            AdapterCheckpoint(
                int(c["step"]), directory / checkpoint_file(int(c["step"])), c["sha256"]
            )
            for c in lineage.get("checkpoints", ())
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        if isinstance(e, LineageError):
            raise
        raise LineageError(f"{directory}: no valid {LINEAGE}: {e}") from e
    if verify:
        files = [(directory / ADAPTER_WEIGHTS, weights)] + [(c.path, c.sha256) for c in checkpoints]
        for path, digest in files:
            if not path.is_file() or sha256_file(path) != digest:
                raise LineageError(f"{path}: missing or does not match lineage")
    raw_sha = hashlib.sha256(raw).hexdigest()
    return AdapterBuild(name, directory, weights, lineage, raw_sha, checkpoints=checkpoints)


def build_adapter(
    base: DemoModels,
    name: str,
    snapshot: SnapshotRef,
    examples: Sequence[TrainingExample],
    out_root: Path,
    *,
    recipe: AdapterRecipe | None = None,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> AdapterBuild:
    """Train adapter `name` on `examples` (the snapshot's records, in snapshot order), or
    find the identical build under `out_root`."""
    recipe = recipe or AdapterRecipe()
    if not examples:
        raise ValueError("a snapshot with no records cannot train an adapter")
    key = cache_key(base, snapshot, examples, recipe)
    out_root = Path(out_root).absolute()
    out = out_root / f"{name}-{key[:16]}"
    if (hit := _cached(out)) is not None:
        return hit
    out_root.mkdir(parents=True, exist_ok=True)
    with _build_lock(out_root, key[:16]):
        if (hit := _cached(out)) is not None:
            return hit
        _remove_stale_temps(out_root)
        tmp = out_root / f".build-{key[:16]}-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            _train_into(tmp, base, name, snapshot, examples, recipe, key, progress, on_step)
            os.rename(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dataclasses.replace(load_adapter_build(out), cached=False)


def _cached(out: Path) -> AdapterBuild | None:
    if not out.exists():
        return None
    try:
        return dataclasses.replace(load_adapter_build(out), cached=True)
    except LineageError:
        trash = out.with_name(f".build-trash-{os.getpid()}-{secrets.token_hex(4)}")
        os.rename(out, trash)
        shutil.rmtree(trash, ignore_errors=True)
        return None


def _train_into(
    tmp: Path,
    base: DemoModels,
    name: str,
    snapshot: SnapshotRef,
    examples: Sequence[TrainingExample],
    recipe: AdapterRecipe,
    key: str,
    progress: bool,
    on_step: Callable[[int, float], None] | None,
) -> None:
    from transformers import AutoTokenizer

    from factory.lora import train_adapter

    docs = [ex.document() for ex in examples]
    order = document_order(len(docs), recipe.seed)
    t0 = time.perf_counter()
    with quiet_offline_hf(), ProgressBars(progress) as bars:
        tokenizer = AutoTokenizer.from_pretrained(str(base.base_path))
        tick = bars.stage(f"adapter {name}", recipe.train.steps)

        def step(done: int, loss: float) -> None:
            tick(done, loss)
            if on_step is not None:
                on_step(done, loss)

        result, steps = train_adapter(
            base.base_path,
            base.base_name,
            docs,
            tokenizer,
            recipe.lora,
            recipe.train,
            tmp,
            seed=recipe.seed,
            threads=recipe.threads,
            on_step=step,
            checkpoints=recipe.checkpoints,
        )
    training_order = [examples[i].record_id for i in order]
    order_digest = hashlib.sha256(",".join(map(str, training_order)).encode()).hexdigest()
    lineage: dict[str, Any] = {
        "format": LINEAGE_FORMAT,
        "factory_version": FACTORY_VERSION,
        "adapter": name,
        "cache_key": key,
        "base": {
            "name": base.base_name,
            "weights_sha256": base.manifest["base"]["weights_sha256"],
            "content_hash": base.manifest.get("content_hash"),
        },
        "snapshot": dataclasses.asdict(snapshot),
        "records": {
            "count": len(training_order),
            "training_order": training_order,
            "training_order_sha256": order_digest,
        },
        "hyperparameters": recipe.to_dict(),
        "metrics": {
            "final_loss": round(result.final_loss, 4),
            "loss_curve": [round(x, 4) for x in result.losses],
            "train_seconds": round(result.seconds, 1),
            "build_seconds": round(time.perf_counter() - t0, 1),
        },
        "weights_sha256": sha256_file(tmp / ADAPTER_WEIGHTS),
        "versions": _versions(),
    }
    if steps:  # absent, not empty, when none were saved: such a lineage reads as before
        lineage["checkpoints"] = [
            {
                "step": n,
                "file": checkpoint_file(n),
                "sha256": sha256_file(tmp / checkpoint_file(n)),
            }
            for n in steps
        ]
    for path in tmp.rglob("*"):
        if path.is_file():
            path.chmod(0o644)
    # Written last: a directory with a lineage.json is a complete build.
    (tmp / LINEAGE).write_text(json.dumps(lineage, indent=2, sort_keys=True) + "\n")
