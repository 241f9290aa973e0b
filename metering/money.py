"""Money is integers: micro-credits (1 credit = 1,000,000 micro-credits).

Credits typed by people ("12.5") are parsed exactly as decimal strings; a value with more
than six decimal places, a negative or non-finite value, or anything that is not a plain
decimal number is refused rather than rounded. No float ever touches an amount.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal, InvalidOperation

MICROS_PER_CREDIT = 1_000_000
_DECIMAL = re.compile(r"^\s*\+?(\d+)(?:\.(\d*))?\s*$")


class MoneyError(ValueError):
    """An amount that cannot be represented exactly in micro-credits."""


def parse_credits(text: str, *, allow_zero: bool = False) -> int:
    """`"12.5"` -> 12_500_000 micro-credits; exact or MoneyError."""
    m = _DECIMAL.match(text) if isinstance(text, str) else None
    if m is None:
        raise MoneyError(f"{text!r} is not a non-negative decimal number of credits")
    whole, frac = m.group(1), (m.group(2) or "")
    frac = frac.rstrip("0")
    if len(frac) > 6:
        raise MoneyError(f"{text!r} has more than 6 decimal places (1 micro-credit = 0.000001)")
    try:
        micros = int(whole) * MICROS_PER_CREDIT + int(frac.ljust(6, "0") or "0")
    except (ValueError, InvalidOperation) as e:  # pragma: no cover - the regex admits digits only
        raise MoneyError(str(e)) from None
    if micros == 0 and not allow_zero:
        raise MoneyError("the amount must be positive")
    if micros >= 2**62:
        raise MoneyError(f"{text!r} is too large")
    return micros


def format_micros(micros: int) -> str:
    """12_500_000 -> "12.500000" (exact; negative amounts keep their sign)."""
    sign = "-" if micros < 0 else ""
    q, r = divmod(abs(micros), MICROS_PER_CREDIT)
    return f"{sign}{q}.{r:06d}"


def as_decimal(micros: int) -> Decimal:
    """For display only (reports); exact."""
    return Decimal(micros).scaleb(-6)


def month_start(ts: dt.datetime | dt.date) -> dt.date:
    """The first day of the (UTC) month `ts` falls in."""
    if isinstance(ts, dt.datetime):
        ts = ts.astimezone(dt.UTC) if ts.tzinfo else ts
    return dt.date(ts.year, ts.month, 1)


def next_month(month: dt.date) -> dt.date:
    return dt.date(month.year + (month.month == 12), month.month % 12 + 1, 1)


def parse_month(text: str) -> dt.date:
    """`"2026-11"` -> date(2026, 11, 1); ValueError otherwise."""
    m = re.fullmatch(r"(\d{4})-(\d{2})", text.strip())
    if m is None or not 1 <= int(m.group(2)) <= 12:
        raise ValueError(f"{text!r} is not a month in the form YYYY-MM")
    return dt.date(int(m.group(1)), int(m.group(2)), 1)


def month_label(month: dt.date) -> str:
    return f"{month.year:04d}-{month.month:02d}"
