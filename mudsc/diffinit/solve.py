"""Solving every unit space: one pass from activations, or MuDSC's iterative solve across layers.

MuDSC (Xu et al., CVPR 2024, Algorithm 1): initialise every space from its activation similarity
(when the method uses activations), then sweep the spaces in a seeded random order; each space is
re-solved on S = alpha S_W + (1 - alpha) S_A with S_W computed from the neighbours' current
solutions. A sweep's score is the mean of the solvers' scores; a sweep that does not improve on the
best rolls every space back to the best solution, and `patience` such sweeps end the loop. Git
Re-Basin weight matching (Ainsworth et al., ICLR 2023, Algorithm 1) is the same loop on raw weight
inner products with Hungarian matching and no activations.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from mudsc.diffinit.config import MergeConfig
from mudsc.diffinit.descriptor_cache import DescriptorCache
from mudsc.diffinit.similarity import descriptor_neighbours, mix
from mudsc.diffinit.solvers import get_solver
from mudsc.diffinit.solvers.align import max_assignment
from mudsc.diffinit.solvers.groups import pair_groups, rigid_scores
from mudsc.diffinit.solvers.match import Match
from mudsc.unitgraph import UnitGraph


@dataclass
class Solution:
    """The match of every solved space, and the sweep scores of the iterative solve."""

    matches: dict[str, Match]
    history: list[float] = field(default_factory=list)
    sweeps: int = 0


def solve_one(sim: Tensor, sizes: tuple[int, ...], *, kind: str, groups: int, config: MergeConfig,
              pairing: list[np.ndarray] | None = None, rigid: bool = False) -> Match:
    """[O, O] similarity -> Match with the solver the method names (group-aware when `groups` > 1;
    whole groups only, each keeping its inner order, when `rigid`; `pairing` fixes the group
    assignment, for spaces whose groups are tied)."""
    grouped = config.groups and (groups > 1 or rigid)
    if kind == "identity":
        return get_solver("identity")(sim, sizes)
    if grouped and rigid:  # align and zip alike: a rigid group set has one merge (group_rigid)
        return get_solver("group-rigid")(sim, sizes, groups=groups, pairing=pairing)
    if kind == "align":
        if grouped:
            return get_solver("group-hungarian")(sim, sizes, groups=groups, pairing=pairing)
        return get_solver("hungarian")(sim, sizes)
    if grouped:
        return get_solver("group-zip")(sim, sizes, groups=groups, a=config.zip_a, b=config.zip_b, pairing=pairing)
    return get_solver("zip")(sim, sizes, a=config.zip_a, b=config.zip_b)


def tied_pairing(sims: list[Tensor], sizes: tuple[int, ...], groups: int, rigid: list[bool]) -> list[np.ndarray]:
    """Similarities of spaces whose groups are tied (the Q/K and V/proj heads of one attention layer:
    head h's attention weights act on value head h) -> one group assignment per parent i >= 1,
    maximising the summed group-pair similarity G of all of them (MuDSC group matching, Fig. 2; a
    rigid space's G pairs units in their order, :func:`~mudsc.diffinit.solvers.groups.rigid_scores`).
    Tied spaces may differ in size (Swin's relative-position bias has one unit per head)."""
    total = [np.zeros((groups, groups)) for _ in sizes[1:]]
    for sim, fixed in zip(sims, rigid):
        s = sim.detach().double().cpu().numpy()
        n = s.shape[0] // len(sizes)
        for i in range(1, len(sizes)):
            block = s[:n, i * n:(i + 1) * n]
            total[i - 1] += (rigid_scores(block, groups=groups) if fixed
                             else pair_groups(block, groups=groups, who="tied groups")[0])
    return [max_assignment(t, who="tied groups") for t in total]


def _same_match(a: Match, b: Match) -> bool:
    return a.score == b.score and torch.equal(a.merge, b.merge) and torch.equal(a.unmerge, b.unmerge)


def solve(sds: list[dict[str, Tensor]], graph: UnitGraph, spaces: list[str], config: MergeConfig, *,
          act_corr: dict[str, Tensor] | None = None, device=None,
          progress: Callable[[int, float, int], None] | None = None) -> Solution:
    """Solve `spaces` for the parents `sds` as `config.method` prescribes.

    `act_corr[space]` is the [O, O] activation correlation (needed unless the method is weight-only).
    Descriptors, S_W and the mixed similarities of the iterative solve live on `device`.
    `progress(sweep, score, left)` after each sweep of the iterative solve, `left` being the sweeps that
    still run unless one improves on the best (0 after the last): the total is not known in advance.
    It is called once before the first sweep too, as (0, nan, the fewest sweeps the rule can run).
    """
    from mudsc.device import default_device

    n = len(sds)
    sizes = {s: (graph.space(s).size,) * n for s in spaces}
    groups = {s: graph.space(s).groups for s in spaces}
    rigid = {s: graph.space(s).rigid for s in spaces}
    ties: dict[str, list[str]] = {}
    if config.groups:
        for s in spaces:
            if graph.space(s).group_tie and groups[s] > 1:
                ties.setdefault(graph.space(s).group_tie, []).append(s)
    tie_of = {s: t for t, members in ties.items() for s in members if len(members) > 1}
    current: dict[str, Tensor] = {}  # the similarity each space was last solved on

    def pairing_for(s: str, sim: Tensor) -> list[np.ndarray] | None:
        if s not in tie_of:
            return None
        others = [q for q in ties[tie_of[s]] if q != s and q in current]
        return tied_pairing([sim] + [current[q] for q in others], sizes[s], groups[s], [rigid[q] for q in [s] + others])

    kind = config.solver
    if kind == "identity":
        zero = {s: torch.zeros(sum(sizes[s]), sum(sizes[s])) for s in spaces}
        return Solution({s: solve_one(zero[s], sizes[s], kind="identity", groups=1, config=config) for s in spaces})
    matches: dict[str, Match] = {}
    if config.similarity in ("activation", "dual"):
        current = {s: act_corr[s] for s in spaces}
        matches = {s: solve_one(act_corr[s], sizes[s], kind=kind, groups=groups[s], config=config,
                                pairing=pairing_for(s, act_corr[s]), rigid=rigid[s]) for s in spaces}
    if not config.iterative or all(config.alpha_for(s) == 0.0 for s in spaces):
        return Solution(matches)  # alpha = 0 everywhere: the activation solve is final (mudsc-zip == zipit)

    metric = "inner" if config.method == "rebasin" else config.weight_metric
    device = default_device(device)
    s_w_of = DescriptorCache(sds, graph, spaces, metric=metric, device=device)
    act_on = {s: act_corr[s].to(device) for s in spaces if s in act_corr} if act_corr is not None else {}
    gen = torch.Generator().manual_seed(config.seed)
    best: dict[str, Match] | None = None
    best_score, bad = float("-inf"), 0
    history: list[float] = []
    sweeps = 0
    neighbours = {s: descriptor_neighbours(graph, s) for s in spaces}
    # A space whose neighbours' matches are the very objects it was last solved against has the same
    # S_W, so the same similarity and the same (deterministic) solution: reuse them. An unchanged
    # solution keeps its object, so late sweeps, which change few spaces, skip their repeated work.
    # Entries hold their key's objects, so an id in a key cannot be reused by a new object.
    memo: dict[str, dict[tuple[int, ...], tuple[tuple[Match, ...], Match]]] = {s: {} for s in spaces}
    if progress is not None:  # the first sweep always becomes the best, so patience more follow it
        progress(0, float("nan"), min(1 + config.patience, config.max_sweeps))
    for sweep in range(config.max_sweeps):
        sweeps = sweep + 1
        scores = []
        for j in torch.randperm(len(spaces), generator=gen).tolist():
            s = spaces[j]
            key = tuple(matches[q] for q in sorted(neighbours[s]) if q in matches)
            hit = memo[s].get(tuple(map(id, key)))
            if s not in tie_of and hit is not None:
                matches[s] = hit[1]
                scores.append(hit[1].score)
                continue
            sim = mix(s_w_of(s, matches), act_on.get(s), config.alpha_for(s), mode=config.mix, overwrite=True)
            new = solve_one(sim, sizes[s], kind=kind, groups=groups[s], config=config, pairing=pairing_for(s, sim),
                            rigid=rigid[s])
            old = matches.get(s)
            matches[s] = old if old is not None and _same_match(old, new) else new
            memo[s][tuple(map(id, key))] = (key, matches[s])
            if s in tie_of:
                current[s] = sim
            scores.append(matches[s].score)
        total = float(sum(scores) / len(scores))
        history.append(total)
        if best is not None and total <= best_score:
            bad += 1
            matches = dict(best)
        else:
            best, best_score, bad = dict(matches), total, 0
        stop = bad >= config.patience
        if progress is not None:
            progress(sweeps, total, 0 if stop else min(config.patience - bad, config.max_sweeps - sweeps))
        if stop:
            break
        _forget(memo, matches, best)
    return Solution(best if best is not None else matches, history, sweeps)


def _forget(memo: dict[str, dict], *states: dict[str, Match]) -> None:
    """Drop the solutions remembered against a neighbour that neither the current nor the best state
    holds: only a rollback brings a state back, so they cannot be asked for again, and a paper-scale
    space's maps are large (a ViT-B MLP's are 150 MB)."""
    alive = {id(m) for state in states for m in state.values()}
    for entries in memo.values():
        for k in [k for k, (key, _) in entries.items() if not all(id(m) in alive for m in key)]:
            del entries[k]
