"""Merkle roots and inclusion proofs: every leaf of trees of 1..17 leaves, tampering, and
domain separation between leaves and inner nodes."""

from __future__ import annotations

import hashlib

import msgspec
import pytest

from attribution.snapshots import (
    InclusionProof,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    node_hash,
    snapshot_id,
    verify_inclusion,
)


def leaves(n: int) -> list[bytes]:
    return [hashlib.sha256(f"record {i}".encode()).digest() for i in range(n)]


def reference_root(hs: list[bytes]) -> bytes:
    """The documented rule restated independently: pair up, promote an odd last node."""
    level = [hashlib.sha256(b"\x00" + h).digest() for h in hs]
    while len(level) > 1:
        pairs = [level[i : i + 2] for i in range(0, len(level), 2)]
        level = [
            hashlib.sha256(b"\x01" + p[0] + p[1]).digest() if len(p) == 2 else p[0] for p in pairs
        ]
    return level[0]


def test_known_small_roots() -> None:
    a, b, c = leaves(3)
    assert merkle_root([a]) == leaf_hash(a)
    assert merkle_root([a, b]) == node_hash(leaf_hash(a), leaf_hash(b))
    # odd node promoted, not duplicated
    assert merkle_root([a, b, c]) == node_hash(node_hash(leaf_hash(a), leaf_hash(b)), leaf_hash(c))
    with pytest.raises(ValueError):
        merkle_root([])


@pytest.mark.parametrize("n", range(1, 18))
def test_every_proof_verifies_and_tampering_fails(n: int) -> None:
    hs = leaves(n)
    root = merkle_root(hs)
    assert root == reference_root(hs)
    other_root = merkle_root(leaves(n + 1))
    for i, h in enumerate(hs):
        proof = inclusion_proof(hs, i)
        assert verify_inclusion(h, proof, root)
        # JSON round trip: the documented format is enough for a third party
        wire = msgspec.json.decode(msgspec.json.encode(proof), type=InclusionProof)
        assert verify_inclusion(h, wire, root)
        # wrong leaf, wrong root
        assert not verify_inclusion(hs[(i + 1) % n], proof, root) or n == 1
        assert not verify_inclusion(hashlib.sha256(b"forged").digest(), proof, root)
        assert not verify_inclusion(h, proof, other_root)
        # tampered sibling, flipped side, dropped step, claimed position
        for k, (side, sib) in enumerate(proof.path):
            flipped = bytes([bytes.fromhex(sib)[0] ^ 1]) + bytes.fromhex(sib)[1:]
            bad = list(proof.path)
            bad[k] = (side, flipped.hex())
            assert not verify_inclusion(h, InclusionProof(i, n, bad), root)
            bad = list(proof.path)
            bad[k] = ("L" if side == "R" else "R", sib)
            assert not verify_inclusion(h, InclusionProof(i, n, bad), root)
        if proof.path:
            assert not verify_inclusion(h, InclusionProof(i, n, proof.path[:-1]), root)
        if n > 1:
            assert not verify_inclusion(h, InclusionProof((i + 1) % n, n, proof.path), root)
        assert not verify_inclusion(h, InclusionProof(i, n, [("X", "zz")]), root)


def test_inner_node_cannot_pass_as_leaf() -> None:
    hs = leaves(4)
    root = merkle_root(hs)
    l0, l1 = leaf_hash(hs[0]), leaf_hash(hs[1])
    right = node_hash(leaf_hash(hs[2]), leaf_hash(hs[3]))
    # The classic second-preimage attack: present the children of an inner node as one
    # "record hash" and prove it one level up. Domain separation makes the leaf hash of the
    # concatenation differ from the node hash.
    assert leaf_hash(l0 + l1) != node_hash(l0, l1)
    assert not verify_inclusion(l0 + l1, InclusionProof(0, 2, [("R", right.hex())]), root)
    # nor does an inner node's hash pass as a record hash at any position
    left = node_hash(l0, l1)
    for i in range(4):
        assert not verify_inclusion(left, inclusion_proof(hs, i), root)
    assert merkle_root([left, right]) != root


def test_snapshot_id_is_content_addressed_and_per_datanet() -> None:
    root = merkle_root(leaves(3))
    assert snapshot_id(1, root) == snapshot_id(1, root)
    assert snapshot_id(1, root) != snapshot_id(2, root)
    assert snapshot_id(1, root) != snapshot_id(1, merkle_root(leaves(4)))
