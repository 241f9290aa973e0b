"""A tiny template grammar and the draw helpers every maker of the corpus shares.

"{slot}" expands to a random alternative of rule `slot`, recursively; a slot bound in `ctx`
expands to that fixed value (names kept per document). Every draw goes through the
`random.Random` passed in, in a fixed order: changing what a helper draws, or in what
order, changes every generated text (and so the demo build's content hash).
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Iterator, Mapping, Sequence

__all__ = ["Rules", "distinct", "expand", "subset", "take", "tidy"]

Rules = Mapping[str, Sequence[str]]
_SLOT = re.compile(r"\{([a-z_0-9]+)\}")
_A_AN = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])")
_SPACES = re.compile(r" {2,}")


def expand(rules: Rules, text: str, rng: random.Random, ctx: Mapping[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key in ctx:
            return ctx[key]
        return expand(rules, rng.choice(rules[key]), rng, ctx)

    return _SLOT.sub(sub, text)


def tidy(sentence: str) -> str:
    s = _SPACES.sub(" ", _A_AN.sub(r"\1n ", sentence.strip()))
    return s[:1].upper() + s[1:]


def subset(rng: random.Random, items: Sequence[str], lo: int, hi: int) -> list[str]:
    """A random subset of `items` of size lo..hi, in the items' own order (a fixed order is
    easier for a small model to learn than a shuffled one, and it loops less)."""
    k = rng.randint(lo, min(hi, len(items)))
    return [items[i] for i in sorted(rng.sample(range(len(items)), k))]


def distinct(make: Callable[[random.Random], str], rng: random.Random) -> Iterator[str]:
    """Distinct documents from `make`, in generation order, until `make` runs dry (a long
    run of repeats)."""
    seen: set[str] = set()
    misses = 0
    while misses < 2000:
        doc = make(rng)
        if doc in seen:
            misses += 1
            continue
        misses = 0
        seen.add(doc)
        yield doc


def take(docs: Iterator[str], n: int, what: str) -> list[str]:
    out = list(itertools.islice(docs, n))
    if len(out) < n:
        raise ValueError(f"only {len(out)} distinct {what} documents can be generated, not {n}")
    return out
