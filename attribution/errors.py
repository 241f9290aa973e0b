"""Domain exceptions of the attribution package, each of one kind of `core.errors` (the
gateway's error table maps the kinds to HTTP)."""

from __future__ import annotations

from attribution.results import SubmissionResult
from core import errors as kinds


class DatanetError(kinds.DomainError):
    """Any failure of the attribution package a caller can be told about."""


class NotFound(DatanetError, kinds.NotFound):
    pass


class Forbidden(DatanetError, kinds.Forbidden):
    pass


class Conflict(DatanetError, kinds.Conflict):
    pass


class Invalid(DatanetError, kinds.Invalid):
    pass


class Rejected(DatanetError):
    """A submitted record was rejected; `result` holds the per-record answer (reason, detail,
    and the id of the record it duplicates, if any)."""

    def __init__(self, result: SubmissionResult) -> None:
        super().__init__(f"{result.reason}: {result.detail}")
        self.result = result


class DuplicateRecord(Rejected, Conflict):
    pass


class RecordRejected(Rejected, Invalid):
    """Validation or quality rejection (`too_large` when the record is too large)."""

    def __init__(self, result: SubmissionResult) -> None:
        super().__init__(result)
        self.kind: str | None = None
        """'text' or 'pair' when the record parsed (a quality rejection), else None."""


class RateLimited(Rejected, kinds.RateLimited):
    pass


class BulkRejected(Invalid):
    """An all-or-nothing bulk import had at least one rejected record; nothing was written.
    `results` is the per-record answer as it would have been."""

    def __init__(self, results: list[SubmissionResult]) -> None:
        bad = sum(1 for r in results if r.status == "rejected")
        super().__init__(f"{bad} of {len(results)} records rejected; nothing was written")
        self.results = results
