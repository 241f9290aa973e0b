"""The comparison form of record text (`attribution.textnorm`): every evasion of the
deduplication that a reader cannot see folds to the plain text, so an evaded copy gets the
plain copy's content hash and MinHash signature; the form is idempotent; text that cannot be
stored is named."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attribution import dedup
from attribution.records import QualityPolicy, Record, content_hash, prepare
from attribution.textnorm import dedup_form, text_problem

PLAIN = (
    "Tidal forces stretch the oceans twice a day because the Moon pulls the near side "
    "harder than the far side of the planet, and the Earth turns beneath both bulges."
)


def per_word(sep: str) -> object:
    return lambda s: " ".join(w + sep for w in s.split())


def per_letter(mark: str) -> object:
    return lambda s: "".join(c + mark if c.isalpha() else c for c in s)


def fullwidth(s: str) -> str:
    return "".join(
        chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else "\u3000" if c == " " else c for c in s
    )


def math_alpha(upper: int, lower: int) -> object:
    def f(s: str) -> str:
        return "".join(
            chr(upper + ord(c) - 65)
            if "A" <= c <= "Z"
            else chr(lower + ord(c) - 97)
            if "a" <= c <= "z"
            else c
            for c in s
        )

    return f


HOMOGLYPHS = str.maketrans("aceopxyTHMKBAEO", "асеорхуТНМКВАЕО")  # Latin -> Cyrillic

EVASIONS = {
    "zero-width space after each word": per_word("\u200b"),
    "zero-width joiner after each word": per_word("\u200d"),
    "zero-width non-joiner inside words": per_letter("\u200c"),
    "soft hyphen after each word": per_word("\u00ad"),
    "word joiner after each word": per_word("\u2060"),
    "byte order mark after each word": per_word("\ufeff"),
    "left-to-right marks and overrides": lambda s: "\u202d" + per_word("\u200e")(s) + "\u202c",  # type: ignore[operator]
    "bidi isolates": lambda s: "\u2066" + s + "\u2069",
    "variation selectors": per_letter("\ufe0f"),
    "tag characters": per_word("\U000e0041\U000e0062\U000e007f"),
    "combining grapheme joiner": per_letter("\u034f"),
    "Hangul filler": per_word("\u3164"),
    "fullwidth letters": fullwidth,
    "mathematical bold": math_alpha(0x1D400, 0x1D41A),
    "mathematical sans-serif bold italic": math_alpha(0x1D63C, 0x1D656),
    "mathematical monospace": math_alpha(0x1D670, 0x1D68A),
    "combining strike-through on every letter": per_letter("\u0336"),
    "combining accents (Zalgo)": per_letter("\u0301\u0316\u0358"),
    "no-break spaces": lambda s: s.replace(" ", "\u00a0"),
    "narrow, thin and ideographic spaces": lambda s: s.replace(" ", "\u202f\u2009\u3000"),
    "braille blank as space": lambda s: s.replace(" ", "\u2800"),
    "Cyrillic homoglyphs": lambda s: s.translate(HOMOGLYPHS),
    "Greek capital homoglyphs": lambda s: s.upper().translate(
        str.maketrans("ABEHIKMNOPTXYZ", "ΑΒΕΗΙΚΜΝΟΡΤΧΥΖ")
    ),
    "upper case": str.upper,
    "control characters": per_word("\x01\x7f"),
    "everything at once": lambda s: per_word("\u200b\u00ad")(  # type: ignore[operator]
        fullwidth(s.translate(HOMOGLYPHS))
    ),
}


@pytest.mark.parametrize("name", list(EVASIONS))
def test_an_evaded_copy_has_the_plain_copys_hash_and_signature(name: str) -> None:
    evaded = EVASIONS[name](PLAIN)  # type: ignore[operator]
    assert evaded != PLAIN
    assert dedup_form(evaded) == dedup_form(PLAIN), name
    assert content_hash(Record(text=evaded)) == content_hash(Record(text=PLAIN))
    q, a = PLAIN[:40], PLAIN[40:]
    evade = EVASIONS[name]
    pair = Record(prompt=evade(q), completion=evade(a))  # type: ignore[operator]
    assert content_hash(pair) == content_hash(Record(prompt=q, completion=a))
    m1, m2 = dedup.signature(dedup_form(PLAIN)), dedup.signature(dedup_form(evaded))
    assert m1.jaccard(m2) == 1.0
    # the quality rules see the visible text: the evaded copy passes or fails as the plain one
    p = prepare({"text": evaded}, QualityPolicy())
    assert p.normalised == dedup_form(PLAIN)


def test_without_the_fold_the_evasions_defeat_dedup() -> None:
    """The issue's numbers: compared code point by code point, a zero-width space after each
    word gives Jaccard 0, fullwidth letters a low one -- what the fold prevents."""

    def raw_form(s: str) -> str:
        return " ".join(unicodedata.normalize("NFC", s.casefold()).split())

    plain = dedup.signature(raw_form(PLAIN))
    zwsp = dedup.signature(raw_form(EVASIONS["zero-width space after each word"](PLAIN)))  # type: ignore[operator]
    wide = dedup.signature(raw_form(fullwidth(PLAIN)))
    assert plain.jaccard(zwsp) < 0.1 and plain.jaccard(wide) < 0.5


def test_plain_ascii_keeps_its_version_1_form() -> None:
    """For ASCII text without control characters the form (so the content hash) is the one
    version 1 gave: lower case, single spaces. Stored hashes of such records stay valid."""
    for s in [PLAIN, "  Mixed\tCASE\n text ", "a", "", "x  y\r\nz\x0b\x0c w"]:
        assert dedup_form(s) == " ".join(s.lower().split())


def test_meaningful_marks_and_scripts_stay() -> None:
    assert dedup_form("नमस्ते दुनिया") == unicodedata.normalize("NFKC", "नमस्ते दुनिया")
    assert dedup_form("日本語のテキスト") == "日本語のテキスト"
    assert dedup_form("Ölkännchen CAFÉ") == "olkannchen cafe"  # accents on Latin fold
    assert dedup_form("straße") == dedup_form("STRASSE") == "strasse"
    # different texts in a mapped script stay different
    assert dedup_form("привет мир") != dedup_form("пока мир")


def test_text_problem_names_what_cannot_be_stored() -> None:
    assert text_problem("fine text, ünïcödé 日本") is None
    assert text_problem("a\x00b") == "contains a NUL character at position 1"
    assert text_problem("ab\ud800") == "contains an unpaired surrogate at position 2"
    assert text_problem("\U0001f600") is None


ALPHABET = st.sampled_from(
    list("aZ Ω9.\t\n\u00a0\u200b\u00ad\u2060\ufeff\u0301\u0336\ufe0f\u034f\u3164")
    + list("ＡａＺ𝐀𝐚аАоΟνΝηΗıſßẞİ日ﬁ½\u1c82\u0900\u093f\U000e0041\x01\x85\u2800")
) | st.characters(codec="utf-8")


@settings(max_examples=3000, deadline=None)
@given(st.text(ALPHABET, max_size=40))
def test_the_form_is_idempotent(s: str) -> None:
    once = dedup_form(s)
    assert dedup_form(once) == once
    assert once == once.strip() and "  " not in once
