"""The kinds of failure every package's domain errors are made of.

A package raises its own exceptions (`attribution.errors.NotFound`, `serving.engine.
EngineUnavailable`, `metering.budgets.store.InsufficientCredit`...) and makes each a subclass
of one kind below, so that whoever faces a client maps kinds, not every class of every
package: the gateway's one table (`gateway.error_table`) turns a kind into an HTTP status and
OpenAI's error `type` and `code`, and a CLI may turn it into an exit status.

Nothing here knows HTTP. A kind says what went wrong from the caller's side:

- `Invalid`: what the caller sent cannot be accepted as it is.
- `NotFound`: what the caller named does not exist (or is not theirs to see).
- `Forbidden`: it exists, and the caller may not do this to it.
- `Conflict`: the request contradicts the current state (a duplicate, a closed month).
- `RateLimited`: too much, too fast; the same request later will do.
- `QuotaExceeded`: the caller's prepaid credit cannot cover it.
- `Unavailable`: a dependency is down, full or not ready; retrying later may work.

Exceptions that only say "this is a bug" or "retry the batch" (ledger invariants, storage
failures that a queue retries) stay outside the tree: a client that meets one gets an
internal error.
"""

from __future__ import annotations


class DomainError(Exception):
    """A failure the caller can be told about. Subclass a kind below, not this."""


class Invalid(DomainError):
    """What the caller sent cannot be accepted as it is."""


class NotFound(DomainError):
    """What the caller named does not exist, or is not theirs to see."""


class Forbidden(DomainError):
    """The caller may not do this to something that exists."""


class Conflict(DomainError):
    """The request contradicts the current state."""


class RateLimited(DomainError):
    """Too many requests for now; the same request later will do."""


class QuotaExceeded(DomainError):
    """The caller's prepaid credit or quota cannot cover the request."""


class Unavailable(DomainError):
    """A dependency is down, full or not ready; retrying later may work."""


__all__ = [
    "Conflict",
    "DomainError",
    "Forbidden",
    "Invalid",
    "NotFound",
    "QuotaExceeded",
    "RateLimited",
    "Unavailable",
]
