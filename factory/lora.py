"""LoRA fine-tuning of the base model on one domain's records, saved in PEFT format, with
the LoRA weights at a few intermediate steps beside it (the influence index's checkpoints)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

from factory.training import (
    StepCallback,
    TrainParams,
    TrainResult,
    checkpoint_steps,
    deterministic_torch,
    pack_documents,
    train_causal_lm,
)

__all__ = ["CHECKPOINT_DIR", "LoraShape", "checkpoint_file", "train_adapter"]

CHECKPOINT_DIR = "checkpoints"
"""Under the adapter directory: `step-<n>.safetensors`, the LoRA weights after step n, keyed
as PEFT's `get_peft_model_state_dict` names them (as in adapter_model.safetensors), so
`set_peft_model_state_dict` loads one into any adapter of the same config. vLLM reads only
adapter_config.json and adapter_model.safetensors and never looks here."""


def checkpoint_file(step: int) -> str:
    """The checkpoint's path relative to the adapter directory."""
    return f"{CHECKPOINT_DIR}/step-{step}.safetensors"


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
    checkpoints: int = 0,
) -> tuple[TrainResult, tuple[int, ...]]:
    """Fine-tune a LoRA adapter of the model in `base_dir` on `docs` and save it to
    `out_dir` (adapter_config.json + adapter_model.safetensors), and its LoRA weights at
    `checkpoints` evenly spaced steps (the last one the final weights) under
    `out_dir/checkpoints/`. Returns the training result and the checkpoints' steps."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    steps = checkpoint_steps(params.steps, checkpoints)

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

        def save_checkpoint(step: int) -> None:
            state = get_peft_model_state_dict(model)
            path = out_dir / checkpoint_file(step)
            path.parent.mkdir(exist_ok=True)
            # the metadata PEFT's save_pretrained writes: the file reads like adapter weights
            tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
            save_file(tensors, str(path), metadata={"format": "pt"})

        result = train_causal_lm(
            model,
            rows,
            params,
            seed=seed,
            on_step=on_step,
            checkpoints=steps,
            on_checkpoint=save_checkpoint,
        )
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
    return result, steps
