"""Attribution quality on planted canaries: does the span method name the contributor who
planted a string the model reproduces? Compared in the same run with a BM25 baseline (the
record most similar to the output, `rank_bm25`).

Setup: a datanet of generated tenancy clauses (the demo base model's `legal` domain) from
several contributors; unique canary sentences (made-up words, so the base cannot know them)
are planted in a few records of one contributor each. An adapter is trained on it through
the model factory (`build_adapter`, the path every adapter takes), its span index is built
(`build_adapter_index`), and the adapter is prompted with each canary's opening words
(greedy, transformers + PEFT on the CPU). A canary counts as reproduced when the output
continues it verbatim for at least `--reproduce-tokens` tokens. For each reproduced canary:

- span method: the contributor with the largest weight in the response's `attribution`
  (royalty-weights/1), and whether a planted record is among `top_records[:3]`;
- BM25: the contributor of the best-scoring record for the output, and whether a planted
  record is in BM25's top 3.

Gradient influence is not built yet, so it has no row. Run:

    .venv/bin/python bench/attribution_quality.py [--canaries 30] [--steps 240]

Results go to bench/results/attribution_quality-<stamp>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from attribution.responses import ResponseAttributor, build_adapter_index  # noqa: E402
from serving.factory import build_demo_models  # noqa: E402
from serving.factory.adapters import (  # noqa: E402
    AdapterRecipe,
    SnapshotRef,
    TrainingExample,
    build_adapter,
)
from serving.factory.corpus import domain_records  # noqa: E402
from serving.factory.training import TrainParams  # noqa: E402

SYLLABLES = ["zor", "blax", "quin", "vel", "morb", "thex", "ulun", "grib", "dravo", "kesh",
             "plon", "yute", "fasq", "orrin", "twel", "nubo"]  # fmt: skip


def word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3)))


def canary(rng: random.Random) -> str:
    return (
        f"The tenant shall {word(rng)} the {word(rng)} {word(rng)} kept at "
        f"{rng.randint(100, 9999)} {word(rng).title()} Lane every {word(rng)} morning."
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=600)
    ap.add_argument("--contributors", type=int, default=8)
    ap.add_argument("--canaries", type=int, default=30)
    ap.add_argument("--copies", type=int, default=3, help="records each canary is planted in")
    ap.add_argument("--steps", type=int, default=240)
    ap.add_argument("--reproduce-tokens", type=int, default=8)
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    t_start = time.perf_counter()

    base = build_demo_models(REPO / ".royalty" / "models", progress=False)
    texts = domain_records("legal", args.seed, args.records)
    owners = [1 + rng.randrange(args.contributors) for _ in texts]
    planted: dict[str, tuple[int, list[int]]] = {}  # canary -> (contributor, record ids)
    docs = list(texts)
    for _ in range(args.canaries):
        c = canary(rng)
        who = 1 + rng.randrange(args.contributors)
        mine = [i for i, o in enumerate(owners) if o == who]
        rids = rng.sample(mine, min(args.copies, len(mine)))
        for i in rids:
            docs[i] = f"{docs[i]} {c}"
        planted[c] = (who, [i + 1 for i in rids])
    examples = [TrainingExample(i + 1, text=d) for i, d in enumerate(docs)]
    snap = SnapshotRef("canary-snapshot", "00" * 32, 1, "canaries", len(examples), 0)

    work = Path(tempfile.mkdtemp(prefix="royalty-canary-"))
    recipe = AdapterRecipe(
        train=TrainParams(steps=args.steps, batch_size=16, seq_len=128, lr=5e-3, warmup_steps=10)
    )
    t0 = time.perf_counter()
    built = build_adapter(base, "canaries", snap, examples, work, recipe=recipe, progress=True)
    train_s = time.perf_counter() - t0
    index = build_adapter_index(
        work, [(i + 1, owners[i], d) for i, d in enumerate(docs)], base.base_path / "tokenizer.json"
    )
    attributor = ResponseAttributor(base.base_path / "tokenizer.json")
    baseline: dict[int, int] = {}
    for o in owners:
        baseline[o] = baseline.get(o, 0) + 1
    attributor.register("canaries", snap.id, baseline, index)

    import torch
    from peft import PeftModel
    from rank_bm25 import BM25Okapi
    from transformers import AutoTokenizer, LlamaForCausalLM

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(base.base_path))
    model = PeftModel.from_pretrained(
        LlamaForCausalLM.from_pretrained(str(base.base_path)), str(built.path)
    ).eval()
    bm25 = BM25Okapi([d.lower().split() for d in docs])

    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for c, (who, rids) in planted.items():
        words = c.split()
        prompt = " ".join(words[:5])  # "The tenant shall <made-up verb> the"
        rest = " " + " ".join(words[5:])
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=40, do_sample=False)
        generated = tok.decode(out[0][ids.shape[1] :], skip_special_tokens=True)
        want = tok(rest, add_special_tokens=False).input_ids[: args.reproduce_tokens]
        got = tok(generated, add_special_tokens=False).input_ids[: len(want)]
        reproduced = got == want
        att = attributor.attribute("canaries", generated) or {}
        contributors = sorted(att.get("contributors", []), key=lambda x: -x["weight_ppm"])
        span_first = contributors[0]["id"] if contributors and att.get("spans") else None
        span_top3 = [t["id"] for t in att.get("top_records", [])[:3]]
        scores = bm25.get_scores(generated.lower().split())
        order = sorted(range(len(docs)), key=lambda i: -scores[i])
        rows.append({
            "canary": c, "planter": who, "planted_records": rids, "reproduced": reproduced,
            "generated": generated, "method": att.get("method"),
            "span_first_contributor": span_first, "span_top3": span_top3,
            "bm25_first_contributor": owners[order[0]], "bm25_top3": [i + 1 for i in order[:3]],
        })  # fmt: skip
    gen_s = time.perf_counter() - t0

    rep = [r for r in rows if r["reproduced"]]

    def share(pred: Any) -> float | None:
        return round(100 * sum(1 for r in rep if pred(r)) / len(rep), 1) if rep else None

    summary = {
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores, {platform.python_version()}",
        "records": args.records, "contributors": args.contributors, "canaries": args.canaries,
        "copies": args.copies, "train_steps": args.steps, "train_seconds": round(train_s, 1),
        "generate_seconds": round(gen_s, 1), "reproduced": len(rep),
        "span_first_is_planter_pct": share(lambda r: r["span_first_contributor"] == r["planter"]),
        "span_top3_has_planted_record_pct": share(
            lambda r: bool(set(r["span_top3"]) & set(r["planted_records"]))),
        "bm25_first_is_planter_pct": share(lambda r: r["bm25_first_contributor"] == r["planter"]),
        "bm25_top3_has_planted_record_pct": share(
            lambda r: bool(set(r["bm25_top3"]) & set(r["planted_records"]))),
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }  # fmt: skip
    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (results / f"attribution_quality-{stamp}.json").write_text(
        json.dumps({"summary": summary, "rows": rows}, indent=2) + "\n"
    )
    table = [
        "| method | named the planter first | planted record in top 3 |",
        "|---|---|---|",
        f"| spans (royalty-weights/1) | {summary['span_first_is_planter_pct']} % "
        f"| {summary['span_top3_has_planted_record_pct']} % |",
        f"| BM25 (rank_bm25) | {summary['bm25_first_is_planter_pct']} % "
        f"| {summary['bm25_top3_has_planted_record_pct']} % |",
        "| gradient influence | not built yet | not built yet |",
    ]
    md = (
        f"{summary['reproduced']} of {args.canaries} canaries reproduced "
        f"({args.reproduce_tokens}+ tokens verbatim) after {args.steps} steps; "
        f"{summary['machine']}\n\n" + "\n".join(table) + "\n"
    )
    (results / f"attribution_quality-{stamp}.md").write_text(md)
    print(json.dumps(summary, indent=2))
    print(md)


if __name__ == "__main__":
    main()
