"""Plotly figures of the Merge page: the network's unit spaces with its valid cuts, and sweep curves.
Figures only; every number comes in as an argument. Vector-safe traces (no WebGL) for paper export.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import plotly.graph_objects as go

from mudsc.errors import ConfigError
from mudsc.models.heads import BODY
from mudsc.studio.summary import cut_positions, split_stream
from mudsc.unitgraph import UnitGraph

MERGED, KEPT, CUT, SELECTED = "#2b6cb0", "#c4c9d0", "#c53030", "#2f855a"
TASK_COLOURS = ("#dd6b20", "#2f855a", "#6b46c1", "#b7791f")
MAX_CUT_LABELS = 10  # cut names drawn on the network figure before they crowd (ViT: 2 per block)


def network_figure(graph: UnitGraph, cut: str, *, costs: dict[str, dict[str, float]] | None = None,
                   tasks: int = 2) -> go.Figure:
    """The unit spaces in input -> output order (bar height: units), merged ones in blue, those kept
    per task (after `cut`) in grey, a residual stream the cut splits hatched (merged before the cut,
    per task after); every cut a dashed line at its place (:func:`cut_positions`), the chosen one solid
    red with the merged trunk and the `tasks` heads marked. With `costs` (:func:`cut_costs`), the title
    gives the shares of parameters and FLOPs the cut merges."""
    chosen_cut = None if cut == "full" else graph.cut(cut)  # unknown cuts fail loudly
    names = [s.name for s in graph.spaces]
    merged = set(names) if chosen_cut is None else set(chosen_cut.merged_spaces)
    split = None if chosen_cut is None else split_stream(graph, chosen_cut)
    labels = [n.removeprefix(BODY) for n in names] + ["head"]
    sizes = [s.size for s in graph.spaces]
    colours = [MERGED if n in merged else KEPT for n in names]
    states = ["split: merged before the cut, per task after" if n == split else "merged" if n in merged
              else "kept per task" for n in names]
    fig = go.Figure(go.Bar(
        x=list(range(len(names))), y=sizes, marker_color=colours, showlegend=False,
        marker_pattern=dict(shape=["/" if n == split else "" for n in names], fgcolor=KEPT, solidity=0.5),
        customdata=[[lab, state, s.groups] for lab, state, s in zip(labels, states, graph.spaces)],
        hovertemplate="%{customdata[0]}<br>%{y} units, %{customdata[2]} group(s)<br>%{customdata[1]}<extra></extra>"))
    # The classifier head has no unit space; a short bar shows whether it is shared or kept per task.
    fig.add_trace(go.Bar(x=[len(names)], y=[min(sizes, default=1)], marker_color=KEPT if chosen_cut else MERGED,
                         marker_pattern_shape="x", showlegend=False,
                         hovertemplate="classifier head<br>" + ("kept per task" if chosen_cut else "merged")
                         + "<extra></extra>"))
    top = max(sizes, default=1) * 1.18
    positions = cut_positions(graph)
    labelled = shown_labels(list(positions), cut)
    for name, x in positions.items():
        chosen = name == cut
        fig.add_shape(type="line", x0=x, x1=x, y0=0, y1=top, line=dict(color=CUT if chosen else "#718096",
                      width=3 if chosen else 1, dash="solid" if chosen else "dash"))
        if name in labelled:
            fig.add_annotation(x=x, y=top, text=name, showarrow=False, yanchor="bottom", textangle=-60,
                               font=dict(color=CUT if chosen else "#4a5568", size=11))
        if chosen:  # what this cut merges: the trunk before it, one head per task after it
            for text, anchor, shift in (("◀ trunk merged", "right", -4),
                                        (f"{tasks} heads, one per task ▶", "left", 4)):
                fig.add_annotation(x=x, y=top * 0.93, text=text, showarrow=False, xanchor=anchor, xshift=shift,
                                   font=dict(color=CUT, size=11), bgcolor="rgba(255,255,255,0.8)")
    # every cut, labelled or not, names itself (and what it merges) on hover at the top of its line
    hover = [name + ("" if costs is None or name not in costs else
                     f"<br>{costs[name]['params_share']:.0%} of the parameters, {costs[name]['flops_share']:.0%} "
                     "of the FLOPs merged") for name in positions]
    fig.add_trace(go.Scatter(x=list(positions.values()), y=[top] * len(positions), mode="markers",
                             marker=dict(size=9, color=[CUT if n == cut else "#718096" for n in positions],
                                         symbol="triangle-down"),
                             hovertext=hover, hovertemplate="cut %{hovertext}<extra></extra>", showlegend=False))
    legend = [(MERGED, "", "merged (shared by all tasks)"), (KEPT, "", "kept per task")]
    for colour, shape, text in legend + ([(MERGED, "/", "stream split at the cut")] if split else []):
        fig.add_trace(go.Bar(x=[None], y=[None], marker_color=colour, name=text,
                             marker_pattern=dict(shape=shape, fgcolor=KEPT, solidity=0.5)))
    ticks = shown_labels(labels, "head", most=2 * MAX_CUT_LABELS)
    title = f"Unit spaces and cuts (merged up to: {cut})"
    if costs is not None and cut in costs:
        title += (f": {costs[cut]['params_share']:.0%} of the parameters, {costs[cut]['flops_share']:.0%} "
                  "of the FLOPs shared")
    fig.update_layout(
        template="plotly_white", height=360, margin=dict(l=50, r=20, t=110, b=90), bargap=0.25,
        xaxis=dict(tickmode="array", tickvals=list(range(len(labels))), tickangle=-40,
                   ticktext=[lab if lab in ticks else "" for lab in labels],
                   title=None, range=[-1, len(labels)]),
        yaxis=dict(title="units", range=[0, top * 1.12]),
        legend=dict(orientation="h", yanchor="bottom", y=1.22, x=0),
        title=dict(text=title, font=dict(size=14), y=0.98, yanchor="top"))
    return fig


def shown_labels(names: list[str], chosen: str | None = None, *, most: int = MAX_CUT_LABELS) -> set[str]:
    """The names drawn as text: all of them up to `most`; beyond, every k-th (k chosen so that at most
    `most` remain) and the `chosen` one, dropping the regular labels closer than k to it so they do not
    overlap (a ViT has two cuts and four unit spaces per block). The rest name themselves on hover."""
    if len(names) <= most:
        return set(names)
    k = math.ceil(len(names) / most)
    at = names.index(chosen) if chosen in names else None
    keep = {n for i, n in enumerate(names) if i % k == 0 and (at is None or abs(i - at) >= k)}
    return keep | ({chosen} if at is not None else set())


def sweep_figure(rows: Sequence[dict[str, Any]], *, x: str, current: Any, x_title: str,
                 references: dict[str, float] | None = None, title: str | None = None,
                 shares: bool = False, selected: Any = None) -> go.Figure:
    """Joint and per-task accuracy (in %) along a sweep over `x`, the current setting marked by a
    vertical line, and `references` (e.g. the ensemble, the best parent) as dotted horizontal lines.
    With `shares`, the rows' ``merged_params_share`` and ``merged_flops_share`` on a second axis (ZipIt!'s
    partial-zipping figure: accuracy against what each depth merges).

    `selected` (the point chosen on held-out training images, :mod:`mudsc.diffinit.selection`) gets a
    dashed line beside the current one. Categorical `x` values (cut names) keep the order of `rows`.
    Built as one figure dict: it is redrawn at every alpha step, and plotly's add_hline/add_vline and a
    template looked up by name cost several times the rest.
    """
    if not rows:
        raise ConfigError("a sweep figure needs at least one row")
    needed = (x, "joint_acc", "per_task_acc") + (("merged_params_share", "merged_flops_share") if shares else ())
    missing = [k for k in needed if k not in rows[0]]
    if missing:
        raise ConfigError(f"sweep rows lack {missing}")
    xs = [r[x] for r in rows]
    data = [dict(type="scatter", x=xs, y=[100 * r[key] for r in rows], mode="lines+markers", name=name,
                 line=dict(color=colour, width=2), marker=dict(size=7),
                 hovertemplate=f"{x_title} %{{x}}<br>{name} %{{y:.1f}}%<extra></extra>")
            for key, name, colour in (("joint_acc", "joint", MERGED), ("per_task_acc", "per-task", TASK_COLOURS[0]))]
    layout: dict[str, Any] = {}
    if shares:
        data += [dict(type="scatter", x=xs, y=[100 * r[key] for r in rows], mode="lines+markers", name=name,
                      yaxis="y2", line=dict(color=colour, width=1.5, dash="dash"), marker=dict(size=5, symbol="square"),
                      hovertemplate=f"{x_title} %{{x}}<br>{name} %{{y:.0f}}%<extra></extra>")
                 for key, name, colour in (("merged_params_share", "parameters merged", TASK_COLOURS[2]),
                                           ("merged_flops_share", "FLOPs merged", TASK_COLOURS[1]))]
        layout["yaxis2"] = dict(title="share merged (%)", overlaying="y", side="right", range=[0, 102], showgrid=False)
    shapes, notes = [], []
    for i, (name, value) in enumerate((references or {}).items()):
        y = 100 * value
        shapes.append(dict(type="line", xref="x domain", x0=0, x1=1, yref="y", y0=y, y1=y,
                           line=dict(color="#4a5568", dash="dot", width=1)))
        notes.append(dict(text=f"{name} {y:.1f}%", xref="x domain", x=1, yref="y", y=y, showarrow=False,
                          xanchor="right", yanchor="top" if i % 2 else "bottom"))
    numeric = all(isinstance(v, (int, float)) for v in xs)
    for value, colour, dash, text, top in ((current, CUT, "solid", "current", True),
                                           (selected, SELECTED, "dash", "chosen on training images", False)):
        if value is None or not (numeric or value in xs):
            continue
        at = value if numeric else xs.index(value)
        shapes.append(dict(type="line", xref="x", x0=at, x1=at, yref="y domain", y0=0, y1=1,
                           line=dict(color=colour, width=2, dash=dash)))
        notes.append(dict(text=text, xref="x", x=at, yref="y domain", y=1 if top else 0, showarrow=False,
                          xanchor="right" if top else "left", yanchor="top" if top else "bottom",
                          font=dict(color=colour) if not top else {}))
    layout.update(template=_white(), height=360, margin=dict(l=60, r=60 if shares else 20, t=80, b=50),
                  xaxis=dict(title=x_title), yaxis=dict(title="held-out accuracy (%)", range=[0, 102]),
                  legend=dict(orientation="h", yanchor="bottom", y=1.04, x=0),
                  title=dict(text=title or "", font=dict(size=14), y=0.97, yanchor="top"),
                  shapes=shapes, annotations=notes)
    if not numeric:
        layout["xaxis"].update(type="category", categoryorder="array", categoryarray=xs)
    return go.Figure(dict(data=data, layout=layout))


@functools.cache
def _white() -> go.layout.Template:
    """plotly's ``plotly_white`` template, looked up once."""
    import plotly.io as pio

    return pio.templates["plotly_white"]
