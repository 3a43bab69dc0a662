"""Weight-space similarity of units and its mix with activation similarity.

MuDSC (Xu et al., CVPR 2024, Sec. 3.2, Algorithm 1): each unit of a space is described by the
weights that produce it (conv filter / linear row, norm affine parameters, biases) and the weights
that consume it (the next layer's input slice), with every *other* axis of those tensors mapped into
the merged basis of its own space's current solution: consumer axes of a neighbour q through q's
merge map (averaging), producer axes through its unmerge map (summing). The similarity is the
Pearson correlation of the descriptors (cosine as an option); Git Re-Basin weight matching
(Ainsworth et al., ICLR 2023, Eq. 3) uses their plain inner products instead. The dual-space
similarity is S = alpha * S_W + (1 - alpha) * S_A.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .fuse import apply_along_axis
from .graph import UnitGraph


def descriptors(sds: list[dict[str, Tensor]], graph: UnitGraph, space: str,
                maps: dict[str, list[tuple[Tensor, Tensor]]]) -> Tensor:
    """N state dicts -> [O, D]: one weight descriptor per unit of `space`, parents stacked.

    `maps[q]` holds, per parent, (M_q_i [C, n], U_q_i [n, C]) of neighbour spaces solved so far; axes
    of unsolved neighbours stay as they are (the Git Re-Basin identity initialisation).
    """
    s = graph.space(space)
    refs = [r for r in s.refs if r.role != "stat"]
    params = {r.param for r in refs}
    # Every axis of those tensors that belongs to another solved space.
    others: dict[str, dict[int, list]] = {}
    for q in graph.spaces:
        if q.name == space or q.name not in maps:
            continue
        for r in q.refs:
            if r.param in params:
                others.setdefault(r.param, {}).setdefault(r.axis, []).append((q, r))
    rows = []
    for i, sd in enumerate(sds):
        parts = []
        for r in refs:
            w = sd[r.param].float()
            for axis, entries in others.get(r.param, {}).items():
                if axis == r.axis:
                    continue
                pieces = []
                for q, qr in entries:
                    m, u = maps[q.name][i]
                    # descriptor convention: consumer axes average (M), producer axes sum (U^T)
                    pieces.append((qr.start, q.size, qr.repeat, m if qr.role == "in" else u.T))
                w = apply_along_axis(w, axis, pieces)
            w = w.movedim(r.axis, 0)[r.start:r.start + s.size * r.repeat]
            parts.append(w.reshape(s.size, -1))
        rows.append(torch.cat(parts, 1))
    return torch.cat(rows, 0)


def weight_similarity(z: Tensor, *, metric: Literal["pearson", "cosine", "inner"] = "pearson",
                      eps: float = 1e-8) -> Tensor:
    """[O, D] descriptors -> [O, O]: Pearson correlation across the D entries (MuDSC default), cosine,
    or raw inner products (Git Re-Basin's objective)."""
    z = z.double()
    if metric == "inner":
        return (z @ z.T).float()
    if metric == "pearson":
        z = z - z.mean(1, keepdim=True)
    z = z / z.norm(dim=1, keepdim=True).clamp_min(eps)
    return (z @ z.T).clamp(-1, 1).float()


def _standardize(s: Tensor) -> Tensor:
    off = ~torch.eye(len(s), dtype=torch.bool)
    vals = s[off]
    return (s - vals.mean()) / vals.std().clamp_min(1e-8)


def mix(s_w: Tensor | None, s_a: Tensor | None, alpha: float, *,
        mode: Literal["published", "standardized"] = "published") -> Tensor:
    """[O, O], [O, O] -> S = alpha S_W + (1 - alpha) S_A (MuDSC Algorithm 1, mixed with the fixed S_A).

    ``published`` mixes the correlations as they are. ``standardized`` first z-scores each matrix over
    its off-diagonal entries: the published weight correlation can be nearly constant across unit
    pairs (BatchNorm scales dominate short descriptors), so without rescaling alpha only acts near 1.
    """
    if s_w is None or alpha == 0.0:
        return s_a
    if s_a is None or alpha == 1.0:
        return s_w
    if mode == "standardized":
        s_w, s_a = _standardize(s_w), _standardize(s_a)
    return alpha * s_w + (1 - alpha) * s_a
