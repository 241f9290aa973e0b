"""Records: their shape, validation, normalisation, content hash and quality rules.

A record is either `{"text": ...}` or `{"prompt": ..., "completion": ...}`, plus an optional
`metadata` object. Every check that can reject a record names its rule (`RejectReason`).

Normalisation (for hashing, near-duplicate shingles and the quality rules, never for what
is stored): `attribution.textnorm.dedup_form` -- compatibility forms, homoglyphs, case,
invisible code points, marks on Latin letters and whitespace folded, so that an edit a
reader cannot see makes no new record.

Content hash (version `textnorm.CONTENT_HASH_VERSION`): SHA-256 of a kind tag plus the
normalised fields, so that a text record and a prompt/completion pair with the same words do
not collide:
``sha256(b"text\\x00" + norm(text))`` or
``sha256(b"pair\\x00" + norm(prompt) + b"\\x00" + norm(completion))`` (UTF-8).

Text that cannot be stored (a NUL, which PostgreSQL's text and jsonb cannot hold; a lone
surrogate) in any field, metadata keys and values included, is `invalid_text`; metadata
nested deeper than `MAX_METADATA_DEPTH` is `invalid_schema`. Both are answered per record,
before anything reaches the database.

Tokens are whitespace-separated words of the raw content (prompt and completion together);
the token count in snapshots is that count, not a model tokenizer's.
"""

from __future__ import annotations

import enum
import hashlib
import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

import msgspec
import numpy as np

from attribution.errors import RecordRejected
from attribution.results import SubmissionResult
from attribution.textnorm import dedup_words, text_problem


class RejectReason(enum.StrEnum):
    INVALID_UTF8 = "invalid_utf8"
    INVALID_TEXT = "invalid_text"
    INVALID_SCHEMA = "invalid_schema"
    TOO_LARGE = "too_large"
    TOO_SHORT = "too_short"
    REPETITIVE = "repetitive"
    NON_TEXT = "non_text"
    DUPLICATE = "duplicate"
    NEAR_DUPLICATE = "near_duplicate"
    RATE_LIMITED = "rate_limited"
    CURATOR_REJECTED = "curator_rejected"


NO_ROW_REASONS = frozenset(
    {
        RejectReason.INVALID_UTF8,
        RejectReason.INVALID_TEXT,
        RejectReason.INVALID_SCHEMA,
        RejectReason.TOO_LARGE,
    }
)
"""Rejections that leave no row: the record never parsed, or holds text the database cannot
store (a NUL), so there is nothing to keep but the answer."""


class Record(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    text: str | None = None
    prompt: str | None = None
    completion: str | None = None
    metadata: dict[str, Any] | None = None

    @property
    def kind(self) -> Literal["text", "pair"]:
        return "text" if self.text is not None else "pair"

    def raw_content(self) -> str:
        if self.text is not None:
            return self.text
        return f"{self.prompt}\n{self.completion}"


class QualityPolicy(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Per-datanet thresholds. A threshold of None (or 0) disables its rule."""

    max_bytes: int = 64 * 1024
    """Encoded size limit of one record (content plus metadata) -> `too_large`."""
    min_chars: int | None = 20
    """Normalised content shorter than this -> `too_short`."""
    min_distinct_token_ratio: float | None = 0.3
    """Distinct/total words, taken over each window of `ratio_window` words (the worst
    window counts, so a varied prefix cannot hide a repeated tail) -> `repetitive`.
    Only applies once a window holds at least 8 words."""
    ratio_window: int = 256
    min_char_entropy_bits: float | None = 2.5
    """Shannon entropy of the normalised characters, bits per character (English prose is
    about 4; "abababab" is 1) -> `repetitive`."""
    max_non_letter_fraction: float | None = 0.5
    """Fraction of non-whitespace characters that are not letters (digits, punctuation,
    symbols) above this -> `non_text`."""
    near_duplicate_threshold: float = 0.8
    """Estimated Jaccard similarity of word 3-shingles at or above which a record is flagged
    as a near duplicate."""
    max_records_per_minute: int | None = 600
    """Per contributor and datanet, over a sliding minute -> `rate_limited`."""


class Prepared(msgspec.Struct, gc=False):
    """A record that passed validation and quality rules, ready for dedup and storage."""

    record: Record
    normalised: str
    content_hash: bytes
    token_count: int


_LETTERS = re.compile(r"[^\W\d_]+")
_RECORD_DECODER = msgspec.json.Decoder(Record)


MAX_METADATA_DEPTH = 16
"""Nesting levels a record's metadata may have (the metadata object itself is level 1)."""


def normalise(s: str) -> str:
    return _normalise_words(s)[0]


def _normalise_words(s: str) -> tuple[str, list[str]]:
    """The normalised text and its words."""
    words = dedup_words(s)
    return " ".join(words), words


def _hash_normalised(kind: str, first: str, second: str | None = None) -> bytes:
    if kind == "text":
        data = b"text\x00" + first.encode("utf-8", "surrogatepass")
    else:
        data = (
            b"pair\x00"
            + first.encode("utf-8", "surrogatepass")
            + b"\x00"
            + (second or "").encode("utf-8", "surrogatepass")
        )
    return hashlib.sha256(data).digest()


def content_hash(record: Record) -> bytes:
    if record.text is not None:
        return _hash_normalised("text", normalise(record.text))
    return _hash_normalised(
        "pair", normalise(record.prompt or ""), normalise(record.completion or "")
    )


def token_count(s: str) -> int:
    return len(s.split())


def _reject(reason: RejectReason, detail: str, index: int = 0) -> RecordRejected:
    return RecordRejected(
        SubmissionResult(index=index, status="rejected", reason=reason.value, detail=detail)
    )


def _check_schema(r: Record) -> None:
    has_text = r.text is not None
    has_pair = r.prompt is not None or r.completion is not None
    if has_text and has_pair:
        raise _reject(RejectReason.INVALID_SCHEMA, "give either text or prompt+completion")
    if not has_text and (r.prompt is None or r.completion is None):
        raise _reject(
            RejectReason.INVALID_SCHEMA, "a record needs text, or both prompt and completion"
        )
    for name in ("text", "prompt", "completion"):
        v = getattr(r, name)
        if v is not None:
            problem = text_problem(v)
            if problem is not None:
                raise _reject(RejectReason.INVALID_TEXT, f"{name} {problem}")
    if r.metadata is not None:
        _check_metadata(r.metadata, 1, "metadata")


def _check_metadata(value: Any, depth: int, path: str) -> None:
    """Every key and string of the metadata storable, nesting at most MAX_METADATA_DEPTH."""
    if isinstance(value, str):
        problem = text_problem(value)
        if problem is not None:
            raise _reject(RejectReason.INVALID_TEXT, f"{path} {problem}")
        return
    if not isinstance(value, dict | list):
        return
    if depth > MAX_METADATA_DEPTH:
        raise _reject(
            RejectReason.INVALID_SCHEMA,
            f"metadata is nested more than {MAX_METADATA_DEPTH} levels deep",
        )
    if isinstance(value, dict):
        for k, v in value.items():
            problem = text_problem(k) if isinstance(k, str) else None
            if problem is not None:
                raise _reject(RejectReason.INVALID_TEXT, f"a key of {path} {problem}")
            _check_metadata(v, depth + 1, f"{path}.{k[:40]}")
    else:
        for i, v in enumerate(value):
            _check_metadata(v, depth + 1, f"{path}[{i}]")


def parse_record(raw: bytes | str | dict[str, Any] | Record, policy: QualityPolicy) -> Record:
    """Decode and validate shape, encoding and size. Raises `RecordRejected`."""
    if isinstance(raw, Record):
        record = raw
        size = 0
    elif isinstance(raw, dict):
        try:
            record = msgspec.convert(raw, Record)
        except msgspec.ValidationError as e:
            raise _reject(RejectReason.INVALID_SCHEMA, str(e)) from None
        except RecursionError:
            raise _reject(
                RejectReason.INVALID_SCHEMA,
                f"metadata is nested more than {MAX_METADATA_DEPTH} levels deep",
            ) from None
        size = 0
    else:
        data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
        size = len(data)
        if size > policy.max_bytes:
            raise _reject(
                RejectReason.TOO_LARGE, f"{size} bytes exceeds the limit of {policy.max_bytes}"
            )
        try:
            data.decode("utf-8", "strict")
        except UnicodeDecodeError as e:
            raise _reject(
                RejectReason.INVALID_UTF8, f"not well-formed UTF-8 at byte {e.start}"
            ) from None
        try:
            record = _RECORD_DECODER.decode(data)
        except msgspec.DecodeError as e:
            if "surrogate" in str(e):  # a \ud800-style escape with no partner
                raise _reject(RejectReason.INVALID_TEXT, str(e)) from None
            raise _reject(RejectReason.INVALID_SCHEMA, str(e)) from None
        except RecursionError:
            raise _reject(
                RejectReason.INVALID_SCHEMA,
                f"metadata is nested more than {MAX_METADATA_DEPTH} levels deep",
            ) from None
    _check_schema(record)
    if size == 0:
        # the checks above made the record encodable (no lone surrogates, bounded depth)
        size = len(msgspec.json.encode(record))
    if size > policy.max_bytes:
        raise _reject(
            RejectReason.TOO_LARGE, f"{size} bytes exceeds the limit of {policy.max_bytes}"
        )
    return record


def _char_entropy(s: str) -> float:
    n = len(s)
    if n == 0:
        return 0.0
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


# `prepare_many` computes the entropy of a batch of ASCII texts at once with numpy; its sum
# runs in another order than `_char_entropy`'s, so the two may differ in the last bits. When
# the fast value is within this margin of the threshold, the rule uses `_char_entropy`, so
# every decision (and every message) is the one `_char_entropy` gives.
_ENTROPY_MARGIN = 1e-9


def _ascii_entropies(texts: list[str]) -> np.ndarray:
    """Shannon entropy (bits per character) of each non-empty ASCII text."""
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    data = np.frombuffer("\n".join(texts).encode("ascii"), dtype=np.uint8)
    # record number of every byte; "\n" never occurs in normalised text, so the separators
    # are counted under byte 10 and dropped
    owner = np.repeat(np.arange(len(texts), dtype=np.int64), lengths + 1)[: len(data)]
    counts = np.bincount(owner * 128 + data, minlength=len(texts) * 128).reshape(-1, 128)
    counts[:, 10] = 0
    rows, chars = np.nonzero(counts)  # about 30 distinct characters a text, of 128
    p = counts[rows, chars] / lengths[rows]
    result: np.ndarray = -np.bincount(rows, weights=p * np.log2(p), minlength=len(texts))
    return result


# every ASCII byte that is not a letter: deleting them leaves the letters
_ASCII_NON_LETTERS = bytes(b for b in range(128) if not chr(b).isalpha())


def _letter_count(s: str) -> int:
    """Characters of `s` that the rule counts as letters (regex `[^\\W\\d_]`)."""
    if s.isascii():
        return len(s.encode("ascii").translate(None, _ASCII_NON_LETTERS))
    return sum(len(m) for m in _LETTERS.findall(s))


def _worst_distinct_ratio(tokens: list[str], window: int) -> float | None:
    worst: float | None = None
    for start in range(0, len(tokens), window):
        chunk = tokens[start : start + window]
        if len(chunk) < 8:
            continue
        ratio = len(set(chunk)) / len(chunk)
        worst = ratio if worst is None else min(worst, ratio)
    return worst


def check_quality(
    normalised: str,
    policy: QualityPolicy,
    words: list[str] | None = None,
    entropy: float | None = None,
) -> None:
    """Apply the datanet's quality rules to normalised content; raises `RecordRejected` naming
    the first rule that fired (order: too_short, non_text, repetitive). `words` (the
    normalised words) and `entropy` (an estimate of `_char_entropy(normalised)`, see
    `_ENTROPY_MARGIN`) save recomputing them."""
    _check_size_and_letters(normalised, policy)
    _check_repetition(normalised, policy, words, entropy)


def _check_size_and_letters(normalised: str, policy: QualityPolicy) -> None:
    if policy.min_chars and len(normalised) < policy.min_chars:
        raise _reject(
            RejectReason.TOO_SHORT,
            f"{len(normalised)} characters, fewer than the minimum of {policy.min_chars}",
        )
    if policy.max_non_letter_fraction is not None:
        # normalised text holds no whitespace but single spaces
        visible = len(normalised) - normalised.count(" ")
        if visible:
            non_letters = visible - _letter_count(normalised)
            frac = non_letters / visible
            if frac > policy.max_non_letter_fraction:
                raise _reject(
                    RejectReason.NON_TEXT,
                    f"{frac:.0%} of characters are not letters "
                    f"(limit {policy.max_non_letter_fraction:.0%})",
                )


def _check_repetition(
    normalised: str, policy: QualityPolicy, words: list[str] | None, entropy: float | None
) -> None:
    if policy.min_char_entropy_bits:
        h = entropy
        if h is None or abs(h - policy.min_char_entropy_bits) <= _ENTROPY_MARGIN:
            h = _char_entropy(normalised)
        if h < policy.min_char_entropy_bits:
            h = _char_entropy(normalised)
            raise _reject(
                RejectReason.REPETITIVE,
                f"character entropy {h:.2f} bits, below {policy.min_char_entropy_bits}",
            )
    if policy.min_distinct_token_ratio:
        if words is None or not words:
            words = normalised.split(" ")
        ratio = _worst_distinct_ratio(words, max(8, policy.ratio_window))
        if ratio is not None and ratio < policy.min_distinct_token_ratio:
            raise _reject(
                RejectReason.REPETITIVE,
                f"distinct-word ratio {ratio:.2f}, below {policy.min_distinct_token_ratio}",
            )


RawInput = bytes | str | dict[str, Any] | Record


def prepare(raw: RawInput, policy: QualityPolicy, index: int = 0) -> Prepared:
    """Validate, normalise, hash and quality-check one record. Raises `RecordRejected` (with
    `result.index` set to `index`)."""
    (result,) = prepare_many([raw], policy, index)
    if isinstance(result, RecordRejected):
        raise result
    return result


class _Stage(msgspec.Struct, gc=False):
    record: Record
    norm: str
    words: list[str]
    content_hash: bytes
    tokens: int


def _stage(raw: RawInput, policy: QualityPolicy, index: int) -> _Stage | RecordRejected:
    """Parse, normalise and hash one record (the per-record part of `prepare_many`)."""
    h: bytes | None = None
    try:
        record = parse_record(raw, policy)
        text = record.text
        if text is not None:
            norm, words = _normalise_words(text)
            h = _hash_normalised("text", norm)
            # lower() changes no whitespace, so ASCII words are the raw content's tokens
            tokens = len(words) if text.isascii() else token_count(text)
        else:
            norm, words = _normalise_words(f"{record.prompt} {record.completion}")
            h = _hash_normalised(
                "pair", normalise(record.prompt or ""), normalise(record.completion or "")
            )
            tokens = token_count(record.raw_content())
        # the rules before entropy; `prepare_many` applies the rest once it has the batch's
        # entropies
        _check_size_and_letters(norm, policy)
    except RecordRejected as e:
        e.result.index = index
        if h is not None:
            e.result.content_hash = h.hex()
            e.kind = record.kind
        return e
    return _Stage(record, norm, words, h, tokens)


def prepare_many(
    raws: Sequence[RawInput], policy: QualityPolicy, first_index: int = 0
) -> list[Prepared | RecordRejected]:
    """`prepare` for a batch: each record's `Prepared`, or the `RecordRejected` it raised
    (index `first_index + i`). The character entropy of the batch's ASCII texts is computed
    in one numpy pass; the decisions are those `prepare` makes one by one."""
    staged = [_stage(raw, policy, first_index + i) for i, raw in enumerate(raws)]
    entropies: dict[int, float] = {}
    if policy.min_char_entropy_bits:
        ascii_rows = [
            i
            for i, st in enumerate(staged)
            if isinstance(st, _Stage) and st.norm and st.norm.isascii()
        ]
        if ascii_rows:
            values = _ascii_entropies([staged[i].norm for i in ascii_rows])  # type: ignore[union-attr]
            entropies = dict(zip(ascii_rows, values.tolist(), strict=True))
    out: list[Prepared | RecordRejected] = []
    for i, st in enumerate(staged):
        if isinstance(st, RecordRejected):
            out.append(st)
            continue
        try:
            _check_repetition(st.norm, policy, st.words, entropies.get(i))
        except RecordRejected as e:
            e.result.index = first_index + i
            e.result.content_hash = st.content_hash.hex()
            e.kind = st.record.kind
            out.append(e)
            continue
        out.append(Prepared(st.record, st.norm, st.content_hash, st.tokens))
    return out
