"""Domain exceptions of the attribution package; the gateway maps them to HTTP statuses
(`status_code` is the suggested one)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from attribution.records import SubmissionResult


class DatanetError(Exception):
    status_code = 400


class NotFound(DatanetError):
    status_code = 404


class Forbidden(DatanetError):
    status_code = 403


class Conflict(DatanetError):
    status_code = 409


class Invalid(DatanetError):
    status_code = 400


class Rejected(DatanetError):
    """A submitted record was rejected; `result` holds the per-record answer (reason, detail,
    and the id of the record it duplicates, if any)."""

    def __init__(self, result: SubmissionResult) -> None:
        super().__init__(f"{result.reason}: {result.detail}")
        self.result = result


class DuplicateRecord(Rejected, Conflict):
    status_code = 409


class RecordRejected(Rejected, Invalid):
    """Validation or quality rejection; 413 when the record is too large."""

    def __init__(self, result: SubmissionResult) -> None:
        super().__init__(result)
        self.status_code = 413 if result.reason == "too_large" else 400
        self.kind: str | None = None
        """'text' or 'pair' when the record parsed (a quality rejection), else None."""


class RateLimited(Rejected):
    status_code = 429


class BulkRejected(Invalid):
    """An all-or-nothing bulk import had at least one rejected record; nothing was written.
    `results` is the per-record answer as it would have been."""

    def __init__(self, results: list[SubmissionResult]) -> None:
        bad = sum(1 for r in results if r.status == "rejected")
        super().__init__(f"{bad} of {len(results)} records rejected; nothing was written")
        self.results = results
