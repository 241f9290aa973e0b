"""Building and opening a span index: a suffix array over the token ids of a snapshot's records.

Layout of an index directory (all arrays are `.npy`, opened read-only as `SpanIndex.open`'s
`load` says: a lazy memory map, a prefaulted one, or a private copy; see `_load`):

- `tokens.npy`: the records' token ids in snapshot order, each record followed by the separator
  (the dtype's maximum value, never a real token), uint16 when every token fits, else uint32;
- `sa.npy`: the suffix array of `tokens` (int32 below 2**31 positions, else int64), built with
  `pydivsufsort`; suffixes sort by numeric token order, the separator last;
- `first_bounds.npy`: `first_bounds[t]:first_bounds[t+1]` is the suffix-array interval of the
  suffixes starting with token t (saves the first binary search and gives unigram counts);
- `record_starts.npy`, `record_ids.npy`, `contributor_ids.npy`: one entry per record, in
  snapshot order; position p lies in record `searchsorted(record_starts, p, "right") - 1`;
- `gram_filter.npy`: a blocked Bloom filter (3 bits in one 512-bit block, 8-16 bits per
  position) of every `filter_m`-gram inside a record, which lets tracing skip most output
  positions of novel text without touching the suffix array (`filter_m == 0`: no filter, an
  empty array);
- `header.json`: format version, dtypes, token count (without separators), record count, the
  filter's `filter_m` and size, and the sha256 of the inputs (record id, contributor id and
  token ids of every record, in order).

A build writes into a temporary sibling directory and renames it into place, so a reader sees
either no index or a complete one. Building the same inputs again is a no-op; building different
inputs into an existing directory is an error (a snapshot's index never changes).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from attribution.spans._load import LOAD_MODES, default_load, load_array
from attribution.spans._search import build_gram_filter, longest_matches
from attribution.spans.trace import Span, TokenIds, TraceParams, trace

FORMAT_VERSION = 1
HEADER = "header.json"
_ARRAYS = (
    "tokens",
    "sa",
    "first_bounds",
    "record_starts",
    "record_ids",
    "contributor_ids",
    "gram_filter",
)
DEFAULT_FILTER_M = 6
_MIN_FILTER_LOG2_BITS = 9  # one 512-bit block


class SpanIndexError(Exception):
    """An index that cannot be built or opened (bad input, corrupt or foreign files)."""


@dataclass(frozen=True)
class IndexHeader:
    format_version: int
    token_dtype: str
    sa_dtype: str
    token_count: int
    record_count: int
    separator: int
    inputs_sha256: str
    filter_m: int
    filter_log2_bits: int

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "token_dtype": self.token_dtype,
            "sa_dtype": self.sa_dtype,
            "token_count": self.token_count,
            "record_count": self.record_count,
            "separator": self.separator,
            "inputs_sha256": self.inputs_sha256,
            "filter_m": self.filter_m,
            "filter_log2_bits": self.filter_log2_bits,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IndexHeader:
        try:
            return cls(
                format_version=int(data["format_version"]),
                token_dtype=str(data["token_dtype"]),
                sa_dtype=str(data["sa_dtype"]),
                token_count=int(data["token_count"]),
                record_count=int(data["record_count"]),
                separator=int(data["separator"]),
                inputs_sha256=str(data["inputs_sha256"]),
                filter_m=int(data["filter_m"]),
                filter_log2_bits=int(data["filter_log2_bits"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SpanIndexError(f"malformed index header: {exc}") from exc


Record = tuple[int, int, Sequence[int] | NDArray[np.integer[Any]]]

_UINT32_SEPARATOR = np.iinfo(np.uint32).max
_UINT16_SEPARATOR = np.iinfo(np.uint16).max


def _as_token_array(record_id: int, tokens: Sequence[int] | NDArray[Any]) -> NDArray[np.uint32]:
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise SpanIndexError(f"record {record_id}: token ids must be a flat sequence")
    if arr.size == 0:
        return np.empty(0, np.uint32)
    if not np.issubdtype(arr.dtype, np.integer):
        raise SpanIndexError(f"record {record_id}: token ids must be integers, got {arr.dtype}")
    if int(arr.min()) < 0 or int(arr.max()) >= _UINT32_SEPARATOR:
        raise SpanIndexError(
            f"record {record_id}: token ids must lie in [0, {_UINT32_SEPARATOR}), "
            f"got [{int(arr.min())}, {int(arr.max())}]"
        )
    return arr.astype(np.uint32, copy=False)


def _digest_record(h: Any, record_id: int, contributor_id: int, arr: NDArray[np.uint32]) -> None:
    # Fixed-width little-endian framing, so that different inputs never hash alike.
    h.update(struct.pack("<qqq", record_id, contributor_id, arr.size))
    h.update(arr.astype("<u4", copy=False).tobytes())


def inputs_sha256(records: Iterable[Record]) -> str:
    """The digest an index built from `records` carries in its header."""
    h = hashlib.sha256(b"royalty-span-index/1")
    for record_id, contributor_id, tokens in records:
        _digest_record(h, int(record_id), int(contributor_id), _as_token_array(record_id, tokens))
    return h.hexdigest()


def _suffix_array(tokens: NDArray[Any]) -> NDArray[Any]:
    import pydivsufsort  # imported here: only building needs it

    if tokens.size == 0:
        return np.empty(0, np.int32)
    sa = pydivsufsort.divsufsort(tokens)
    want = np.int32 if tokens.size < 2**31 else np.int64
    return np.asarray(sa).astype(want, copy=False)


def _save(directory: Path, name: str, array: NDArray[Any]) -> None:
    with open(directory / f"{name}.npy", "wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
        # Drop the written pages from the page cache: they sit there in small folios, which a
        # later open would map page by page; read back by `SpanIndex.open`, they come in as
        # 2 MiB folios (see `_load._prefault`). The data is on disk (fsync'd) either way.
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def build_index(
    records: Iterable[Record],
    directory: str | os.PathLike[str],
    *,
    filter_m: int = DEFAULT_FILTER_M,
) -> IndexHeader:
    """Build the span index of `records` (record id, contributor id, token ids; in snapshot
    order) into `directory`, atomically. Returns the header. `filter_m` is the gram length of
    the skip filter (0: none); it speeds up traces whose `min_tokens >= filter_m`."""
    if filter_m < 0:
        raise SpanIndexError("filter_m must be >= 0")
    target = Path(directory)
    h = hashlib.sha256(b"royalty-span-index/1")
    parts: list[NDArray[np.uint32]] = []
    starts: list[int] = []
    record_ids: list[int] = []
    contributor_ids: list[int] = []
    seen: set[int] = set()
    position = 0
    max_token = -1
    for record_id, contributor_id, tokens in records:
        rid, cid = int(record_id), int(contributor_id)
        if rid in seen:
            raise SpanIndexError(f"record {rid} appears twice")
        seen.add(rid)
        arr = _as_token_array(rid, tokens)
        _digest_record(h, rid, cid, arr)
        if arr.size:
            max_token = max(max_token, int(arr.max()))
        parts.append(arr)
        starts.append(position)
        record_ids.append(rid)
        contributor_ids.append(cid)
        position += arr.size + 1
    digest = h.hexdigest()

    if target.exists():
        existing = SpanIndex.open(target).header
        if existing.inputs_sha256 != digest:
            raise SpanIndexError(f"{target} already holds an index of other inputs")
        return existing

    small = max_token < _UINT16_SEPARATOR
    token_dtype = np.uint16 if small else np.uint32
    separator = int(_UINT16_SEPARATOR if small else _UINT32_SEPARATOR)
    tokens = np.empty(position, token_dtype)
    offset = 0
    for arr in parts:
        tokens[offset : offset + arr.size] = arr
        tokens[offset + arr.size] = separator
        offset += arr.size + 1
    del parts
    sa = _suffix_array(tokens)
    # suffixes sort numerically and the separator is the largest value, so the suffixes that
    # start with token t form one contiguous block, in token order.
    log2_bits = 0
    gram_filter = np.zeros(0, np.uint8)
    if filter_m:
        # about 8-16 bits per position: ~1-3 % false positives with 3 hashes
        log2_bits = max(_MIN_FILTER_LOG2_BITS, int(np.ceil(np.log2(max(8 * position, 1)))))
        gram_filter = np.zeros(1 << (log2_bits - 3), np.uint8)
        build_gram_filter(tokens, separator, filter_m, gram_filter, np.uint64((1 << log2_bits) - 1))
    first_bounds = np.zeros(max_token + 2, np.int64)
    if max_token >= 0:
        np.cumsum(
            np.bincount(tokens[tokens != separator], minlength=max_token + 1), out=first_bounds[1:]
        )
    header = IndexHeader(
        format_version=FORMAT_VERSION,
        token_dtype=np.dtype(token_dtype).name,
        sa_dtype=sa.dtype.name,
        token_count=position - len(record_ids),
        record_count=len(record_ids),
        separator=separator,
        inputs_sha256=digest,
        filter_m=filter_m,
        filter_log2_bits=log2_bits,
    )

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _save(tmp, "tokens", tokens)
        _save(tmp, "sa", sa)
        _save(tmp, "first_bounds", first_bounds)
        _save(tmp, "record_starts", np.asarray(starts, np.int64))
        _save(tmp, "record_ids", np.asarray(record_ids, np.int64))
        _save(tmp, "contributor_ids", np.asarray(contributor_ids, np.int64))
        _save(tmp, "gram_filter", gram_filter)
        with open(tmp / HEADER, "w") as f:
            json.dump(header.to_json(), f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.rename(tmp, target)
        except OSError:
            # another builder won the race; theirs must be the same inputs
            if SpanIndex.open(target).header.inputs_sha256 != digest:
                raise SpanIndexError(f"{target} already holds an index of other inputs") from None
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return header


class SpanIndex:
    """An opened, memory-mapped span index. Thread-safe for reads; `trace` releases no state."""

    def __init__(
        self, path: Path, header: IndexHeader, arrays: dict[str, NDArray[Any]], load: str = "map"
    ) -> None:
        self.path = path
        self.header = header
        self.load = load
        self.tokens = arrays["tokens"]
        self.sa = arrays["sa"]
        self.first_bounds = arrays["first_bounds"]
        self.record_starts = arrays["record_starts"]
        self.record_ids = arrays["record_ids"]
        self.contributor_ids = arrays["contributor_ids"]
        self.gram_filter = arrays["gram_filter"]
        self._filter_mask = np.uint64((1 << header.filter_log2_bits) - 1)

    @classmethod
    def open(cls, directory: str | os.PathLike[str], *, load: str | None = None) -> SpanIndex:
        """Open the index at `directory`. `load` (default: `$ROYALTY_SPAN_INDEX_LOAD`, else
        "populate"): "map" (lazy memory map: no memory until touched, page faults on first
        touch), "populate" (memory map prefaulted at open: the index's size in shared,
        reclaimable page cache, no faults in traces), "ram" (a private copy per process)."""
        mode = default_load() if load is None else load
        if mode not in LOAD_MODES:
            raise ValueError(f"load mode {mode!r}: expected one of {LOAD_MODES}")
        path = Path(directory)
        try:
            with open(path / HEADER) as f:
                header = IndexHeader.from_json(json.load(f))
        except (OSError, json.JSONDecodeError) as exc:
            raise SpanIndexError(f"no readable span index at {path}: {exc}") from exc
        if header.format_version != FORMAT_VERSION:
            raise SpanIndexError(
                f"{path}: index format {header.format_version}, this code reads {FORMAT_VERSION}"
            )
        arrays: dict[str, NDArray[Any]] = {}
        for name in _ARRAYS:
            try:
                arrays[name] = load_array(path / f"{name}.npy", mode)
            except (OSError, ValueError) as exc:
                raise SpanIndexError(f"{path}: cannot map {name}.npy: {exc}") from exc
        n_positions = header.token_count + header.record_count
        expected = {
            "tokens": n_positions,
            "sa": n_positions,
            "record_starts": header.record_count,
            "record_ids": header.record_count,
            "contributor_ids": header.record_count,
            "gram_filter": (1 << header.filter_log2_bits) // 8 if header.filter_m else 0,
        }
        for name, size in expected.items():
            if arrays[name].shape != (size,):
                raise SpanIndexError(f"{path}: {name}.npy has shape {arrays[name].shape}")
        if arrays["tokens"].dtype.name != header.token_dtype:
            raise SpanIndexError(f"{path}: tokens.npy is {arrays['tokens'].dtype}")
        return cls(path, header, arrays, mode)

    def __len__(self) -> int:
        return self.header.token_count

    def nbytes(self) -> int:
        """Bytes on disk of the arrays (what the page cache holds when hot)."""
        return sum(int(getattr(self, a).nbytes) for a in _ARRAYS)

    def longest_matches(
        self, query: NDArray[np.int64], min_tokens: int
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
        """Per output start: end of its longest match and suffix-array interval (see
        `_search.longest_matches`)."""
        h = self.header
        return longest_matches(
            self.tokens,
            self.sa,
            self.first_bounds,
            query,
            min_tokens,
            self.gram_filter,
            self._filter_mask,
            h.filter_m,
        )

    def trace(self, output_token_ids: TokenIds, params: TraceParams | None = None) -> list[Span]:
        """Maximal rare verbatim spans of the output; see `attribution.spans.trace`."""
        return trace(self, output_token_ids, params or TraceParams())
