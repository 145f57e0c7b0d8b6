"""Markdown tables for the scripts' printed reports (benchmark, fine-tuning comparison)."""

from __future__ import annotations


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """``rows`` as a right-aligned Markdown table; ``columns`` are (header, key, format), a missing value is '-'."""
    heads = [head for head, _, _ in columns]
    cells = [["-" if row.get(key) is None else fmt.format(row[key]) for _, key, fmt in columns] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]

    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.rjust(w) for v, w in zip(values, widths)) + " |"

    return "\n".join([line(heads), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])
