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

On a GPU, large similarities are zipped in rounds of merges the greedy order provably takes
(:func:`merge_rounds`), with the same result bit for bit; the CPU runs the loop one merge at a time.

Ties are broken by the smallest (x, y) in lexicographic order of unit ids, i.e. the first maximum of S
in row-major order; when every remaining pair is -inf the two lowest active features are merged (the
score then becomes -inf). Merged unit c is the cluster whose smallest unit id is the c-th smallest.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from mudsc.diffinit.solvers.match import Match, check_similarity, check_unit_interval, match_from_assignment
from mudsc.diffinit.solvers.registry import register_solver
from mudsc.errors import ConfigError

# Where a GPU's zip in rounds is expected to beat the CPU's one-at-a-time loop: a round is about 90
# tensor operations, and O units took 9-43 rounds, while the loop took 7 ms at 512 units and 20-25 ms
# at 1,024 on the development CPU. An estimate until `benchmarks/gpu_check.sh` times both on a GPU.
ROUNDS_FROM = 1024


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
    _forbid(s, origin, killed)
    rarg = s.argmax(axis=1)
    st = ZipState(np.ones(n, dtype=bool), np.arange(n), rarg, s[np.arange(n), rarg], np.empty(steps), 0)
    _greedy_steps(s, origin, st, a=a, budget=budget, killed=killed, group_budget=group_budget)
    return st.owner, st.values


@dataclass
class ZipState:
    """Where a zip stands: which features are active, each unit's owner, every row's max and first
    argmax, and the values of the first `done` merges."""

    active: np.ndarray
    owner: np.ndarray
    rarg: np.ndarray
    rmax: np.ndarray
    values: np.ndarray
    done: int


def _forbid(s: np.ndarray | Tensor, origin: np.ndarray, killed: np.ndarray) -> None:
    """-inf on the diagonal and among the features of every killed origin."""
    idx = [np.flatnonzero(origin == m) for m in np.flatnonzero(killed)]
    if isinstance(s, Tensor):
        s.fill_diagonal_(-math.inf)
        for i in map(torch.as_tensor, idx):
            s[i.to(s.device)[:, None], i.to(s.device)] = -math.inf
        return
    np.fill_diagonal(s, -np.inf)
    for i in idx:
        s[np.ix_(i, i)] = -np.inf


def _greedy_steps(s: np.ndarray, origin: np.ndarray, st: ZipState, *, a: float, budget: np.ndarray,
                  killed: np.ndarray, group_budget: np.ndarray | None) -> None:
    """The merges after the first st.done, one at a time (:func:`zip_owners`); `st` is updated in place."""
    neg = s.dtype.type(-np.inf)
    scale = s.dtype.type(a)
    active, owner, rarg, rmax, values = st.active, st.owner, st.rarg, st.rmax, st.values
    for t in range(st.done, len(values)):
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
    st.done = len(values)


def zip_owners_in_rounds(s: Tensor, origin: np.ndarray, *, steps: int, a: float, budget: np.ndarray,
                         killed: np.ndarray, group_budget: np.ndarray | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`zip_owners` on a tensor (overwritten) on any device: the same owners, values, budgets and
    kills, bit for bit, with the bulk of the merges taken many at a time.

    For a GPU, where one merge at a time would be a dozen kernel launches per merge; a CPU runs
    :func:`zip_owners` faster. :func:`merge_rounds` takes the merges it can prove the greedy order
    takes, on s's device; the rest run one at a time on a CPU copy. The values are then put in greedy
    order: while the global max is positive it never rises, so greedy takes those merges by value,
    descending (and equal values are interchangeable in the score's mean).
    """
    _forbid(s, origin, killed)
    st = merge_rounds(s, origin, steps=steps, a=a, budget=budget, killed=killed, group_budget=group_budget)
    head = st.done
    if st.done < steps:
        _greedy_steps(s.cpu().numpy(), origin, st, a=a, budget=budget, killed=killed, group_budget=group_budget)
    if head:
        positive = st.values > 0
        st.values = np.concatenate([np.sort(st.values[positive])[::-1], st.values[~positive]])
    return st.owner, st.values


def merge_rounds(s: Tensor, origin: np.ndarray, *, steps: int, a: float, budget: np.ndarray,
                 killed: np.ndarray, group_budget: np.ndarray | None = None) -> ZipState:
    """The greedy zip's merges taken a round at a time on s's device, while that is provably exact
    (`s` has its forbidden pairs at -inf, those of `killed` origins too; it and the budgets are updated
    in place; nothing is killed here).

    A round takes the pairs (x, y) that are each other's unique row max, at a positive value v. With
    0 < a <= 1 and no origin killed during the rounds, a merge only lowers positive entries
    (a * min(...) stays below both rows' maxima), so such a pair stays each other's unique best until
    the greedy order reaches it, at the same value, and taking it early changes no merge in between;
    several merged at once get the entries the one-at-a-time updates give, in any order (scaling by
    a > 0 commutes with min). Greedy takes the merges at values >= v before it, at most m - 1 of them
    among the m active features whose row max is >= v, so a pair is taken only when
    done + m - 1 <= steps (it is among the first `steps`) and, per live origin, m_o - 1 is below the
    budgets left, or 1 when none is left (no kill comes before it: a kill follows a within-origin
    merge).
    """
    n = s.shape[0]
    dev = s.device
    rarg = s.argmax(1)
    rmax = s.gather(1, rarg[:, None]).squeeze(1)
    active = torch.ones(n, dtype=torch.bool, device=dev)
    owner = torch.arange(n, device=dev)
    ids = torch.arange(n, device=dev)
    of = torch.as_tensor(origin, device=dev)
    scale = torch.tensor(a, dtype=s.dtype, device=dev)  # a rounded to s's precision, as zip_owners does
    values: list[Tensor] = []
    done = 0
    while 0 < a <= 1 and done < steps:
        xs = ((rmax > 0) & (rarg[rarg] == ids) & (ids < rarg)).nonzero().squeeze(1)
        ys, v = rarg[xs], rmax[xs]
        unique = ((s[xs] == v[:, None]).sum(1) == 1) & ((s[ys] == v[:, None]).sum(1) == 1)
        v, order = v[unique].sort(descending=True, stable=True)
        xs, ys = xs[unique][order], ys[unique][order]
        ok = done + _at_least(rmax[active], v) - 1 <= steps
        left = budget if group_budget is None else np.minimum(budget, group_budget)
        for o in np.flatnonzero(~killed):
            ok &= _at_least(rmax[active & (of == int(o))], v) - 1 < max(int(left[o]), 1)
        k = int((~ok).cumsum(0).eq(0).sum())  # the longest run of pairs that pass, from the top
        if k == 0:
            break
        xs, ys = xs[:k], ys[:k]
        values.append(v[:k])
        done += k
        same = of[xs] == of[ys]
        taken = np.bincount(of[xs][same].cpu().numpy(), minlength=len(budget))
        budget -= taken
        if group_budget is not None:
            group_budget -= taken
        rows = torch.minimum(s[xs], s[ys]).mul_(scale)
        among = torch.minimum(rows[:, xs], rows[:, ys]).mul_(scale)
        rows[:, xs] = among.fill_diagonal_(-math.inf)
        rows[:, ys] = -math.inf
        s[ys] = -math.inf
        s[:, ys] = -math.inf
        s[xs] = rows
        s[:, xs] = rows.T
        active[ys] = False
        rmax[ys] = -math.inf
        moved = torch.zeros(n, dtype=torch.bool, device=dev)
        moved[xs] = moved[ys] = True
        redo = active & (moved[rarg] | (rows.max(0).values >= rmax))
        redo[xs] = True
        again = redo.nonzero().squeeze(1)
        rarg[again] = s[again].argmax(1)
        rmax[again] = s[again, rarg[again]]
        into = ids.clone()
        into[ys] = xs
        owner = into[owner]
    out = np.empty(steps)
    out[:done] = torch.cat(values).double().cpu().numpy() if values else []
    return ZipState(active.cpu().numpy(), owner.cpu().numpy(), rarg.cpu().numpy(), rmax.cpu().numpy(), out, done)


def _at_least(r: Tensor, v: Tensor) -> Tensor:
    """For each entry of `v`, how many entries of `r` are >= it."""
    return len(r) - torch.searchsorted(r.sort().values, v, side="left")


def _prepare(sim: Tensor, sizes: Sequence[int], a: float, b: float, out_dim: int | None, who: str,
             on_device: bool = False) -> tuple[np.ndarray | Tensor, tuple[int, ...], float, int, np.ndarray]:
    """Checked inputs -> (similarity copy, sizes, a, out_dim, per-unit parent ids)."""
    s, sizes_t = check_similarity(sim, sizes, who=who, equal=False, on_device=on_device)
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
    A similarity of at least :data:`ROUNDS_FROM` units on a GPU is zipped there, in rounds
    (:func:`zip_owners_in_rounds`); any other is zipped on the CPU one merge at a time.
    """
    on_device = isinstance(sim, Tensor) and sim.device.type != "cpu" and len(sim) >= ROUNDS_FROM
    s, sizes_t, a, c, origin = _prepare(sim, sizes, a, b, out_dim, "greedy_zip", on_device)
    n = len(sizes_t)
    budget = np.full(n, model_budget(len(origin), c, n, b), dtype=np.int64)
    zipper = zip_owners_in_rounds if on_device else zip_owners
    owner, values = zipper(s, origin, steps=len(origin) - c, a=a, budget=budget, killed=np.zeros(n, dtype=bool))
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
