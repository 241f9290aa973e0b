"""Datanets: named, domain-specific datasets with an owner, curators, a licence, an
acceptance mode and a quality policy.

Acceptance modes: `open` (a record that passes every check is accepted at once) and `curated`
(it waits as `pending` until a curator approves or rejects it). The owner is always a
curator; curators decide pending records and publish snapshots. No one decides their own
record (`attribution.curation`).

Everything a new datanet is given is checked before it reaches the database
(`check_new_datanet`): text fields storable and bounded, account ids within `bigint`, every
policy threshold within its meaning. A bad value is `Invalid` (400), never a database error.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Literal

import msgspec

from attribution.errors import Invalid
from attribution.records import QualityPolicy
from attribution.textnorm import text_problem

AcceptanceMode = Literal["open", "curated"]
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
MAX_LICENCE_CHARS = 200
MAX_DESCRIPTION_CHARS = 10_000
MAX_CURATORS = 1000
MAX_ACCOUNT_ID = 2**63 - 1
"""Account ids are PostgreSQL `bigint`s."""
MAX_RECORD_BYTES = 16 << 20
MAX_RATE_PER_MINUTE = 1_000_000_000


def is_datanet_name(name: str) -> bool:
    """Whether `name` can name a datanet (anything else names none: a lookup is a 404)."""
    return _NAME.fullmatch(name) is not None


class Datanet(msgspec.Struct):
    id: int
    name: str
    owner_account_id: int
    licence: str
    acceptance_mode: AcceptanceMode
    description: str
    policy: QualityPolicy
    curators: list[int]
    created_at: str | None = None

    def is_curator(self, account_id: int | None) -> bool:
        return account_id is not None and (
            account_id == self.owner_account_id or account_id in self.curators
        )


class StoredRecord(msgspec.Struct, omit_defaults=True):
    """A contribution as its contributor (or a curator) sees it."""

    id: int
    datanet_id: int
    contributor_account_id: int
    kind: str
    status: str
    content_hash: str
    token_count: int
    created_at: str
    text: str | None = None
    prompt: str | None = None
    completion: str | None = None
    metadata: dict[str, object] | None = None
    reason: str | None = None
    detail: str | None = None
    duplicate_of: int | None = None
    near_duplicate_of: int | None = None


class Decision(msgspec.Struct):
    id: int
    record_id: int
    datanet_id: int
    curator_account_id: int
    approve: bool
    from_status: str
    to_status: str
    reason: str
    decided_at: str


def check_new_datanet(
    name: str,
    licence: str,
    mode: str,
    description: str = "",
    curators: Sequence[int] = (),
    policy: QualityPolicy | None = None,
) -> None:
    if not is_datanet_name(name):
        raise Invalid(
            "a datanet name is 1-63 characters of a-z, 0-9, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    for field, value, limit in (
        ("licence", licence, MAX_LICENCE_CHARS),
        ("description", description, MAX_DESCRIPTION_CHARS),
    ):
        problem = text_problem(value)
        if problem is not None:
            raise Invalid(f"the {field} {problem}")
        if len(value) > limit:
            raise Invalid(f"the {field} has {len(value)} characters, more than {limit}")
    if not licence.strip():
        raise Invalid("a datanet needs a licence")
    if mode not in ("open", "curated"):
        raise Invalid("acceptance mode is 'open' or 'curated'")
    if len(curators) > MAX_CURATORS:
        raise Invalid(f"a datanet has at most {MAX_CURATORS} curators")
    if any(not 1 <= c <= MAX_ACCOUNT_ID for c in curators):
        raise Invalid("a curator is an account id (a positive 64-bit integer)")
    if policy is not None:
        check_policy(policy)


def _bounded(name: str, value: float | None, lo: float, hi: float) -> None:
    if value is None:
        return
    # compare before isfinite: an int past float's range would overflow it
    if not lo <= value <= hi or (isinstance(value, float) and not math.isfinite(value)):
        raise Invalid(f"policy.{name} must be from {lo} to {hi}")


def check_policy(p: QualityPolicy) -> None:
    """Every threshold within its meaning: sizes and counts positive and bounded (a value
    past `bigint` would fail every later submission in the database), fractions in [0, 1]."""
    _bounded("max_bytes", p.max_bytes, 1, MAX_RECORD_BYTES)
    _bounded("min_chars", p.min_chars, 0, MAX_RECORD_BYTES)
    _bounded("min_distinct_token_ratio", p.min_distinct_token_ratio, 0, 1)
    _bounded("ratio_window", p.ratio_window, 1, MAX_RECORD_BYTES)
    _bounded("min_char_entropy_bits", p.min_char_entropy_bits, 0, 32)
    _bounded("max_non_letter_fraction", p.max_non_letter_fraction, 0, 1)
    _bounded("max_records_per_minute", p.max_records_per_minute, 0, MAX_RATE_PER_MINUTE)
    t = p.near_duplicate_threshold
    if not 0 < t <= 1 or not math.isfinite(t):
        raise Invalid("policy.near_duplicate_threshold must be above 0 and at most 1")
