"""Tiny models and random unit permutations shared by the tests."""
from __future__ import annotations

import torch
from torch import nn

from mudsc.models import create_model
from mudsc.unitgraph import UnitGraph
from mudsc.unitgraph.coverage import random_permutations

# (arch, options): every architecture the unit graph must handle without a hand-written spec
ARCHS = [
    ("mlp", {"width": 12, "depth": 3}),
    ("mlp", {"width": 12, "depth": 3, "norm": "bn", "bias": False}),
    ("cnn", {"width": 1, "norm": "bn"}),
    ("cnn", {"width": 1, "norm": "none"}),
    ("resnet20", {"width": 1}),
    ("resnet20", {"width": 2}),
    ("resnet20gn", {"width": 1}),
    ("timm:resnet18", {"channels": (8, 16, 32, 64), "stem_width": 8, "drop_path_rate": 0.1}),
    ("timm:resnet26", {"channels": (8, 16, 32, 64), "stem_width": 8}),
    ("timm:vit_tiny_patch16_224", {"patch_size": 7, "depth": 2, "num_heads": 3, "embed_dim": 24}),
]


def make(arch: str, head: str = "shared", seed: int = 0, **kw) -> nn.Module:
    """A float64 eval-mode model with random norm affines and running statistics (so that
    permuting them wrongly would show in the outputs)."""
    torch.manual_seed(seed)
    m = create_model(arch, classes=(0, 1, 2, 3, 4), num_classes=10, head=head, in_chans=1, img_size=28,
                     feat_dim=16, **kw)
    g = torch.Generator().manual_seed(seed + 1)
    for mod in m.modules():
        if isinstance(mod, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)):
            if getattr(mod, "weight", None) is not None:
                mod.weight.data = torch.randn(mod.weight.shape, generator=g) * 0.5 + 1
                mod.bias.data = torch.randn(mod.bias.shape, generator=g) * 0.5
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.running_mean = torch.randn(mod.running_mean.shape, generator=g) * 0.5
            mod.running_var = torch.rand(mod.running_var.shape, generator=g) + 0.5
    return m.double().eval()


def inputs(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def random_perms(graph: UnitGraph, generator: torch.Generator, dtype=torch.float64) -> dict:
    """Per space (P, P^T) with P [n, n] the permutation matrix of :func:`random_permutations` (groups
    permuted alike within a group tie, units within groups)."""
    maps = {}
    for name, perm in random_permutations(graph, generator).items():
        p = torch.eye(len(perm), dtype=dtype)[perm]
        maps[name] = (p, p.T)
    return maps


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def small_mlp(classes, seed=0, head="own", **kw):
    """A seeded digits MLP (BatchNorm, one hidden layer of 32 unless `kw` says otherwise), in eval mode."""
    torch.manual_seed(seed)
    return create_model("mlp", classes=classes, num_classes=10, head=head, in_chans=1, img_size=8, feat_dim=16,
                        **{"depth": 1, "width": 32, "norm": "bn", **kw}).eval()
