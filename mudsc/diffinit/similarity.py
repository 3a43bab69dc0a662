"""Weight-space similarity of units and its mix with activation similarity.

MuDSC (Xu et al., CVPR 2024, Sec. 3.2, Algorithm 1): each unit of a space is described by the
weights that produce it (conv filter / linear row, norm affine parameters, biases) and the weights
that consume it (the next layer's input slice), with every *other* axis of those tensors mapped into
the merged basis of its own space's current solution: consumer axes of a neighbour q through
``N * M_q`` (N parents; the merge map scaled as MuDSC's code stores it, ``merge * len(self.params)``
in ``homogeneous_tasks/mudsc.py``, so a matched pair sums rather than averages and a unit's producer
block keeps its weight against its consumer blocks), producer axes through q's unmerge map (summing). The similarity is the
Pearson correlation of the descriptors (cosine as an option); Git Re-Basin weight matching
(Ainsworth et al., ICLR 2023, Eq. 3) uses their plain inner products instead. The dual-space
similarity is S = alpha * S_W + (1 - alpha) * S_A.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import Tensor

from mudsc.diffinit.fuse import pool_assigned
from mudsc.diffinit.solvers.match import cluster_pooling
from mudsc.diffinit.transpose import copy_transposed_
from mudsc.unitgraph import AxisRef, UnitGraph, UnitSpace


def descriptor_neighbours(graph: UnitGraph, space: str) -> frozenset[str]:
    """The other unit spaces whose maps :func:`descriptors` of `space` reads (they share a tensor with it)."""
    params = {r.param for r in graph.space(space).refs if r.role != "stat"}
    return frozenset(q.name for q in graph.spaces
                     if q.name != space and any(r.param in params for r in q.refs))


def descriptors(sds: list[dict[str, Tensor]], graph: UnitGraph, space: str,
                maps: dict[str, list[tuple[Tensor, Tensor]]]) -> Tensor:
    """N state dicts -> [O, D]: one weight descriptor per unit of `space`, parents stacked.

    `maps[q]` holds, per parent, (M_q_i [C, n], U_q_i [n, C]) of neighbour spaces solved so far; axes
    of unsolved neighbours stay as they are (the Git Re-Basin identity initialisation). Consumer axes
    pool through ``N * M_q_i``, producer axes through ``U_q_i^T`` (see the module docstring).
    """
    refs = descriptor_refs(graph, space)
    pools = {q: [(*cluster_pooling(m, u), u.shape[1]) for m, u in parts] for q, parts in maps.items()}
    return torch.cat([torch.cat([descriptor_block(sds, graph, space, r, pools, i) for r in refs], 1)
                      for i in range(len(sds))], 0)


def descriptor_refs(graph: UnitGraph, space: str) -> list[AxisRef]:
    """The tensor axes whose slices make up the descriptor of `space`, in order (no running statistics)."""
    return [r for r in graph.space(space).refs if r.role != "stat"]


def ref_neighbours(graph: UnitGraph, space: str, ref: AxisRef) -> tuple[str, ...]:
    """The other spaces owning an axis of `ref`'s tensor: the only maps its descriptor block reads."""
    return tuple(sorted({q.name for q in graph.spaces if q.name != space
                         and any(qr.param == ref.param and qr.axis != ref.axis for qr in q.refs)}))


def descriptor_block(sds: list[dict[str, Tensor]], graph: UnitGraph, space: str, ref: AxisRef,
                     pools: dict[str, list[tuple[Tensor, Tensor, int]]], i: int) -> Tensor:
    """Parent i's [size, d] slice of `space`'s descriptor from the tensor `ref` names, its axes owned by
    solved neighbours (those in `pools`: per parent, each unit's merged unit, its merge weight, and
    the number of merged units, :meth:`~mudsc.diffinit.solvers.match.Match.poolings`) pooled into them."""
    s = graph.space(space)
    w = sds[i][ref.param].float().movedim(ref.axis, 0)[ref.start:ref.start + s.size * ref.repeat]
    by_axis: dict[int, list[tuple[UnitSpace, AxisRef]]] = {}
    for q in graph.spaces:
        if q.name != space and q.name in pools:
            for qr in q.refs:
                if qr.param == ref.param and qr.axis != ref.axis:
                    by_axis.setdefault(qr.axis, []).append((q, qr))
    for axis, entries in by_axis.items():
        # our unit axis now leads, so the other axes shift by one when they preceded it
        ax = axis + 1 if axis < ref.axis else axis
        for q, qr in sorted(entries, key=lambda e: -e[1].start):
            assign, weight, c = pools[q.name][i]
            w = pool_assigned(w, ax, qr.start, q.size, qr.repeat, assign, c,
                              len(sds) * weight if qr.role == "in" else None)
    return w.reshape(s.size, -1)


def gram_part(z: Tensor | Sequence[Tensor], metric: Literal["pearson", "cosine", "inner"], n_parents: int = 1,
              shift: Tensor | None = None, *, mirror: bool = True) -> tuple[Tensor, Tensor]:
    """[O, d] descriptor columns, parents stacked (or the N parents' [O / N, d] blocks) -> (their
    [O, O] Gram part, [O] float64 row sums).

    Pearson parts are of ``z - shift`` (one value per row, the same for every group of a descriptor):
    any shift leaves the centred Gram unchanged (:func:`similarity_from_parts`), and one near each
    row's mean keeps float32 products from cancelling when a descriptor sits far from zero. Only the
    parent blocks i <= j are multiplied; the others are their transposes, written unless not
    `mirror` (a caller summing parts mirrors the sum once, :func:`mirror_blocks_`). (CPU BLAS gives
    z z^T exactly symmetric; where a backend does not, the solvers' input check symmetrises S.)
    """
    if metric == "inner":
        z = (z if isinstance(z, Tensor) else torch.cat(list(z))).double()
        return z @ z.T, z.sum(1)
    if isinstance(z, Tensor):
        blocks = z.split(z.shape[0] // n_parents if z.shape[0] % n_parents == 0 else z.shape[0])
    else:
        blocks = list(z)
    o = blocks[0].shape[0]
    centred, rows = [], []
    for i, zi in enumerate(blocks):
        zi = zi.float()
        if shift is not None and metric == "pearson":
            zi = zi - shift[i * o:(i + 1) * o, None].to(zi)
        centred.append(zi)
        rows.append(zi.sum(1).double())
    n = len(blocks)
    gram = torch.empty(n * o, n * o, dtype=centred[0].dtype, device=centred[0].device)
    for i, j in parent_blocks(n):
        torch.mm(centred[i], centred[j].T, out=gram[i * o:(i + 1) * o, j * o:(j + 1) * o])
    if mirror:
        mirror_blocks_(gram, n)
    return gram, torch.cat(rows)


def parent_blocks(n: int) -> list[tuple[int, int]]:
    """The parent blocks (i, j), i <= j, of an [O, O] matrix over n parents: those a Gram part computes."""
    return [(i, j) for i in range(n) for j in range(i, n)]


def mirror_blocks_(gram: Tensor, n: int) -> Tensor:
    """Write each parent block (i, j), i < j, of `gram` transposed into block (j, i)."""
    o = gram.shape[0] // n
    for i, j in parent_blocks(n):
        if j > i:
            copy_transposed_(gram[j * o:(j + 1) * o, i * o:(i + 1) * o], gram[i * o:(i + 1) * o, j * o:(j + 1) * o])
    return gram


def similarity_from_parts(gram: Tensor, rows: Tensor, width: int,
                          metric: Literal["pearson", "cosine", "inner"], rtol: float = 1e-6) -> Tensor:
    """Gram parts summed over column groups (overwritten), row sums and column count -> [O, O] S_W.

    Pearson: C = G - r r^T / D, then C_ij / sqrt(C_ii C_jj); cosine: the same on G; inner: G itself.
    With the parts shifted near each row's mean, r is small and C keeps float32 precision. A unit
    whose spread is below float32 resolution of its second moment (a constant descriptor) gets
    similarity 0.
    """
    if metric == "inner":
        return gram
    second = gram.diagonal().clone()
    if metric == "pearson":
        r = (rows / width ** 0.5).to(gram.dtype)
        gram.addr_(r, r, alpha=-1)  # exact negation: r_i r_j and r_j r_i round alike
    var = gram.diagonal()
    inv = torch.where(var > rtol * second.abs(), var.clamp_min(1e-30).rsqrt(), torch.zeros_like(var))
    # a symmetric factor inv_i inv_j (not rows, then columns): a symmetric G gives a symmetric S_W
    return gram.mul_(torch.outer(inv, inv)).clamp_(-1, 1)


def weight_similarity(z: Tensor, *, metric: Literal["pearson", "cosine", "inner"] = "pearson") -> Tensor:
    """[O, D] descriptors -> [O, O]: Pearson correlation across the D entries (MuDSC default), cosine,
    or raw inner products (Git Re-Basin's objective); one group of :func:`similarity_from_parts`."""
    shift = z.double().mean(1) if metric == "pearson" else None
    return similarity_from_parts(*gram_part(z, metric, shift=shift), z.shape[1], metric)


def _standardize(s: Tensor) -> Tensor:
    off = ~torch.eye(len(s), dtype=torch.bool, device=s.device)
    vals = s[off]
    return (s - vals.mean()) / vals.std().clamp_min(1e-8)


def mix(s_w: Tensor | None, s_a: Tensor | None, alpha: float, *,
        mode: Literal["published", "standardized"] = "published", overwrite: bool = False) -> Tensor:
    """[O, O], [O, O] -> S = alpha S_W + (1 - alpha) S_A (MuDSC Algorithm 1, mixed with the fixed S_A).

    ``published`` mixes the correlations as they are. ``standardized`` first z-scores each matrix over
    its off-diagonal entries: the published weight correlation can be nearly constant across unit
    pairs (BatchNorm scales dominate short descriptors), so without rescaling alpha only acts near 1.
    `overwrite`: S_W is the caller's to reuse, and S is written into it (same values).
    """
    if s_w is None or alpha == 0.0:
        return s_a
    if s_a is None or alpha == 1.0:
        return s_w
    if mode == "standardized":
        s_w, s_a = _standardize(s_w), _standardize(s_a)
    scaled = s_w.mul_(alpha) if overwrite else s_w * alpha
    return scaled.add_(s_a, alpha=1 - alpha)  # elementwise: symmetric inputs, symmetric S
