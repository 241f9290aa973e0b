"""Inline response attribution over an adapter's span index (tiny base tokenizer): verbatim
training text credits the records it came from; novel text gets the snapshot baseline; weights
are integers that sum to exactly 10**6 and never name a record outside the snapshot."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attribution.responses import ResponseAttributor, build_adapter_index
from attribution.weights import DENOMINATOR
from factory.build import DemoModels, FactoryConfig, build_demo_models, demo_contributions
from factory.corpus import chat_layout

CONTRIBUTORS = (101, 102, 103)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> DemoModels:
    return build_demo_models(
        tmp_path_factory.mktemp("models"), config=FactoryConfig.tiny(), progress=False
    )


def _docs() -> list[tuple[int, int, str]]:
    recs = demo_contributions("legal", FactoryConfig.tiny())
    return [
        (1000 + i, CONTRIBUTORS[i % 3], r.get("text") or chat_layout(r["prompt"], r["completion"]))
        for i, r in enumerate(recs)
    ]


@pytest.fixture(scope="module")
def attributor(tiny: DemoModels, tmp_path_factory: pytest.TempPathFactory) -> ResponseAttributor:
    parent = tmp_path_factory.mktemp("idx")
    docs = _docs()
    index = build_adapter_index(parent, docs, tiny.base_path / "tokenizer.json")
    assert build_adapter_index(parent, docs, tiny.base_path / "tokenizer.json") == index
    # Other account ids (another database) get an index of their own beside it.
    moved = [(rid, cid + 1, text) for rid, cid, text in docs]
    other = build_adapter_index(parent, moved, tiny.base_path / "tokenizer.json")
    assert other != index and other.parent == index.parent == parent
    a = ResponseAttributor(tiny.base_path / "tokenizer.json")
    baseline = {c: sum(1 for _, cc, _ in docs if cc == c) for c in CONTRIBUTORS}
    a.register("legal", "snap-1", baseline, index)
    return a


def _check_shape(att: dict[str, object]) -> None:
    contributors = att["contributors"]
    assert isinstance(contributors, list)
    assert sum(c["weight_ppm"] for c in contributors) == DENOMINATOR
    assert abs(sum(c["weight"] for c in contributors) - 1) < 1e-9
    assert {c["id"] for c in contributors} <= set(CONTRIBUTORS)


def test_verbatim_record_text_credits_its_record(attributor: ResponseAttributor) -> None:
    docs = _docs()
    rng = random.Random(7)
    hits = 0
    for rid, _cid, text in rng.sample(docs, 20):
        words = text.split()
        if len(words) < 30:
            continue
        excerpt = " ".join(words[5:30])
        att = attributor.attribute("legal", "Here it is: " + excerpt + " and that is all.")
        assert att is not None
        _check_shape(att)
        named = {r for s in att["spans"] for r in s["record_ids"]}
        assert named <= {d[0] for d in docs}
        if rid in named:
            hits += 1
            assert att["method"] == "spans"
            assert any(t["id"] == rid for t in att["top_records"])
            # Offsets point into the output text.
            out = "Here it is: " + excerpt + " and that is all."
            s = next(s for s in att["spans"] if rid in s["record_ids"])
            assert out[s["start"] : s["end"]].strip() and s["end"] > s["start"]
    assert hits >= 5


def test_novel_text_gets_the_baseline(attributor: ResponseAttributor) -> None:
    att = attributor.attribute("legal", "Zebra quantum marmalade over seventeen violet trombones.")
    assert att is not None and att["spans"] == [] and att["method"] == "baseline"
    _check_shape(att)
    assert attributor.attribute("recipes", "anything") is None  # not an adapter it knows


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=400))
def test_any_output_gets_weights_that_sum_to_one(attributor: ResponseAttributor, text: str) -> None:
    att = attributor.attribute("legal", text)
    assert att is not None
    _check_shape(att)


def test_missing_index_falls_back_to_baseline(tiny: DemoModels, tmp_path: Path) -> None:
    a = ResponseAttributor(tiny.base_path / "tokenizer.json")
    a.register("x", "s", {1: 3, 2: 1, 3: 1, 4: 1}, tmp_path / "absent")
    att = a.attribute("x", "The tenant shall pay the rent.")
    assert att is not None and att["method"] == "baseline"
    # records 3:1:1:1 -> 1/2 and 1/6 each; the 1 ppm remainder goes to the smaller ids
    assert [c["weight_ppm"] for c in att["contributors"]] == [500_000, 166_667, 166_667, 166_666]
