"""Unit-space coverage of a parent as the Parents page shows it: the engine's
:func:`mudsc.unitgraph.coverage.coverage`, one table row per parameter tensor."""
from __future__ import annotations

from torch import Tensor, nn

from mudsc.unitgraph.coverage import coverage as unit_coverage


def coverage(model: nn.Module, example_input: Tensor) -> tuple[float, list[dict]]:
    """The share of `model`'s parameter tensors a merge changes, and one row per parameter tensor: its
    shape and the space of each axis, or why it stays fixed."""
    cov = unit_coverage(model, example_input)
    rigid = set(cov.summary["rigid_spaces"])  # rotary heads: they move as whole heads only
    rows = [{"tensor": r.param, "shape": " x ".join(map(str, r.shape)), "in a unit space": r.merged,
             "axes": ", ".join(f"{a}: {s}" + _whole_heads(s, rigid) for a, s in enumerate(r.spaces) if s is not None)
             or f"none: only averaged ({r.reason or 'a fixed input or output space'})"}
            for r in cov.tensors if r.parameter]
    return cov.summary["merged_share"], rows


def _whole_heads(axis: str, rigid: set[str]) -> str:
    """A note for an axis holding rigid spaces (an axis lists its spaces joined by '+')."""
    names = sorted(rigid & set(axis.split("+")))
    return f" ({', '.join(names)}: whole heads only)" if names else ""
