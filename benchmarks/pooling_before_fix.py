"""The weight descriptor's neighbour pooling as it was before issue 18, for before/after tables only.

Since issue 18 a solved neighbour's consumer axes pool through ``N * M`` (MuDSC's code stores
``merge * len(self.params)``); before, they pooled through ``M``. Benchmarks that report "before"
numbers call :func:`use_mean_pooling` once, before any merge; the engine itself has one rule.
"""
from __future__ import annotations

from mudsc.diffinit import similarity


def use_mean_pooling(n_parents: int) -> None:
    """Make every descriptor pool consumer axes through M instead of N * M, in this process."""
    published = similarity.pool_units

    def mean_pool(w, axis, start, n, repeat, merge, unmerge, *, merge_side):
        return published(w, axis, start, n, repeat, merge / n_parents, unmerge, merge_side=merge_side)

    similarity.pool_units = mean_pool
