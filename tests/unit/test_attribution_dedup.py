"""Near duplicates: MinHash/LSH across contributors, signature round trip."""

from __future__ import annotations

import random

from attribution.dedup import NearDupIndex, from_bytes, shingles, signature, to_bytes
from attribution.records import normalise

rng = random.Random(7)
VOCAB = [f"{a}{b}{c}" for a in "bcdfgklm" for b in "aeiou" for c in "nrstvx"]


def doc(n: int = 120) -> list[str]:
    return [rng.choice(VOCAB) for _ in range(n)]


def sig(words: list[str]):  # type: ignore[no-untyped-def]
    return signature(normalise(" ".join(words)))


def test_shingles() -> None:
    assert shingles("a b c d") == [b"a b c", b"b c d"]
    assert shingles("a b") == [b"a b"]


def test_near_duplicate_found_distinct_not() -> None:
    index = NearDupIndex(0.8)
    originals = [doc() for _ in range(50)]
    for i, words in enumerate(originals, start=1):
        index.insert(i, sig(words))
    # another contributor's copy of record 17 with two words changed and different casing
    copy = list(originals[16])
    copy[40] = "zzz"
    copy[90] = "qqq"
    hit = index.query(sig([w.upper() for w in copy]))
    assert hit is not None and hit[0] == 17 and hit[1] >= 0.8
    # unrelated texts are not flagged
    assert all(index.query(sig(doc())) is None for _ in range(50))
    # a heavily edited version (about half the shingles differ) is not flagged either
    edited = list(originals[3])
    for j in range(0, 120, 6):
        edited[j] = "edit"
    assert index.query(sig(edited)) is None


def test_remove_and_roundtrip() -> None:
    words = doc()
    m = sig(words)
    data = to_bytes(m)
    assert len(data) == 512
    m2 = from_bytes(data)
    assert m2.jaccard(m) == 1.0
    index = NearDupIndex(0.8)
    index.insert(5, m2)
    assert index.query(m) == (5, 1.0)
    index.remove(5)
    assert index.query(m) is None and len(index) == 0
