"""Incremental weight similarity for the iterative solve (MuDSC, Xu et al., CVPR 2024, Algorithm 1).

A space's descriptor Z [O, D] (:func:`~mudsc.diffinit.similarity.descriptors`) is a concatenation of
blocks, one per tensor touching the space, and a block reads only the maps of the neighbours owning
that tensor's other axes (:func:`~mudsc.diffinit.similarity.ref_neighbours`). The blocks are grouped
by the neighbours they read. Every statistic S_W needs is a sum over column groups g:

    G = sum_g Z_g Z_g^T,    r = sum_g Z_g 1,    D = sum_g D_g
    Pearson: S_W = C / sqrt(diag C diag C^T),  C = G - r r^T / D     (cosine: C = G; inner: S_W = G)

so the cache keeps, per group, its [O, O] Gram part (float32 products about fixed row shifts near
the rows' means; float64 for Git Re-Basin's raw inner products) and row sums, on the compute
device, and recomputes a group only when one of its neighbours' matches is a different object than
when it was last computed. Late sweeps, which change few spaces, redo a fraction of the products;
the groups that read no other space (norm affine parameters) are computed once. Parts are summed in
group order, so the result depends only on the matches, never on the order the cache was filled in.
"""
from __future__ import annotations

from typing import Literal

from torch import Tensor, cat

from mudsc.diffinit.similarity import (
    descriptor_block,
    descriptor_refs,
    gram_part,
    mirror_blocks_,
    parent_blocks,
    ref_neighbours,
    similarity_from_parts,
)
from mudsc.diffinit.solvers.match import Match
from mudsc.unitgraph import UnitGraph


class DescriptorCache:
    """S_W of every space in `spaces` from the current matches, its Gram parts cached per descriptor group.

    Args:
        sds: the parents' state dicts (the tensors descriptors read are copied to `device` once).
        graph: their unit graph.
        spaces: the spaces whose similarity will be asked for.
        metric: ``pearson`` (MuDSC), ``cosine`` or ``inner`` (Git Re-Basin).
        device: where descriptors and similarities live.
    """

    def __init__(self, sds: list[dict[str, Tensor]], graph: UnitGraph, spaces: list[str], *,
                 metric: Literal["pearson", "cosine", "inner"] = "pearson", device=None) -> None:
        self.graph = graph
        self.metric = metric
        self.groups: dict[str, list[tuple[tuple[str, ...], list[int]]]] = {}  # deps, positions in the refs
        params: set[str] = set()
        for s in spaces:
            by_deps: dict[tuple[str, ...], list[int]] = {}
            for k, r in enumerate(descriptor_refs(graph, s)):
                by_deps.setdefault(ref_neighbours(graph, s, r), []).append(k)
                params.add(r.param)
            self.groups[s] = list(by_deps.items())
        self.sds = [{k: sd[k].to(device) for k in params} for sd in sds]
        # (space, group) -> (the matches it was computed with, (Gram part, row sums, width))
        self._cache: dict[tuple[str, int], tuple[tuple[Match | None, ...], tuple[Tensor, Tensor, int]]] = {}
        self._fixed: dict[str, tuple[Tensor, Tensor, int] | None] = {}  # the groups no solved space touches, summed
        self._shift: dict[str, Tensor] = {}
        self.pooled = 0  # groups computed, for tests and benchmarks

    def columns(self, space: str, g: int, matches: dict[str, Match]) -> Tensor:
        """[O, d_g]: group g's columns of `space`'s descriptor, parents stacked, under `matches`."""
        return cat(self.parent_columns(space, g, matches), 0)

    def parent_columns(self, space: str, g: int, matches: dict[str, Match]) -> list[Tensor]:
        """:meth:`columns` as one [O / N, d_g] block per parent."""
        deps, positions = self.groups[space][g]
        pools = {q: matches[q].poolings for q in deps if q in matches}
        refs = descriptor_refs(self.graph, space)
        blocks = [[descriptor_block(self.sds, self.graph, space, refs[k], pools, i) for k in positions]
                  for i in range(len(self.sds))]
        return [b[0] if len(b) == 1 else cat(b, 1) for b in blocks]

    def shift(self, space: str) -> Tensor:
        """[O] the row means of `space`'s descriptor before any neighbour is solved: every Gram part of
        the space is taken about them (:func:`~mudsc.diffinit.similarity.gram_part`)."""
        if space not in self._shift:
            z = cat([self.columns(space, g, {}) for g in range(len(self.groups[space]))], 1)
            self._shift[space] = z.double().mean(1)
        return self._shift[space]

    def _compute(self, space: str, g: int, matches: dict[str, Match]) -> tuple[Tensor, Tensor, int]:
        """Group g's Gram part (parent blocks i <= j only: :func:`_sum` mirrors the total), row sums, width."""
        blocks = self.parent_columns(space, g, matches)
        self.pooled += 1
        shift = self.shift(space) if self.metric == "pearson" else None
        return (*gram_part(blocks, self.metric, len(self.sds), shift, mirror=False), blocks[0].shape[1])

    def _part(self, space: str, g: int, matches: dict[str, Match]) -> tuple[Tensor, Tensor, int]:
        deps, _ = self.groups[space][g]
        key = tuple(matches.get(q) for q in deps)
        hit = self._cache.get((space, g))
        if hit is not None and all(a is b for a, b in zip(hit[0], key)):
            return hit[1]
        part = self._compute(space, g, matches)
        self._cache[space, g] = (key, part)
        return part

    def _fixed_part(self, space: str) -> tuple[Tensor, Tensor, int] | None:
        if space not in self._fixed:
            parts = [self._compute(space, g, {}) for g, (deps, _) in enumerate(self.groups[space]) if not deps]
            self._fixed[space] = _sum(parts, len(self.sds), self.metric) if parts else None
        return self._fixed[space]

    def __call__(self, space: str, matches: dict[str, Match]) -> Tensor:
        """[O, O] S_W of `space` given the neighbours' current `matches` (only solved ones are read)."""
        parts = [self._part(space, g, matches) for g, (deps, _) in enumerate(self.groups[space]) if deps]
        fixed = self._fixed_part(space)
        gram, rows, width = _sum(([fixed] if fixed is not None else []) + parts, len(self.sds), self.metric)
        return similarity_from_parts(gram, rows, width, self.metric)


def _sum(parts: list[tuple[Tensor, Tensor, int]], n: int, metric: str) -> tuple[Tensor, Tensor, int]:
    """Gram parts, row sums and widths added up, in the order given (a fresh Gram to overwrite). The
    parts hold their parent blocks i <= j (all of them for ``inner``); the sum is mirrored once."""
    gram = parts[0][0].clone()
    if metric == "inner" or gram.shape[0] % n:
        for p in parts[1:]:
            gram += p[0]
    else:
        o = gram.shape[0] // n
        for p in parts[1:]:
            for i, j in parent_blocks(n):
                gram[i * o:(i + 1) * o, j * o:(j + 1) * o] += p[0][i * o:(i + 1) * o, j * o:(j + 1) * o]
        mirror_blocks_(gram, n)
    return gram, sum((p[1] for p in parts[1:]), parts[0][1].clone()), sum(p[2] for p in parts)
