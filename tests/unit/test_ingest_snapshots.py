"""Merkle levels and windowed inclusion proofs: the same root and proofs as the plain tree,
for every leaf of trees of many sizes (powers of two and not)."""

from __future__ import annotations

import hashlib
import random

import pytest

from attribution import snapshots as S


def reference_root(record_hashes: list[bytes]) -> bytes:
    level = [hashlib.sha256(b"\x00" + h).digest() for h in record_hashes]
    while len(level) > 1:
        nxt = [
            hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest()
            for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def leaves(n: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(32) for _ in range(n)]


def windows_for(levels: list[list[bytes]], index: int, n: int) -> dict[int, list[bytes]]:
    out = {}
    for lv in [0, *S.stored_levels(n)]:
        a, b = S.window_of(index, lv)
        out[lv] = levels[lv][a:b]
    return out


@pytest.mark.parametrize("n", [*range(1, 40), 63, 64, 65, 255, 256, 257, 300, 1000, 4097])
def test_every_leaf_proves_with_windows(n: int) -> None:
    hs = leaves(n, n)
    levels = S.merkle_levels(hs)
    root = levels[-1][0]
    assert root == reference_root(hs) == S.merkle_root(hs)
    # every leaf; for the big trees the reference proof (O(n) each) is checked on a sample
    sample = set(range(n)) if n <= 300 else set(random.Random(n).sample(range(n), 40))
    for i in range(n):
        proof = S.proof_from_windows(i, n, windows_for(levels, i, n))
        assert S.verify_inclusion(hs[i], proof, root)
        if i in sample:
            assert proof == S.inclusion_proof(hs, i)
    for i in sample:
        proof = S.proof_from_windows(i, n, windows_for(levels, i, n))
        assert proof == S.inclusion_proof(hs, i)
        assert S.verify_inclusion(hs[i], proof, root)
        assert len(proof.path) <= max(1, (n - 1).bit_length())


def test_stored_levels() -> None:
    assert S.stored_levels(1) == [] and S.stored_levels(16) == []
    assert S.stored_levels(17) == [4]  # level 4 has 2 nodes
    assert S.stored_levels(256) == [4]  # level 8 is the root
    assert S.stored_levels(257) == [4, 8]
    assert S.stored_levels(1_000_000) == [4, 8, 12, 16]


def test_a_proof_does_not_verify_elsewhere() -> None:
    hs = leaves(37)
    levels = S.merkle_levels(hs)
    root = levels[-1][0]
    proof = S.proof_from_windows(5, 37, windows_for(levels, 5, 37))
    assert not S.verify_inclusion(hs[6], proof, root)
    moved = S.InclusionProof(leaf_index=4, leaf_count=37, path=proof.path)
    assert not S.verify_inclusion(hs[5], moved, root)
    with pytest.raises(IndexError):
        S.proof_from_windows(37, 37, {})
