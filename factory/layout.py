"""The files of a build that other packages open by name, and how their bytes are checked.

A demo build's base model (`factory.build`) keeps its weights in `BASE_WEIGHTS`; an adapter
directory (`factory.adapters`) holds PEFT's `ADAPTER_WEIGHTS` (what vLLM serves), its LoRA
checkpoints (`factory.lora.checkpoint_file`) and `LINEAGE`, which lists those checkpoints
with their sha256 (`sha256_file`). The names are a file format: the influence index
(`attribution.influence`) opens them too. No torch here: importing this module is cheap.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["ADAPTER_WEIGHTS", "BASE_WEIGHTS", "LINEAGE", "sha256_file"]

BASE_WEIGHTS = "model.safetensors"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
LINEAGE = "lineage.json"


def sha256_file(path: Path) -> str:
    """The file's sha256, hex, read in 1 MiB chunks (weights files are large)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
