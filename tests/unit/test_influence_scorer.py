"""Gradient influence on a tiny factory build: the index is deterministic and cached, the
per-sample gradient trick equals one backward per record, the sketch keeps inner products,
the scorer finds a training record from its own text (plain and chat), and never names a
record outside the adapter's snapshot; the checkpoint ensemble (royalty-influence/3) scores
with one checkpoint exactly as /2's formula, and /1 and /2 indexes still open."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from attribution.influence import INFLUENCE_METHOD, NoInfluenceIndex, UnknownAdapter  # noqa: E402
from attribution.influence.checkpoints import (  # noqa: E402
    adapter_checkpoints,
    checkpoint_path,
    combine,
)
from attribution.influence.gradients import (  # noqa: E402
    FEATURES,
    HEADER,
    InfluenceParams,
    build_influence_index,
    find_index,
    index_key,
    load_lora_model,
    lora_linears,
    pad_id,
    projected_gradients,
    record_tokens,
    sketch_for,
    unit_rows,
    whiten,
)
from attribution.influence.projection import CountSketch  # noqa: E402
from attribution.influence.scorer import GradientInfluence  # noqa: E402
from factory import FactoryConfig, build_demo_models  # noqa: E402
from factory.adapters import (  # noqa: E402
    AdapterRecipe,
    SnapshotRef,
    TrainingExample,
    build_adapter,
)
from factory.build import DemoModels, demo_contributions  # noqa: E402
from factory.training import TrainParams  # noqa: E402

PARAMS = InfluenceParams(dim=512, batch_tokens=2048)
STEPS = (10, 20, 30, 40)
"""The fixture adapter's checkpoints: 40 steps, AdapterRecipe's default 4 checkpoints."""


def _rid(i: int) -> int:
    """Record ids with gaps, so that a row number mistaken for an id shows."""
    return 1000 + 7 * i


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> DemoModels:
    return build_demo_models(
        tmp_path_factory.mktemp("influence-models"), config=FactoryConfig.tiny(), progress=False
    )


@pytest.fixture(scope="module")
def examples() -> list[TrainingExample]:
    recs = demo_contributions("legal", FactoryConfig.tiny())[:120]
    return [TrainingExample(_rid(i), **r) for i, r in enumerate(recs)]  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def adapter(
    tiny: DemoModels, examples: list[TrainingExample], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    recipe = dataclasses.replace(
        AdapterRecipe.tiny(),
        train=TrainParams(steps=40, batch_size=8, seq_len=64, lr=1e-2, warmup_steps=3),
    )
    ref = SnapshotRef("snap-legal", "00" * 32, 1, "legal", len(examples), 0)
    out = tmp_path_factory.mktemp("influence-adapters")
    return build_adapter(tiny, "legal", ref, examples, out, recipe=recipe, progress=False).path


@pytest.fixture(scope="module")
def index(tiny: DemoModels, adapter: Path, examples: list[TrainingExample]) -> Path:
    return build_influence_index(tiny.base_path, adapter, examples, params=PARAMS, progress=False)


@pytest.fixture(scope="module")
def scorer(tiny: DemoModels, adapter: Path, index: Path) -> GradientInfluence:
    s = GradientInfluence(tiny.base_path)
    s.register("legal", adapter)
    return s


def test_index_is_deterministic_and_cached(
    tiny: DemoModels, adapter: Path, index: Path, examples: list[TrainingExample], tmp_path: Path
) -> None:
    header = json.loads((index / HEADER).read_text())
    assert header["record_ids"] == [ex.record_id for ex in examples]
    assert (
        header["dim"] == PARAMS.dim
        and header["method"] == INFLUENCE_METHOD == "royalty-influence/3"
    )
    assert [c["step"] for c in header["checkpoints"]] == list(STEPS)
    lineage = json.loads((adapter / "lineage.json").read_text())
    assert [c["sha256"] for c in header["checkpoints"]] == [
        c["sha256"] for c in lineage["checkpoints"]
    ]
    size = 4 * len(STEPS) * PARAMS.dim * len(examples)
    assert (index / FEATURES).stat().st_size == size
    assert index.parent == adapter and index.name.startswith("influence-")
    # a second call is a cache hit: same directory, untouched
    mtime = (index / FEATURES).stat().st_mtime_ns
    again = build_influence_index(tiny.base_path, adapter, examples, params=PARAMS, progress=False)
    assert again == index and (index / FEATURES).stat().st_mtime_ns == mtime
    # from scratch elsewhere (a copy of the adapter without its index): the same bytes
    copy = tmp_path / "copy"
    shutil.copytree(adapter, copy, ignore=shutil.ignore_patterns("influence-*", ".influence-*"))
    rebuilt = build_influence_index(tiny.base_path, copy, examples, params=PARAMS, progress=False)
    assert rebuilt.name == index.name
    assert (rebuilt / FEATURES).read_bytes() == (index / FEATURES).read_bytes()
    assert not list(copy.glob(".influence-*"))  # no temp directory left behind
    # other records, other index
    # (final weights only from here on: a quarter of the build, and the key still covers it)
    final = dataclasses.replace(PARAMS, ensemble=False)
    alone = build_influence_index(tiny.base_path, copy, examples, params=final, progress=False)
    assert alone.name != rebuilt.name
    fewer = build_influence_index(tiny.base_path, copy, examples[:-1], params=final, progress=False)
    assert fewer != alone
    # other parameters, other index (the directory's digest covers them)
    damped = dataclasses.replace(final, damping=2.0)
    other = build_influence_index(tiny.base_path, copy, examples, params=damped, progress=False)
    assert other.name != alone.name and other.name.startswith("influence-")
    assert json.loads((other / HEADER).read_text())["damping"] == 2.0
    # another checkpoint, another index: the digest covers every checkpoint's bytes
    records = [(ex.record_id, ex.document()) for ex in examples]
    assert index_key(tiny.base_path, copy, records, PARAMS).startswith(rebuilt.name[10:])
    step = copy / "checkpoints" / "step-10.safetensors"
    step.write_bytes(step.read_bytes()[:-1] + b"\1")  # the last weight's last byte
    lineage = json.loads((copy / "lineage.json").read_text())
    lineage["checkpoints"][0]["sha256"] = hashlib.sha256(step.read_bytes()).hexdigest()
    (copy / "lineage.json").write_text(json.dumps(lineage))
    assert not index_key(tiny.base_path, copy, records, PARAMS).startswith(rebuilt.name[10:])


def test_damping_is_relative_to_the_mean_nonzero_eigenvalue() -> None:
    rng = np.random.default_rng(5)
    for records, dim in ((40, 128), (300, 128)):  # fewer and more records than dimensions
        phi = rng.standard_normal((records, dim)).astype(np.float32) * rng.uniform(0.1, 3, dim)
        psi, lam = whiten(phi, 0.5)
        eig = np.linalg.eigvalsh(phi.astype(np.float64).T @ phi.astype(np.float64))
        nonzero = eig[eig > 1e-6 * eig.max()]
        assert len(nonzero) == min(records, dim)
        assert lam == pytest.approx(0.5 * nonzero.mean(), rel=1e-6)
        want = phi @ np.linalg.inv(phi.T.astype(np.float64) @ phi + lam * np.eye(dim))
        assert np.allclose(psi, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())


def test_batched_per_sample_gradients_equal_one_backward_per_record(
    tiny: DemoModels, adapter: Path, examples: list[TrainingExample]
) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny.base_path))
    model = load_lora_model(tiny.base_path, adapter)
    linears = lora_linears(model, "default")
    sketch = sketch_for(linears, 256, 7)
    tokens = record_tokens(tok, [ex.document() for ex in examples[:6]], 256)
    seqs = [(t, [1] * len(t)) for t in tokens]  # different lengths: padding in the batch
    assert len({len(t) for t in tokens}) > 1
    batched = projected_gradients(model, linears, sketch, seqs, tok.pad_token_id)
    for row, seq in enumerate(seqs):
        # the reference: autograd's own .grad after a backward of this record alone
        for lin in linears.values():
            lin.weight.requires_grad_(True)
        ids = torch.tensor([seq[0]])
        model(input_ids=ids, labels=ids).loss.mul(len(seq[0]) - 1).backward()
        full = {n: lin.weight.grad.reshape(1, -1).clone() for n, lin in linears.items()}
        for lin in linears.values():
            lin.weight.grad = None
            lin.weight.requires_grad_(False)
        alone = sketch.project(full)[0]
        assert torch.allclose(batched[row], alone, rtol=1e-3, atol=1e-5 * alone.abs().max())


def test_count_sketch_keeps_inner_products() -> None:
    rng = np.random.default_rng(3)
    shapes = {"a.lora_A": 30_000, "a.lora_B": 50_000}
    x = {
        n: torch.from_numpy(rng.standard_normal((1, k)).astype(np.float32))
        for n, k in shapes.items()
    }
    noise = {
        n: torch.from_numpy(rng.standard_normal((1, k)).astype(np.float32))
        for n, k in shapes.items()
    }
    y = {n: x[n] + 2 * noise[n] for n in shapes}  # cosine(x, y) ~ 0.45
    true_xy = sum(float((x[n] * y[n]).sum()) for n in shapes)
    norm = np.sqrt(sum(float((x[n] ** 2).sum()) for n in shapes)) * np.sqrt(
        sum(float((y[n] ** 2).sum()) for n in shapes)
    )
    errors = []
    for seed in range(8):
        s = CountSketch(shapes, 2048, seed)
        errors.append(float((s.project(x) * s.project(y)).sum()) - true_xy)
    # each estimate within 4 standard deviations (sd <= |x||y| sqrt(2 / dim)), unbiased overall
    assert max(abs(e) for e in errors) < 4 * norm * np.sqrt(2 / 2048)
    assert abs(np.mean(errors)) < 2 * norm * np.sqrt(2 / 2048) / np.sqrt(len(errors))
    # the same seed and names give the same sketch, whatever order the tensors come in
    a = CountSketch(shapes, 2048, 1).project(x)
    b = CountSketch(dict(reversed(shapes.items())), 2048, 1).project(dict(reversed(x.items())))
    assert torch.allclose(a, b, atol=1e-4)  # summation order differs
    assert not torch.allclose(a, CountSketch(shapes, 2048, 2).project(x))


def test_scorer_finds_a_record_from_its_own_text(
    scorer: GradientInfluence, examples: list[TrainingExample]
) -> None:
    plain = [ex for ex in examples if ex.text is not None][:8]
    chats = [ex for ex in examples if ex.text is None][:4]
    assert plain and chats
    for ex in plain:
        result = scorer.score("legal", "", ex.text or "", top_k=5)
        assert result.records[0].record_id == ex.record_id, ex.record_id
        assert result.method == INFLUENCE_METHOD and result.seconds > 0
    for ex in chats:
        messages = [{"role": "user", "content": ex.prompt}]
        result = scorer.score("legal", messages, ex.completion or "", top_k=5)
        assert ex.record_id in [r.record_id for r in result.records[:3]], ex.record_id
    # a planted record's score stands far above the rest
    scores = scorer.all_scores("legal", "", plain[0].text or "")
    own = scorer.record_ids("legal").index(plain[0].record_id)
    assert scores[own] == scores.max() and scores[own] > 5 * np.median(np.abs(scores))


def test_scores_name_only_snapshot_records(
    scorer: GradientInfluence, examples: list[TrainingExample]
) -> None:
    snapshot = {ex.record_id for ex in examples}
    outputs = ["", "zzz qqq", "The tenant shall pay the rent.", examples[3].document() * 3]
    for out in outputs:
        for prompt in ("Clause:", [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]):
            result = scorer.score("legal", prompt, out, top_k=50)
            assert {r.record_id for r in result.records} <= snapshot
            assert all(r.score > 0 for r in result.records)
            assert len(result.records) <= 50
            assert [r.score for r in result.records] == sorted(
                (r.score for r in result.records), reverse=True
            )
    assert scorer.score("legal", "x", "").records == ()


def test_register_refuses_what_it_cannot_use(
    tiny: DemoModels, adapter: Path, index: Path, tmp_path: Path
) -> None:
    s = GradientInfluence(tiny.base_path)
    with pytest.raises(UnknownAdapter):
        s.score("legal", "p", "o")
    bare = tmp_path / "bare"
    shutil.copytree(adapter, bare, ignore=shutil.ignore_patterns("influence-*"))
    with pytest.raises(NoInfluenceIndex):
        s.register("bare", bare)
    # an index built for other weights
    shutil.copytree(index, bare / index.name)
    weights = bare / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(NoInfluenceIndex):
        s.register("bare", bare)
    assert not s.knows("bare")
    s.register("a", adapter)
    s.register("b", adapter)  # two registrations share the base
    assert s.score("a", "", "The tenant").records == s.score("b", "", "The tenant").records
    s.forget("a")
    assert not s.knows("a") and s.knows("b")
    with pytest.raises(UnknownAdapter):
        s.score("a", "p", "o")
    assert find_index(adapter) == index


def _without_index(adapter: Path, to: Path, *, checkpoints: bool = True) -> Path:
    """A copy of the adapter without its influence indexes (and without its checkpoints, its
    lineage then listing none, as an adapter built before them)."""
    shutil.copytree(adapter, to, ignore=shutil.ignore_patterns("influence-*", ".influence-*"))
    if not checkpoints:
        shutil.rmtree(to / "checkpoints")
        lineage = json.loads((to / "lineage.json").read_text())
        del lineage["checkpoints"]
        (to / "lineage.json").write_text(json.dumps(lineage))
    return to


@pytest.fixture(scope="module")
def final_only(
    tiny: DemoModels,
    adapter: Path,
    examples: list[TrainingExample],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """The adapter with an index at its final weights alone (the LDS bench's /2 ablation)."""
    copy = _without_index(adapter, tmp_path_factory.mktemp("final-only") / "legal")
    params = dataclasses.replace(PARAMS, ensemble=False)
    build_influence_index(tiny.base_path, copy, examples, params=params, progress=False)
    return copy


def test_one_checkpoint_scores_exactly_as_the_v2_formula(
    tiny: DemoModels, final_only: Path, examples: list[TrainingExample]
) -> None:
    """Psi = unit rows of Phi (Phi^T Phi + lambda I)^-1 at the final weights, and a response
    scores Psi @ phi, unscaled: /2's numbers."""
    from transformers import AutoTokenizer

    s = GradientInfluence(tiny.base_path)
    s.register("legal", final_only)
    header = json.loads((find_index(final_only) / HEADER).read_text())
    assert header["method"] == "royalty-influence/3" and header["ensemble"] is False
    assert [c["file"] for c in header["checkpoints"]] == ["adapter_model.safetensors"]

    tok = AutoTokenizer.from_pretrained(str(tiny.base_path))
    model = load_lora_model(tiny.base_path, final_only)
    linears = lora_linears(model, "default")
    sketch = sketch_for(linears, PARAMS.dim, PARAMS.seed)
    tokens = record_tokens(tok, [ex.document() for ex in examples], PARAMS.max_tokens)
    phi = np.concatenate(
        [
            projected_gradients(model, linears, sketch, [(t, [1] * len(t))], pad_id(tok)).numpy()
            for t in tokens
        ]
    )
    psi = unit_rows(whiten(phi, PARAMS.damping)[0])
    out = examples[5].document()
    ids, mask = s.render("Clause:", out)
    response = projected_gradients(model, linears, sketch, [(ids, mask)], pad_id(tok))[0]
    want = psi.astype(np.float64) @ response.numpy().astype(np.float64)
    got = s.all_scores("legal", "Clause:", out)
    assert np.allclose(got, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())
    assert np.argmax(got) == np.argmax(want)


def test_an_adapter_without_checkpoints_gets_the_final_weights_index(
    tiny: DemoModels,
    final_only: Path,
    examples: list[TrainingExample],
    tmp_path: Path,
) -> None:
    """Built before checkpoints (its lineage lists none): a one-checkpoint /3 index whose
    features are the final-weights index's bytes."""
    old = _without_index(final_only, tmp_path / "old", checkpoints=False)
    index = build_influence_index(tiny.base_path, old, examples, params=PARAMS, progress=False)
    header = json.loads((index / HEADER).read_text())
    assert header["method"] == INFLUENCE_METHOD and len(header["checkpoints"]) == 1
    assert header["checkpoints"][0]["step"] is None
    reference = find_index(final_only) / FEATURES
    assert (index / FEATURES).read_bytes() == reference.read_bytes()
    s = GradientInfluence(tiny.base_path)
    s.register("old", old)
    s.register("final", final_only)
    out = examples[2].document()
    assert np.array_equal(s.all_scores("old", "", out), s.all_scores("final", "", out))


def test_ensemble_averages_the_checkpoints_scaled_scores(
    scorer: GradientInfluence, index: Path, final_only: Path, examples: list[TrainingExample]
) -> None:
    # each checkpoint is whitened alone with the same sketch; the last one is the final weights
    k, n = len(STEPS), len(examples)
    ensemble = np.fromfile(index / FEATURES, dtype=np.float32).reshape(k, n, PARAMS.dim)
    final = np.fromfile(find_index(final_only) / FEATURES, dtype=np.float32).reshape(n, -1)
    assert np.array_equal(ensemble[-1], final)
    assert not np.allclose(ensemble[0], final, atol=1e-3)
    out = examples[7].document()
    phi = scorer.response_features("legal", "", out)
    assert phi.shape == (k, PARAMS.dim)
    per = [np.asarray(ensemble[i] @ phi[i], dtype=np.float64) for i in range(k)]  # as scored
    want = np.mean([p / np.abs(p).mean() for p in per], axis=0)
    assert np.allclose(scorer.all_scores("legal", "", out), want, rtol=1e-6, atol=1e-9)
    single = np.array([3.0, -1.0, 0.5])
    assert np.array_equal(combine([single]), single)  # one checkpoint: unscaled
    assert np.allclose(combine([single, 2 * single]), single / np.abs(single).mean())


def test_a_changed_or_missing_checkpoint_is_refused(
    tiny: DemoModels, adapter: Path, index: Path, examples: list[TrainingExample], tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(adapter, copy)
    step = copy / "checkpoints" / "step-20.safetensors"
    data = bytearray(step.read_bytes())
    data[-1] ^= 1
    step.write_bytes(bytes(data))
    s = GradientInfluence(tiny.base_path)
    with pytest.raises(NoInfluenceIndex):
        s.register("copy", copy)
    assert not s.knows("copy")
    with pytest.raises(NoInfluenceIndex):
        build_influence_index(tiny.base_path, copy, examples, params=PARAMS, progress=False)
    step.unlink()
    with pytest.raises(NoInfluenceIndex):
        s.register("copy", copy)
    s.register("good", adapter)  # a failed registration leaves the shared model usable
    first = s.score("good", "", examples[0].document()).records[0]
    assert first.record_id == examples[0].record_id


@pytest.mark.parametrize("method", ["royalty-influence/1", "royalty-influence/2"])
def test_old_indexes_still_score_and_say_so(
    tiny: DemoModels, final_only: Path, tmp_path: Path, method: str
) -> None:
    """An adapter built before royalty-influence/3 keeps its /1 or /2 index (format 1: one
    feature matrix at the final weights, no checkpoints in the header) until its next build:
    the scorer opens it, scores as before and its results carry the method they came from."""
    old = tmp_path / "old"
    shutil.copytree(final_only, old)
    index = find_index(old)
    header = json.loads((index / HEADER).read_text())
    legacy = {k: v for k, v in header.items() if k not in ("checkpoints", "ensemble")}
    legacy |= {"format": 1, "method": method}
    if method == "royalty-influence/1":
        del legacy["unit_rows"]  # /1 headers predate it (the scorer reads it as False)
    (index / HEADER).write_text(json.dumps(legacy))
    s = GradientInfluence(tiny.base_path)
    s.register("old", old)
    s.register("new", final_only)
    result = s.score("old", "", "The tenant shall pay")
    assert result.method == method
    assert result.records == s.score("new", "", "The tenant shall pay").records
    (index / HEADER).write_text(json.dumps({**legacy, "method": "royalty-influence/0"}))
    with pytest.raises(NoInfluenceIndex):
        s.register("older", old)


def test_checkpoints_are_found_through_a_linked_lineage(adapter: Path, tmp_path: Path) -> None:
    """A bench's ablation directory links the adapter's files but not its checkpoints
    directory: they are found next to the lineage the link points to, and still checked."""
    linked = tmp_path / "linked"
    linked.mkdir()
    for f in adapter.iterdir():
        if f.is_file():
            (linked / f.name).symlink_to(f)
    found = adapter_checkpoints(linked)
    assert [c.step for c in found] == list(STEPS)
    assert checkpoint_path(linked, found[0].file) == adapter / found[0].file
    (linked / "lineage.json").unlink()  # a plain copy without the directory: refused
    shutil.copy(adapter / "lineage.json", linked / "lineage.json")
    with pytest.raises(NoInfluenceIndex):
        adapter_checkpoints(linked)
    assert [c.step for c in adapter_checkpoints(linked, ensemble=False)] == [None]
