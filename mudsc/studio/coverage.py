"""Unit-space coverage of a parent as the Parents page shows it: the engine's
:func:`mudsc.unitgraph.coverage.coverage`, one table row per parameter tensor."""
from __future__ import annotations

from torch import Tensor, nn

from mudsc.unitgraph.coverage import coverage as unit_coverage


def coverage(model: nn.Module, example_input: Tensor) -> tuple[float, list[dict]]:
    """The share of `model`'s parameter tensors a merge changes, and one row per parameter tensor: its
    shape and the space of each axis, or why it stays fixed."""
    cov = unit_coverage(model, example_input)
    rows = [{"tensor": r.param, "shape": " x ".join(map(str, r.shape)), "in a unit space": r.merged,
             "axes": ", ".join(f"{a}: {s}" for a, s in enumerate(r.spaces) if s is not None)
             or f"none: only averaged ({r.reason or 'a fixed input or output space'})"}
            for r in cov.tensors if r.parameter]
    return cov.summary["merged_share"], rows
