"""Near-duplicate detection: MinHash signatures of word shingles, indexed with LSH.

Exact duplicates are caught by the normalised content hash (a unique index in the store);
this module handles the near ones. Signatures are 128 32-bit values (`datasketch`'s
`affine32` scheme, seed 1, CRC-32 as the input hash) over word 3-shingles of the normalised content (a text shorter
than 3 words is one shingle). They are stored with each record as 512 little-endian bytes,
so a datanet's index can be rebuilt from the database after a restart.

Policy: a near duplicate is *accepted but flagged* (`status = 'flagged'`, pointing at the
record it resembles): it is kept and visible to curators, who may approve it, but it is not
credited separately and does not enter snapshots. Only accepted and pending records are
indexed, so a near duplicate always points at a credited (or to-be-decided) original.

Candidates from LSH are confirmed with the estimated Jaccard similarity against the stored
signature (LSH alone has false positives); the most similar candidate is reported.
"""

from __future__ import annotations

import zlib

import numpy as np
from datasketch import MinHash, MinHashLSH

NUM_PERM = 128
SEED = 1
SHINGLE = 3
_SCHEME = "affine32"
# CRC-32 of each shingle as the input hash: fast C, and the affine32 scheme mixes it
# (murmur3 finaliser) before the permutations. Changing it invalidates stored signatures.
_HASHFUNC = zlib.crc32
_PERMUTATIONS = MinHash(NUM_PERM, seed=SEED, scheme=_SCHEME, hashfunc=_HASHFUNC).permutations


def shingles(normalised: str, k: int = SHINGLE) -> list[bytes]:
    words = normalised.split(" ")
    if len(words) <= k:
        return [normalised.encode("utf-8", "surrogatepass")]
    return [
        " ".join(words[i : i + k]).encode("utf-8", "surrogatepass")
        for i in range(len(words) - k + 1)
    ]


def signature(normalised: str) -> MinHash:
    m = MinHash(NUM_PERM, seed=SEED, permutations=_PERMUTATIONS, scheme=_SCHEME, hashfunc=_HASHFUNC)
    m.update_batch(shingles(normalised))
    return m


def to_bytes(m: MinHash) -> bytes:
    return np.asarray(m.hashvalues, dtype="<u4").tobytes()


def from_bytes(data: bytes) -> MinHash:
    values = np.frombuffer(data, dtype="<u4").astype(np.uint32)
    if values.shape != (NUM_PERM,):
        raise ValueError(f"a signature has {NUM_PERM} values, got {values.shape}")
    return MinHash(
        NUM_PERM,
        seed=SEED,
        hashvalues=values,
        permutations=_PERMUTATIONS,
        scheme=_SCHEME,
        hashfunc=_HASHFUNC,
    )


class NearDupIndex:
    """The LSH index of one datanet's accepted and pending records, keyed by record id."""

    def __init__(self, threshold: float = 0.8) -> None:
        self.threshold = threshold
        self._lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
        self._sigs: dict[int, MinHash] = {}
        self.watermark = 0
        """Highest record id of the datanet this index has seen (for incremental catch-up)."""
        self.epoch = 0
        """The datanet's `index_epoch` this index reflects."""

    def __len__(self) -> int:
        return len(self._sigs)

    def __contains__(self, record_id: int) -> bool:
        return record_id in self._sigs

    def insert(self, record_id: int, m: MinHash) -> None:
        if record_id in self._sigs:
            return
        self._lsh.insert(record_id, m)
        self._sigs[record_id] = m

    def remove(self, record_id: int) -> None:
        if self._sigs.pop(record_id, None) is not None:
            self._lsh.remove(record_id)

    def query(self, m: MinHash) -> tuple[int, float] | None:
        """The most similar indexed record at or above the threshold, and its estimated
        Jaccard similarity; None when there is none."""
        best: tuple[int, float] | None = None
        for rid in self._lsh.query(m):
            sim = m.jaccard(self._sigs[rid])
            if sim >= self.threshold and (
                best is None or sim > best[1] or (sim == best[1] and rid < best[0])
            ):
                best = (rid, sim)
        return best
