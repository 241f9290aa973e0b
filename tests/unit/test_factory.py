"""The demo model factory: generated corpus, deterministic cached builds, real adapters.

The build tests use `FactoryConfig.tiny()` (a few seconds). Set ROYALTY_FACTORY_FULL=1 to
also check the default build's generations (about 3 minutes the first time; the build is
cached under .royalty/models, where `royalty models build` puts it too).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from factory import (
    DOMAIN_PROMPTS,
    DOMAINS,
    FACTORY_VERSION,
    DemoModels,
    FactoryConfig,
    ManifestError,
    build_demo_models,
    domain_records,
    general_corpus,
    load_manifest,
)
from factory import build as build_mod
from factory.build import content_hash, training_texts
from factory.corpus import chat_layout, pretraining_view

REPO = Path(__file__).resolve().parents[2]

# Words that mark each domain's text (and are rare or absent in the others').
DOMAIN_WORDS: dict[str, tuple[str, ...]] = {
    "recipes": ("Recipe", "minutes", "oil", "oven", "Serve", "Ingredients", "flour", "pan"),
    "astronomy": ("planet", "Sun", "orbit", "star", "telescope", "moon", "Moon", "galaxy"),
    "legal": ("tenant", "shall", "landlord", "lease", "premises", "rent", "deposit", "notice"),
}


def _marks(text: str, domain: str) -> int:
    return sum(text.count(w) for w in DOMAIN_WORDS[domain])


# --- corpus -------------------------------------------------------------------------------


def test_corpus_is_deterministic() -> None:
    assert general_corpus(7, 300) == general_corpus(7, 300)
    assert general_corpus(7, 300) != general_corpus(8, 300)
    for d in DOMAINS:
        assert domain_records(d, 7, 300) == domain_records(d, 7, 300)
        assert domain_records(d, 7, 300) != domain_records(d, 8, 300)
        # A longer run extends a shorter one: record i does not depend on n.
        assert domain_records(d, 7, 400)[:300] == domain_records(d, 7, 300)


def test_documents_are_distinct_and_varied() -> None:
    general = general_corpus(1, 3000)
    assert len(set(general)) == len(general)
    words = {w.strip(".,;:'").lower() for doc in general for w in doc.split()}
    assert len(words) > 800, "the general corpus should span many topics"
    for d in DOMAINS:
        recs = domain_records(d, 1, 3000)
        assert len(set(recs)) == len(recs)
        assert all(1 <= r.count(". ") + 1 <= 8 for r in recs)  # short documents
        assert len({r.split(".")[0] for r in recs}) > 100  # many different openings


def test_domains_are_distinct() -> None:
    assert set(DOMAIN_PROMPTS) == set(DOMAINS) == {"recipes", "astronomy", "legal"}
    records = {d: domain_records(d, 3, 1000) for d in DOMAINS}
    for d, recs in records.items():
        prompt = DOMAIN_PROMPTS[d]
        starts = sum(r.startswith(prompt) for r in recs)
        assert starts > 0.4 * len(recs), f"{d}: few records follow the prompt {prompt!r}"
        own = sum(_marks(r, d) for r in recs)
        for other, other_recs in records.items():
            if other == d:
                continue
            assert not any(r.startswith(prompt) for r in other_recs)
            assert not set(recs) & set(other_recs)
            # the domain's marker words are far more frequent in its own records
            assert own > 5 * sum(_marks(r, d) for r in other_recs), (d, other)


def test_unknown_domain() -> None:
    with pytest.raises(ValueError, match="unknown domain"):
        domain_records("poetry", 0, 3)


def test_pretraining_mix_hides_the_domain_prompts() -> None:
    cfg = FactoryConfig.tiny()
    texts = training_texts(cfg)
    mix = texts.pretrain[cfg.general_docs :]
    assert len(mix) == cfg.pretrain_domain_docs * len(DOMAINS)
    for d in DOMAINS:
        assert not any(DOMAIN_PROMPTS[d] in doc for doc in mix)
        assert len(texts.adapters[d]) == cfg.adapter_docs
        assert not set(texts.adapters[d]) & set(mix)
    assert pretraining_view("astronomy", "The planet Mars is red.") == "Mars is red."
    assert pretraining_view("recipes", "Recipe: Pea soup. Boil.") == "Pea soup. Boil."
    assert pretraining_view("legal", "The tenant shall pay.") is None
    assert pretraining_view("legal", "The buyer shall pay.") == "The buyer shall pay."
    clause = "The tenant shall pay rent. Rent is due on the 1st. The tenant may leave."
    assert pretraining_view("legal", clause) == "Rent is due on the 1st. The lessee may leave."
    assert chat_layout("Hi?", "Hello.") == "user:\nHi?\nassistant:\nHello."


def test_content_hash_covers_config_and_corpus() -> None:
    cfg = FactoryConfig.tiny()
    texts = training_texts(cfg)
    h = content_hash(cfg, texts)
    assert h == content_hash(cfg, training_texts(cfg))
    other = FactoryConfig.tiny().__class__(**{**cfg.__dict__, "seed": cfg.seed + 1})
    assert content_hash(other, training_texts(other)) != h
    lr_changed = FactoryConfig.tiny().__class__(**{**cfg.__dict__, "vocab_size": 600})
    assert content_hash(lr_changed, texts) != h


# --- tiny builds --------------------------------------------------------------------------

_TINY_BUILD_SCRIPT = """
import sys
from pathlib import Path
from factory import FactoryConfig, build_demo_models
from factory.adapters import AdapterRecipe, SnapshotRef, TrainingExample, build_adapter
from factory.build import demo_contributions
m = build_demo_models(Path(sys.argv[1]) / "models", config=FactoryConfig.tiny(), progress=False)
for d in sorted(DOMAINS := ("recipes", "astronomy", "legal")):
    ex = [TrainingExample(i + 1, **r) for i, r in enumerate(demo_contributions(d, FactoryConfig.tiny()))]
    ref = SnapshotRef("snap-" + d, "00" * 32, 1, d, len(ex), 0)
    build_adapter(m, d, ref, ex, Path(sys.argv[1]) / "adapters", recipe=AdapterRecipe.tiny(), progress=False)
print(m.root)
"""


def _build_tiny_adapters(models: DemoModels, out: Path) -> dict[str, Path]:
    """Each domain's adapter trained on its demo records (record ids 1..n) through the
    snapshot path, as the demo datanets would (the same code the subprocess runs)."""
    from factory.adapters import AdapterRecipe, SnapshotRef, TrainingExample, build_adapter
    from factory.build import demo_contributions

    paths = {}
    for d in sorted(DOMAINS):
        recs = demo_contributions(d, FactoryConfig.tiny())
        ex = [TrainingExample(i + 1, **r) for i, r in enumerate(recs)]  # type: ignore[arg-type]
        ref = SnapshotRef("snap-" + d, "00" * 32, 1, d, len(ex), 0)
        built = build_adapter(models, d, ref, ex, out, recipe=AdapterRecipe.tiny(), progress=False)
        paths[d] = built.path
    return paths


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> DemoModels:
    root = tmp_path_factory.mktemp("factory-a")
    return build_demo_models(root, config=FactoryConfig.tiny(), progress=False)


@pytest.fixture(scope="module")
def tiny_elsewhere(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny build, in another directory, by another process with another hash
    seed: what a fresh clone's build would do."""
    root = tmp_path_factory.mktemp("factory-b")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", _TINY_BUILD_SCRIPT, str(root)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tiny_adapters(tiny: DemoModels, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _build_tiny_adapters(tiny, tmp_path_factory.mktemp("adapters-a"))


def _weights(models: DemoModels, adapters: dict[str, Path] | None = None) -> dict[str, bytes]:
    files = {"base": models.base_path / "model.safetensors"}
    for n, p in (adapters or {}).items():
        files[n] = p / "adapter_model.safetensors"
        files |= {f"{n}/{c.name}": c for c in sorted((p / "checkpoints").iterdir())}
    return {k: v.read_bytes() for k, v in files.items()}


def test_tiny_build_layout_and_manifest(tiny: DemoModels, tiny_adapters: dict[str, Path]) -> None:
    assert tiny.base_name == "royalty-tiny"
    assert tiny.root.name == tiny.manifest["content_hash"][:16]
    assert tiny.base_path == tiny.root / "base"
    for f in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json"):
        assert (tiny.base_path / f).is_file(), f
    assert tiny.adapters == {}  # adapters are trained on datanet snapshots, not in the base build
    assert set(tiny_adapters) == set(DOMAINS)
    for name, path in tiny_adapters.items():
        assert path.name.startswith(name + "-")
        assert (path / "adapter_model.safetensors").is_file()
        lineage = json.loads((path / "lineage.json").read_text())
        assert lineage["base"]["weights_sha256"] == tiny.manifest["base"]["weights_sha256"]
        assert sorted(lineage["records"]["training_order"]) == list(
            range(1, FactoryConfig.tiny().adapter_docs + 1)
        )
        cfg = json.loads((path / "adapter_config.json").read_text())
        assert cfg["peft_type"] == "LORA" and cfg["r"] == 8
        assert cfg["base_model_name_or_path"] == "royalty-tiny"
        assert {"q_proj", "k_proj", "v_proj", "o_proj"} <= set(cfg["target_modules"])
    assert tiny.prompts == DOMAIN_PROMPTS

    m = json.loads((tiny.root / "manifest.json").read_text())
    assert m == tiny.manifest
    assert m["factory_version"] == FACTORY_VERSION
    assert m["base"]["name"] == "royalty-tiny" and m["base"]["path"] == "base"
    assert len(m["base"]["weights_sha256"]) == 64
    assert m["adapters"] == {}
    assert m["prompts"] == DOMAIN_PROMPTS
    assert m["hyperparameters"] == json.loads(json.dumps(FactoryConfig.tiny().to_dict()))
    assert set(m["final_losses"]) == {"base"}
    assert all(0 < v < 20 for v in m["final_losses"].values())
    assert m["build_seconds"] > 0 and isinstance(m["created"], int)
    assert {"torch", "transformers", "peft", "tokenizers"} <= set(m["versions"])
    # No temporary build directories are left next to the build (only its lock file).
    names = sorted(p.name for p in tiny.root.parent.iterdir())
    assert names == [f".lock-{tiny.root.name}", tiny.root.name]


def test_tiny_build_is_byte_identical_elsewhere(
    tiny: DemoModels, tiny_adapters: dict[str, Path], tiny_elsewhere: Path
) -> None:
    assert tiny_elsewhere.name == tiny.root.name
    other = load_manifest(tiny_elsewhere)
    other_adapters = {
        d: next((tiny_elsewhere.parent.parent / "adapters").glob(f"{d}-*")) for d in DOMAINS
    }
    assert {d: p.name for d, p in other_adapters.items()} == {
        d: p.name for d, p in tiny_adapters.items()
    }
    assert _weights(other, other_adapters) == _weights(tiny, tiny_adapters)
    for f in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (other.base_path / f).read_bytes() == (tiny.base_path / f).read_bytes(), f
    for name in DOMAINS:
        f = "adapter_config.json"
        assert (other_adapters[name] / f).read_bytes() == (tiny_adapters[name] / f).read_bytes()
    assert other.manifest["base"] == {
        **tiny.manifest["base"],
        "train_seconds": other.manifest["base"]["train_seconds"],
    }


def test_cache_hit_does_not_rebuild(tiny: DemoModels, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("rebuilt despite a valid cached build")

    monkeypatch.setattr(build_mod, "_build_into", no_build)
    t0 = time.perf_counter()
    again = build_demo_models(tiny.root.parent, config=FactoryConfig.tiny(), progress=False)
    assert time.perf_counter() - t0 < 5
    assert again == tiny


def test_checkpoint_steps() -> None:
    from factory.training import checkpoint_steps

    assert checkpoint_steps(40, 4) == (10, 20, 30, 40)
    assert checkpoint_steps(100, 4) == (25, 50, 75, 100)
    assert checkpoint_steps(120, 4) == (30, 60, 90, 120)
    assert checkpoint_steps(10, 3) == (4, 7, 10)
    assert checkpoint_steps(2, 4) == (1, 2)  # a short run has fewer
    assert checkpoint_steps(7, 1) == (7,)
    assert checkpoint_steps(7, 0) == checkpoint_steps(0, 4) == ()


def test_adapters_keep_their_checkpoints(tiny_adapters: dict[str, Path]) -> None:
    from factory.adapters import load_adapter_build

    for path in tiny_adapters.values():
        build = load_adapter_build(path)
        assert [c.step for c in build.checkpoints] == [25, 50, 75, 100]  # tiny: 100 steps
        assert {c.path.parent for c in build.checkpoints} == {path / "checkpoints"}
        assert len({c.sha256 for c in build.checkpoints}) == 4
        listed = build.lineage["checkpoints"]
        assert [c["file"] for c in listed] == [
            f"checkpoints/step-{n}.safetensors" for n in (25, 50, 75, 100)
        ]
        # the last one is the final weights: the same tensors, saved the same way
        final = (path / "adapter_model.safetensors").read_bytes()
        assert build.checkpoints[-1].path.read_bytes() == final


def test_lineage_verifies_the_checkpoints(tmp_path: Path, tiny_adapters: dict[str, Path]) -> None:
    from factory.adapters import LineageError, load_adapter_build

    copy = tmp_path / "legal"
    shutil.copytree(tiny_adapters["legal"], copy)
    step = copy / "checkpoints" / "step-50.safetensors"
    good = step.read_bytes()
    step.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(LineageError):
        load_adapter_build(copy, verify=True)
    assert len(load_adapter_build(copy, verify=False).checkpoints) == 4
    step.unlink()
    with pytest.raises(LineageError):
        load_adapter_build(copy, verify=True)
    # a build from before checkpoints: its lineage lists none, and it loads as it did
    shutil.rmtree(copy / "checkpoints")
    lineage = json.loads((copy / "lineage.json").read_text())
    del lineage["checkpoints"]
    (copy / "lineage.json").write_text(json.dumps(lineage))
    assert load_adapter_build(copy, verify=True).checkpoints == ()


def test_saving_checkpoints_leaves_the_weights_alone(tmp_path: Path, tiny: DemoModels) -> None:
    import dataclasses

    from factory.adapters import AdapterRecipe, SnapshotRef, TrainingExample, build_adapter
    from factory.build import demo_contributions

    recs = demo_contributions("recipes", FactoryConfig.tiny())[:40]
    ex = [TrainingExample(i + 1, **r) for i, r in enumerate(recs)]  # type: ignore[arg-type]
    ref = SnapshotRef("snap", "00" * 32, 1, "recipes", len(ex), 0)
    short = AdapterRecipe.tiny().train
    with_ = dataclasses.replace(AdapterRecipe.tiny(), train=dataclasses.replace(short, steps=12))
    without = dataclasses.replace(with_, checkpoints=0)
    a = build_adapter(tiny, "r", ref, ex, tmp_path, recipe=with_, progress=False)
    b = build_adapter(tiny, "r", ref, ex, tmp_path, recipe=without, progress=False)
    assert a.path != b.path  # the count is in the cache key
    assert [c.step for c in a.checkpoints] == [3, 6, 9, 12] and b.checkpoints == ()
    assert "checkpoints" not in b.lineage and not (b.path / "checkpoints").exists()
    weights = "adapter_model.safetensors"
    assert (a.path / weights).read_bytes() == (b.path / weights).read_bytes()


def test_load_manifest_verifies_weights(tmp_path: Path, tiny: DemoModels) -> None:
    assert load_manifest(tiny.root) == tiny
    with pytest.raises(ManifestError):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError):
        load_manifest(tmp_path)


def test_damaged_cache_is_rebuilt(tmp_path: Path, tiny: DemoModels) -> None:
    cfg = FactoryConfig.tiny()
    shutil.copytree(tiny.root, tmp_path / tiny.root.name)
    first = load_manifest(tmp_path / tiny.root.name)
    good = _weights(first)
    weights = first.base_path / "model.safetensors"
    weights.write_bytes(b"garbage")
    with pytest.raises(ManifestError):
        load_manifest(first.root)
    second = build_demo_models(tmp_path, config=cfg, progress=False)
    assert second.root == first.root
    assert _weights(second) == good


def test_interrupted_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import factory.pretrain as pretrain_mod

    def boom(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrain_mod, "pretrain_base", boom)
    with pytest.raises(KeyboardInterrupt):
        build_demo_models(tmp_path, config=FactoryConfig.tiny(), progress=False)
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".lock-")] == []


def test_stale_temp_dir_of_dead_process_is_removed(tmp_path: Path, tiny: DemoModels) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = tmp_path / f".build-0123456789abcdef-{dead.stdout.strip()}-abcd"
    (stale / "base").mkdir(parents=True)
    build_mod._remove_stale_temps(tmp_path)
    assert not stale.exists()
    mine = tmp_path / f".build-0123456789abcdef-{os.getpid()}-abcd"
    mine.mkdir()
    build_mod._remove_stale_temps(tmp_path)
    assert mine.exists()


# --- the adapters change the model --------------------------------------------------------


@pytest.fixture(scope="module")
def loaded(
    tiny: DemoModels, tiny_adapters: dict[str, Path]
) -> Iterator[tuple[Any, dict[str, Any], Any]]:
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer, LlamaForCausalLM

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(tiny.base_path))
    base = LlamaForCausalLM.from_pretrained(str(tiny.base_path)).eval()
    adapted = {
        name: PeftModel.from_pretrained(
            LlamaForCausalLM.from_pretrained(str(tiny.base_path)), str(path)
        ).eval()
        for name, path in tiny_adapters.items()
    }
    yield tok, adapted, base


def _mean_nll(model: Any, tok: Any, texts: list[str]) -> float:
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for t in texts:
            ids = tok(t, return_tensors="pt").input_ids
            loss = model(input_ids=ids, labels=ids).loss
            total += float(loss) * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return total / count


def test_each_adapter_specialises_the_base(
    tiny: DemoModels, loaded: tuple[Any, dict[str, Any], Any]
) -> None:
    import torch

    tok, adapted, base = loaded
    cfg = FactoryConfig.tiny()
    held_out = cfg.adapter_docs  # the adapter trained on the records before this one
    for name, model in adapted.items():
        # Held-out records of the adapter's domain (never trained on) are likelier under the
        # adapter than under the base (in nats per token); other domains' records are not.
        own = domain_records(name, cfg.seed, held_out + 40)[held_out:]
        gain = _mean_nll(base, tok, own) - _mean_nll(model, tok, own)
        assert gain > 0.1, (name, gain)
        for other in DOMAINS:
            if other != name:
                theirs = domain_records(other, cfg.seed, held_out + 40)[held_out:]
                other_gain = _mean_nll(base, tok, theirs) - _mean_nll(model, tok, theirs)
                assert gain > other_gain + 0.08, (name, other, gain, other_gain)

        # Greedy generation from the domain prompt differs from the base's.
        ids = tok(tiny.prompts[name], return_tensors="pt").input_ids
        with torch.no_grad():
            a = model.generate(ids, max_new_tokens=24, do_sample=False)
            b = base.generate(ids, max_new_tokens=24, do_sample=False)
        assert a.tolist() != b.tolist(), name


# --- the real build (opt-in) ---------------------------------------------------------------


@pytest.mark.skipif(
    os.environ.get("ROYALTY_FACTORY_FULL") != "1",
    reason="set ROYALTY_FACTORY_FULL=1 to build and check the full demo models (~3 min)",
)
def test_full_build_writes_domain_text() -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer, LlamaForCausalLM

    models = build_demo_models(REPO / ".royalty" / "models", progress=False)
    tok = AutoTokenizer.from_pretrained(str(models.base_path))

    def greedy(model: Any, prompt: str) -> str:
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=48, do_sample=False)
        return str(tok.decode(out[0][ids.shape[1] :], skip_special_tokens=True))

    from factory.adapters import SnapshotRef, TrainingExample, build_adapter
    from factory.build import demo_contributions

    base = LlamaForCausalLM.from_pretrained(str(models.base_path)).eval()
    for name in DOMAINS:
        recs = demo_contributions(name, FactoryConfig())
        ex = [TrainingExample(i + 1, **r) for i, r in enumerate(recs)]  # type: ignore[arg-type]
        ref = SnapshotRef("snap-" + name, "00" * 32, 1, name, len(ex), 0)
        path = build_adapter(
            models, name, ref, ex, REPO / ".royalty" / "adapters-full-test", progress=False
        ).path
        prompt = models.prompts[name]
        adapter = PeftModel.from_pretrained(
            LlamaForCausalLM.from_pretrained(str(models.base_path)), str(path)
        ).eval()
        text, base_text = prompt + greedy(adapter, prompt), prompt + greedy(base, prompt)
        assert text != base_text
        assert _marks(text, name) >= 2, (name, text)
        assert _marks(text, name) > _marks(base_text, name), (name, text, base_text)
