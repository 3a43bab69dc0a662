"""Same-init merging methods on state dicts: identities, options, reports and bad input."""
import dataclasses
import json

import pytest
import torch
from torch import nn

from mudsc.errors import CheckpointError, ConfigError, ShapeMismatchError, UnknownNameError
from mudsc.models import create_model
from mudsc.models.heads import Classifier, OwnHead
from mudsc.sameinit.arithmetic import ties_merge
from mudsc.sameinit.config import SameInitConfig
from mudsc.sameinit.merge import METHODS, merge_same_init
from mudsc.sameinit.taskstats import compute_stats

CLASSES = ((0, 1, 2), (3, 4, 5))
BUFFERS = ("running_mean", "running_var")


def _model(arch: str, classes, seed: int):
    torch.manual_seed(seed)
    if arch == "mlp":
        return create_model("mlp", classes=classes, num_classes=6, head="own", in_chans=1, img_size=4, feat_dim=6,
                            depth=2, width=8, norm="bn")
    body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 5, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(5, 6))
    return Classifier(body, OwnHead(6, classes))


def _zoo(arch: str = "mlp", n: int = 2):
    """A base and `n` task models: the base's body plus seeded noise, each with its own head."""
    base = _model(arch, CLASSES[0], 0)
    g = torch.Generator().manual_seed(1)
    models, stats = [], []
    for i in range(n):
        m = _model(arch, CLASSES[i], 10 + i)
        sd = base.state_dict()
        for k, v in m.state_dict().items():
            if k.startswith("body.") and v.is_floating_point():
                sd[k] = sd[k] + 0.1 * torch.randn(v.shape, generator=g)
            elif k.startswith("head."):
                sd[k] = v
        m.load_state_dict(sd)
        x = torch.randn(48, 1, 4, 4, generator=g)
        y = torch.tensor(CLASSES[i])[torch.randint(3, (48,), generator=g)]
        stats.append(compute_stats(m, [(x[:24], y[:24]), (x[24:], y[24:])], generator=torch.Generator().manual_seed(i),
                                   device="cpu"))
        models.append(m.state_dict())
    buffers = [k for k in base.state_dict() if k.endswith(BUFFERS)]
    return base.state_dict(), models, stats, buffers


@pytest.fixture(scope="module")
def zoo():
    return _zoo()


CONFIGS = [
    dict(method="average"), dict(method="task-arithmetic", lam=1.0), dict(method="ties", ties_density=1.0),
    dict(method="fisher"), dict(method="regmean"), dict(method="regmean", alpha=0.3),
    dict(method="mats"), dict(method="mats", objective="regmean"), dict(method="mats", objective="fisher"),
    dict(method="mats", objective="identity"), dict(method="mats", init="task-arithmetic", lam=1.0),
]


@pytest.mark.parametrize("options", CONFIGS, ids=lambda o: "-".join(map(str, o.values())))
def test_one_model_returns_itself(zoo, options):
    base, models, stats, buffers = zoo
    merged, report = merge_same_init(base, models[:1], stats[:1], config=SameInitConfig(**options),
                                     buffers=buffers, device="cpu")
    for k, v in models[0].items():
        if k.startswith("body."):
            torch.testing.assert_close(merged[k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert all(r.residual is None or r.residual < 1e-5 for r in report.layers)


def test_every_method_is_covered():
    assert {o["method"] for o in CONFIGS} == set(METHODS)


def test_identity_objective_gives_the_mean(zoo):
    base, models, stats, buffers = zoo
    mean, _ = merge_same_init(base, models, config=SameInitConfig(method="average"), device="cpu")
    cg, report = merge_same_init(base, models, config=SameInitConfig(method="mats", objective="identity", init="zeros"),
                                 device="cpu")
    for k in mean:
        torch.testing.assert_close(cg[k], mean[k])
    assert all(r.how == "cg" for r in report.layers if "running" not in r.keys[0] and "num_batches" not in r.keys[0])


def test_heads_stay_with_the_base_and_report_lists_keys(zoo):
    base, models, stats, buffers = zoo
    merged, report = merge_same_init(base, models, stats, config=SameInitConfig(method="regmean"), buffers=buffers,
                                     device="cpu")
    assert set(merged) == set(base)
    assert {k for k in report.merged} == {k for k in base if k.startswith("body.") and base[k].is_floating_point()}
    assert "head.fc.weight" in report.from_base and torch.equal(merged["head.fc.weight"], base["head.fc.weight"])
    solved = [r for r in report.layers if r.how == "closed-form"]
    assert ("body.layers.1.weight", "body.layers.1.bias") in [r.keys for r in solved]
    assert len(solved) == 3  # three linear layers in the body, BatchNorm averaged
    json.dumps(report.to_dict())


def test_mats_regmean_objective_converges_to_closed_form(zoo):
    base, models, stats, buffers = zoo
    closed, _ = merge_same_init(base, models, stats, config=SameInitConfig(method="regmean"), device="cpu")
    cg, report = merge_same_init(base, models, stats, config=SameInitConfig(method="mats", objective="regmean",
                                                                         iterations=500, tol=1e-12), device="cpu")
    for k in report.merged:
        torch.testing.assert_close(cg[k], closed[k], rtol=1e-4, atol=1e-5)


def test_kfac_with_identity_gradient_factors_equals_regmean(zoo):
    base, models, stats, buffers = zoo
    flat = [dataclasses.replace(s, grad={k: 2.0 * torch.eye(len(v), dtype=v.dtype) for k, v in s.grad.items()})
            for s in stats]
    kfac, _ = merge_same_init(base, models, flat, config=SameInitConfig(method="mats", iterations=500, tol=1e-12),
                              device="cpu")
    regmean, _ = merge_same_init(base, models, stats, config=SameInitConfig(method="regmean"), device="cpu")
    for k in base:
        torch.testing.assert_close(kfac[k], regmean[k], rtol=1e-4, atol=1e-5)


def test_kfac_solution_differs_from_regmean_and_reports_residuals(zoo):
    base, models, stats, buffers = zoo
    kfac, report = merge_same_init(base, models, stats, config=SameInitConfig(method="mats", iterations=300,
                                                                           tol=1e-10), device="cpu")
    regmean, _ = merge_same_init(base, models, stats, config=SameInitConfig(method="regmean"), device="cpu")
    cg = [r for r in report.layers if r.how == "cg"]
    assert len(cg) == 3 and all(r.residual < 1e-8 and r.iterations > 0 for r in cg)
    assert not torch.allclose(kfac["body.layers.1.weight"], regmean["body.layers.1.weight"], atol=1e-4)


def test_unsolved_base_and_buffers(zoo):
    base, models, stats, buffers = zoo
    merged, report = merge_same_init(base, models, stats, config=SameInitConfig(method="regmean", unsolved="base"),
                                     buffers=buffers, device="cpu")
    bn = "body.layers.2.weight"  # BatchNorm1d scale: no Gram, so kept from the base
    assert torch.equal(merged[bn], base[bn]) and bn in report.from_base
    ta, _ = merge_same_init(base, models, config=SameInitConfig(method="task-arithmetic", lam=1.0),
                            buffers=buffers, device="cpu")
    k = "body.layers.2.running_var"
    torch.testing.assert_close(ta[k], (models[0][k] + models[1][k]) / 2)
    w = "body.layers.1.weight"
    torch.testing.assert_close(ta[w], base[w] + sum(m[w] - base[w] for m in models))


def test_given_initialisation_is_kept_with_zero_iterations(zoo):
    base, models, stats, buffers = zoo
    start = {k: v + 1.0 if v.is_floating_point() else v for k, v in base.items()}
    merged, report = merge_same_init(base, models, stats, init=start,
                                     config=SameInitConfig(method="mats", iterations=0), device="cpu")
    torch.testing.assert_close(merged["body.layers.1.weight"], start["body.layers.1.weight"])
    torch.testing.assert_close(merged["body.layers.1.bias"], start["body.layers.1.bias"])


def test_conv_model_merges():
    base, models, stats, _ = _zoo("conv")
    closed, _ = merge_same_init(base, models, stats, config=SameInitConfig(method="regmean"), device="cpu")
    cg, report = merge_same_init(base, models, stats, config=SameInitConfig(method="mats", objective="regmean",
                                                                         iterations=1000, tol=1e-12), device="cpu")
    convs = [r.keys for r in report.layers if r.how == "cg"]
    assert convs == [("body.0.weight",), ("body.3.weight", "body.3.bias"), ("body.7.weight", "body.7.bias")]
    assert all(r.residual < 1e-8 for r in report.layers if r.how == "cg")
    for k in report.merged:
        torch.testing.assert_close(cg[k], closed[k], rtol=1e-3, atol=1e-4)


def test_ties_on_hand_made_vectors():
    tv = torch.tensor([[1.0, -2.0, 0.5, 0.0],
                       [3.0, 1.5, -0.1, -1.0],
                       [-2.0, 1.0, 0.2, -4.0]])
    # keep 2 of 4 per row: [1,-2,0,0], [3,1.5,0,0], [-2,0,0,-4]; sum [2,-.5,0,-4] elects [+,-,0,-]
    torch.testing.assert_close(ties_merge(tv, density=0.5), torch.tensor([2.0, -2.0, 0.0, -4.0]))
    # nothing trimmed: sums [2, .5, .6, -5]; entries of the other sign are dropped
    torch.testing.assert_close(ties_merge(tv, density=1.0), torch.tensor([2.0, 1.25, 0.35, -2.5]))


def test_ties_trims_over_the_whole_body():
    base = {"body.a": torch.zeros(2), "body.b": torch.zeros(2), "head.w": torch.zeros(1)}
    ft = [{"body.a": torch.tensor([1.0, 0.1]), "body.b": torch.tensor([0.2, -3.0]), "head.w": torch.ones(1)},
          {"body.a": torch.tensor([0.5, 0.0]), "body.b": torch.tensor([-0.4, 2.0]), "head.w": torch.ones(1)}]
    merged, _ = merge_same_init(base, ft, config=SameInitConfig(method="ties", ties_density=0.5, ties_lambda=2.0),
                                device="cpu")
    # top-2 of [1, .1, .2, -3] and of [.5, 0, -.4, 2] -> [1, 0, 0, -3], [.5, 0, 0, 2]; sum [1.5, 0, 0, -1]
    torch.testing.assert_close(merged["body.a"], torch.tensor([1.5, 0.0]))
    torch.testing.assert_close(merged["body.b"], torch.tensor([0.0, -6.0]))
    assert torch.equal(merged["head.w"], base["head.w"])


def test_config_round_trips_through_json():
    cfg = SameInitConfig(method="mats", objective="fisher", alpha=0.5, iterations=10)
    assert SameInitConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="unknown same-init options"):
        SameInitConfig.from_dict({"method": "mats", "lamda": 0.1})
    with pytest.raises(UnknownNameError, match="unknown method 'soup'"):
        SameInitConfig(method="soup")
    with pytest.raises(ConfigError, match="alpha"):
        SameInitConfig(alpha=2.0)


def test_bad_state_dicts(zoo):
    base, models, stats, _ = zoo
    cfg = SameInitConfig(method="average")
    short = {k: v for k, v in models[1].items() if k != "body.layers.1.bias"}
    with pytest.raises(CheckpointError, match="fine-tuned model 1 lacks key 'body.layers.1.bias'"):
        merge_same_init(base, [models[0], short], config=cfg)
    extra = {**models[0], "body.extra": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="fine-tuned model 0 has key 'body.extra'"):
        merge_same_init(base, [extra], config=cfg)
    wide = {**models[1], "body.layers.1.weight": torch.zeros(9, 16)}
    with pytest.raises(ShapeMismatchError, match=r"'body.layers.1.weight': fine-tuned model 1 has shape \(9, 16\)"):
        merge_same_init(base, [models[0], wide], config=cfg)
    with pytest.raises(ConfigError, match="at least one"):
        merge_same_init(base, [], config=cfg)


def test_bad_statistics(zoo):
    base, models, stats, _ = zoo
    cfg = SameInitConfig(method="mats")
    with pytest.raises(ConfigError, match="statistics for each of the 2"):
        merge_same_init(base, models, stats[:1], config=cfg)
    with pytest.raises(ConfigError, match="statistics for each of the 2"):
        merge_same_init(base, models, None, config=SameInitConfig(method="fisher"))
    gram = {k: v for k, v in stats[1].gram.items() if k != "body.layers.4.weight"}
    with pytest.raises(CheckpointError, match="statistics of task 1 lack the input Gram of 'body.layers.4.weight'"):
        merge_same_init(base, models, [stats[0], dataclasses.replace(stats[1], gram=gram)], config=cfg)
    grad = {k: v for k, v in stats[0].grad.items() if k != "body.layers.1.weight"}
    with pytest.raises(CheckpointError, match="task 0 lack the output-gradient factor of 'body.layers.1.weight'"):
        merge_same_init(base, models, [dataclasses.replace(stats[0], grad=grad), stats[1]], config=cfg)
    bad = {**stats[1].gram, "body.layers.1.weight": torch.eye(3, dtype=torch.float64)}
    with pytest.raises(ShapeMismatchError, match=r"gram of 'body.layers.1.weight' has shape \(3, 3\)"):
        merge_same_init(base, models, [stats[0], dataclasses.replace(stats[1], gram=bad)], config=cfg)
    none = [dataclasses.replace(s, fisher={}) for s in stats]
    with pytest.raises(CheckpointError, match="no diagonal Fisher"):
        merge_same_init(base, models, none, config=SameInitConfig(method="fisher"))


def test_heads_may_differ_between_tasks(zoo):
    base, models, stats, buffers = zoo
    wide = {**models[1], "head.fc.weight": torch.zeros(5, 6), "head.fc.bias": torch.zeros(5)}
    merged, report = merge_same_init(base, [models[0], wide], stats, config=SameInitConfig(method="mats"),
                                     device="cpu")
    assert merged["head.fc.weight"].shape == base["head.fc.weight"].shape
    assert not any(k.startswith("head.") for k in report.merged)
