"""mlm_pretraining/tables.py: the scripts' Markdown tables."""

from __future__ import annotations

from mlm_lab.tables import markdown_table


def test_columns_are_formatted_right_aligned_and_missing_values_dashed():
    rows = [{"name": "stock", "rate": 607.4, "share": 0.313}, {"name": "ours", "rate": 1336.0, "share": None}]
    table = markdown_table(rows, [("variant", "name", "{}"), ("tok/s", "rate", "{:,.0f}"), ("of limit", "share", "{:.1%}")])
    assert table.splitlines() == [
        "| variant | tok/s | of limit |",
        "|---------|-------|----------|",
        "|   stock |   607 |    31.3% |",
        "|    ours | 1,336 |        - |",
    ]
