"""The counterfactual half of `attribution_quality.py` (`--counterfactual`): a linear
datamodeling score (LDS, Park et al. 2023) of gradient influence against BM25 and random
scores, on adapters trained on random halves of a small datanet of the tiny factory base.
See `attribution_quality.py` for the method."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from attribution.influence.gradients import InfluenceParams, build_influence_index  # noqa: E402
from attribution.influence.scorer import GradientInfluence  # noqa: E402
from factory import FactoryConfig, build_demo_models  # noqa: E402
from factory.adapters import AdapterRecipe, SnapshotRef, TrainingExample, build_adapter  # noqa: E402
from factory.corpus import domain_records  # noqa: E402
from factory.training import TrainParams  # noqa: E402

NO_WHITENING = 1e6
"""Damping so large that (F + lambda I)^-1 ~ I / lambda: plain gradient inner products."""


def influence_variants(records: int) -> dict[str, InfluenceParams]:
    """The production parameters and the ablations, scored side by side from one run: all
    on the full adapter's checkpoints (royalty-influence/3) but the final-weights row."""
    prod = InfluenceParams()
    return {
        "influence": prod,
        # royalty-influence/2: the same index at the final weights alone
        "influence_final_weights_only_v2": dataclasses.replace(prod, ensemble=False),
        # royalty-influence/1 damped by trace / dim, i.e. min(records, dim) / dim of today's
        # mean-nonzero-eigenvalue damping: the same whitening with /1's (smaller) lambda
        "influence_v1_damping": dataclasses.replace(
            prod, damping=prod.damping * min(records, prod.dim) / prod.dim
        ),
        "influence_no_unit_rows": dataclasses.replace(prod, unit_rows=False),
        "raw_gradient": dataclasses.replace(prod, damping=NO_WHITENING, unit_rows=False),
    }


def _ranks(x: Any) -> Any:
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=np.float64)
    for v in np.unique(x):  # ties share their average rank
        tied = x == v
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: Any, b: Any) -> float:
    import numpy as np

    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def run_counterfactual(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch
    from peft import PeftModel
    from rank_bm25 import BM25Okapi
    from transformers import AutoTokenizer, LlamaForCausalLM

    from attribution.influence.gradients import pad_batch, sequence_losses

    t_start = time.perf_counter()
    base = build_demo_models(
        REPO / ".royalty" / "bench-tiny-models", config=FactoryConfig.tiny(), progress=False
    )
    texts = domain_records("legal", args.seed + 1, args.cf_records + args.cf_tests)
    train, tests = texts[: args.cf_records], texts[args.cf_records :]
    examples = [TrainingExample(i + 1, text=d) for i, d in enumerate(train)]
    recipe = dataclasses.replace(
        AdapterRecipe.tiny(),
        train=TrainParams(steps=args.cf_steps, batch_size=8, seq_len=64, lr=1e-2, warmup_steps=3),
    )
    work = Path(tempfile.mkdtemp(prefix="royalty-lds-"))

    def train_on(name: str, subset: list[int]) -> Path:
        ex = [examples[i] for i in subset]
        snap = SnapshotRef(f"lds-{name}", "00" * 32, 1, "lds", len(ex), 0)
        return build_adapter(base, name, snap, ex, work, recipe=recipe, progress=False).path

    full = train_on("full", list(range(len(examples))))
    predictors: dict[str, Any] = {}
    for label, params in influence_variants(len(examples)).items():
        adapter_dir = work / f"full-{label}"
        adapter_dir.mkdir()
        for f in full.iterdir():  # the weights, the lineage and the checkpoints
            if f.is_file() or f.name == "checkpoints":
                (adapter_dir / f.name).symlink_to(f)
        build_influence_index(base.base_path, adapter_dir, examples, params=params, progress=False)
        scorer = GradientInfluence(base.base_path)
        scorer.register("full", adapter_dir)
        predictors[label] = np.stack([scorer.all_scores("full", "", t) for t in tests])
    bm25 = BM25Okapi([d.lower().split() for d in train])
    predictors["bm25"] = np.stack([bm25.get_scores(t.lower().split()) for t in tests])
    predictors["random"] = np.random.default_rng(args.seed).standard_normal(
        predictors["bm25"].shape
    )

    tok = AutoTokenizer.from_pretrained(str(base.base_path))
    test_seqs = [
        (ids, [0] + [1] * (len(ids) - 1))
        for ids in tok(list(tests), add_special_tokens=True)["input_ids"]
    ]
    ids, mask = pad_batch(test_seqs, tok.pad_token_id)
    n_tokens = (mask > 0).sum(dim=1).clamp(min=1)
    rng = np.random.default_rng(args.seed)
    subsets: list[np.ndarray] = []
    losses: list[np.ndarray] = []
    base_model = LlamaForCausalLM.from_pretrained(str(base.base_path))
    t0 = time.perf_counter()
    for m in range(args.cf_models):
        subset = np.sort(rng.choice(len(examples), size=len(examples) // 2, replace=False))
        path = train_on(f"half{m}", [int(i) for i in subset])
        model = PeftModel.from_pretrained(base_model, str(path)).eval()
        with torch.no_grad():
            loss = sequence_losses(model, ids, mask) / n_tokens
        base_model = model.unload()  # the bare base again, for the next adapter
        subsets.append(subset)
        losses.append(loss.numpy())
        print(f"subset model {m + 1}/{args.cf_models}", file=sys.stderr, flush=True)
    train_s = time.perf_counter() - t0
    actual = np.stack(losses)  # (models, tests)
    member = np.zeros((args.cf_models, len(examples)))
    for m, subset in enumerate(subsets):
        member[m, subset] = 1.0
    lds: dict[str, dict[str, float]] = {}
    for label, scores in predictors.items():
        predicted = member @ scores.T  # (models, tests)
        per_test = [spearman(-actual[:, t], predicted[:, t]) for t in range(len(tests))]
        lds[label] = {
            "mean": round(float(np.mean(per_test)), 3),
            "stderr": round(float(np.std(per_test) / np.sqrt(len(per_test))), 3),
            "tests_positive": int(sum(1 for v in per_test if v > 0)),
        }
    spread = actual.std(axis=0).mean()
    return {
        "records": args.cf_records, "tests": args.cf_tests, "models": args.cf_models,
        "steps": args.cf_steps, "subset_train_seconds": round(train_s, 1),
        "loss_std_across_models": round(float(spread), 4), "lds": lds,
        "seconds": round(time.perf_counter() - t_start, 1),
    }  # fmt: skip
