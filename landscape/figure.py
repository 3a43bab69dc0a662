"""The paper figure: small multiples of the loss over a plane (one panel per task plus their mean).

Layout after the MuDSC landscape figure (Xu et al., CVPR 2024, Fig. 3; ``loss_landscape/plot.ipynb``):
one shared colour scale (red = low loss), the region where every task's loss is under its
threshold outlined on each panel, the same markers for parents and merges on every panel, equal
aspect with axes in parameter-distance units, the BatchNorm mode in the title. Drawing only: every
number comes from the result.

Static files: Plotly's kaleido needs a Chrome/Chromium; where none is installed (as on the 2-core
CI machine) png/svg/pdf are drawn with matplotlib instead, and :func:`write_figure` says so.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from landscape.barrier import PathResult
from landscape.result import LandscapeResult
from mudsc.atomic import output_dir, write_bytes
from mudsc.errors import ConfigError
from mudsc.studio.figure_export import STATIC_FORMATS, figure_html, static_image

SYMBOLS = {"parent": ("circle", "o"), "merge": ("star", "*"), "model": ("diamond", "D")}
# Parents of one group in turn (parent 0', parent 1', ...), so A' and B' differ at a glance.
PARENT_SYMBOLS = (("circle", "o"), ("square", "s"), ("triangle-up", "^"), ("pentagon", "p"))
# Marker colours that stand out on the red-yellow-blue loss scale.
COLORS = ("#000000", "#e7298a", "#00a65a", "#7b3294", "#8c510a", "#666666", "#f781bf", "#01665e")


@dataclass(frozen=True)
class MarkerStyle:
    color: str
    symbol: str        # Plotly
    marker: str        # matplotlib
    size: float        # matplotlib points^2; Plotly uses its square root x 1.1


def marker_styles(result: LandscapeResult, groups: Mapping[str, str] | None = None) -> list[MarkerStyle]:
    """Per model: one colour per group (default: per model), parents by their order in the group,
    merges as stars."""
    groups = groups or {}
    order: dict[str, int] = {}
    seen: dict[str, int] = {}
    out = []
    for i, lab in enumerate(result.model_labels):
        g = groups.get(lab, lab)
        color = COLORS[order.setdefault(g, len(order)) % len(COLORS)]
        role = result.model_roles[i] if i < len(result.model_roles) else "model"
        if role == "parent" and groups:
            k = seen.get(g, 0)
            seen[g] = k + 1
            sym, mk = PARENT_SYMBOLS[k % len(PARENT_SYMBOLS)]
        else:
            sym, mk = SYMBOLS.get(role, SYMBOLS["model"])
        out.append(MarkerStyle(color, sym, mk, 190.0 if role == "merge" else 70.0))
    return out


@dataclass(frozen=True)
class LegendEntry:
    name: str
    color: str
    symbol: str | None     # Plotly marker symbol (None: a line only)
    marker: str | None     # matplotlib marker
    dashed: bool


def legend_entries(result: LandscapeResult, styles: Sequence[MarkerStyle],
                   groups: Mapping[str, str] | None) -> list[LegendEntry]:
    """Without groups, one entry per model. With groups, one per group (its colour, dashed line and
    merge star) and one grey entry per marker shape (parent 0', parent 1', ..., merge)."""
    if not groups:
        return [LegendEntry(f"{lab} ({result.model_roles[i] if i < len(result.model_roles) else 'model'})",
                            styles[i].color, styles[i].symbol, styles[i].marker, False)
                for i, lab in enumerate(result.model_labels)]
    out, shapes = [], {}
    for i, lab in enumerate(result.model_labels):
        g = groups.get(lab, lab)
        if all(e.name != g for e in out):
            out.append(LegendEntry(g, styles[i].color, SYMBOLS["merge"][0], SYMBOLS["merge"][1], True))
    per_group: dict[str, int] = {}
    for i, lab in enumerate(result.model_labels):
        role = result.model_roles[i] if i < len(result.model_roles) else "model"
        if role == "parent":
            k = per_group.get(groups.get(lab, lab), 0)
            per_group[groups.get(lab, lab)] = k + 1
            shapes.setdefault(f"parent {k}'", (styles[i].symbol, styles[i].marker))
        else:
            shapes.setdefault(role, (styles[i].symbol, styles[i].marker))
    out += [LegendEntry(name, "#808080", sym, mk, False) for name, (sym, mk) in shapes.items()]
    return out


def offplane_note(result: LandscapeResult, *, per_line: int = 5) -> str:
    """Models off the plane (drawn at their projection) with their L2 distance to it, `per_line` a line;
    empty when every model lies on the plane (distance under 0.1% of the plotted extent)."""
    extent = max(float(np.ptp(result.xs)), float(np.ptp(result.ys)), 1e-12)
    off = [f"{lab} {d:.3g}" for lab, d in zip(result.model_labels, result.model_distance) if d > 1e-3 * extent]
    if not off:
        return ""
    lines = [", ".join(off[i:i + per_line]) for i in range(0, len(off), per_line)]
    return "Projected onto the plane (distance to it): " + ",\n".join(lines)


def _segment_coords(result: LandscapeResult, segments: Sequence[tuple[str, str]] | None):
    """(x pair, y pair, index of the first model) of every segment whose ends are both on the plot."""
    where = {lab: i for i, lab in enumerate(result.model_labels)}
    return [((result.model_coords[where[a], 0], result.model_coords[where[b], 0]),
             (result.model_coords[where[a], 1], result.model_coords[where[b], 1]), where[a])
            for a, b in segments or () if a in where and b in where]


def _panels(result: LandscapeResult) -> list[tuple[str, np.ndarray]]:
    return [(n, result.task_loss[k]) for k, n in enumerate(result.task_names)] + [("mean of tasks", result.mean_loss)]


def _decoration(result: LandscapeResult, groups, segments) -> tuple[dict | None, list | None]:
    groups = groups if groups is not None else result.settings.get("groups")
    segments = segments if segments is not None else result.settings.get("segments")
    return (dict(groups) if groups else None), ([tuple(s) for s in segments] if segments else None)


def _levels(panels: list[tuple[str, np.ndarray]], vmax: float | None) -> tuple[float, float, np.ndarray]:
    """One colour scale for every panel: 0 (or the lowest loss) up to `vmax` (or the highest), in
    6-12 bands of a round width (1, 2, 2.5 or 5 x 10^k); the top is `vmax` rounded up to a band."""
    finite = [z[np.isfinite(z)] for _, z in panels]
    finite = np.concatenate(finite) if finite else np.zeros(0)
    lo = 0.0 if vmax is not None or not finite.size else float(finite.min())
    hi = float(vmax) if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / 12
    unit = 10.0 ** math.floor(math.log10(raw))
    step = next(m * unit for m in (1, 2, 2.5, 5, 10) if m * unit >= raw * (1 - 1e-9))
    n = max(1, math.ceil((hi - lo) / step - 1e-9))
    return lo, lo + n * step, lo + step * np.arange(n + 1)


def _axis_titles(result: LandscapeResult) -> tuple[str, str]:
    ev = result.settings.get("plane_info", {}).get("explained_variance")
    if ev:
        return (f"PC1 ({100 * ev[0]:.0f}% var.), parameter distance",
                f"PC2 ({100 * ev[1]:.0f}% var.), parameter distance")
    plane = result.settings.get("plane", {})
    models = plane.get("models") or []
    if plane.get("kind") == "three_point" and len(models) == 3:
        return f"{models[0]} → {models[1]} (L2 distance)", f"towards {models[2]} (L2 distance)"
    if plane.get("kind") == "random":
        return ("random direction 1, filter-normalised (L2 distance)",
                "random direction 2, filter-normalised (L2 distance)")
    return "x, parameter distance (L2)", "y, parameter distance (L2)"


def _title(result: LandscapeResult, title: str | None) -> str:
    kind = result.settings.get("plane", {}).get("kind", "")
    head = title or ("Loss landscape" + (f", {kind.replace('_', '-')} plane" if kind else ""))
    tail = f"BN: {result.bn_label}"
    if not result.complete:
        tail += f"; partial: {int(result.done.sum())}/{result.done.size} points"
    return f"{head} ({tail})"


def landscape_figure(result: LandscapeResult, *, overlap_threshold: float | Sequence[float] | None = None,
                     vmax: float | None = None, title: str | None = None, groups: Mapping[str, str] | None = None,
                     segments: Sequence[tuple[str, str]] | None = None) -> go.Figure:
    """Plotly figure of `result`: one panel per task and the mean, shared colour axis clipped at `vmax`.

    `groups` (label -> group, e.g. the merge a primed parent belongs to) colour the markers per group;
    `segments` (label pairs) are drawn as dashed lines in the first model's colour. Both default to
    the result's ``settings`` entries of those names (``mudsc landscape`` stores them).
    """
    groups, segments = _decoration(result, groups, segments)
    panels = _panels(result)
    xt, yt = _axis_titles(result)
    styles = marker_styles(result, groups)
    segs = _segment_coords(result, segments)
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p for p, _ in panels],
                        horizontal_spacing=0.06)
    # Equal aspect: size the plot area so the panels, not white space, fill it (and the colour bar
    # spans exactly the panels' height). Margins: left 80, right 140 (colour bar), bottom 110
    # (axis titles, legend).
    width = 380 * len(panels) + 160
    aspect = float(np.ptp(result.ys) / max(np.ptp(result.xs), 1e-12)) if len(result.xs) > 1 else 1.0
    panel_w = (width - 220) * (1 - 0.06 * (len(panels) - 1)) / len(panels)
    panel_h = int(min(max(panel_w * aspect, 150), 650))
    mask = result.overlap(overlap_threshold)[0].astype(float) if overlap_threshold is not None else None
    lo, hi, levels = _levels(panels, vmax)
    for col, (_, z) in enumerate(panels, start=1):
        fig.add_trace(go.Contour(x=result.xs, y=result.ys, z=np.minimum(z, hi), customdata=z, coloraxis="coloraxis",
                                 autocontour=False, contours=dict(start=lo, end=hi, size=levels[1] - levels[0]),
                                 line=dict(width=0.5, color="rgba(0,0,0,0.35)"), showlegend=False,
                                 hovertemplate="x %{x:.3g}<br>y %{y:.3g}<br>loss %{customdata:.4g}<extra></extra>"),
                      row=1, col=col)
        if mask is not None:
            fig.add_trace(go.Contour(x=result.xs, y=result.ys, z=mask, showscale=False, hoverinfo="skip",
                                     contours=dict(start=0.5, end=0.5, size=1, coloring="lines"),
                                     line=dict(width=2.5, color="black", dash="dash"),
                                     colorscale=[[0, "black"], [1, "black"]], showlegend=False),
                          row=1, col=col)
        for xs, ys, i in segs:
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                                     line=dict(color=styles[i].color, dash="dash", width=1.5)), row=1, col=col)
        for i, lab in enumerate(result.model_labels):
            role = result.model_roles[i] if i < len(result.model_roles) else "model"
            st = styles[i]
            fig.add_trace(go.Scatter(
                x=[result.model_coords[i, 0]], y=[result.model_coords[i, 1]], mode="markers",
                name=f"{lab} ({role})", showlegend=False,
                marker=dict(symbol=st.symbol, size=1.1 * st.size ** 0.5, color=st.color,
                            line=dict(width=1, color="white")),
                hovertemplate=(f"{lab}<br>distance to plane {result.model_distance[i]:.3g}"
                               f"<br>joint acc {result.model_joint_acc[i]:.3f}<extra></extra>")), row=1, col=col)
        fig.update_xaxes(title_text=xt, row=1, col=col, constrain="domain")
        fig.update_yaxes(title_text=yt if col == 1 else None, row=1, col=col, scaleanchor=f"x{'' if col == 1 else col}",
                         scaleratio=1, constrain="domain")
    for e in legend_entries(result, styles, groups):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines+markers" if e.dashed else "markers", name=e.name,
                                 showlegend=True, line=dict(color=e.color, dash="dash", width=1.5),
                                 marker=dict(symbol=e.symbol, color=e.color, size=14 if e.dashed else 10)),
                      row=1, col=1)
    if mask is not None:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", showlegend=True,
                                 line=dict(color="black", width=2.5, dash="dash"),
                                 name=_overlap_label(result, overlap_threshold)), row=1, col=1)
    note = offplane_note(result)
    top = 100 + 16 * (note.count("\n") + 1) if note else 100
    fig.update_layout(
        title=dict(text=_title(result, title), subtitle=dict(text=note.replace("\n", "<br>"), font=dict(size=11))),
        template="plotly_white", width=width, height=top + panel_h + 110,
        coloraxis=dict(colorscale="RdYlBu", cmin=lo, cmax=hi,
                       colorbar=dict(title=dict(text="loss" + (f" (clipped at {hi:g})" if vmax is not None else ""),
                                                side="right"))),
        legend=dict(orientation="h", yref="container", yanchor="bottom", y=0, x=0, traceorder="normal"),
        margin=dict(l=80, r=140, t=top, b=110, autoexpand=False))
    return fig


def _overlap_label(result: LandscapeResult, overlap_threshold) -> str:
    th = np.broadcast_to(np.asarray(overlap_threshold, float), (len(result.task_names),))
    share = result.overlap(overlap_threshold)[1]
    return (f"every task's loss below {', '.join(f'{t:.3g}' for t in np.unique(th))}: "
            + (f"{100 * share:.0f}% of the plane" if share else "nowhere on the plane"))


def path_figure(path: PathResult, *, title: str | None = None) -> go.Figure:
    """Loss along the path through the models (per task, mean, joint), models marked by vertical lines."""
    fig = go.Figure()
    for k, name in enumerate(path.task_names):
        fig.add_trace(go.Scatter(x=path.t, y=path.task_loss[:, k], mode="lines+markers", name=name))
    fig.add_trace(go.Scatter(x=path.t, y=path.mean_loss, mode="lines", name="mean of tasks", line=dict(width=3)))
    fig.add_trace(go.Scatter(x=path.t, y=path.joint_loss, mode="lines", name="joint", line=dict(dash="dot")))
    for t, lab in zip(path.vertex_t, path.labels):
        fig.add_vline(x=float(t), line=dict(color="grey", dash="dash"), annotation_text=lab)
    b = path.barriers()
    fig.update_layout(title=(title or "Loss along " + " -> ".join(path.labels))
                      + f" (barrier of mean loss {b['mean']:.3g}; BN: {path.bn_label})",
                      xaxis_title="t (share of path length)", yaxis_title="loss", template="plotly_white")
    return fig


def _matplotlib_landscape(result: LandscapeResult, *, overlap_threshold, vmax, title, groups=None, segments=None):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    panels = _panels(result)
    xt, yt = _axis_titles(result)
    styles = marker_styles(result, groups)
    segs = _segment_coords(result, segments)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1.2, 5.0), squeeze=False,
                             constrained_layout=True, sharey=True)
    mask = result.overlap(overlap_threshold)[0] if overlap_threshold is not None else None
    _, top, levels = _levels(panels, vmax)
    cs = None
    for ax, (name, z) in zip(axes[0], panels):
        cs = ax.contourf(result.xs, result.ys, np.minimum(z, top), levels=levels, cmap="RdYlBu", extend="max")
        ax.contour(result.xs, result.ys, np.minimum(z, top), levels=levels, colors="k", linewidths=0.3, alpha=0.4)
        if mask is not None and mask.any() and not mask.all():
            ax.contour(result.xs, result.ys, mask.astype(float), levels=[0.5], colors="k", linewidths=2,
                       linestyles="--")
        for xs, ys, i in segs:
            ax.plot(xs, ys, color=styles[i].color, linestyle="--", linewidth=1.3, zorder=4)
        for i, lab in enumerate(result.model_labels):
            st = styles[i]
            ax.scatter(*result.model_coords[i], marker=st.marker, s=st.size, color=st.color, edgecolors="white",
                       linewidths=0.8, zorder=5)
        ax.set_aspect("equal")
        ax.set_xlim(result.xs[0], result.xs[-1])
        ax.set_ylim(result.ys[0], result.ys[-1])
        ax.set_title(name)
        ax.set_xlabel(xt)
    axes[0][0].set_ylabel(yt)
    cb = fig.colorbar(cs, ax=axes[0].tolist(), shrink=0.9)
    cb.set_label("loss" + (f" (clipped at {top:g})" if vmax is not None else ""))
    handles, labels = [], []
    entries = legend_entries(result, styles, groups)
    for e in entries:
        handles.append(Line2D([], [], marker=e.marker, color=e.color, linestyle="--" if e.dashed else "none",
                              markeredgecolor="white", markersize=13 if e.marker == "*" else 8))
        labels.append(e.name)
    if mask is not None:
        handles.append(Line2D([], [], color="k", linestyle="--", linewidth=2))
        labels.append(_overlap_label(result, overlap_threshold))
    ncol = min(len(labels), 4 if groups else 5)
    note = offplane_note(result)
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=8, frameon=False,
               title=note or None, title_fontsize=7)
    fig.suptitle(_title(result, title))
    return fig


@dataclass(frozen=True)
class WrittenFigure:
    """Files written, by format, and what drew the static ones ('kaleido' or 'matplotlib (...)')."""

    paths: dict[str, Path]
    static_engine: str


def write_figure(result: LandscapeResult, stem: str | Path, *, formats: Sequence[str] = ("html", "png", "svg", "pdf"),
                 overlap_threshold: float | Sequence[float] | None = None, vmax: float | None = None,
                 title: str | None = None, groups: Mapping[str, str] | None = None,
                 segments: Sequence[tuple[str, str]] | None = None) -> WrittenFigure:
    """Write `result`'s figure as ``stem.<fmt>``: html always via Plotly; static formats via kaleido,
    or via matplotlib when kaleido has no browser to drive."""
    groups, segments = _decoration(result, groups, segments)
    bad = [f for f in formats if f not in ("html",) + STATIC_FORMATS]
    if bad:
        raise ConfigError(f"unknown figure format {bad[0]!r}; choose from html, {', '.join(STATIC_FORMATS)}")
    stem = Path(stem)
    output_dir(stem.parent)
    fig = landscape_figure(result, overlap_threshold=overlap_threshold, vmax=vmax, title=title, groups=groups,
                           segments=segments)
    # each file is rendered in full, then written atomically: a full disk or a killed process leaves no
    # half image under the final name (and DiskFullError is not mistaken for a missing renderer)
    files = {"html": figure_html(fig)}
    static = [f for f in formats if f in STATIC_FORMATS]
    engine = "none"
    if static:
        try:
            for f in static:
                files[f] = static_image(fig, f, scale=1.0)  # one kept browser for all formats
            engine = "kaleido"
        except Exception as e:  # kaleido raises its own types (no Chrome, timeouts); any of them means: fall back
            import matplotlib.pyplot as plt

            mfig = _matplotlib_landscape(result, overlap_threshold=overlap_threshold, vmax=vmax, title=title,
                                         groups=groups, segments=segments)
            for f in static:
                buf = io.BytesIO()
                mfig.savefig(buf, format=f, dpi=200)
                files[f] = buf.getvalue()
            plt.close(mfig)
            engine = f"matplotlib (kaleido unavailable: {type(e).__name__})"
    paths = {f: write_bytes(stem.with_name(f"{stem.name}.{f}"), data) for f, data in files.items()}
    return WrittenFigure(paths, engine)
