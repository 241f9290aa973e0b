"""Report renderers: CSV round-trips exact amounts, HTML escapes and charts, PDF has the
documented pages, each rendered to PNG and carrying ink."""

from __future__ import annotations

import csv
import datetime as dt
import io
from pathlib import Path

import pypdfium2 as pdfium
import pytest

from metering.payouts.close import Statement
from metering.reports.data import OperatorReport, PayeeReport, _days
from metering.reports.pdf import render_pdf
from metering.reports.render import render_text

NOV = dt.date(2026, 11, 1)


def operator(n_payees: int = 5) -> OperatorReport:
    daily = _days(NOV, [(dt.date(2026, 11, d), d * 1_234_567) for d in (1, 2, 15, 30)])
    return OperatorReport(
        month=NOV, closed=True, root_hex="ab" * 32,
        charges=sum(a for _, a in daily), payouts=1, fees=2, withheld=3, events=42,
        daily_revenue=daily,
        top_adapters=[("recipes", 9_000_001, 40), ("(base model)", 5, 2)],
        payees=[(f"contributor:<script>p{i}", "contributor", 1_000_000 + i) for i in range(n_payees)],
        flagged=[("adapter_owner:eve", "self-dealing: the payer owns adapter 'legal'", 77)],
    )  # fmt: skip


def payee() -> PayeeReport:
    return PayeeReport(
        month=NOV, account="alice", closed=True, root_hex="cd" * 32, total=2_500_001,
        daily=_days(NOV, [(dt.date(2026, 11, 3), 2_500_001)]),
        by_adapter=[("recipes", 2_500_001, 10)],
        withheld=[("contributor:alice", "penalty: copied records", 5)],
        statements=[Statement("contributor:alice", 2_500_001, 0, [("R", "00" * 32)])],
    )  # fmt: skip


def test_operator_csv_has_every_section_with_exact_amounts() -> None:
    rows = list(csv.DictReader(io.StringIO(render_text(operator(), "csv"))))
    by = {(r["section"], r["name"]): r for r in rows}
    assert (
        by[("summary", "revenue")]["amount_credits"] == "59.259216"
    )  # (1 + 2 + 15 + 30) * 1.234567
    assert by[("adapter", "recipes")]["amount_credits"] == "9.000001"
    assert by[("summary", "merkle_root")]["detail"] == "ab" * 32
    assert len([r for r in rows if r["section"] == "daily_revenue"]) == 30
    assert {r["section"] for r in rows} == {
        "summary",
        "daily_revenue",
        "adapter",
        "payee",
        "flagged",
    }


def test_html_escapes_names_and_draws_charts() -> None:
    page = render_text(operator(), "html")
    assert "<script>p0" not in page and "&lt;script&gt;p0" in page
    assert page.count("<svg") == 2 and "Daily revenue" in page
    assert "self-dealing" in render_text(operator(), "html")
    mine = render_text(payee(), "html")
    assert mine.count("<svg") == 2 and "penalty: copied records" in mine and "2.500001" in mine


@pytest.mark.parametrize(("report", "pages"), [(operator(), 4), (payee(), 3)])
def test_pdf_has_the_expected_pages_and_they_render(
    report: object, pages: int, tmp_path: Path
) -> None:
    data = render_pdf(report)  # type: ignore[arg-type]
    assert data.startswith(b"%PDF")
    doc = pdfium.PdfDocument(data)
    assert len(doc) == pages
    for i in range(len(doc)):
        page = doc[i]
        image = page.render(scale=1).to_pil().convert("L")
        image.save(tmp_path / f"page{i}.png")
        dark = sum(image.histogram()[:128])
        assert dark > 500, f"page {i + 1} looks blank"
        text = page.get_textpage().get_text_range()
        if i == 0:
            assert "2026-11" in text
    first = doc[0].get_textpage().get_text_range()
    assert ("Closed. Merkle root" in first) and ("Daily" in first)


def test_long_payee_lists_flow_onto_more_pages() -> None:
    assert len(pdfium.PdfDocument(render_pdf(operator(n_payees=120)))) > 4
