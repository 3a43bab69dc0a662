"""The landscape planner: which models a loss landscape shows, all in one basis, and the plane
through them. The app's Landscape page and ``mudsc landscape`` both plan with :func:`landscape_plan`.

A merge lives in its own merged basis, where its parents, moved into that basis
(:func:`mudsc.diffinit.rebase.transformed_parents`, the primed parents), average to it. To draw
several merges on one plane, the MuDSC landscape figure (Xu et al., CVPR 2024, Fig. 3;
``loss_landscape/plot.ipynb``) re-aligns every other merge to the first by a weight-matching
permutation (Git Re-Basin, Ainsworth et al., ICLR 2023, Algorithm 1). Here the permutation is found
once per merge, between the two merges, and applied to the merge and to its primed parents where it
brings them, so each merge stays the midpoint of its parents and its triple keeps its shape.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from torch import Tensor

from landscape import plane as planes
from landscape.compute import PLANE_KINDS, PlaneSpec
from mudsc.diffinit.fuse import transform_state_dict
from mudsc.diffinit.rebase import is_permutation, rebase_maps, transformed_parents
from mudsc.diffinit.session import MergeResult, MergeSession
from mudsc.errors import ConfigError

StateDict = dict[str, Tensor]


@dataclass
class LandscapePlan:
    """Models of a landscape, all in the first merge's basis, and the plane through them.

    models: label -> state dict (legend order); roles: label -> 'parent' or 'merge'; triples: merge
    -> (parent 0', merge, parent 1', ...) labels of each merge that brings its primed parents; exact:
    merge -> whether those primed parents are exact re-parametrisations of the parents (permutation
    methods) or zip approximations; groups: label -> its merge where every merge brings its primed
    parents (one colour per merge in figures), else empty; plane: the plane through the models.
    """

    models: dict[str, StateDict] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)
    triples: dict[str, tuple[str, ...]] = field(default_factory=dict)
    exact: dict[str, bool] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)
    plane: PlaneSpec = field(default_factory=PlaneSpec)

    @property
    def plane_models(self) -> tuple[str, ...]:
        return self.plane.models

    @property
    def segments(self) -> list[tuple[str, str]]:
        """Consecutive pairs of every triple: parent 0' - merge - parent 1' per merge."""
        return [(t[i], t[i + 1]) for t in self.triples.values() for i in range(len(t) - 1)]


def merge_label(result: MergeResult) -> str:
    return f"merge: {result.config.method}"


def parent_label(i: int, merge: str | None = None) -> str:
    """``"parent 0'"``, or ``"parent 0' (merge)"`` where several merges bring their primed parents."""
    return f"parent {i}'" if merge is None else f"parent {i}' ({merge})"


def _check_placeable(name: str, result: MergeResult) -> None:
    if result.config.cut != "full" or result.multihead:
        raise ConfigError(f"{name} merges up to cut {result.config.cut!r} and keeps per-task heads: the merged "
                          "trunk and the heads are not one network in one basis, so it has no point on a "
                          "loss-landscape plane; use a full merge (cut 'full')")
    if result.solution is None:
        raise ConfigError(f"{name} matches no units, so its parents have no merged basis; choose a matching method")


def landscape_plan(session: MergeSession, result: MergeResult, *, plane: str, others: Sequence[MergeResult] = (),
                   names: Sequence[str] | None = None, every_parent: bool = False, third: str | None = None,
                   seed: int = 0) -> LandscapePlan:
    """What a landscape of `result` shows on which plane.

    `result` gives the basis: its parents enter moved into it (primed). `others` (merges by other
    methods or alphas) are rebased into it by weight matching; with `every_parent` each brings its
    own primed parents along, and every primed parent is labelled with its merge (MuDSC Fig. 3).
    `names` label the merges, `result` first (unique; default :func:`merge_label`). Partial merges
    (a cut with per-task heads) have no single network in one basis and are refused, as are merges
    without matched units (ensemble).

    Planes (:data:`landscape.compute.PLANE_KINDS`), each checked for degeneracy with the models named:
    ``three_point``: origin parent 0', x axis through parent 1' of `result`, the plane through
    `third` (a model's label, or ``'parent 1'``: parent 1 as trained); by default the first other
    merge, else parent 1 as trained (two parents) or parent 2'. `result` is the midpoint of its
    primed parents, so it cannot span the plane. ``pca``: the top-2 principal plane of every model.
    ``random``: filter-normalised random directions around `result` (`seed`).
    """
    if plane not in PLANE_KINDS:
        raise ConfigError(f"unknown plane {plane!r}; choose one of {', '.join(PLANE_KINDS)}")
    merges = [result, *others]
    names = [merge_label(r) for r in merges] if names is None else list(names)
    if len(names) != len(merges) or len(set(names)) != len(names):
        raise ConfigError(f"a landscape needs one unique name per merge, got {names}")
    plan = LandscapePlan()
    for k, (name, res) in enumerate(zip(names, merges)):
        _check_placeable(name, res)
        primed = k == 0 or every_parent
        models = [*transformed_parents(session, res), res.state_dict] if primed else [res.state_dict]
        if k:
            maps = rebase_maps(result.state_dict, res.state_dict, session.graph)
            models = [transform_state_dict(sd, session.graph, maps) for sd in models]
        labels = [parent_label(i, name if every_parent else None) for i in range(len(models) - 1)] + [name]
        for lab, sd in zip(labels, models):
            plan.models[lab] = {key: v.detach().clone() for key, v in sd.items()}
            plan.roles[lab] = "merge" if lab == name else "parent"
            if every_parent:
                plan.groups[lab] = name
        if primed:
            plan.triples[name] = (labels[0], name, *labels[1:-1])
            plan.exact[name] = is_permutation(res)
    plan.plane = _plane(plan, session, result, plane, names=names, third=third, seed=seed)
    return plan


def _plane(plan: LandscapePlan, session: MergeSession, result: MergeResult, kind: str, *, names: list[str],
           third: str | None, seed: int) -> PlaneSpec:
    """The plane of kind `kind` through `plan`'s models (see :func:`landscape_plan`)."""
    first = names[0]
    coords = planes.trainable_names(result.model)
    if kind == "three_point":
        a, _, b = plan.triples[first][:3]
        if third is None:
            third = names[1] if len(names) > 1 else "parent 1" if len(session.sds) == 2 else \
                plan.triples[first][3]
        if third == "parent 1" and third not in plan.models:
            # parent 1 as trained: off the line of the primed parents, even for permutation methods
            plan.models[third] = {key: v.detach().clone() for key, v in session.sds[1].items()}
            plan.roles[third] = "parent"
        if third not in plan.models:
            raise ConfigError(f"third model {third!r} is not one of {', '.join(plan.models)}")
        try:
            planes.three_point(plan.models[a], plan.models[b], plan.models[third], names=coords)
        except ConfigError:
            raise ConfigError(f"{third} lies on the line through {a} and {b} (as does a merge that equals {first} "
                              "up to a permutation), so the three models span no plane; choose another third "
                              "model, a merge of another method or alpha, or a pca or random plane") from None
        return PlaneSpec("three_point", (a, b, third))
    if kind == "pca":
        labels = tuple(plan.models)
        try:
            planes.pca([plan.models[lab] for lab in labels], names=coords)
        except ConfigError:
            raise ConfigError("the merges and their primed parents lie on one line (a single merge, or merges "
                              "that coincide up to a permutation), so they span no PCA plane; add a merge of "
                              "another method or alpha") from None
        return PlaneSpec("pca", labels)
    return PlaneSpec("random", (first,), seed=seed)
