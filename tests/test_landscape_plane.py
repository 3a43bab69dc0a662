"""Planes: three-point, PCA and filter-normalised random planes, projection, grid cover."""
import pytest
import torch

from landscape.plane import cover_grid, filter_normalize, flatten, pca, random_directions, three_point, trainable_names
from mudsc.errors import ConfigError
from mudsc.models import create_model


def _models(n, *, arch="mlp", **kw):
    out = []
    for i in range(n):
        torch.manual_seed(100 + i)
        m = create_model(arch, classes=(0, 1, 2, 3, 4), num_classes=10, in_chans=1, img_size=8, **kw)
        out.append(m)
    return out[0], [m.state_dict() for m in out]


def test_three_point_places_models_at_true_distances():
    tpl, (a, b, c) = _models(3, width=32)
    names = trainable_names(tpl)
    pl = three_point(a, b, c, names=names)
    fa, fb, fc = (flatten(s, names) for s in (a, b, c))
    ca, da = pl.project(a)
    cb, db = pl.project(b)
    cc, dc = pl.project(c)
    assert torch.allclose(ca, torch.zeros(2, dtype=torch.float64), atol=1e-9)
    assert cb[1].abs() < 1e-9 and cb[0] > 0
    for (ci, cj), (fi, fj) in [((ca, cb), (fa, fb)), ((ca, cc), (fa, fc)), ((cb, cc), (fb, fc))]:
        assert torch.isclose((ci - cj).norm(), (fi - fj).norm(), rtol=1e-9)
    assert max(da, db, dc) < 1e-9
    # point() of the projected coordinates gives back the model's coordinate tensors
    back = pl.point(cc)
    for n in names:
        assert torch.allclose(back[n], c[n], atol=1e-5)
    # orthonormal axes
    assert torch.isclose(pl.u.norm(), torch.tensor(1.0, dtype=torch.float64))
    assert abs(float(pl.u @ pl.v)) < 1e-12


def test_projection_of_in_plane_point_and_off_plane_distance():
    tpl, (a, b, c, d) = _models(4, width=16)
    names = trainable_names(tpl)
    pl = three_point(a, b, c, names=names)
    coords = torch.tensor([0.3, -1.7], dtype=torch.float64)
    got, dist = pl.project(pl.point(coords))
    assert torch.allclose(got, coords, atol=1e-5) and dist < 1e-4
    got_d, dist_d = pl.project(d)
    resid = flatten(d, names) - pl.flat_point(got_d)
    assert dist_d == pytest.approx(float(resid.norm()), rel=1e-9) and dist_d > 1.0


def test_buffers_are_not_coordinates():
    tpl, (a, b, c) = _models(3, arch="resnet20", width=1)
    names = trainable_names(tpl)
    assert not any("running" in n or "num_batches" in n or "class_embed" in n for n in names)
    pl = three_point(a, b, c, names=names)
    assert "body.bn1.running_mean" in pl.point(torch.zeros(2))


def test_collinear_triple_is_refused():
    tpl, (a, b) = _models(2, width=16)
    names = trainable_names(tpl)
    mid = {k: (0.5 * a[k] + 0.5 * b[k]) if k in names else a[k] for k in a}
    with pytest.raises(ConfigError, match="collinear"):
        three_point(a, b, mid, names=names)
    with pytest.raises(ConfigError, match="coincide"):
        three_point(a, a, b, names=names)


def test_pca_reproduces_models_in_a_2d_affine_subspace():
    tpl, (a, b, c) = _models(3, width=16)
    names = trainable_names(tpl)
    mix = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (0.7, 0.4), (-0.5, 1.3), (2.0, -1.0)]
    models = [{k: (a[k] + s * (b[k] - a[k]) + t * (c[k] - a[k])) if k in names else a[k] for k in a}
              for s, t in mix]
    pl = pca(models, names=names)
    assert sum(pl.info["explained_variance"]) == pytest.approx(1.0, abs=1e-9)
    for m in models:
        coords, dist = pl.project(m)
        assert dist < 1e-4
        back = pl.point(coords)
        for n in names:
            assert torch.allclose(back[n], m[n], atol=1e-5)
    with pytest.raises(ConfigError):
        pca(models[:2], names=names)


def test_filter_normalisation_gives_each_filter_its_weight_norm():
    tpl, (a,) = _models(1, arch="resnet20", width=1)
    names = trainable_names(tpl)
    g = torch.Generator().manual_seed(3)
    weights = {n: a[n].double() for n in names}
    raw = {n: torch.randn(w.shape, generator=g, dtype=torch.float64) for n, w in weights.items()}
    out = filter_normalize(raw, weights)
    for n, d in out.items():
        if d.dim() <= 1:
            assert torch.count_nonzero(d) == 0
            continue
        dn = d.reshape(d.shape[0], -1).norm(dim=1)
        wn = weights[n].reshape(d.shape[0], -1).norm(dim=1)
        assert torch.allclose(dn, wn, rtol=1e-9), n
        # direction of each filter kept (only rescaled)
        cos = torch.nn.functional.cosine_similarity(d.reshape(d.shape[0], -1), raw[n].reshape(d.shape[0], -1))
        assert torch.allclose(cos, torch.ones_like(cos))
    pl = random_directions(a, torch.Generator().manual_seed(0), names=names)
    assert abs(float(pl.u @ pl.v)) < 1e-10 and pl.project(a)[1] < 1e-9
    pl2 = random_directions(a, torch.Generator().manual_seed(0), names=names)
    assert torch.equal(pl.u, pl2.u)


def test_cover_grid_covers_points_with_square_cells():
    pts = torch.tensor([[0.0, 0.0], [10.0, 0.0], [4.0, 3.0]])
    xs, ys = cover_grid(pts, resolution=21, margin=0.2)
    assert len(xs) == 21
    dx, dy = xs[1] - xs[0], ys[1] - ys[0]
    assert torch.isclose(dx, dy)
    assert xs.min() <= -2 + 1e-9 and xs.max() >= 12 - 1e-9
    assert ys.min() <= 0 and ys.max() >= 3
    with pytest.raises(ConfigError):
        cover_grid(pts, resolution=1)
