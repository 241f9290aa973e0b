"""Per-record LoRA gradients of an adapter, projected and whitened: the influence index.

At adapter build time (`build_influence_index`) every training record's document
(`TrainingExample.document()`, tokenised by the base's tokenizer as the factory trains on it:
``<s> text </s>``) goes through the adapter (PEFT on the base, CPU, float32) in batches; one
backward pass per batch yields every record's own gradient of its summed token loss with
respect to the LoRA matrices, by the per-sample trick for linear layers (LoGra, Choe et al.
2024): the weight gradient of ``y = W x`` for one sequence is ``sum over t of dy_t x_t^T``, so
hooks keep each LoRA A/B input and output gradient and an einsum per batch gives the (batch,
out, in) gradients without a backward per record. Each gradient is sketched to `dim`
coordinates (`projection.CountSketch`, seeded), giving the feature matrix Phi (records x dim).

Whitening as in TRAK (Park et al. 2023): with F = Phi^T Phi (the projected Gauss-Newton /
Fisher approximation of the loss curvature) and damping lambda = `damping` x the mean of F's
nonzero eigenvalues (trace / min(records, dim): F has rank at most the number of records), the
index stores Psi = Phi (F + lambda I)^-1, so that a response's projected gradient phi scores
record i as ``Psi_i . phi = phi_i^T (F + lambda I)^-1 phi``: the first-order change of the
response's loss from up-weighting record i, positive when the record helped. Each row of
Psi is then scaled to unit length (`unit_rows`), so a record's score is the cosine of its
whitened gradient with the response's: what counts is the direction, not the record's length
or loss.

royalty-influence/3 does all of this at each of the adapter's training checkpoints (the LoRA
weights the factory saved at evenly spaced steps) and averages the scores (`checkpoints`).
/2 used the final weights alone; /1 also divided the trace by `dim` whatever the number of
records, so with fewer records than dimensions its damping was smaller than intended.

Layout, next to the adapter's weights, in a directory named by the digest of everything the
numbers depend on (the method, the parameters, the base and adapter weights, the checkpoints'
bytes, the records):

    influence-<digest16>/header.json    format, method, seed, dim, damping, checkpoints, record ids
    influence-<digest16>/features.f32   Psi per checkpoint, float32 (checkpoints x records x dim),
                                        memory-mapped (a /1 or /2 index: records x dim)

Built once, atomically (temp directory + rename), deterministically (seeded, fixed threads,
fixed batches): the same inputs give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attribution.influence import checkpoints as ckpt
from attribution.influence.api import INFLUENCE_METHOD, READABLE_METHODS, NoInfluenceIndex
from attribution.influence.projection import CountSketch
from factory.layout import ADAPTER_WEIGHTS, BASE_WEIGHTS, sha256_file

if TYPE_CHECKING:
    import numpy as np
    import torch

    from factory.adapters import TrainingExample

INDEX_FORMAT = 2
READABLE_FORMATS = (1, 2)
"""1: /1 and /2 indexes, one feature matrix at the final weights; 2: one per checkpoint."""
HEADER = "header.json"
FEATURES = "features.f32"


@dataclass(frozen=True)
class InfluenceParams:
    dim: int = 2048
    """Projection dimension: scores' relative error ~ 1/sqrt(dim); index = records x dim x 4 B."""
    seed: int = 20240917
    damping: float = 1.0
    """lambda as a multiple of the mean of F's nonzero eigenvalues: keeps the inverse stable
    where few records span a direction. 1.0 rather than LoGra's 0.1: on the LDS check the best
    of 0.01-10 (flat from 0.5 to 2); on the planted canaries 0.3-1 were best, within two
    canaries of each other (docs/attribution.md, "Quality")."""
    unit_rows: bool = True
    """Scale each record's whitened row Psi_i to unit length (LESS, Xia et al. 2024, uses
    unit gradients): otherwise a long record that contains a short one outscores it on the
    short one's own text, and records with large gradients win every query. On the canaries
    +0 to +4 of 63 in the top 3; on LDS 0.01 lower (0.336 vs 0.346, stderr 0.05)."""
    max_tokens: int = 256
    """A record longer than this is scored on its first max_tokens tokens."""
    batch_tokens: int = 4096
    """Records per backward pass: as many as fit this many (padded) tokens."""
    threads: int = 2
    ensemble: bool = True
    """Score at every checkpoint the adapter's lineage lists (royalty-influence/3); False:
    at the final weights alone, i.e. /2's scores (the LDS bench's ablation)."""


# --- the model and its LoRA matrices ---------------------------------------------------------


def load_lora_model(base_dir: Path, adapter_dir: Path, adapter_name: str = "default") -> Any:
    """The base with the adapter on top (PEFT), on the CPU, float32, eval mode."""
    import torch
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    base = LlamaForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter_dir), adapter_name=adapter_name)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def lora_linears(model: Any, adapter_name: str) -> dict[str, Any]:
    """Canonical tensor name (base module path + ".lora_A" / ".lora_B") -> the nn.Linear that
    holds it, for the adapter `adapter_name`. The names do not depend on the PEFT wrapper or
    the adapter's name, so the build and the scorer hash the same tensors the same way."""
    out: dict[str, Any] = {}
    for path, module in model.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if lora_a is None or adapter_name not in lora_a:
            continue
        canonical = path.removeprefix("base_model.model.")
        out[f"{canonical}.lora_A"] = lora_a[adapter_name]
        out[f"{canonical}.lora_B"] = module.lora_B[adapter_name]
    if not out:
        raise NoInfluenceIndex(f"adapter {adapter_name!r} has no LoRA matrices")
    return dict(sorted(out.items()))


def sketch_for(linears: dict[str, Any], dim: int, seed: int) -> CountSketch:
    return CountSketch({n: lin.weight.numel() for n, lin in linears.items()}, dim, seed)


class PerSampleGrads:
    """Hooks on the LoRA linears: after one backward of a sum of per-sequence losses,
    `grads()` holds each sequence's own weight gradient, (batch, out*in) per tensor."""

    def __init__(self, linears: dict[str, Any]) -> None:
        self._linears = linears
        self._inputs: dict[str, torch.Tensor] = {}
        self._grad_out: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> PerSampleGrads:
        for name, lin in self._linears.items():
            lin.weight.requires_grad_(True)
            self._handles.append(lin.register_forward_hook(self._forward(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for lin in self._linears.values():
            lin.weight.requires_grad_(False)
            lin.weight.grad = None

    def _forward(self, name: str) -> Callable[..., None]:
        def hook(module: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
            self._inputs[name] = inputs[0].detach()

            def keep(grad: torch.Tensor) -> None:
                self._grad_out[name] = grad.detach()

            output.register_hook(keep)

        return hook

    def grads(self) -> dict[str, torch.Tensor]:
        import torch

        out: dict[str, torch.Tensor] = {}
        for name in self._linears:
            x, dy = self._inputs.pop(name), self._grad_out.pop(name)
            g = torch.einsum("bto,bti->boi", dy, x)
            out[name] = g.reshape(g.shape[0], -1)
        for lin in self._linears.values():
            lin.weight.grad = None
        return out


def sequence_losses(model: Any, ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence summed next-token loss over the positions `loss_mask` marks (the mask is
    over `ids`: a marked token is predicted from the ones before it). Right padding."""
    import torch

    attention = (loss_mask >= 0).long()  # -1 marks padding
    logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
    targets = ids[:, 1:]
    weights = (loss_mask[:, 1:] > 0).to(logits.dtype)
    token_loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    ).view(targets.shape)
    return (token_loss * weights).sum(dim=1)


def pad_batch(seqs: Sequence[tuple[list[int], list[int]]], pad_id: int) -> tuple[Any, Any]:
    """(token ids, loss mask 0/1) per sequence -> right-padded ids and mask (-1 = padding)."""
    import torch

    width = max(len(ids) for ids, _ in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.full((len(seqs), width), -1, dtype=torch.long)
    for row, (t, m) in enumerate(seqs):
        ids[row, : len(t)] = torch.tensor(t, dtype=torch.long)
        mask[row, : len(m)] = torch.tensor(m, dtype=torch.long)
    return ids, mask


def projected_gradients(
    model: Any,
    linears: dict[str, Any],
    sketch: CountSketch,
    seqs: Sequence[tuple[list[int], list[int]]],
    pad_id: int,
) -> torch.Tensor:
    """(len(seqs), dim): each sequence's projected gradient, one backward for all of them."""
    ids, mask = pad_batch(seqs, pad_id)
    with PerSampleGrads(linears) as hooks:
        sequence_losses(model, ids, mask).sum().backward()
        return sketch.project(hooks.grads())


# --- the index -----------------------------------------------------------------------------


def pad_id(tokenizer: Any) -> int:
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)


def record_tokens(tokenizer: Any, docs: Sequence[str], max_tokens: int) -> list[list[int]]:
    """`<s> doc </s>` ids, as `factory.training.pack_documents` lays documents out."""
    encoded = tokenizer(list(docs), add_special_tokens=True)["input_ids"]
    return [[*ids, tokenizer.eos_token_id][:max_tokens] for ids in encoded]


def _batches(lengths: Sequence[int], batch_tokens: int) -> Iterator[list[int]]:
    """Record positions, sorted by length (less padding), cut so a batch stays under
    batch_tokens padded tokens. Deterministic in the lengths."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) + 1) * lengths[i] > batch_tokens:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def index_key(
    base_dir: Path, adapter_dir: Path, records: Sequence[tuple[int, str]], params: InfluenceParams
) -> str:
    h = hashlib.sha256()
    h.update(f"{INFLUENCE_METHOD}\0{INDEX_FORMAT}\0".encode())
    h.update(json.dumps(asdict(params), sort_keys=True).encode())
    h.update(sha256_file(Path(base_dir) / BASE_WEIGHTS).encode())
    h.update(sha256_file(Path(adapter_dir) / ADAPTER_WEIGHTS).encode())
    for c in ckpt.adapter_checkpoints(adapter_dir, ensemble=params.ensemble):
        h.update(f"\0{c.step}\0{c.file}\0{c.sha256}".encode())
    for rid, doc in records:
        h.update(f"\0{rid}\0".encode())
        h.update(doc.encode())
    return h.hexdigest()


def whiten(phi: np.ndarray, damping: float) -> tuple[np.ndarray, float]:
    """Psi = Phi (Phi^T Phi + lambda I)^-1 (float64 inside), and lambda."""
    import numpy as np

    phi64 = phi.astype(np.float64)
    fisher = phi64.T @ phi64
    lam = damping * float(np.trace(fisher)) / min(phi64.shape)  # mean nonzero eigenvalue
    if lam <= 0:
        lam = 1e-12
    fisher[np.diag_indices_from(fisher)] += lam
    # symmetric positive definite: Cholesky solve; Psi^T = (F + lam I)^-1 Phi^T
    chol = np.linalg.cholesky(fisher)
    y = np.linalg.solve(chol, phi64.T)
    psi_t = np.linalg.solve(chol.T, y)
    return np.ascontiguousarray(psi_t.T.astype(np.float32)), lam


def unit_rows(psi: np.ndarray) -> np.ndarray:
    import numpy as np

    norms = np.linalg.norm(psi.astype(np.float64), axis=1, keepdims=True)
    return (psi / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def build_influence_index(
    base_dir: Path,
    adapter_dir: Path,
    examples: Sequence[TrainingExample],
    *,
    params: InfluenceParams | None = None,
    progress: bool = True,
) -> Path:
    """The influence index of the adapter in `adapter_dir` (trained on `examples` in snapshot
    order, over the base in `base_dir`), in `adapter_dir/influence-<digest16>/`; built once,
    atomically. Returns its directory."""
    params = params or InfluenceParams()
    base_dir, adapter_dir = Path(base_dir).absolute(), Path(adapter_dir).absolute()
    if not examples:
        raise ValueError("an influence index needs at least one record")
    records = [(int(ex.record_id), ex.document()) for ex in examples]
    key = index_key(base_dir, adapter_dir, records, params)
    target = adapter_dir / f"influence-{key[:16]}"
    if _valid(target, key):
        return target
    tmp = adapter_dir / f".influence-{key[:16]}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        header = _build_into(tmp, base_dir, adapter_dir, records, params, progress)
        header["key"] = key
        (tmp / HEADER).write_text(json.dumps(header, sort_keys=True) + "\n")  # last: complete
        for path in tmp.iterdir():
            path.chmod(0o644)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _valid(target, key):  # not a concurrent build of the same index
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _valid(target: Path, key: str) -> bool:
    try:
        header = json.loads((target / HEADER).read_text())
        size = (target / FEATURES).stat().st_size
    except (OSError, ValueError):
        return False
    rows = len(header.get("checkpoints") or [None]) * len(header["record_ids"])
    return header.get("key") == key and size == 4 * rows * header["dim"]


def _build_into(
    tmp: Path,
    base_dir: Path,
    adapter_dir: Path,
    records: Sequence[tuple[int, str]],
    params: InfluenceParams,
    progress: bool,
) -> dict[str, Any]:
    import numpy as np
    from transformers import AutoTokenizer

    from factory.progress import ProgressBars, quiet_offline_hf
    from factory.training import deterministic_torch

    t0 = time.perf_counter()
    checkpoints = ckpt.adapter_checkpoints(adapter_dir, ensemble=params.ensemble)
    lams: list[float] = []
    gradient_s = 0.0
    with quiet_offline_hf(), deterministic_torch(params.seed, params.threads):
        tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
        model = load_lora_model(base_dir, adapter_dir)
        names = ckpt.add_checkpoint_adapters(model, adapter_dir, "default", checkpoints)
        tensors = {n: lin.weight.numel() for n, lin in lora_linears(model, "default").items()}
        sketch = CountSketch(tensors, params.dim, params.seed)  # one sketch: same tensors
        tokens = record_tokens(tokenizer, [doc for _, doc in records], params.max_tokens)
        psi = np.zeros((len(checkpoints), len(records), params.dim), dtype=np.float32)
        with ProgressBars(progress) as bars:
            tick = bars.stage("influence gradients", len(records) * len(checkpoints))
            for k, name in enumerate(names):
                model.set_adapter(name)
                for p in model.parameters():  # set_adapter marks the active adapter trainable
                    p.requires_grad_(False)
                linears = lora_linears(model, name)
                done = k * len(records)
                t1 = time.perf_counter()
                phi = np.zeros((len(records), params.dim), dtype=np.float32)
                for batch in _batches([len(t) for t in tokens], params.batch_tokens):
                    seqs = [(tokens[i], [1] * len(tokens[i])) for i in batch]
                    phi[batch] = projected_gradients(
                        model, linears, sketch, seqs, pad_id(tokenizer)
                    ).numpy()
                    done += len(batch)
                    tick(done, -1.0)
                gradient_s += time.perf_counter() - t1
                psi[k], lam = whiten(phi, params.damping)
                lams.append(lam)
                if params.unit_rows:
                    psi[k] = unit_rows(psi[k])
    psi.tofile(tmp / FEATURES)
    return {
        "format": INDEX_FORMAT,
        "method": INFLUENCE_METHOD,
        "projection": "countsketch-per-tensor",
        **asdict(params),
        "lambda": lams[-1],
        "checkpoints": [
            {**c.to_json(), "lambda": lam} for c, lam in zip(checkpoints, lams, strict=True)
        ],
        "tensors": tensors,
        "record_ids": [rid for rid, _ in records],
        "adapter_weights_sha256": sha256_file(adapter_dir / ADAPTER_WEIGHTS),
        "gradient_seconds": round(gradient_s, 2),
        "build_seconds": round(time.perf_counter() - t0, 2),
    }


@dataclass(frozen=True)
class InfluenceIndex:
    path: Path
    header: dict[str, Any]
    record_ids: np.ndarray
    features: np.ndarray
    """Psi per checkpoint, memory-mapped, (checkpoints, records, dim) float32."""

    @classmethod
    def open(cls, path: Path) -> InfluenceIndex:
        import numpy as np

        try:
            header = json.loads((Path(path) / HEADER).read_text())
            if (
                header.get("format") not in READABLE_FORMATS
                or header.get("method") not in READABLE_METHODS
            ):
                raise NoInfluenceIndex(f"{path}: unknown influence index format or method")
            ids = np.asarray(header["record_ids"], dtype=np.int64)
            shape = (len(ckpt.from_header(header)), len(ids), header["dim"])
            features = np.memmap(Path(path) / FEATURES, dtype=np.float32, mode="r", shape=shape)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise NoInfluenceIndex(f"{path}: no usable influence index: {e}") from e
        return cls(Path(path), header, ids, features)

    @property
    def method(self) -> str:
        """The method the index was built with (its results carry it)."""
        return str(self.header["method"])

    @property
    def checkpoints(self) -> list[ckpt.Checkpoint]:
        return ckpt.from_header(self.header)

    @property
    def params(self) -> InfluenceParams:
        fields = InfluenceParams.__dataclass_fields__
        old: dict[str, Any] = {"unit_rows": False, "ensemble": False}  # /1, /2 predate them
        values: dict[str, Any] = {k: self.header.get(k, old.get(k)) for k in fields}
        return InfluenceParams(**values)


def find_index(adapter_dir: Path) -> Path:
    """The adapter's influence index directory (the newest when several were built)."""
    found = [p for p in Path(adapter_dir).glob("influence-*") if (p / HEADER).is_file()]
    if not found:
        raise NoInfluenceIndex(f"no influence index in {adapter_dir}")
    return max(found, key=lambda p: ((p / HEADER).stat().st_mtime, p.name))


__all__ = [
    "InfluenceIndex",
    "InfluenceParams",
    "build_influence_index",
    "find_index",
    "load_lora_model",
    "lora_linears",
    "projected_gradients",
    "record_tokens",
]
