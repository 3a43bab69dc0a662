"""Matching solvers: brute-force Hungarian, hand-made greedy-zip cases, fast zip == reference, groups."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from mudsc.diffinit.solvers import (
    GroupMatch,
    Match,
    get_solver,
    greedy_zip,
    greedy_zip_reference,
    group_hungarian,
    group_rigid,
    group_zip,
    hungarian,
    identity,
    list_solvers,
    register_solver,
    solver_paper,
)
from mudsc.diffinit.solvers import zip as zip_module
from mudsc.diffinit.solvers.match import check_similarity
from mudsc.diffinit.solvers.zip import merge_rounds, model_budget, zip_owners, zip_owners_in_rounds
from mudsc.errors import ConfigError, UnknownNameError

ALL = {
    "identity": lambda s, sizes: identity(s, sizes),
    "hungarian": lambda s, sizes: hungarian(s, sizes),
    "zip": lambda s, sizes: greedy_zip(s, sizes),
    "zip-reference": lambda s, sizes: greedy_zip_reference(s, sizes),
    "group-hungarian": lambda s, sizes: group_hungarian(s, sizes, groups=2),
    "group-zip": lambda s, sizes: group_zip(s, sizes, groups=2),
    "group-rigid": lambda s, sizes: group_rigid(s, sizes, groups=2),
}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def corr_sim(n_units: int, g: torch.Generator, *, samples: int = 12) -> torch.Tensor:
    """[O, O] Pearson correlation of random features (float32, symmetric, generic: no ties)."""
    return torch.corrcoef(torch.randn(n_units, samples, generator=g, dtype=torch.float64)).float()


def tie_sim(n_units: int, g: torch.Generator) -> torch.Tensor:
    """[O, O] symmetric matrix of quarter-integers in [-0.75, 0.75]: many exact ties."""
    upper = torch.triu(torch.randint(-3, 4, (n_units, n_units), generator=g).float() / 4, 1)
    return upper + upper.T


def negative_tie_sim(n_units: int, g: torch.Generator) -> torch.Tensor:
    """[O, O] symmetric matrix over {-1, -0.5, -0.25, 0}: a * min(...) lands on existing values."""
    values = torch.tensor([-1.0, -0.5, -0.25, 0.0])
    upper = torch.triu(values[torch.randint(0, 4, (n_units, n_units), generator=g)], 1)
    return upper + upper.T


def copies_sim(perms: list[torch.Tensor], g: torch.Generator, *, samples: int = 64, noise: float = 0.05,
               base: torch.Tensor | None = None) -> torch.Tensor:
    """Similarity of parent 0 = features X and parent i = X[perms[i-1]] + noise (parent i unit v is a
    copy of parent 0 unit perms[i-1][v])."""
    n = len(perms[0])
    x = base if base is not None else torch.randn(n, samples, generator=g, dtype=torch.float64)
    feats = [x] + [x[p] + noise * torch.randn(x.shape, generator=g, dtype=x.dtype) for p in perms]
    return torch.corrcoef(torch.cat(feats)).float()


def expected_copy_clusters(perms: list[torch.Tensor]) -> list[list[int]]:
    n = len(perms[0])
    clusters = [[u] for u in range(n)]
    for i, p in enumerate(perms, start=1):
        for v, u in enumerate(p.tolist()):
            clusters[u].append(i * n + v)
    return sorted(sorted(c) for c in clusters)


def check_maps(m: Match) -> None:
    o, c = sum(m.sizes), m.out_dim
    assert m.merge.dtype == m.unmerge.dtype == torch.float32
    assert m.merge.device.type == m.unmerge.device.type == "cpu"
    assert m.merge.shape == (c, o) and m.unmerge.shape == (o, c)
    assert torch.all((m.unmerge == 0) | (m.unmerge == 1))
    assert torch.all(m.unmerge.sum(dim=1) == 1)
    assert torch.all(m.unmerge.sum(dim=0) >= 1)
    torch.testing.assert_close(m.merge.sum(dim=1), torch.ones(c))
    torch.testing.assert_close(m.merge, (m.unmerge / m.unmerge.sum(dim=0)).T)
    assert m.n_within + m.n_across == o - c
    assert sorted(u for cl in m.clusters() for u in cl) == list(range(o))
    parts = m.parts()
    assert [p[0].shape for p in parts] == [(c, n) for n in m.sizes]
    assert [p[1].shape for p in parts] == [(n, c) for n in m.sizes]
    assert isinstance(m.score, float)


# registry ---------------------------------------------------------------------------------------

def test_registry_names_and_lookup():
    assert set(list_solvers()) == {"identity", "hungarian", "zip", "group-hungarian", "group-zip", "group-rigid"}
    assert get_solver("zip") is greedy_zip and get_solver("group-zip") is group_zip
    assert all(solver_paper(n).startswith("https://arxiv.org/") for n in list_solvers())
    with pytest.raises(UnknownNameError, match="hungarian") as e:
        get_solver("hungarain")
    assert "group-zip" in str(e.value)
    with pytest.raises(ValueError, match="twice"):
        register_solver("zip", paper="x")(greedy_zip)


# map invariants ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(ALL))
@pytest.mark.parametrize("n_par", [2, 3])
def test_maps_are_averages_and_assignments(name, n_par):
    g = gen(n_par)
    for _ in range(3):
        m = ALL[name](corr_sim(6 * n_par, g), [6] * n_par)
        check_maps(m)
        assert m.out_dim == 6
        assert isinstance(m, GroupMatch) == name.startswith("group")


def test_identity_is_weight_averaging():
    m = identity(corr_sim(12, gen(0)), [4, 4, 4])
    torch.testing.assert_close(m.merge, torch.cat([torch.eye(4) / 3] * 3, dim=1))
    torch.testing.assert_close(m.unmerge, torch.cat([torch.eye(4)] * 3, dim=0))


# hungarian --------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_par", [2, 3])
def test_hungarian_equals_brute_force(n_par):
    g = gen(10 + n_par)
    n = 5
    for _ in range(5):
        s = corr_sim(n * n_par, g)
        m = hungarian(s, [n] * n_par)
        clusters = [[u] for u in range(n)]
        scores = []
        for i in range(1, n_par):
            block = s[:n, i * n:(i + 1) * n].double()
            best = max(itertools.permutations(range(n)), key=lambda p: float(block[range(n), list(p)].sum()))
            scores.append(float(block[range(n), list(best)].mean()))
            for u, v in enumerate(best):
                clusters[u].append(i * n + v)
        assert m.clusters() == clusters
        assert m.score == pytest.approx(float(np.mean(scores)), abs=1e-6)
        assert m.n_within == 0


# greedy zip: hand-made --------------------------------------------------------------------------

def sym(n: int, entries: dict[tuple[int, int], float]) -> torch.Tensor:
    s = torch.zeros(n, n)
    for (i, j), v in entries.items():
        s[i, j] = s[j, i] = v
    return s


@pytest.mark.parametrize("zipper", [greedy_zip, greedy_zip_reference])
def test_zip_takes_the_best_within_model_pair_when_budget_allows(zipper):
    s = sym(4, {(0, 1): 0.9, (0, 2): 0.8, (1, 3): 0.7, (2, 3): 0.1})
    m = zipper(s, [2, 2], a=0.5, b=1.0)
    assert m.clusters() == [[0, 1], [2, 3]]
    assert m.n_within == 2 and m.n_across == 0
    assert m.score == pytest.approx((0.9 + 0.1) / 2)
    assert hungarian(s, [2, 2]).clusters() == [[0, 2], [1, 3]]


@pytest.mark.parametrize("zipper", [greedy_zip, greedy_zip_reference])
def test_zip_budget_zero_still_allows_one_within_merge_per_model(zipper):
    # model 0 = units 0-3, model 1 = units 4-7; two strong within-model pairs in model 0
    s = sym(8, {(0, 1): 0.95, (2, 3): 0.9, (2, 6): 0.6, (3, 7): 0.55, (0, 4): 0.5, (1, 5): 0.45, (4, 5): 0.3})
    quirk = zipper(s, [4, 4], a=0.5, b=0.0)
    assert quirk.clusters() == [[0, 1], [2, 6], [3, 7], [4, 5]]  # one free within merge each, (2, 3) blocked
    assert quirk.n_within == 2
    full = zipper(s, [4, 4], a=0.5, b=1.0)  # budget 2 per model: (2, 3) is merged as well
    assert [2, 3] in full.clusters() and [0, 1, 4, 5] in full.clusters()


@pytest.mark.parametrize("zipper", [greedy_zip, greedy_zip_reference])
def test_zip_alpha_zero_freezes_merged_features(zipper):
    s = sym(4, {(0, 2): 0.9, (0, 1): 0.85, (1, 2): 0.8, (0, 3): 0.8, (1, 3): 0.1, (2, 3): 0.05})
    assert zipper(s, [2, 2], a=0.0).clusters() == [[0, 2], [1, 3]]
    assert zipper(s, [2, 2], a=1.0).clusters() == [[0, 1, 2], [3]]  # min(0.85, 0.8) beats 0.1
    assert zipper(s, [2, 2], a=0.5).clusters() == [[0, 1, 2], [3]]  # 0.4 still beats 0.1


@pytest.mark.parametrize("zipper", [greedy_zip, greedy_zip_reference])
def test_zip_alpha_pulls_negative_similarities_toward_zero(zipper):
    s = sym(4, {(0, 2): 0.9, (1, 3): -0.45, (0, 3): -0.8, (1, 2): -0.8, (0, 1): -0.5, (2, 3): -0.5})
    m = zipper(s, [2, 2], a=0.5)
    # the merged feature's 0.5 * min(-0.5, -0.8) = -0.4 beats the untouched pair (1, 3) at -0.45
    assert m.clusters() == [[0, 1, 2], [3]]
    assert m.score == pytest.approx((0.9 - 0.4) / 2)


def test_zip_ties_take_the_lexicographically_first_pair():
    s = torch.full((4, 4), 0.5)
    m = greedy_zip(s, [2, 2], out_dim=3)
    assert m.clusters() == [[0, 1], [2], [3]]


# greedy zip: fast == reference ------------------------------------------------------------------

@pytest.mark.parametrize("make", [corr_sim, tie_sim], ids=["generic", "ties"])
def test_fast_zip_equals_reference(make):
    g = gen(7)
    cases = 0
    for n_par, a, b in itertools.product([2, 3, 4], [0.0, 0.3, 0.5, 1.0], [0.0, 0.125, 0.5, 1.0]):
        sizes = [int(torch.randint(1, 7, (1,), generator=g)) for _ in range(n_par)]
        o = sum(sizes)
        s = make(o, g)
        for out_dim in (None, int(torch.randint(1, o + 1, (1,), generator=g))):
            fast = greedy_zip(s, sizes, a=a, b=b, out_dim=out_dim)
            ref = greedy_zip_reference(s, sizes, a=a, b=b, out_dim=out_dim)
            assert fast.clusters() == ref.clusters(), (sizes, a, b, out_dim)
            assert fast.score == ref.score
            torch.testing.assert_close(fast.merge, ref.merge, rtol=0, atol=0)
            cases += 1
    assert cases == 96


def test_fast_zip_breaks_ties_of_raised_negative_entries_like_reference():
    # a * min(...) raises negative entries onto values a row already holds at a later column
    g = gen(8)
    for _ in range(150):
        n_par = 2 + int(torch.randint(0, 2, (1,), generator=g))
        sizes = [int(torch.randint(1, 6, (1,), generator=g)) for _ in range(n_par)]
        s = negative_tie_sim(sum(sizes), g)
        fast, ref = greedy_zip(s, sizes, a=0.5), greedy_zip_reference(s, sizes, a=0.5)
        assert fast.clusters() == ref.clusters() and fast.score == ref.score


def test_fast_zip_equals_reference_on_larger_matrices():
    g = gen(3)
    for n_par, n in [(2, 32), (3, 12)]:
        s = corr_sim(n * n_par, g, samples=32)
        for a, b in [(0.5, 1.0), (0.0, 0.5), (0.3, 0.125)]:
            fast, ref = greedy_zip(s, [n] * n_par, a=a, b=b), greedy_zip_reference(s, [n] * n_par, a=a, b=b)
            assert fast.clusters() == ref.clusters() and fast.score == ref.score


# greedy zip in rounds (a GPU's) == one merge at a time --------------------------------------------

def both_zips(s: torch.Tensor, sizes: list[int], a: float, b: float, *, out_dim: int | None = None,
              killed: np.ndarray | None = None, group_budget: int | None = None) -> list[tuple]:
    """(owner, values, budget, killed, group budget) after zip_owners and after zip_owners_in_rounds."""
    origin = np.repeat(np.arange(len(sizes)), sizes)
    o, c = len(origin), sizes[0] if out_dim is None else out_dim
    out = []
    for zipper, m in ((zip_owners, s.numpy().copy()), (zip_owners_in_rounds, s.clone())):
        budget = np.full(len(sizes), model_budget(o, c, len(sizes), b), dtype=np.int64)
        dead = np.zeros(len(sizes), dtype=bool) if killed is None else killed.copy()
        local = None if group_budget is None else np.full(len(sizes), group_budget, dtype=np.int64)
        owner, values = zipper(m, origin, steps=o - c, a=a, budget=budget, killed=dead, group_budget=local)
        out.append((owner, values, budget, dead, local))
    return out


@pytest.mark.parametrize("make", [corr_sim, tie_sim, negative_tie_sim], ids=["generic", "ties", "negative"])
def test_zip_in_rounds_equals_one_merge_at_a_time(make):
    g = gen(11)
    for n_par, a, b in itertools.product([2, 3, 4], [0.0, 0.3, 0.5, 1.0], [0.0, 0.125, 0.5, 1.0]):
        sizes = [int(torch.randint(4, 40, (1,), generator=g)) for _ in range(n_par)]
        s = make(sum(sizes), g)
        s = s.double() if int(torch.randint(0, 2, (1,), generator=g)) else s
        killed = (torch.rand(n_par, generator=g) < 0.2).numpy()
        local = int(torch.randint(1, 30, (1,), generator=g)) if int(torch.randint(0, 2, (1,), generator=g)) else None
        for out_dim in (None, int(torch.randint(1, sum(sizes) + 1, (1,), generator=g))):
            one, rounds = both_zips(s, sizes, a, b, out_dim=out_dim, killed=killed, group_budget=local)
            for x, y in zip(one, rounds):
                assert (x is None and y is None) or np.array_equal(x, y), (sizes, a, b, out_dim)


def test_rounds_take_most_merges_of_a_large_zip_and_keep_its_result():
    g = gen(12)
    s = corr_sim(512, g, samples=64)
    for a, b in [(0.5, 1.0), (1.0, 0.125), (0.3, 0.0)]:
        origin = np.repeat(np.arange(2), 256)
        budget = np.full(2, model_budget(512, 256, 2, b), dtype=np.int64)
        done = merge_rounds(s.clone().fill_diagonal_(-float("inf")), origin, steps=256, a=a, budget=budget,
                            killed=np.zeros(2, dtype=bool)).done
        # the default budgets stay far from a kill; small ones stop the rounds early (the bound counts
        # every feature of an origin whose max is high enough as a possible within merge)
        assert done >= 0.8 * 256 if b == 1.0 else done < 0.8 * 256, (a, b, done)
        one, rounds = both_zips(s, [256, 256], a, b)
        assert all(np.array_equal(x, y) for x, y in zip(one[:4], rounds[:4]))
    budget = np.full(2, 128, dtype=np.int64)
    assert merge_rounds(s.clone(), np.repeat(np.arange(2), 256), steps=256, a=0.0, budget=budget,
                        killed=np.zeros(2, dtype=bool)).done == 0
    # a parent killed before (group zip carries kills over): its spent budget does not stop the rounds
    killed = np.array([True, False])
    forbidden = s.clone().fill_diagonal_(-float("inf"))
    forbidden[:256, :256] = -float("inf")
    budget = np.array([0, 128])
    assert merge_rounds(forbidden, origin, steps=256, a=0.5, budget=budget, killed=killed).done >= 0.8 * 256
    one, rounds = both_zips(s, [256, 256], 0.5, 1.0, killed=killed)
    assert all(np.array_equal(x, y) for x, y in zip(one[:4], rounds[:4]))


def test_similarity_checked_on_its_device_like_on_the_cpu():
    s = corr_sim(12, gen(13)).double()
    s[0, 1] += 1e-7  # within the tolerance: symmetrised
    on_device, _ = check_similarity(s, (6, 6), who="t", equal=True, on_device=True)
    numpy_copy, _ = check_similarity(s, (6, 6), who="t", equal=True)
    assert isinstance(on_device, torch.Tensor) and np.array_equal(on_device.numpy(), numpy_copy)
    for bad, message in [(float("nan"), "NaN"), (float("inf"), r"\+inf"), (0.5, "not symmetric")]:
        t = s.clone()
        t[2, 3] = bad
        with pytest.raises(ConfigError, match=message):
            check_similarity(t, (6, 6), who="t", equal=True, on_device=True)


def test_zip_budget_zero_allows_at_most_one_within_merge_per_model():
    # with a = 0 and two parents every merged feature is frozen, so clusters show the solver's count
    g = gen(5)
    for _ in range(5):
        s = corr_sim(16, g)
        assert greedy_zip(s, [8, 8], a=0.0, b=0.0).n_within <= 2
        assert greedy_zip(s, [8, 8], a=0.0, b=1.0).n_within <= 8


# exact recovery ---------------------------------------------------------------------------------

@pytest.mark.parametrize("n_par", [2, 3])
def test_permuted_copies_are_recovered_by_every_solver(n_par):
    g = gen(20 + n_par)
    n = 8
    perms = [torch.randperm(n, generator=g) for _ in range(n_par - 1)]
    s = copies_sim(perms, g)
    want = expected_copy_clusters(perms)
    for m in (hungarian(s, [n] * n_par), greedy_zip(s, [n] * n_par), greedy_zip(s, [n] * n_par, a=0.0),
              greedy_zip_reference(s, [n] * n_par)):
        assert sorted(m.clusters()) == want
        assert m.n_within == 0
    ident = [torch.arange(n)] * (n_par - 1)
    assert identity(copies_sim(ident, g), [n] * n_par).clusters() == expected_copy_clusters(ident)


def group_perm(groups: int, c: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A permutation moving whole groups and units inside groups: (perm [g*c], group_of [g], unit_of [g, c]).

    Copy unit v = k*c + l (group k) is parent-0 unit perm[v]; parent-0 group j lands in copy group
    group_of[j], and its unit l in unit unit_of[j, l] of that group."""
    group_of = torch.randperm(groups, generator=g)
    unit_of = torch.stack([torch.randperm(c, generator=g) for _ in range(groups)])
    perm = torch.empty(groups * c, dtype=torch.long)
    for j in range(groups):
        for u in range(c):
            perm[group_of[j] * c + unit_of[j, u]] = j * c + u
    return perm, group_of, unit_of


def grouped_features(groups: int, c: int, g: torch.Generator, samples: int = 96) -> torch.Tensor:
    """[g*c, samples] features with a shared factor per group (block-structured correlation)."""
    z = torch.randn(groups, samples, generator=g, dtype=torch.float64)
    return z.repeat_interleave(c, dim=0) + 0.8 * torch.randn(groups * c, samples, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("n_par", [2, 3])
def test_group_hungarian_recovers_group_and_unit_permutations(n_par):
    g = gen(30 + n_par)
    groups, c = 4, 6
    made = [group_perm(groups, c, g) for _ in range(n_par - 1)]
    s = copies_sim([p for p, _, _ in made], g, base=grouped_features(groups, c, g), noise=0.3)
    m = group_hungarian(s, [groups * c] * n_par, groups=groups)
    assert sorted(m.clusters()) == expected_copy_clusters([p for p, _, _ in made])
    for i, (_, group_of, unit_of) in enumerate(made):
        assert torch.equal(m.group_assign[i], group_of)
        assert torch.equal(m.within[i], unit_of)
        assert m.group_sim[i].shape == (groups, groups)
        assert m.group_sim[i].argmax(dim=1).tolist() == group_of.tolist()
    chosen = [float(gs[torch.arange(groups), ga].mean()) for gs, ga in zip(m.group_sim, m.group_assign)]
    assert m.score == pytest.approx(float(np.mean(chosen)), abs=1e-6)


def cluster_groups(m: GroupMatch, groups: int) -> list[set[tuple[int, int]]]:
    """Per merged group j, the set of (parent, group) pairs its merged units draw from."""
    n = m.sizes[0]
    c = n // groups
    out = []
    for j in range(groups):
        out.append({(u // n, (u % n) // c) for cl in m.clusters()[j * c:(j + 1) * c] for u in cl})
    return out


@pytest.mark.parametrize("solver", [group_hungarian, group_zip])
@pytest.mark.parametrize("n_par", [2, 3])
def test_group_solvers_keep_merged_groups_contiguous(solver, n_par):
    g = gen(40 + n_par)
    groups, c = 3, 4
    for _ in range(4):
        m = solver(corr_sim(groups * c * n_par, g), [groups * c] * n_par, groups=groups)
        check_maps(m)
        for j, drawn in enumerate(cluster_groups(m, groups)):
            want = {(0, j)} | {(i, int(m.group_assign[i - 1][j])) for i in range(1, n_par)}
            assert drawn == want  # each merged group is exactly one matched group set
        if solver is group_zip:
            assert all(len(cl) >= 1 for cl in m.clusters())
        else:
            assert all(len(cl) == n_par for cl in m.clusters())


def test_group_zip_recovers_permuted_copies():
    g = gen(50)
    groups, c = 4, 5
    perm, group_of, _ = group_perm(groups, c, g)
    s = copies_sim([perm], g, base=grouped_features(groups, c, g), noise=0.2)
    m = group_zip(s, [groups * c] * 2, groups=groups)
    assert sorted(m.clusters()) == expected_copy_clusters([perm])
    assert torch.equal(m.group_assign[0], group_of)


def block_identity(m: GroupMatch, groups: int) -> list[torch.Tensor]:
    """Per parent the [g, g] head map H_i when its merge and unmerge maps are H_i expanded by the
    identity inside a head (unit d of a head only ever meets unit d of another); AssertionError otherwise."""
    c = m.sizes[0] // groups
    eye = torch.eye(c)
    heads = []
    for merge, unmerge in m.parts():
        for t in (merge.T, unmerge):
            blocks = t.reshape(groups, c, groups, c)
            torch.testing.assert_close(blocks, torch.einsum("kj,de->kdje", blocks[:, 0, :, 0], eye), rtol=0, atol=0)
        heads.append(unmerge.reshape(groups, c, groups, c)[:, 0, :, 0])
    return heads


@pytest.mark.parametrize("n_par", [2, 3])
def test_group_rigid_moves_whole_groups_and_recovers_group_permutations(n_par):
    g = gen(80 + n_par)
    groups, c = 4, 5
    perms, group_ofs = [], []
    for _ in range(n_par - 1):
        group_of = torch.randperm(groups, generator=g)
        perm = torch.empty(groups * c, dtype=torch.long)
        for j in range(groups):
            perm[group_of[j] * c + torch.arange(c)] = j * c + torch.arange(c)
        perms.append(perm)
        group_ofs.append(group_of)
    s = copies_sim(perms, g, base=grouped_features(groups, c, g), noise=0.3)
    m = group_rigid(s, [groups * c] * n_par, groups=groups)
    assert sorted(m.clusters()) == expected_copy_clusters(perms)
    for i, group_of in enumerate(group_ofs):
        assert torch.equal(m.group_assign[i], group_of)
        assert torch.equal(m.within[i], torch.arange(c).repeat(groups, 1))
    rigid_g = m.group_sim[0].double().numpy()
    block = s[: groups * c, groups * c: 2 * groups * c].double().reshape(groups, c, groups, c)
    assert rigid_g[1, 2] == pytest.approx(float(torch.diagonal(block[1, :, 2, :]).mean()), abs=1e-6)
    chosen = [float(gs[torch.arange(groups), ga].mean()) for gs, ga in zip(m.group_sim, m.group_assign)]
    assert m.score == pytest.approx(float(np.mean(chosen)), abs=1e-6)


@pytest.mark.parametrize("kind", ["align", "zip"])
@pytest.mark.parametrize("n_par", [2, 3])
def test_rigid_spaces_are_the_identity_inside_heads_on_random_similarities(kind, n_par):
    """Whatever the similarity, a rigid space's maps only move whole heads: the merge and unmerge maps
    are a head map expanded by the identity, each merged head drawing one head per parent."""
    from mudsc.diffinit.config import make_config
    from mudsc.diffinit.solve import solve_one

    g = gen(90 + n_par)
    groups, c = 3, 4
    config = make_config(method="mudsc-align" if kind == "align" else "mudsc-zip")
    for _ in range(4):
        m = solve_one(corr_sim(groups * c * n_par, g), (groups * c,) * n_par, kind=kind, groups=groups,
                      config=config, rigid=True)
        check_maps(m)
        for head in block_identity(m, groups):
            assert torch.equal(head.sum(dim=1), torch.ones(groups)) and torch.equal(head.sum(dim=0), torch.ones(groups))
    # a free space on such a similarity does move units inside heads
    free = solve_one(corr_sim(groups * c * n_par, g), (groups * c,) * n_par, kind=kind, groups=groups, config=config)
    with pytest.raises(AssertionError):
        block_identity(free, groups)


@pytest.mark.parametrize("a,b", [(0.5, 1.0), (0.0, 0.5), (0.3, 0.0)])
def test_group_zip_with_one_group_is_greedy_zip(a, b):
    g = gen(60)
    for n_par in (2, 3):
        s = corr_sim(6 * n_par, g)
        one = group_zip(s, [6] * n_par, groups=1, a=a, b=b)
        plain = greedy_zip(s, [6] * n_par, a=a, b=b)
        assert one.clusters() == plain.clusters() and one.score == plain.score


def test_group_zip_budgets_limit_within_model_merges():
    g = gen(70)
    for _ in range(4):
        s = corr_sim(32, g)
        # a = 0 with two parents: clusters show the solver's within-parent count (see the zip test)
        assert group_zip(s, [16, 16], groups=4, a=0.0, b=0.0).n_within <= 2  # one free merge per parent
        assert group_zip(s, [16, 16], groups=4, a=0.0, group_budget=0.0).n_within <= 8  # one per group
        assert group_zip(s, [16, 16], groups=4, a=0.0, group_budget=0.5).n_within <= 8


# inputs -----------------------------------------------------------------------------------------

def test_float64_and_lists_are_accepted():
    s = corr_sim(8, gen(80)).double()
    for name, fn in ALL.items():
        check_maps(fn(s, (4, 4)))
        check_maps(fn(s.numpy(), [4, 4]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_inputs_give_cpu_results():
    s = corr_sim(16, gen(81))
    for name, fn in ALL.items():
        on_gpu, on_cpu = fn(s.cuda(), [8, 8]), fn(s, [8, 8])
        check_maps(on_gpu)
        assert on_gpu.clusters() == on_cpu.clusters()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_large_zip_on_cuda_runs_in_rounds_with_the_cpu_result(monkeypatch):
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return zip_owners_in_rounds(*args, **kwargs)
    monkeypatch.setattr(zip_module, "zip_owners_in_rounds", counted)
    half = zip_module.ROUNDS_FROM // 2
    s = corr_sim(2 * half, gen(82), samples=64)
    s[0, 1] += 1e-7  # a GPU's products need not be exactly symmetric
    for a, b in [(0.5, 1.0), (0.3, 0.125)]:
        on_gpu, on_cpu = greedy_zip(s.cuda(), [half, half], a=a, b=b), greedy_zip(s, [half, half], a=a, b=b)
        assert on_gpu.clusters() == on_cpu.clusters() and on_gpu.score == on_cpu.score
    assert len(calls) == 2


def test_bad_inputs_raise_config_errors():
    s = corr_sim(8, gen(90))
    with pytest.raises(ConfigError, match=r"\(3, 5\)"):
        hungarian(s, [3, 5])
    with pytest.raises(ConfigError, match=r"\(3, 5\)"):
        group_zip(s, [3, 5], groups=1)
    with pytest.raises(ConfigError, match="groups"):
        group_hungarian(s, [4, 4], groups=3)
    with pytest.raises(ConfigError, match="groups"):
        group_zip(s, [4, 4], groups=0)
    with pytest.raises(ConfigError, match="a must be"):
        greedy_zip(s, [4, 4], a=1.5)
    with pytest.raises(ConfigError, match="b must be"):
        greedy_zip_reference(s, [4, 4], b=-0.1)
    with pytest.raises(ConfigError, match="group_budget"):
        group_zip(s, [4, 4], groups=2, group_budget=2.0)
    with pytest.raises(ConfigError, match="out_dim"):
        greedy_zip(s, [4, 4], out_dim=0)
    with pytest.raises(ConfigError, match=r"\[9, 9\].*\(8, 8\)"):
        greedy_zip(s, [4, 5])
    with pytest.raises(ConfigError, match="2 parents"):
        identity(s, [8])
    bad = s.clone()
    bad[0, 1] = bad[1, 0] = float("nan")
    for fn in ALL.values():
        with pytest.raises(ConfigError, match="NaN"):
            fn(bad, [4, 4])
    lopsided = s.clone()
    lopsided[0, 1] += 0.5
    with pytest.raises(ConfigError, match="symmetric"):
        greedy_zip(lopsided, [4, 4])
    blocked = s.clone()
    blocked[:4, 4:] = blocked[4:, :4] = float("-inf")
    with pytest.raises(ConfigError, match="no complete matching"):
        hungarian(blocked, [4, 4])
    assert greedy_zip(blocked, [4, 4]).n_across == 0  # -inf forbids pairs but zip still finishes


def test_inputs_are_not_modified():
    s = corr_sim(12, gen(91))
    before = s.clone()
    for fn in ALL.values():
        fn(s, [6, 6])
    assert torch.equal(s, before)


@pytest.mark.parametrize("where", [(3, 290), (150, 299), (299, 1)])
def test_symmetry_is_checked_in_every_tile(where):
    """The check compares tiles of 128: an asymmetry in any tile, the ragged last one included, is
    seen (rounding-size: symmetrised; large: refused)."""
    from mudsc.diffinit.solvers.match import check_similarity

    s = corr_sim(300, gen(7)).double()
    i, j = where
    tiny = s.clone()
    tiny[i, j] += 1e-9
    out, _ = check_similarity(tiny, [150, 150], who="t", equal=True)
    assert np.array_equal(out, out.T) and out[i, j] != s[i, j].item()
    big = s.clone()
    big[i, j] += 0.5
    with pytest.raises(ConfigError, match="symmetric"):
        check_similarity(big, [150, 150], who="t", equal=True)
