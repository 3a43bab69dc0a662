"""Align, then fuse in a task subspace: different-init parents merged with RegMean, MaTS or Fisher
instead of the plain average of aligned weights.

Beyond the papers. Alignment methods (activation ``permute``, Git Re-Basin ``rebasin``, Ainsworth
et al., ICLR 2023; ``mudsc-align``, Xu et al., CVPR 2024) find per unit space a one-to-one matching;
their usual fusion is ``W* = sum_i M_i W_i U_i`` (ZipIt! Eq. 4), the average of the aligned parents.
Here each parent i is instead moved into the merged basis, ``W -> (N M_i) W U_i`` per space (for a
matching, ``N M_i = P_i`` and ``U_i = P_i^T``, so the aligned parent computes the same function),
and the aligned parents are fused with a same-init solver (:func:`mudsc.sameinit.merge_same_init`:
RegMean, Jin et al., ICLR 2023; MaTS, Tam et al., TMLR 2024; Fisher, Matena & Raffel, NeurIPS
2022) as if they were fine-tuned from one base, the base being their average.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from mudsc.data import Dataset
from mudsc.diffinit.config import make_config
from mudsc.diffinit.rebase import into_basis, non_permutations
from mudsc.diffinit.solve import solve
from mudsc.errors import ConfigError, UnknownNameError
from mudsc.methods import ALIGNERS
from mudsc.unitgraph import UnitGraph

StateDict = dict[str, Tensor]


def aligned_state_dicts(sds: Sequence[StateDict], graph: UnitGraph, matches: dict[str, Any], *,
                        atol: float = 1e-6) -> list[StateDict]:
    """N parents -> N parents in the merged basis (:func:`mudsc.diffinit.rebase.into_basis`): every
    space s becomes ``(N M_i) W U_i``, the ``1/N`` of the merge map ``M_i`` undone so that parent i
    keeps its function.

    Raises when a space's maps are not a one-to-one matching (``U_i N M_i != I``), as after a zip
    that merges units within a parent: such a parent has no aligned copy with the same function."""
    bad = non_permutations(matches, atol=atol)
    if bad:
        s, i = bad[0]
        raise ConfigError(f"the alignment of space {s!r} is not a one-to-one matching for parent {i}; "
                          f"align with {', '.join(ALIGNERS)}")
    return into_basis(sds, graph, matches)


def average_state_dict(sds: Sequence[StateDict]) -> StateDict:
    """The mean of floating tensors; integer tensors (``num_batches_tracked``) from the first."""
    return {k: torch.stack([sd[k] for sd in sds]).mean(0) if v.is_floating_point() else v.clone()
            for k, v in sds[0].items()}


@dataclass(frozen=True)
class Alignment:
    """Aligned copies of the parents and how they were found."""

    models: list[nn.Module]
    method: str
    alpha: float
    sweeps: int
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "alpha": self.alpha, "sweeps": self.sweeps, "score": self.score}


def align_parents(models: Sequence[nn.Module], data: Dataset, *, method: str, alpha: float = 0.5,
                  stats_images: int = 1000, batch_size: int = 250, seed: int = 0, device=None) -> Alignment:
    """Match every unit space of `models` with `method` (one of :data:`ALIGNERS`; activation
    statistics from the union of their tasks' training images, as in :class:`mudsc.diffinit.session.MergeSession`)
    and return the parents moved into the merged basis, each computing its original function."""
    from mudsc.diffinit.session import MergeSession

    if method not in ALIGNERS:
        raise UnknownNameError(f"unknown alignment {method!r}; choose one of {', '.join(ALIGNERS)}")
    session = MergeSession(list(models), data, stats_images=stats_images, batch_size=batch_size, device=device)
    config = make_config(method=method, alpha=alpha, seed=seed, reset_bn=False)
    spaces = session.spaces_for("full")
    act = session.stats_for(config).corr if config.similarity in ("activation", "dual") else None
    solution = solve(session.sds, session.graph, spaces, config, act_corr=act)
    aligned = aligned_state_dicts(session.sds, session.graph, solution.matches)
    out = []
    for m, sd in zip(models, aligned):
        a = copy.deepcopy(m).cpu()
        a.load_state_dict(sd)
        out.append(a.eval())
    score = sum(m.score for m in solution.matches.values()) / max(1, len(solution.matches))
    return Alignment(out, method, config.alpha_for(spaces[0]) if spaces else alpha, solution.sweeps, float(score))
