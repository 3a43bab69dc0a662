"""Rebasing parents into a merge's basis.

A merge's maps of one unit space, per parent i ``(M_i [C, n_i], U_i [n_i, C])``, fuse N parents as
``W* = sum_i M_i W_i U_i`` (ZipIt!, Stoica et al., ICLR 2024, Eq. 4), each M_i carrying the 1/N
averaging weight. Parent i moved into the merged basis takes ``(N M_i, U_i)`` in every space,
``W -> (N M_i) W U_i``, so the moved parents average to the fused merge (before its BatchNorm reset).
For a one-to-one matching (permutation methods) ``N M_i = P_i`` and ``U_i = P_i^T``, and the moved
parent computes its original function; after a zip that merges units inside a parent it only
approximates it. Another merge is brought into a merge's basis by Git Re-Basin weight matching
(Ainsworth et al., ICLR 2023, Algorithm 1).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor

from mudsc.diffinit.config import make_config
from mudsc.diffinit.fuse import MatchLike, transform_state_dict
from mudsc.diffinit.session import MergeResult, MergeSession
from mudsc.diffinit.solve import solve
from mudsc.errors import ConfigError
from mudsc.unitgraph import UnitGraph

StateDict = dict[str, Tensor]
Maps = dict[str, tuple[Tensor, Tensor]]


def basis_maps(matches: Mapping[str, MatchLike], parent: int) -> Maps:
    """Per matched space, parent `parent`'s map into the merged basis: (N M_i [C, n_i], U_i [n_i, C])."""
    out = {}
    for space, match in matches.items():
        parts = match.parts()
        m, u = parts[parent]
        out[space] = (len(parts) * m, u)
    return out


def non_permutations(matches: Mapping[str, MatchLike], *, atol: float = 1e-6) -> list[tuple[str, int]]:
    """The (space, parent) pairs whose maps are not a one-to-one matching (``U_i N M_i != I``): there
    the moved parent does not keep its function."""
    bad = []
    for space, match in matches.items():
        parts = match.parts()
        for i, (m, u) in enumerate(parts):
            eye = torch.eye(len(u), dtype=u.dtype)
            if m.shape[0] != m.shape[1] or not torch.allclose(u @ (len(parts) * m), eye, atol=atol):
                bad.append((space, i))
    return bad


def into_basis(sds: Sequence[StateDict], graph: UnitGraph, matches: Mapping[str, MatchLike]) -> list[StateDict]:
    """N parents -> N parents in the merged basis, ``W -> (N M_i) W U_i`` in every matched space
    (tensors no space touches are the parents' own)."""
    for space, match in matches.items():
        if len(match.parts()) != len(sds):
            raise ConfigError(f"the maps of space {space!r} cover {len(match.parts())} parents, expected {len(sds)}")
    return [transform_state_dict(sd, graph, basis_maps(matches, i)) for i, sd in enumerate(sds)]


def require_matches(result: MergeResult, *, lacking: str) -> Mapping[str, MatchLike]:
    """The matches of `result`, or a ConfigError saying that a merge without matched units (the
    ensemble) has no `lacking`."""
    if result.solution is None:
        raise ConfigError(f"the {result.config.method} merge matches no units, so it has no {lacking}; "
                          "merge with a matching method")
    return result.solution.matches


def is_permutation(result: MergeResult) -> bool:
    """Whether every merged unit of `result` takes exactly one unit from each parent (alignment,
    weight averaging), so its parents moved into its basis compute their own functions."""
    return not non_permutations(require_matches(result, lacking="merged basis"))


def transformed_parents(session: MergeSession, result: MergeResult) -> list[StateDict]:
    """The parents moved into the basis of the full merge `result` (:func:`into_basis`), as fresh tensors."""
    if result.config.cut != "full" or result.multihead:
        raise ConfigError("transformed parents need a full merge (this merge keeps per-task heads after a cut)")
    moved = into_basis(session.sds, session.graph, require_matches(result, lacking="merged basis"))
    return [{k: v.clone() for k, v in sd.items()} for sd in moved]


def rebase_maps(reference: StateDict, other: StateDict, graph: UnitGraph, *,
                max_sweeps: int = 30, seed: int = 0) -> Maps:
    """Per unit space, the permutation (P [C, C], P^T [C, C]) moving `other` into `reference`'s basis
    by Git Re-Basin weight matching (Hungarian on raw weight inner products, coordinate descent over
    the unit spaces); apply it to any state dict of `other`'s basis with
    :func:`mudsc.diffinit.fuse.transform_state_dict`."""
    cfg = make_config(method="rebasin", max_sweeps=max_sweeps, seed=seed, reset_bn=False)
    sol = solve([reference, other], graph, [s.name for s in graph.spaces], cfg)
    return basis_maps(sol.matches, 1)


def rebase(reference: StateDict, other: StateDict, graph: UnitGraph, *,
           max_sweeps: int = 30, seed: int = 0) -> StateDict:
    """`other` permuted into `reference`'s basis (:func:`rebase_maps`); it computes the same function."""
    maps = rebase_maps(reference, other, graph, max_sweeps=max_sweeps, seed=seed)
    return {k: v.clone() for k, v in transform_state_dict(other, graph, maps).items()}
