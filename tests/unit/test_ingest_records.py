"""The fast paths of record preparation against the plain definitions they replaced:
normalisation, letter counting, character entropy, and `prepare_many` against `prepare`."""

from __future__ import annotations

import math
import random
import re
import sys
import unicodedata
from collections import Counter

import pytest

from attribution import records as R
from attribution.errors import RecordRejected
from attribution.records import QualityPolicy, Record

_WS = re.compile(r"\s+")
_LETTERS = re.compile(r"[^\W\d_]+")


def reference_normalise(s: str) -> str:
    s = unicodedata.normalize("NFC", s)
    s = unicodedata.normalize("NFC", s.casefold())
    return _WS.sub(" ", s).strip()


def reference_entropy(s: str) -> float:
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values()) if n else 0.0


def test_split_and_regex_agree_on_whitespace_for_every_code_point() -> None:
    for cp in range(sys.maxunicode + 1):
        c = chr(cp)
        assert c.isspace() == bool(_WS.fullmatch(c)), hex(cp)


def test_normalise_equals_reference() -> None:
    rng = random.Random(5)
    alphabet = (
        "abcXYZ  \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2028\u2029\u3000"
        "ßẞİıﬁÅÅéé\u0301\u0327ΣσςǅǄ日本😀0123.,;!?_-"
    )
    cases = ["", " ", "A", "  Mixed CASE  text ", "caf\u00e9 cafe\u0301", "ß ẞ straße"]
    cases += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(3000)]
    for s in cases:
        assert R.normalise(s) == reference_normalise(s), repr(s)


def test_letter_count_equals_reference() -> None:
    rng = random.Random(6)
    cases = [chr(c) * 3 for c in range(128)] + ["½ Ⅻ ² ٣ x_y", "Ölkännchen 3 €", ""]
    cases += ["".join(chr(rng.randint(0, 0x2FFF)) for _ in range(30)) for _ in range(500)]
    for s in cases:
        assert R._letter_count(s) == sum(len(m) for m in _LETTERS.findall(s)), repr(s)


def test_batch_entropy_close_to_reference() -> None:
    rng = random.Random(7)
    texts = ["a", "ab" * 40, "the quick brown fox jumps over the lazy dog"]
    texts += [
        "".join(rng.choice("abcdefgh ,.") for _ in range(rng.randint(1, 500))) for _ in range(200)
    ]
    got = R._ascii_entropies(texts)
    for h, t in zip(got, texts, strict=True):
        assert abs(h - reference_entropy(t)) < 1e-12


POLICY = QualityPolicy()
PROSE = "The tide rises twice a day because the moon pulls the oceans towards it."


def mixed_batch() -> list[R.RawInput]:
    rng = random.Random(8)
    words = PROSE.split()
    raws: list[R.RawInput] = [
        b'{"text": "' + PROSE.encode() + b'"}',
        b'{"text": "caf\xc3"}',  # invalid utf-8
        b'{"txt": 1}',  # schema
        b'{"text": "' + b"x" * 70000 + b'"}',  # too large
        {"text": "hi"},  # too short
        {"text": "1234 5678 9012 3456 $$$$ #### @@@@ !!!! a"},  # non text
        {"text": "ab" * 40},  # low entropy
        {"text": "buy now " * 40},  # low distinct ratio (and entropy passes)
        {"prompt": "Why are there two tides?", "completion": PROSE, "metadata": {"k": 1}},
        {"text": "Ein Ölkännchen für drei Euro und zwölf Brötchen, bitte sehr."},
        {"text": "\u65e5\u672c\u8a9e " * 3 + "の テキスト です よ ね そうです"},
        Record(text=PROSE.upper()),
        {"text": ""},
    ]
    for _ in range(200):
        rng.shuffle(words)
        raws.append({"text": " ".join(words[: rng.randint(1, len(words))])})
    return raws


def outcome(x: R.Prepared | RecordRejected) -> tuple[object, ...]:
    if isinstance(x, RecordRejected):
        r = x.result
        return ("rejected", r.index, r.reason, r.detail, r.content_hash, x.kind)
    return ("ok", x.record, x.normalised, x.content_hash, x.token_count)


@pytest.mark.parametrize(
    "policy",
    [
        POLICY,
        QualityPolicy(min_char_entropy_bits=None),
        QualityPolicy(min_char_entropy_bits=3.9, min_distinct_token_ratio=0.9),
        QualityPolicy(min_chars=None, max_non_letter_fraction=None),
    ],
)
def test_prepare_many_equals_prepare_one_by_one(policy: QualityPolicy) -> None:
    raws = mixed_batch()
    batch = R.prepare_many(raws, policy, first_index=100)
    one_by_one: list[R.Prepared | RecordRejected] = []
    for i, raw in enumerate(raws):
        try:
            one_by_one.append(R.prepare(raw, policy, 100 + i))
        except RecordRejected as e:
            one_by_one.append(e)
    assert [outcome(x) for x in batch] == [outcome(x) for x in one_by_one]
    assert {outcome(x)[2] for x in batch if isinstance(x, RecordRejected)} >= (
        {"invalid_utf8", "invalid_schema", "too_large"}
    )


def test_entropy_right_at_the_threshold_uses_the_exact_value() -> None:
    text = "abcd" * 10  # entropy exactly 2.0 bits
    assert reference_entropy(text) == 2.0
    at = QualityPolicy(min_char_entropy_bits=2.0, min_distinct_token_ratio=None)
    (ok,) = R.prepare_many([{"text": text}], at)
    assert isinstance(ok, R.Prepared)  # 2.0 is not below 2.0
    above = QualityPolicy(min_char_entropy_bits=2.0 + 1e-12, min_distinct_token_ratio=None)
    (rej,) = R.prepare_many([{"text": text}], above)
    assert isinstance(rej, RecordRejected) and rej.result.reason == "repetitive"
    assert rej.result.detail == "character entropy 2.00 bits, below 2.000000000001"


def test_token_count_fast_path() -> None:
    for text in ["Hello   World\tagain\n", "ÄÖÜ äöü words", "one"]:
        p = R.prepare({"text": text + " " + PROSE}, POLICY)
        assert p.token_count == len((text + " " + PROSE).split())
    p = R.prepare({"prompt": "Q? why", "completion": PROSE}, POLICY)
    assert p.token_count == len(f"Q? why\n{PROSE}".split())
