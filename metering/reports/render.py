"""Monthly reports as CSV, HTML (inline SVG charts) and PDF (reportlab).

Amounts are printed exactly (`format_micros`); only chart bar heights are scaled, and those
are drawn, not paid. Every report names its month, whether it is closed, and the Merkle root.
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Sequence

from metering.money import format_micros
from metering.reports.data import OperatorReport, PayeeReport

# --- CSV ------------------------------------------------------------------------------------
CSV_HEADER = ("section", "name", "detail", "amount_credits", "events")


def operator_csv(r: OperatorReport) -> str:
    rows: list[tuple[object, ...]] = [
        ("summary", "month", r.label, "", ""),
        ("summary", "closed", str(r.closed).lower(), "", ""),
        ("summary", "merkle_root", r.root_hex or "", "", ""),
        ("summary", "revenue", "", format_micros(r.charges), r.events),
        ("summary", "payouts", "", format_micros(r.payouts), ""),
        ("summary", "fees", "", format_micros(r.fees), ""),
        ("summary", "withheld", "", format_micros(r.withheld), ""),
    ]
    rows += [("daily_revenue", d.isoformat(), "", format_micros(a), "") for d, a in r.daily_revenue]
    rows += [("adapter", n, "", format_micros(a), e) for n, a, e in r.top_adapters]
    rows += [("payee", p, k, format_micros(a), "") for p, k, a in r.payees]
    rows += [("flagged", p, why, format_micros(a), "") for p, why, a in r.flagged]
    return _csv(rows)


def payee_csv(r: PayeeReport) -> str:
    rows: list[tuple[object, ...]] = [
        ("summary", "account", r.account, "", ""),
        ("summary", "month", r.label, "", ""),
        ("summary", "closed", str(r.closed).lower(), "", ""),
        ("summary", "merkle_root", r.root_hex or "", "", ""),
        ("summary", "earnings", "", format_micros(r.total), ""),
    ]
    rows += [("daily_earnings", d.isoformat(), "", format_micros(a), "") for d, a in r.daily]
    rows += [("adapter", n, "", format_micros(a), e) for n, a, e in r.by_adapter]
    rows += [("withheld", p, why, format_micros(a), "") for p, why, a in r.withheld]
    rows += [
        ("statement", s.payee, f"leaf {s.leaf_index}", format_micros(s.amount), "")
        for s in r.statements
    ]
    return _csv(rows)


def _csv(rows: Sequence[tuple[object, ...]]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_HEADER)
    w.writerows(rows)
    return out.getvalue()


# --- HTML -----------------------------------------------------------------------------------
def svg_bars(
    title: str, items: Sequence[tuple[str, int]], width: int = 720, height: int = 220
) -> str:
    """A bar chart as inline SVG; heights scaled to the largest value (integers only)."""
    e = html.escape
    top = max((v for _, v in items), default=0) or 1
    n = max(len(items), 1)
    plot_h = height - 50
    bar_w = max((width - 40) // n, 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{e(title)}"><title>{e(title)}</title>',
        f'<text x="4" y="14" font-size="13" font-family="sans-serif">{e(title)} '
        f"(max {format_micros(top)} credits)</text>",
    ]
    for i, (label, v) in enumerate(items):
        h = max(v, 0) * plot_h // top
        x = 30 + i * bar_w
        parts.append(
            f'<rect x="{x}" y="{20 + plot_h - h}" width="{max(bar_w - 2, 1)}" height="{h}" '
            f'fill="#3b6ea5"><title>{e(label)}: {format_micros(v)}</title></rect>'
        )
        if n <= 16 or i % max(n // 10, 1) == 0:
            parts.append(
                f'<text x="{x}" y="{height - 16}" font-size="9" font-family="sans-serif">{e(label[:14])}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def _table(head: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    e = html.escape
    h = "".join(f"<th>{e(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = (
    "<style>body{font-family:sans-serif;max-width:60rem;margin:2rem auto;color:#222}"
    "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.25rem .5rem;"
    "text-align:left}code{word-break:break-all}</style>"
)


def _page(title: str, body: str) -> str:
    return f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>{_STYLE}</head><body>{body}</body></html>\n'


def _status(closed: bool, root: str | None) -> str:
    if closed:
        return f"<p>Closed. Merkle root <code>{root}</code> (verify with docs/payouts.md).</p>"
    return "<p><strong>Provisional:</strong> this month is not closed yet.</p>"


def operator_html(r: OperatorReport) -> str:
    body = [
        f"<h1>Royalty operator report {r.label}</h1>",
        _status(r.closed, r.root_hex),
        _table(
            ["revenue", "payouts", "fees", "withheld", "events"],
            [
                [
                    format_micros(r.charges),
                    format_micros(r.payouts),
                    format_micros(r.fees),
                    format_micros(r.withheld),
                    r.events,
                ]
            ],
        ),
        svg_bars("Daily revenue", [(d.strftime("%d"), a) for d, a in r.daily_revenue]),
        svg_bars("Top adapters by revenue", [(n, a) for n, a, _ in r.top_adapters]),
        "<h2>Top adapters</h2>",
        _table(
            ["adapter", "revenue", "events"],
            [[n, format_micros(a), e] for n, a, e in r.top_adapters],
        ),
        "<h2>Payees</h2>",
        _table(["payee", "kind", "amount"], [[p, k, format_micros(a)] for p, k, a in r.payees]),
        "<h2>Flagged activity (withheld)</h2>",
        _table(
            ["payee", "reason", "withheld"], [[p, w, format_micros(a)] for p, w, a in r.flagged]
        ),
    ]
    return _page(f"Royalty operator report {r.label}", "".join(body))


def payee_html(r: PayeeReport) -> str:
    body = [
        f"<h1>Royalty earnings of {html.escape(r.account)}, {r.label}</h1>",
        _status(r.closed, r.root_hex),
        f"<p>Earnings this month: <strong>{format_micros(r.total)}</strong> credits.</p>",
        svg_bars("Daily earnings", [(d.strftime("%d"), a) for d, a in r.daily]),
        svg_bars("Earnings by adapter", [(n, a) for n, a, _ in r.by_adapter]),
        _table(
            ["adapter", "earned", "events"], [[n, format_micros(a), e] for n, a, e in r.by_adapter]
        ),
        "<h2>Withheld, and why</h2>",
        _table(["payee", "reason", "amount"], [[p, w, format_micros(a)] for p, w, a in r.withheld]),
        "<h2>Statement</h2>",
        _table(
            ["payee", "amount", "leaf", "proof"],
            [
                [
                    s.payee,
                    format_micros(s.amount),
                    s.leaf_index,
                    " ".join(f"{a}:{h}" for a, h in s.proof),
                ]
                for s in r.statements
            ],
        ),
    ]
    return _page(f"Royalty earnings {r.account} {r.label}", "".join(body))


def render_text(report: OperatorReport | PayeeReport, fmt: str) -> str:
    if fmt == "csv":
        return operator_csv(report) if isinstance(report, OperatorReport) else payee_csv(report)
    if fmt == "html":
        return operator_html(report) if isinstance(report, OperatorReport) else payee_html(report)
    raise ValueError(f"unknown text format {fmt!r}")
