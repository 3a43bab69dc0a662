"""Unit-space coverage of torchvision and timm families: the share of parameter tensors in unit spaces,
float64 permutation invariance, the reasons for fixed tensors, rigid rotary heads, the written-out
nn.MultiheadAttention and ``mudsc spaces``."""
import copy
import json
import textwrap

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from timm.layers import apply_rot_embed_cat
from torch import nn
from torchvision.models.convnext import CNBlockConfig, ConvNeXt

from mudsc.cli import main
from mudsc.errors import ConfigError
from mudsc.studio.coverage import coverage as studio_coverage
from mudsc.unitgraph import UnitGraph, observed, trace
from mudsc.unitgraph.coverage import coverage, max_rel_change, permute_state_dict, random_permutations


def _tv_vit():
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                hidden_dim=16, mlp_dim=32, num_classes=5)


def _timm_swin():
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=56, embed_dim=16,
                             depths=(2, 2), num_heads=(2, 4), num_classes=5)


def _tv_convnext():
    return ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=5)


def _tv_swin():
    return torchvision.models.SwinTransformer(patch_size=[2, 2], embed_dim=12, depths=[2, 2], num_heads=[2, 4],
                                              window_size=[7, 7], num_classes=5)


def _bit():
    return timm.create_model("resnetv2_50x1_bit", pretrained=False, num_classes=5)


# (builder, image size): small configs of the families the rules must cover to >= 90 %
COVERED = {"vit": (_tv_vit, 32), "swin": (_timm_swin, 56), "tv-swin": (_tv_swin, 28), "convnext": (_tv_convnext, 32),
           "bit": (_bit, 32)}


def _batch(size: int) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", list(COVERED))
def test_families_are_covered_and_permutation_invariant(name):
    build, size = COVERED[name]
    torch.manual_seed(0)
    model = build().eval()
    cov = coverage(model, _batch(size))
    assert cov.summary["merged_share"] >= 0.9
    assert cov.summary["max_rel_change"] <= 1e-10
    # the only fixed parameters are the classifier's (its outputs are the fixed class space)
    fixed = [r for r in cov.tensors if r.parameter and not r.merged]
    assert fixed and all("model output" in r.reason for r in fixed)


def test_leaving_one_consumer_out_breaks_the_function():
    """The check can fail: a permutation that skips one tensor of a space changes the outputs."""
    torch.manual_seed(0)
    model = _timm_swin().eval()
    x = _batch(56)
    graph = trace(model, example=x)
    heads = [s for s in graph.spaces if s.name.endswith(".heads")]
    assert heads and all(s.group_tie and s.groups == s.size for s in heads)
    sd = model.double().state_dict()
    perms = random_permutations(graph, torch.Generator().manual_seed(1))
    moved = permute_state_dict(sd, graph, perms)
    table = heads[0].producers[0].param
    assert table.endswith("relative_position_bias_table")
    moved[table] = sd[table]
    other = copy.deepcopy(model)
    other.load_state_dict(moved)
    with torch.no_grad():
        y, y2 = model(x.double()), other(x.double())
    assert ((y2 - y).norm() / y.norm()).item() > 1e-6
    assert max_rel_change(model, graph, x) <= 1e-10


def test_multihead_attention_is_written_out_with_heads_as_groups():
    torch.manual_seed(0)
    model = _tv_vit().eval()
    x = _batch(32)
    graph = trace(model, example=x)
    attn = "encoder.layers.encoder_layer_0.self_attention"
    qk = graph.space("encoder.layers.encoder_layer_0.qk")
    v = graph.space("encoder.layers.encoder_layer_0.v")
    assert qk.groups == v.groups == 2 and qk.group_tie == v.group_tie != ""
    assert {(r.param, r.axis, r.start) for r in qk.producers} == {
        (f"{attn}.in_proj_weight", 0, 0), (f"{attn}.in_proj_weight", 0, 16),
        (f"{attn}.in_proj_bias", 0, 0), (f"{attn}.in_proj_bias", 0, 16)}
    assert (f"{attn}.out_proj.weight", 1, 0) in {(r.param, r.axis, r.start) for r in v.consumers}
    # the traced graph, attention written out, computes what the model computes
    y, acts = observed(model, graph)(x)
    assert torch.allclose(y, model(x), atol=1e-6)
    assert acts["encoder.layers.encoder_layer_0.v"][0].shape[-1] == 16


class _CausalTower(nn.Module):
    """A CLIP-text-style tower: sequence-first attention with a bool causal mask buffer, weights returned."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.attn = nn.MultiheadAttention(8, 2)
        self.register_buffer("mask", torch.ones(5, 5, dtype=torch.bool).triu(1), persistent=False)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.embed(x)
        a, w = self.attn(h, h, h, attn_mask=self.mask)
        return self.head(h + a), w


def test_sequence_first_attention_with_a_mask_and_weights():
    torch.manual_seed(0)
    model = _CausalTower().eval()
    x = torch.randn(5, 2, 6)
    cov = coverage(model, x)
    assert cov.summary["merged_share"] == 7 / 8  # all but the head bias, in the fixed output classes
    assert cov.summary["max_rel_change"] <= 1e-10
    graph = trace(model, example=x)
    (y, w), _ = observed(model, graph)(x)
    y0, w0 = model(x)
    assert torch.allclose(y, y0, atol=1e-6) and torch.allclose(w, w0, atol=1e-6)


def test_rotary_model_merges_its_rotated_heads_as_rigid_heads():
    """EVA-02: a q/k/v bias concatenated from q_bias, a zero k buffer and v_bias, SwiGLU's fused w12
    chunked in two, rotary embeddings on q and k. Everything but the classifier merges: q/k as a rigid
    space (heads move as wholes, the rotation's unit pairs inside a head stay), v tied to its heads."""
    torch.manual_seed(0)
    model = timm.create_model("eva02_tiny_patch14_224", pretrained=False, img_size=28, depth=2, num_classes=5).eval()
    cov = coverage(model, _batch(28))
    assert cov.summary["max_rel_change"] <= 1e-10
    assert cov.summary["merged_share"] >= 0.95  # 0.85 while the rotary fixed q/k (and through them v)
    fixed = [r for r in cov.tensors if r.parameter and not r.merged]
    assert [r.param for r in fixed] == ["head.bias"] and "model output" in fixed[0].reason
    graph = trace(model, example=_batch(28))
    qk, v = graph.space("blocks.0.attn.qk"), graph.space("blocks.0.attn.v")
    assert qk.rigid and not v.rigid and qk.groups == v.groups == 3 and qk.group_tie == v.group_tie
    assert {r.param for r in qk.producers} == {"blocks.0.attn.qkv.weight", "blocks.0.attn.q_bias"}
    assert UnitGraph.from_dict(json.loads(json.dumps(graph.to_dict()))) == graph


class _RotaryAttention(nn.Module):
    """Written-out attention (``q @ k^T``) whose q and k get rotary embeddings on every token but the
    first, in timm's interleaved (``rot``) or half (``rotate_half``) layout."""

    def __init__(self, half: bool, dim: int = 12, heads: int = 3, tokens: int = 5) -> None:
        super().__init__()
        self.stem, self.qkv = nn.Linear(4, dim), nn.Linear(dim, 3 * dim)
        self.proj, self.head = nn.Linear(dim, dim), nn.Linear(dim, 3)
        self.heads, self.half = heads, half
        angle = torch.randn(tokens - 1, dim // heads)
        self.register_buffer("rope", torch.cat([angle.sin(), angle.cos()], -1))

    def forward(self, x):
        b, t, _ = x.shape
        x = self.stem(x)
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = (torch.cat([z[:, :, :1], apply_rot_embed_cat(z[:, :, 1:], self.rope, half=self.half)], dim=2)
                for z in (q, k))
        attn = (q * 0.5) @ k.transpose(-2, -1)
        x = (attn.softmax(-1) @ v).transpose(1, 2).reshape(b, t, -1)
        return self.head(self.proj(x).mean(1))


@pytest.mark.parametrize("half", [False, True])
def test_written_out_rotary_attention_is_rigid_and_invariant(half):
    torch.manual_seed(0)
    model = _RotaryAttention(half).eval()
    x = torch.randn(2, 5, 4)
    cov = coverage(model, x)
    assert cov.summary["max_rel_change"] <= 1e-10
    assert [r.param for r in cov.tensors if r.parameter and not r.merged] == ["head.bias"]
    assert cov.summary["rigid_spaces"] == ["qkv.qk"]
    share, rows = studio_coverage(model, x)  # the Parents page's table says which axes move as whole heads
    assert share == cov.summary["merged_share"]
    assert "(qkv.qk: whole heads only)" in next(r["axes"] for r in rows if r["tensor"] == "qkv.weight")
    graph = trace(model, example=x)
    assert [(s.name, s.rigid) for s in graph.spaces if s.groups == 3] == [("qkv.qk", True), ("qkv.v", False)]
    # moving units inside a rotated head breaks the function: the space must be rigid
    perms = random_permutations(graph, torch.Generator().manual_seed(1))
    perms["qkv.qk"] = torch.arange(12).reshape(3, 4).flip(1).reshape(-1)
    moved = copy.deepcopy(model).double()
    moved.load_state_dict(permute_state_dict(model.double().state_dict(), graph, perms))
    assert (moved(x.double()) - model(x.double())).norm() > 1e-3 * model(x.double()).norm()


class _FusedBias(nn.Module):
    """A linear whose bias is a parameter next to a buffer: uniform (EVA's zero k bias) or not."""

    def __init__(self, uniform: bool) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 6))
        self.b = nn.Parameter(torch.randn(4))
        self.register_buffer("c", torch.zeros(4) if uniform else torch.arange(4.0), persistent=False)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(torch.relu(F.linear(x, self.w, torch.cat((self.b, self.c)))))


@pytest.mark.parametrize("uniform", [True, False])
def test_a_bias_concatenated_with_a_buffer_merges_only_when_the_buffer_is_uniform(uniform):
    torch.manual_seed(0)
    cov = coverage(_FusedBias(uniform).eval(), torch.randn(5, 6))
    assert cov.summary["max_rel_change"] <= 1e-10
    rows = {r.param: r for r in cov.tensors}
    assert rows["w"].merged == uniform and rows["b"].merged == uniform


def test_untraceable_model_names_the_module_and_the_spec_route():
    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.gate = Gate()

        def forward(self, x):
            return self.gate(self.a(x))

    with pytest.raises(ConfigError, match=r"inside module gate \(Gate\).*Models torch.fx cannot trace"):
        trace(Net())


def test_spaces_command_prints_one_json_object(capsys):
    assert main(["spaces", "--arch", "mlp", "--kw", "width=16", "--img-size", "8", "--in-chans", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"summary", "tensors"}
    assert out["summary"]["max_rel_change"] <= 1e-10 and 0 < out["summary"]["merged_share"] <= 1
    rows = {r["param"]: r for r in out["tensors"]}
    assert all(len(r["spaces"]) == len(r["shape"]) for r in rows.values())
    assert any(r["merged"] for r in rows.values())
    assert all(r["reason"] for r in rows.values() if not r["merged"])
    assert main(["spaces", "--arch", "mlp", "--kw", "width=16", "--img-size", "8", "--in-chans", "1"]) == 0
    assert "parameter tensors in unit spaces" in capsys.readouterr().out


def test_spaces_command_bad_arch_is_one_line(capsys):
    assert main(["spaces", "--arch", "no_such_net"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mudsc: error: unknown architecture") and len(err.strip().splitlines()) == 1


USER_NETS = textwrap.dedent('''
    from torch import nn


    def make_net(width=4):
        return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 5))


    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            y = self.conv(x)
            return y * 2 if y.sum() > 0 else y
''')


def test_spaces_command_reads_user_code_and_torchvision(tmp_path, capsys):
    code = tmp_path / "nets.py"
    code.write_text(USER_NETS)
    args = ["spaces", "--arch", f"{code}:make_net", "--kw", "width=6", "--in-chans", "1", "--img-size", "8", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["param"]: r for r in out["tensors"]}
    assert rows["0.weight"]["shape"] == [6, 1, 3, 3] and rows["0.weight"]["merged"]  # --kw reached the user's code
    assert not rows["5.bias"]["merged"] and "output" in rows["5.bias"]["reason"]
    assert out["summary"]["merged_share"] == 5 / 6 and out["summary"]["max_rel_change"] <= 1e-10
    assert main(["spaces", "--arch", "torchvision:resnet18", "--img-size", "32", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert summary["merged_share"] > 0.9 and summary["max_rel_change"] <= 1e-10


def test_spaces_command_names_what_fx_cannot_trace(tmp_path, capsys):
    code = tmp_path / "nets.py"
    code.write_text(USER_NETS)
    assert main(["spaces", "--arch", f"{code}:Branchy", "--in-chans", "1", "--img-size", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Branchy does not trace with torch.fx" in err
    assert "Models torch.fx cannot trace" in err  # the README's hand-written-spec route


# The exact named models, random init and no downloads; inputs kept small where the family allows.
NAMED = {
    "torchvision:vit_b_16": (lambda: torchvision.models.vit_b_16(weights=None, image_size=64), 64),
    "torchvision:convnext_tiny": (lambda: torchvision.models.convnext_tiny(weights=None), 64),
    "torchvision:swin_t": (lambda: torchvision.models.swin_t(weights=None), 64),
    "timm:resnetv2_50x1_bit": (lambda: timm.create_model("resnetv2_50x1_bit", pretrained=False), 64),
    "timm:swin_tiny_patch4_window7_224": (lambda: timm.create_model("swin_tiny_patch4_window7_224",
                                                                    pretrained=False), 224),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(NAMED))
def test_named_models_are_covered_and_permutation_invariant(name):
    build, size = NAMED[name]
    torch.manual_seed(0)
    cov = coverage(build().eval(), _batch(size))
    assert cov.summary["merged_share"] >= 0.9, cov.summary
    assert cov.summary["max_rel_change"] <= 1e-10, cov.summary
