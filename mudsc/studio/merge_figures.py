"""Plotly figures of the Merge page: the network's unit spaces with its valid cuts, and sweep curves.
Figures only; every number comes in as an argument. Vector-safe traces (no WebGL) for paper export.
"""
from __future__ import annotations

from typing import Any, Sequence

import plotly.graph_objects as go

from mudsc.errors import ConfigError
from mudsc.unitgraph import UnitGraph
from mudsc.models.heads import BODY

MERGED, KEPT, CUT = "#2b6cb0", "#c4c9d0", "#c53030"
TASK_COLOURS = ("#dd6b20", "#2f855a", "#6b46c1", "#b7791f")


def network_figure(graph: UnitGraph, cut: str) -> go.Figure:
    """The unit spaces in input -> output order (bar height: units), merged ones in blue, those kept
    per task (after `cut`) in grey; every valid cut a dashed line, the chosen one solid red."""
    if cut != "full":
        graph.cut(cut)  # unknown cuts fail loudly
    names = [s.name for s in graph.spaces]
    merged = set(names) if cut == "full" else set(graph.cut(cut).merged_spaces)
    labels = [n.removeprefix(BODY) for n in names] + ["head"]
    sizes = [s.size for s in graph.spaces]
    colours = [MERGED if n in merged else KEPT for n in names]
    fig = go.Figure(go.Bar(
        x=list(range(len(names))), y=sizes, marker_color=colours, showlegend=False,
        customdata=[[lab, "merged" if c == MERGED else "kept per task", s.groups]
                    for lab, c, s in zip(labels, colours, graph.spaces)],
        hovertemplate="%{customdata[0]}<br>%{y} units, %{customdata[2]} group(s)<br>%{customdata[1]}<extra></extra>"))
    # The classifier head has no unit space; a short bar shows whether it is shared or kept per task.
    head_merged = cut == "full"
    fig.add_trace(go.Bar(x=[len(names)], y=[min(sizes, default=1)], marker_color=MERGED if head_merged else KEPT,
                         marker_pattern_shape="/", showlegend=False,
                         hovertemplate="classifier head<br>" + ("merged" if head_merged else "kept per task")
                         + "<extra></extra>"))
    top = max(sizes, default=1) * 1.18
    for c in graph.cuts:
        x = names.index(c.space) + 0.5
        chosen = c.name == cut
        fig.add_shape(type="line", x0=x, x1=x, y0=0, y1=top, line=dict(color=CUT if chosen else "#718096",
                      width=3 if chosen else 1, dash="solid" if chosen else "dash"))
        fig.add_annotation(x=x, y=top, text=c.name, showarrow=False, yanchor="bottom",
                           font=dict(color=CUT if chosen else "#4a5568", size=12))
    for colour, text in ((MERGED, "merged (shared by all tasks)"), (KEPT, "kept per task")):
        fig.add_trace(go.Bar(x=[None], y=[None], marker_color=colour, name=text))
    fig.update_layout(
        template="plotly_white", height=330, margin=dict(l=50, r=20, t=80, b=90), bargap=0.25,
        xaxis=dict(tickmode="array", tickvals=list(range(len(labels))), ticktext=labels, tickangle=-40,
                   title=None),
        yaxis=dict(title="units", range=[0, top * 1.12]),
        legend=dict(orientation="h", yanchor="bottom", y=1.1, x=0),
        title=dict(text=f"Unit spaces and cuts (merged up to: {cut})", font=dict(size=14), y=0.97, yanchor="top"))
    return fig


def sweep_figure(rows: Sequence[dict[str, Any]], *, x: str, current: Any, x_title: str,
                 references: dict[str, float] | None = None, title: str | None = None) -> go.Figure:
    """Joint and per-task accuracy (in %) along a sweep over `x`, the current setting marked by a
    vertical line, and `references` (e.g. the ensemble, the best parent) as dotted horizontal lines.

    Categorical `x` values (cut names) keep the order of `rows`.
    """
    if not rows:
        raise ConfigError("a sweep figure needs at least one row")
    missing = [k for k in (x, "joint_acc", "per_task_acc") if k not in rows[0]]
    if missing:
        raise ConfigError(f"sweep rows lack {missing}")
    xs = [r[x] for r in rows]
    fig = go.Figure()
    for key, name, colour in (("joint_acc", "joint", MERGED), ("per_task_acc", "per-task", TASK_COLOURS[0])):
        fig.add_trace(go.Scatter(x=xs, y=[100 * r[key] for r in rows], mode="lines+markers", name=name,
                                 line=dict(color=colour, width=2), marker=dict(size=7),
                                 hovertemplate=f"{x_title} %{{x}}<br>{name} %{{y:.1f}}%<extra></extra>"))
    for i, (name, value) in enumerate((references or {}).items()):
        fig.add_hline(y=100 * value, line=dict(color="#4a5568", dash="dot", width=1),
                      annotation_text=f"{name} {100 * value:.1f}%", annotation_position="bottom right"
                      if i % 2 else "top right")
    numeric = all(isinstance(v, (int, float)) for v in xs)
    if numeric or current in xs:
        fig.add_vline(x=current if numeric else xs.index(current), line=dict(color=CUT, width=2),
                      annotation_text="current", annotation_position="top left")
    fig.update_layout(template="plotly_white", height=360, margin=dict(l=60, r=20, t=80, b=50),
                      xaxis_title=x_title, yaxis=dict(title="held-out accuracy (%)", range=[0, 102]),
                      legend=dict(orientation="h", yanchor="bottom", y=1.04, x=0),
                      title=dict(text=title or "", font=dict(size=14), y=0.97, yanchor="top"))
    if not numeric:
        fig.update_xaxes(type="category", categoryorder="array", categoryarray=xs)
    return fig
