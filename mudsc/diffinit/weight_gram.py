"""Incremental weight similarity S_W for the iterative solve (MuDSC, Xu et al., CVPR 2024, Algorithm 1).

A space's descriptor Z [O, D] (:func:`~mudsc.diffinit.similarity.descriptors`) is a concatenation of
blocks, one per tensor touching the space, and a block reads only the maps of the neighbours owning
that tensor's other axes. The Gram G = Z Z^T is the sum of the blocks' Grams, and every metric follows
from G, the row sums t = Z 1 and D:

    pearson   C = G - t t^T / D,  S_ij = C_ij / sqrt(C_ii C_jj)
    cosine    S_ij = G_ij / sqrt(G_ii G_jj)
    inner     S = G                                  (Git Re-Basin's objective)

So the blocks are grouped by the neighbours they read, and a group's Gram is recomputed only when
one of those neighbours' matches is a different object than when it was last computed: late sweeps,
which change few spaces, redo a fraction of the products. The Grams are float32 products (float64
for ``inner``) summed in float64, on the compute device.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from mudsc.diffinit.similarity import descriptor_block, descriptor_refs, ref_neighbours
from mudsc.diffinit.solvers.match import Match
from mudsc.unitgraph import AxisRef, UnitGraph


class WeightGrams:
    """S_W of every space in `spaces` from the current matches, with the blocks' Grams cached.

    Args:
        sds: the parents' state dicts (copied to `device` once).
        graph: their unit graph.
        spaces: the spaces whose similarity will be asked for.
        metric: ``pearson`` (MuDSC), ``cosine`` or ``inner`` (Git Re-Basin).
        device: where descriptors, Grams and similarities live.
    """

    def __init__(self, sds: list[dict[str, Tensor]], graph: UnitGraph, spaces: list[str], *,
                 metric: Literal["pearson", "cosine", "inner"] = "pearson", device=None) -> None:
        self.graph = graph
        self.metric = metric
        self.groups: dict[str, list[tuple[tuple[str, ...], list[AxisRef]]]] = {}
        params: set[str] = set()
        for s in spaces:
            by_deps: dict[tuple[str, ...], list[AxisRef]] = {}
            for r in descriptor_refs(graph, s):
                by_deps.setdefault(ref_neighbours(graph, s, r), []).append(r)
                params.add(r.param)
            self.groups[s] = list(by_deps.items())
        self.sds = [{k: sd[k].to(device) for k in params} for sd in sds]
        # (space, group) -> (the matches it was computed from, Gram [O, O], row sums [O], columns)
        self._cache: dict[tuple[str, int], tuple[tuple[Match | None, ...], Tensor, Tensor, int]] = {}
        self.products = 0  # group Grams computed, for benchmarks

    def _group(self, space: str, g: int, matches: dict[str, Match]) -> tuple[Tensor, Tensor, int]:
        deps, refs = self.groups[space][g]
        key = tuple(matches.get(q) for q in deps)
        hit = self._cache.get((space, g))
        if hit is not None and all(a is b for a, b in zip(hit[0], key)):
            return hit[1], hit[2], hit[3]
        maps = {q: m.parts() for q, m in zip(deps, key) if m is not None}
        z = torch.cat([torch.cat([descriptor_block(self.sds, self.graph, space, r, maps, i) for r in refs], 1)
                       for i in range(len(self.sds))], 0)
        zz = z.double() if self.metric == "inner" else z
        gram = zz @ zz.T
        rows = z.sum(1, dtype=torch.float64)
        self._cache[space, g] = (key, gram, rows, z.shape[1])
        self.products += 1
        return gram, rows, z.shape[1]

    def __call__(self, space: str, matches: dict[str, Match], *, eps: float = 1e-8) -> Tensor:
        """[O, O] S_W of `space` given the neighbours' current `matches` (float32; float64 for ``inner``)."""
        parts = [self._group(space, g, matches) for g in range(len(self.groups[space]))]
        gram = sum(p[0].double() for p in parts)
        if self.metric == "inner":
            return gram
        if self.metric == "pearson":
            rows = sum(p[1] for p in parts)
            gram = gram - torch.outer(rows, rows) / sum(p[2] for p in parts)
        norm = gram.diagonal().clamp_min(0).sqrt().clamp_min(eps)
        return (gram / torch.outer(norm, norm)).clamp(-1, 1).float()
