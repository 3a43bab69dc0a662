"""Metric tables as CSV and as LaTeX (booktabs) for papers: rows of dicts in, text out."""
from __future__ import annotations

import csv
import io
import math
from typing import Any, Iterable, Sequence

from mudsc.errors import ConfigError

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _columns(rows: Sequence[dict], columns: Iterable[str] | None) -> list[str]:
    if columns is not None:
        cols = list(columns)
    else:
        cols = []
        for r in rows:
            cols.extend(k for k in r if k not in cols)
    if not cols:
        raise ConfigError("a table needs at least one column")
    return cols


def to_csv(rows: Sequence[dict[str, Any]], *, columns: Iterable[str] | None = None) -> str:
    """Rows as CSV text; missing cells are empty, lists are joined with spaces."""
    cols = _columns(rows, columns)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(cols)
    for r in rows:
        writer.writerow([" ".join(map(str, v)) if isinstance(v, (list, tuple)) else ("" if v is None else v)
                         for v in (r.get(c) for c in cols)])
    return out.getvalue()


def latex_escape(text: str) -> str:
    """`text` with LaTeX's special characters escaped."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def _cell(value: Any, *, percent: bool, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "--"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}".replace(",", "{,}")
    if isinstance(value, float):
        return f"{100 * value:.{digits}f}" if percent else f"{value:.{digits + 2}g}"
    if isinstance(value, (list, tuple)):
        return latex_escape(", ".join(map(str, value)))
    return latex_escape(str(value))


def to_latex(rows: Sequence[dict[str, Any]], *, columns: Iterable[str] | None = None,
             percent: Iterable[str] = (), digits: int = 1, bold_max: Iterable[str] = (),
             caption: str | None = None, label: str | None = None) -> str:
    """Rows as a booktabs ``table`` environment.

    Columns in `percent` are fractions printed as percentages with `digits` decimals (their header
    gains "(%)"); in each column of `bold_max` the largest value is set in bold; ``None`` prints "--".
    Numbers are right-aligned, text left-aligned. Needs ``\\usepackage{booktabs}``.
    """
    cols = _columns(rows, columns)
    pct, bold = set(percent), set(bold_max)
    unknown = (pct | bold) - set(cols)
    if unknown:
        raise ConfigError(f"LaTeX table: columns {sorted(unknown)} are not in the table ({', '.join(cols)})")
    numeric = {c: all(isinstance(r.get(c), (int, float)) or r.get(c) is None for r in rows) for c in cols}
    best = {}
    for c in bold:
        vals = [r[c] for r in rows if isinstance(r.get(c), (int, float))]
        if vals:
            best[c] = max(vals)
    lines = [r"\begin{table}[t]", r"\centering"]
    if caption:
        lines.append(rf"\caption{{{latex_escape(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines.append(r"\begin{tabular}{" + "".join("r" if numeric[c] else "l" for c in cols) + "}")
    lines.append(r"\toprule")
    lines.append(" & ".join(latex_escape(c) + (" (\\%)" if c in pct else "") for c in cols) + r" \\")
    lines.append(r"\midrule")
    for r in rows:
        cells = []
        for c in cols:
            text = _cell(r.get(c), percent=c in pct, digits=digits)
            if c in best and r.get(c) == best[c]:
                text = rf"\textbf{{{text}}}"
            cells.append(text)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"
