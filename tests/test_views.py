"""Views behind the Similarity, Alignment and Landscape pages: the math, the data shapes, the figures."""
import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from landscape.frames import landscape_plan
from mudsc.diffinit.config import make_config
from mudsc.diffinit.fuse import fuse, transform_state_dict
from mudsc.diffinit.rebase import is_permutation, rebase, transformed_parents
from mudsc.diffinit.solvers import group_hungarian, hungarian
from mudsc.errors import ConfigError
from mudsc.studio import figures, umap_view, views


@pytest.fixture(scope="module")
def session(demo_parents):
    from mudsc.data import load_dataset
    from mudsc.diffinit.session import MergeSession
    from mudsc.models.checkpoint import load_model

    models = [load_model(p)[0] for p in demo_parents]
    return MergeSession(models, load_dataset("digits"), stats_images=250, eval_images=200)


@pytest.fixture(scope="module")
def permute(session):
    return session.merge(make_config(method="permute"))


@pytest.fixture(scope="module")
def zipit(session):
    return session.merge(make_config(method="zipit"))


def _perm_match(cols, n):
    """Hungarian match of two parents whose cross block rewards unit j -> cols[j]."""
    sim = torch.zeros(2 * n, 2 * n)
    sim[torch.arange(n), n + torch.as_tensor(cols)] = 1.0
    return hungarian(sim + sim.T, (n, n))


def test_agreement_of_a_match_with_itself_is_one_and_counts_changed_partners():
    a = _perm_match([0, 1, 2, 3], 4)
    b = _perm_match([1, 0, 2, 3], 4)
    assert views.agreement(a, a) == 1.0
    # units 0, 1 of parent 0 and 0, 1 of parent 1 change partners: 4 of 8 units
    assert views.agreement(a, b) == pytest.approx(0.5)
    chosen = views.cross_chosen(b, 1)
    assert chosen.sum(1).tolist() == [1, 1, 1, 1] and bool(chosen[0, 1]) and bool(chosen[1, 0])


def test_transformed_parents_of_a_permutation_merge(session, permute):
    assert is_permutation(permute)
    moved = transformed_parents(session, permute)
    fused = fuse(session.sds, session.graph, permute.solution.matches)
    for k, v in fused.items():
        if v.is_floating_point():
            torch.testing.assert_close(sum(m[k] for m in moved) / len(moved), v)
    x = session.eval.x[:64]
    for parent, sd in zip(session.parents, moved):
        model = copy.deepcopy(parent).eval()
        model.load_state_dict(sd)
        with torch.no_grad():
            torch.testing.assert_close(model(x), parent(x), atol=1e-4, rtol=1e-4)


def test_transformed_parents_of_a_zip_merge_still_average_to_the_merge(session, zipit):
    assert not is_permutation(zipit)
    moved = transformed_parents(session, zipit)
    fused = fuse(session.sds, session.graph, zipit.solution.matches)
    key = next(k for k, v in fused.items() if v.is_floating_point() and v.ndim == 4)
    torch.testing.assert_close(sum(m[key] for m in moved) / 2, fused[key])


def test_transformed_parents_need_a_full_merge(session):
    cut = session.graph.cuts[0].name
    partial = session.merge(make_config(method="permute", cut=cut))
    with pytest.raises(ConfigError, match="full merge"):
        transformed_parents(session, partial)


def test_rebase_undoes_a_random_permutation(session):
    g = torch.Generator().manual_seed(3)
    maps = {}
    for s in session.graph.spaces:
        p = torch.eye(s.size)[torch.randperm(s.size, generator=g)]
        maps[s.name] = (p, p.T)
    shuffled = transform_state_dict(session.sds[0], session.graph, maps)
    back = rebase(session.sds[0], shuffled, session.graph)
    for k, v in session.sds[0].items():
        torch.testing.assert_close(back[k], v)


def test_space_similarity_and_scatter(session, permute):
    space = session.graph.spaces[4].name
    v = views.space_similarity(session, permute, space)
    n = session.graph.space(space).size
    assert v.s_w.shape == v.s_a.shape == v.s.shape == (2 * n, 2 * n)
    assert v.alpha == 0.0 and torch.equal(v.s, v.s_a)  # permute is activation-only
    assert views.agreement(v.current, v.activation_only) == 1.0
    full = views.pair_scatter(v, max_points=10 ** 6, generator=torch.Generator().manual_seed(0))
    assert full.n_pairs == len(full.s_a) == n * n
    assert {k: int(m.sum()) for k, m in full.chosen.items()} == {"current": n, "weight": n, "activation": n}
    j, k = full.unit0[full.chosen["current"]], full.unit[full.chosen["current"]]
    np.testing.assert_allclose(full.s_a[full.chosen["current"]], v.s_a[j, n + k].numpy())
    small = views.pair_scatter(v, max_points=3 * n, generator=torch.Generator().manual_seed(0))
    assert n <= len(small.s_a) <= 3 * n and small.n_pairs == n * n
    assert int(small.chosen["current"].sum()) == n  # every chosen pair survives subsampling
    fig = figures.similarity_scatter(small, highlight="weight", space=space)
    assert len(fig.data[1].x) == int(small.chosen["weight"].sum())
    summary = {r["choice"]: r for r in views.choice_summary(full)}
    assert summary["activation"]["mean S_A"] >= summary["weight"]["mean S_A"] - 1e-6  # Hungarian on S_A is optimal


def test_network_agreement_rows(session, permute):
    rows = views.network_agreement(session, permute)
    assert [r["space"] for r in rows] == list(permute.solution.matches)
    assert all(r["merge vs activation"] == 1.0 and 0 <= r["weight vs activation"] <= 1 for r in rows)
    assert len(figures.agreement_figure(rows).data) == 3


def test_pool_is_a_block_mean():
    m = np.arange(30, dtype=float).reshape(5, 6)
    z, f = views.pool(m, max_side=3)
    assert f == 2 and z.shape == (3, 3)
    assert z[0, 0] == pytest.approx(m[:2, :2].mean()) and z[2, 2] == pytest.approx(m[4, 4:6].mean())
    same, f1 = views.pool(m, max_side=6)
    assert f1 == 1 and np.array_equal(same, m.astype(np.float32))


def test_heatmap_view_orders_units_so_alignment_is_diagonal(session, permute):
    space = session.graph.spaces[0].name
    v = views.space_similarity(session, permute, space)
    n = v.sizes[0]
    hv = views.heatmap_view(v, max_side=512)
    assert hv.factor == 1 and all(m.shape == (2 * n, 2 * n) for m in hv.mats)
    # a permutation merges 2n ordered pairs (both directions), on the diagonals of the cross blocks
    assert len(hv.marker_rows) == 2 * n
    assert set(np.abs(hv.marker_rows - hv.marker_cols).tolist()) == {n}
    assert hv.boundaries == [n - 0.5]
    pooled = views.heatmap_view(v, max_side=n // 2)
    assert pooled.factor == 4 and pooled.mats[0].shape == (n // 2, n // 2)
    assert len(figures.similarity_heatmaps(hv, v.sizes, space=space).data) == 6


def test_merge_counts_sum_to_the_reduction(session, zipit):
    rows = views.merge_counts(zipit)
    for r in rows:
        n = session.graph.space(r["space"]).size
        assert r["within"] + r["across"] == n and r["merged units"] == n
    assert any(r["within"] > 0 for r in rows)
    assert len(figures.merge_counts_figure(rows).data) == 2
    fig = figures.merge_map_figure(zipit.solution.matches[rows[0]["space"]])
    assert np.asarray(fig.data[0].z).shape == (rows[0]["merged units"], 2 * rows[0]["merged units"])


def test_group_alignments_of_group_matches():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(8, 16, generator=g)
    b = a.clone()
    b[:4], b[4:] = a[4:].clone(), a[:4].clone()  # parent 1 = parent 0 with its two groups swapped
    sim = torch.corrcoef(torch.cat([a, b]))
    m = group_hungarian(sim, (8, 8), groups=2)
    res = SimpleNamespace(solution=SimpleNamespace(matches={"s": m, "t": hungarian(sim, (8, 8))}))
    out = views.group_alignments(res)
    assert len(out) == 1 and out[0].space == "s" and out[0].parent == 1
    assert out[0].assign.tolist() == [1, 0] and out[0].sim.shape == (2, 2)
    assert list(figures.group_alignment_figure(out[0]).data[1].x) == [1, 0]


def test_unit_cloud_joins_units_to_their_merged_unit(session, zipit):
    space = session.graph.spaces[0].name
    cloud = views.unit_cloud(session, zipit, space)
    n = session.graph.space(space).size
    assert cloud.features.shape[0] == 3 * n and cloud.owner.tolist().count(-1) == n
    assert cloud.lines.shape == (2 * n, 2)
    assert (cloud.owner[cloud.lines[:, 1]] == -1).all()
    np.testing.assert_array_equal(cloud.lines[:, 1] - 2 * n, zipit.solution.matches[space].assignment().numpy())


def test_views_of_a_merge_from_sampled_positions_read_its_statistics(demo_parents):
    from mudsc.data import load_dataset
    from mudsc.diffinit.session import MergeSession
    from mudsc.models.checkpoint import load_model

    model = load_model(demo_parents[0])[0]
    twins = MergeSession([model, copy.deepcopy(model)], load_dataset("digits"), stats_images=250, eval_images=200)
    config = make_config(method="weight-avg", stats_positions=4, seed=3, reset_bn=False)
    result = twins.merge(config)  # a parent averaged with itself: the merged model is that parent
    space = twins.graph.spaces[2].name
    sampled = twins.stats_for(config)
    assert sampled is not twins.activation_stats()
    assert torch.equal(views.space_similarity(twins, result, space).s_a, sampled.corr[space])
    cloud = views.unit_cloud(twins, result, space)
    n = twins.graph.space(space).size
    # the merged model's units, sampled at the parents' positions, are the first parent's units
    np.testing.assert_array_equal(cloud.features[2 * n:], cloud.features[:n])


def test_landscape_plan(session, permute, zipit):
    plan = landscape_plan(session, permute, plane="three_point")
    assert plan.plane_models == ("parent 0'", "parent 1'", "parent 1")
    assert plan.roles["merge: permute"] == "merge"
    with pytest.raises(ConfigError, match="another method"):
        landscape_plan(session, permute, plane="pca")
    pca = landscape_plan(session, permute, plane="pca", others=[zipit])
    assert pca.plane_models == ("parent 0'", "parent 1'", "merge: permute", "merge: zipit")
    with pytest.raises(ConfigError, match="unknown plane"):
        landscape_plan(session, permute, plane="sphere")


def test_umap_is_seeded_and_cached(tmp_path):
    x = np.random.default_rng(0).standard_normal((30, 12)).astype(np.float32)
    x[3] = 1.0  # a dead unit must not break the correlation metric
    a = umap_view.embed(x, seed=1, n_neighbors=5, use_cache=False)
    b = umap_view.embed(x, seed=1, n_neighbors=5, use_cache=False)
    assert a.shape == (30, 2) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert not umap_view.cached(x, seed=1, n_neighbors=5, directory=tmp_path)
    c = umap_view.embed(x, seed=1, n_neighbors=5, directory=tmp_path)
    assert umap_view.cached(x, seed=1, n_neighbors=5, directory=tmp_path)
    np.testing.assert_array_equal(c, umap_view.embed(x, seed=1, n_neighbors=5, directory=tmp_path))
    with pytest.raises(ConfigError, match="at least 4"):
        umap_view.embed(x[:3])
