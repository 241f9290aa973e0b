"""The comparison form of record text: what content hashes and MinHash shingles are computed
over, and which text can be stored at all.

Deduplication must not be fooled by edits a reader cannot see. A zero-width space or a soft
hyphen after every word, fullwidth or "mathematical bold" letters, accents or strike-through
marks stacked on letters, a Cyrillic "а" for a Latin "a": each leaves the text looking the
same and, compared code point by code point, makes it new (a new content hash and a MinHash
Jaccard similarity near 0). `dedup_form` folds all of these to one form.

Content hash version 2 (`CONTENT_HASH_VERSION`) is SHA-256 over this form (see
`records.py`); version 1 used NFC + casefold + whitespace only. Where the two forms agree
(all ASCII text without control characters; text in scripts the fold leaves alone, such as
most Chinese or Japanese text) the two hashes are the same bytes, so those stored hashes
stay valid. Where they differ (accented Latin, Cyrillic, Greek, any invisible character)
`attribution.rehash` upgrades the stored hashes and signatures.

Steps (text that is not ASCII):

1. NFKD: compatibility decomposition. Fullwidth and halfwidth forms, mathematical
   alphanumerics, ligatures, circled and parenthesised letters, superscripts, no-break and
   the other typographic spaces become their plain forms; a precomposed letter splits into
   its base and combining marks.
2. Homoglyphs: the Cyrillic, Greek and Armenian letters (and a few Latin ones) that are drawn
   like a Latin letter become that letter (`_CONFUSABLE`, case for case). A deliberately
   short list, not Unicode's whole confusables table: only letters that a reader cannot tell
   from Latin in running text. The mapping is many to one on characters, so two different
   texts in those scripts stay different; only texts that differ by such letters alone meet.
3. Case folding (`str.casefold`), then step 2 again (case folding can make a listed letter).
4. Invisible code points are dropped: every format character (category Cf: zero-width
   space, zero-width (non-)joiner, word joiner, soft hyphen, byte order mark, bidirectional
   controls, tag characters, ...), every other Default_Ignorable_Code_Point (variation
   selectors, combining grapheme joiner, Hangul fillers, ...) and every control character
   that is not whitespace. Combining marks that sit on an ASCII base are dropped too:
   accents, strike-throughs and "Zalgo" stacks on Latin text. Marks on other bases
   (Devanagari vowel signs, Thai tone marks, ...) carry meaning and stay.
5. NFKC (recompose what is left), whitespace runs become one space, ends stripped.

ASCII text takes a fast path with the same result: control characters that are not
whitespace are dropped, then lower case. `dedup_form` is idempotent
(tests/unit/test_textnorm.py checks it and each evasion).

This form is for comparing only. Records are stored as the contributor sent them: the
snapshot the factory trains on, and the span index over it, hold the contributor's text.

`text_problem` says why a string cannot be stored at all (NUL, which PostgreSQL's text and
jsonb cannot hold; lone surrogates, which are not Unicode scalar values).
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache
from typing import NamedTuple

import numpy as np

CONTENT_HASH_VERSION = 2
"""The definition of the content hash: SHA-256 over `dedup_form` (see module docstring)."""

# Default_Ignorable_Code_Point (Unicode DerivedCoreProperties) outside category Cf, which is
# taken from `unicodedata` whole. Unassigned ranges are included: they are reserved as
# ignorable, so a renderer draws nothing for them.
_DEFAULT_IGNORABLE_RANGES = (
    (0x00AD, 0x00AD),  # soft hyphen (also Cf)
    (0x034F, 0x034F),  # combining grapheme joiner
    (0x115F, 0x1160),  # Hangul choseong and jungseong fillers
    (0x17B4, 0x17B5),  # Khmer inherent vowels
    (0x180B, 0x180F),  # Mongolian free variation selectors and vowel separator
    (0x200B, 0x200F),  # zero-width space, joiners, direction marks (Cf)
    (0x202A, 0x202E),  # bidirectional embeddings and overrides (Cf)
    (0x2060, 0x206F),  # word joiner, invisible operators, isolates (Cf and reserved)
    (0x3164, 0x3164),  # Hangul filler
    (0xFE00, 0xFE0F),  # variation selectors
    (0xFEFF, 0xFEFF),  # zero-width no-break space, byte order mark (Cf)
    (0xFFA0, 0xFFA0),  # halfwidth Hangul filler
    (0xFFF0, 0xFFF8),  # reserved
    (0x1BCA0, 0x1BCA3),  # shorthand format controls (Cf)
    (0x1D173, 0x1D17A),  # musical symbol format controls (Cf)
    (0xE0000, 0xE0FFF),  # tag characters, variation selectors supplement, reserved
)

# Letters drawn like a Latin letter (step 2), case for case. Lower-case entries also catch
# what case folding makes (step 3).
_CONFUSABLE_PAIRS = (
    # Cyrillic capitals
    "АA ВB ЕE ЅS ІI ЈJ КK МM НH ОO РP СC ТT УY ХX ҮY ҺH ԚQ ԜW Ӏl"
    # Cyrillic small letters (в, к, м, н, т: small capitals of B, K, M, H, T)
    " аa вb еe ѕs іi јj кk мm нh оo рp сc тt уy хx үy һh ԛq ԝw ӏl ԁd"
    # Greek capitals
    " ΑA ΒB ΕE ΖZ ΗH ΙI ΚK ΜM ΝN ΟO ΡP ΤT ΥY ΧX"
    # Greek small letters
    " αa βb εe ζz ηh ιi κk μm νv οo ρp τt υu χx"
    # Armenian
    " օo սu ոn հh ցg զq"
    # Latin look-alikes that NFKD keeps: dotless i and j, script a and g, long s
    " ıi ȷj ɑa ɡg ſs"
)
_CONFUSABLE = {ord(p[0]): p[1] for p in _CONFUSABLE_PAIRS.split()}
_CONFUSABLE[0x2800] = " "  # braille pattern blank: a space that is not whitespace
_CONFUSABLE_RE = re.compile("[" + "".join(chr(c) for c in _CONFUSABLE) + "]")
# `_CONFUSABLE` as a lookup table over code points up to its largest key: applied with numpy
# it costs a third of `str.translate` on a text in Cyrillic or Greek, most of whose letters
# it looks up
_CONFUSABLE_LUT = np.arange(max(_CONFUSABLE) + 1, dtype=np.uint32)
for _k, _v in _CONFUSABLE.items():
    _CONFUSABLE_LUT[_k] = ord(_v)
_ASTRAL_RE = re.compile("[\U00010000-\U0010ffff]")

# ASCII control characters that are not whitespace (str.isspace): \x00-\x08, \x0e-\x1b, \x7f
_ASCII_DROP = {c: None for c in range(128) if not chr(c).isprintable() and not chr(c).isspace()}
_ASCII_DROP_RE = re.compile("[" + "".join(re.escape(chr(c)) for c in _ASCII_DROP) + "]")


def _alternative(code_points: set[int]) -> str:
    """A regex alternative matching any one of `code_points`, cheap for every other
    character: the BMP ones form one class, which `re` compiles to a bitmap; the others (a
    list of ranges `re` would scan for every character) sit behind a one-range guard that
    only characters outside the BMP pass."""
    bmp = sorted(c for c in code_points if c < 0x10000)
    astral = sorted(c for c in code_points if c >= 0x10000)
    parts = [f"[{_ranges(bmp)}]"]
    if astral:
        parts.append(f"(?=[\U00010000-\U0010ffff])[{_ranges(astral)}]")
    return "(?:" + "|".join(parts) + ")"


def _ranges(code_points: list[int]) -> str:
    """A regex character class body for sorted code points, as ranges."""
    out: list[str] = []
    start = prev = code_points[0]
    for c in [*code_points[1:], -1]:
        if c == prev + 1:
            prev = c
            continue
        out.append(re.escape(chr(start)) + ("-" + re.escape(chr(prev)) if prev > start else ""))
        start = prev = c
    return "".join(out)


class _Patterns(NamedTuple):
    invisible: re.Pattern[str]
    marks_on_ascii: re.Pattern[str]
    """Combining marks after an ASCII character, for text inside the BMP."""
    marks_on_ascii_astral: re.Pattern[str]
    """The same for text with characters outside the BMP (a slower pattern)."""


@cache
def _patterns() -> _Patterns:
    """Step 4's patterns, built on first use: it scans the planes that hold format characters
    and marks (planes 0, 1 and 14), ~40 ms."""
    category = unicodedata.category
    invisible: set[int] = set()
    marks: set[int] = set()
    for c in [*range(0x20000), *range(0xE0000, 0xE1000)]:
        cat = category(chr(c))
        if cat == "Cf" or (cat == "Cc" and not chr(c).isspace()):
            invisible.add(c)
        elif cat in ("Mn", "Mc", "Me"):
            marks.add(c)
    for lo, hi in _DEFAULT_IGNORABLE_RANGES:
        invisible.update(range(lo, hi + 1))
    marks -= invisible
    # the base is the last character that stays: invisible ones are gone by then
    after_ascii = "(?<=[" + _ranges([c for c in range(128) if c not in _ASCII_DROP]) + "])"
    bmp_marks = _ranges(sorted(c for c in marks if c < 0x10000))
    return _Patterns(
        re.compile(_alternative(invisible) + "+"),
        re.compile(f"{after_ascii}[{bmp_marks}]+"),
        re.compile(f"{after_ascii}{_alternative(marks)}+"),
    )


def dedup_form(s: str) -> str:
    """The comparison form of `s` (module docstring): what is hashed and shingled."""
    return " ".join(dedup_words(s))


def dedup_words(s: str) -> list[str]:
    """The words of `dedup_form(s)`."""
    if s.isascii():
        if _ASCII_DROP_RE.search(s) is not None:
            s = s.translate(_ASCII_DROP)
        return s.lower().split()
    s = unicodedata.normalize("NFKD", s)
    if _CONFUSABLE_RE.search(s) is not None:
        s = _map_confusables(s)
    s = s.casefold()
    # after the first pass only case folding can bring a listed letter (rare)
    if _CONFUSABLE_RE.search(s) is not None:
        s = _map_confusables(s)
    patterns = _patterns()
    if patterns.invisible.search(s) is not None:
        s = patterns.invisible.sub("", s)
    if _ASTRAL_RE.search(s) is None:
        s = patterns.marks_on_ascii.sub("", s)
    else:
        s = patterns.marks_on_ascii_astral.sub("", s)
    return unicodedata.normalize("NFKC", s).split()


def _map_confusables(s: str) -> str:
    """`s.translate(_CONFUSABLE)`, with numpy."""
    lut = _CONFUSABLE_LUT
    cps = np.frombuffer(s.encode("utf-32-le"), dtype=np.uint32)
    mapped = np.where(cps < len(lut), lut[np.minimum(cps, len(lut) - 1)], cps)
    return mapped.tobytes().decode("utf-32-le")


def text_problem(s: str) -> str | None:
    """Why `s` cannot be stored (None when it can): a NUL character (PostgreSQL's text and
    jsonb types cannot hold one) or a lone surrogate (not a Unicode scalar value, so not
    encodable as UTF-8)."""
    if "\x00" in s:
        return f"contains a NUL character at position {s.index(chr(0))}"
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError as e:
            return f"contains an unpaired surrogate at position {e.start}"
    return None
