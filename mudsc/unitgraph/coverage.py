"""How much of a model a merge reaches: every tensor with the unit space of each axis, or why it stays
fixed, and a permutation-invariance check of the derived spaces.

A merge (ZipIt!, Stoica et al., 2024, Eq. 4) changes a tensor only along axes in unit spaces; every
other tensor is averaged. The spaces are right only if permuting the units of every space at once,
producers and consumers alike, leaves the function unchanged (the symmetry Git Re-Basin, Ainsworth
et al., 2023, Sec. 2 relies on); :func:`coverage` measures that in float64.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mudsc.unitgraph.build import explain
from mudsc.unitgraph.types import UnitGraph


@dataclass(frozen=True)
class TensorRow:
    """One state-dict tensor: the space on each axis (None: fixed), and why it stays fixed."""

    param: str
    shape: tuple[int, ...]
    spaces: tuple[str | None, ...]
    parameter: bool  # False for buffers (BatchNorm running statistics)
    reason: str = ""

    @property
    def merged(self) -> bool:
        return any(s is not None for s in self.spaces)


@dataclass(frozen=True)
class Coverage:
    """``summary``: ``merged_share`` (share of parameter tensors a merge changes), ``max_rel_change``
    (relative output change under random permutations of every space, float64), counts; ``tensors``:
    one row per state-dict tensor."""

    summary: dict[str, Any]
    tensors: tuple[TensorRow, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"summary": dict(self.summary),
                "tensors": [{**asdict(r), "shape": list(r.shape), "spaces": list(r.spaces), "merged": r.merged}
                            for r in self.tensors]}


def random_permutations(graph: UnitGraph, generator: torch.Generator) -> dict[str, Tensor]:
    """Per space a random order of its units [n]: groups permuted as blocks (alike within a group tie,
    as the q/k and v heads of one attention), units permuted inside each group unless the space is rigid
    (rotary q/k heads keep their inner order)."""
    perms, orders = {}, {}
    for s in graph.spaces:
        c = s.size // s.groups
        order = torch.randperm(s.groups, generator=generator)
        if s.group_tie:
            order = orders.setdefault(s.group_tie, order)
        inner = [torch.arange(c) if s.rigid else torch.randperm(c, generator=generator) for _ in range(s.groups)]
        perms[s.name] = torch.cat([order[k] * c + inner[k] for k in range(s.groups)])
    return perms


def permute_state_dict(sd: dict[str, Tensor], graph: UnitGraph, perms: dict[str, Tensor]) -> dict[str, Tensor]:
    """Reorder the units of every space in `perms` along each of its axes: with ``P = I[perm]``, producers
    become ``P W`` and consumers ``W P^T``, both an index along the axis (units span ``repeat`` entries)."""
    out = dict(sd)
    for s in graph.spaces:
        if s.name not in perms:
            continue
        for r in s.refs:
            w = out[r.param].movedim(r.axis, 0)
            stop = r.start + s.size * r.repeat
            block = w[r.start:stop].reshape(s.size, r.repeat, *w.shape[1:])[perms[s.name]]
            w = torch.cat([w[:r.start], block.reshape(-1, *w.shape[1:]), w[stop:]])
            out[r.param] = w.movedim(0, r.axis)
    return out


def _tensors(y: Any) -> list[Tensor]:
    if isinstance(y, Tensor):
        return [y]
    if isinstance(y, dict):
        y = list(y.values())
    return [t for v in (y if isinstance(y, (list, tuple)) else []) for t in _tensors(v)]


def max_rel_change(model: nn.Module, graph: UnitGraph, example: Tensor, *, trials: int = 2, seed: int = 0) -> float:
    """Largest ``|f'(x) - f(x)| / |f(x)|`` over `trials` random permutations of every space, in float64."""
    ref = copy.deepcopy(model).double().eval()
    moved = copy.deepcopy(ref)
    x = example.double() if example.is_floating_point() else example
    sd = ref.state_dict()
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    with torch.no_grad():
        y = torch.cat([t.flatten() for t in _tensors(ref(x))])
        for _ in range(trials):
            moved.load_state_dict(permute_state_dict(sd, graph, random_permutations(graph, gen)))
            y2 = torch.cat([t.flatten() for t in _tensors(moved(x))])
            worst = max(worst, ((y2 - y).norm() / y.norm().clamp_min(1e-300)).item())
    return worst


def coverage(model: nn.Module, example_input: Tensor, *, leaf_modules: tuple[type, ...] | None = None,
             seed: int = 0) -> Coverage:
    """The unit-space coverage of `model` run on `example_input` [b, ...] (a batch of the size it is used
    at): one row per state-dict tensor, the share of parameter tensors a merge changes, and the largest
    relative output change under random permutations of every space (float64; rounding level when the
    spaces are right)."""
    graph, why = explain(model, leaf_modules=leaf_modules, example=example_input)
    params = {k for k, _ in model.named_parameters()}
    rows = tuple(TensorRow(k, shape, axes, k in params, why.get(k, "")) for (k, shape), (_, axes)
                 in zip(graph.params, graph.table()))
    merged = sum(r.merged for r in rows if r.parameter)
    total = sum(r.parameter for r in rows)
    summary = {"merged_share": merged / total if total else 0.0,
               "max_rel_change": max_rel_change(model, graph, example_input, seed=seed),
               "parameter_tensors": total, "merged_tensors": merged, "spaces": len(graph.spaces),
               "rigid_spaces": [sp.name for sp in graph.spaces if sp.rigid]}
    return Coverage(summary, rows)
