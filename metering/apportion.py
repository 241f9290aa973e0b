"""Exact integer apportionment: split `total` units by integer weights, to the unit.

Largest remainder (Hamilton): every payee first gets floor(total * w / W); the units left
over go to the largest remainders. Ties between equal remainders go to the smallest
tie_rank(salt, key) = splitmix64(h64(salt) XOR h64(str(key))), h64 = the first 8 bytes of
sha256 as a big-endian integer, salt = the usage event id: the order is deterministic for one
event but differs between events, so no payee is systematically favoured (a fixed tie-break,
e.g. by account id, would hand the lowest id every leftover unit of every event).
`metering.ledger.split_batch` computes the same thing for whole batches with numpy.

Properties (tested with Hypothesis): the shares sum to `total` exactly; each share is the
floor or the ceiling of its exact quota; the result depends only on the inputs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Sequence

MASK64 = (1 << 64) - 1


def h64(data: bytes) -> int:
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big")


def splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def tie_rank(salt: bytes, key: Hashable) -> int:
    return splitmix64(h64(salt) ^ h64(str(key).encode()))


def largest_remainder(
    total: int, weights: Sequence[int], keys: Sequence[Hashable], salt: bytes
) -> list[int]:
    """Shares of `total` (>= 0) proportional to `weights` (>= 0, not all zero)."""
    if total < 0:
        raise ValueError("total must be >= 0")
    if len(weights) != len(keys):
        raise ValueError("one key per weight")
    if any(w < 0 for w in weights):
        raise ValueError("weights must be >= 0")
    wsum = sum(weights)
    if wsum <= 0:
        raise ValueError("weights must not all be zero")
    shares = []
    rems = []
    for w in weights:
        q, r = divmod(total * w, wsum)
        shares.append(q)
        rems.append(r)
    left = total - sum(shares)
    if left == 0:
        return shares
    order = sorted(range(len(weights)), key=lambda i: -rems[i])
    cut = rems[order[left - 1]]
    above = [i for i in order if rems[i] > cut]
    tied = [i for i in order if rems[i] == cut]
    for i in above:
        shares[i] += 1
    need = left - len(above)
    if need:
        tied.sort(key=lambda i: tie_rank(salt, keys[i]))
        for i in tied[:need]:
            shares[i] += 1
    return shares
