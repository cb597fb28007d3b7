"""HTML building blocks of the report: escaping, numbers, tables, sections, pictures, notes.

Every section builds its markup from these, so the page's structure (and its escaping) is
decided in one place.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

escape = html.escape


def is_finite(value: Any) -> bool:
    """A real, finite number (not a bool, not None, not NaN or infinite)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def number(value: Any, digits: int = 4) -> str:
    """A score or threshold with `digits` significant digits; n/a when missing."""
    return f"{value:.{digits}g}" if is_finite(value) else "n/a"


def table(head: Sequence[str], rows: Iterable[Sequence[str]],
          numeric: Iterable[int] | None = None, total: Sequence[str] | None = None,
          caption: str = "", name: str = "") -> str:
    """A table of already-escaped cells under plain-text `head`; the `numeric` columns
    (default: all but the first) are right aligned; `total` is a last, emphasised row."""
    right = set(range(1, len(head))) if numeric is None else set(numeric)

    def cells(values: Sequence[str], tag: str) -> str:
        return "".join(
            f"<{tag} class=\"num\">{v}</{tag}>" if i in right else f"<{tag}>{v}</{tag}>"
            for i, v in enumerate(values)
        )

    body = [f"<tr>{cells(r, 'td')}</tr>" for r in rows]
    if total is not None:
        body.append(f'<tr class="total">{cells(total, "td")}</tr>')
    cap = f"<caption>{caption}</caption>" if caption else ""
    data = f' data-table="{escape(name)}"' if name else ""
    return (f"<table{data}>{cap}<thead><tr>{cells([escape(h) for h in head], 'th')}</tr>"
            f"</thead><tbody>{''.join(body)}</tbody></table>")


def section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}">\n<h2>{escape(title)}</h2>\n{body}\n</section>'


def image(uri: str, alt: str, cls: str = "figure") -> str:
    return f'<img class="{cls}" src="{uri}" alt="{escape(alt)}">'


def note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'
