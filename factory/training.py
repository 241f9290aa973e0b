"""The training pieces that pretraining and LoRA fine-tuning share: deterministic torch
settings, document packing and one causal-LM training loop (AdamW, warmup + cosine)."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: `import factory` stays cheap
    import torch
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "CheckpointCallback",
    "StepCallback",
    "TrainParams",
    "TrainResult",
    "checkpoint_steps",
    "deterministic_torch",
    "document_order",
    "pack_documents",
    "train_causal_lm",
]

StepCallback = Callable[[int, float], None]
"""Called after each optimiser step with (steps done, that step's loss)."""

CheckpointCallback = Callable[[int], None]
"""Called after the optimiser step of each requested checkpoint step with (steps done)."""


@dataclass(frozen=True)
class TrainParams:
    steps: int
    batch_size: int
    seq_len: int
    lr: float
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0


@dataclass(frozen=True)
class TrainResult:
    losses: tuple[float, ...]
    seconds: float

    @property
    def final_loss(self) -> float:
        """Mean loss over the last tenth of the steps (at least one)."""
        tail = self.losses[-max(1, len(self.losses) // 10) :]
        return sum(tail) / len(tail)


@contextmanager
def deterministic_torch(seed: int, threads: int) -> Iterator[None]:
    """Seeded, deterministic-algorithm, fixed-thread-count torch; restored on exit."""
    import torch

    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)


def document_order(n: int, seed: int) -> list[int]:
    """The seeded order in which `pack_documents` lays out `n` documents."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def pack_documents(
    tokenizer: PreTrainedTokenizerBase, docs: Sequence[str], seq_len: int, seed: int
) -> torch.Tensor:
    """Documents as `<s> text </s>`, shuffled (seeded), concatenated and cut into rows of
    `seq_len` tokens (the incomplete tail is dropped). Shape `[rows, seq_len]`, int64."""
    import torch

    order = document_order(len(docs), seed)
    encoded = tokenizer([docs[i] for i in order], add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    flat: list[int] = []
    for ids in encoded:
        flat.extend(ids)
        flat.append(eos)
    rows = len(flat) // seq_len
    if rows == 0:
        raise ValueError(f"{len(flat)} tokens cannot fill one row of {seq_len}")
    return torch.tensor(flat[: rows * seq_len], dtype=torch.long).view(rows, seq_len)


def checkpoint_steps(steps: int, count: int) -> tuple[int, ...]:
    """`count` evenly spaced steps of a `steps`-step run, the last one `steps` itself (the
    final weights); fewer when the run is shorter than `count` steps, none for count 0."""
    if count <= 0 or steps <= 0:
        return ()
    return tuple(sorted({math.ceil(steps * (i + 1) / count) for i in range(count)}))


def _lr_lambda(p: TrainParams) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < p.warmup_steps:
            return (step + 1) / p.warmup_steps
        span = max(1, p.steps - p.warmup_steps)
        progress = min(1.0, (step - p.warmup_steps) / span)
        return p.min_lr_ratio + (1 - p.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def train_causal_lm(
    model: torch.nn.Module,
    rows: torch.Tensor,
    params: TrainParams,
    *,
    seed: int,
    on_step: StepCallback | None = None,
    checkpoints: Sequence[int] = (),
    on_checkpoint: CheckpointCallback | None = None,
) -> TrainResult:
    """Train the parameters of `model` that require grad on next-token prediction over
    `rows` (from `pack_documents`), in seeded random batches. Call inside
    `deterministic_torch` for reproducible weights. `on_checkpoint(n)` runs after step n
    for each n in `checkpoints` (the model in train mode; it must not touch the RNG)."""
    import torch

    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trainable if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in trainable if not (p.ndim >= 2 and "embed" not in n)]
    groups = [{"params": decay, "weight_decay": params.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=params.lr, betas=(0.9, 0.98), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(params))
    gen = torch.Generator().manual_seed(seed)

    def batches() -> Iterator[torch.Tensor]:
        while True:
            perm = torch.randperm(rows.shape[0], generator=gen)
            for i in range(0, len(perm) - params.batch_size + 1, params.batch_size):
                yield rows[perm[i : i + params.batch_size]]
            if rows.shape[0] < params.batch_size:
                yield rows[perm]

    wanted = set(checkpoints)
    model.train()
    losses: list[float] = []
    t0 = time.perf_counter()
    for step, batch in zip(range(params.steps), batches(), strict=False):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        if params.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for _, p in trainable], params.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step + 1, losses[-1])
        if on_checkpoint is not None and step + 1 in wanted:
            on_checkpoint(step + 1)
    model.eval()
    return TrainResult(tuple(losses), time.perf_counter() - t0)
