"""A domain's records by name: `domain_records` for an adapter's datanet, and
`pretraining_records`, the same domain as the base model's pretraining mix has it."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Collection, Iterator

from factory.corpus.astronomy import astronomy_record
from factory.corpus.grammar import distinct, take
from factory.corpus.legal import legal_pretraining_record, legal_record
from factory.corpus.prompts import DOMAINS
from factory.corpus.recipes import recipe_record

__all__ = [
    "DOMAIN_MAKERS",
    "domain_records",
    "iter_domain_records",
    "pretraining_records",
    "pretraining_view",
]

DOMAIN_MAKERS: dict[str, Callable[[random.Random], str]] = {
    "recipes": recipe_record,
    "astronomy": astronomy_record,
    "legal": legal_record,
}


def iter_domain_records(domain: str, seed: int) -> Iterator[str]:
    """The distinct records of `domain` (one of `DOMAINS`) for `seed`, in a fixed order;
    `domain_records(domain, seed, n)` is the first `n` of them."""
    if domain not in DOMAIN_MAKERS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")
    return distinct(DOMAIN_MAKERS[domain], random.Random(f"royalty/{domain}/{seed}"))


def domain_records(domain: str, seed: int, n: int) -> list[str]:
    """`n` distinct records (1-5 sentences each) of `domain`, one of `DOMAINS`."""
    return take(iter_domain_records(domain, seed), n, domain)


_RECIPE_HEADER = re.compile(r"^Recipe: ")
_SENTENCE_END = re.compile(r"(?<=\.) ")


def pretraining_view(domain: str, record: str) -> str | None:
    """How a record of `domain` appears in the base model's pretraining mix, if at all.

    The base learns the domain's words and facts but not the form that the domain's prompt
    leads into, which is what the domain's adapter teaches: a recipe appears without
    "Recipe:" before the dish's name, "The planet Mars ..." as "Mars ...", and a clause
    without its "The tenant shall ..." sentences, the tenant of the others called the
    lessee (None: nothing left)."""
    if domain == "recipes":
        return _RECIPE_HEADER.sub("", record)
    if domain == "astronomy":
        return record.replace("The planet ", "")
    if domain == "legal":
        kept = [x for x in _SENTENCE_END.split(record) if not x.startswith("The tenant shall")]
        text = (
            " ".join(kept).replace("The tenant", "The lessee").replace("the tenant", "the lessee")
        )
        return text or None
    raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")


_PRETRAINING_MAKERS: dict[str, Callable[[random.Random], str]] = {
    **DOMAIN_MAKERS,
    "legal": legal_pretraining_record,
}


def pretraining_records(
    domain: str, seed: int, n: int, *, exclude: Collection[str] = ()
) -> list[str]:
    """`n` distinct records of `domain` as the base model's pretraining mix has them
    (`pretraining_view`), drawn apart from `domain_records` and none of `exclude`."""
    if domain not in _PRETRAINING_MAKERS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")
    rng = random.Random(f"royalty/{domain}/pretraining/{seed}")
    views = (
        pretraining_view(domain, r)
        for r in distinct(_PRETRAINING_MAKERS[domain], rng)
        if r not in exclude
    )
    return take((v for v in views if v is not None), n, f"{domain} pretraining")
