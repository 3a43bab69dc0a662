"""Result type of every matching solver: merge/unmerge maps of one unit space (ZipIt! Sec. 4, MuDSC Sec. 3).

Notation follows ZipIt! (Stoica et al., ICLR 2024, https://arxiv.org/abs/2305.03053): N parents with
``sizes[i]`` units each are stacked into O = sum(sizes) units; a solver returns the merge map M [C, O]
(merged unit = average of the units in its cluster) and the unmerge map U [O, C] (each unit is
replaced by the merged unit of its cluster). Also: input checks shared by all solvers.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from mudsc.errors import ConfigError


@dataclass(frozen=True, eq=False)
class Match:
    """Merge/unmerge maps of one unit space for N parents (ZipIt! Eq. / MuDSC notation).

    merge:   [C, O] float M: merged unit c = sum_u merge[c, u] * unit u (each row is an average over
             its cluster, rows sum to 1)
    unmerge: [O, C] 0/1 float U: unit u is replaced by merged unit c (one 1 per row)
    sizes:   units per parent (sum = O); parent i owns rows/cols offsets[i]:offsets[i]+sizes[i]
    score:   objective value (mean similarity of the chosen pairs; reference B.4 says per solver how)
    """

    merge: Tensor
    unmerge: Tensor
    sizes: tuple[int, ...]
    score: float

    def __post_init__(self) -> None:
        o = sum(self.sizes)
        if self.unmerge.shape != (o, self.merge.shape[0]) or self.merge.shape[1] != o:
            raise ValueError(f"Match: merge {tuple(self.merge.shape)} and unmerge {tuple(self.unmerge.shape)} "
                             f"do not fit sizes {self.sizes}")

    @property
    def offsets(self) -> tuple[int, ...]:
        """First global unit id of each parent."""
        return tuple(int(x) for x in np.cumsum((0,) + self.sizes[:-1]))

    @property
    def out_dim(self) -> int:
        """C, the number of merged units."""
        return int(self.merge.shape[0])

    def parts(self) -> list[tuple[Tensor, Tensor]]:
        """Per parent i: (M_i [C, n_i], U_i [n_i, C]), so merged = sum_i M_i x_i and x_i ~ U_i merged."""
        return [(self.merge[:, o:o + n], self.unmerge[o:o + n, :]) for o, n in zip(self.offsets, self.sizes)]

    @cached_property
    def poolings(self) -> list[tuple[Tensor, Tensor, int]]:
        """Per parent i: ([n_i] merged unit of each unit, [n_i] its weight in M_i, C), computed once (the
        iterative solve pools descriptors through every solution many times)."""
        return [(*cluster_pooling(m, u), self.out_dim) for m, u in self.parts()]

    def assignment(self) -> Tensor:
        """[O] long: the merged unit that replaces each unit."""
        return self.unmerge.argmax(dim=1)

    def clusters(self) -> list[list[int]]:
        """Per merged unit, the sorted global unit ids merged into it."""
        out: list[list[int]] = [[] for _ in range(self.out_dim)]
        for u, c in enumerate(self.assignment().tolist()):
            out[c].append(u)
        return out

    def _parent_counts(self) -> np.ndarray:
        """[C, N] units of each parent in each cluster."""
        return np.stack([u.sum(dim=0).numpy() for _, u in self.parts()], axis=1)

    @property
    def n_within(self) -> int:
        """Merges inside one parent, read off the clusters: sum over clusters and parents of (k_i - 1)+.

        Counted from the final clusters, so it can differ from the zip solver's budget counter, which
        labels a merged feature with one origin (a cluster {a0, b1} joined by c1 counts here, not there).
        """
        counts = self._parent_counts()
        return int(np.clip(counts - 1, 0, None).sum())

    @property
    def n_across(self) -> int:
        """Merges across parents, read off the clusters: sum over clusters of (parents present - 1)."""
        counts = self._parent_counts()
        return int(np.clip((counts > 0).sum(axis=1) - 1, 0, None).sum())


@dataclass(frozen=True, eq=False)
class GroupMatch(Match):
    """A :class:`Match` whose merged units form contiguous groups (MuDSC group matching, reference C).

    group_sim:    per parent i>=1: [g, g] mean matched similarity of group pairs (parent 0 x parent i)
    group_assign: per parent i>=1: [g] long, group j of parent 0 is paired with group group_assign[j]
    within:       per parent i>=1: [g, c] long, unit k of parent-0 group j is aligned to unit
                  within[j, k] of the paired group (the intra-group Hungarian that paired the groups)
    """

    group_sim: tuple[Tensor, ...]
    group_assign: tuple[Tensor, ...]
    within: tuple[Tensor, ...]


def cluster_pooling(merge: Tensor, unmerge: Tensor) -> tuple[Tensor, Tensor]:
    """Cluster maps M [C, n], U [n, C] -> ([n] merged unit of each unit, [n] its weight in that unit's
    row of M): all that pooling through them reads (:func:`mudsc.diffinit.fuse.pool_units`)."""
    assign = unmerge.argmax(1)
    return assign, merge[assign, torch.arange(len(assign), device=merge.device)]


def match_from_assignment(assign: np.ndarray, sizes: Sequence[int], score: float) -> Match:
    """[O] merged-unit id of every unit (ids 0..C-1, each used) -> Match with averaging merge rows."""
    o = len(assign)
    c = int(assign.max()) + 1
    unmerge = torch.zeros(o, c, dtype=torch.float32)
    unmerge[torch.arange(o), torch.as_tensor(assign, dtype=torch.long)] = 1.0
    merge = (unmerge / unmerge.sum(dim=0, keepdim=True)).T.contiguous()
    return Match(merge, unmerge, tuple(int(n) for n in sizes), float(score))


def check_sizes(sizes: Sequence[int], *, who: str, equal: bool) -> tuple[int, ...]:
    """Validated units per parent: at least two parents, positive ints, all equal when `equal`."""
    try:
        sizes_t = tuple(int(n) for n in sizes)
    except (TypeError, ValueError):
        raise ConfigError(f"{who}: sizes must be a sequence of ints, got {sizes!r}") from None
    if len(sizes_t) < 2 or min(sizes_t) < 1:
        raise ConfigError(f"{who}: need at least 2 parents with >= 1 unit each, got sizes {sizes_t}")
    if equal and len(set(sizes_t)) != 1:
        raise ConfigError(f"{who}: all parents must have the same number of units, got sizes {sizes_t}")
    return sizes_t


def check_similarity(sim: Tensor, sizes: Sequence[int], *, who: str, equal: bool, on_device: bool = False
                     ) -> tuple[np.ndarray | Tensor, tuple[int, ...]]:
    """[O, O] similarity -> (CPU numpy copy, sizes), after checking shape, NaN/+inf and symmetry.

    -inf entries are allowed (a forbidden pair); float32/float64 keep their precision, other dtypes
    become float32 (the zip solver's tie order depends on the exact values). `on_device`: the copy is
    a tensor on the input's device instead (checked there).
    """
    sizes_t = check_sizes(sizes, who=who, equal=equal)
    if not isinstance(sim, Tensor):
        sim = torch.as_tensor(sim)
    o = sum(sizes_t)
    if sim.ndim != 2 or sim.shape != (o, o):
        raise ConfigError(f"{who}: similarity must be [{o}, {o}] for sizes {sizes_t}, got {tuple(sim.shape)}")
    sim = sim.detach() if on_device else sim.detach().cpu()
    if sim.dtype not in (torch.float32, torch.float64):
        sim = sim.to(torch.float32)
    if on_device:
        return _checked_tensor(sim, who), sizes_t
    s = sim.numpy()
    top = s.max()  # NaN propagates through max, so one pass finds both NaN and +inf
    if np.isnan(top):
        raise ConfigError(f"{who}: similarity contains NaN ({int(np.isnan(s).sum())} entries)")
    if np.isposinf(top):
        raise ConfigError(f"{who}: similarity contains +inf")
    # exact symmetry keeps the zip solver's row and column updates identical; the solvers write into
    # the copy, never into the caller's tensor
    if _is_symmetric(s):
        return s.copy(), sizes_t
    sym = (s + s.T) / 2
    with np.errstate(invalid="ignore"):  # -inf - -inf is NaN, which compares as symmetric
        off = np.abs(s - sym)
        if (off > 1e-5 + 1e-4 * np.abs(sym)).any():
            raise ConfigError(f"{who}: similarity is not symmetric (max |S - S^T| / 2 = {np.nanmax(off):.3g})")
    return sym, sizes_t


def _checked_tensor(s: Tensor, who: str) -> Tensor:
    """:func:`check_similarity`'s checks with tensor operations, where `s` lives (a GPU's products
    need not be exactly symmetric)."""
    top = s.max()
    if torch.isnan(top):
        raise ConfigError(f"{who}: similarity contains NaN ({int(torch.isnan(s).sum())} entries)")
    if torch.isposinf(top):
        raise ConfigError(f"{who}: similarity contains +inf")
    if torch.equal(s, s.T):
        return s.clone()
    sym = (s + s.T) / 2
    off = (s - sym).abs()  # NaN where both are -inf, which compares as symmetric
    if (off > 1e-5 + 1e-4 * sym.abs()).any():
        raise ConfigError(f"{who}: similarity is not symmetric (max |S - S^T| / 2 = {off.nan_to_num(0).max():.3g})")
    return sym


def _is_symmetric(s: np.ndarray, tile: int = 128) -> bool:
    """Whether s == s^T exactly, compared tile against tile: a whole-matrix s.T reads across rows
    and runs several times slower on the [O, O] matrices of a paper-scale space."""
    n = len(s)
    return all(np.array_equal(s[i:i + tile, j:j + tile], s[j:j + tile, i:i + tile].T)
               for i in range(0, n, tile) for j in range(i, n, tile))


def check_unit_interval(value: float, *, name: str, who: str) -> float:
    """`value` as a float in [0, 1], else ConfigError."""
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ConfigError(f"{who}: {name} must be in [0, 1], got {value!r}")
    return v
