"""Merkle tree over a closed month's statements; the format is documented in docs/payouts.md.

Leaf  = sha256(0x00 || period || u32be(len(payee)) || payee || u64be(amount))
        period: 7 ASCII bytes "YYYY-MM"; payee: UTF-8 bytes; amount: micro-credits.
Node  = sha256(0x01 || left || right)
Leaves are sorted by payee (bytewise UTF-8). A level with an odd number of nodes promotes its
last node unchanged to the next level (no duplication, so no two leaf lists share a root).
A proof is the list of siblings from the leaf up, each tagged with the side it sits on:
`[["L" | "R", hex sha256], ...]`. The root of an empty month is sha256(0x01) (no leaves).

The 0x00/0x01 prefixes separate leaves from nodes: an inner node can never be presented as a
leaf (second-preimage attack on Merkle trees).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(NODE_PREFIX).digest()

Proof = list[tuple[str, str]]


def leaf_hash(period: str, payee: str, amount: int) -> bytes:
    p = period.encode("ascii")
    if len(p) != 7:
        raise ValueError(f"period must be YYYY-MM, got {period!r}")
    if not 0 <= amount < 2**64:
        raise ValueError("amount out of range for u64")
    name = payee.encode("utf-8")
    return hashlib.sha256(
        LEAF_PREFIX + p + struct.pack(">I", len(name)) + name + struct.pack(">Q", amount)
    ).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def build(leaves: Sequence[bytes]) -> tuple[bytes, list[Proof]]:
    """The root and, for every leaf (in the given order), its proof."""
    if not leaves:
        return EMPTY_ROOT, []
    proofs: list[Proof] = [[] for _ in leaves]
    # members[i] = indices of the original leaves under node i of the current level
    level = list(leaves)
    members: list[list[int]] = [[i] for i in range(len(leaves))]
    while len(level) > 1:
        nxt: list[bytes] = []
        nxt_members: list[list[int]] = []
        for i in range(0, len(level) - 1, 2):
            left, right = level[i], level[i + 1]
            for leaf in members[i]:
                proofs[leaf].append(("R", right.hex()))
            for leaf in members[i + 1]:
                proofs[leaf].append(("L", left.hex()))
            nxt.append(node_hash(left, right))
            nxt_members.append(members[i] + members[i + 1])
        if len(level) % 2:
            nxt.append(level[-1])
            nxt_members.append(members[-1])
        level, members = nxt, nxt_members
    return level[0], proofs


def root_from_proof(leaf: bytes, proof: Sequence[Sequence[str]]) -> bytes:
    h = leaf
    for side, sibling_hex in proof:
        sibling = bytes.fromhex(sibling_hex)
        if len(sibling) != 32:
            raise ValueError("a proof step is not a sha256 digest")
        if side == "L":
            h = node_hash(sibling, h)
        elif side == "R":
            h = node_hash(h, sibling)
        else:
            raise ValueError(f"a proof step's side is 'L' or 'R', not {side!r}")
    return h


def verify(
    period: str, payee: str, amount: int, proof: Sequence[Sequence[str]], root: bytes
) -> bool:
    """Does (period, payee, amount) belong to the tree with `root`? Needs nothing else."""
    try:
        return root_from_proof(leaf_hash(period, payee, amount), proof) == root
    except ValueError:
        return False
