"""One-to-one solvers: weight averaging (identity) and Hungarian alignment to parent 0.

Hungarian alignment is the permutation matcher of Git Re-Basin (Ainsworth et al., ICLR 2023,
https://arxiv.org/abs/2209.04836) as used by ZipIt! ("Permute", Sec. 5) and MuDSC (reference B.5a):
each parent i >= 1 is aligned to parent 0 on the cross block S[parent 0, parent i] only.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from mudsc.diffinit.solvers.match import Match, check_similarity, match_from_assignment
from mudsc.diffinit.solvers.registry import register_solver
from mudsc.errors import ConfigError


def max_assignment(block: np.ndarray, *, who: str) -> np.ndarray:
    """[n, n] -> [n] long: cols[j] is the column matched to row j, maximizing the summed similarity."""
    try:
        rows, cols = linear_sum_assignment(block, maximize=True)
    except ValueError as e:  # -inf entries leaving no complete matching
        raise ConfigError(f"{who}: no complete matching: {e}") from None
    out = np.empty(block.shape[0], dtype=np.int64)
    out[rows] = cols
    return out


def aligned_match(cols: list[np.ndarray], sizes: tuple[int, ...], score: float) -> Match:
    """Per parent i >= 1, [n] cols (unit j of parent 0 <-> unit cols[j] of parent i) -> Match."""
    n = sizes[0]
    assign = np.empty(n * len(sizes), dtype=np.int64)
    assign[:n] = np.arange(n)
    for i, c in enumerate(cols, start=1):
        assign[i * n + c] = np.arange(n)
    return match_from_assignment(assign, sizes, score)


@register_solver("identity", paper="https://arxiv.org/abs/2305.03053")
def identity(sim: Tensor, sizes: Sequence[int]) -> Match:
    """[O, O], N equal sizes -> Match of weight averaging: unit j of every parent merges into unit j.

    ZipIt! Tab. 8 "Identity": merge = [I/N ... I/N], unmerge = [I; ...; I]. The score is the mean
    similarity of the pairs (parent 0 unit j, parent i unit j), averaged over parents 1..N-1.
    """
    s, sizes_t = check_similarity(sim, sizes, who="identity", equal=True)
    n = sizes_t[0]
    same = [np.arange(n)] * (len(sizes_t) - 1)
    score = float(np.mean([np.diagonal(s[:n, i * n:(i + 1) * n]).mean() for i in range(1, len(sizes_t))]))
    return aligned_match(same, sizes_t, score)


@register_solver("hungarian", paper="https://arxiv.org/abs/2209.04836")
def hungarian(sim: Tensor, sizes: Sequence[int]) -> Match:
    """[O, O], N equal sizes -> Match aligning every parent to parent 0 (reference B.5a).

    For each i >= 1 solve the linear assignment on S[parent 0, parent i] (maximize); merged unit j is
    the mean of parent-0 unit j and its matched units. Score (MuDSC): mean matched similarity,
    averaged over parents 1..N-1.
    """
    s, sizes_t = check_similarity(sim, sizes, who="hungarian", equal=True)
    n = sizes_t[0]
    cols, scores = [], []
    for i in range(1, len(sizes_t)):
        block = s[:n, i * n:(i + 1) * n]
        c = max_assignment(block, who="hungarian")
        cols.append(c)
        scores.append(block[np.arange(n), c].mean())
    return aligned_match(cols, sizes_t, float(np.mean(scores)))
