"""Pretraining the small Llama base model from scratch with plain torch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerBase

from factory.training import (
    StepCallback,
    TrainParams,
    TrainResult,
    deterministic_torch,
    pack_documents,
    train_causal_lm,
)

__all__ = ["ModelShape", "new_model", "pretrain_base"]


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    max_position_embeddings: int = 512
    tie_word_embeddings: bool = True


def new_model(shape: ModelShape, tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    """A freshly initialised Llama of `shape` for `tokenizer` (seed torch first)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_heads,
        intermediate_size=shape.intermediate_size,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=shape.tie_word_embeddings,
        hidden_act="silu",
        rms_norm_eps=1e-5,
        initializer_range=0.02,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attention_bias=False,
        mlp_bias=False,
    )
    return LlamaForCausalLM(config).float()


def pretrain_base(
    docs: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    shape: ModelShape,
    params: TrainParams,
    out_dir: Path,
    *,
    seed: int,
    threads: int,
    on_step: StepCallback | None = None,
) -> TrainResult:
    """Pretrain a new model on `docs` and save it with its tokenizer to `out_dir`
    (safetensors, float32, plus a generation config)."""
    from transformers import GenerationConfig

    with deterministic_torch(seed, threads):
        rows = pack_documents(tokenizer, docs, params.seq_len, seed)
        model = new_model(shape, tokenizer)
        result = train_causal_lm(model, rows, params, seed=seed, on_step=on_step)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    return result
