"""Snapshots: the Merkle tree over a snapshot's record hashes, and inclusion proofs.

A snapshot is the ordered list of its accepted records (ascending record id); the leaves are
their record hashes (the SHA-256 normalised content hash, 32 bytes, see `records.py`).

Tree (SHA-256, with domain separation so an inner node can never pass as a leaf):

    leaf(h)      = SHA256(0x00 || h)
    node(l, r)   = SHA256(0x01 || l || r)

Levels are built pairwise left to right; an odd node at the end of a level is *promoted*
unchanged to the next level (never duplicated, so no two different leaf lists share a root
the way Bitcoin's duplicated-last-node trees can). The root of one leaf is leaf(h). An empty
snapshot is not allowed.

Snapshot id: hex of SHA256(b"royalty.snapshot.v1\\x00" || datanet_id as 8-byte big-endian ||
root), so it is content-addressed and still unique per datanet; the root is stored and
returned alongside.

Inclusion proof (JSON-friendly): ``{"leaf_index": i, "leaf_count": n, "path": [[side, hex],
...]}``, the path bottom-up, ``side`` being "L" when the sibling is on the left (then
``node(sibling, acc)``) and "R" when it is on the right (``node(acc, sibling)``); promoted
levels contribute no step. To verify: ``acc = leaf(record_hash)``, fold the path, compare with
the root. `verify_inclusion` additionally checks that the record hash is 32 bytes and that
the sides are the ones position `leaf_index` of `leaf_count` leaves must take, which pins the
record's position.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import msgspec

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"


class InclusionProof(msgspec.Struct, array_like=False):
    leaf_index: int
    leaf_count: int
    path: list[tuple[str, str]]


class Snapshot(msgspec.Struct):
    id: str
    datanet_id: int
    seq: int
    root: str
    record_count: int
    token_count: int
    created_at: str | None = None


def leaf_hash(record_hash: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + record_hash).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _next_level(level: list[bytes]) -> list[bytes]:
    nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
    if len(level) % 2:
        nxt.append(level[-1])
    return nxt


def merkle_root(record_hashes: Sequence[bytes]) -> bytes:
    if not record_hashes:
        raise ValueError("a Merkle tree needs at least one leaf")
    level = [leaf_hash(h) for h in record_hashes]
    while len(level) > 1:
        level = _next_level(level)
    return level[0]


def _sides(index: int, count: int) -> list[str]:
    """The sides a proof for leaf `index` of `count` leaves must carry, bottom-up."""
    sides: list[str] = []
    while count > 1:
        if index % 2 == 1:
            sides.append("L")
        elif index + 1 < count:
            sides.append("R")
        index //= 2
        count = (count + 1) // 2
    return sides


def inclusion_proof(record_hashes: Sequence[bytes], index: int) -> InclusionProof:
    n = len(record_hashes)
    if not 0 <= index < n:
        raise IndexError(f"leaf {index} of {n}")
    level = [leaf_hash(h) for h in record_hashes]
    path: list[tuple[str, str]] = []
    i = index
    while len(level) > 1:
        if i % 2 == 1:
            path.append(("L", level[i - 1].hex()))
        elif i + 1 < len(level):
            path.append(("R", level[i + 1].hex()))
        level = _next_level(level)
        i //= 2
    return InclusionProof(leaf_index=index, leaf_count=n, path=path)


def snapshot_id(datanet_id: int, root: bytes) -> str:
    return hashlib.sha256(
        b"royalty.snapshot.v1\x00" + datanet_id.to_bytes(8, "big") + root
    ).hexdigest()


def verify_inclusion(record_hash: bytes, proof: InclusionProof, root: bytes) -> bool:
    """True when `proof` shows `record_hash` at `proof.leaf_index` of the tree with `root`."""
    try:
        if len(record_hash) != 32:
            return False
        if [s for s, _ in proof.path] != _sides(proof.leaf_index, proof.leaf_count):
            return False
        if not 0 <= proof.leaf_index < proof.leaf_count:
            return False
        acc = leaf_hash(record_hash)
        for side, sibling_hex in proof.path:
            sibling = bytes.fromhex(sibling_hex)
            if len(sibling) != 32:
                return False
            acc = node_hash(sibling, acc) if side == "L" else node_hash(acc, sibling)
    except (ValueError, TypeError):
        return False
    return acc == root
