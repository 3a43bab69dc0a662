"""One coordinate frame for several merges of the same parents, for planes through all of them.

Each merge lives in its own merged basis, where its parents, moved into that basis
(:func:`mudsc.studio.views.transformed_parents`), average to it. To draw several methods on one plane, the
MuDSC landscape figure (Xu et al., CVPR 2024, Fig. 3; ``loss_landscape/plot.ipynb``) re-aligns every
other method's triple to the first method's by a weight-matching permutation (Git Re-Basin,
Ainsworth et al., ICLR 2023, Algorithm 1). Here the permutation is found once per method, between
the two merges, and applied to the whole triple (both primed parents and the merge), so the merge
stays the midpoint of its parents and the triple keeps its shape.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from torch import Tensor

from mudsc.errors import ConfigError
from mudsc.diffinit.fuse import transform_state_dict
from mudsc.diffinit.session import MergeResult, MergeSession
from mudsc.studio.views import LandscapePlan, is_permutation, rebase_maps, transformed_parents

from landscape import plane as planes
from landscape.compute import PLANE_KINDS, PlaneSpec

StateDict = dict[str, Tensor]
Maps = dict[str, tuple[Tensor, Tensor]]


@dataclass
class Frame:
    """Models of several merges in the first merge's basis.

    models: label -> state dict (legend order); roles: label -> 'parent' or 'merge'; groups:
    label -> the merge's name (one colour per merge in figures); triples: merge name -> (parent 0',
    merge, parent 1') labels; exact: merge name -> whether its primed parents are exact
    re-parametrisations of the parents (permutation methods) or zip approximations.
    """

    models: dict[str, StateDict] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)
    triples: dict[str, tuple[str, ...]] = field(default_factory=dict)
    exact: dict[str, bool] = field(default_factory=dict)

    @property
    def segments(self) -> list[tuple[str, str]]:
        """Consecutive pairs of every triple: parent 0' - merge - parent 1' per merge."""
        return [(t[i], t[i + 1]) for t in self.triples.values() for i in range(len(t) - 1)]


def parent_label(i: int, name: str) -> str:
    return f"parent {i}' ({name})"


def common_frame(session: MergeSession, results: Sequence[MergeResult], names: Sequence[str]) -> Frame:
    """Primed parents and merge of every result, all in the basis of ``results[0]``.

    `names` label the merges (unique). Partial merges (a cut with per-task heads) have no single
    network in one basis and are refused, as are merges without matched units (ensemble).
    """
    if len(names) != len(results) or len(set(names)) != len(names):
        raise ConfigError(f"common_frame needs one unique name per merge, got {list(names)}")
    frame = Frame()
    ref = None
    for name, res in zip(names, results):
        if res.config.cut != "full" or res.multihead:
            raise ConfigError(f"{name} merges up to cut {res.config.cut!r} and keeps per-task heads: the merged "
                              "trunk and the heads are not one network in one basis, so it has no point on a "
                              "loss-landscape plane; use a full merge (cut 'full')")
        if res.solution is None:
            raise ConfigError(f"{name} matches no units, so its parents have no merged basis; "
                              "choose a matching method")
        moved = transformed_parents(session, res)
        triple = [*moved, res.state_dict]
        if ref is None:
            ref = res.state_dict
        else:
            maps = rebase_maps(ref, res.state_dict, session.graph)
            triple = [transform_state_dict(sd, session.graph, maps) for sd in triple]
        labels = [parent_label(i, name) for i in range(len(moved))] + [name]
        for lab, sd in zip(labels, triple):
            frame.models[lab] = {k: v.detach().clone() for k, v in sd.items()}
            frame.roles[lab] = "merge" if lab == name else "parent"
            frame.groups[lab] = name
        frame.triples[name] = (labels[0], name, *labels[1:-1])
        frame.exact[name] = is_permutation(res)
    return frame


def pca_plan(frame: Frame) -> LandscapePlan:
    """A PCA plane through every model of `frame` (each merge with its primed parents, MuDSC Fig. 3),
    markers coloured per merge, each merge's parent 0' - merge - parent 1' path drawn."""
    if len(frame.models) < 3:
        raise ConfigError("a PCA plane needs at least 3 models")
    return LandscapePlan(dict(frame.models), dict(frame.roles), tuple(frame.models), frame.segments,
                         dict(frame.groups))


def plane_spec(frame: Frame, kind: str, *, names: Sequence[str], seed: int = 0) -> PlaneSpec:
    """The plane of kind `kind` through `frame`, checked for degeneracy with a message that names the models.

    ``three_point``: origin parent 0' and x axis through parent 1' of the first merge, the plane
    through the second merge (the first merge is the midpoint of its primed parents, so it cannot
    span a plane). ``pca``: every model of the frame (all merges and their primed parents).
    ``random``: filter-normalised random directions around the first merge (`seed`).
    `names` are the coordinate tensors.
    """
    merges = list(frame.triples)
    if not merges:
        raise ConfigError("the frame holds no merges")
    first = merges[0]
    if kind == "three_point":
        a, _, b = frame.triples[first][:3]
        if len(merges) < 2:
            raise ConfigError(f"a three-point plane needs a second merge: {first} is the midpoint of {a} and {b}, "
                              "so the three are collinear; give a second method (or --alpha2)")
        third = merges[1]
        try:
            planes.three_point(frame.models[a], frame.models[b], frame.models[third], names=names)
        except ConfigError:
            raise ConfigError(f"{third} lies on the line through {a} and {b} (it equals {first} up to a "
                              "permutation), so the three models span no plane; choose a second method or alpha "
                              "that gives a different merge, or --plane pca / random") from None
        return PlaneSpec("three_point", (a, b, third))
    if kind == "pca":
        labels = tuple(frame.models)
        try:
            planes.pca([frame.models[lab] for lab in labels], names=names)
        except ConfigError:
            raise ConfigError("the merges and their primed parents lie on one line (a single merge, or merges "
                              "that coincide up to a permutation), so they span no PCA plane; add a merge of "
                              "another method or alpha") from None
        return PlaneSpec("pca", labels)
    if kind == "random":
        return PlaneSpec("random", (first,), seed=seed)
    raise ConfigError(f"unknown plane {kind!r}; choose one of {', '.join(PLANE_KINDS)}")
