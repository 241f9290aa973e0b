"""Synthetic text-like corpora and outputs for `span_trace.py`: a phrase model (Zipf phrases
over a Zipf vocabulary), records of log-normal length with planted boilerplate and quotes, and
64/256-token outputs that are copied, novel or mixed."""

from __future__ import annotations

from typing import Any

import numpy as np


class PhraseModel:
    """Text-like token streams: phrases of 1-5 tokens (tokens Zipf over the vocabulary) drawn
    with Zipf frequencies, so that common n-grams recur as they do in text."""

    def __init__(self, vocab: int, n_phrases: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        token_p = 1.0 / np.arange(1, vocab + 1) ** 1.05
        self.token_cdf = np.cumsum(token_p / token_p.sum())
        self.lengths = rng.integers(1, 6, n_phrases)
        self.starts = np.concatenate(([0], np.cumsum(self.lengths)[:-1]))
        self.tokens = self._draw(rng, self.token_cdf, int(self.lengths.sum())).astype(np.uint16)
        phrase_p = 1.0 / np.arange(1, n_phrases + 1) ** 1.0
        self.phrase_cdf = np.cumsum(phrase_p / phrase_p.sum())

    @staticmethod
    def _draw(rng: np.random.Generator, cdf: np.ndarray, n: int) -> np.ndarray:
        return np.minimum(np.searchsorted(cdf, rng.random(n)), cdf.size - 1)

    def stream(self, n_tokens: int, rng: np.random.Generator) -> np.ndarray:
        n_draw = int(n_tokens / self.lengths.mean() * 1.05) + 16
        ids = self._draw(rng, self.phrase_cdf, n_draw)
        lens = self.lengths[ids]
        ends = np.cumsum(lens)
        keep = int(np.searchsorted(ends, n_tokens)) + 1
        ids, lens, ends = ids[:keep], lens[:keep], ends[:keep]
        out_starts = ends - lens
        gather = np.repeat(self.starts[ids] - out_starts, lens) + np.arange(int(ends[-1]))
        return self.tokens[gather][:n_tokens]


def make_corpus(n_tokens: int, model: PhraseModel, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    tokens = model.stream(n_tokens, rng)
    lengths = np.clip(rng.lognormal(np.log(400), 1.0, n_tokens // 100), 16, 8000).astype(np.int64)
    ends = np.cumsum(lengths)
    ends = np.append(ends[ends < n_tokens], n_tokens)
    starts = np.concatenate(([0], ends[:-1]))
    n_records = starts.size
    # boilerplate: 20 passages of 40 tokens, each opening 2% of the records (at least 10)
    boiler = [model.stream(40, rng) for _ in range(20)]
    for passage in boiler:
        targets = rng.choice(n_records, max(10, n_records // 50), replace=False)
        targets = targets[ends[targets] - starts[targets] >= 40]
        tokens[(starts[targets][:, None] + np.arange(40)).ravel()] = np.tile(passage, targets.size)
    # quotes: passages of 30-100 tokens copied from one record into 1-3 others
    for _ in range(max(10, n_records // 100)):
        length = int(rng.integers(30, 101))
        src = int(rng.integers(0, n_tokens - length))
        for dst in rng.choice(n_records, int(rng.integers(1, 4)), replace=False):
            if ends[dst] - starts[dst] >= length:
                tokens[starts[dst] : starts[dst] + length] = tokens[src : src + length]
    contributors = np.minimum(rng.zipf(1.5, n_records), 1000).astype(np.int64)
    return {"tokens": tokens, "starts": starts, "ends": ends, "contributors": contributors}


def make_queries(
    corpus: dict[str, Any], model: PhraseModel, length: int, n_per_kind: int, seed: int
) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    tokens, n = corpus["tokens"], corpus["tokens"].size
    queries: list[tuple[str, np.ndarray]] = []
    for _ in range(n_per_kind):
        src = int(rng.integers(0, n - length))
        queries.append(("copied", tokens[src : src + length].astype(np.int64)))
        queries.append(("novel", model.stream(length, rng).astype(np.int64)))
        parts: list[np.ndarray] = []
        while sum(p.size for p in parts) < length:
            k = int(rng.integers(16, 49))
            src = int(rng.integers(0, n - k))
            parts.append(tokens[src : src + k])
            parts.append(model.stream(int(rng.integers(8, 33)), rng))
        queries.append(("mixed", np.concatenate(parts)[:length].astype(np.int64)))
    order = rng.permutation(len(queries))
    return [queries[i] for i in order]
