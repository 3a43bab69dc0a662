"""Apply merge/unmerge maps to state dicts (ZipIt!, Stoica et al., 2024, Eq. 4; MuDSC, Xu et al.,
2024) and reset BatchNorm statistics afterwards (the REPAIR-style reset both codebases use).

For a space with maps ``M [C, n]`` (merge) and ``U [n, C]`` (unmerge), every axis producing its units
becomes ``M W`` along that axis and every axis consuming them ``W U``; a merged tensor is
``W* = sum_i M_i W_i U_i``.
"""
from __future__ import annotations

from typing import Iterable, Protocol

import torch
from torch import Tensor, nn

from mudsc.diffinit.solvers.match import cluster_pooling
from mudsc.distributed import Launch
from mudsc.errors import CheckpointError, ConfigError, DataError, ShapeMismatchError
from mudsc.models.multihead import UNMERGE
from mudsc.unitgraph import UnitGraph, check_params


class MatchLike(Protocol):
    """What :func:`fuse` needs from ``mudsc.solvers.match.Match``."""

    def parts(self) -> list[tuple[Tensor, Tensor]]:
        """Per parent i: (M_i [C, n_i], U_i [n_i, C])."""


def apply_along_axis(w: Tensor, axis: int, pieces: list[tuple[int, int, int, Tensor]]) -> Tensor:
    """[..., L, ...] -> [..., L', ...]: each piece (start, n, repeat, A [m, n]) replaces the n units at
    ``[start, start + n * repeat)`` of `axis` (unit-major) by ``A`` applied to them; the rest is kept."""
    w = w.movedim(axis, 0)
    out, pos = [], 0
    for start, n, rep, a in sorted(pieces, key=lambda p: p[0]):
        if start < pos:
            raise ConfigError(f"fuse: overlapping unit ranges on axis {axis} at entry {start}")
        block = w[start:start + n * rep]
        block = torch.tensordot(a.to(w), block.reshape(n, rep, *block.shape[1:]), dims=([1], [0]))
        out += [w[pos:start], block.reshape(-1, *block.shape[2:])]
        pos = start + n * rep
    out.append(w[pos:])
    return torch.cat(out).movedim(0, axis)


def pool_units(w: Tensor, axis: int, start: int, n: int, repeat: int, merge: Tensor, unmerge: Tensor, *,
               merge_side: bool) -> Tensor:
    """Replace the n units at ``[start, start + n * repeat)`` of `axis` by the C merged units: the
    merge map M [C, n] applied (weighted sum, ``merge_side``) or U^T (plain sum of each cluster).

    Equivalent to the dense product of :func:`apply_along_axis` for cluster maps (each unit goes to one
    merged unit, and M weighs a unit only in its own cluster: every matching solver's maps), in time
    linear in the tensor's size instead of C times it.
    """
    assign, weight = cluster_pooling(merge, unmerge)
    return pool_assigned(w, axis, start, n, repeat, assign, unmerge.shape[1], weight if merge_side else None)


def pool_assigned(w: Tensor, axis: int, start: int, n: int, repeat: int, assign: Tensor, c: int,
                  weight: Tensor | None = None) -> Tensor:
    """:func:`pool_units` from the units' merged units `assign` (and `weight`, on the merge side), into C."""
    assign = assign.to(w.device)
    w = w.movedim(axis, 0)
    block = w[start:start + n * repeat].reshape(n, repeat, *w.shape[1:])
    if weight is not None:
        block = block * weight.to(w.device, w.dtype).view(-1, *([1] * (block.ndim - 1)))
    pooled = torch.zeros(c, *block.shape[1:], dtype=w.dtype, device=w.device).index_add_(0, assign, block)
    pooled = pooled.reshape(c * repeat, *w.shape[1:])
    whole = start == 0 and n * repeat == w.shape[0]  # the usual case: no copy into a new tensor
    out = pooled if whole else torch.cat([w[:start], pooled, w[start + n * repeat:]])
    return out.movedim(0, axis)


def is_cluster_map(merge: Tensor, unmerge: Tensor) -> bool:
    """Whether U [n, C] sends each unit to one merged unit and M [C, n] weighs units only in their own
    cluster, so :func:`pool_units` applies the maps exactly."""
    u = unmerge
    return bool(((u == 0) | (u == 1)).all() and (u.sum(1) == 1).all() and not (merge * (1 - u.T)).any())


def _check_maps(graph: UnitGraph, maps: dict[str, tuple[Tensor, Tensor]]) -> None:
    for name, (m, u) in maps.items():
        n = graph.space(name).size
        if m.ndim != 2 or u.ndim != 2 or m.shape[1] != n or u.shape != (n, m.shape[0]):
            raise ShapeMismatchError(f"space {name!r} has {n} units: expected merge [C, {n}] and unmerge "
                                     f"[{n}, C], got {tuple(m.shape)} and {tuple(u.shape)}")


def transform_state_dict(sd: dict[str, Tensor], graph: UnitGraph,
                         maps: dict[str, tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """One parent: for every space s in `maps` with (M_s [C, n], U_s [n, C]), producer axes (``out``,
    ``stat``) become M_s W and consumer axes (``in``) W U_s, respecting start/repeat. Spaces absent
    from `maps` and tensors they do not touch are returned as they are (not copied)."""
    _check_maps(graph, maps)
    check_params(graph, sd)
    todo: dict[str, dict[int, list]] = {}
    for name, (m, u) in maps.items():
        s = graph.space(name)
        scatter = is_cluster_map(m, u)
        for r in s.refs:
            piece = (r.start, s.size, r.repeat, m, u, r.role, scatter)
            todo.setdefault(r.param, {}).setdefault(r.axis, []).append(piece)
    out = dict(sd)
    for key, axes in todo.items():
        w = sd[key]
        for axis, pieces in axes.items():
            if all(p[-1] for p in pieces):  # from the last range back, so earlier starts stay valid
                for start, n, rep, m, u, role, _ in sorted(pieces, key=lambda p: -p[0]):
                    w = pool_units(w, axis, start, n, rep, m, u, merge_side=role != "in")
            else:
                w = apply_along_axis(w, axis, [(start, n, rep, u.T if role == "in" else m)
                                               for start, n, rep, m, u, role, _ in pieces])
        out[key] = w
    return out


def head_state(sd: dict[str, Tensor], graph: UnitGraph, cut: str,
               maps: dict[str, tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """The tensors parent i's head runs on after `cut` (partial zipping, ZipIt! App. "Partial Zipping").
    Where the cut's space ends at the cut, its unmerge ``U_i`` folds into the consumers after it (as
    ZipIt! does). Where a residual stream spans the cut (beyond ZipIt!), the later blocks also write
    to the stream, so head i keeps its own tensors and gets ``U_i`` as an explicit unmerge
    (:data:`~mudsc.models.multihead.UNMERGE`). A cut on fixed channels (no space) needs neither."""
    c = graph.cut(cut)
    if not c.space or all(r.param in c.trunk_params for r in graph.space(c.space).producers):
        return transform_state_dict(sd, graph, maps)
    return {**sd, UNMERGE: maps[c.space][1]}


def fuse(sds: list[dict[str, Tensor]], graph: UnitGraph, matches: dict[str, MatchLike]) -> dict[str, Tensor]:
    """N parents -> one state dict: ``W* = sum_i M_i W_i U_i`` (ZipIt! Eq. 4) for every tensor with a
    producer axis in a matched space (each M_i already carries the 1/N weights). Tensors with no such
    axis (consumer-only layers such as the next fixed layer, untouched tensors) are averaged after
    their unmerge, which is the same rule with ``M_i = I / N``. Non-float buffers
    (``num_batches_tracked``) come from parent 0."""
    if not sds:
        raise ConfigError("fuse: no state dicts given")
    keys = list(sds[0])
    for i, sd in enumerate(sds[1:], 1):
        if list(sd) != keys:
            diff = sorted(set(keys) ^ set(sd))
            raise CheckpointError(f"fuse: parent {i} has different tensors than parent 0 (e.g. {diff[:3]})")
        for k in keys:
            if sd[k].shape != sds[0][k].shape:
                raise ShapeMismatchError(f"fuse: {k} is {tuple(sd[k].shape)} in parent {i} "
                                         f"but {tuple(sds[0][k].shape)} in parent 0")
    parts = {name: match.parts() for name, match in matches.items()}
    for name, p in parts.items():
        if len(p) != len(sds):
            raise ConfigError(f"fuse: match of space {name!r} has {len(p)} parents, expected {len(sds)}")
    moved = [transform_state_dict(sd, graph, {name: p[i] for name, p in parts.items()}) for i, sd in enumerate(sds)]
    merged_out = {r.param for name in matches for r in graph.space(name).producers}
    out = {}
    for k in keys:
        if not sds[0][k].is_floating_point():
            out[k] = sds[0][k]
        elif k in merged_out:
            out[k] = torch.stack([sd[k] for sd in moved]).sum(0)
        else:
            out[k] = torch.stack([sd[k] for sd in moved]).mean(0)
    return out


def reset_bn_stats_(model: nn.Module, batches: Iterable[Tensor], *, device: str | torch.device | None = None,
                    launch: Launch | None = None) -> nn.Module:
    """Recompute every BatchNorm's running statistics as plain averages over `batches` (one pass,
    no grad), the reset ZipIt! and MuDSC apply to parents and merges (from REPAIR, Jordan et al.,
    2023). Only BatchNorm layers run in train mode, so dropout does not perturb the statistics; the
    model ends in eval mode with its momenta restored. Items of `batches` may be ``(x, y)`` pairs.
    With `device`, the model moves there first; inputs follow the model's device.

    In a torchrun job (`launch`) batch ``i`` is rank ``i mod world``'s, and the per-rank averages are
    pooled, weighted by their batch counts, into one process's averages (to float32 rounding)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model.eval()
    if device is not None:
        model.to(device)
    p = next(model.parameters(), None)
    dev = p.device if p is not None else torch.device("cpu")
    momenta = [m.momentum for m in bns]
    model.eval()
    for m in bns:
        m.momentum = None
        m.reset_running_stats()
        m.train()
    seen = 0
    try:
        with torch.no_grad():
            for x in (batches if launch is None else launch.strided(batches)):
                x = x[0] if isinstance(x, (tuple, list)) else x
                model(x.to(dev, p.dtype) if p is not None and x.is_floating_point() else x.to(dev))
                seen += 1
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.eval()
    if launch is not None and launch.distributed:
        seen = _pool_bn_stats_(bns, seen, launch)
    if not seen:
        raise DataError("reset_bn_stats_: no batches to recompute BatchNorm statistics from")
    return model


def _pool_bn_stats_(bns: list[nn.modules.batchnorm._BatchNorm], seen: int, launch: Launch) -> int:
    """Every rank's plain averages over its `seen` batches -> the average over all ranks' batches."""
    stats = [b for m in bns for b in (m.running_mean, m.running_var) if b is not None]
    sums = [b.double() * seen for b in stats]
    total = launch.sum_counts([seen], "the count of BatchNorm batches")[0]
    launch.sum_(sums, "the sum of the BatchNorm statistics")
    for b, s in zip(stats, sums):
        b.copy_(s / max(total, 1))
    for m in bns:
        if m.num_batches_tracked is not None:
            m.num_batches_tracked.fill_(total)
    return total
