"""Monthly reports as PDF (reportlab, pure Python). Fixed page structure, so a reader (and a
test) knows what is where:

operator report: 1 summary and daily revenue chart, 2 top adapters (chart and table),
                 3 payees, 4 flagged activity
payee report:    1 summary and daily earnings chart, 2 earnings by adapter, 3 withheld
                 amounts with reasons, and the statement with its Merkle proof
Long tables flow onto extra pages; every section starts a new page.
"""

from __future__ import annotations

import html
import io
from collections.abc import Sequence

from reportlab.graphics.charts.barcharts import VerticalBarChart
from reportlab.graphics.shapes import Drawing, String
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.lib.units import cm
from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle
from reportlab.platypus.flowables import Flowable

from metering.money import MICROS_PER_CREDIT, format_micros
from metering.reports.data import OperatorReport, PayeeReport

_STYLES = getSampleStyleSheet()


def _chart(title: str, items: Sequence[tuple[str, int]]) -> Drawing:
    d = Drawing(17 * cm, 7 * cm)
    chart = VerticalBarChart()
    chart.x, chart.y, chart.width, chart.height = 40, 30, 15 * cm, 5 * cm
    # drawn heights only: scaled credits, never summed or paid
    chart.data = [[v / MICROS_PER_CREDIT for _, v in items] or [0]]
    chart.categoryAxis.categoryNames = [label[:10] for label, _ in items] or [""]
    chart.categoryAxis.labels.fontSize = 6
    chart.valueAxis.valueMin = 0
    chart.bars[0].fillColor = colors.HexColor("#3b6ea5")
    d.add(chart)
    d.add(String(40, 7 * cm - 12, title, fontSize=11))
    return d


def _table(head: Sequence[str], rows: Sequence[Sequence[object]]) -> Table:
    # Paragraph parses markup: names and reasons are escaped, never interpreted.
    body = [[Paragraph(html.escape(str(c)), _STYLES["BodyText"]) for c in row] for row in rows]
    t = Table(
        [list(head), *body] if body else [list(head), ["(none)"] + [""] * (len(head) - 1)],
        repeatRows=1,
    )
    t.setStyle(
        TableStyle(
            [
                ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
                ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8eef5")),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ]
        )
    )
    return t


def _status(closed: bool, root: str | None) -> Paragraph:
    text = (
        f"Closed. Merkle root: {root}" if closed else "Provisional: this month is not closed yet."
    )
    return Paragraph(text, _STYLES["BodyText"])


def _build(story: list[Flowable], title: str) -> bytes:
    out = io.BytesIO()
    doc = SimpleDocTemplate(out, pagesize=A4, title=title, author="Royalty", invariant=1)
    doc.build(story)
    return out.getvalue()


def operator_pdf(r: OperatorReport) -> bytes:
    h1, h2 = _STYLES["Heading1"], _STYLES["Heading2"]
    story: list[Flowable] = [
        Paragraph(f"Royalty operator report {r.label}", h1),
        _status(r.closed, r.root_hex),
        Spacer(1, 8),
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
        Spacer(1, 12),
        _chart("Daily revenue (credits)", [(d.strftime("%d"), a) for d, a in r.daily_revenue]),
        PageBreak(),
        Paragraph("Top adapters", h2),
        _chart("Revenue by adapter (credits)", [(n, a) for n, a, _ in r.top_adapters]),
        _table(
            ["adapter", "revenue", "events"],
            [[n, format_micros(a), e] for n, a, e in r.top_adapters],
        ),
        PageBreak(),
        Paragraph("Payees", h2),
        _table(["payee", "kind", "amount"], [[p, k, format_micros(a)] for p, k, a in r.payees]),
        PageBreak(),
        Paragraph("Flagged activity (withheld)", h2),
        _table(
            ["payee", "reason", "withheld"], [[p, w, format_micros(a)] for p, w, a in r.flagged]
        ),
    ]
    return _build(story, f"Royalty operator report {r.label}")


def payee_pdf(r: PayeeReport) -> bytes:
    h1, h2 = _STYLES["Heading1"], _STYLES["Heading2"]
    story: list[Flowable] = [
        Paragraph(f"Royalty earnings of {html.escape(r.account)}, {r.label}", h1),
        _status(r.closed, r.root_hex),
        Paragraph(f"Earnings this month: {format_micros(r.total)} credits", _STYLES["BodyText"]),
        Spacer(1, 12),
        _chart("Daily earnings (credits)", [(d.strftime("%d"), a) for d, a in r.daily]),
        PageBreak(),
        Paragraph("Earnings by adapter", h2),
        _chart("By adapter (credits)", [(n, a) for n, a, _ in r.by_adapter]),
        _table(
            ["adapter", "earned", "events"], [[n, format_micros(a), e] for n, a, e in r.by_adapter]
        ),
        PageBreak(),
        Paragraph("Withheld, and why", h2),
        _table(["payee", "reason", "amount"], [[p, w, format_micros(a)] for p, w, a in r.withheld]),
        Paragraph("Statement", h2),
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
    return _build(story, f"Royalty earnings {r.account} {r.label}")


def render_pdf(report: OperatorReport | PayeeReport) -> bytes:
    return operator_pdf(report) if isinstance(report, OperatorReport) else payee_pdf(report)
