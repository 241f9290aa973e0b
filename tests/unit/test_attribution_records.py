"""Records: schema and encoding checks, normalisation, content hash, each quality rule."""

from __future__ import annotations

import pytest

from attribution.errors import RecordRejected
from attribution.records import (
    QualityPolicy,
    Record,
    content_hash,
    normalise,
    prepare,
)
from gateway.error_table import api_error

POLICY = QualityPolicy()
PROSE = (
    "Tidal forces stretch the oceans twice a day, because the moon pulls the near side "
    "harder than the far side of the planet."
)


def reason_of(raw: object, policy: QualityPolicy = POLICY) -> str:
    with pytest.raises(RecordRejected) as e:
        prepare(raw, policy)  # type: ignore[arg-type]
    assert e.value.result.status == "rejected"
    assert e.value.result.reason is not None
    return e.value.result.reason


def test_normalise_nfc_casefold_whitespace() -> None:
    decomposed = "Cafe\u0301  au\tlait\n\nSTRASSE"
    # accents on Latin letters fold for comparison (attribution.textnorm)
    assert normalise(decomposed) == "cafe au lait strasse" == normalise("café au lait strasse")
    assert normalise("  ß ") == "ss"
    assert normalise("a\u00a0b") == "a b"  # no-break space is whitespace


def test_hash_is_of_normalised_content_and_kind_tagged() -> None:
    a = Record(text="Hello   World\u0301")
    b = Record(text="hello world\u0301 ")
    assert content_hash(a) == content_hash(b)
    assert content_hash(a) != content_hash(Record(text="hello worle"))
    pair = Record(prompt="hello", completion="world\u0301")
    assert content_hash(pair) != content_hash(Record(text="hello world\u0301"))
    assert len(content_hash(pair)) == 32
    # the separator keeps field boundaries: ("a b", "c") differs from ("a", "b c")
    assert content_hash(Record(prompt="a b", completion="c")) != content_hash(
        Record(prompt="a", completion="b c")
    )


def test_accepts_text_and_pair_from_bytes_dict_struct() -> None:
    p = prepare(f'{{"text": "{PROSE}", "metadata": {{"src": "x"}}}}'.encode(), POLICY)
    assert p.record.metadata == {"src": "x"}
    assert p.token_count == len(PROSE.split())
    q = prepare({"prompt": "Why are there two tides a day?", "completion": PROSE}, POLICY)
    assert q.record.kind == "pair"
    assert prepare(Record(text=PROSE), POLICY).content_hash == p.content_hash


def test_invalid_utf8() -> None:
    assert reason_of(b'{"text": "caf\xc3"}') == "invalid_utf8"
    assert reason_of(Record(text="bad \ud800 surrogate " + PROSE)) == "invalid_text"


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (b'{"text": "nul \\u0000 in the text of a record that is long enough"}', "text"),
        (b'{"prompt": "why\\u0000", "completion": "because it is so, as it was said"}', "prompt"),
        (
            b'{"text": "a fine text that is long enough to pass", "metadata": {"k": "v\\u0000"}}',
            "metadata.k",
        ),
        (
            b'{"text": "a fine text that is long enough to pass", "metadata": {"k\\u0000": 1}}',
            "a key of metadata",
        ),
        (
            b'{"text": "a fine text that is long enough to pass", "metadata": {"a": ["\\u0000"]}}',
            "metadata.a[0]",
        ),
        (b'{"text": "a lone surrogate \\ud800 in a text long enough"}', "surrogate"),
    ],
)
def test_text_that_cannot_be_stored_is_invalid_text(raw: bytes, where: str) -> None:
    with pytest.raises(RecordRejected) as e:
        prepare(raw, POLICY)
    assert e.value.result.reason == "invalid_text", e.value.result
    assert where in (e.value.result.detail or "")


def test_metadata_depth_is_bounded() -> None:
    def nested(depth: int) -> bytes:
        return (
            b'{"text": "'
            + PROSE.encode()
            + b'", "metadata": '
            + b'{"a": ' * (depth - 1)
            + b"{}"
            + b"}" * (depth - 1)
            + b"}"
        )

    assert prepare(nested(16), POLICY).record.metadata is not None
    assert reason_of(nested(17)) == "invalid_schema"
    # deeper than the decoder's own recursion limit: still a per-record answer, not a crash
    assert reason_of(nested(3000), QualityPolicy(max_bytes=1 << 20)) == "invalid_schema"


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b'{"txt": "hello"}',
        b'{"text": 5}',
        b'{"prompt": "only a prompt"}',
        b'{"text": "a", "prompt": "b", "completion": "c"}',
        b"{}",
        b"[]",
    ],
)
def test_invalid_schema(raw: bytes) -> None:
    assert reason_of(raw) == "invalid_schema"


def test_too_large() -> None:
    policy = QualityPolicy(max_bytes=200)
    assert reason_of(('{"text": "' + "word " * 100 + '"}').encode(), policy) == "too_large"
    assert reason_of({"text": "word " * 100}, policy) == "too_large"
    with pytest.raises(RecordRejected) as e:
        prepare({"text": "word " * 100}, policy)
    err = api_error(e.value)  # the gateway's error table decides the status
    assert err is not None and err.status == 413


def test_too_short() -> None:
    assert reason_of({"text": "hi there"}) == "too_short"
    prepare({"text": "hi there"}, QualityPolicy(min_chars=None))
    prepare({"text": "hi there"}, QualityPolicy(min_chars=8))


def test_repetitive_low_distinct_ratio() -> None:
    assert reason_of({"text": "buy now " * 40}) == "repetitive"
    # a varied prefix does not hide a repeated tail: the worst window counts
    varied = " ".join(f"w{i}x" for i in range(300))
    p = QualityPolicy(max_non_letter_fraction=None)
    prepare({"text": varied}, p)
    assert reason_of({"text": varied + " spam" * 300}, p) == "repetitive"


def test_repetitive_low_entropy() -> None:
    assert reason_of({"text": "ab" * 40}) == "repetitive"
    ok = QualityPolicy(min_char_entropy_bits=None, min_distinct_token_ratio=None)
    prepare({"text": "ab" * 40}, ok)


def test_non_text() -> None:
    assert reason_of({"text": "1234 5678 9012 3456 $$$$ #### @@@@ !!!! a"}) == "non_text"
    prepare({"text": "Ein Ölkännchen für 3 € und zwölf Brötchen, bitte."}, POLICY)
    loose = QualityPolicy(max_non_letter_fraction=0.95)
    prepare({"text": "1234 5678 9012 3456 $$$$ #### @@@@ !!!! ab"}, loose)


def test_rejection_carries_index_and_hash() -> None:
    with pytest.raises(RecordRejected) as e:
        prepare({"text": "short"}, POLICY, index=7)
    assert e.value.result.index == 7
    assert e.value.result.content_hash == content_hash(Record(text="short")).hex()
    assert e.value.kind == "text"
