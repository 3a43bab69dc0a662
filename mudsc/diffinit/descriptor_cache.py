"""Incremental weight descriptors for the iterative solve (MuDSC, Xu et al., CVPR 2024, Algorithm 1).

A space's descriptor Z [O, D] (:func:`~mudsc.diffinit.similarity.descriptors`) is a concatenation of
blocks, one per tensor touching the space, and a block reads only the maps of the neighbours owning
that tensor's other axes (:func:`~mudsc.diffinit.similarity.ref_neighbours`). The blocks are grouped
by the neighbours they read and kept on the compute device; a group is pooled again only when one of
those neighbours' matches is a different object than when it was last pooled, so late sweeps, which
change few spaces, redo a fraction of the pooling. The assembled descriptor is exactly the one a full
recompute gives (same blocks, same column order), so S_W and the solve are bit-identical to it.
"""
from __future__ import annotations

from typing import Literal

from torch import Tensor, cat

from mudsc.diffinit.similarity import descriptor_block, descriptor_refs, ref_neighbours, weight_similarity
from mudsc.diffinit.solvers.match import Match
from mudsc.unitgraph import UnitGraph


class DescriptorCache:
    """S_W of every space in `spaces` from the current matches, its descriptor blocks cached per group.

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
        # (space, group) -> (the matches it was pooled with, per parent its [size, d] blocks)
        self._cache: dict[tuple[str, int], tuple[tuple[Match | None, ...], list[list[Tensor]]]] = {}
        self.pooled = 0  # groups pooled, for tests and benchmarks

    def _group(self, space: str, g: int, matches: dict[str, Match]) -> list[list[Tensor]]:
        deps, positions = self.groups[space][g]
        key = tuple(matches.get(q) for q in deps)
        hit = self._cache.get((space, g))
        if hit is not None and all(a is b for a, b in zip(hit[0], key)):
            return hit[1]
        maps = {q: m.parts() for q, m in zip(deps, key) if m is not None}
        refs = descriptor_refs(self.graph, space)
        blocks = [[descriptor_block(self.sds, self.graph, space, refs[k], maps, i) for k in positions]
                  for i in range(len(self.sds))]
        self._cache[space, g] = (key, blocks)
        self.pooled += 1
        return blocks

    def descriptors(self, space: str, matches: dict[str, Match]) -> Tensor:
        """[O, D] descriptors of `space` given the neighbours' current `matches` (only solved ones are read)."""
        cols: dict[int, list[Tensor]] = {}
        for g, (_, positions) in enumerate(self.groups[space]):
            for k, per_parent in zip(positions, zip(*self._group(space, g, matches))):
                cols[k] = list(per_parent)
        n = len(self.sds)
        return cat([cat([cols[k][i] for k in sorted(cols)], 1) for i in range(n)], 0)

    def __call__(self, space: str, matches: dict[str, Match]) -> Tensor:
        """[O, O] S_W of `space` (see :func:`~mudsc.diffinit.similarity.weight_similarity`)."""
        return weight_similarity(self.descriptors(space, matches), metric=self.metric)
