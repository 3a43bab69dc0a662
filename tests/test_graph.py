"""Unit graphs derived by torch.fx: spaces, taps, cuts, observed and split modules, hand-written specs."""
import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from unit_helpers import ARCHS, inputs, make, random_perms, rel_err

from mudsc.diffinit.fuse import transform_state_dict
from mudsc.errors import ConfigError, UnknownNameError
from mudsc.unitgraph import UnitGraph, observed, split, trace


def _graph(arch, head="shared", **kw):
    m = make(arch, head, **kw)
    return m, trace(m)


@pytest.mark.parametrize("arch,kw", ARCHS, ids=[f"{a}-{'-'.join(str(v) for v in k.values() if not isinstance(v, tuple))}" for a, k in ARCHS])
@pytest.mark.parametrize("head", ["shared", "own"])
def test_random_permutation_of_every_space_keeps_outputs(arch, kw, head):
    m, g = _graph(arch, head, **kw)
    x = inputs()
    y = m(x)
    maps = random_perms(g, torch.Generator().manual_seed(1))
    sd = transform_state_dict(m.state_dict(), g, maps)
    moved = copy.deepcopy(m)
    moved.load_state_dict(sd)
    assert rel_err(moved(x), y) <= 1e-10
    changed = [k for k in sd if not torch.equal(sd[k], m.state_dict()[k])]
    assert len(changed) >= len(g.spaces)
    # the same permutation with one consumer left out must break the function
    s = next(s for s in g.spaces if s.consumers)
    broken = transform_state_dict(m.state_dict(), g, maps)
    broken[s.consumers[0].param] = m.state_dict()[s.consumers[0].param]
    moved.load_state_dict(broken)
    assert rel_err(moved(x), y) > 1e-6
    # the embedding is a space only when a linear head (not the fixed class embeddings) reads it
    assert any(r.param == "head.fc.weight" for s in g.spaces for r in s.consumers) == (head == "own")


@pytest.mark.parametrize("arch,kw", [ARCHS[1], ARCHS[2], ARCHS[4], ARCHS[7]], ids=["mlp-bn", "cnn", "resnet20", "resnet18"])
def test_split_at_every_cut_reproduces_outputs(arch, kw):
    m, g = _graph(arch, "own", **kw)
    x = inputs()
    y = m(x)
    assert g.cuts
    for c in g.cuts:
        trunk, head = split(m, g, c.name)
        t = trunk(x)
        assert t.shape[1] == g.space(c.space).size
        assert torch.equal(head(t), y)
        trunk_keys = set(trunk.state_dict())
        assert trunk_keys == set(c.trunk_params)
        assert not trunk_keys & set(head.state_dict())


def test_split_shares_parameters():
    m, g = _graph("resnet20")
    trunk, head = split(m, g, "layer2")
    with torch.no_grad():
        m.body.conv1.weight.mul_(2)
        m.body.fc.weight.mul_(3)
    x = inputs()
    assert torch.allclose(head(trunk(x)), m(x))


def test_resnet20_spaces_and_cuts():
    m, g = _graph("resnet20")
    names = [s.name for s in g.spaces]
    streams = ["body.layer1", "body.layer2", "body.layer3"]
    internal = [f"body.layer{i}.{j}.conv1" for i in (1, 2, 3) for j in range(3)]
    assert sorted(names) == sorted(streams + internal)
    assert [s.index for s in g.spaces] == list(range(12))
    # ZipIt's order: each stage's internals, then its stream
    assert names.index("body.layer1.2.conv1") < names.index("body.layer1") < names.index("body.layer2.0.conv1")
    # a cut after the stem and after every block; a stage's last block keeps the stage's name
    assert [c.name for c in g.cuts] == ["conv1"] + [f"layer{i}{b}" for i in (1, 2, 3) for b in (".0", ".1", "")]
    assert [c.space for c in g.cuts if c.name in ("layer1", "layer2", "layer3")] == streams
    l1 = g.space("body.layer1")
    produced = {r.param for r in l1.producers}
    assert {"body.conv1.weight", "body.bn1.running_mean", "body.layer1.2.bn2.weight"} <= produced
    assert {r.role for r in l1.producers if r.param.endswith("running_var")} == {"stat"}
    assert "body.layer2.0.shortcut.0.weight" in {r.param for r in l1.consumers}
    assert "body.layer2.0.shortcut.0.weight" in {r.param for r in g.space("body.layer2").producers}
    cut1, cut2 = g.cut("layer1"), g.cut("layer2")
    assert "body.conv1.weight" in cut1.trunk_params and "body.layer2.0.conv1.weight" not in cut1.trunk_params
    assert cut1.merged_spaces == ("body.layer1.0.conv1", "body.layer1.1.conv1", "body.layer1.2.conv1", "body.layer1")
    assert set(cut1.merged_spaces) < set(cut2.merged_spaces) and cut1.trunk_params < cut2.trunk_params


def test_taps_are_what_the_consumers_read():
    m, g = _graph("resnet20")
    seen = {}
    m.body.layer1[0].conv2.register_forward_pre_hook(lambda mod, a: seen.__setitem__("conv2", a[0]))
    m.body.layer2[0].conv1.register_forward_pre_hook(lambda mod, a: seen.__setitem__("next", a[0]))
    m.body.pool.register_forward_pre_hook(lambda mod, a: seen.__setitem__("pool", a[0]))
    x = inputs()
    y, acts = observed(m, g)(x)
    assert torch.equal(y, m(x))
    assert set(acts) == {s.name for s in g.spaces}
    assert torch.equal(acts["body.layer1.0.conv1"][0], seen["conv2"])
    assert torch.equal(acts["body.layer1"][0], seen["next"])
    assert torch.equal(acts["body.layer3"][0], seen["pool"])
    assert (seen["conv2"] >= 0).all()  # post-ReLU


def test_timm_resnet18_spaces():
    _, g = _graph("timm:resnet18")
    names = [s.name for s in g.spaces]
    assert [n for n in names if n.count(".") == 1] == ["body.layer1", "body.layer2", "body.layer3", "body.layer4"]
    assert sum(n.endswith(".conv1") for n in names) == 8 and len(names) == 12
    assert [c.name for c in g.cuts] == ["conv1"] + [f"layer{i}{b}" for i in (1, 2, 3, 4) for b in (".0", "")]


def test_mlp_spaces_and_shared_head_space_is_fixed():
    _, g = _graph("mlp", width=12, depth=3)
    assert [s.size for s in g.spaces] == [12, 12, 12]
    assert [c.space for c in g.cuts] == [s.name for s in g.spaces]
    assert all(r.param != "head.class_embed" for s in g.spaces for r in s.refs)
    out_layer = g.spaces[-1].consumers
    assert [r.param for r in out_layer] == ["body.layers.7.weight"]  # the embedding layer reads the last space


def test_groupnorm_sets_groups():
    _, g = _graph("resnet20gn", width=1, groups=4)
    assert {s.groups for s in g.spaces} == {4}


def test_table_lists_the_space_of_every_axis():
    m, g = _graph("resnet20")
    table = dict(g.table())
    assert set(table) == set(m.state_dict())
    assert table["body.layer1.0.conv2.weight"] == ("body.layer1", "body.layer1.0.conv1", None, None)
    assert table["body.fc.weight"] == (None, "body.layer3")
    assert table["body.layer1.0.bn1.num_batches_tracked"] == ()
    assert table["head.class_embed"] == (None, None)


def test_round_trip_through_json():
    _, g = _graph("resnet20gn")
    back = UnitGraph.from_dict(json.loads(json.dumps(g.to_dict())))
    assert back == g
    assert back.space("body.layer2").groups == 8


def test_unknown_names_list_the_valid_ones():
    _, g = _graph("resnet20")
    with pytest.raises(UnknownNameError, match="layer1.1, layer1, layer2.0"):
        g.cut("layer9")
    with pytest.raises(UnknownNameError, match="body.layer1"):
        g.space("nope")
    with pytest.raises(UnknownNameError):
        split(make("resnet20"), g, "full")


class _Branchy(nn.Module):
    """Channel concat into a conv, a per-channel scale, flatten into a linear, a matmul with a buffer."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(5)
        self.c = nn.Conv2d(5, 4, 3, stride=4)
        self.fc = nn.Linear(4 * 7 * 7, 6)
        self.fc2 = nn.Linear(6, 5)
        self.register_buffer("proj", torch.randn(5, 3))
        self.gamma = nn.Parameter(torch.randn(5))

    def forward(self, x):
        h = F.relu(self.bn(torch.cat([self.a(x), torch.sigmoid(self.b(x))], dim=1)))
        h = h * self.gamma.view(1, -1, 1, 1)
        h = torch.flatten(F.relu(self.c(h)), 1)
        return self.fc2(F.gelu(self.fc(h))) @ self.proj


def test_concat_flatten_and_buffer_matmul():
    torch.manual_seed(0)
    m = _Branchy().double().eval()
    m.bn.running_mean.normal_()
    g = trace(m, example=inputs())
    names = [s.name for s in g.spaces]
    assert names == ["a", "b", "c", "fc"]  # fc2's output meets a fixed buffer: not a space
    c_in = {r.param: r for r in g.space("b").consumers}
    assert c_in["c.weight"].start == 3 and c_in["c.weight"].axis == 1
    assert {(r.param, r.start) for r in g.space("b").producers} >= {("bn.weight", 3), ("bn.running_var", 3),
                                                                    ("gamma", 3)}
    (fc_in,) = g.space("c").consumers
    assert (fc_in.param, fc_in.repeat) == ("fc.weight", 49)
    assert g.space("c").taps[0].dim == 1  # observed before the flatten
    x = inputs()
    sd = transform_state_dict(m.state_dict(), g, random_perms(g, torch.Generator().manual_seed(0)))
    moved = copy.deepcopy(m)
    moved.load_state_dict(sd)
    assert rel_err(moved(x), m(x)) < 1e-12
    y, acts = observed(m, g)(x)
    assert acts["b"][0].shape == (3, 2, 28, 28) and acts["c"][0].shape == (3, 4, 7, 7)


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.l1(x))
        if h.sum() > 0:  # data-dependent control flow: fx cannot trace this
            h = h * 1.0
        return self.l3(torch.relu(self.l2(h)))


def test_hand_written_spec_for_an_untraceable_model():
    m = _Untraceable().double()
    with pytest.raises(ConfigError, match="hand-written spec"):
        trace(m, example=torch.zeros(2, 4))
    spec = {"spaces": [
        {"name": "h1", "size": 8, "producers": [{"param": "l1.weight", "axis": 0, "role": "out"},
                                                {"param": "l1.bias", "axis": 0, "role": "out"}],
         "consumers": [{"param": "l2.weight", "axis": 1, "role": "in"}],
         "taps": [{"node": "l2", "dim": 1, "hook": "input"}]},
        {"name": "h2", "size": 8, "producers": [{"param": "l2.weight", "axis": 0, "role": "out"},
                                                {"param": "l2.bias", "axis": 0, "role": "out"}],
         "consumers": [{"param": "l3.weight", "axis": 1, "role": "in"}],
         "taps": [{"node": "l3", "dim": 1, "hook": "input"}]}]}
    g = UnitGraph.from_dict(spec)
    x = torch.randn(5, 4, dtype=torch.float64)
    moved = copy.deepcopy(m)
    moved.load_state_dict(transform_state_dict(m.state_dict(), g, random_perms(g, torch.Generator().manual_seed(0))))
    assert rel_err(moved(x), m(x)) < 1e-12
    y, acts = observed(m, g)(x)
    assert torch.equal(y, m(x)) and acts["h2"][0].shape == (5, 8) and (acts["h1"][0] >= 0).all()


def test_bad_specs_are_rejected():
    bad = {"spaces": [{"name": "h", "size": 6, "groups": 4, "producers": [], "taps": [{"node": "n", "dim": 1}]}]}
    with pytest.raises(ConfigError, match="groups"):
        UnitGraph.from_dict(bad)
    with pytest.raises(ConfigError, match="malformed"):
        UnitGraph.from_dict({"spaces": [{"name": "h"}]})
    bad = {"spaces": [{"name": "h", "size": 6, "producers": [{"param": "w", "axis": 0, "role": "sideways"}],
                       "taps": [{"node": "n", "dim": 1}]}]}
    with pytest.raises(ConfigError, match="role"):
        UnitGraph.from_dict(bad)
    bad = {"spaces": [{"name": "h", "size": 6, "groups": 2, "rigid": "yes", "producers": [],
                       "taps": [{"node": "n", "dim": 1}]}]}
    with pytest.raises(ConfigError, match="rigid"):
        UnitGraph.from_dict(bad)


def test_unknown_module_fixes_the_spaces_it_touches():
    class Odd(nn.Module):
        def forward(self, x):
            return x.flip(1)

    m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), Odd(), nn.Linear(6, 2)).double()
    g = trace(m, leaf_modules=(Odd,), example=torch.zeros(2, 4))
    assert [s.name for s in g.spaces] == ["0"]


def test_timm_resnet26_default_widths():
    _, g = _graph("timm:resnet26")
    names = [s.name for s in g.spaces]
    # stem (its own space: layer1 opens with a projection), 4 stage streams, 2 per bottleneck x 8
    assert names[0] == "body.conv1" and len(names) == 21
    assert g.space("body.layer4").size == 2048
    assert [c.name for c in g.cuts] == ["conv1"] + [f"layer{i}{b}" for i in (1, 2, 3, 4) for b in (".0", "")]


def test_vit_attention_spaces():
    m, g = _graph("timm:vit_tiny_patch16_224", "own", patch_size=7, depth=2, num_heads=3, embed_dim=24)
    names = [s.name for s in g.spaces]
    assert names == ["body.blocks.0.attn.qk", "body.blocks.0.attn.v", "body.blocks.0.mlp.fc1",
                     "body.blocks.1.attn.qk", "body.blocks.1.attn.v", "body.blocks.1.mlp.fc1", "body", "body.head"]
    qk, v, stream = g.space("body.blocks.0.attn.qk"), g.space("body.blocks.0.attn.v"), g.space("body")
    assert (qk.groups, v.groups, stream.groups) == (3, 3, 1) and qk.group_tie == v.group_tie != ""
    assert {(r.param, r.start) for r in qk.producers} == {
        (f"body.blocks.0.attn.qkv.{p}", s) for p in ("weight", "bias") for s in (0, 24)}
    assert [r.start for r in v.producers] == [48, 48] and v.consumers[0].param == "body.blocks.0.attn.proj.weight"
    assert {(r.param, r.axis) for r in stream.producers} >= {("body.cls_token", 2), ("body.pos_embed", 2)}
    assert [t.start for t in qk.taps] == [0, 24] and stream.taps[0].dim == -1
    x = inputs()
    y, acts = observed(m, g)(x)
    assert [a.shape for a in acts[qk.name]] == [(3, 17, 24)] * 2
    q, k, _ = m.body.blocks[0].attn.qkv(m.body.blocks[0].norm1(m.body.pos_drop(
        m.body._pos_embed(m.body.patch_embed(x))))).chunk(3, dim=-1)
    assert torch.allclose(acts[qk.name][1], k)
    trunk, head = split(m, g, g.cuts[0].name)
    assert torch.equal(head(trunk(x)), y)
    # heads of q/k and v must move together: untied head orders change the function
    maps = random_perms(g, torch.Generator().manual_seed(0))
    swap = torch.eye(24, dtype=torch.float64)[torch.cat([torch.arange(8, 16), torch.arange(8), torch.arange(16, 24)])]
    maps[v.name] = (swap, swap.T)
    maps[qk.name] = (torch.eye(24, dtype=torch.float64),) * 2
    moved = copy.deepcopy(m)
    moved.load_state_dict(transform_state_dict(m.state_dict(), g, maps))
    assert rel_err(moved(x), y) > 1e-6


def test_default_leaves_and_hashable_graphs():
    from mudsc.unitgraph import default_leaves

    DEFAULT_LEAVES = default_leaves()
    from timm.layers import BatchNormAct2d, DropPath

    assert {BatchNormAct2d, DropPath} <= set(DEFAULT_LEAVES)
    m, g = _graph("timm:resnet18", channels=(8, 16, 32, 64), stem_width=8, drop_path_rate=0.1)
    assert "timm.layers.drop.DropPath" in g.leaves
    assert hash(g) == hash(UnitGraph.from_dict(g.to_dict()))
    # leaf blocks are opaque: every space enters or leaves one, so none is left
    assert trace(m, leaf_modules=(type(m.body.layer2[0]),)).spaces == ()


@pytest.mark.parametrize("other, message", [({"groups": 3}, "has 3 attention heads.*parent 0 has 2"),
                                            ({"rigid": True}, "rotary embeddings")])
def test_parents_must_agree_on_heads_and_rotary(other, message):
    """Equal shapes can hide a different head count or rotary embeddings in one parent only."""
    from mudsc.diffinit.session import _check_groups

    def graph(**kw):
        space = {"name": "h", "size": 6, "groups": 2, "group_tie": "attn", "producers": [],
                 "taps": [{"node": "n", "dim": 1}], **kw}
        return UnitGraph.from_dict({"spaces": [space]})

    _check_groups(graph(), [graph()])
    with pytest.raises(ConfigError, match=message):
        _check_groups(graph(), [graph(**other)])
