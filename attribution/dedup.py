"""Near-duplicate detection: MinHash signatures of word shingles, indexed with LSH.

Exact duplicates are caught by the normalised content hash (a unique index in the store);
this module handles the near ones. Signatures are 128 32-bit values (`datasketch`'s
`affine32` scheme, seed 1, CRC-32 as the input hash) over word 3-shingles of the normalised
content (`attribution.textnorm.dedup_form`: invisible characters, compatibility forms,
homoglyphs and case folded, so such edits change no shingle; a text shorter than 3 words is
one shingle). They are stored with each record as
512 little-endian bytes, so a datanet's index can be rebuilt from the database after a
restart.

Two ways to compute the same signature: `signature` (one `datasketch.MinHash`, the
reference) and `signatures` (a whole batch at once with numpy: one CRC-32 per shingle, then
the murmur3 finaliser and the 128 affine permutations over every shingle of the batch in
one array, and a per-record minimum). They agree value for value
(`tests/unit/test_dedup_vectorised.py`), so stored signatures do not depend on which wrote
them.

Policy: a near duplicate is *accepted but flagged* (`status = 'flagged'`, pointing at the
record it resembles): it is kept and visible to curators, who may approve it, but it is not
credited separately and does not enter snapshots. Only accepted and pending records are
indexed, so a near duplicate always points at a credited (or to-be-decided) original.

The index (`NearDupIndex`) is banded LSH with `datasketch.MinHashLSH`'s parameters for the
threshold (9 bands of 13 rows at 0.8). A band is keyed by a 64-bit mix of its 13 values
instead of their bytes (less memory at a million records); two different bands sharing a key
only add a candidate, never hide one. Candidates are confirmed with the estimated Jaccard
similarity against the stored signature (LSH alone has false positives); the most similar
candidate is reported, the lowest record id among equals.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from functools import lru_cache
from itertools import accumulate

import numpy as np
from datasketch import MinHash, MinHashLSH

NUM_PERM = 128
SEED = 1
SHINGLE = 3
SIGNATURE_BYTES = NUM_PERM * 4
_SCHEME = "affine32"
# CRC-32 of each shingle as the input hash: fast C, and the affine32 scheme mixes it
# (murmur3 finaliser) before the permutations. Changing it invalidates stored signatures.
_HASHFUNC = zlib.crc32
_PERMUTATIONS = MinHash(NUM_PERM, seed=SEED, scheme=_SCHEME, hashfunc=_HASHFUNC).permutations
_A = np.asarray(_PERMUTATIONS[0], dtype=np.uint32)
_B = np.asarray(_PERMUTATIONS[1], dtype=np.uint32)
_A_COL = _A[:, None].copy()
_B_COL = _B[:, None].copy()
# Shingles per numpy block in `signatures`: the (128 x shingles) temporary stays in cache
# (2 MB; at 8192 shingles a block it ran twice as slow).
_BLOCK = 4096

Signature = np.ndarray
"""128 uint32 MinHash values of one record."""


def shingles(normalised: str, k: int = SHINGLE) -> list[bytes]:
    words = normalised.split(" ")
    if len(words) <= k:
        return [normalised.encode("utf-8", "surrogatepass")]
    return [
        " ".join(words[i : i + k]).encode("utf-8", "surrogatepass")
        for i in range(len(words) - k + 1)
    ]


def shingle_hashes(normalised: str, out: list[int]) -> int:
    """Append the CRC-32 of each of `normalised`'s shingles (those of `shingles`, in order)
    to `out`; returns how many. CRC-32 runs over slices of the encoded text instead of
    joining and encoding each shingle."""
    data = normalised.encode("utf-8", "surrogatepass")
    words = normalised.split(" ")
    n = len(words) - SHINGLE + 1
    if n <= 1:
        out.append(zlib.crc32(data))
        return 1
    # byte offset of each word's start; a shingle ends one byte (the space) before the word
    # SHINGLE places on
    if len(data) == len(normalised):
        lengths = [len(w) + 1 for w in words]
    else:
        lengths = [len(w.encode("utf-8", "surrogatepass")) + 1 for w in words]
    starts = [0, *accumulate(lengths)]
    mv = memoryview(data)
    crc = zlib.crc32
    out.extend([crc(mv[starts[i] : starts[i + SHINGLE] - 1]) for i in range(n)])
    return n


def _fmix32(hv: np.ndarray) -> np.ndarray:
    """The murmur3 32-bit finaliser, as datasketch's affine32 scheme applies it."""
    hv = hv ^ (hv >> np.uint32(16))
    hv = hv * np.uint32(0x85EBCA6B)
    hv = hv ^ (hv >> np.uint32(13))
    hv = hv * np.uint32(0xC2B2AE35)
    return hv ^ (hv >> np.uint32(16))


def _crc_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table[i] = c
    return table


_CRC_TABLE = _crc_table()
"""zlib's CRC-32 (reflected polynomial 0xEDB88320), one byte at a time."""


def _crc32_ranges(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """`zlib.crc32(data[s:s + n])` for every (s, n), a byte position at a time across all
    ranges (longest first, so the ranges still running are a prefix)."""
    crc = np.full(len(starts), 0xFFFFFFFF, dtype=np.uint32)
    if not len(starts):
        return crc
    order = np.argsort(-lengths, kind="stable")
    starts, lengths = starts[order], lengths[order]
    # running[j]: how many ranges are longer than j bytes
    running = np.searchsorted(-lengths, -np.arange(1, int(lengths[0]) + 1), side="right")
    for j, k in enumerate(running.tolist()):
        c = crc[:k]
        crc[:k] = _CRC_TABLE[(c ^ data[starts[:k] + j]) & 0xFF] ^ (c >> 8)
    out = np.empty_like(crc)
    out[order] = crc ^ np.uint32(0xFFFFFFFF)
    return out


def batch_shingle_hashes(normalised: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The CRC-32 of every shingle of every text (those `shingle_hashes` gives, record after
    record) and the number of shingles of each text, computed over one buffer of the
    encoded texts: word boundaries, shingle ranges and their CRCs all with numpy."""
    n = len(normalised)
    # "\n" never occurs in normalised text (it is whitespace): it separates the records
    data = np.frombuffer("\n".join(normalised).encode("utf-8", "surrogatepass"), np.uint8)
    seps = np.flatnonzero((data == 32) | (data == 10))
    word_start = np.concatenate(([0], seps + 1))
    word_end = np.concatenate((seps, [len(data)]))
    record_of_word = np.concatenate(([0], np.cumsum(data[seps] == 10)))
    words = np.bincount(record_of_word, minlength=n)
    first_word = np.concatenate(([0], np.cumsum(words)[:-1]))
    # a text of at most SHINGLE words is one shingle (all of it); else one per word window
    counts = np.maximum(words - (SHINGLE - 1), 1)
    total = int(counts.sum())
    first_shingle = np.concatenate(([0], np.cumsum(counts)[:-1]))
    start_word = np.repeat(first_word - first_shingle, counts) + np.arange(total)
    end_word = np.minimum(start_word + SHINGLE - 1, np.repeat(first_word + words - 1, counts))
    starts = word_start[start_word]
    return _crc32_ranges(data, starts, word_end[end_word] - starts), counts


def signatures(normalised: Sequence[str]) -> np.ndarray:
    """The signatures of many normalised texts, as an (n, 128) uint32 array; row i equals
    `signature(normalised[i]).hashvalues`."""
    out = np.empty((len(normalised), NUM_PERM), dtype=np.uint32)
    if not len(normalised):
        return out
    hashes, counts_arr = batch_shingle_hashes(normalised)
    counts = counts_arr.tolist()
    hv = _fmix32(hashes)
    ends = list(accumulate(counts))
    # process whole records in blocks of about _BLOCK shingles
    rec = 0
    while rec < len(counts):
        first_shingle = ends[rec] - counts[rec]
        stop = rec + 1
        while stop < len(counts) and ends[stop] - first_shingle <= _BLOCK:
            stop += 1
        # permutations along rows, shingles along columns: reduceat then runs over
        # contiguous memory (several times faster than the transpose)
        block = _A_COL * hv[None, first_shingle : ends[stop - 1]]
        block += _B_COL
        offsets = np.asarray(ends[rec : stop - 1], dtype=np.intp) - first_shingle
        out[rec:stop] = np.minimum.reduceat(block, np.concatenate(([0], offsets)), axis=1).T
        rec = stop
    return out


def signature(normalised: str) -> MinHash:
    """The reference signature of one text (datasketch, shingle by shingle)."""
    m = MinHash(NUM_PERM, seed=SEED, permutations=_PERMUTATIONS, scheme=_SCHEME, hashfunc=_HASHFUNC)
    m.update_batch(shingles(normalised))
    return m


def _values(m: MinHash | np.ndarray) -> np.ndarray:
    values = m.hashvalues if isinstance(m, MinHash) else m
    values = np.asarray(values, dtype=np.uint32)
    if values.shape != (NUM_PERM,):
        raise ValueError(f"a signature has {NUM_PERM} values, got {values.shape}")
    return values


def to_bytes(m: MinHash | np.ndarray) -> bytes:
    return np.asarray(_values(m), dtype="<u4").tobytes()


def from_bytes(data: bytes) -> MinHash:
    return MinHash(
        NUM_PERM,
        seed=SEED,
        hashvalues=values_from_bytes(data),
        permutations=_PERMUTATIONS,
        scheme=_SCHEME,
        hashfunc=_HASHFUNC,
    )


def values_from_bytes(data: bytes) -> np.ndarray:
    values = np.frombuffer(data, dtype="<u4").astype(np.uint32)
    if values.shape != (NUM_PERM,):
        raise ValueError(f"a signature has {NUM_PERM} values, got {values.shape}")
    return values


@lru_cache(maxsize=16)
def lsh_params(threshold: float) -> tuple[int, int]:
    """(bands, rows per band): datasketch's optimum for the threshold, 128 permutations and
    equal false-positive and false-negative weights."""
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    return lsh.b, lsh.r


# odd 64-bit multipliers that mix a band's values into its key
_MIX = np.random.RandomState(20261124).randint(0, 1 << 62, NUM_PERM, dtype=np.uint64) * np.uint64(
    2
) + np.uint64(1)


def band_keys(sigs: np.ndarray, threshold: float) -> list[list[int]]:
    """The LSH band keys (for `threshold`) of each row of an (n, 128) signature array."""
    bands, rows = lsh_params(threshold)
    sigs = np.asarray(sigs, dtype=np.uint32).reshape(-1, NUM_PERM)
    used = bands * rows
    mixed = sigs[:, :used].astype(np.uint64) * _MIX[:used]
    keys = mixed.reshape(len(sigs), bands, rows).sum(axis=2, dtype=np.uint64)
    result: list[list[int]] = keys.tolist()
    return result


class NearDupIndex:
    """The LSH index of one datanet's accepted and pending records, keyed by record id.

    Signatures may be given as `datasketch.MinHash` objects or uint32 arrays; batches go
    through `band_keys` + `query_keys`/`insert_keys` so the band keys of a whole batch are
    computed in one numpy pass."""

    def __init__(self, threshold: float = 0.8) -> None:
        self.threshold = threshold
        self.bands, self.rows = lsh_params(threshold)
        self._tables: list[dict[int, int | list[int]]] = [{} for _ in range(self.bands)]
        self._sigs = np.empty((1024, NUM_PERM), dtype=np.uint32)
        self._slot_ids: list[int] = []  # record id per slot, -1 once removed
        self._slots: dict[int, int] = {}  # record id -> slot
        self.watermark = 0
        """Highest record id of the datanet this index has seen (for incremental catch-up)."""
        self.epoch = 0
        """The datanet's `index_epoch` this index reflects."""

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, record_id: int) -> bool:
        return record_id in self._slots

    def band_keys(self, sigs: np.ndarray) -> list[list[int]]:
        """The band keys of each row of an (n, 128) signature array."""
        return band_keys(sigs, self.threshold)

    # --- one record at a time (MinHash objects or arrays) ----------------------------------
    def insert(self, record_id: int, m: MinHash | np.ndarray) -> None:
        v = _values(m)
        self.insert_keys(record_id, v, self.band_keys(v)[0])

    def remove(self, record_id: int) -> None:
        slot = self._slots.pop(record_id, None)
        if slot is None:
            return
        self._slot_ids[slot] = -1
        for table, key in zip(self._tables, self.band_keys(self._sigs[slot])[0], strict=True):
            bucket = table.get(key)
            if bucket == slot:
                del table[key]
            elif isinstance(bucket, list):
                bucket.remove(slot)
                if len(bucket) == 1:
                    table[key] = bucket[0]

    def query(self, m: MinHash | np.ndarray) -> tuple[int, float] | None:
        """The most similar indexed record at or above the threshold, and its estimated
        Jaccard similarity; None when there is none."""
        v = _values(m)
        return self.query_keys(v, self.band_keys(v)[0])

    # --- with precomputed band keys ---------------------------------------------------------
    def insert_keys(self, record_id: int, sig: np.ndarray, keys: list[int]) -> None:
        if record_id in self._slots:
            return
        slot = len(self._slot_ids)
        if slot == len(self._sigs):
            grown = np.empty((2 * len(self._sigs), NUM_PERM), dtype=np.uint32)
            grown[:slot] = self._sigs
            self._sigs = grown
        self._sigs[slot] = sig
        self._slot_ids.append(record_id)
        self._slots[record_id] = slot
        for table, key in zip(self._tables, keys, strict=True):
            bucket = table.get(key)
            if bucket is None:
                table[key] = slot
            elif isinstance(bucket, int):
                table[key] = [bucket, slot]
            else:
                bucket.append(slot)

    def insert_many(self, record_ids: Sequence[int], sigs: np.ndarray) -> None:
        """Index many records (rebuilding from the database)."""
        sigs = np.asarray(sigs, dtype=np.uint32).reshape(-1, NUM_PERM)
        for i, keys in enumerate(self.band_keys(sigs)):
            self.insert_keys(record_ids[i], sigs[i], keys)

    def query_keys(self, sig: np.ndarray, keys: list[int]) -> tuple[int, float] | None:
        candidates: set[int] = set()
        for table, key in zip(self._tables, keys, strict=True):
            bucket = table.get(key)
            if bucket is None:
                continue
            if isinstance(bucket, int):
                candidates.add(bucket)
            else:
                candidates.update(bucket)
        if not candidates:
            return None
        slots = np.fromiter(candidates, dtype=np.intp, count=len(candidates))
        # the estimate datasketch's MinHash.jaccard computes: equal values / 128
        sims = np.count_nonzero(self._sigs[slots] == sig, axis=1) / np.float64(NUM_PERM)
        best: tuple[int, float] | None = None
        for slot, sim in zip(slots.tolist(), sims.tolist(), strict=True):
            rid = self._slot_ids[slot]
            if rid < 0 or sim < self.threshold:
                continue
            if best is None or sim > best[1] or (sim == best[1] and rid < best[0]):
                best = (rid, sim)
        return best
