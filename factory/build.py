"""Build (or find in the cache) the demo base model and its LoRA adapters.

`build_demo_models(root)` generates the corpus, hashes it together with the configuration
and `FACTORY_VERSION`, and returns `root/<hash[:16]>/` if a valid build is already there.
Otherwise it trains a tokenizer and pretrains the base into a temporary sibling directory,
writes `manifest.json` last, and renames the directory into place atomically, so an
interrupted build never leaves a half-written cache entry.

The demo adapters are not built here: their records (`demo_contributions`) are contributed
to three demo datanets, and `factory.adapters.build_adapter` trains each adapter on
its datanet's published snapshot, the same path every adapter takes.

Layout of a build::

    <hash16>/manifest.json
    <hash16>/base/                 config.json, generation_config.json, model.safetensors,
                                   tokenizer.json, tokenizer_config.json, chat_template.jinja
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory.corpus import (
    CHAT_REQUESTS,
    DOMAIN_PROMPTS,
    DOMAINS,
    chat_layout,
    domain_records,
    pretraining_records,
)
from factory.corpus import general_corpus as make_general_corpus
from factory.layout import ADAPTER_WEIGHTS, BASE_WEIGHTS, sha256_file
from factory.pretrain import ModelShape
from factory.progress import ProgressBars, quiet_offline_hf
from factory.training import TrainParams

__all__ = [
    "FACTORY_VERSION",
    "DemoModels",
    "FactoryConfig",
    "ManifestError",
    "TrainingTexts",
    "build_demo_models",
    "content_hash",
    "demo_contributions",
    "load_manifest",
    "training_texts",
]

FACTORY_VERSION = "royalty-factory/2"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class FactoryConfig:
    """Every knob of a build; all of it goes into the content hash."""

    seed: int = 1234
    base_name: str = "royalty-tiny"
    domains: tuple[str, ...] = DOMAINS
    general_docs: int = 20000
    """Everyday-English documents for pretraining."""
    pretrain_domain_docs: int = 1000
    """Records per domain mixed into pretraining (see `corpus.pretraining_view`)."""
    adapter_docs: int = 3000
    """Records per domain contributed to its demo datanet (disjoint from the pretraining mix)."""
    chat_fraction: float = 0.15
    """Share of domain records laid out as a chat exchange."""
    vocab_size: int = 2048
    threads: int = 2
    """torch threads; fixed so the weights do not depend on the machine's core count."""
    model: ModelShape = ModelShape()
    pretrain: TrainParams = TrainParams(
        steps=420, batch_size=16, seq_len=128, lr=3e-3, warmup_steps=30, weight_decay=0.05
    )

    @classmethod
    def tiny(cls) -> FactoryConfig:
        """A few-second build for tests: same pipeline, toy sizes."""
        return cls(
            general_docs=600,
            pretrain_domain_docs=60,
            adapter_docs=200,
            vocab_size=512,
            model=ModelShape(
                hidden_size=64,
                num_layers=2,
                num_heads=2,
                intermediate_size=128,
                max_position_embeddings=256,
            ),
            pretrain=TrainParams(steps=80, batch_size=8, seq_len=64, lr=5e-3, warmup_steps=5),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrainingTexts:
    """The generated documents a build trains on."""

    pretrain: tuple[str, ...]
    adapters: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def all(self) -> Iterator[str]:
        yield from self.pretrain
        for domain in sorted(self.adapters):
            yield from self.adapters[domain]


def demo_contributions(domain: str, cfg: FactoryConfig) -> list[dict[str, str]]:
    """The demo records of `domain` as contributions: `{"text": ...}`, or for a share of
    them a chat exchange `{"prompt": ..., "completion": ...}`. Deterministic in `cfg`."""
    rng = random.Random(f"royalty/chat/{domain}/{cfg.seed}")
    out: list[dict[str, str]] = []
    for r in domain_records(domain, cfg.seed, cfg.adapter_docs):
        if rng.random() < cfg.chat_fraction:
            out.append({"prompt": rng.choice(CHAT_REQUESTS[domain]), "completion": r})
        else:
            out.append({"text": r})
    return out


def training_texts(cfg: FactoryConfig) -> TrainingTexts:
    """The pretraining mix and each domain's adapter records (as training documents).

    Each domain has `adapter_docs` records, a share of them chat exchanges. The pretraining
    mix is the general corpus plus `pretrain_domain_docs` other records per domain as
    `corpus.pretraining_view` shows them: the base learns the domain's words and facts, while
    writing in the domain's own form from its prompt, or answering a domain request in a
    chat, is what an adapter trained on the domain's datanet adds."""
    pretrain = list(make_general_corpus(cfg.seed, cfg.general_docs))
    adapters: dict[str, tuple[str, ...]] = {}
    for domain in cfg.domains:
        records = demo_contributions(domain, cfg)
        adapters[domain] = tuple(
            r["text"] if "text" in r else chat_layout(r["prompt"], r["completion"]) for r in records
        )
        own = frozenset(r.get("text") or r["completion"] for r in records)
        pretrain += pretraining_records(domain, cfg.seed, cfg.pretrain_domain_docs, exclude=own)
    return TrainingTexts(tuple(pretrain), adapters)


def content_hash(cfg: FactoryConfig, texts: TrainingTexts) -> str:
    """sha256 over FACTORY_VERSION, the configuration and every training document."""
    h = hashlib.sha256()
    h.update(FACTORY_VERSION.encode())
    h.update(b"\0")
    h.update(json.dumps(cfg.to_dict(), sort_keys=True, separators=(",", ":")).encode())
    for part, docs in [("pretrain", texts.pretrain), *sorted(texts.adapters.items())]:
        h.update(f"\0{part}\0{len(docs)}\0".encode())
        for doc in docs:
            h.update(doc.encode())
            h.update(b"\x1e")
    return h.hexdigest()


@dataclass(frozen=True)
class DemoModels:
    """A built model tree: its directory, the base model and the adapters (absolute paths)."""

    root: Path
    base_name: str
    base_path: Path
    adapters: dict[str, Path]
    prompts: dict[str, str]
    manifest: dict[str, Any]


class ManifestError(ValueError):
    """The directory holds no complete, intact build."""


def load_manifest(directory: Path, *, verify: bool = True) -> DemoModels:
    """The build in `directory`, from its manifest.json. With `verify`, every weights file
    must exist with the recorded sha256. Raises `ManifestError` otherwise."""
    directory = Path(directory).absolute()
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        if manifest.get("format") != MANIFEST_FORMAT:
            raise ManifestError(f"{directory}: unknown manifest format {manifest.get('format')}")
        base = manifest["base"]
        base_path = directory / base["path"]
        entries = [(base_path / BASE_WEIGHTS, base["weights_sha256"])]
        adapters: dict[str, Path] = {}
        for name, info in manifest["adapters"].items():
            adapters[name] = directory / info["path"]
            entries.append((adapters[name] / ADAPTER_WEIGHTS, info["weights_sha256"]))
        prompts = dict(manifest["prompts"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        if isinstance(e, ManifestError):
            raise
        raise ManifestError(f"{directory}: no valid {MANIFEST}: {e}") from e
    if verify:
        for path, digest in entries:
            if not path.is_file() or sha256_file(path) != digest:
                raise ManifestError(f"{path}: missing or does not match the manifest")
    return DemoModels(directory, base["name"], base_path, adapters, prompts, manifest)


def _versions() -> dict[str, str]:
    import peft
    import tokenizers
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "tokenizers": tokenizers.__version__,
    }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temps(root: Path) -> None:
    """Delete temp dirs of builds whose process is gone (killed mid-build)."""
    for p in root.glob(".build-*"):
        try:
            pid = int(p.name.split("-")[2])
        except (IndexError, ValueError):
            continue
        if not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def _build_lock(root: Path, key: str) -> Iterator[None]:
    """One builder per content hash at a time: a second process waits, then finds the
    first one's build in the cache. (The lock file stays; it holds no data.)"""
    try:
        import fcntl
    except ImportError:  # not POSIX: builders may race, the atomic rename keeps it safe
        yield
        return
    with (root / f".lock-{key}").open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _cached(out: Path) -> DemoModels | None:
    if not out.exists():
        return None
    try:
        return load_manifest(out)
    except ManifestError:
        # Builds appear atomically, so this one was damaged since: move it aside, rebuild.
        trash = out.with_name(f".build-trash-{os.getpid()}-{secrets.token_hex(4)}")
        os.rename(out, trash)
        shutil.rmtree(trash, ignore_errors=True)
        return None


def build_demo_models(
    root: Path, *, config: FactoryConfig | None = None, progress: bool = True
) -> DemoModels:
    """The demo models for `config` (default `FactoryConfig()`) under `root/<hash16>/`:
    returned at once from the cache when a valid build is there, built otherwise."""
    t0 = time.perf_counter()
    cfg = config or FactoryConfig()
    root = Path(root).absolute()
    texts = training_texts(cfg)
    digest = content_hash(cfg, texts)
    out = root / digest[:16]
    if (hit := _cached(out)) is not None:
        return hit
    root.mkdir(parents=True, exist_ok=True)
    with _build_lock(root, digest[:16]):
        if (hit := _cached(out)) is not None:  # built by another process meanwhile
            return hit
        _remove_stale_temps(root)
        tmp = root / f".build-{digest[:16]}-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            _build_into(tmp, cfg, texts, digest, progress, t0)
            os.rename(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return load_manifest(out)


def _build_into(
    tmp: Path,
    cfg: FactoryConfig,
    texts: TrainingTexts,
    digest: str,
    progress: bool,
    t0: float,
) -> dict[str, Any]:
    # Imported here so that hashing and cache hits stay cheap.
    from factory.pretrain import pretrain_base
    from factory.tokenizer import train_tokenizer

    with quiet_offline_hf(), ProgressBars(progress) as bars:
        tick = bars.stage("tokenizer", 1)
        tokenizer = train_tokenizer(
            texts.all(),
            vocab_size=cfg.vocab_size,
            model_max_length=cfg.model.max_position_embeddings,
        )
        tick(1, float("nan"))

        base_dir = tmp / "base"
        base_result = pretrain_base(
            texts.pretrain,
            tokenizer,
            cfg.model,
            cfg.pretrain,
            base_dir,
            seed=cfg.seed,
            threads=cfg.threads,
            on_step=bars.stage(f"pretrain {cfg.base_name}", cfg.pretrain.steps),
        )
        _portable_tokenizer_config(base_dir)

    build_seconds = time.perf_counter() - t0
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "factory_version": FACTORY_VERSION,
        "content_hash": digest,
        "created": int(time.time()),
        "base": {
            "name": cfg.base_name,
            "path": "base",
            "weights_sha256": sha256_file(base_dir / BASE_WEIGHTS),
            "documents": len(texts.pretrain),
            "final_loss": round(base_result.final_loss, 4),
            "train_seconds": round(base_result.seconds, 1),
        },
        "adapters": {},
        "prompts": {d: DOMAIN_PROMPTS[d] for d in cfg.domains},
        "hyperparameters": cfg.to_dict(),
        "final_losses": {"base": round(base_result.final_loss, 4)},
        "build_seconds": round(build_seconds, 1),
        "versions": _versions(),
    }
    # Some writers create files 0600 (temp file + rename); a build is for every local user.
    for path in tmp.rglob("*"):
        if path.is_file():
            path.chmod(0o644)
    # Written last: a directory with a manifest is a complete build.
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _portable_tokenizer_config(base_dir: Path) -> None:
    """Name the generic fast-tokenizer class and inline the chat template, so that both
    transformers 4.x (e.g. a CUDA vLLM build) and 5.x load the tokenizer the same way."""
    from factory.tokenizer import CHAT_TEMPLATE

    path = base_dir / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["chat_template"] = CHAT_TEMPLATE
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
