"""ZipIt! greedy zip: merge the most similar pair of features, within or across parents, until C remain.

Implements the greedy matcher of ZipIt! (Stoica et al., ICLR 2024, https://arxiv.org/abs/2305.03053,
Sec. 4.2-4.3, "Greedy" in Tab. 8), which MuDSC reuses as its zip solver (reference B.5b):

    S[diag] = -inf; every unit is a feature whose origin is its parent
    repeat O - C times:
        (x, y) = the most similar active pair, x < y; merge feature y into feature x
        S[x, :] = S[:, x] = min(S[x, :], S[y, :])      then  * a        if a > 0
                                                       else  -inf against features of origin[x], origin[y]
        if origin[x] == origin[y]: budget[origin] -= 1; if it is now <= 0: S = -inf among that origin
    budget = floor(floor((O - C) / N) * b) within-parent merges per parent

Behaviour reproduced on purpose, as in the published code:
- a > 0 multiplies the *minimum* similarity, so negative similarities are pulled toward 0 (made larger).
- The budget is checked after its decrement, so b = 0 still allows one within-parent merge per parent.
- The kept feature keeps the origin of x, the lower index (so a cross-parent feature keeps the lower
  parent's origin).
Where we differ from the published code (documented, deliberate):
- a = 0 freezes the new feature against the *current* features of origin[x] and origin[y] (what the
  paper describes); the published code blanks the index ranges i*C:(i+1)*C of the already shrunk matrix.
- The score is the mean of S[x, y] at the moment each pair was taken (MuDSC's fix of ZipIt's P[x, y]).
- Merge rows are exact averages (the published code divides by cluster size + 1e-5).

Ties are broken by the smallest (x, y) in lexicographic order of unit ids, i.e. the first maximum of S
in row-major order; when every remaining pair is -inf the two lowest active features are merged (the
score then becomes -inf). Merged unit c is the cluster whose smallest unit id is the c-th smallest.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from mudsc.diffinit.solvers.match import Match, check_similarity, check_unit_interval, match_from_assignment
from mudsc.diffinit.solvers.registry import register_solver
from mudsc.errors import ConfigError


def model_budget(o: int, c: int, n: int, b: float) -> int:
    """Within-parent merges allowed per parent: floor(floor((O - C) / N) * b) (1e-4 guards 0.29 * 100)."""
    return int(math.floor((o - c) // n * b + 1e-4))


def zip_owners(s: np.ndarray, origin: np.ndarray, *, steps: int, a: float, budget: np.ndarray,
               killed: np.ndarray, group_budget: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """[n, n] symmetric similarity (overwritten), [n] origin labels -> ([n] owner, [steps] pair values).

    Fast greedy zip: the matrix keeps its size (merged-away features become -inf rows/cols) and every
    row caches its max and first argmax; a merge recomputes only row x, the rows whose argmax was x or
    y, and the rows of a killed origin, and checks the new column x against every other row's max
    (needed because a > 0 can raise negative entries). owner[u] is the smallest unit id of u's cluster.

    `budget` (per origin label) is decremented in place by within-origin merges and `killed` records
    the labels whose budget ran out (their pairs start at -inf), so a caller can carry both over
    several calls. `group_budget`, when given, is a second per-label budget local to this call
    (MuDSC's per-group budget); running out of either kills the label.
    """
    n = s.shape[0]
    neg = s.dtype.type(-np.inf)
    scale = s.dtype.type(a)
    np.fill_diagonal(s, neg)
    for m in np.flatnonzero(killed):
        idx = np.flatnonzero(origin == m)
        s[np.ix_(idx, idx)] = neg
    active = np.ones(n, dtype=bool)
    owner = np.arange(n)
    rarg = s.argmax(axis=1)
    rmax = s[np.arange(n), rarg]
    values = np.empty(steps, dtype=np.float64)
    for t in range(steps):
        x = int(rmax.argmax())  # the first row holding the global max is the lexicographic first pair
        if rmax[x] == neg:
            x, y = (int(i) for i in np.flatnonzero(active)[:2])
        else:
            y = int(rarg[x])
        values[t] = s[x, y]
        owner[owner == y] = x
        ox, oy = origin[x], origin[y]
        new = np.minimum(s[x], s[y])
        if scale > 0:
            new *= scale
        else:
            new[(origin == ox) | (origin == oy)] = neg
        new[x] = neg
        active[y] = False
        s[x], s[:, x] = new, new
        s[y], s[:, y] = neg, neg

        redo = active & ((rarg == x) | (rarg == y))
        redo[x] = True
        if ox == oy:
            budget[ox] -= 1
            out = budget[ox] <= 0
            killed[ox] |= out
            if group_budget is not None:
                group_budget[ox] -= 1
                out |= group_budget[ox] <= 0
            if out:
                members = active & (origin == ox)
                idx = np.flatnonzero(members)
                s[np.ix_(idx, idx)] = neg
                redo |= members
        rmax[y] = neg
        better = (new > rmax) | ((new == rmax) & (rarg > x))
        rmax[better] = new[better]
        rarg[better] = x
        rows = np.flatnonzero(redo)
        sub = s[rows]
        rmax[rows] = sub.max(axis=1)
        rarg[rows] = sub.argmax(axis=1)
    return owner, values


def _prepare(sim: Tensor, sizes: Sequence[int], a: float, b: float, out_dim: int | None, who: str
             ) -> tuple[np.ndarray, tuple[int, ...], float, int, np.ndarray]:
    """Checked inputs -> (similarity copy, sizes, a, out_dim, per-unit parent ids)."""
    s, sizes_t = check_similarity(sim, sizes, who=who, equal=False)
    a = check_unit_interval(a, name="a", who=who)
    check_unit_interval(b, name="b", who=who)
    o = sum(sizes_t)
    c = sizes_t[0] if out_dim is None else out_dim
    if not isinstance(c, (int, np.integer)) or not 1 <= c <= o:
        raise ConfigError(f"{who}: out_dim must be an int in [1, {o}], got {out_dim!r}")
    origin = np.repeat(np.arange(len(sizes_t)), sizes_t)
    return s, sizes_t, a, int(c), origin


def _assignment(owner: np.ndarray) -> np.ndarray:
    """[O] smallest unit id of each unit's cluster -> [O] merged-unit ids ordered by that id."""
    return np.unique(owner, return_inverse=True)[1].reshape(-1)


@register_solver("zip", paper="https://arxiv.org/abs/2305.03053")
def greedy_zip(sim: Tensor, sizes: Sequence[int], *, a: float = 0.5, b: float = 1.0,
               out_dim: int | None = None) -> Match:
    """[O, O] similarity, units per parent -> Match with out_dim (default sizes[0]) merged units.

    ZipIt! greedy zip (module docstring): a in [0, 1] is the decay of repeatedly merged features
    (0 freezes them), b in [0, 1] the fraction of merges that may be within one parent. Score: mean
    similarity of the pairs at the moment they were taken. Same clusters and score as
    :func:`greedy_zip_reference`, in O(O^2 + (O - C) * O) typical time instead of O((O - C) * O^2).
    """
    s, sizes_t, a, c, origin = _prepare(sim, sizes, a, b, out_dim, "greedy_zip")
    n = len(sizes_t)
    budget = np.full(n, model_budget(len(origin), c, n, b), dtype=np.int64)
    owner, values = zip_owners(s, origin, steps=len(origin) - c, a=a, budget=budget,
                               killed=np.zeros(n, dtype=bool))
    return match_from_assignment(_assignment(owner), sizes_t, float(values.mean()) if len(values) else 0.0)


def greedy_zip_reference(sim: Tensor, sizes: Sequence[int], *, a: float = 0.5, b: float = 1.0,
                         out_dim: int | None = None) -> Match:
    """[O, O] similarity, units per parent -> Match; the straightforward O((O - C) * O^2) greedy zip.

    Shrinks the matrix after every merge like the published code; kept to test and benchmark
    :func:`greedy_zip` against (same options, same tie rule, same result).
    """
    s_np, sizes_t, a, c, origin_np = _prepare(sim, sizes, a, b, out_dim, "greedy_zip_reference")
    n = len(sizes_t)
    budget = [model_budget(len(origin_np), c, n, b)] * n
    s = torch.from_numpy(s_np)
    scale = torch.tensor(a, dtype=s.dtype)
    s.fill_diagonal_(-math.inf)
    origin = torch.from_numpy(origin_np)
    members = [[u] for u in range(len(origin))]
    values = []
    while s.shape[0] > c:
        best = s.max()
        if best == -math.inf:
            x, y = 0, 1
        else:
            x, y = (int(i) for i in torch.nonzero(s == best)[0])  # row-major first: x < y by symmetry
        values.append(float(s[x, y]))
        ox, oy = int(origin[x]), int(origin[y])
        new = torch.minimum(s[x], s[y])
        if a > 0:
            new = new * scale
        else:
            new[(origin == ox) | (origin == oy)] = -math.inf
        new[x] = -math.inf
        s[x], s[:, x] = new, new
        keep = torch.arange(s.shape[0]) != y
        s = s[keep][:, keep]
        origin = origin[keep]
        members[x] += members.pop(y)
        if ox == oy:
            budget[ox] -= 1
            if budget[ox] <= 0:
                same = origin == ox
                s[same[:, None] & same[None, :]] = -math.inf
    assign = np.empty(len(origin_np), dtype=np.int64)
    for k, cluster in enumerate(members):
        assign[cluster] = k
    return match_from_assignment(assign, sizes_t, float(np.mean(values)) if values else 0.0)
