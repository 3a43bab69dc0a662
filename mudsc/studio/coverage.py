"""Unit-space coverage of a parent: which parameter tensors a merge can change, and along which axes.

A tensor with an axis in a unit space is permuted or zipped by a merge; one with none (an op the
unit graph does not know, or a fixed input or output space) is only averaged across the parents.
"""
from __future__ import annotations

from torch import nn

from mudsc.unitgraph import UnitGraph, trace


def coverage(model: nn.Module, graph: UnitGraph | None = None) -> tuple[float, list[dict]]:
    """The share of `model`'s parameter tensors with an axis in some unit space, and one row per
    parameter tensor: its shape and the space of each such axis (or why it stays fixed)."""
    graph = graph or trace(model)
    axes: dict[str, dict[int, str]] = {}
    for space in graph.spaces:
        for ref in (*space.producers, *space.consumers):
            axes.setdefault(ref.param, {})[ref.axis] = space.name
    rows = []
    for name, p in model.named_parameters():
        found = axes.get(name, {})
        rows.append({"tensor": name, "shape": " x ".join(map(str, p.shape)), "in a unit space": bool(found),
                     "axes": ", ".join(f"{a}: {s}" for a, s in sorted(found.items()))
                     or "none: only averaged (fixed input/output space or an op outside the unit graph)"})
    share = sum(r["in a unit space"] for r in rows) / max(len(rows), 1)
    return share, rows
