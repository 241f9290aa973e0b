"""The general corpus: everyday-English documents on many topics (the topic tables are in
`general_life` and `general_interests`), a few of them laid out as a chat turn, for
pretraining the base model."""

from __future__ import annotations

import random
from collections.abc import Sequence

from factory.corpus.general_interests import INTEREST_TOPICS
from factory.corpus.general_life import LIFE_TOPICS
from factory.corpus.grammar import distinct, expand, subset, take, tidy
from factory.corpus.prompts import chat_layout

__all__ = ["general_corpus"]

_NAMES = (
    "Anna", "Ben", "Clara", "David", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas",
    "Kofi", "Lena", "Maya", "Noah", "Omar", "Priya", "Rosa", "Sam", "Tara", "Victor", "Wen",
    "Yusuf", "Zoe", "Lucas", "Mira", "Tom", "Aisha", "Leo", "Nina", "Ravi",
)  # fmt: skip

_COMMON: dict[str, tuple[str, ...]] = {
    "day": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "when": (
        "on {day} morning",
        "last weekend",
        "early in the morning",
        "after lunch",
        "in the evening",
        "on a quiet afternoon",
        "yesterday",
        "at the end of the day",
        "on {day}",
        "before breakfast",
        "late at night",
        "during the holidays",
    ),
    "friend": (
        "an old friend",
        "a neighbour",
        "a cousin",
        "a colleague",
        "two friends from school",
        "a younger brother",
        "an older sister",
        "a friend from the running club",
    ),
    "feeling": (
        "happy",
        "tired but pleased",
        "calm",
        "a little nervous",
        "proud",
        "relaxed",
        "surprised",
        "grateful",
    ),
    "town_place": (
        "the market",
        "the library",
        "the park",
        "the station",
        "the bakery",
        "the museum",
        "the river path",
        "the town square",
        "the community centre",
        "the old bridge",
    ),
}

# The topics' order is part of the corpus: a document's topic is drawn by position.
_TOPICS: dict[str, dict[str, tuple[str, ...]]] = {**LIFE_TOPICS, **INTEREST_TOPICS}

_GENERAL_CLOSERS = (
    "{name} felt {feeling} afterwards.",
    "It was a good day.",
    "Nobody wanted it to end.",
    "{name} said it was the best part of the week.",
    "They plan to do it again {when}.",
    "Later, {name} told {friend} all about it.",
)


def _general_doc(rng: random.Random) -> str:
    topic = rng.choice(tuple(_TOPICS))
    rules: dict[str, Sequence[str]] = {**_COMMON, **_TOPICS[topic]}
    ctx = {"name": rng.choice(_NAMES)}
    k = rng.choice((1, 2, 2, 3, 3, 4))
    templates = subset(rng, rules["s"], k, k)
    if rng.random() < 0.2:
        templates.append(rng.choice(_GENERAL_CLOSERS))
    text = " ".join(tidy(expand(rules, t, rng, ctx)) for t in templates)
    if rng.random() < 0.08:
        return chat_layout(rng.choice(rules["q"]), text)
    return text


def general_corpus(seed: int, n: int) -> list[str]:
    """`n` distinct everyday-English documents (1-5 sentences each) across many topics."""
    return take(distinct(_general_doc, random.Random(f"royalty/general/{seed}")), n, "general")
