"""Datanets: named, domain-specific datasets with an owner, curators, a licence, an
acceptance mode and a quality policy.

Acceptance modes: `open` (a record that passes every check is accepted at once) and `curated`
(it waits as `pending` until a curator approves or rejects it). The owner is always a
curator; curators decide pending records and publish snapshots.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

from attribution.errors import Invalid
from attribution.records import QualityPolicy

AcceptanceMode = Literal["open", "curated"]
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


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


def check_new_datanet(name: str, licence: str, mode: str) -> None:
    if not _NAME.match(name):
        raise Invalid(
            "a datanet name is 1-63 characters of a-z, 0-9, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if not licence.strip():
        raise Invalid("a datanet needs a licence")
    if mode not in ("open", "curated"):
        raise Invalid("acceptance mode is 'open' or 'curated'")
