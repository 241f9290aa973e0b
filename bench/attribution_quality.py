"""Attribution quality: planted canaries (spans, gradient influence and BM25 in one run) and,
with `--counterfactual`, a linear datamodeling score (LDS) check of influence against BM25.

Canaries. A datanet of `--records` generated tenancy clauses (the demo base model's `legal`
domain) from `--contributors` contributors; `--canaries` unique canaries, each opening `--copies`
records of one contributor. A canary is a passphrase
(`--canary-style passphrase`): `--canary-words` distinct words drawn at random from ~380 real
English words that are one token each and that no record of the datanet uses, so it shares no
template with the others, cannot be known to the base model (120 bits), and costs the model
one token a word to learn. Each canary's first `--prefix-words` words are unique to it. The
bench checks uniqueness: the canary's rest, traced alone, must only match its planted records
(`canaries_unique`). The first design (`--canary-style template`: one shared sentence with
made-up words from 16 syllables, 46 tokens) is still the default: on the tiny demo base it is
reproduced far more often within the time budget (63 of 150 against 8-18, docs/attribution.md). An adapter is trained on the
datanet through the model factory (`build_adapter`, the path every adapter takes), its span
index (`build_adapter_index`) and influence index (`build_influence_index`) are built, and the
adapter is prompted with each canary's first `--prefix-words` words (greedy,
as many new tokens as the canary's rest has, or `--max-new-tokens`; transformers + PEFT on
the CPU). A canary counts as reproduced when the
output continues it verbatim for at least `--reproduce-tokens` tokens, and as reproduced in
full when the output holds the whole rest of it verbatim. Attribution sees only the generated
text (and, for influence, the prompt), never who planted what. For each canary:

- spans: the contributor with the largest weight in the response's `attribution`
  (`attribution.weights`), and whether a planted record is among `top_records[:3]`;
- influence (`GradientInfluence`, `INFLUENCE_METHOD`): whether a planted record is among the
  top 3 records for (prompt, output); also on the canary's true continuation as the output
  ("oracle output": the index's own quality, whatever the model generated);
- influence at the final weights only (royalty-influence/2's scores: no checkpoint ensemble)
  and without whitening (the same gradients, plain inner products): ablations;
- BM25: the contributor of the best-scoring record for the output, and the top 3.

Counterfactual (`--counterfactual`, on the tiny factory base): a datanet of `--cf-records`
records, `--cf-models` adapters each trained (same recipe and seed) on a random half of it,
and `--cf-tests` held-out records as test outputs. For each test output t and each subset
model m: the actual loss L_m(t), and each method's prediction, the sum of its scores of t
against the records in m's subset (influence from the index of the adapter trained on all
records). LDS = Spearman correlation over the models of -L_m(t) with the prediction, averaged
over the test outputs (Park et al. 2023). BM25 and random scores are predicted the same way.

    .venv/bin/python bench/attribution_quality.py [--canaries 150] [--counterfactual]

Results go to bench/results/attribution_quality-<stamp>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import sys
import tempfile
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from attribution.influence.gradients import InfluenceParams, build_influence_index  # noqa: E402
from attribution.influence.scorer import GradientInfluence  # noqa: E402
from attribution.responses import ResponseAttributor, build_adapter_index  # noqa: E402
from factory import build_demo_models  # noqa: E402
from factory.adapters import (  # noqa: E402
    AdapterRecipe,
    SnapshotRef,
    TrainingExample,
    build_adapter,
)
from factory.corpus import domain_records, general_corpus  # noqa: E402
from factory.lora import LoraShape  # noqa: E402
from factory.training import TrainParams  # noqa: E402

SYLLABLES = ["zor", "blax", "quin", "vel", "morb", "thex", "ulun", "grib", "dravo", "kesh",
             "plon", "yute", "fasq", "orrin", "twel", "nubo"]  # fmt: skip
NO_WHITENING = 1e6
"""Damping so large that (F + lambda I)^-1 ~ I / lambda: scores become plain gradient inner
products (up to a constant), the ablation of TRAK's whitening."""


def word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3)))


def canary(rng: random.Random) -> str:
    """The first design (`--canary-style template`): one shared template, made-up words."""
    return (
        f"The tenant shall {word(rng)} the {word(rng)} {word(rng)} kept at "
        f"{rng.randint(100, 9999)} {word(rng).title()} Lane every {word(rng)} morning."
    )


def passphrase_inventory(vocab: Collection[str], datanet_texts: Sequence[str]) -> list[str]:
    """The words a passphrase canary draws from: real English words (they occur in the base
    model's general pretraining corpus) that are one token of the base tokenizer (after a
    space), at least 3 letters, and that no record of the datanet uses. One token a word keeps
    the canary short for the model to learn; absent from the datanet, no word of a canary
    can start a span in an unplanted record."""
    used = {w for t in datanet_texts for w in re.findall(r"[a-z]+", t.lower())}
    english = {w for t in general_corpus(1, 5000) for w in re.findall(r"[a-z]+", t.lower())}
    return sorted(w for w in english - used if len(w) >= 3 and "\u0120" + w in vocab)


def passphrase(rng: random.Random, inventory: Sequence[str], words: int) -> str:
    """`words` distinct words drawn uniformly from `inventory` (~380 words: 8.6 bits each,
    120 bits for 14), in the random order drawn: no template, nothing shared with the other
    canaries but the odd word."""
    chosen = rng.sample(list(inventory), words)
    return " ".join([chosen[0].title(), *chosen[1:]]) + "."


def _load(sys_args: argparse.Namespace) -> None:
    sys_args.load.append(round(os.getloadavg()[0], 2))


def _pct(hits: int, total: int) -> float | None:
    return round(100 * hits / total, 1) if total else None


def run_canaries(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from peft import PeftModel
    from rank_bm25 import BM25Okapi
    from transformers import AutoTokenizer, LlamaForCausalLM

    rng = random.Random(args.seed)
    base = build_demo_models(REPO / ".royalty" / "models", progress=False)
    texts = domain_records("legal", args.seed, args.records)
    owners = [1 + rng.randrange(args.contributors) for _ in texts]
    if args.canary_style == "passphrase":
        from tokenizers import Tokenizer

        vocab = Tokenizer.from_file(str(base.base_path / "tokenizer.json")).get_vocab()
        inventory = passphrase_inventory(vocab, texts)
    planted: dict[str, tuple[int, list[int]]] = {}  # canary -> (contributor, record ids)
    prompts: set[str] = set()
    docs = list(texts)
    free = set(range(len(docs)))
    while len(planted) < args.canaries:
        if args.canary_style == "passphrase":
            c = passphrase(rng, inventory, args.canary_words)
        else:
            c = canary(rng)
        prompt = " ".join(c.split()[: args.prefix_words])
        if c in planted or (args.canary_style == "passphrase" and prompt in prompts):
            continue  # every passphrase canary has its own prompt
        prompts.add(prompt)
        who = 1 + rng.randrange(args.contributors)
        if not any(sum(1 for i in free if owners[i] == c) >= args.copies for c in set(owners)):
            raise SystemExit("not enough unplanted records: lower --canaries or --copies")
        while sum(1 for i in free if owners[i] == who) < args.copies:  # this one is full
            who = 1 + rng.randrange(args.contributors)
        mine = sorted(i for i in free if owners[i] == who)
        rids = rng.sample(mine, min(args.copies, len(mine)))
        for i in rids:
            docs[i] = f"{c} {docs[i]}"  # the canary opens the record, as the prompt does
            free.discard(i)
        planted[c] = (who, [i + 1 for i in rids])
    examples = [TrainingExample(i + 1, text=d) for i, d in enumerate(docs)]
    snap = SnapshotRef("canary-snapshot", "00" * 32, 1, "canaries", len(examples), 0)

    # --work-dir: builds are keyed by their inputs (the factory's cache), so a second run with
    # the same arguments reuses the identical adapter and indexes instead of training again
    work = (
        Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="royalty-canary-"))
    )
    work.mkdir(parents=True, exist_ok=True)
    recipe = AdapterRecipe(
        lora=LoraShape(rank=args.lora_rank, alpha=2 * args.lora_rank),
        train=TrainParams(
            steps=args.steps, batch_size=16, seq_len=128, lr=args.lr, warmup_steps=10
        ),
    )
    t0 = time.perf_counter()
    built = build_adapter(base, "canaries", snap, examples, work, recipe=recipe, progress=True)
    train_s = time.perf_counter() - t0
    index = build_adapter_index(
        work, [(i + 1, owners[i], d) for i, d in enumerate(docs)], base.base_path / "tokenizer.json"
    )
    t0 = time.perf_counter()
    build_influence_index(base.base_path, built.path, examples)
    influence_build_s = time.perf_counter() - t0
    scorer = GradientInfluence(base.base_path)
    scorer.register("canaries", built.path)

    def ablation(label: str, params: InfluenceParams) -> GradientInfluence:
        """An influence index with other parameters over the same adapter (its files linked
        into a directory of its own, where the index is written), and a scorer for it."""
        adir = work / label
        adir.mkdir(exist_ok=True)
        for f in built.path.iterdir():  # the weights, the lineage and the checkpoints
            if (f.is_file() or f.name == "checkpoints") and not (adir / f.name).exists():
                (adir / f.name).symlink_to(f)
        build_influence_index(base.base_path, adir, examples, params=params)
        ablated = GradientInfluence(base.base_path)
        ablated.register("canaries", adir)
        return ablated

    raw_scorer = ablation("raw", InfluenceParams(damping=NO_WHITENING, unit_rows=False))
    # the same index at the final weights alone (royalty-influence/2's scores): what the
    # checkpoint ensemble adds, on the same outputs
    final_scorer = ablation("final-weights", InfluenceParams(ensemble=False))
    attributor = ResponseAttributor(base.base_path / "tokenizer.json")
    baseline: dict[int, int] = {}
    for o in owners:
        baseline[o] = baseline.get(o, 0) + 1
    attributor.register("canaries", snap.id, baseline, index)

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(base.base_path))
    model = PeftModel.from_pretrained(
        LlamaForCausalLM.from_pretrained(str(base.base_path)), str(built.path)
    ).eval()
    bm25 = BM25Okapi([d.lower().split() for d in docs])

    rows: list[dict[str, Any]] = []
    score_s: list[float] = []
    t0 = time.perf_counter()
    for c, (who, rids) in planted.items():
        words = c.split()
        prompt = " ".join(words[: args.prefix_words])
        rest = " " + " ".join(words[args.prefix_words :])
        ids = tok(prompt, return_tensors="pt").input_ids
        want = tok(rest, add_special_tokens=False).input_ids
        # By default the model writes as many tokens as the canary's rest has: the output is
        # its attempt at the canary, not the canary plus whatever clause it runs on into
        # (a run-on copies other records and is credited to them, rightly: see the docs).
        budget = args.max_new_tokens or len(want)
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=budget, do_sample=False)
        generated = tok.decode(out[0][ids.shape[1] :], skip_special_tokens=True)
        got = tok(generated, add_special_tokens=False).input_ids
        matched = next(
            (k for k, (a, b) in enumerate(zip(want, got, strict=False)) if a != b),
            min(len(want), len(got)),
        )
        # the canary's own text (the true continuation) traced alone: its spans must name
        # only the planted records, else the canary is not unique in the datanet
        truth = attributor.attribute("canaries", rest) or {}
        unique = bool(truth.get("spans")) and all(
            set(sp["record_ids"]) <= set(rids) for sp in truth["spans"]
        )
        att = attributor.attribute("canaries", generated) or {}
        contributors = sorted(att.get("contributors", []), key=lambda x: -x["weight_ppm"])
        scores = bm25.get_scores(generated.lower().split())
        order = sorted(range(len(docs)), key=lambda i: -scores[i])
        inf = scorer.score("canaries", prompt, generated, top_k=3)
        score_s.append(inf.seconds)
        rows.append({
            "canary": c, "planter": who, "planted_records": rids, "prompt": prompt,
            # reproduced: the first --reproduce-tokens tokens of the rest verbatim;
            # reproduced_full: the whole rest of the canary verbatim
            "reproduced": matched >= min(args.reproduce_tokens, len(want)),
            "reproduced_full": matched == len(want), "matched_tokens": matched,
            "canary_tokens": len(want), "canary_unique": unique,
            "generated": generated, "method": att.get("method"),
            "span_first_contributor": contributors[0]["id"] if contributors and att.get("spans") else None,
            # Every contributor sharing the top weight: the per-response cap (1/2) makes the
            # planter tie with the one other contributor named when its evidence exceeds it.
            "span_tied_first": [c["id"] for c in contributors
                                if c["weight_ppm"] >= contributors[0]["weight_ppm"] - 1]
            if contributors and att.get("spans") else [],
            # The contributor of the record with the largest weight (the evidence, before the cap).
            "span_top_record_contributor": att["top_records"][0]["contributor"]
            if att.get("spans") and att.get("top_records") else None,
            "span_top3": [t["id"] for t in att.get("top_records", [])[:3]],
            "influence_top3": [r.record_id for r in inf.records], "influence_method": inf.method,
            "influence_oracle_top3": [
                r.record_id for r in scorer.score("canaries", prompt, rest, top_k=3).records],
            "raw_gradient_top3": [
                r.record_id for r in raw_scorer.score("canaries", prompt, generated, top_k=3).records],
            "final_weights_top3": [
                r.record_id for r in final_scorer.score("canaries", prompt, generated, top_k=3).records],
            "bm25_first_contributor": owners[order[0]], "bm25_top3": [i + 1 for i in order[:3]],
        })  # fmt: skip
    gen_s = time.perf_counter() - t0

    def share(pred: Any, among: list[dict[str, Any]]) -> float | None:
        return _pct(sum(1 for r in among if pred(r)), len(among))

    def top3(key: str) -> Any:
        return lambda r: bool(set(r[key]) & set(r["planted_records"]))

    rep = [r for r in rows if r["reproduced"]]
    full = [r for r in rows if r["reproduced_full"]]
    score_s.sort()
    return {
        "summary": {
            "records": args.records,
            "contributors": args.contributors,
            "canaries": args.canaries,
            "canary_style": args.canary_style,
            "canary_words": args.canary_words if args.canary_style == "passphrase" else None,
            "passphrase_inventory": len(inventory) if args.canary_style == "passphrase" else None,
            "canary_tokens_median": sorted(r["canary_tokens"] for r in rows)[len(rows) // 2],
            "canaries_unique": sum(1 for r in rows if r["canary_unique"]),
            "copies": args.copies,
            "prefix_words": args.prefix_words,
            "reproduce_tokens": args.reproduce_tokens,
            "max_new_tokens": args.max_new_tokens or "canary length",
            "train_steps": args.steps,
            "lora_rank": args.lora_rank,
            "lr": args.lr,
            "train_seconds": round(train_s, 1),
            "adapter_cached": built.cached,
            "influence_method": rows[0]["influence_method"] if rows else None,
            "influence_build_seconds": round(influence_build_s, 1),
            "influence_score_cpu_seconds_p50": round(score_s[len(score_s) // 2], 3),
            "generate_and_attribute_seconds": round(gen_s, 1),
            "reproduced": len(rep),
            "reproduced_full": len(full),
            "span_first_is_planter_full_pct": share(
                lambda r: r["span_first_contributor"] == r["planter"], full
            ),
            "span_top3_full_pct": share(top3("span_top3"), full),
            "influence_top3_full_pct": share(top3("influence_top3"), full),
            "bm25_first_is_planter_full_pct": share(
                lambda r: r["bm25_first_contributor"] == r["planter"], full
            ),
            "span_first_is_planter_pct": share(
                lambda r: r["span_first_contributor"] == r["planter"], rep
            ),
            "span_first_or_tied_pct": share(lambda r: r["planter"] in r["span_tied_first"], rep),
            "span_top_record_is_planter_pct": share(
                lambda r: r["span_top_record_contributor"] == r["planter"], rep
            ),
            "span_top3_pct": share(top3("span_top3"), rep),
            "influence_top3_pct": share(top3("influence_top3"), rep),
            "influence_top3_all_pct": share(top3("influence_top3"), rows),
            "influence_oracle_top3_all_pct": share(top3("influence_oracle_top3"), rows),
            "final_weights_top3_pct": share(top3("final_weights_top3"), rep),
            "final_weights_top3_all_pct": share(top3("final_weights_top3"), rows),
            "raw_gradient_top3_pct": share(top3("raw_gradient_top3"), rep),
            "raw_gradient_top3_all_pct": share(top3("raw_gradient_top3"), rows),
            "bm25_first_is_planter_pct": share(
                lambda r: r["bm25_first_contributor"] == r["planter"], rep
            ),
            "bm25_top3_pct": share(top3("bm25_top3"), rep),
            "bm25_top3_all_pct": share(top3("bm25_top3"), rows),
        },  # fmt: skip
        "rows": rows,
    }


def markdown(results: dict[str, Any]) -> str:
    lines = [f"Machine: {results['machine']}; load average during the run: {results['load']}", ""]
    if "canaries" in results:
        s = results["canaries"]["summary"]
        from attribution.weights import WEIGHTS_VERSION

        n, full = s["reproduced"], s.get("reproduced_full")
        style = s.get("canary_style", "template")
        lines += [
            f"Canaries ({style}"
            + (f", {s['canary_words']} words" if s.get("canary_words") else "")
            + f"; {s.get('canaries_unique')} of {s['canaries']} verified unique in the datanet): "
            f"{n} of {s['canaries']} reproduced (first {s['prefix_words']} words as the prompt, "
            f"{s.get('reproduce_tokens', 8)}+ tokens of the rest verbatim), {full} in full "
            f"(the whole rest, median {s.get('canary_tokens_median')} tokens), after "
            f"{s['train_steps']} steps on {s['records']} records; influence index built in "
            f"{s['influence_build_seconds']} s, {s['influence_score_cpu_seconds_p50']} s CPU "
            "per response (p50).",
            "",
            f"| method | planter first ({n} reproduced) | planted record in top 3 ({n} "
            f"reproduced) | planter first ({full} in full) | top 3 ({full} in full) "
            "| top 3, all canaries |",
            "|---|---|---|---|---|---|",
            f"| spans ({WEIGHTS_VERSION}) | {s['span_first_is_planter_pct']} % "
            f"| {s['span_top3_pct']} % | {s.get('span_first_is_planter_full_pct')} % "
            f"| {s.get('span_top3_full_pct')} % | |",
            f"| spans, planter tied first (at the cap) | {s['span_first_or_tied_pct']} % | | | | |",
            f"| spans, the top record's contributor | {s['span_top_record_is_planter_pct']} % "
            "| | | | |",
            f"| gradient influence ({s.get('influence_method')}) | | {s['influence_top3_pct']} % "
            f"| | {s.get('influence_top3_full_pct')} % | {s['influence_top3_all_pct']} % "
            f"(oracle output: {s['influence_oracle_top3_all_pct']} %) |",
            f"| the same, final weights only (= royalty-influence/2) | | "
            f"{s.get('final_weights_top3_pct')} % | | | {s.get('final_weights_top3_all_pct')} % |",
            f"| gradient inner product, no whitening | | {s['raw_gradient_top3_pct']} % "
            f"| | | {s['raw_gradient_top3_all_pct']} % |",
            f"| BM25 (rank_bm25) | {s['bm25_first_is_planter_pct']} % | {s['bm25_top3_pct']} % "
            f"| {s.get('bm25_first_is_planter_full_pct')} % | | {s['bm25_top3_all_pct']} % |",
            "",
        ]
    if "counterfactual" in results:
        cf = results["counterfactual"]
        lines += [
            f"Counterfactual (LDS): {cf['models']} adapters on random halves of {cf['records']} "
            f"records (tiny base, {cf['steps']} steps), {cf['tests']} held-out test outputs; "
            f"loss std across models {cf['loss_std_across_models']}.",
            "",
            "| scores | LDS (mean Spearman) | stderr | tests with LDS > 0 |",
            "|---|---|---|---|",
        ]
        for label, v in cf["lds"].items():
            lines.append(
                f"| {label} | {v['mean']} | {v['stderr']} | {v['tests_positive']}/{cf['tests']} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    from _attribution_lds import run_counterfactual

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=320)
    ap.add_argument("--contributors", type=int, default=8)
    ap.add_argument("--canaries", type=int, default=150)
    ap.add_argument("--copies", type=int, default=2, help="records each canary is planted in")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--prefix-words", type=int, default=5, help="prompt: the canary's first words")
    ap.add_argument("--reproduce-tokens", type=int, default=8)
    ap.add_argument(
        "--canary-style",
        choices=["passphrase", "template"],
        default="template",
        help="template (default): one shared sentence with made-up words; passphrase: random "
        "real words, one token each (reproduced far less often by the tiny demo base within "
        "this budget: see docs/attribution.md; try --records 800 --steps 800 --prefix-words 4)",
    )
    ap.add_argument("--canary-words", type=int, default=14, help="words of a passphrase canary")
    ap.add_argument(
        "--max-new-tokens",
        type=int,
        default=0,
        help="tokens to generate per canary (default 0: as many as the canary's rest has)",
    )
    ap.add_argument(
        "--work-dir",
        help="where the adapter and its indexes are built (default: a new temp directory); "
        "an earlier run's directory with the same arguments is a cache hit (no training)",
    )
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--skip-canaries", action="store_true")
    ap.add_argument("--counterfactual", action="store_true")
    ap.add_argument("--cf-records", type=int, default=96)
    ap.add_argument("--cf-tests", type=int, default=24)
    ap.add_argument("--cf-models", type=int, default=20)
    ap.add_argument("--cf-steps", type=int, default=40)
    args = ap.parse_args()
    if args.canaries * args.copies > args.records:
        ap.error("--canaries x --copies must not exceed --records (one canary per record)")
    args.load = []
    t_start = time.perf_counter()
    _load(args)
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    }
    if not args.skip_canaries:
        results["canaries"] = run_canaries(args)
        _load(args)
    if args.counterfactual:
        results["counterfactual"] = run_counterfactual(args)
        _load(args)
    results["load"] = args.load
    results["total_seconds"] = round(time.perf_counter() - t_start, 1)
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"attribution_quality-{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
    md = markdown(results) + f"\nTotal {results['total_seconds']} s.\n"
    (out / f"attribution_quality-{stamp}.md").write_text(md)
    if "canaries" in results:
        print(json.dumps(results["canaries"]["summary"], indent=2))
    print(md)


if __name__ == "__main__":
    main()
