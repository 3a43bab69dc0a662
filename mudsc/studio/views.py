"""What the studio's Similarity and Alignment pages show, computed from a session and a
merge result. Pure functions over tensors and arrays; no Streamlit, no drawing (see figures.py).

* Similarity (MuDSC, Xu et al., CVPR 2024, Fig. 1 and Sec. 3.2): per unit space the weight-space
  similarity S_W given the neighbours' final matches, the activation correlation S_A, their mix S
  at the merge's alpha, and the matches a weight-only (alpha = 1) and an activation-only (alpha = 0)
  solve would pick with the same solver.
* Alignment (MuDSC Sec. 3.3, reference C): group alignment matrices, merge maps, how many merges
  stay inside one parent and how many cross parents.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from mudsc.diffinit.rebase import require_matches
from mudsc.diffinit.session import MergeResult, MergeSession
from mudsc.diffinit.similarity import descriptors, mix, weight_similarity
from mudsc.diffinit.solve import solve_one
from mudsc.diffinit.solvers.match import GroupMatch, Match
from mudsc.diffinit.stats import activation_stats
from mudsc.errors import ConfigError

_VIEWS = "similarity or alignment views"


# ----------------------------------------------------------------------------- matches as pairs

def co_membership(match: Match) -> Tensor:
    """Match -> [O, O] bool: units u and v were merged into the same unit."""
    a = match.assignment()
    return a[:, None] == a[None, :]


def cross_chosen(match: Match, parent: int) -> Tensor:
    """Match, parent i >= 1 -> [n_0, n_i] bool: unit j of parent 0 and unit k of parent i share a
    merged unit."""
    if not 1 <= parent < len(match.sizes):
        raise ConfigError(f"parent must be in 1..{len(match.sizes) - 1}, got {parent}")
    a = match.assignment()
    o, n0 = match.offsets[parent], match.sizes[0]
    return a[:n0, None] == a[None, o:o + match.sizes[parent]]


def agreement(a: Match, b: Match) -> float:
    """Two matches of one space -> share of units merged with exactly the same other units in both
    (for a permutation: matched to the same partner). 1 for a match with itself."""
    if a.sizes != b.sizes:
        raise ConfigError(f"agreement: matches of different spaces (sizes {a.sizes} and {b.sizes})")
    return float((co_membership(a) == co_membership(b)).all(dim=1).double().mean())


def merge_counts(result: MergeResult) -> list[dict]:
    """Per solved space: merges inside one parent, merges across parents, and units kept (= C)."""
    return [{"space": s, "within": m.n_within, "across": m.n_across, "merged units": m.out_dim}
            for s, m in require_matches(result, lacking=_VIEWS).items()]


# ----------------------------------------------------------------------------- similarities

@dataclass
class SpaceSimilarity:
    """Similarities of one unit space and the matches three choices of alpha give.

    s_w, s_a, s: [O, O] weight-space, activation and mixed similarity (units of all parents stacked).
    current: the merge's own match; weight_only / activation_only: the same solver on S_W / S_A.
    """

    space: str
    sizes: tuple[int, ...]
    alpha: float
    s_w: Tensor
    s_a: Tensor
    s: Tensor
    current: Match
    weight_only: Match
    activation_only: Match

    def choice(self, name: str) -> Match:
        """'current', 'weight' or 'activation'."""
        table = {"current": self.current, "weight": self.weight_only, "activation": self.activation_only}
        if name not in table:
            raise ConfigError(f"unknown choice {name!r}; choose current, weight or activation")
        return table[name]


def space_similarity(session: MergeSession, result: MergeResult, space: str) -> SpaceSimilarity:
    """S_W given the neighbours' final matches (MuDSC Sec. 3.2), S_A, S at the merge's alpha, and the
    weight-only / activation-only matches of the merge's solver (Hungarian for weight averaging)."""
    matches = require_matches(result, lacking=_VIEWS)
    if space not in matches:
        raise ConfigError(f"unit space {space!r} was not merged (merged: {', '.join(matches)})")
    cfg = result.config
    sizes = matches[space].sizes
    maps = {q: m.parts() for q, m in matches.items() if q != space}
    s_w = weight_similarity(descriptors(session.sds, session.graph, space, maps), metric=cfg.weight_metric)
    s_a = session.stats_for(cfg).corr[space]
    alpha = cfg.alpha_for(space)
    s = mix(s_w, s_a, alpha, mode=cfg.mix)
    kind = cfg.solver if cfg.solver in ("align", "zip") else "align"
    info = session.graph.space(space)
    solo = lambda sim: solve_one(sim, sizes, kind=kind, groups=info.groups, config=cfg, rigid=info.rigid)  # noqa: E731
    return SpaceSimilarity(space, sizes, alpha, s_w, s_a, s, matches[space], solo(s_w), solo(s_a))


def network_agreement(session: MergeSession, result: MergeResult) -> list[dict]:
    """Per solved space: agreement of the weight-only and activation-only matches, and of the merge's
    own match with each of them."""
    rows = []
    for space in require_matches(result, lacking=_VIEWS):
        v = space_similarity(session, result, space)
        rows.append({"space": space, "weight vs activation": agreement(v.weight_only, v.activation_only),
                     "merge vs weight": agreement(v.current, v.weight_only),
                     "merge vs activation": agreement(v.current, v.activation_only)})
    return rows


@dataclass
class PairScatter:
    """Cross-parent unit pairs (unit j of parent 0, unit k of parent i): their S_A (x) and S_W (y), and
    whether each choice merged them. `n_pairs` counts all pairs before subsampling."""

    s_a: np.ndarray       # [p]
    s_w: np.ndarray       # [p]
    parent: np.ndarray    # [p] i
    unit0: np.ndarray     # [p] j
    unit: np.ndarray      # [p] k
    chosen: dict[str, np.ndarray]   # 'current' / 'weight' / 'activation' -> [p] bool
    n_pairs: int


def pair_scatter(view: SpaceSimilarity, *, max_points: int = 4000, generator: torch.Generator) -> PairScatter:
    """SpaceSimilarity -> PairScatter over all (parent 0, parent i >= 1) unit pairs; when there are more
    than `max_points`, every chosen pair is kept and the rest is a uniform random sample."""
    if max_points < 1:
        raise ConfigError(f"max_points must be positive, got {max_points}")
    cols: dict[str, list[Tensor]] = {k: [] for k in ("s_a", "s_w", "parent", "unit0", "unit")}
    chosen: dict[str, list[Tensor]] = {"current": [], "weight": [], "activation": []}
    n0 = view.sizes[0]
    offsets = view.current.offsets
    for i in range(1, len(view.sizes)):
        ni, o = view.sizes[i], offsets[i]
        jj, kk = torch.meshgrid(torch.arange(n0), torch.arange(ni), indexing="ij")
        cols["s_a"].append(view.s_a[:n0, o:o + ni].reshape(-1))
        cols["s_w"].append(view.s_w[:n0, o:o + ni].reshape(-1))
        cols["parent"].append(torch.full((n0 * ni,), i))
        cols["unit0"].append(jj.reshape(-1))
        cols["unit"].append(kk.reshape(-1))
        for name in chosen:
            chosen[name].append(cross_chosen(view.choice(name), i).reshape(-1))
    flat = {k: torch.cat(v) for k, v in cols.items()}
    picked = {k: torch.cat(v) for k, v in chosen.items()}
    total = len(flat["s_a"])
    keep = torch.arange(total)
    if total > max_points:
        anyc = picked["current"] | picked["weight"] | picked["activation"]
        rest = (~anyc).nonzero().squeeze(1)
        room = max(max_points - int(anyc.sum()), 0)
        sample = rest[torch.randperm(len(rest), generator=generator)[:room]]
        keep = torch.cat([anyc.nonzero().squeeze(1), sample]).sort().values
    arr = {k: v[keep].numpy() for k, v in flat.items()}
    return PairScatter(arr["s_a"], arr["s_w"], arr["parent"], arr["unit0"], arr["unit"],
                       {k: v[keep].numpy() for k, v in picked.items()}, total)


def choice_summary(ps: PairScatter) -> list[dict]:
    """Per choice: cross pairs it merged and their mean S_A and S_W (chosen pairs survive subsampling)."""
    rows = []
    for name, mask in ps.chosen.items():
        n = int(mask.sum())
        rows.append({"choice": name, "pairs": n,
                     "mean S_A": float(ps.s_a[mask].mean()) if n else float("nan"),
                     "mean S_W": float(ps.s_w[mask].mean()) if n else float("nan")})
    return rows


# ----------------------------------------------------------------------------- heatmaps

def unit_order(match: Match) -> np.ndarray:
    """[O] display order: parents in turn, each parent's units sorted by the merged unit they join, so
    aligned units line up along block diagonals."""
    a = match.assignment().numpy()
    return np.concatenate([o + np.argsort(a[o:o + n], kind="stable") for o, n in zip(match.offsets, match.sizes)])


def pool(mat: np.ndarray, *, max_side: int) -> tuple[np.ndarray, int]:
    """[n, m] -> ([ceil(n/f), ceil(m/f)] block means, f): the smallest integer factor f that brings the
    longer side to at most `max_side` (f = 1 leaves the matrix as it is)."""
    if max_side < 1:
        raise ConfigError(f"max_side must be positive, got {max_side}")
    n, m = mat.shape
    f = max(1, -(-max(n, m) // max_side))
    if f == 1:
        return mat.astype(np.float32), 1
    pn, pm = -(-n // f) * f, -(-m // f) * f
    padded = np.full((pn, pm), np.nan, dtype=np.float64)
    padded[:n, :m] = mat
    with np.errstate(all="ignore"):
        out = np.nanmean(padded.reshape(pn // f, f, pm // f, f), axis=(1, 3))
    return out.astype(np.float32), f


@dataclass
class HeatmapView:
    """Matrices of one space in display order, pooled by `factor`, with the chosen pairs as markers."""

    titles: list[str]
    mats: list[np.ndarray]        # each [O / f, O / f]
    marker_rows: np.ndarray       # pooled row / column of each merged pair (u != v), in display order
    marker_cols: np.ndarray
    boundaries: list[float]       # pooled positions between parents
    factor: int
    order: np.ndarray             # [O] global unit id shown at each position


def heatmap_view(view: SpaceSimilarity, *, choice: str = "current", max_side: int = 512) -> HeatmapView:
    """S_W, S_A and S ordered by the chosen match (unit_order), pooled to `max_side`, with the
    chosen match's merged pairs as marker positions."""
    match = view.choice(choice)
    order = unit_order(match)
    pos = np.empty_like(order)
    pos[order] = np.arange(len(order))
    mats, f = [], 1
    for m in (view.s_w, view.s_a, view.s):
        z, f = pool(m.numpy()[np.ix_(order, order)], max_side=max_side)
        mats.append(z)
    same = co_membership(match).numpy()
    np.fill_diagonal(same, False)
    u, v = np.nonzero(same)
    cells = np.unique(np.stack([pos[u] // f, pos[v] // f], 1), axis=0) if len(u) else np.zeros((0, 2), int)
    bounds = [o / f - 0.5 for o in match.offsets[1:]]
    return HeatmapView(["S_W (weights)", "S_A (activations)", f"S (alpha = {view.alpha:g})"], mats,
                       cells[:, 0], cells[:, 1], bounds, f, order)


# ----------------------------------------------------------------------------- units for UMAP

@dataclass
class UnitCloud:
    """Units of all parents (and the merge's units) described by their activations at the same k
    positions, and the lines joining each unit to the merged unit it became."""

    features: np.ndarray    # [n, k]
    owner: np.ndarray       # [n] parent index, -1 for a merged unit
    unit: np.ndarray        # [n] unit index within its owner
    lines: np.ndarray       # [l, 2] row pairs to join


def unit_cloud(session: MergeSession, result: MergeResult, space: str, *, with_merge: bool = True) -> UnitCloud:
    """Activation samples of the parents' units (``ActivationStats.samples``) and, for full merges,
    of the merged model's units at the same positions (same images, same batch). Lines join every
    unit to its merged unit, or, without merged units, the units of one cluster to its first unit."""
    match = require_matches(result, lacking=_VIEWS).get(space)
    if match is None:
        raise ConfigError(f"unit space {space!r} was not merged")
    cfg = result.config
    feats = session.stats_for(cfg).samples[space].numpy()
    o = len(feats)
    owner = np.repeat(np.arange(len(match.sizes)), match.sizes)
    unit = np.concatenate([np.arange(n) for n in match.sizes])
    assign = match.assignment().numpy()
    with_merge = with_merge and cfg.cut == "full"
    if with_merge:
        images = session.train.x[: session.batch_size]
        # sampled positions are drawn space after space from one generator per batch: the parents' draws
        # for `space` come back only from a pass over every space
        merged = activation_stats([copy.deepcopy(result.model)], session.graph, images, batch_size=session.batch_size,
                                  spaces=None if cfg.stats_positions else [space], device=session.device,
                                  sample_units=feats.shape[1], positions=cfg.stats_positions, seed=cfg.seed)
        m = merged.samples[space].numpy()
        feats = np.concatenate([feats, m[:, : feats.shape[1]]])
        owner = np.concatenate([owner, np.full(len(m), -1)])
        unit = np.concatenate([unit, np.arange(len(m))])
        lines = np.stack([np.arange(o), o + assign], 1)
    else:
        first = {}
        pairs = []
        for u, c in enumerate(assign):
            if c in first:
                pairs.append((first[c], u))
            else:
                first[c] = u
        lines = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return UnitCloud(feats.astype(np.float32), owner, unit, lines)


# ----------------------------------------------------------------------------- groups

@dataclass
class GroupAlignment:
    """Group pairing of parent `parent` with parent 0 in one grouped space: G [g, g] mean matched
    similarity of group pairs, and sigma [g] (group j of parent 0 pairs with group sigma[j])."""

    space: str
    parent: int
    sim: np.ndarray
    assign: np.ndarray


def group_alignments(result: MergeResult) -> list[GroupAlignment]:
    """Every grouped space's group alignment matrices (MuDSC group matching), per parent i >= 1."""
    out = []
    for space, m in require_matches(result, lacking=_VIEWS).items():
        if isinstance(m, GroupMatch):
            for i, (g, a) in enumerate(zip(m.group_sim, m.group_assign), start=1):
                out.append(GroupAlignment(space, i, g.numpy(), a.numpy()))
    return out
