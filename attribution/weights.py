"""Per-response attribution weights: formula `royalty-weights/2`.

Inputs for one response:

- spans: each kept span (see `attribution.spans`) with its length L and the m distinct records
  it occurs in;
- influence (optional): a score per record (higher = more helpful); only positive scores count;
- the snapshot baseline: how many records each contributor has in the adapter's snapshot;
- which contributor owns each record named by the evidence.

Formula (exact rational arithmetic, so that the result is the same everywhere):

1. Span share of record r: ``s_r = sum over spans naming r of L / m``, normalised to sum 1.
   A span's length is split evenly over the records it occurs in: longer verbatim spans earn
   more, and shared text earns each holder less.
2. Influence share of record r: ``i_r = max(score_r, 0)``, normalised to sum 1.
3. Evidence share ``e_r = SPAN_MIX * s_r + (1 - SPAN_MIX) * i_r`` when both kinds of evidence
   exist, otherwise whichever exists. With no evidence at all (no span and no positive
   influence), every contributor gets the baseline share: their records / the snapshot's records.
4. Contributor evidence: ``e_c = sum of e_r over c's records``; c is an *evidence holder* when
   e_c > 0.
5. Cap: no contributor gets more than ``cap`` (default 1/2; never below 1/number of
   contributors in the snapshot, else the weights could not sum to 1). A holder above the cap
   is cut to it, and the excess goes, in this order:

   a. to the snapshot's contributors *without* evidence, in proportion to their records in
      the snapshot (what they would get if the response had no evidence), none above the cap
      (water-filling: whoever would pass the cap gets the cap, the rest share what is left);
   b. only if all of those are at the cap (or there are none), to the uncapped holders in
      proportion to their evidence, water-filled the same way.

   Holders below the cap therefore keep exactly their evidence share unless (b) is needed,
   and (b) scales them all by the same factor: among holders, more evidence never ends with
   less weight, and the only ties the cap makes are between contributors it holds at the cap.
   Why not (b) first, as `royalty-weights/1` did: with evidence 0.9 and 0.1 for two holders,
   scaling the minor holder up by the excess gave both 1/2: a tie that hides which record the
   response copied, and a 5x reward for the minor holder's evidence. Why not hand the excess to
   every uncapped contributor by records (holders included): a holder with less evidence but
   more records in the snapshot could then overtake one with more evidence. Contributors
   without evidence can end above a holder with little evidence (0.4 of the excess spread over
   a few of them, say, against a holder's 0.1): that is the baseline share the cap exists to
   pay out, not a ranking of evidence.
6. Integers: contributor weights are apportioned in parts per `DENOMINATOR` (10**6) with the
   largest-remainder method, so they sum to exactly `DENOMINATOR`; equal remainders go to
   the contributor with more evidence (step 4), then the smaller id, so that rounding never
   gives a holder with less evidence more parts either. Each contributor's integer
   weight is then apportioned the same way over its evidence records (in proportion to e_r)
   and, for the part that came from the baseline or from (b), a `pooled` entry for that
   contributor (ties: smaller record id first, the pooled entry last). Records plus pooled
   entries therefore also sum to exactly `DENOMINATOR`, and per contributor they sum to its
   weight.

A weight never rises above the cap by more than the 1 ppm rounding of step 6.
`royalty-weights/1` differed only in step 5: the excess went to the uncapped contributors in
proportion to their current share (holders first), and to the baseline only when no uncapped
contributor had a share. Stored weights keep the version they were computed with.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

WEIGHTS_VERSION = "royalty-weights/2"
DENOMINATOR = 1_000_000
SPAN_MIX = Fraction(1, 2)
DEFAULT_CAP = Fraction(1, 2)


class WeightsError(ValueError):
    """Evidence that cannot be turned into weights (unknown records, empty snapshot, ...)."""


class SpanEvidence(Protocol):
    """What the formula reads from a span (`attribution.spans.Span` satisfies it)."""

    @property
    def length(self) -> int: ...

    @property
    def record_ids(self) -> Sequence[int]: ...


@dataclass(frozen=True)
class ResponseWeights:
    version: str
    method: str  # "spans", "influence", "spans+influence" or "baseline"
    denominator: int
    contributors: tuple[tuple[int, int], ...]  # (contributor id, parts), ascending id
    records: tuple[tuple[int, int, int], ...]  # (record id, contributor id, parts), ascending
    pooled: tuple[tuple[int, int], ...]  # (contributor id, parts) not tied to a record

    def contributor_floats(self) -> dict[int, float]:
        """Display view; use the integer parts for money."""
        return {c: parts / self.denominator for c, parts in self.contributors}

    def record_floats(self) -> dict[int, float]:
        return {r: parts / self.denominator for r, _, parts in self.records}


def largest_remainder(
    shares: Mapping[int, Fraction], total: int, tie_order: Sequence[int] | None = None
) -> dict[int, int]:
    """Integer parts summing to exactly `total`, proportional to `shares` (which must be
    non-negative with a positive sum). Remainder units go to the largest fractional parts;
    ties by the position of the key in `tie_order` (default ascending key)."""
    if total < 0:
        raise WeightsError("total must be non-negative")
    if any(v < 0 for v in shares.values()):
        raise WeightsError("shares must be non-negative with a positive sum")
    # integer numerators over one common denominator: exact, and much cheaper than
    # Fraction arithmetic per key when a response spreads over thousands of contributors
    common = math.lcm(*(Fraction(v).denominator for v in shares.values()))
    numerators = {k: int(Fraction(v) * common) for k, v in shares.items()}
    whole = sum(numerators.values())
    if whole <= 0:
        raise WeightsError("shares must be non-negative with a positive sum")
    order = list(tie_order) if tie_order is not None else sorted(shares)
    rank = {key: pos for pos, key in enumerate(order)}
    parts: dict[int, int] = {}
    remainders: list[tuple[int, int, int]] = []
    for key, num in numerators.items():
        floor, remainder = divmod(num * total, whole)
        parts[key] = floor
        remainders.append((-remainder, rank[key], key))
    left = total - sum(parts.values())
    remainders.sort()
    for _, _, key in remainders[:left]:
        parts[key] += 1
    return parts


def _apportion(numerators: Mapping[int, int], total: int) -> dict[int, int]:
    """largest_remainder for integer shares (ties to the smaller key)."""
    whole = sum(numerators.values())
    parts: dict[int, int] = {}
    remainders: list[tuple[int, int]] = []
    for key, num in numerators.items():
        parts[key], remainder = divmod(num * total, whole)
        remainders.append((-remainder, key))
    remainders.sort()
    for _, key in remainders[: total - sum(parts.values())]:
        parts[key] += 1
    return parts


# The no-evidence case (most responses) in integers: the general path's Fraction arithmetic
# costs tens of milliseconds on snapshots with thousands of contributors. Same result
# (tests compare both).
_FAST_BASELINE = True


def _baseline_weights(
    snapshot: Mapping[int, int], cap: Fraction, denominator: int
) -> ResponseWeights:
    """Step 3 with no evidence and step 5's cap, in integers: contributors whose record share
    exceeds the cap get the cap; the rest share what is left in proportion to their records
    (water-filling, repeated until nobody is over)."""
    capped: set[int] = set()
    while True:
        left = 1 - cap * len(capped)
        uncapped_records = sum(n for c, n in snapshot.items() if c not in capped)
        # n / uncapped_records * left > cap, in integers
        lhs_scale = left.numerator * cap.denominator
        rhs = cap.numerator * uncapped_records * left.denominator
        over = {c for c, n in snapshot.items() if c not in capped and n * lhs_scale > rhs}
        if not over:
            break
        capped |= over
    # over the common denominator uncapped_records * left.denominator * cap.denominator
    numerators = {c: rhs if c in capped else n * lhs_scale for c, n in snapshot.items()}
    parts = _apportion({c: v for c, v in numerators.items() if v > 0}, denominator)
    contributors = tuple(sorted((c, p) for c, p in parts.items() if p > 0))
    return ResponseWeights(
        version=WEIGHTS_VERSION,
        method="baseline",
        denominator=denominator,
        contributors=contributors,
        records=(),
        pooled=contributors,
    )


def _normalise(scores: Mapping[int, Fraction]) -> dict[int, Fraction]:
    total = sum(scores.values(), Fraction(0))
    return {k: v / total for k, v in scores.items() if v > 0} if total > 0 else {}


def _fill(
    w: dict[int, Fraction],
    handed: dict[int, Fraction],
    excess: Fraction,
    receivers: Mapping[int, Fraction] | Mapping[int, int],
    cap: Fraction,
) -> Fraction:
    """Water-fill `excess` over `receivers` (contributor -> positive weight of its share):
    each gets excess in proportion to its weight, whoever passes the cap is cut back to it and
    the cut goes round again among the rest. Updates `w` and `handed` in place (a receiver
    starts from w.get(c, 0)); returns what nobody could take (receivers all at the cap)."""
    open_ = {c: v for c, v in receivers.items() if v > 0 and w.get(c, 0) < cap}
    while excess > 0 and open_:
        whole = Fraction(sum(open_.values()))
        # one Fraction per receiver from integer parts: thousands of pool contributors stay cheap
        scale_num, scale_den = (
            excess.numerator * whole.denominator,
            excess.denominator * whole.numerator,
        )
        for c, v in open_.items():
            share = Fraction(v)
            gift = Fraction(scale_num * share.numerator, scale_den * share.denominator)
            w[c] = w.get(c, Fraction(0)) + gift
            handed[c] = handed.get(c, Fraction(0)) + gift
        excess = Fraction(0)
        for c in [c for c in open_ if w[c] >= cap]:
            cut = w[c] - cap
            w[c] = cap
            handed[c] -= cut
            excess += cut
            del open_[c]
    return excess


def _apply_cap(
    evidence: dict[int, Fraction], baseline: Mapping[int, int], cap: Fraction
) -> tuple[dict[int, Fraction], dict[int, Fraction]]:
    """Step 5 (see the module docstring); returns (capped weights, the part of each weight
    that came from the excess rather than the contributor's own evidence)."""
    w = {c: min(v, cap) for c, v in evidence.items()}
    excess = sum((v - cap for v in evidence.values() if v > cap), Fraction(0))
    handed: dict[int, Fraction] = {}
    if excess <= 0:
        return w, handed
    # (a) contributors without evidence, by their records in the snapshot
    pool = {c: n for c, n in baseline.items() if n > 0 and evidence.get(c, 0) <= 0}
    excess = _fill(w, handed, excess, pool, cap)
    # (b) everyone without evidence is at the cap: the uncapped holders, by evidence
    holders = {c: v for c, v in evidence.items() if 0 < v < cap}
    excess = _fill(w, handed, excess, holders, cap)
    if excess > 0:  # cannot happen while cap >= 1/len(baseline); kept as a loud guard
        raise WeightsError("the cap leaves weight nobody can take")
    return w, handed


def compute_weights(
    *,
    spans: Iterable[SpanEvidence],
    record_contributors: Mapping[int, int],
    baseline: Mapping[int, int],
    influence: Mapping[int, float] | None = None,
    cap: Fraction = DEFAULT_CAP,
    denominator: int = DENOMINATOR,
) -> ResponseWeights:
    """Weights of one response under `WEIGHTS_VERSION` (see the module docstring).

    `baseline` maps each contributor of the snapshot to its number of records there;
    `record_contributors` maps every record the evidence names to its contributor.
    """
    snapshot = {int(c): int(n) for c, n in baseline.items() if int(n) > 0}
    if not snapshot:
        raise WeightsError("the snapshot has no records")
    if any(int(n) < 0 for n in baseline.values()):
        raise WeightsError("record counts must be non-negative")
    if not (0 < cap <= 1):
        raise WeightsError("cap must lie in (0, 1]")
    if denominator <= 0:
        raise WeightsError("denominator must be positive")

    span_scores: dict[int, Fraction] = {}
    for span in spans:
        rids = sorted({int(r) for r in span.record_ids})
        if not rids or span.length <= 0:
            continue
        each = Fraction(int(span.length), len(rids))
        for r in rids:
            span_scores[r] = span_scores.get(r, Fraction(0)) + each
    influence_scores: dict[int, Fraction] = {}
    for r, score in (influence or {}).items():
        value = Fraction(score)  # exact value of the float; raises on nan/inf
        if value > 0:
            influence_scores[int(r)] = value
    s_share, i_share = _normalise(span_scores), _normalise(influence_scores)

    if s_share and i_share:
        method = "spans+influence"
        evidence = {r: SPAN_MIX * s_share.get(r, Fraction(0)) for r in s_share.keys() | i_share}
        for r, v in i_share.items():
            evidence[r] += (1 - SPAN_MIX) * v
    elif s_share or i_share:
        method = "spans" if s_share else "influence"
        evidence = s_share or i_share
    else:
        method = "baseline"
        evidence = {}

    contributor_of: dict[int, int] = {}
    for r in evidence:
        if r not in record_contributors:
            raise WeightsError(f"record {r} has no known contributor")
        c = int(record_contributors[r])
        if c not in snapshot:
            raise WeightsError(f"record {r}'s contributor {c} has no records in the snapshot")
        contributor_of[r] = c

    effective_cap = max(cap, Fraction(1, len(snapshot)))
    if not evidence and _FAST_BASELINE:
        return _baseline_weights(snapshot, effective_cap, denominator)
    if evidence:
        shares: dict[int, Fraction] = {}
        for r, v in evidence.items():
            shares[contributor_of[r]] = shares.get(contributor_of[r], Fraction(0)) + v
    else:
        total_records = sum(snapshot.values())
        shares = {c: Fraction(n, total_records) for c, n in snapshot.items()}
    own_evidence = dict(shares) if evidence else {}
    shares, handed = _apply_cap(shares, snapshot, effective_cap)
    shares = {c: v for c, v in shares.items() if v > 0}

    # an exact tie in the rounding goes to more evidence first, then the smaller id, so that
    # rounding cannot put a holder with less evidence ahead either
    contributor_parts = largest_remainder(
        shares, denominator, tie_order=sorted(shares, key=lambda c: (-own_evidence.get(c, 0), c))
    )
    record_parts: list[tuple[int, int, int]] = []
    pooled: list[tuple[int, int]] = []
    records_of: dict[int, list[int]] = {}
    for r in sorted(evidence):
        records_of.setdefault(contributor_of[r], []).append(r)
    for c in sorted(contributor_parts):
        parts = contributor_parts[c]
        own = records_of.get(c, [])
        if not own:  # all of c's weight came from the pool
            if parts:
                pooled.append((c, parts))
            continue
        # c's weight = its own evidence (possibly cut by the cap) + what it was handed
        pool_share = handed.get(c, Fraction(0)) if own else shares[c]
        evidence_share = shares[c] - pool_share
        split: dict[int, Fraction] = {}
        if own and evidence_share > 0:
            own_total = sum((evidence[r] for r in own), Fraction(0))
            for r in own:
                split[r] = evidence_share * evidence[r] / own_total
        pool_key = min(own, default=0) - 1  # a key no record uses; last in the tie order
        if pool_share > 0:
            split[pool_key] = pool_share
        if parts == 0 or not split:
            continue
        if len(split) == 1:
            divided = dict.fromkeys(split, parts)
        else:
            divided = largest_remainder(split, parts, tie_order=[*own, pool_key])
        for r in own:
            if divided.get(r, 0):
                record_parts.append((r, c, divided[r]))
        if divided.get(pool_key, 0):
            pooled.append((c, divided[pool_key]))

    return ResponseWeights(
        version=WEIGHTS_VERSION,
        method=method,
        denominator=denominator,
        contributors=tuple(sorted((c, p) for c, p in contributor_parts.items() if p > 0)),
        records=tuple(sorted(record_parts)),
        pooled=tuple(pooled),
    )
