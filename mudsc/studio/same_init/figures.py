"""Plotly figures of the same-init page: a knob sweep as one curve per method (like the Merge page's
alpha sweep), and the CG residual of every MaTS layer against the iteration. Drawing only."""
from __future__ import annotations

from typing import Any, Sequence

import plotly.graph_objects as go

from mudsc.errors import ConfigError
from mudsc.studio.figures import PARENT_COLOURS

_LOG_X = {"iterations"}


def sweep_curves(rows: Sequence[dict[str, Any]], *, knob: str, title: str, current: Any = None,
                 references: dict[str, float] | None = None) -> go.Figure:
    """Mean task-aware accuracy (%) of each method against `knob` (solid), joint accuracy (dotted),
    the `current` setting as a vertical line and `references` (fine-tuned mean, multitask) as
    horizontal ones."""
    if not rows:
        raise ConfigError("a sweep figure needs at least one row")
    fig = go.Figure()
    for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
        own = [r for r in rows if r["method"] == method]
        colour = PARENT_COLOURS[i % len(PARENT_COLOURS)]
        for key, dash, name in (("mean (task-aware)", "solid", method), ("joint", "dot", f"{method}, joint")):
            fig.add_trace(go.Scatter(x=[r[knob] for r in own], y=[100 * r[key] for r in own], mode="lines+markers",
                                     name=name, line=dict(color=colour, dash=dash, width=2 if dash == "solid" else 1),
                                     hovertemplate=f"{knob} %{{x}}<br>{name} %{{y:.1f}}%<extra></extra>"))
    for i, (name, value) in enumerate((references or {}).items()):
        fig.add_hline(y=100 * value, line=dict(color="#4a5568", dash="dash", width=1),
                      annotation_text=f"{name} {100 * value:.1f}%",
                      annotation_position="bottom right" if i % 2 else "top right")
    if current is not None:
        fig.add_vline(x=current, line=dict(color="#c53030", width=2), annotation_text="current",
                      annotation_position="top left")
    fig.update_layout(template="plotly_white", height=380, title=dict(text=title, font=dict(size=14)),
                      xaxis=dict(title=knob, type="log" if knob in _LOG_X else "linear"),
                      yaxis=dict(title="held-out accuracy (%)"), margin=dict(l=60, r=20, t=70, b=50),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    if knob in _LOG_X:  # 0 steps has no place on a log axis: it is drawn at 0.5
        for trace in fig.data:
            trace.x = [0.5 if v == 0 else v for v in trace.x]
    return fig


def residual_figure(rows: Sequence[dict[str, Any]], *, title: str, diverged: Sequence[str] = ()) -> go.Figure:
    """Relative residual ||b - C x|| / ||b|| (log scale) against the CG step, one line per layer;
    diverging layers drawn thick and red."""
    if not rows:
        raise ConfigError("a residual figure needs at least one row")
    fig = go.Figure()
    bad = {d.removesuffix(".weight") for d in diverged}
    for i, layer in enumerate(dict.fromkeys(r["layer"] for r in rows)):
        own = [r for r in rows if r["layer"] == layer]
        wrong = layer in bad
        fig.add_trace(go.Scatter(
            x=[r["iteration"] for r in own], y=[max(r["residual"], 1e-16) for r in own], mode="lines",
            name=layer + (" (diverged)" if wrong else ""),
            line=dict(color="#c53030" if wrong else PARENT_COLOURS[i % len(PARENT_COLOURS)], width=4 if wrong else 2),
            hovertemplate=f"{layer}<br>step %{{x}}<br>residual %{{y:.2e}}<extra></extra>"))
    fig.update_layout(template="plotly_white", height=360, title=dict(text=title, font=dict(size=14)),
                      xaxis_title="CG step", yaxis=dict(title="relative residual", type="log", exponentformat="e"),
                      margin=dict(l=70, r=20, t=60, b=50), legend=dict(orientation="v"))
    return fig
