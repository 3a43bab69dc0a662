"""Grid evaluation: vmap equals the per-point loop, exact BN equals a manual reset, preview is labelled."""
import copy

import pytest
import torch

from landscape import grid
from landscape.evaluate import make_eval_set
from landscape.grid import BN_LABELS, PointEvaluator, evaluate_coords, native_bf16, progressive_order
from landscape.plane import three_point, trainable_names
from mudsc.data import load_dataset
from mudsc.errors import ConfigError
from mudsc.evaluate import TaskLayout, metric_means
from mudsc.models import create_model

TASKS = [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9)]


@pytest.fixture(scope="module")
def eval_set():
    return make_eval_set(load_dataset("digits"), TASKS, per_task=10, calib_size=32, batch_size=16,
                         calib_batch_size=16, generator=torch.Generator().manual_seed(0))


def _three(arch, **kw):
    sds = []
    for i in range(3):
        torch.manual_seed(10 + i)
        m = create_model(arch, classes=TASKS[0], num_classes=10, in_chans=1, img_size=8, **kw)
        sds.append(m.state_dict())
    return m, sds


COORDS = torch.tensor([[0.0, 0.0], [0.5, 0.3], [-0.2, 1.1]], dtype=torch.float64)


def _means(ev, coords, method, chunk):
    got = {}
    evaluate_coords(ev, coords, method=method, chunk_size=chunk,
                    on_chunk=lambda idx, m: [got.setdefault(k, []).append(v) for k, v in m.items()])
    return {k: torch.cat(v) for k, v in got.items()}


@pytest.mark.parametrize("arch,kw,bn_mode", [("mlp", dict(width=16), "exact"),
                                             ("resnet20", dict(width=1), "exact"),
                                             ("resnet20", dict(width=1), "preview")])
def test_vmap_matches_loop(eval_set, arch, kw, bn_mode):
    tpl, (a, b, c) = _three(arch, **kw)
    pl = three_point(a, b, c, names=trainable_names(tpl))
    coords = COORDS * pl.info["axis_lengths"][0]
    ev = PointEvaluator(tpl, pl, eval_set, bn_mode=bn_mode, autocast=False)
    v = _means(ev, coords, "vmap", 2)
    loop = _means(ev, coords, "loop", 3)
    for k in v:
        assert v[k].shape == loop[k].shape
        assert torch.allclose(v[k], loop[k], atol=1e-5, rtol=1e-5), k
    assert v["task_loss"].shape == (len(coords), 2)


def test_exact_bn_equals_manual_reset_at_a_grid_point(eval_set):
    tpl, (a, b, c) = _three("resnet20", width=1)
    pl = three_point(a, b, c, names=trainable_names(tpl))
    coords = torch.tensor([[0.4 * pl.info["axis_lengths"][0], 0.6 * pl.info["axis_lengths"][1]]],
                          dtype=torch.float64)
    ev = PointEvaluator(tpl, pl, eval_set, bn_mode="exact", autocast=False)
    got = _means(ev, coords, "vmap", 4)
    # Reference: load the point into a real module, reset BN with momentum=None, one pass, eval.
    m = copy.deepcopy(tpl)
    m.load_state_dict(pl.point(coords[0]))
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.reset_running_stats()
            mod.momentum = None
    m.train()
    with torch.no_grad():
        for x in eval_set.calib_batches():
            m(x)
        m.eval()
        logits = torch.cat([m(x) for x, _ in eval_set.batches()])
    ref = metric_means(logits, eval_set.y, TaskLayout.from_outputs(TASKS, tpl.output_classes))
    for k in ref:
        assert torch.allclose(got[k][0], ref[k].double(), atol=1e-5, rtol=1e-5), k


def test_preview_differs_from_exact_and_is_labelled(eval_set):
    tpl, (a, b, c) = _three("resnet20", width=1)
    pl = three_point(a, b, c, names=trainable_names(tpl))
    coords = torch.tensor([[0.5 * pl.info["axis_lengths"][0], 0.5 * pl.info["axis_lengths"][1]]])
    exact = _means(PointEvaluator(tpl, pl, eval_set, bn_mode="exact"), coords, "vmap", 1)
    prev = _means(PointEvaluator(tpl, pl, eval_set, bn_mode="preview"), coords, "vmap", 1)
    assert not torch.allclose(exact["joint_loss"], prev["joint_loss"], atol=1e-3)
    assert BN_LABELS["preview"] == "preview (frozen BN statistics)" and BN_LABELS["exact"] == "exact"
    with pytest.raises(ConfigError):
        PointEvaluator(tpl, pl, eval_set, bn_mode="frozen")


def test_auto_method_and_precision_follow_the_hardware(eval_set):
    for arch, kw in [("mlp", dict(width=16)), ("resnet20", dict(width=1))]:
        tpl, (a, b, c) = _three(arch, **kw)
        ev = PointEvaluator(tpl, three_point(a, b, c, names=trainable_names(tpl)), eval_set)
        assert ev.default_method() == ("loop" if arch == "resnet20" else "vmap")  # eval_set is on the CPU
        assert ev.autocast == native_bf16("cpu")
        assert ev.precision == ("bf16-autocast" if ev.autocast else "float32")
    with pytest.raises(ConfigError, match="unknown grid method"):
        evaluate_coords(ev, COORDS, method="scan")


@pytest.mark.skipif(not native_bf16("cpu"), reason="this CPU has no native bf16")
def test_cpu_bf16_is_close_to_float32(eval_set):
    tpl, (a, b, c) = _three("resnet20", width=1)
    pl = three_point(a, b, c, names=trainable_names(tpl))
    coords = COORDS * pl.info["axis_lengths"][0]
    fp32 = _means(PointEvaluator(tpl, pl, eval_set, autocast=False), coords, "loop", 3)
    bf16 = _means(PointEvaluator(tpl, pl, eval_set, autocast=True), coords, "loop", 3)
    assert not torch.equal(bf16["task_loss"], fp32["task_loss"])  # it did run in bf16
    assert torch.allclose(bf16["task_loss"], fp32["task_loss"], atol=0.05, rtol=0.05)


def test_memory_estimate_scales_and_refuses_what_does_not_fit(eval_set, monkeypatch):
    tpl, (a, b, c) = _three("resnet20", width=1)
    ev = PointEvaluator(tpl, three_point(a, b, c, names=trainable_names(tpl)), eval_set, autocast=False)
    one = ev.memory_needed(100, method="vmap", chunk_size=1)
    eight = ev.memory_needed(100, method="vmap", chunk_size=8)
    assert eight["activations"] == 8 * one["activations"] > 0 and eight["weights"] == 8 * one["weights"]
    assert ev.memory_needed(100, method="loop", chunk_size=8)["activations"] == one["activations"]
    assert ev.memory_needed(200, method="loop", chunk_size=8)["grid"] == 2 * one["grid"]
    ev.check_memory(441, method="vmap", chunk_size=16, grid_shape=(21, 21))  # fits: no error
    monkeypatch.setattr(grid, "available_memory", lambda device: 2 ** 20)
    with pytest.raises(ConfigError, match=r"a 21x21 grid needs about [0-9.]+ GiB on cpu .* only 0.0 GiB is free"):
        ev.check_memory(441, method="vmap", chunk_size=16, grid_shape=(21, 21))


def test_progressive_order_is_coarse_first_permutation():
    order = progressive_order(9, 7)
    assert sorted(order.tolist()) == list(range(63))
    coarse = [(i // 7, i % 7) for i in order[:6].tolist()]
    assert all(r % 4 == 0 and c % 4 == 0 for r, c in coarse)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_vmap_matches_loop_and_bf16_is_close():
    es = make_eval_set(load_dataset("digits"), TASKS, per_task=10, calib_size=32, batch_size=16,
                       calib_batch_size=16, generator=torch.Generator().manual_seed(0), device="cuda")
    tpl, (a, b, c) = _three("resnet20", width=1)
    pl = three_point(a, b, c, names=trainable_names(tpl))
    coords = COORDS * pl.info["axis_lengths"][0]
    fp32 = PointEvaluator(tpl, pl, es, bn_mode="exact", autocast=False)
    v, loop = _means(fp32, coords, "vmap", 3), _means(fp32, coords, "loop", 3)
    for k in v:
        assert torch.allclose(v[k], loop[k], atol=1e-4, rtol=1e-4), k
    bf16 = _means(PointEvaluator(tpl, pl, es, bn_mode="exact"), coords, "vmap", 3)
    assert torch.allclose(bf16["task_loss"], v["task_loss"], atol=0.05, rtol=0.05)
