"""LoRA fine-tuning of the base model on one domain's records, saved in PEFT format."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

from serving.factory.training import (
    StepCallback,
    TrainParams,
    TrainResult,
    deterministic_torch,
    pack_documents,
    train_causal_lm,
)

__all__ = ["LoraShape", "train_adapter"]


@dataclass(frozen=True)
class LoraShape:
    rank: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )


def train_adapter(
    base_dir: Path,
    base_name: str,
    docs: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    shape: LoraShape,
    params: TrainParams,
    out_dir: Path,
    *,
    seed: int,
    threads: int,
    on_step: StepCallback | None = None,
) -> TrainResult:
    """Fine-tune a LoRA adapter of the model in `base_dir` on `docs` and save it to
    `out_dir` (adapter_config.json + adapter_model.safetensors)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    with deterministic_torch(seed, threads):
        base = LlamaForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
        config = LoraConfig(
            r=shape.rank,
            lora_alpha=shape.alpha,
            lora_dropout=0.0,
            target_modules=list(shape.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(base, config)
        rows = pack_documents(tokenizer, docs, params.seq_len, seed)
        result = train_causal_lm(model, rows, params, seed=seed, on_step=on_step)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    # The adapter names its base by the served model name, not a build-time temp path.
    cfg_path = out_dir / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = base_name
    cfg["target_modules"] = sorted(cfg["target_modules"])  # PEFT writes a set's order
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    readme = out_dir / "README.md"
    if readme.exists():  # PEFT's generated model card names the temp path too
        readme.unlink()
    return result
