"""Group-constrained solvers for attention heads and GroupNorm groups (MuDSC, reference section C).

MuDSC (Xu et al., CVPR 2024, https://arxiv.org/abs/2403.07816, Fig. 2 "group matching"): each parent's
C = g * c units form g contiguous groups of c units. Merged units must stay inside one merged group
and merged groups must stay contiguous and of size c, or multi-head attention / GroupNorm change
meaning. Both solvers first pair the groups of every parent i >= 1 with those of parent 0 by a
two-level Hungarian: a c x c assignment for every group pair (j, k) scored by its mean matched
similarity G[j, k], then a g x g assignment on G.

Rigid groups (our extension, for rotary q/k heads whose units a position-dependent rotation pairs
inside each head): the units of a group keep their order, so the intra-group matching is the identity,
G[j, k] is the mean diagonal of the block S_jk, and only the group assignment is solved.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from mudsc.diffinit.solvers.align import max_assignment
from mudsc.diffinit.solvers.match import GroupMatch, Match, check_similarity, check_unit_interval, match_from_assignment
from mudsc.diffinit.solvers.registry import register_solver
from mudsc.diffinit.solvers.zip import model_budget, zip_owners
from mudsc.errors import ConfigError


def pair_groups(block: np.ndarray, *, groups: int, who: str, sigma: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[g*c, g*c] cross block S[parent 0, parent i] -> (G [g, g], sigma [g], within [g, c]).

    G[j, k]: mean similarity of the best one-to-one matching of group j (parent 0) to group k
    (parent i); sigma: the group assignment maximizing the sum of G, unless given (spaces whose
    groups are tied, such as the Q/K and V/proj heads of one attention layer, share one); within[j]:
    the unit matching of group j to group sigma[j], as unit ids local to that group.
    """
    g = groups
    c = block.shape[0] // g
    pairs = block.reshape(g, c, g, c).transpose(0, 2, 1, 3)  # [j, k, unit of j, unit of k]
    sim = np.empty((g, g), dtype=np.float64)
    cols = np.empty((g, g, c), dtype=np.int64)
    for j in range(g):
        for k in range(g):
            cols[j, k] = max_assignment(pairs[j, k], who=who)
            sim[j, k] = pairs[j, k][np.arange(c), cols[j, k]].mean()
    if sigma is None:
        sigma = max_assignment(sim, who=who)
    return sim, np.asarray(sigma), cols[np.arange(g), sigma]


def rigid_scores(block: np.ndarray, *, groups: int) -> np.ndarray:
    """[g*c, g*c] cross block S[parent 0, parent i] -> G [g, g] of rigid groups: G[j, k] =
    (1/c) sum_d S[(j, d), (k, d)], unit d of group j facing unit d of group k (the scale of
    :func:`pair_groups`' G, so tied rigid and free spaces add up)."""
    c = block.shape[0] // groups
    return np.einsum("jdkd->jk", block.reshape(groups, c, groups, c)) / c


def _check_groups(sizes: tuple[int, ...], groups: int, who: str) -> int:
    """Units per group, after checking that `groups` divides the parents' size."""
    if not isinstance(groups, (int, np.integer)) or groups < 1 or sizes[0] % groups:
        raise ConfigError(f"{who}: groups must be a positive int dividing the parents' size {sizes[0]}, "
                          f"got {groups!r}")
    return sizes[0] // int(groups)


def _check_pairing(pairing: Sequence[np.ndarray] | None, sizes: tuple[int, ...], who: str) -> None:
    if pairing is not None and len(pairing) != len(sizes) - 1:
        raise ConfigError(f"{who}: pairing needs one group assignment per parent after the first, got {len(pairing)}")


def _pair_all(s: np.ndarray, sizes: tuple[int, ...], groups: int, who: str,
              pairing: Sequence[np.ndarray] | None = None) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Group pairing of every parent i >= 1 with parent 0 -> per parent (G, sigma, within)."""
    n = sizes[0]
    _check_pairing(pairing, sizes, who)
    out = [pair_groups(s[:n, i * n:(i + 1) * n], groups=groups, who=who,
                       sigma=None if pairing is None else np.asarray(pairing[i - 1])) for i in range(1, len(sizes))]
    return [o[0] for o in out], [o[1] for o in out], [o[2] for o in out]


def _group_match(m: Match, sims: list[np.ndarray], sigmas: list[np.ndarray], withins: list[np.ndarray]
                 ) -> GroupMatch:
    return GroupMatch(m.merge, m.unmerge, m.sizes, m.score,
                      group_sim=tuple(torch.as_tensor(x, dtype=torch.float32) for x in sims),
                      group_assign=tuple(torch.as_tensor(x, dtype=torch.long) for x in sigmas),
                      within=tuple(torch.as_tensor(x, dtype=torch.long) for x in withins))


@register_solver("group-hungarian", paper="https://arxiv.org/abs/2403.07816")
def group_hungarian(sim: Tensor, sizes: Sequence[int], *, groups: int,
                    pairing: Sequence[np.ndarray] | None = None) -> GroupMatch:
    """[O, O], N equal sizes g*c -> GroupMatch aligning every parent to parent 0 group-wise.

    MuDSC group alignment (reference C): unit k of parent-0 group j merges with unit within[j, k] of
    group sigma[j] of each parent. Score: mean of G over the chosen group pairs, averaged over parents.
    `pairing` fixes the group assignment of each parent i >= 1 (tied spaces).
    """
    s, sizes_t = check_similarity(sim, sizes, who="group_hungarian", equal=True)
    c = _check_groups(sizes_t, groups, "group_hungarian")
    n = sizes_t[0]
    sims, sigmas, withins = _pair_all(s, sizes_t, int(groups), "group_hungarian", pairing)
    assign = np.empty(n * len(sizes_t), dtype=np.int64)
    assign[:n] = np.arange(n)
    for i, (sigma, within) in enumerate(zip(sigmas, withins), start=1):
        assign[i * n + (sigma[:, None] * c + within).reshape(-1)] = np.arange(n)
    score = float(np.mean([g[np.arange(len(sg)), sg].mean() for g, sg in zip(sims, sigmas)]))
    return _group_match(match_from_assignment(assign, sizes_t, score), sims, sigmas, withins)


@register_solver("group-zip", paper="https://arxiv.org/abs/2403.07816")
def group_zip(sim: Tensor, sizes: Sequence[int], *, groups: int, a: float = 0.5, b: float = 1.0,
              group_budget: float = 1.0, pairing: Sequence[np.ndarray] | None = None) -> GroupMatch:
    """[O, O], N equal sizes g*c -> GroupMatch whose merged group j (units j*c:(j+1)*c) zips group set j.

    MuDSC group zip (reference C): group j of parent 0 and its paired groups form set j; the greedy
    zip (zip.py, same a, b and quirks) runs inside each set in turn, j = 0..g-1, for N*c - c merges,
    so each set yields exactly c merged units. The per-parent budget floor(floor((O-C)/N) * b) is
    shared by all sets (a parent killed in one set stays killed); each group also has its own budget
    of floor((O - C) * group_budget / (N * g)) within-group merges. Score: mean similarity of all
    pairs taken. group_sim/group_assign/within describe the pairing of the groups; `pairing` fixes
    it (tied spaces).
    """
    who = "group_zip"
    s, sizes_t = check_similarity(sim, sizes, who=who, equal=True)
    c = _check_groups(sizes_t, groups, who)
    a = check_unit_interval(a, name="a", who=who)
    check_unit_interval(b, name="b", who=who)
    check_unit_interval(group_budget, name="group_budget", who=who)
    g, n, n_par = int(groups), sizes_t[0], len(sizes_t)
    o = n * n_par
    sims, sigmas, withins = _pair_all(s, sizes_t, g, who, pairing)
    budget = np.full(n_par, model_budget(o, n, n_par, b), dtype=np.int64)
    killed = np.zeros(n_par, dtype=bool)
    per_group = int(math.floor((o - n) * group_budget / (n_par * g) + 1e-4))
    origin = np.repeat(np.arange(n_par), c)
    assign = np.empty(o, dtype=np.int64)
    values = []
    for j in range(g):
        first = [j] + [int(sigma[j]) for sigma in sigmas]
        ids = np.concatenate([i * n + k * c + np.arange(c) for i, k in enumerate(first)])
        owner, vals = zip_owners(s[np.ix_(ids, ids)], origin, steps=n_par * c - c, a=a, budget=budget,
                                 killed=killed, group_budget=np.full(n_par, per_group, dtype=np.int64))
        assign[ids] = j * c + np.unique(owner, return_inverse=True)[1].reshape(-1)
        values.append(vals)
    merged = np.concatenate(values)
    m = match_from_assignment(assign, sizes_t, float(merged.mean()) if len(merged) else 0.0)
    return _group_match(m, sims, sigmas, withins)


@register_solver("group-rigid", paper="https://arxiv.org/abs/2403.07816")
def group_rigid(sim: Tensor, sizes: Sequence[int], *, groups: int,
                pairing: Sequence[np.ndarray] | None = None) -> GroupMatch:
    """[O, O], N equal sizes g*c -> GroupMatch moving whole groups, each keeping its inner order.

    MuDSC group alignment (reference C) with the intra-group matching fixed to the identity, our
    extension for rotary q/k heads: groups j (parent 0) and k (parent i) score G[j, k] =
    (1/c) sum_d S[(j, d), (k, d)] (:func:`rigid_scores`), a g x g Hungarian on G pairs them (unless
    `pairing` fixes it, for tied spaces), and merged unit (j, d) averages unit d of group j and of its
    paired groups. This serves the zip methods too: MuDSC's group zip pairs groups the same way and
    then zips inside each set, and with the order inside a group fixed the one legal zip of a set of N
    groups into c units is this average. Score: mean of G over the chosen pairs, averaged over parents.
    """
    who = "group_rigid"
    s, sizes_t = check_similarity(sim, sizes, who=who, equal=True)
    c = _check_groups(sizes_t, groups, who)
    g, n = int(groups), sizes_t[0]
    _check_pairing(pairing, sizes_t, who)
    sims = [rigid_scores(s[:n, i * n:(i + 1) * n], groups=g) for i in range(1, len(sizes_t))]
    sigmas = [max_assignment(G, who=who) if pairing is None else np.asarray(pairing[i])
              for i, G in enumerate(sims)]
    assign = np.empty(n * len(sizes_t), dtype=np.int64)
    assign[:n] = np.arange(n)
    for i, sigma in enumerate(sigmas, start=1):
        assign[i * n + (sigma[:, None] * c + np.arange(c)).reshape(-1)] = np.arange(n)
    score = float(np.mean([G[np.arange(g), sg].mean() for G, sg in zip(sims, sigmas)]))
    within = [np.tile(np.arange(c), (g, 1))] * len(sigmas)
    return _group_match(match_from_assignment(assign, sizes_t, score), sims, sigmas, within)
