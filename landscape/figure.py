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

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mudsc.errors import ConfigError

from .barrier import PathResult
from .result import LandscapeResult

SYMBOLS = {"parent": ("circle", "o"), "merge": ("star", "*"), "model": ("diamond", "D")}
COLORS = ("#1b1b1b", "#6a3d9a", "#1f78b4", "#33a02c", "#ff7f00", "#b15928", "#e31a1c", "#a6cee3")
STATIC_FORMATS = ("png", "svg", "pdf")


def _panels(result: LandscapeResult) -> list[tuple[str, np.ndarray]]:
    return [(n, result.task_loss[k]) for k, n in enumerate(result.task_names)] + [("mean of tasks", result.mean_loss)]


def _axis_titles(result: LandscapeResult) -> tuple[str, str]:
    ev = result.settings.get("plane_info", {}).get("explained_variance")
    if ev:
        return (f"PC1 ({100 * ev[0]:.0f}% var.), parameter distance",
                f"PC2 ({100 * ev[1]:.0f}% var.), parameter distance")
    return "x, parameter distance (L2)", "y, parameter distance (L2)"


def _title(result: LandscapeResult, title: str | None) -> str:
    kind = result.settings.get("plane", {}).get("kind", "")
    head = title or ("Loss landscape" + (f", {kind.replace('_', '-')} plane" if kind else ""))
    tail = f"BN: {result.bn_label}"
    if not result.complete:
        tail += f"; partial: {int(result.done.sum())}/{result.done.size} points"
    return f"{head} ({tail})"


def landscape_figure(result: LandscapeResult, *, overlap_threshold: float | Sequence[float] | None = None,
                     vmax: float | None = None, title: str | None = None) -> go.Figure:
    """Plotly figure of `result`: one panel per task and the mean, shared colour axis clipped at `vmax`."""
    panels = _panels(result)
    xt, yt = _axis_titles(result)
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p for p, _ in panels],
                        horizontal_spacing=0.06)
    mask = result.overlap(overlap_threshold)[0].astype(float) if overlap_threshold is not None else None
    for col, (_, z) in enumerate(panels, start=1):
        fig.add_trace(go.Contour(x=result.xs, y=result.ys, z=z, coloraxis="coloraxis", ncontours=12,
                                 line=dict(width=0.5, color="rgba(0,0,0,0.35)"), showlegend=False,
                                 hovertemplate="x %{x:.3g}<br>y %{y:.3g}<br>loss %{z:.4g}<extra></extra>"),
                      row=1, col=col)
        if mask is not None:
            fig.add_trace(go.Contour(x=result.xs, y=result.ys, z=mask, showscale=False, hoverinfo="skip",
                                     contours=dict(start=0.5, end=0.5, size=1, coloring="lines"),
                                     line=dict(width=2.5, color="black", dash="dash"),
                                     colorscale=[[0, "black"], [1, "black"]], showlegend=False),
                          row=1, col=col)
        for i, lab in enumerate(result.model_labels):
            role = result.model_roles[i] if i < len(result.model_roles) else "model"
            fig.add_trace(go.Scatter(
                x=[result.model_coords[i, 0]], y=[result.model_coords[i, 1]], mode="markers+text", text=[lab],
                textposition="top center", name=f"{lab} ({role})", legendgroup=lab, showlegend=col == 1,
                marker=dict(symbol=SYMBOLS.get(role, SYMBOLS["model"])[0], size=13 if role == "merge" else 10,
                            color=COLORS[i % len(COLORS)], line=dict(width=1, color="white")),
                hovertemplate=(f"{lab}<br>distance to plane {result.model_distance[i]:.3g}"
                               f"<br>joint acc {result.model_joint_acc[i]:.3f}<extra></extra>")), row=1, col=col)
        fig.update_xaxes(title_text=xt, row=1, col=col, constrain="domain")
        fig.update_yaxes(title_text=yt if col == 1 else None, row=1, col=col, scaleanchor=f"x{'' if col == 1 else col}",
                         scaleratio=1, constrain="domain")
    if mask is not None:
        th = np.broadcast_to(np.asarray(overlap_threshold, float), (len(result.task_names),))
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", showlegend=True,
                                 line=dict(color="black", width=2.5, dash="dash"),
                                 name="all tasks below " + ", ".join(f"{t:.3g}" for t in th)), row=1, col=1)
    fig.update_layout(
        title=_title(result, title), template="plotly_white", width=380 * len(panels) + 160, height=470,
        coloraxis=dict(colorscale="RdYlBu", cmin=0 if vmax is not None else None, cmax=vmax,
                       colorbar=dict(title="loss" + (f" (clipped at {vmax:g})" if vmax is not None else ""))),
        legend=dict(orientation="h", yanchor="top", y=-0.2, x=0))
    return fig


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


def _matplotlib_landscape(result: LandscapeResult, *, overlap_threshold, vmax, title):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    panels = _panels(result)
    xt, yt = _axis_titles(result)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1.2, 4.6), squeeze=False,
                             constrained_layout=True)
    mask = result.overlap(overlap_threshold)[0] if overlap_threshold is not None else None
    top = vmax if vmax is not None else np.nanmax([np.nanmax(z) for _, z in panels])
    levels = np.linspace(0.0 if vmax is not None else np.nanmin([np.nanmin(z) for _, z in panels]), top, 13)
    cs = None
    for ax, (name, z) in zip(axes[0], panels):
        cs = ax.contourf(result.xs, result.ys, np.minimum(z, top), levels=levels, cmap="RdYlBu", extend="max")
        ax.contour(result.xs, result.ys, np.minimum(z, top), levels=levels, colors="k", linewidths=0.3, alpha=0.4)
        if mask is not None and mask.any() and not mask.all():
            ax.contour(result.xs, result.ys, mask.astype(float), levels=[0.5], colors="k", linewidths=2,
                       linestyles="--")
        for i, lab in enumerate(result.model_labels):
            role = result.model_roles[i] if i < len(result.model_roles) else "model"
            ax.scatter(*result.model_coords[i], marker=SYMBOLS.get(role, SYMBOLS["model"])[1],
                       s=140 if role == "merge" else 70, color=COLORS[i % len(COLORS)], edgecolors="white",
                       zorder=5, label=f"{lab} ({role})")
            ax.annotate(lab, result.model_coords[i], textcoords="offset points", xytext=(0, 7), ha="center",
                        fontsize=8)
        ax.set_aspect("equal")
        ax.set_title(name)
        ax.set_xlabel(xt)
    axes[0][0].set_ylabel(yt)
    fig.colorbar(cs, ax=axes[0].tolist(), label="loss" + (f" (clipped at {vmax:g})" if vmax is not None else ""))
    handles, labels = axes[0][0].get_legend_handles_labels()
    if mask is not None:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="k", linestyle="--", linewidth=2))
        labels.append("all tasks below threshold")
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 5), fontsize=8)
    fig.suptitle(_title(result, title))
    return fig


@dataclass(frozen=True)
class WrittenFigure:
    """Files written, by format, and what drew the static ones ('kaleido' or 'matplotlib (...)')."""

    paths: dict[str, Path]
    static_engine: str


def write_figure(result: LandscapeResult, stem: str | Path, *, formats: Sequence[str] = ("html", "png", "svg", "pdf"),
                 overlap_threshold: float | Sequence[float] | None = None, vmax: float | None = None,
                 title: str | None = None) -> WrittenFigure:
    """Write `result`'s figure as ``stem.<fmt>``: html always via Plotly; static formats via kaleido,
    or via matplotlib when kaleido has no browser to drive."""
    bad = [f for f in formats if f not in ("html",) + STATIC_FORMATS]
    if bad:
        raise ConfigError(f"unknown figure format {bad[0]!r}; choose from html, {', '.join(STATIC_FORMATS)}")
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    fig = landscape_figure(result, overlap_threshold=overlap_threshold, vmax=vmax, title=title)
    paths = {}
    fig.write_html(stem.with_suffix(".html"), include_plotlyjs=True)
    paths["html"] = stem.with_suffix(".html")
    static = [f for f in formats if f in STATIC_FORMATS]
    engine = "none"
    if static:
        try:
            for f in static:
                fig.write_image(stem.with_suffix(f".{f}"))
                paths[f] = stem.with_suffix(f".{f}")
            engine = "kaleido"
        except Exception as e:  # kaleido raises its own types (no Chrome, timeouts); any of them means: fall back
            import matplotlib.pyplot as plt

            mfig = _matplotlib_landscape(result, overlap_threshold=overlap_threshold, vmax=vmax, title=title)
            for f in static:
                mfig.savefig(stem.with_suffix(f".{f}"), dpi=200)
                paths[f] = stem.with_suffix(f".{f}")
            plt.close(mfig)
            engine = f"matplotlib (kaleido unavailable: {type(e).__name__})"
    return WrittenFigure(paths, engine)
