"""Records: their shape, validation, normalisation, content hash and quality rules.

A record is either `{"text": ...}` or `{"prompt": ..., "completion": ...}`, plus an optional
`metadata` object. Every check that can reject a record names its rule (`RejectReason`).

Normalisation (for hashing and near-duplicate shingles, never for what is stored):
Unicode NFC, casefold, NFC again (casefolding can denormalise), then every run of whitespace
becomes one space and the ends are stripped.

Content hash: SHA-256 of a kind tag plus the normalised fields, so that a text record and a
prompt/completion pair with the same words do not collide:
``sha256(b"text\\x00" + norm(text))`` or
``sha256(b"pair\\x00" + norm(prompt) + b"\\x00" + norm(completion))`` (UTF-8).

Tokens are whitespace-separated words of the raw content (prompt and completion together);
the token count in snapshots is that count, not a model tokenizer's.
"""

from __future__ import annotations

import enum
import hashlib
import math
import re
import unicodedata
from collections import Counter
from typing import Any, Literal

import msgspec

from attribution.errors import RecordRejected


class RejectReason(enum.StrEnum):
    INVALID_UTF8 = "invalid_utf8"
    INVALID_SCHEMA = "invalid_schema"
    TOO_LARGE = "too_large"
    TOO_SHORT = "too_short"
    REPETITIVE = "repetitive"
    NON_TEXT = "non_text"
    DUPLICATE = "duplicate"
    NEAR_DUPLICATE = "near_duplicate"
    RATE_LIMITED = "rate_limited"
    CURATOR_REJECTED = "curator_rejected"


Status = Literal["accepted", "pending", "rejected", "flagged"]


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


class SubmissionResult(msgspec.Struct, omit_defaults=True):
    """The answer for one submitted record."""

    index: int
    status: Status
    record_id: int | None = None
    reason: str | None = None
    detail: str | None = None
    duplicate_of: int | None = None
    near_duplicate_of: int | None = None
    content_hash: str | None = None


class Prepared(msgspec.Struct):
    """A record that passed validation and quality rules, ready for dedup and storage."""

    record: Record
    normalised: str
    content_hash: bytes
    token_count: int


_WS = re.compile(r"\s+")
_LETTERS = re.compile(r"[^\W\d_]+")
_RECORD_DECODER = msgspec.json.Decoder(Record)


def normalise(s: str) -> str:
    s = unicodedata.normalize("NFC", s)
    s = unicodedata.normalize("NFC", s.casefold())
    return _WS.sub(" ", s).strip()


def content_hash(record: Record) -> bytes:
    if record.text is not None:
        data = b"text\x00" + normalise(record.text).encode("utf-8", "surrogatepass")
    else:
        data = (
            b"pair\x00"
            + normalise(record.prompt or "").encode("utf-8", "surrogatepass")
            + b"\x00"
            + normalise(record.completion or "").encode("utf-8", "surrogatepass")
        )
    return hashlib.sha256(data).digest()


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
        if v is not None and not _is_valid_unicode(v):
            raise _reject(RejectReason.INVALID_UTF8, f"{name} holds unpaired surrogates")


def _is_valid_unicode(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
            raise _reject(RejectReason.INVALID_SCHEMA, str(e)) from None
    _check_schema(record)
    if size == 0:
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


def _worst_distinct_ratio(tokens: list[str], window: int) -> float | None:
    worst: float | None = None
    for start in range(0, len(tokens), window):
        chunk = tokens[start : start + window]
        if len(chunk) < 8:
            continue
        ratio = len(set(chunk)) / len(chunk)
        worst = ratio if worst is None else min(worst, ratio)
    return worst


def check_quality(normalised: str, policy: QualityPolicy) -> None:
    """Apply the datanet's quality rules to normalised content; raises `RecordRejected` naming
    the first rule that fired (order: too_short, non_text, repetitive)."""
    if policy.min_chars and len(normalised) < policy.min_chars:
        raise _reject(
            RejectReason.TOO_SHORT,
            f"{len(normalised)} characters, fewer than the minimum of {policy.min_chars}",
        )
    if policy.max_non_letter_fraction is not None:
        # normalised text holds no whitespace but single spaces
        visible = len(normalised) - normalised.count(" ")
        if visible:
            non_letters = len(_LETTERS.sub("", normalised)) - normalised.count(" ")
            frac = non_letters / visible
            if frac > policy.max_non_letter_fraction:
                raise _reject(
                    RejectReason.NON_TEXT,
                    f"{frac:.0%} of characters are not letters "
                    f"(limit {policy.max_non_letter_fraction:.0%})",
                )
    if policy.min_char_entropy_bits:
        h = _char_entropy(normalised)
        if h < policy.min_char_entropy_bits:
            raise _reject(
                RejectReason.REPETITIVE,
                f"character entropy {h:.2f} bits, below {policy.min_char_entropy_bits}",
            )
    if policy.min_distinct_token_ratio:
        ratio = _worst_distinct_ratio(normalised.split(" "), max(8, policy.ratio_window))
        if ratio is not None and ratio < policy.min_distinct_token_ratio:
            raise _reject(
                RejectReason.REPETITIVE,
                f"distinct-word ratio {ratio:.2f}, below {policy.min_distinct_token_ratio}",
            )


def prepare(
    raw: bytes | str | dict[str, Any] | Record, policy: QualityPolicy, index: int = 0
) -> Prepared:
    """Validate, normalise, hash and quality-check one record. Raises `RecordRejected` (with
    `result.index` set to `index`)."""
    h: bytes | None = None
    try:
        record = parse_record(raw, policy)
        if record.text is not None:
            norm = normalise(record.text)
        else:
            norm = normalise(f"{record.prompt} {record.completion}")
        h = content_hash(record)
        check_quality(norm, policy)
    except RecordRejected as e:
        e.result.index = index
        if h is not None:
            e.result.content_hash = h.hex()
            e.kind = record.kind
        raise
    return Prepared(record, norm, h, token_count(record.raw_content()))
