"""The generated corpus is pinned byte for byte: the general corpus, each demo domain's
records and pretraining records, and the demo build's content hash over all of them.

Why: `build_demo_models` caches a build under `content_hash` (`factory.build`), a sha256
over FACTORY_VERSION, the configuration and every training text. A corpus that generates
one byte differently (a template, a word list, the order of a draw, a refactoring of
`factory/corpus/` that is not purely a move) gets a new hash, so every user's and every CI
run's cached demo models are rebuilt and the adapters retrained, many minutes each. These
tests make such a change fail loudly here first. If the change is intended, update the
golden values below in the same commit and say in its message that it rebuilds the caches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import pytest

from factory.build import FactoryConfig, content_hash, training_texts
from factory.corpus import DOMAINS, domain_records, general_corpus, pretraining_records

SEED = FactoryConfig().seed

REBUILDS = (
    "Changing the generated corpus changes the demo build's content hash, which rebuilds "
    "every cached demo model and retrains every adapter (minutes, for every user and CI run). "
    "If that is intended, update the golden values in tests/unit/test_corpus.py; if not, "
    "undo the change under factory/corpus/."
)

GENERAL = "fe569da8341e23a8404a3ed2511df39e0762897c106df31f26a7dad418eef0bc"
"""general_corpus(1234, 20000): the default build's general pretraining documents."""

DOMAIN_RECORDS = {
    "recipes": "09050c31ec8d9b8c835b30ea622801ece8bced9c29cfdf268502174d2aa45c0a",
    "astronomy": "253fbd4077f97cf74e3a4f7df68bf1efb8c3417f052da741970450c7f1be1941",
    "legal": "bca259698bc15b454c97345f779bd3db457d374bf197906e88d2aebd09a56ac9",
}
"""domain_records(domain, 1234, 3000): the default build's demo datanet records."""

PRETRAINING_RECORDS = {
    "recipes": "2c66d460e658870118ad1458899df6bd47d4fc1430efeb490ddd63e1f5c5681b",
    "astronomy": "04a59867757de1bbb3c03e3af4218cc645ddbbd57e272cf2cf361c70babaeebe",
    "legal": "e719e3a079d500730eedc0a84739546f388fdeeed47acce93706302028d7ff94",
}
"""pretraining_records(domain, 1234, 1000): the domain's share of the pretraining mix."""

CONTENT_HASHES = {
    "default": "0a7401bd54e727b28bc93c4acdb31d086e303c3ba51d5f2aa124c298e7447dcd",
    "tiny": "b9ad8da0d36d0e77cecafd878fe2c0b61dfc3d08bf4757e0f33d5a78e256b428",
}
"""content_hash of FactoryConfig() (what `royalty models build` and `royalty up` build) and
of FactoryConfig.tiny() (what the tests build)."""


def _digest(docs: Iterable[str]) -> str:
    h = hashlib.sha256()
    for doc in docs:
        h.update(doc.encode())
        h.update(b"\x1e")
    return h.hexdigest()


def test_the_golden_values_cover_every_domain() -> None:
    assert set(DOMAIN_RECORDS) == set(PRETRAINING_RECORDS) == set(DOMAINS)


def test_general_corpus_is_unchanged() -> None:
    assert _digest(general_corpus(SEED, 20000)) == GENERAL, f"the general corpus. {REBUILDS}"


@pytest.mark.parametrize("domain", DOMAINS)
def test_domain_records_are_unchanged(domain: str) -> None:
    got = _digest(domain_records(domain, SEED, 3000))
    assert got == DOMAIN_RECORDS[domain], f"the {domain} records. {REBUILDS}"
    got = _digest(pretraining_records(domain, SEED, 1000))
    assert got == PRETRAINING_RECORDS[domain], f"the {domain} pretraining records. {REBUILDS}"


@pytest.mark.parametrize("name", sorted(CONTENT_HASHES))
def test_demo_build_content_hash_is_unchanged(name: str) -> None:
    cfg = FactoryConfig() if name == "default" else FactoryConfig.tiny()
    assert content_hash(cfg, training_texts(cfg)) == CONTENT_HASHES[name], (
        f"the {name} build's content hash (corpus, FactoryConfig or FACTORY_VERSION). {REBUILDS}"
    )
