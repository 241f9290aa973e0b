"""`GradientInfluence`: the real `InfluenceScorer`, over the indexes `build_influence_index`
writes next to each adapter.

`register` opens the adapter's index (memory-mapped) and loads the LoRA weights of each of
the index's checkpoints onto one shared CPU copy of the base (PEFT, one named adapter per
checkpoint per registration; a /1 or /2 index has one, the final weights). `score` renders
the prompt as the engine did (chat messages through the base tokenizer's chat template with
the generation prompt; a completions prompt as plain text after `<s>`), appends the output's
tokens, and at each checkpoint takes the gradient of the output tokens' summed loss with
respect to the LoRA matrices (one forward and backward per checkpoint), projects it with the
index's seeded sketch and scores every record of the adapter's snapshot against that
checkpoint's whitened record features (see `gradients`); `checkpoints.combine` averages the
checkpoints' scores. Only records in the index can be named, and the index holds exactly the
adapter's training records.

Thread-safety: calls are serialised by a lock (the worker calls from one thread anyway).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attribution.influence import checkpoints as ckpt
from attribution.influence.api import (
    InfluenceError,
    InfluenceResult,
    NoInfluenceIndex,
    RecordInfluence,
    UnknownAdapter,
)
from attribution.influence.gradients import (
    InfluenceIndex,
    find_index,
    lora_linears,
    pad_id,
    projected_gradients,
    sketch_for,
)
from attribution.influence.projection import CountSketch
from factory.layout import ADAPTER_WEIGHTS, sha256_file


@dataclass
class _Loaded:
    peft_names: list[str]
    """Every PEFT adapter this registration loaded (the final weights first)."""
    checkpoints: list[tuple[str, dict[str, Any]]]
    """Per index checkpoint, in the index's order: its PEFT adapter and LoRA linears."""
    index: InfluenceIndex
    sketch: CountSketch


def _text_of(content: Any) -> str:
    """OpenAI message content: a string, or a list of parts of which the text ones count."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return "" if content is None else str(content)


class GradientInfluence:
    def __init__(self, base_dir: Path, *, threads: int = 2, seed: int = 0) -> None:
        self.base_dir = Path(base_dir).absolute()
        self.threads = threads
        self.seed = seed
        self._model: Any = None
        self._tokenizer: Any = None
        self._adapters: dict[str, _Loaded] = {}
        self._names = 0
        self._lock = threading.RLock()

    # --- registry ----------------------------------------------------------------------

    def register(self, adapter: str, adapter_dir: Path) -> None:
        import torch
        from peft import PeftModel
        from transformers import AutoTokenizer, LlamaForCausalLM

        adapter_dir = Path(adapter_dir).absolute()
        index = InfluenceIndex.open(find_index(adapter_dir))
        if not (adapter_dir / ADAPTER_WEIGHTS).is_file() or sha256_file(
            adapter_dir / ADAPTER_WEIGHTS
        ) != index.header.get("adapter_weights_sha256"):
            raise NoInfluenceIndex(f"{index.path} was built for other weights than {adapter_dir}")
        from factory.progress import quiet_offline_hf

        with self._lock, quiet_offline_hf():
            self.forget(adapter)
            self._names += 1
            peft_name = f"influence{self._names}"
            if self._model is None:
                self._tokenizer = AutoTokenizer.from_pretrained(str(self.base_dir))
                base = LlamaForCausalLM.from_pretrained(str(self.base_dir), dtype=torch.float32)
                self._model = PeftModel.from_pretrained(base, str(adapter_dir), peft_name)
            else:
                self._model.load_adapter(str(adapter_dir), adapter_name=peft_name)
            self._model.eval()
            for p in self._model.parameters():
                p.requires_grad_(False)
            added = [peft_name]
            try:
                names = ckpt.add_checkpoint_adapters(
                    self._model, adapter_dir, peft_name, index.checkpoints
                )
                added += [n for n in names if n != peft_name]
                linears = lora_linears(self._model, peft_name)
                tensors = {n: lin.weight.numel() for n, lin in linears.items()}
                if tensors != index.header.get("tensors"):
                    raise NoInfluenceIndex(f"{index.path}: its tensors do not match the adapter")
            except BaseException:
                self._drop(added)
                raise
            self._adapters[adapter] = _Loaded(
                added,
                [(n, lora_linears(self._model, n)) for n in names],
                index,
                sketch_for(linears, int(index.header["dim"]), int(index.header["seed"])),
            )

    def forget(self, adapter: str) -> None:
        with self._lock:
            loaded = self._adapters.pop(adapter, None)
            if loaded is not None:
                self._drop(loaded.peft_names)

    def _drop(self, peft_names: list[str]) -> None:
        if self._model is None:
            return
        if len(self._model.peft_config) > len(peft_names):
            for name in peft_names:
                self._model.delete_adapter(name)
        else:  # PEFT keeps at least one adapter: drop the whole model instead
            self._model = None

    def knows(self, adapter: str) -> bool:
        with self._lock:
            return adapter in self._adapters

    # --- scoring -------------------------------------------------------------------------

    def render(self, prompt: str | list[Any], output: str) -> tuple[list[int], list[int]]:
        """Token ids of prompt + output as the engine saw them, and the loss mask (1 on the
        output's tokens)."""
        tok = self._tokenizer
        if isinstance(prompt, str):
            prompt_ids = tok(prompt, add_special_tokens=True)["input_ids"]
        elif isinstance(prompt, list):
            messages = [
                {"role": str(m.get("role", "user")), "content": _text_of(m.get("content"))}
                for m in prompt
                if isinstance(m, dict)
            ]
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
        else:
            raise InfluenceError(f"prompt must be a string or chat messages, not {type(prompt)}")
        output_ids = tok(output, add_special_tokens=False)["input_ids"]
        limit = int(self._model.config.max_position_embeddings)
        output_ids = output_ids[: limit - 1]
        prompt_ids = prompt_ids[-(limit - len(output_ids)) :]  # keep the prompt's end
        return prompt_ids + output_ids, [0] * len(prompt_ids) + [1] * len(output_ids)

    def response_features(self, adapter: str, prompt: str | list[Any], output: str) -> Any:
        """The response's projected gradient at each of the index's checkpoints
        (checkpoints, dim), or None when the output has no tokens."""
        import numpy as np

        from factory.training import deterministic_torch

        loaded = self._adapters.get(adapter)
        if loaded is None:
            raise UnknownAdapter(adapter)
        ids, mask = self.render(prompt, output)
        if sum(mask) == 0:
            return None
        rows = []
        for peft_name, linears in loaded.checkpoints:
            self._model.set_adapter(peft_name)
            for p in self._model.parameters():  # set_adapter marks the active adapter trainable
                p.requires_grad_(False)
            with deterministic_torch(self.seed, self.threads):
                phi = projected_gradients(
                    self._model, linears, loaded.sketch, [(ids, mask)], pad_id(self._tokenizer)
                )
            rows.append(phi[0].numpy())
        return np.stack(rows)

    def _scores(self, loaded: _Loaded, phi: Any) -> Any:
        import numpy as np

        features = loaded.index.features
        per_checkpoint = [
            np.asarray(features[k] @ phi[k], dtype=np.float64) for k in range(len(phi))
        ]
        return ckpt.combine(per_checkpoint)

    def score(
        self, adapter: str, prompt: str | list[Any], output: str, *, top_k: int = 32
    ) -> InfluenceResult:
        import numpy as np

        started = time.process_time()
        with self._lock:
            loaded = self._adapters.get(adapter)
            if loaded is None:
                raise UnknownAdapter(adapter)
            phi = self.response_features(adapter, prompt, output)
            if phi is None or top_k <= 0:
                return InfluenceResult(loaded.index.method, (), time.process_time() - started)
            scores = self._scores(loaded, phi)
            k = min(top_k, len(scores))
            top = np.argpartition(-scores, k - 1)[:k]
            ids = loaded.index.record_ids
            picked = sorted(
                (RecordInfluence(int(ids[i]), float(scores[i])) for i in top if scores[i] > 0),
                key=lambda r: (-r.score, r.record_id),
            )
        return InfluenceResult(loaded.index.method, tuple(picked), time.process_time() - started)

    def all_scores(self, adapter: str, prompt: str | list[Any], output: str) -> Any:
        """Every record's score, in the index's record order (benchmarks, tests)."""
        import numpy as np

        with self._lock:
            loaded = self._adapters.get(adapter)
            if loaded is None:
                raise UnknownAdapter(adapter)
            phi = self.response_features(adapter, prompt, output)
            if phi is None:
                return np.zeros(len(loaded.index.record_ids))
            return self._scores(loaded, phi)

    def record_ids(self, adapter: str) -> list[int]:
        with self._lock:
            loaded = self._adapters.get(adapter)
            if loaded is None:
                raise UnknownAdapter(adapter)
            return [int(r) for r in loaded.index.record_ids]


__all__ = ["GradientInfluence"]
