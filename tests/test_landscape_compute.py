"""compute_landscape end to end: cache hits and misses, resume after a stop, npz round trip, views."""
import threading

import numpy as np
import pytest
import torch

import landscape.compute as compute_mod
from landscape import GridSpec, LandscapeResult, PlaneSpec, compute_landscape, evaluate_path, make_eval_set
from landscape.barrier import interpolation_barrier
from landscape.plane import three_point, trainable_names
from mudsc.data import load_dataset
from mudsc.errors import ConfigError, ShapeMismatchError, UnknownNameError
from mudsc.models import create_model

TASKS = [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9)]


def _eval_set(seed=0):
    return make_eval_set(load_dataset("digits"), TASKS, per_task=15, calib_size=0, batch_size=32,
                         generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def setup():
    sds = {}
    for i, lab in enumerate(["A", "B", "M"]):
        torch.manual_seed(20 + i)
        m = create_model("mlp", classes=TASKS[0], num_classes=10, in_chans=1, img_size=8, width=16)
        sds[lab] = m.state_dict()
    return m, sds, _eval_set()


def _run(setup, tmp_path, **kw):
    tpl, sds, es = setup
    opts = dict(grid=GridSpec(resolution=6, margin=0.2), cache_dir=tmp_path, chunk_size=7)
    opts.update(kw)
    return compute_landscape(tpl, kw.pop("models", sds), PlaneSpec("three_point"), kw.pop("eval_set", es),
                             **{k: v for k, v in opts.items() if k not in ("models", "eval_set")})


def _same(r1, r2):
    for k in ("xs", "ys", "task_loss", "task_acc", "joint_loss", "joint_acc", "model_coords", "model_task_loss"):
        np.testing.assert_allclose(getattr(r1, k), getattr(r2, k), rtol=1e-6, atol=1e-7, err_msg=k)


def test_cache_hit_returns_same_arrays_and_changes_miss(setup, tmp_path, monkeypatch):
    first = _run(setup, tmp_path, roles={"A": "parent", "B": "parent", "M": "merge"})
    assert first.complete and np.isfinite(first.task_loss).all()
    assert first.model_roles == ["parent", "parent", "merge"]
    assert first.model_distance.max() < 1e-6
    calls = []
    real = compute_mod.PointEvaluator
    monkeypatch.setattr(compute_mod, "PointEvaluator", lambda *a, **k: calls.append(1) or real(*a, **k))
    hit = _run(setup, tmp_path)
    assert not calls
    _same(first, hit)
    _run(setup, tmp_path, eval_set=_eval_set(seed=1))            # other data
    assert len(calls) == 1
    _run(setup, tmp_path, grid=GridSpec(resolution=5, margin=0.2))  # other settings
    assert len(calls) == 2
    tpl, sds, _ = setup
    changed = dict(sds, M={k: v + 1e-3 if k.endswith("weight") else v for k, v in sds["M"].items()})
    _run(setup, tmp_path, models=changed)                          # other weights
    assert len(calls) == 3
    assert len(list(tmp_path.glob("*.npz"))) == 4


def test_stop_then_resume_skips_computed_points(setup, tmp_path):
    stop = threading.Event()
    seen = []

    def progress(done, total):
        seen.append((done, total))
        stop.set()

    partial = _run(setup, tmp_path, should_stop=stop, progress=progress)
    assert not partial.complete and int(partial.done.sum()) == 7 and seen == [(7, partial.done.size)]
    assert np.isnan(partial.task_loss[:, ~partial.done]).all()
    # the coarse sub-grid comes first
    iy, ix = np.nonzero(partial.done)
    assert ((iy % 4 == 0) & (ix % 4 == 0)).sum() >= min(7, 4)
    later = []
    full = _run(setup, tmp_path, progress=lambda d, t: later.append(d))
    assert full.complete and later[0] == 7 + 7 and later[-1] == full.done.size
    fresh = _run(setup, tmp_path, use_cache=False)
    _same(full, fresh)


def test_npz_round_trip_and_overlap(setup, tmp_path):
    res = _run(setup, tmp_path, use_cache=False)
    path = res.save(tmp_path / "out" / "land.npz")
    back = LandscapeResult.load(path)
    _same(res, back)
    assert back.model_labels == ["A", "B", "M"] and back.bn_mode == res.bn_mode
    assert back.settings == res.settings and back.task_names == res.task_names
    assert back.settings["axis_units"] == "parameter-space L2 distance"
    th = float(np.median(res.task_loss))
    mask, frac = back.overlap(th)
    assert mask.shape == res.joint_loss.shape
    assert frac == pytest.approx(np.all(res.task_loss < th, axis=0).mean())
    assert back.overlap(1e9)[1] == 1.0
    with pytest.raises(ConfigError):
        back.overlap(0.0)


def test_bad_specs_are_refused(setup, tmp_path):
    with pytest.raises(UnknownNameError):
        _run(setup, tmp_path, stats_from="Z", bn_mode="preview")
    with pytest.raises(ConfigError):
        PlaneSpec("three_point", models=("A", "B"))
    with pytest.raises(ConfigError):
        PlaneSpec("spiral")
    tpl, sds, es = setup
    with pytest.raises(UnknownNameError):
        compute_landscape(tpl, sds, PlaneSpec("pca", models=("A", "B", "Q")), es, use_cache=False)


def test_a_grid_too_large_is_refused_with_its_size_before_allocating(setup, tmp_path):
    # 200,000 points along the longer side: ~4e10 points, far beyond any machine; refused with the size.
    with pytest.raises(ConfigError, match=r"a \d+x200000 grid needs about [0-9.]+ GiB on cpu"):
        _run(setup, tmp_path, grid=GridSpec(resolution=200_000, margin=0.2))
    assert not list(tmp_path.rglob("*.npz"))


def test_models_of_different_shapes_cannot_share_a_plane(setup, tmp_path):
    tpl, sds, es = setup
    torch.manual_seed(5)
    wider = create_model("mlp", classes=TASKS[0], num_classes=10, in_chans=1, img_size=8, width=24).state_dict()
    for kind in ("three_point", "pca"):
        with pytest.raises(ShapeMismatchError, match=r"models 'A' and 'M' cannot share a plane: tensor '[^']+' has "
                                                     r"shape \(16, 64\) in 'A' and \(24, 64\) in 'M'"):
            compute_landscape(tpl, {**sds, "M": wider}, PlaneSpec(kind), es, use_cache=False)
    with pytest.raises(ShapeMismatchError, match=r"model 2 tensor .* has shape \(24, 64\), expected \(16, 64\)"):
        three_point(sds["A"], sds["B"], wider, names=trainable_names(tpl))


def test_pca_and_random_planes_run(setup, tmp_path):
    tpl, sds, es = setup
    r = compute_landscape(tpl, sds, PlaneSpec("pca"), es, grid=GridSpec(4, 0.1), use_cache=False)
    assert r.complete and len(r.settings["plane_info"]["explained_variance"]) == 2
    r = compute_landscape(tpl, sds, PlaneSpec("random", models=("M",), seed=3), es, grid=GridSpec(3, 0.1),
                          use_cache=False)
    n1 = r.settings["plane_info"]["direction_norms"][0]
    assert r.xs[0] == pytest.approx(-n1) and r.xs[-1] == pytest.approx(n1)


def test_barrier_along_segment_and_polyline(setup):
    tpl, sds, es = setup
    assert interpolation_barrier(np.array([1.0, 3.0, 2.0]), np.array([0.0, 0.5, 1.0])) == pytest.approx(1.5)
    seg = evaluate_path(tpl, [sds["A"], sds["B"]], es, labels=["A", "B"], steps=5)
    assert seg.t[0] == 0 and seg.t[-1] == 1 and len(seg.t) == 5
    b = seg.barriers()
    manual = np.max(seg.mean_loss - ((1 - seg.t) * seg.mean_loss[0] + seg.t * seg.mean_loss[-1]))
    assert b["mean"] == pytest.approx(manual) and b["mean"] >= 0
    poly = evaluate_path(tpl, [sds["A"], sds["M"], sds["B"]], es, labels=["A", "M", "B"], steps=4)
    assert len(poly.t) == 7 and poly.vertex_t[0] == 0 and poly.vertex_t[-1] == pytest.approx(1)
    # the polyline's first vertex and last vertex agree with the straight segment's ends
    np.testing.assert_allclose(poly.task_loss[[0, -1]], seg.task_loss[[0, -1]], rtol=1e-5)
