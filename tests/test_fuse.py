"""transform_state_dict, fuse and reset_bn_stats_ on tiny models."""
import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call
from unit_helpers import inputs, make, random_perms, rel_err

from mudsc.diffinit.fuse import apply_along_axis, fuse, is_cluster_map, reset_bn_stats_, transform_state_dict
from mudsc.diffinit.solvers import greedy_zip
from mudsc.errors import CheckpointError, ConfigError, DataError, ShapeMismatchError, UnknownNameError
from mudsc.models import create_model
from mudsc.unitgraph import trace


class _Match:
    """Stand-in for mudsc.solvers.match.Match: only .parts() is used."""

    def __init__(self, parts):
        self._parts = parts

    def parts(self):
        return self._parts


def _self_merge(graph, n_parents, dtype=torch.float64):
    """Every parent contributes 1/N of each merged unit; unmerge copies it back."""
    out = {}
    for s in graph.spaces:
        eye = torch.eye(s.size, dtype=dtype)
        out[s.name] = _Match([(eye / n_parents, eye) for _ in range(n_parents)])
    return out


@pytest.mark.parametrize("arch,kw", [("resnet20", {"width": 1}), ("mlp", {"width": 8, "norm": "bn"})])
def test_fusing_a_model_with_itself_is_the_identity(arch, kw):
    m = make(arch, "own", **kw)
    g = trace(m)
    sd = m.state_dict()
    out = fuse([sd, sd, sd], g, _self_merge(g, 3))
    assert set(out) == set(sd)
    for k in sd:
        assert torch.allclose(out[k], sd[k].to(out[k].dtype), rtol=1e-12, atol=1e-12), k


def test_fuse_aligns_then_averages():
    a, b = make("resnet20", "own", seed=0), make("resnet20", "own", seed=5)
    g = trace(a)
    perms = random_perms(g, torch.Generator().manual_seed(3))
    # B permuted by P: merged = (A + P B) / 2 on producers, unmerge [I; P^T]
    matches = {name: _Match([(torch.eye(p.shape[0], dtype=p.dtype) / 2, torch.eye(p.shape[0], dtype=p.dtype)),
                             (p / 2, p.T)]) for name, (p, _) in perms.items()}
    out = fuse([a.state_dict(), b.state_dict()], g, matches)
    b_moved = transform_state_dict(b.state_dict(), g, perms)
    for k, v in a.state_dict().items():
        expect = v if not v.is_floating_point() else (v + b_moved[k]) / 2
        assert torch.allclose(out[k], expect, atol=1e-12), k
    assert torch.equal(out["body.bn1.num_batches_tracked"], a.state_dict()["body.bn1.num_batches_tracked"])


def test_zipping_duplicate_units_is_exact():
    """Two hidden units with identical incoming weights merge into one without changing the function
    (M averages their rows, U sums their outgoing columns): a check of the zip maps on non-square M."""
    m = make("mlp", "own", width=6, depth=2)
    g = trace(m)
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    first = g.spaces[0]
    w, b = (r.param for r in first.producers)
    sd[w][1], sd[b][1] = sd[w][0], sd[b][0]
    m.load_state_dict(sd)
    merge = torch.zeros(5, 6, dtype=torch.float64)
    merge[0, :2] = 0.5
    merge[torch.arange(1, 5), torch.arange(2, 6)] = 1
    unmerge = (merge > 0).double().T
    small = transform_state_dict(sd, g, {first.name: (merge, unmerge)})
    assert small[w].shape == (5, sd[w].shape[1]) and small[first.consumers[0].param].shape[1] == 5
    x = inputs()
    assert rel_err(functional_call(m, small, (x,)), m(x)) < 1e-12


def test_transform_respects_repeat_and_start():
    # a tensor axis holding two spaces side by side, the second one repeated twice per unit
    from mudsc.unitgraph import AxisRef, Tap, UnitGraph, UnitSpace

    refs = lambda start, rep: (AxisRef("w", 1, "in", start, rep),)  # noqa: E731
    g = UnitGraph(spaces=(UnitSpace("a", 2, (), refs(0, 1), (Tap("n", 1),), 0),
                          UnitSpace("b", 3, (), refs(2, 2), (Tap("n", 1),), 1)), cuts=())
    w = torch.arange(8.0).reshape(1, 8)
    swap = torch.tensor([[0.0, 1], [1, 0]])
    cyc = torch.eye(3)[[2, 0, 1]]
    out = transform_state_dict({"w": w}, g, {"a": (swap, swap.T), "b": (cyc, cyc.T)})
    assert out["w"].tolist() == [[1, 0, 6, 7, 2, 3, 4, 5]]


def test_bad_maps_and_state_dicts_raise():
    m = make("mlp", "own", width=6, depth=2)
    g = trace(m)
    sd = m.state_dict()
    name = g.spaces[0].name
    with pytest.raises(ShapeMismatchError, match=name):
        transform_state_dict(sd, g, {name: (torch.eye(5), torch.eye(5))})
    with pytest.raises(UnknownNameError):
        transform_state_dict(sd, g, {"nope": (torch.eye(6), torch.eye(6))})
    with pytest.raises(CheckpointError):
        transform_state_dict({k: v for k, v in sd.items() if "layers.1" not in k}, g, {})
    other = make("mlp", "own", width=7, depth=2).state_dict()
    with pytest.raises(ShapeMismatchError):
        fuse([sd, other], g, {})
    with pytest.raises(ConfigError, match="parents"):
        fuse([sd, sd], g, _self_merge(g, 3))


def test_reset_bn_stats_recomputes_plain_averages():
    m = make("resnet20", "own")
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.momentum = 0.3
    batches = [inputs(4, seed=s) for s in range(3)]
    seen = []
    m.body.conv1.register_forward_hook(lambda mod, a, out: seen.append(out.detach()))
    reset_bn_stats_(m, [(x, torch.zeros(4)) for x in batches])
    conv_out = torch.cat(seen)
    assert torch.allclose(m.body.bn1.running_mean, conv_out.mean((0, 2, 3)), atol=1e-10)
    assert not m.training and not m.body.bn1.training
    assert m.body.bn1.momentum == 0.3
    assert m.body.bn1.num_batches_tracked.item() == 3
    with pytest.raises(DataError):
        reset_bn_stats_(m, [])


def test_reset_without_batchnorm_is_a_no_op():
    m = make("resnet20gn", "own")
    before = copy.deepcopy(m.state_dict())
    reset_bn_stats_(m, [])
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("arch,kw", [("resnet20", {"width": 1}),
                                     ("timm:vit_tiny_patch16_224", {"patch_size": 7, "depth": 2, "num_heads": 3})])
def test_on_cuda(arch, kw):
    from mudsc.unitgraph import observed, split

    dev = torch.device("cuda")
    m = make(arch, "own", **kw).float().to(dev)
    g = trace(m)
    x = inputs().float().to(dev)
    y = m(x)
    maps = {k: (p.float(), u.float()) for k, (p, u) in random_perms(g, torch.Generator().manual_seed(0)).items()}
    moved = copy.deepcopy(m)
    moved.load_state_dict(transform_state_dict(m.state_dict(), g, maps))
    assert rel_err(moved(x), y) < 1e-5
    out, acts = observed(m, g)(x)
    assert torch.allclose(out, y) and all(a.is_cuda for v in acts.values() for a in v)
    trunk, head = split(m, g, g.cuts[0].name)
    assert torch.allclose(head(trunk(x)), y)
    fused = fuse([m.state_dict(), m.state_dict()], g, _self_merge(g, 2, dtype=torch.float32))
    assert all(torch.allclose(fused[k].float(), v.float(), atol=1e-6) for k, v in m.state_dict().items())
    reset_bn_stats_(m, [inputs(4, seed=s).float() for s in range(2)])
    assert all(p.is_cuda for p in m.state_dict().values())


def test_cluster_maps_fuse_by_scatter_as_the_dense_product_and_other_maps_stay_dense():
    """A zip's maps go through pool_units; the fused tensors equal the dense M W U product to float32
    rounding. A soft map (not one cluster per unit) is not a cluster map and keeps the dense route."""
    torch.manual_seed(0)
    model = create_model("resnet20", classes=(0, 1), num_classes=10, in_chans=1, img_size=8, width=1)
    graph, sd = trace(model), model.state_dict()
    g = torch.Generator().manual_seed(1)
    maps = {}
    for s in graph.spaces:
        z = torch.randn(2 * s.size, 8, generator=g)
        maps[s.name] = greedy_zip(torch.corrcoef(z), (s.size, s.size), a=0.5, b=1.0).parts()[1]
    assert all(is_cluster_map(m, u) for m, u in maps.values())
    got = transform_state_dict(sd, graph, maps)
    changed = 0
    for key in sd:
        want = sd[key]
        for s in graph.spaces:
            m, u = maps[s.name]
            pieces: dict[int, list] = {}
            for r in s.refs:
                if r.param == key:
                    pieces.setdefault(r.axis, []).append((r.start, s.size, r.repeat, u.T if r.role == "in" else m))
            for axis, ps in pieces.items():
                want = apply_along_axis(want, axis, ps)
        assert torch.allclose(got[key], want, atol=1e-6), key
        changed += not torch.equal(got[key], sd[key])
    assert changed >= len(graph.spaces)  # every space moves at least its producers
    m, u = next(iter(maps.values()))
    assert not is_cluster_map(m + 0.01, u) and not is_cluster_map(m, 0.5 * u)
