"""royalty-influence/3's checkpoint ensemble (TracIn-CP, Pruthi et al. 2020; TRAK's ensembles,
Park et al. 2023): score a response against the records at several points of the adapter's
one training run, not only at its final weights.

The factory saves the LoRA weights at `AdapterRecipe.checkpoints` evenly spaced steps (the
last one the final weights) under `<adapter>/checkpoints/` and lists them, with their sha256,
in lineage.json. The index holds, per checkpoint, the records' projected gradients at that
checkpoint's weights (the same count sketch for all: the tensors' names and sizes do not
change during training), each whitened on its own with the usual relative damping and unit
rows. A response's score for record r is the mean over checkpoints of
``Psi_k[r] . phi_k / mean_r' |Psi_k[r'] . phi_k|``: each checkpoint's scores scaled to mean
absolute value 1 first, so the checkpoint with the largest gradients (the earliest: the final
adapter fits its records and its gradients on them shrink) does not drown out the others.
With one checkpoint nothing is scaled: the scores are royalty-influence/2's exactly.

Why: on the LDS check the final weights' gradients on records the adapter already fits well
are small and carry little; the early checkpoints alone scored higher, and their average
higher still (docs/attribution.md, "Gradient influence"). The cost is K times the index
build, the index size and the per-response CPU.

An adapter without checkpoints (built before they existed, or with `checkpoints=0`) gets a
one-checkpoint index at its final weights.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attribution.influence.api import NoInfluenceIndex
from factory.layout import ADAPTER_WEIGHTS, LINEAGE, sha256_file

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Checkpoint:
    step: int | None
    """The training step after which the weights were saved; None: the final weights of an
    adapter whose lineage names no step (one built before checkpoints)."""
    file: str
    """Relative to the adapter directory."""
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "file": self.file, "sha256": self.sha256}


def checkpoint_path(adapter_dir: Path, file: str) -> Path:
    """Where the checkpoint's file is: in the adapter directory, or next to its lineage.json
    when that is a link to another build's (a bench's ablation directory links the files of
    the adapter it studies); the sha256 is checked wherever it is found."""
    adapter_dir = Path(adapter_dir)
    here = adapter_dir / file
    if here.exists() or not (adapter_dir / LINEAGE).is_symlink():
        return here
    return (adapter_dir / LINEAGE).resolve().parent / file


def adapter_checkpoints(adapter_dir: Path, *, ensemble: bool = True) -> list[Checkpoint]:
    """The checkpoints an index of the adapter in `adapter_dir` is built from, oldest first:
    those its lineage lists (files checked against their sha256), or its final weights
    alone when it lists none or `ensemble` is off."""
    adapter_dir = Path(adapter_dir)
    final = adapter_dir / ADAPTER_WEIGHTS
    if not final.is_file():
        raise NoInfluenceIndex(f"{adapter_dir} holds no {ADAPTER_WEIGHTS}")
    listed: list[dict[str, Any]] = []
    if ensemble and (adapter_dir / LINEAGE).is_file():
        try:
            listed = list(json.loads((adapter_dir / LINEAGE).read_text()).get("checkpoints", []))
        except (OSError, ValueError, AttributeError) as e:
            raise NoInfluenceIndex(f"{adapter_dir / LINEAGE}: unreadable: {e}") from e
    if not listed:
        return [Checkpoint(None, ADAPTER_WEIGHTS, sha256_file(final))]
    out = []
    for entry in listed:
        c = Checkpoint(int(entry["step"]), str(entry["file"]), str(entry["sha256"]))
        verify(adapter_dir, c)
        out.append(c)
    return sorted(out, key=lambda c: c.step or 0)


def verify(adapter_dir: Path, checkpoint: Checkpoint) -> Path:
    """The checkpoint's file, if it holds the bytes the index was built from."""
    path = checkpoint_path(adapter_dir, checkpoint.file)
    if not path.is_file() or sha256_file(path) != checkpoint.sha256:
        raise NoInfluenceIndex(f"{path}: missing or not the checkpoint the index was built from")
    return path


def from_header(header: dict[str, Any]) -> list[Checkpoint]:
    """The index's checkpoints; a /1 or /2 header lists none: its adapter's final weights."""
    listed = header.get("checkpoints")
    if not listed:
        return [Checkpoint(None, ADAPTER_WEIGHTS, str(header.get("adapter_weights_sha256")))]
    return [Checkpoint(c["step"], str(c["file"]), str(c["sha256"])) for c in listed]


def add_checkpoint_adapters(
    model: Any, adapter_dir: Path, template: str, checkpoints: Sequence[Checkpoint]
) -> list[str]:
    """One PEFT adapter per checkpoint on `model` (configured as its adapter `template`,
    which holds the adapter's final weights), named `<template>-ckpt<i>`; the final weights'
    own entry reuses `template`. Returns the names, in the checkpoints' order."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    names: list[str] = []
    try:
        for i, c in enumerate(checkpoints):
            path = verify(adapter_dir, c)
            if c.file == ADAPTER_WEIGHTS:
                names.append(template)
                continue
            name = f"{template}-ckpt{i}"
            model.add_adapter(name, model.peft_config[template])
            names.append(name)
            loaded: Any = set_peft_model_state_dict(model, load_file(str(path)), adapter_name=name)
            # missing keys name every other parameter of the model; only this adapter's count
            stray = [*loaded.unexpected_keys, *(k for k in loaded.missing_keys if f".{name}." in k)]
            if stray:
                raise NoInfluenceIndex(f"{path}: does not fit the adapter ({stray[:3]})")
    except BaseException:
        for name in names:
            if name != template:
                model.delete_adapter(name)
        raise
    for p in model.parameters():  # add_adapter leaves the new matrices trainable
        p.requires_grad_(False)
    return names


def combine(per_checkpoint: Sequence[np.ndarray]) -> np.ndarray:
    """Every record's score from each checkpoint's scores (records,): with one checkpoint
    its scores unchanged, else the mean of each scaled to mean absolute value 1."""
    import numpy as np

    if len(per_checkpoint) == 1:
        return np.asarray(per_checkpoint[0], dtype=np.float64)
    total = np.zeros(len(per_checkpoint[0]), dtype=np.float64)
    for s in per_checkpoint:
        s = np.asarray(s, dtype=np.float64)
        scale = float(np.abs(s).mean())
        total += s / scale if scale > 0 else s
    return total / len(per_checkpoint)


__all__ = [
    "Checkpoint",
    "adapter_checkpoints",
    "add_checkpoint_adapters",
    "checkpoint_path",
    "combine",
    "from_header",
    "verify",
]
