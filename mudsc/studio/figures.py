"""Plotly figures of the Similarity, Alignment and Landscape pages. Drawing only: every number comes
from :mod:`mudsc.studio.views` (or a landscape result). One colour per parent and one for merged units on
every figure; a diverging scale centred at 0 for similarities; WebGL only for large scatters.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mudsc.diffinit.solvers.match import Match
from mudsc.models.heads import BODY
from mudsc.studio.views import GroupAlignment, HeatmapView, PairScatter, UnitCloud

PARENT_COLOURS = ("#dd6b20", "#2f855a", "#6b46c1", "#b7791f", "#319795", "#97266d")
MERGED = "#2b6cb0"
CHOICE = {"current": ("the merge's choice", MERGED), "weight": ("weight-only choice (alpha = 1)", "#c53030"),
          "activation": ("activation-only choice (alpha = 0)", "#2c7a7b")}
BACKGROUND = "#a0aec0"
WEBGL_ABOVE = 1500
FONT = dict(family="Arial, Helvetica, sans-serif", size=13)


def _parent_colour(i: int) -> str:
    return PARENT_COLOURS[i % len(PARENT_COLOURS)]


def _layout(fig: go.Figure, *, title: str, height: int, **kw) -> go.Figure:
    fig.update_layout(template="plotly_white", font=FONT, height=height, title=dict(text=title, font=dict(size=15)),
                      margin=dict(l=70, r=30, t=70, b=60), **kw)
    return fig


def _scatter(n: int):
    return go.Scattergl if n > WEBGL_ABOVE else go.Scatter


def similarity_scatter(ps: PairScatter, *, highlight: str = "current", space: str = "") -> go.Figure:
    """MuDSC Fig. 1: S_A (x) against S_W (y) for cross-parent unit pairs; the pairs `highlight` merged
    drawn on top of all (or a sample of all) pairs, y = x dashed."""
    label, colour = CHOICE[highlight]
    mask = ps.chosen[highlight]
    hover = ("parent 0 unit %{customdata[0]} · parent %{customdata[1]} unit %{customdata[2]}"
             "<br>S_A %{x:.3f}<br>S_W %{y:.3f}<extra></extra>")
    data = np.stack([ps.unit0, ps.parent, ps.unit], 1)
    rest = ~mask
    fig = go.Figure()
    sampled = "" if len(ps.s_a) == ps.n_pairs else f" (random sample of {int(rest.sum()):,})"
    fig.add_trace(_scatter(int(rest.sum()))(
        x=ps.s_a[rest], y=ps.s_w[rest], mode="markers", customdata=data[rest], hovertemplate=hover,
        name=f"all other pairs{sampled}", marker=dict(size=4, color=BACKGROUND, opacity=0.45)))
    fig.add_trace(go.Scatter(
        x=ps.s_a[mask], y=ps.s_w[mask], mode="markers", customdata=data[mask], hovertemplate=hover,
        name=f"pairs merged by {label} ({int(mask.sum())})",
        marker=dict(size=7, color=colour, line=dict(width=0.6, color="white"))))
    lo = float(min(ps.s_a.min(), ps.s_w.min(), 0.0)) if len(ps.s_a) else -1.0
    hi = float(max(ps.s_a.max(), ps.s_w.max())) if len(ps.s_a) else 1.0
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", hoverinfo="skip", name="S_W = S_A",
                             line=dict(color="#4a5568", dash="dash", width=1)))
    _layout(fig, title=f"Weight vs activation similarity of unit pairs across parents — {space}", height=520,
            legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0))
    fig.update_xaxes(title_text="S_A: activation correlation (Pearson)", zeroline=True)
    fig.update_yaxes(title_text="S_W: weight-descriptor correlation", zeroline=True)
    return fig


def agreement_figure(rows: Sequence[dict]) -> go.Figure:
    """Per unit space (input -> output), the share of units matched alike by two matchings (grouped bars)."""
    spaces = [r["space"].removeprefix(BODY) for r in rows]
    series = (("weight vs activation", "#4a5568"), ("merge vs weight", CHOICE["weight"][1]),
              ("merge vs activation", CHOICE["activation"][1]))
    fig = go.Figure()
    for key, colour in series:
        fig.add_trace(go.Bar(x=spaces, y=[100 * r[key] for r in rows], name=key, marker_color=colour,
                             hovertemplate="%{x}<br>" + key + ": %{y:.1f}% of units<extra></extra>"))
    _layout(fig, title="Agreement of matchings per unit space (units merged with the same partners)", height=400,
            barmode="group", legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0))
    fig.update_xaxes(title_text="unit space (input → output)", tickangle=-35, type="category")
    fig.update_yaxes(title_text="units with the same partners (%)", range=[0, 102])
    return fig


def _parent_ticks(sizes: Sequence[int], factor: int) -> tuple[list[float], list[str]]:
    starts = np.cumsum((0,) + tuple(sizes[:-1]))
    return [float((s + n / 2) / factor - 0.5) for s, n in zip(starts, sizes)], [f"parent {i}" for i in range(len(sizes))]


def similarity_heatmaps(hv: HeatmapView, sizes: Sequence[int], *, space: str = "", choice: str = "current"
                        ) -> go.Figure:
    """S_W, S_A and S side by side on one diverging colour scale, units ordered by the chosen match,
    its merged pairs as open circles, parent blocks separated by lines."""
    fig = make_subplots(rows=1, cols=len(hv.mats), subplot_titles=hv.titles, horizontal_spacing=0.05)
    vmax = max(1.0, *(float(np.nanmax(np.abs(m))) for m in hv.mats))
    ticks, labels = _parent_ticks(sizes, hv.factor)
    n = hv.mats[0].shape[0]
    for col, z in enumerate(hv.mats, start=1):
        fig.add_trace(go.Heatmap(z=z, coloraxis="coloraxis", hovertemplate="row %{y} · col %{x}<br>%{z:.3f}"
                                 "<extra></extra>"), row=1, col=col)
        if len(hv.marker_rows):
            fig.add_trace(go.Scatter(x=hv.marker_cols, y=hv.marker_rows, mode="markers", hoverinfo="skip",
                                     showlegend=col == 1, name=f"pairs merged by {CHOICE[choice][0]}",
                                     marker=dict(symbol="circle-open", size=max(3, min(8, 600 // max(n, 1))),
                                                 color="black", line=dict(width=1))), row=1, col=col)
        for b in hv.boundaries:
            for x0, x1, y0, y1 in ((b, b, -0.5, n - 0.5), (-0.5, n - 0.5, b, b)):
                fig.add_shape(type="line", x0=x0, x1=x1, y0=y0, y1=y1, line=dict(color="black", width=1.2),
                              row=1, col=col)
        fig.update_xaxes(tickvals=ticks, ticktext=labels, row=1, col=col, constrain="domain",
                         title_text="units, ordered by merged unit")
        fig.update_yaxes(tickvals=ticks, ticktext=labels if col == 1 else None, showticklabels=col == 1,
                         autorange="reversed", row=1, col=col,
                         scaleanchor=f"x{'' if col == 1 else col}", constrain="domain")
    pooled = f"; {hv.factor}×{hv.factor} block means" if hv.factor > 1 else ""
    _layout(fig, title=f"Similarity matrices — {space}{pooled}", height=480,
            coloraxis=dict(colorscale="RdBu_r", cmin=-vmax, cmax=vmax, cmid=0,
                           colorbar=dict(title="similarity", thickness=14)),
            legend=dict(orientation="h", yanchor="top", y=-0.15, x=0))
    return fig


def umap_figure(coords: np.ndarray, cloud: UnitCloud, *, space: str = "") -> go.Figure:
    """UMAP of the units: one colour per parent, merged units as blue diamonds, grey lines from every
    unit to the merged unit it became (or between the units of one cluster)."""
    fig = go.Figure()
    xs, ys = [], []
    for a, b in cloud.lines:
        xs += [coords[a, 0], coords[b, 0], None]
        ys += [coords[a, 1], coords[b, 1], None]
    if xs:
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", name="merged together",
                                 line=dict(color="rgba(74,85,104,0.35)", width=0.8)))
    for owner in sorted(set(cloud.owner.tolist()), key=lambda o: (o < 0, o)):
        sel = cloud.owner == owner
        merged = owner < 0
        name = "merged model" if merged else f"parent {owner}"
        fig.add_trace(go.Scatter(
            x=coords[sel, 0], y=coords[sel, 1], mode="markers", name=name, customdata=cloud.unit[sel],
            hovertemplate=name + " unit %{customdata}<extra></extra>",
            marker=dict(symbol="diamond" if merged else "circle", size=9 if merged else 7,
                        color=MERGED if merged else _parent_colour(owner), line=dict(width=0.6, color="white"))))
    _layout(fig, title=f"UMAP of units by their activations — {space}", height=520,
            legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0))
    fig.update_xaxes(title_text="UMAP 1", showticklabels=False, zeroline=False)
    fig.update_yaxes(title_text="UMAP 2", showticklabels=False, zeroline=False, scaleanchor="x", scaleratio=1)
    return fig


def group_alignment_figure(ga: GroupAlignment) -> go.Figure:
    """G[j, k]: mean matched similarity of group j of parent 0 and group k of parent i; the chosen
    group assignment as crosses."""
    g = len(ga.assign)
    fig = go.Figure(go.Heatmap(z=ga.sim, x=list(range(g)), y=list(range(g)), colorscale="Viridis",
                               colorbar=dict(title="mean matched<br>similarity", thickness=14),
                               hovertemplate="parent 0 group %{y} · parent " + str(ga.parent)
                               + " group %{x}<br>G = %{z:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=ga.assign, y=list(range(g)), mode="markers", name="chosen group pairs",
                             marker=dict(symbol="x-thin", size=14, line=dict(width=2.5, color="#c53030")),
                             hoverinfo="skip"))
    _layout(fig, title=f"Group alignment — {ga.space} (parent 0 × parent {ga.parent})", height=430,
            legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0))
    fig.update_xaxes(title_text=f"group of parent {ga.parent}", dtick=1, constrain="domain")
    fig.update_yaxes(title_text="group of parent 0", dtick=1, autorange="reversed", scaleanchor="x",
                     constrain="domain")
    return fig


def merge_map_figure(match: Match, *, space: str = "", max_side: int = 512) -> go.Figure:
    """The merge map M [C, O] as a heatmap: merged unit c (row) averages the units (columns, parents
    side by side) with weight M[c, u]; permutations show one 1/N cell per row in every parent block."""
    from mudsc.studio.views import pool

    z, f = pool(match.merge.numpy(), max_side=max_side)
    c = z.shape[0]
    fig = go.Figure(go.Heatmap(z=z, colorscale=[[0, "#ffffff"], [1, MERGED]], zmin=0, zmax=float(np.nanmax(z)) or 1,
                               colorbar=dict(title="merge<br>weight", thickness=14),
                               hovertemplate="merged unit %{y} · unit column %{x}<br>weight %{z:.3f}<extra></extra>"))
    for o in match.offsets[1:]:
        fig.add_shape(type="line", x0=o / f - 0.5, x1=o / f - 0.5, y0=-0.5, y1=c - 0.5,
                      line=dict(color="black", width=1.2))
    ticks, labels = _parent_ticks(match.sizes, f)
    pooled = f" ({f}×{f} block means)" if f > 1 else ""
    _layout(fig, title=f"Merge map — {space}{pooled}", height=460)
    fig.update_xaxes(tickvals=ticks, ticktext=labels, title_text="units of each parent", constrain="domain")
    fig.update_yaxes(title_text="merged unit", autorange="reversed", constrain="domain")
    return fig


def merge_counts_figure(rows: Sequence[dict]) -> go.Figure:
    """Per unit space, merges inside one parent and across parents (stacked; they sum to O - C)."""
    spaces = [r["space"].removeprefix(BODY) for r in rows]
    fig = go.Figure()
    for key, colour, name in (("across", MERGED, "across parents"), ("within", "#dd6b20", "within one parent")):
        fig.add_trace(go.Bar(x=spaces, y=[r[key] for r in rows], name=name, marker_color=colour,
                             hovertemplate="%{x}<br>" + name + ": %{y} merges<extra></extra>"))
    _layout(fig, title="Merges within one parent vs across parents", height=400, barmode="stack",
            legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0))
    fig.update_xaxes(title_text="unit space (input → output)", tickangle=-35, type="category")
    fig.update_yaxes(title_text="merges (pairs of units joined)")
    return fig


def clip_contours(fig: go.Figure, vmax: float, *, levels: int = 12) -> go.Figure:
    """Contour levels from 0 to `vmax` on the traces drawn on the shared colour axis, so the colour bar
    ends at the clip value and everything above it takes the top colour (Plotly's automatic levels
    span the whole data range and ignore ``cmax``)."""
    for t in fig.data:
        if t.type == "contour" and t.coloraxis == "coloraxis":
            t.update(autocontour=False, contours=dict(start=0.0, end=float(vmax), size=float(vmax) / levels))
    fig.update_coloraxes(cmin=0.0, cmax=float(vmax))
    return fig


def add_segments(fig: go.Figure, coords: dict[str, np.ndarray], segments: Sequence[tuple[str, str]],
                 *, panels: int) -> go.Figure:
    """Dashed lines between labelled models (plane coordinates) on every panel of a landscape figure."""
    for col in range(1, panels + 1):
        for a, b in segments:
            if a in coords and b in coords:
                fig.add_trace(go.Scatter(x=[coords[a][0], coords[b][0]], y=[coords[a][1], coords[b][1]],
                                         mode="lines", hoverinfo="skip", showlegend=False,
                                         line=dict(color="black", dash="dash", width=1.2)), row=1, col=col)
    return fig
