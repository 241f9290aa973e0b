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

Proofs without the whole tree: publishing stores every fourth level above the leaves
(`stored_levels`, table `snapshot_levels`); `proof_from_windows` builds the same proof as
`inclusion_proof` from 16 leaves and one window of 16 nodes per stored level, so a proof
costs O(log n) reads and at most 15 hashes per window instead of hashing all n leaves.
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
    sha = hashlib.sha256
    # the odd last node (if any) has no partner: zip stops before it, and it is promoted
    pairs = zip(level[::2], level[1::2], strict=False)
    nxt = [sha(NODE_PREFIX + a + b).digest() for a, b in pairs]
    if len(level) % 2:
        nxt.append(level[-1])
    return nxt


def merkle_levels(record_hashes: Sequence[bytes]) -> list[list[bytes]]:
    """Every level of the tree, the leaves (`leaf_hash`es) first and the root last."""
    if not record_hashes:
        raise ValueError("a Merkle tree needs at least one leaf")
    sha = hashlib.sha256
    levels = [[sha(LEAF_PREFIX + h).digest() for h in record_hashes]]
    while len(levels[-1]) > 1:
        levels.append(_next_level(levels[-1]))
    return levels


def merkle_root(record_hashes: Sequence[bytes]) -> bytes:
    return merkle_levels(record_hashes)[-1][0]


# --- proofs from stored levels ----------------------------------------------------------------
# Node i of level j is the root of leaves [i * 2**j, (i + 1) * 2**j) (cut at the leaf count):
# pairs never cross a block boundary that is a multiple of a power of two, and a promoted
# last node is the root of its shorter block. So the levels j..j+STRIDE-1 of the siblings a
# proof needs all lie in one aligned window of WINDOW nodes of level j, and storing every
# STRIDE-th level (`stored_levels`) makes a proof a few windows of 16 nodes.
STRIDE = 4
WINDOW = 1 << STRIDE


def level_size(leaf_count: int, level: int) -> int:
    return -(-leaf_count // (1 << level))


def stored_levels(leaf_count: int) -> list[int]:
    """The levels above the leaves that publishing stores: every STRIDE-th one with more
    than one node (a proof needs no window of the root)."""
    out: list[int] = []
    level = STRIDE
    while level_size(leaf_count, level) > 1:
        out.append(level)
        level += STRIDE
    return out


def window_of(leaf_index: int, level: int) -> tuple[int, int]:
    """The [start, stop) node positions of `level` a proof for `leaf_index` reads (stop may
    pass the level's end; read what exists)."""
    start = (leaf_index >> level) & ~(WINDOW - 1)
    return start, start + WINDOW


def proof_from_windows(
    leaf_index: int, leaf_count: int, windows: dict[int, list[bytes]]
) -> InclusionProof:
    """The inclusion proof of `leaf_index` given, for level 0 and each of
    `stored_levels(leaf_count)`, the nodes of `window_of(leaf_index, level)` (level 0: the
    `leaf_hash`es of the records in the window). Equal to `inclusion_proof`."""
    if not 0 <= leaf_index < leaf_count:
        raise IndexError(f"leaf {leaf_index} of {leaf_count}")
    path: list[tuple[str, str]] = []
    base = 0
    while level_size(leaf_count, base) > 1:
        nodes = windows[base]
        start, _ = window_of(leaf_index, base)
        # the window is a subtree: build its levels base..base+STRIDE-1
        size = level_size(leaf_count, base)
        for j in range(base, base + STRIDE):
            if size <= 1:
                break
            i = (leaf_index >> j) - start
            if (leaf_index >> j) % 2 == 1:
                path.append(("L", nodes[i - 1].hex()))
            elif (leaf_index >> j) + 1 < size:
                path.append(("R", nodes[i + 1].hex()))
            nodes = _next_level(nodes)
            start //= 2
            size = (size + 1) // 2
        base += STRIDE
    return InclusionProof(leaf_index=leaf_index, leaf_count=leaf_count, path=path)


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
