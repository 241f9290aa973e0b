"""The answer for one submitted record (`SubmissionResult`), on its own so that the records'
rules (`attribution.records`) and the exceptions that carry answers (`attribution.errors`)
both depend on it, and not on each other."""

from __future__ import annotations

from typing import Literal

import msgspec

Status = Literal["accepted", "pending", "rejected", "flagged"]


class SubmissionResult(msgspec.Struct, omit_defaults=True, gc=False):
    """The answer for one submitted record. (`gc=False` on this and the other per-record
    structs: they never form reference cycles, and a million of them tracked by the cyclic
    garbage collector made every full collection of a large import slower.)"""

    index: int
    status: Status
    record_id: int | None = None
    reason: str | None = None
    detail: str | None = None
    duplicate_of: int | None = None
    near_duplicate_of: int | None = None
    content_hash: str | None = None
