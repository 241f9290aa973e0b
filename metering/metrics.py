"""Prometheus metric objects for the money pipeline: usage log and shipper, credits, holds,
penalties, the ledger's balance check, and the attribution stages that feed the splits.

A leaf module (only `prometheus_client`): `metering`, `attribution` and the workers import it
to record their own events without importing `gateway`, whose `/metrics` endpoint exposes
everything. Labels are bounded by construction: a payee kind outside `PAYEE_KINDS` and an
attribution stage outside `ATTRIBUTION_STAGES` are recorded as "other", so no caller can
create a label value per account, record or request.

The small functions below are the API; use them rather than the objects so the label rules
hold. Amounts are integer micro-credits, as everywhere in the ledger.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# The ledger's kinds (metering.ledger.book), plus the older names dashboards may still use.
PAYEE_KINDS = frozenset({
    "contributor", "adapter_owner", "operator", "treasury", "withheld", "consumer",
    "adapter_builder", "datanet_owner", "platform",
})  # fmt: skip
ATTRIBUTION_STAGES = frozenset({"span", "influence", "weights"})

# --- usage capture (gateway process: usage_log.py, shipper.py) ------------------------------
USAGE_LOG_PENDING = Gauge(
    "royalty_usage_log_pending_records",
    "Usage records durable in the local log and not yet shipped to Postgres.",
    multiprocess_mode="livesum",
)
USAGE_LOG_OLDEST_AGE = Gauge(
    "royalty_usage_log_oldest_unshipped_age_seconds",
    "Age of the oldest usage record not yet shipped (0 when none is pending).",
    multiprocess_mode="livemax",
)
USAGE_SHIPPED = Counter(
    "royalty_usage_shipped_records_total",
    "Usage records whose batch committed to Postgres (replays included).",
)
USAGE_SHIP_FAILURES = Counter(
    "royalty_usage_ship_failures_total",
    "Shipping batches that failed and will be retried.",
)
USAGE_LOG_HEALTHY = Gauge(
    "royalty_usage_log_healthy",
    "1 while the usage log takes records (disk has room, last write worked); 0 while the "
    "gateway refuses requests because it does not.",
    multiprocess_mode="livemin",
)
USAGE_RECORDED_VIA_STORE = Counter(
    "royalty_usage_recorded_via_store_total",
    "Usage records the local log refused (full disk, failed fsync) and that were written "
    "straight to Postgres instead.",
)
USAGE_UNRECORDED = Gauge(
    "royalty_usage_unrecorded_records",
    "Usage records neither the local log nor Postgres took yet, held in the gateway's "
    "memory and retried every second (lost if the process dies: page someone).",
    multiprocess_mode="livesum",
)

# --- credits, holds and penalties (metering workers) ----------------------------------------
CREDITS_MINTED = Counter(
    "royalty_credits_minted_microcredits_total",
    "Micro-credits credited by the ledger, by payee kind: consumer credit sold by top-ups, "
    "and what posted usage credits to contributors, adapter owners, operator, treasury and "
    "withheld.",
    ["payee_kind"],
)
HOLDS_PLACED = Counter(
    "royalty_holds_placed_total",
    "Anti-gaming holds placed on credits.",
)
HOLDS_RELEASED = Counter(
    "royalty_holds_released_total",
    "Anti-gaming holds released (credits paid out after review).",
)
HELD_MICROCREDITS = Gauge(
    "royalty_held_microcredits",
    "Micro-credits currently withheld by open holds.",
    multiprocess_mode="livemax",
)
BUDGET_HOLDS_EXPIRED = Counter(
    "royalty_budget_holds_expired_total",
    "Credit reservations released by the sweeper because they expired with no usage event "
    "to post (their request never recorded usage: a killed gateway, a failed usage write).",
)
BUDGET_HOLDS_EXPIRED_MICROCREDITS = Counter(
    "royalty_budget_holds_expired_microcredits_total",
    "Micro-credits those expired reservations held.",
)
PENALTIES = Counter(
    "royalty_penalties_total",
    "Penalties applied to payees (clawbacks for gaming, abuse).",
)
PENALTY_MICROCREDITS = Counter(
    "royalty_penalty_microcredits_total",
    "Micro-credits taken back by penalties.",
)
LEDGER_IMBALANCE = Gauge(
    "royalty_ledger_imbalance_microcredits",
    "Sum of all ledger entries (must be 0) as last checked by the metering worker.",
    multiprocess_mode="livemax",
)
LEDGER_CHECK_TIMESTAMP = Gauge(
    "royalty_ledger_last_check_timestamp_seconds",
    "Unix time of the metering worker's last ledger balance check.",
    multiprocess_mode="livemax",
)

# --- attribution (inline span trace, influence worker) --------------------------------------
ATTRIBUTION_SECONDS = Histogram(
    "royalty_attribution_seconds",
    "Time to attribute one response, by stage.",
    ["stage"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0),
)
ATTRIBUTION_QUEUE_DEPTH = Gauge(
    "royalty_attribution_queue_depth",
    "Responses waiting for asynchronous attribution (influence).",
    # Every worker reports the whole queue's depth: the max, not the sum, is the depth.
    multiprocess_mode="livemax",
)


def usage_log_state(pending: int, oldest_age_s: float) -> None:
    USAGE_LOG_PENDING.set(pending)
    USAGE_LOG_OLDEST_AGE.set(oldest_age_s if pending else 0.0)


def usage_log_health(healthy: bool) -> None:
    USAGE_LOG_HEALTHY.set(1 if healthy else 0)


def usage_recorded_via_store() -> None:
    USAGE_RECORDED_VIA_STORE.inc()


def usage_unrecorded(held: int) -> None:
    USAGE_UNRECORDED.set(held)


def usage_shipped(records: int) -> None:
    USAGE_SHIPPED.inc(records)


def usage_ship_failed() -> None:
    USAGE_SHIP_FAILURES.inc()


def credits_minted(payee_kind: str, microcredits: int) -> None:
    if microcredits < 0:
        raise ValueError("credits minted cannot be negative; reversals are penalties")
    kind = payee_kind if payee_kind in PAYEE_KINDS else "other"
    CREDITS_MINTED.labels(kind).inc(microcredits)


def hold_placed(held_total_microcredits: int) -> None:
    HOLDS_PLACED.inc()
    HELD_MICROCREDITS.set(held_total_microcredits)


def hold_released(held_total_microcredits: int) -> None:
    HOLDS_RELEASED.inc()
    HELD_MICROCREDITS.set(held_total_microcredits)


def budget_holds_expired(holds: int, microcredits: int) -> None:
    BUDGET_HOLDS_EXPIRED.inc(holds)
    BUDGET_HOLDS_EXPIRED_MICROCREDITS.inc(microcredits)


def penalty_applied(microcredits: int) -> None:
    PENALTIES.inc()
    PENALTY_MICROCREDITS.inc(abs(microcredits))


def ledger_checked(imbalance_microcredits: int, at_unix_s: float) -> None:
    LEDGER_IMBALANCE.set(imbalance_microcredits)
    LEDGER_CHECK_TIMESTAMP.set(at_unix_s)


def attribution_observed(stage: str, seconds: float) -> None:
    ATTRIBUTION_SECONDS.labels(stage if stage in ATTRIBUTION_STAGES else "other").observe(seconds)


def attribution_queue(depth: int) -> None:
    ATTRIBUTION_QUEUE_DEPTH.set(depth)
