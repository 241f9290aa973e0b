"""The batched numpy MinHash and the band-key LSH index against datasketch, the reference:
the same signature values, and the same near-duplicate answers."""

from __future__ import annotations

import random

import numpy as np
import pytest
from datasketch import MinHashLSH

from attribution import dedup
from attribution.records import normalise

rng = random.Random(11)
VOCAB = [f"{a}{b}{c}" for a in "bcdfgklmnprst" for b in "aeiouy" for c in "nrstvxlm"]
ODD_TEXTS = [
    "",
    "a",
    "a b",
    "a b c",
    "a b c d",
    "café crème brûlée, naïve façade",
    "日本語 の テキスト です よ ね",
    "emoji 😀 and 👍🏽 in words here",
    "straße STRASSE ﬁne ligatures",
    "tabs\tand\nnewlines  collapse",
]


def doc(n: int) -> list[str]:
    return [rng.choice(VOCAB) for _ in range(n)]


def test_signatures_equal_datasketch() -> None:
    texts = ODD_TEXTS + [" ".join(doc(rng.randint(1, 400))) for _ in range(300)]
    norms = [normalise(t) for t in texts]
    batch = dedup.signatures(norms)
    assert batch.shape == (len(norms), dedup.NUM_PERM) and batch.dtype == np.uint32
    for row, n in zip(batch, norms, strict=True):
        assert np.array_equal(row, dedup.signature(n).hashvalues)


def test_signatures_across_block_boundaries() -> None:
    # records longer than a numpy block, and many records per block
    texts = [" ".join(doc(9000)), " ".join(doc(3)), " ".join(doc(8190)), " ".join(doc(5))]
    norms = [normalise(t) for t in texts]
    batch = dedup.signatures(norms)
    for row, n in zip(batch, norms, strict=True):
        assert np.array_equal(row, dedup.signature(n).hashvalues)
    assert dedup.signatures([]).shape == (0, dedup.NUM_PERM)


def test_shingle_hashes_match_shingles() -> None:
    import zlib

    for t in ODD_TEXTS + [" ".join(doc(50))]:
        n = normalise(t)
        out: list[int] = []
        count = dedup.shingle_hashes(n, out)
        assert out == [zlib.crc32(s) for s in dedup.shingles(n)] and count == len(out)


def _reference_query(
    lsh: MinHashLSH, sigs: dict[int, np.ndarray], m: np.ndarray, threshold: float
) -> tuple[int, float] | None:
    """The answer of the datasketch-backed index this one replaced."""
    best: tuple[int, float] | None = None
    ref = dedup.from_bytes(dedup.to_bytes(m))
    for rid in lsh.query(ref):
        sim = ref.jaccard(dedup.from_bytes(dedup.to_bytes(sigs[rid])))
        if sim >= threshold and (
            best is None or sim > best[1] or (sim == best[1] and rid < best[0])
        ):
            best = (rid, sim)
    return best


@pytest.mark.parametrize("threshold", [0.8, 0.6, 0.9])
def test_index_agrees_with_datasketch_lsh(threshold: float) -> None:
    """Insert-or-flag, record by record, as ingestion does, over a corpus with planted near
    duplicates (a few words changed, reordered casing) and unrelated texts."""
    originals = [doc(rng.randint(20, 150)) for _ in range(150)]
    stream: list[list[str]] = []
    for words in originals:
        stream.append(words)
        if rng.random() < 0.5:
            copy = list(words)
            for _ in range(rng.randint(0, 6)):
                copy[rng.randrange(len(copy))] = rng.choice(VOCAB)
            stream.append(copy)
    rng.shuffle(stream)
    norms = [normalise(" ".join(w)) for w in stream]
    sigs = dedup.signatures(norms)
    index = dedup.NearDupIndex(threshold)
    keys = index.band_keys(sigs)
    ref_lsh = MinHashLSH(threshold=threshold, num_perm=dedup.NUM_PERM)
    ref_sigs: dict[int, np.ndarray] = {}
    flagged = 0
    for rid, (sig, k) in enumerate(zip(sigs, keys, strict=True), start=1):
        got = index.query_keys(sig, k)
        want = _reference_query(ref_lsh, ref_sigs, sig, threshold)
        assert got == want, rid
        if got is None:
            index.insert_keys(rid, sig, k)
            ref_lsh.insert(rid, dedup.from_bytes(dedup.to_bytes(sig)))
            ref_sigs[rid] = sig
        else:
            flagged += 1
    assert flagged > 10  # planted copies were found (fewer at 0.9)
    assert len(index) == len(ref_sigs)


def test_remove_then_query_and_reinsert() -> None:
    words = doc(80)
    sig = dedup.signatures([normalise(" ".join(words))])[0]
    index = dedup.NearDupIndex(0.8)
    for rid in (3, 4, 5):  # three records sharing every band
        index.insert(rid, sig)
    assert index.query(sig) == (3, 1.0)
    index.remove(3)
    assert index.query(sig) == (4, 1.0)
    index.remove(4)
    index.remove(4)  # twice is harmless
    assert index.query(sig) == (5, 1.0)
    index.remove(5)
    assert index.query(sig) is None and len(index) == 0
    index.insert(9, sig)
    assert index.query(dedup.from_bytes(dedup.to_bytes(sig))) == (9, 1.0)


def test_insert_many_and_growth() -> None:
    norms = [normalise(" ".join(doc(30))) for _ in range(3000)]
    sigs = dedup.signatures(norms)
    index = dedup.NearDupIndex(0.8)
    index.insert_many(list(range(1, 3001)), sigs)  # grows past the initial 1024 slots
    assert len(index) == 3000
    for rid in (1, 1024, 1025, 3000):
        assert index.query(sigs[rid - 1]) == (rid, 1.0)


def test_bad_signature_shape() -> None:
    with pytest.raises(ValueError):
        dedup.values_from_bytes(b"\x00" * 12)
    with pytest.raises(ValueError):
        dedup.NearDupIndex().query(np.zeros(5, dtype=np.uint32))
