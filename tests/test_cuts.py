"""Zip depth at every block (issue 14): cuts after every residual / transformer block, the self-merge
identity at cuts inside a residual stream, export and reload of such a multi-head model, and the
depth sweep from the CLI."""
import csv
import json

import pytest
import torch
from test_merge import _model, _permuted_copy
from unit_helpers import inputs, make

from mudsc.diffinit.config import make_config
from mudsc.diffinit.session import MergeSession
from mudsc.models.checkpoint import load_model
from mudsc.models.multihead import Unmerge
from mudsc.unitgraph import split, trace

VIT = {"patch_size": 7, "depth": 3, "num_heads": 3, "embed_dim": 24}
SWIN = {"patch_size": 2, "window_size": 7, "embed_dim": 12, "depths": (2, 2), "num_heads": (2, 4)}
STAGES = lambda n, blocks: [f"layer{i}{b}" for i in range(1, n + 1) for b in blocks]  # noqa: E731


def _torchvision_resnet18():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).double().eval()


@pytest.mark.parametrize("name,build,expected", [
    ("resnet20", lambda: make("resnet20"), ["conv1", *STAGES(3, (".0", ".1", ""))]),
    ("timm-resnet18", lambda: make("timm:resnet18", channels=(8, 16, 32, 64), stem_width=8),
     ["conv1", *STAGES(4, (".0", ""))]),
    ("timm-vit", lambda: make("timm:vit_tiny_patch16_224", **VIT),
     ["patch_embed", "blocks.0.attn", "blocks.0", "blocks.1.attn", "blocks.1", "blocks.2.attn", "blocks"]),
    ("torchvision-resnet18", _torchvision_resnet18, ["conv1", *STAGES(4, (".0", ""))]),
], ids=lambda v: v if isinstance(v, str) else "")
def test_a_cut_after_every_block_splits_the_model_exactly(name, build, expected):
    m = build()
    x = inputs(n=2) if name != "torchvision-resnet18" else torch.randn(2, 3, 32, 32, dtype=torch.float64)
    g = trace(m, example=x)
    # a stage's (or the stack's) last block keeps the container's name: ``layer1`` is after ``layer1.2``
    assert [c.name for c in g.cuts] == expected
    y = m(x)
    shares = []
    for c in g.cuts:
        trunk, head = split(m, g, c.name)
        t = trunk(x)
        assert t.shape[c.dim] == g.space(c.space).size
        assert torch.equal(head(t), y), c.name
        assert c.space in c.merged_spaces
        shares.append(len(c.trunk_params))
    assert shares == sorted(shares) and len(set(shares)) == len(shares)  # every cut merges more


def test_convnext_gets_a_cut_after_every_block():
    g = trace(make("timm:convnext_atto"))
    names = [c.name for c in g.cuts]
    assert names[:3] == ["stem", "stages.0.blocks.0", "stages.0"]
    assert {f"stages.2.blocks.{j}" for j in range(4)} <= set(names)


def _torchvision_swin():
    pytest.importorskip("torchvision")
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    return SwinTransformer(patch_size=[2, 2], embed_dim=12, depths=[2, 2], num_heads=[2, 4], window_size=[7, 7],
                           num_classes=10).double().eval()


@pytest.mark.parametrize("build,x,blocks", [
    (lambda: make("timm:swin_tiny_patch4_window7_224", **SWIN), inputs(n=2),
     ["layers.0.blocks.0", "layers.0", "layers.1.blocks.0", "layers"]),
    (_torchvision_swin, torch.randn(2, 3, 28, 28, dtype=torch.float64),
     ["features.1.0", "features.1", "features.3.0", "features"]),
], ids=["timm-swin", "torchvision-swin"])
def test_swin_gets_a_cut_after_every_block(build, x, blocks):
    """Shifted-window attention: a cut after every block (stage ends keep the stage's name) whether or
    not the propagation rules follow the residual stream through the windows; where they do not, the
    stream is fixed and the cut carries it as it is (no space, no unmerge)."""
    m = build()
    g = trace(m, example=x)
    names = [c.name for c in g.cuts]
    assert [n for n in names if n in blocks] == blocks
    y = m(x)
    merged = []
    for c in g.cuts:
        trunk, head = split(m, g, c.name)
        assert torch.equal(head(trunk(x)), y), c.name
        assert not c.space or g.space(c.space).size == trunk(x).shape[c.dim]
        merged.append(len(c.merged_spaces))
    assert merged == sorted(merged) and merged[0] >= 1


def _check_self_merge(a, cuts, methods, digits):
    """Merging `a` with a permuted copy of itself gives `a`'s function back in every head."""
    b, _ = _permuted_copy(a, trace(a), seed=1)
    session = MergeSession([a, b], digits, stats_images=250, eval_images=50)
    x = digits.eval.x[:32]
    with torch.no_grad():
        ref = a(x)
    for cut in cuts:
        for method in methods:
            result = session.merge(make_config(method=method, cut=cut, reset_bn=False, max_sweeps=20))
            assert result.multihead
            # inside a residual stream the heads read the merged stream through an explicit unmerge
            c = session.graph.cut(cut)
            inside = bool(c.space) and not all(r.param in c.trunk_params
                                               for r in session.graph.space(c.space).producers)
            assert all(any(isinstance(mod, Unmerge) for mod in h.modules()) == inside for h in result.model.heads)
            with torch.no_grad():
                for out in result.model(x):
                    assert (out - ref).norm() <= 1e-5 * ref.norm() + 1e-6, f"{method} at {cut}"


def test_self_merge_is_the_identity_inside_residual_stages(digits, demo_parents):
    cuts = ["conv1", "layer1.0", "layer2.1", "layer3.0", "layer2"]
    _check_self_merge(_model("resnet20", width=1), cuts, ["permute"], digits)
    # zip may merge dead or duplicated units within a model: it runs on a trained parent
    _check_self_merge(load_model(demo_parents[0])[0], cuts, ["zipit"], digits)


def test_self_merge_is_the_identity_inside_the_transformer_stack(digits):
    vit = _model("timm:vit_tiny_patch16_224", patch_size=2, depth=3, num_heads=3, embed_dim=24)
    _check_self_merge(vit, ["patch_embed", "blocks.0.attn", "blocks.0", "blocks.1"], ["permute", "zipit"], digits)


def test_self_merge_is_the_identity_inside_swin_stages(digits):
    """At cuts on Swin's stream, the merged attention heads (q/k, v and the per-head relative-position
    bias tied together), MLP hidden units and the unmerged heads give the parent back."""
    swin = _model("timm:swin_tiny_patch4_window7_224", **{**SWIN, "window_size": 2})
    _check_self_merge(swin, ["layers.0.blocks.0", "layers.1.blocks.0"], ["permute"], digits)


def test_self_merge_is_the_identity_inside_convnext_stages(digits):
    """ConvNeXt (channels-last LayerNorm and MLP, layer scale) at cuts after a block, a downsample and
    a stage. The digits are resized to 32 so that its four downsamplings fit."""
    from mudsc.models import create_model
    from mudsc.models.preprocess import preprocess_spec

    torch.manual_seed(0)
    pre = preprocess_spec(data_mean=digits.mean, data_std=digits.std, data_size=(8, 8), img_size=32)
    net = create_model("timm:convnext_atto", classes=(0, 1, 2, 3, 4), num_classes=10, in_chans=1, img_size=32,
                       feat_dim=16, preprocess=pre).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # layer scale starts at 1e-6: random scales and affines make every block count
        for name, p in net.named_parameters():
            if name.endswith("gamma") or ("norm" in name and p.ndim == 1):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (0.0 if name.endswith("bias") else 1.0))
    _check_self_merge(net, ["stages.0.blocks.0", "stages.1.downsample", "stages.2.blocks.2", "stages.2"],
                      ["permute"], digits)


def test_mid_stage_multihead_exports_reloads_and_reproduces(demo_parents, digits, tmp_path):
    from mudsc.cli import main

    args = ["merge", "--parents", *map(str, demo_parents), "--dataset", "digits", "--method", "zipit",
            "--cut", "layer2.1", "--stats-images", "250", "--eval-images", "100", "--reset-images", "250"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    loaded, info = load_model(tmp_path / "a" / "model.safetensors")
    assert info["cut"] == "layer2.1" and info["kind"] == "multihead"
    assert all(isinstance(h.unmerge, Unmerge) for h in loaded.heads)
    session = MergeSession.from_paths([str(p) for p in demo_parents], "digits", stats_images=250, eval_images=100)
    result = session.merge(make_config(method="zipit", cut="layer2.1", reset_images=250))
    x = digits.eval.x[:16]
    with torch.no_grad():
        for y0, y1 in zip(result.model(x), loaded(x)):
            assert torch.equal(y0, y1)
    # each head keeps its parent's own blocks after the cut
    own = load_model(demo_parents[1])[0].state_dict()
    assert torch.equal(loaded.heads[1].state_dict()["body.layer3.0.conv1.weight"], own["body.layer3.0.conv1.weight"])
    manifest = tmp_path / "a" / "manifest.json"
    assert main(["merge", "--manifest", str(manifest), "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_depth_sweep_covers_every_cut(demo_parents, tmp_path, capsys):
    from mudsc.cli import main

    out = tmp_path / "depth"
    assert main(["sweep", "--parents", *map(str, demo_parents), "--dataset", "digits", "--methods", "zipit",
                 "--cuts", "all", "--stats-images", "250", "--eval-images", "100", "--reset-images", "250",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = list(csv.DictReader(open(out.with_suffix(".csv"))))
    cuts = [c.name for c in trace(load_model(demo_parents[0])[0]).cuts] + ["full"]
    assert [r["cut"] for r in rows] == cuts and "cut=layer2.1" in printed
    params = [int(r["params"]) for r in rows]
    shares = [float(r["merged_params_share"]) for r in rows]
    flops = [float(r["merged_flops_share"]) for r in rows]
    assert params == sorted(params, reverse=True) and shares == sorted(shares) and flops == sorted(flops)
    assert shares[-1] == 1.0 and all(0 <= float(r["joint_acc"]) <= 1 for r in rows)
    assert json.loads(out.with_suffix(".json").read_text())["rows"][2]["cut"] == "layer1.1"
