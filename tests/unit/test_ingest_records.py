"""The fast paths of record preparation against the plain definitions they replaced:
normalisation, letter counting, character entropy, and `prepare_many` against `prepare`."""

from __future__ import annotations

import hashlib
import math
import random
import re
import sys
import unicodedata
from collections import Counter

import pytest

from attribution import records as R
from attribution import textnorm
from attribution.errors import RecordRejected
from attribution.records import QualityPolicy, Record

_WS = re.compile(r"\s+")
_LETTERS = re.compile(r"[^\W\d_]+")


def _invisible(c: str) -> bool:
    cat = unicodedata.category(c)
    if cat == "Cf" or (cat == "Cc" and not c.isspace()):
        return True
    return any(lo <= ord(c) <= hi for lo, hi in textnorm._DEFAULT_IGNORABLE_RANGES)


def reference_normalise(s: str) -> str:
    """The module docstring of `attribution.textnorm`, a character at a time."""
    s = unicodedata.normalize("NFKD", s)
    s = "".join(textnorm._CONFUSABLE.get(ord(c), c) for c in s)
    s = s.casefold()
    s = "".join(textnorm._CONFUSABLE.get(ord(c), c) for c in s)
    out: list[str] = []
    on_ascii = False  # the last visible character before here is ASCII
    for c in s:
        if _invisible(c):
            continue
        if unicodedata.category(c) in ("Mn", "Mc", "Me"):
            if not on_ascii:
                out.append(c)
            continue
        on_ascii = c.isascii()
        out.append(c)
    s = unicodedata.normalize("NFKC", "".join(out))
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
        "\u200b\u200d\u00ad\u2060\ufeff\u202e\ufe0f\U000e0041\u3164\x01\x7f\x9f"
        "ＡａАаОоΝνΗηᲂ\u0900\u093f\u0336𝐀𝐳\u2800"
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


# --- the previous definitions, as an independent oracle for `prepare_many` -------------------
def reference_quality(norm: str, policy: QualityPolicy) -> tuple[str, str] | None:
    """The first quality rule that fires, as the code before the batch path wrote it."""
    if policy.min_chars and len(norm) < policy.min_chars:
        return "too_short", f"{len(norm)} characters, fewer than the minimum of {policy.min_chars}"
    if policy.max_non_letter_fraction is not None:
        visible = len(norm) - norm.count(" ")
        if visible:
            frac = (len(_LETTERS.sub("", norm)) - norm.count(" ")) / visible
            if frac > policy.max_non_letter_fraction:
                return "non_text", (
                    f"{frac:.0%} of characters are not letters "
                    f"(limit {policy.max_non_letter_fraction:.0%})"
                )
    if policy.min_char_entropy_bits:
        h = reference_entropy(norm)
        if h < policy.min_char_entropy_bits:
            return (
                "repetitive",
                f"character entropy {h:.2f} bits, below {policy.min_char_entropy_bits}",
            )
    if policy.min_distinct_token_ratio:
        tokens = norm.split(" ")
        window = max(8, policy.ratio_window)
        ratios = [
            len(set(tokens[i : i + window])) / len(tokens[i : i + window])
            for i in range(0, len(tokens), window)
            if len(tokens[i : i + window]) >= 8
        ]
        if ratios and min(ratios) < policy.min_distinct_token_ratio:
            return "repetitive", (
                f"distinct-word ratio {min(ratios):.2f}, below {policy.min_distinct_token_ratio}"
            )
    return None


def reference_outcome(rec: Record, policy: QualityPolicy) -> tuple[object, ...]:
    if rec.text is not None:
        norm = reference_normalise(rec.text)
        h = hashlib.sha256(b"text\x00" + norm.encode()).digest()
        tokens = len(rec.text.split())
    else:
        norm = reference_normalise(f"{rec.prompt} {rec.completion}")
        h = hashlib.sha256(
            b"pair\x00"
            + reference_normalise(rec.prompt or "").encode()
            + b"\x00"
            + reference_normalise(rec.completion or "").encode()
        ).digest()
        tokens = len(f"{rec.prompt}\n{rec.completion}".split())
    fired = reference_quality(norm, policy)
    if fired is not None:
        return ("rejected", *fired, h.hex())
    return ("ok", norm, h, tokens)


def test_prepare_many_equals_the_previous_definitions() -> None:
    rng = random.Random(9)
    alphabet = "abcdefghij KLMNOP .,;!? 0123 \t\n ßéü日本 $%&"
    records = [
        Record(text="".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120))))
        for _ in range(1500)
    ]
    records += [
        Record(
            prompt=" ".join(rng.choices(PROSE.split(), k=5)),
            completion=rng.choice([PROSE, "ok ok ok ok ok ok ok ok ok"]),
        )
        for _ in range(200)
    ]
    records += [Record(text=w * rng.randint(1, 60)) for w in ("ab", "buy now ", "x y z ", "ñ")]
    policies = [
        POLICY,
        QualityPolicy(min_char_entropy_bits=3.0, min_distinct_token_ratio=0.6, ratio_window=16),
        QualityPolicy(max_non_letter_fraction=0.2, min_chars=5),
    ]
    seen: Counter[str] = Counter()
    for policy in policies:
        got = R.prepare_many(records, policy)
        for rec, out in zip(records, got, strict=True):
            want = reference_outcome(rec, policy)
            seen[str(want[1]) if want[0] == "rejected" else "ok"] += 1
            if isinstance(out, RecordRejected):
                r = out.result
                assert ("rejected", r.reason, r.detail, r.content_hash) == want, rec
            else:
                assert ("ok", out.normalised, out.content_hash, out.token_count) == want, rec
    assert {"ok", "too_short", "non_text", "repetitive"} <= set(seen), seen
    assert min(seen.values()) > 20, seen
