"""Span trace benchmark: Royalty's span index against infini-gram's `attribute()` and a naive
search, on the same synthetic corpora, in one run.

For each corpus size (default 1M, 10M, 100M tokens) it generates a text-like corpus (tokens
drawn from a Zipf-distributed phrase table over a 32k vocabulary, records of log-normal length,
planted boilerplate shared by many records and passages quoted by a few), builds

- `royalty`: `attribution.spans.build_index` (pydivsufsort suffix array, memory-mapped);
- `infini-gram`: the same token stream written in infini-gram's `tokenized.0`/`offset.0`
  format and indexed by its own indexer (`python -m infini_gram.indexing`, Rust), if the
  `infini-gram` package is installed;

then times tracing 64- and 256-token outputs (a third copied from records, a third novel text
from the same phrase model, a third mixing copied passages and novel text) with

- `royalty`: `SpanIndex.trace` (matching statistics with interval reuse, numba);
- `naive`: the same post-processing over a search that starts every output position afresh
  (first-token interval, then token-by-token narrowing), i.e. no reuse across starts;
- `infini-gram`: `InfiniGramEngine.attribute(ids, delim_ids=[], min_len, max_cnt,
  enforce_bow=False)` with the same minimum length and occurrence cap.

Royalty is timed once per `SpanIndex.open` load mode (`map`, `populate`, `ram`; see
`attribution/spans/_load.py`), all open side by side. Targets rotate query by query so that
drift on the (shared) machine hits all alike. Every call also records its thread's CPU time,
minor/major page faults, involuntary context switches (preemption by another process) and
collector runs, so that the wall-clock tail can be told apart from what the code costs. A
last, paced round sleeps `--pace-ms` before each call, as a server thread waits for requests
(a thread that runs back to back exhausts its scheduler slice and is preempted more often). A cold
start per mode (a fresh process: index evicted from the page cache with `posix_fadvise`,
opened, fresh outputs traced once) shows what the first responses after loading an adapter see. The run checks that
royalty (every mode), naive and infini-gram find the same maximal spans (length >=
min_tokens, occurrences <= max_occurrences) for every query.

    .venv/bin/python bench/span_trace.py                  # 1M, 10M, 100M (builds: ~10 min)
    .venv/bin/python bench/span_trace.py --sizes 1M --queries 30   # smoke run

Corpora and indexes are kept under .royalty/bench-cache/span_trace (`--cache`; `--fresh`
rebuilds), keyed by size, seed and vocabulary, and reused by later runs with their build times
of back then; results go to bench/results/span_trace-<stamp>.{json,md}.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _span_corpus import PhraseModel, make_corpus, make_queries  # noqa: E402
from _span_probe import evict, measure, memory_kib, percentiles, summarize  # noqa: E402

from attribution.spans import SpanIndex, TraceParams, build_index, warm_up  # noqa: E402
from attribution.spans._load import LOAD_MODES  # noqa: E402
from attribution.spans._search import _narrow  # noqa: E402
from attribution.spans.trace import as_query, spans_from_matches  # noqa: E402

CACHE = ROOT / ".royalty" / "bench-cache" / "span_trace"
RESULTS = ROOT / "bench" / "results"


# ---------------------------------------------------------------- engines


@njit(cache=True, nogil=True)
def longest_matches_naive(tokens, sa, first_bounds, query):
    """Each start searched from scratch: first-token interval, then narrow token by token."""
    n = query.shape[0]
    ends = np.empty(n, np.int64)
    los = np.zeros(n, np.int64)
    his = np.zeros(n, np.int64)
    n_tok = first_bounds.shape[0] - 1
    for i in range(n):
        q0 = query[i]
        ends[i] = i
        if q0 < 0 or q0 >= n_tok or first_bounds[q0] == first_bounds[q0 + 1]:
            continue
        lo = first_bounds[q0]
        hi = first_bounds[q0 + 1]
        e = i + 1
        while e < n:
            t = query[e]
            if t < 0 or t >= n_tok:
                break
            nlo, nhi = _narrow(tokens, sa, lo, hi, e - i, t)
            if nlo == nhi:
                break
            lo, hi, e = nlo, nhi, e + 1
        ends[i], los[i], his[i] = e, lo, hi
    return ends, los, his


def maximal_spans(ends: np.ndarray, los: np.ndarray, his: np.ndarray, p: TraceParams) -> set:
    keep = set()
    prev = -1
    for i, e in enumerate(ends.tolist()):
        if e > prev and e - i >= p.min_tokens and his[i] - los[i] <= p.max_occurrences:
            keep.add((i, e))
        prev = max(prev, e)
    return keep


def build_infini_gram(corpus: dict[str, Any], save: Path) -> float | str:
    try:
        import infini_gram  # noqa: F401
    except ImportError:
        return "infini-gram is not installed (.venv/bin/pip install infini-gram)"
    save.mkdir(parents=True, exist_ok=True)
    (save.parent / "ig-data").mkdir(exist_ok=True)  # its indexer wants a data dir; unused
    sep = np.array([0xFFFF], np.uint16)
    with open(save / "tokenized.0", "wb") as ds, open(save / "offset.0", "wb") as od:
        offsets = corpus["starts"] * 2 + np.arange(corpus["starts"].size) * 2
        od.write(offsets.astype(np.uint64).tobytes())
        for s, e in zip(corpus["starts"].tolist(), corpus["ends"].tolist(), strict=True):
            ds.write(sep.tobytes())
            ds.write(corpus["tokens"][s:e].tobytes())
    t0 = time.perf_counter()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    cmd = [sys.executable, "-m", "infini_gram.indexing", "--data_dir", str(save.parent / "ig-data")]
    cmd += ["--save_dir", str(save), "--token_dtype", "u16", "--cpus", str(os.cpu_count() or 1)]
    cmd += ["--mem", "8", "--ulimit", str(hard)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not (save / "table.0").exists():
        return f"infini-gram indexer failed: {proc.stdout[-300:]} {proc.stderr[-300:]}"
    return time.perf_counter() - t0


# ---------------------------------------------------------------- measuring

# ---------------------------------------------------------------- run


def cached_build(n_tokens: int, args: argparse.Namespace, model: PhraseModel) -> dict[str, Any]:
    """Corpus and both indexes of one size, reused from the cache directory when an earlier run
    built them from the same parameters (build times are then the ones measured back then)."""
    work = args.cache / f"{n_tokens}-seed{args.seed}-vocab{args.vocab}"
    meta_path = work / "build.json"
    if meta_path.exists() and not args.fresh:
        meta = json.loads(meta_path.read_text())
        with np.load(work / "corpus.npz") as z:
            corpus = {k: z[k] for k in z.files}
        if not args.no_infini_gram and "infini_gram_build_s" not in meta:
            ig = build_infini_gram(corpus, work / "infini-gram")
            meta["infini_gram_build_s" if isinstance(ig, float) else "infini_gram"] = ig
            meta_path.write_text(json.dumps(meta, indent=1))
        meta["cached"] = True
        return {"work": work, "corpus": corpus, "meta": meta}
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    meta: dict[str, Any] = {"tokens": n_tokens, "loadavg_build_start": os.getloadavg()}
    t0 = time.perf_counter()
    corpus = make_corpus(n_tokens, model, seed=args.seed + n_tokens)
    meta["generate_s"] = time.perf_counter() - t0
    meta["records"] = int(corpus["starts"].size)
    records = (
        (i, int(c), corpus["tokens"][s:e])
        for i, (s, e, c) in enumerate(
            zip(corpus["starts"], corpus["ends"], corpus["contributors"], strict=True)
        )
    )
    t0 = time.perf_counter()
    build_index(records, work / "royalty")
    meta["royalty_build_s"] = time.perf_counter() - t0
    ig = None if args.no_infini_gram else build_infini_gram(corpus, work / "infini-gram")
    if ig is not None:
        meta["infini_gram_build_s" if isinstance(ig, float) else "infini_gram"] = ig
    meta["loadavg_build_end"] = os.getloadavg()
    np.savez(work / "corpus.npz", **corpus)
    meta_path.write_text(json.dumps(meta, indent=1))
    return {"work": work, "corpus": corpus, "meta": meta}


def cold_start(work: Path, mode: str, queries: list[np.ndarray], params: TraceParams) -> dict:
    """Evict the index from the page cache, open it as `mode`, trace fresh outputs once: what
    the first responses after a gateway loads an adapter see."""
    evict(work / "royalty")
    mem0 = memory_kib()
    t0 = time.perf_counter()
    index = SpanIndex.open(work / "royalty", load=mode)
    open_s = time.perf_counter() - t0
    warm_up(index)
    mem1 = memory_kib()
    fn = functools.partial(index.trace, params=params)
    calls = [measure(fn, q) for q in queries]
    mem2 = memory_kib()
    delta = {k: {"after_open": mem1[k] - mem0[k], "after_queries": mem2[k] - mem0[k]} for k in mem0}
    return {"open_s": open_s, "rss_kib": delta, "first_pass": summarize(calls)}


def run_size(n_tokens: int, args: argparse.Namespace, model: PhraseModel) -> dict[str, Any]:
    built = cached_build(n_tokens, args, model)
    work, corpus = built["work"], built["corpus"]
    out: dict[str, Any] = {"tokens": n_tokens, **built["meta"], "loadavg": os.getloadavg()}
    params = TraceParams(min_tokens=args.min_tokens, max_records=args.max_records)
    queries = {
        length: make_queries(corpus, model, length, args.queries, seed=args.seed + length)
        for length in (64, 256)
    }
    # fresh outputs (another seed), each mode in a process of its own, as a gateway opens an
    # index (in one process, a mode measured after another inherits its state: unreliable)
    fresh = make_queries(corpus, model, 256, args.cold_queries, seed=args.seed + 99991)
    np.save(work / "cold-queries.npy", np.stack([q for _, q in fresh]).astype(np.int64))
    out["cold_start"] = {}
    for mode in args.load:
        cmd = [sys.executable, __file__, "--cold-child", str(work), mode]
        cmd += ["--min-tokens", str(args.min_tokens), "--max-records", str(args.max_records)]
        child = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out["cold_start"][mode] = json.loads(child.stdout.strip().splitlines()[-1])
        print(json.dumps({f"{n_tokens}/cold/{mode}": out["cold_start"][mode]}), flush=True)

    evict(work / "royalty")  # as after a build (which drops what it wrote): see _load._prefault
    indexes = {mode: SpanIndex.open(work / "royalty", load=mode) for mode in args.load}
    for ix in indexes.values():
        warm_up(ix)
    index = indexes[args.load[-1]]
    out["royalty_bytes_per_token"] = index.nbytes() / n_tokens
    engine = None
    if isinstance(out.get("infini_gram_build_s"), float):
        from infini_gram.engine import InfiniGramEngine

        size = sum(f.stat().st_size for f in (work / "infini-gram").iterdir())
        out["infini_gram_bytes_per_token"] = size / n_tokens
        engine = InfiniGramEngine(
            index_dir=str(work / "infini-gram"),
            eos_token_id=0,
            vocab_size=65535,
            version=4,
            load_to_ram=True,  # its faster mode (about 2.5x on 1M tokens)
        )
    else:
        out.setdefault("infini_gram", "skipped (--no-infini-gram)")

    def naive_trace(q: np.ndarray) -> list[Any]:
        ends, los, his = longest_matches_naive(index.tokens, index.sa, index.first_bounds, q)
        return spans_from_matches(index, q, ends, los, his, params)

    targets: dict[str, Any] = {
        f"royalty:{mode}": functools.partial(ix.trace, params=params)
        for mode, ix in indexes.items()
    }
    targets["naive"] = naive_trace
    if engine is not None:
        targets["infini-gram"] = lambda q: engine.attribute(
            input_ids=q.tolist(),
            delim_ids=[],
            min_len=params.min_tokens,
            max_cnt=params.max_occurrences,
            enforce_bow=False,
        )
    for length, qs in queries.items():
        qs = [(kind, as_query(q)) for kind, q in qs]
        agree = {"naive": 0, "infini-gram": 0, "modes": 0}
        spans_found = 0
        for k, (_, q) in enumerate(qs):  # warm-up (page cache, numba) and agreement
            ends, los, his = index.longest_matches(q, params.min_tokens)
            ref = maximal_spans(ends, los, his, params)
            ends, los, his = longest_matches_naive(index.tokens, index.sa, index.first_bounds, q)
            agree["naive"] += maximal_spans(ends, los, his, params) == ref
            traces = [ix.trace(q, params) for ix in indexes.values()]
            agree["modes"] += all(t == traces[0] for t in traces)
            spans_found += len(traces[0])
            if engine is not None and k < args.ig_queries:
                got = targets["infini-gram"](q)
                agree["infini-gram"] += {(s["l"], s["r"]) for s in got["spans"]} == ref
        calls: dict[str, list[Any]] = {name: [] for name in targets}
        best: dict[str, dict[int, float]] = {name: {} for name in targets}
        by_kind: dict[str, list[float]] = {}
        names = list(targets)
        load0 = os.getloadavg()
        for round_no in range(args.rounds):
            for k, (kind, q) in enumerate(qs):
                # rotate who goes first: a target that runs right after infini-gram finds
                # the caches cold, one that runs after another on the same query warm
                for name in names[k % len(names) :] + names[: k % len(names)]:
                    if name == "infini-gram" and (round_no > 0 or k >= args.ig_queries):
                        continue
                    call = measure(targets[name], q)
                    calls[name].append(call)
                    best[name][k] = min(call[0], best[name].get(k, call[0]))
                    if name == f"royalty:{args.load[-1]}":
                        by_kind.setdefault(kind, []).append(call[0])
        # Paced: a pause before each call, as a server thread waits for the next request.
        # Back to back, the thread burns through its scheduler slice and gets preempted more
        # often than one that wakes up for each request (which the scheduler favours).
        paced: dict[str, list[Any]] = {f"{name} paced": [] for name in targets}
        for k, (_, q) in enumerate(qs if args.pace_ms > 0 else []):
            for name in names[k % len(names) :] + names[: k % len(names)]:
                if name == "infini-gram" and k >= args.ig_queries:
                    continue
                time.sleep(args.pace_ms / 1e3)
                paced[f"{name} paced"].append(measure(targets[name], q))
        calls.update(paced if args.pace_ms > 0 else {})
        n = len(qs)
        out[f"len{length}"] = {
            "queries": n,
            "loadavg_before": load0,
            "loadavg_after": os.getloadavg(),
            "kept_spans_per_query": spans_found / n,
            "agreement_with_royalty": {
                "naive": f"{agree['naive']}/{n}",
                "load modes": f"{agree['modes']}/{n}",
                "infini-gram": f"{agree['infini-gram']}/{min(n, args.ig_queries)}"
                if engine is not None
                else "-",
            },
            # CPU time is the calling thread's (infini-gram also works in threads of its own,
            # so only its wall clock compares); best_of_rounds: per query its fastest round
            "targets": {name: summarize(c) for name, c in calls.items()},
            "best_of_rounds": {name: percentiles(list(b.values())) for name, b in best.items()},
            "royalty_by_kind": {k: percentiles(v) for k, v in by_kind.items()},
        }
        print(json.dumps({f"{n_tokens}/len{length}": out[f"len{length}"]}), flush=True)
    out["rss_all_open_kib"] = memory_kib()
    targets.clear()  # drop the engines (and their maps) before any files go
    indexes.clear()
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Machine: {results['machine']}; load average at start {results['loadavg_start']}, "
        f"at end {results['loadavg_end']}; peak RSS {results['peak_rss_mib']} MiB.",
        "",
        "Steady state, ms: `p50 / p99` wall clock over all rounds, then `[p99 CPU time, "
        "p99 wall of the calls not preempted]`; preempted = share of calls with an involuntary "
        "context switch; faults = minor page faults per call (mean).",
        "",
        "| corpus | output | load avg | target | wall p50 / p99 [cpu p99, unpreempted p99] "
        "| preempted | faults | slowest 1 %: preempted / faulted / gc |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["sizes"]:
        for length in (64, 256):
            res = r[f"len{length}"]
            load = f"{res['loadavg_before'][0]:.1f}-{res['loadavg_after'][0]:.1f}"
            for name, s in res["targets"].items():
                slow = s["slowest_1pct"]
                lines.append(
                    f"| {r['tokens'] / 1e6:g}M | {length} | {load} | {name} "
                    f"| {s['wall']['p50_ms']:.3f} / {s['wall']['p99_ms']:.3f} "
                    f"[{s['cpu']['p99_ms']:.3f}, {s['wall_not_preempted']['p99_ms']:.3f}] "
                    f"| {s['preempted_share']:.1%} | {s['minor_faults_per_call']['mean']:.1f} "
                    f"| {slow['preempted']}/{slow['n']} / {slow['with_faults']} / {slow['with_gc']} |"
                )
    lines += [
        "",
        "Cold start (index evicted from the page cache, opened, fresh 256-token outputs traced "
        "once): open time, first-pass wall and CPU p50 / p99 ms, minor / major faults per call, "
        "RSS growth (MiB: anonymous, file-backed) after the first pass.",
        "",
        "| corpus | mode | open (s) | first pass wall | first pass CPU "
        "| faults minor / major per call | RSS anon / file |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["sizes"]:
        for mode, c in r["cold_start"].items():
            fp, rss = c["first_pass"], c["rss_kib"]
            anon = rss["Anonymous"]["after_queries"] / 1024
            file_ = (rss["Rss"]["after_queries"] - rss["Anonymous"]["after_queries"]) / 1024
            lines.append(
                f"| {r['tokens'] / 1e6:g}M | {mode} | {c['open_s']:.2f} "
                f"| {fp['wall']['p50_ms']:.3f} / {fp['wall']['p99_ms']:.3f} "
                f"| {fp['cpu']['p50_ms']:.3f} / {fp['cpu']['p99_ms']:.3f} "
                f"| {fp['minor_faults_per_call']['mean']:.0f} / "
                f"{fp['major_faults'] / max(fp['wall']['n'], 1):.1f} | {anon:.0f} / {file_:.0f} |"
            )
    lines += [
        "",
        "| corpus | build (s) royalty / infini-gram | bytes/token royalty / infini-gram "
        "| same spans 64 / 256 (naive, load modes, infini-gram) |",
        "|---|---|---|---|",
    ]
    for r in results["sizes"]:
        ig_build, ig_bpt = r.get("infini_gram_build_s"), r.get("infini_gram_bytes_per_token")
        agree = [", ".join(r[f"len{n}"]["agreement_with_royalty"].values()) for n in (64, 256)]
        lines.append(
            f"| {r['tokens'] / 1e6:g}M tokens, {r['records']} records "
            f"| {r['royalty_build_s']:.1f} / {f'{ig_build:.1f}' if ig_build else '-'}"
            f"{' (cached)' if r.get('cached') else ''} "
            f"| {r['royalty_bytes_per_token']:.2f} / {f'{ig_bpt:.2f}' if ig_bpt else '-'} "
            f"| {agree[0]} / {agree[1]} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1M,10M,100M")
    parser.add_argument("--queries", type=int, default=100, help="per kind and length")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-tokens", type=int, default=6)
    parser.add_argument("--max-records", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-infini-gram", action="store_true")
    parser.add_argument(
        "--ig-queries",
        type=int,
        default=60,
        help="infini-gram runs only the first N queries of each length, once (it is slow)",
    )
    parser.add_argument(
        "--load",
        default=",".join(LOAD_MODES),
        help="SpanIndex.open load modes to time side by side (the last one also serves naive)",
    )
    parser.add_argument("--cold-queries", type=int, default=30, help="per kind, cold start")
    parser.add_argument(
        "--pace-ms", type=float, default=2.0, help="pause before each call of the paced round"
    )
    parser.add_argument("--cache", type=Path, default=CACHE, help="corpora and indexes")
    parser.add_argument("--fresh", action="store_true", help="rebuild what the cache holds")
    parser.add_argument("--cold-child", nargs=2, metavar=("WORK", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.load = args.load.split(",")
    if args.cold_child:
        work, mode = Path(args.cold_child[0]), args.cold_child[1]
        queries = list(np.load(work / "cold-queries.npy"))
        params = TraceParams(min_tokens=args.min_tokens, max_records=args.max_records)
        print(json.dumps(cold_start(work, mode, queries, params)))
        return
    sizes = [int(float(s[:-1]) * 1e6) if s.endswith("M") else int(s) for s in args.sizes.split(",")]

    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "args": {k: str(v) for k, v in vars(args).items()},
        "sizes": [],
    }
    model = PhraseModel(args.vocab, 200_000, seed=args.seed)
    for n in sizes:
        results["sizes"].append(run_size(n, args, model))
    results["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    # ru_maxrss is in KiB on Linux (the indexer subprocesses are not counted)
    results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"span_trace-{stamp}.json").write_text(json.dumps(results, indent=1))
    md = markdown(results)
    (RESULTS / f"span_trace-{stamp}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
