"""Multi-layer perceptron on flattened images (the MuDSC loss-landscape model family)."""
from __future__ import annotations

from torch import nn

from mudsc.models.registry import register_model


class MLP(nn.Module):
    """[b, c, s, s] -> [b, feat_dim] through `depth` hidden layers of `width` units with ReLU.

    Args:
        in_chans, img_size: input geometry.
        feat_dim: output width.
        depth: number of hidden layers.
        width: hidden units per layer.
        norm: ``none`` or ``bn`` (BatchNorm1d after each hidden linear layer).
        bias: whether linear layers have biases.
    """

    def __init__(self, in_chans: int, img_size: int, feat_dim: int, depth: int = 3, width: int = 256,
                 norm: str = "none", bias: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        d = in_chans * img_size * img_size
        for _ in range(depth):
            layers.append(nn.Linear(d, width, bias=bias))
            if norm == "bn":
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU())
            d = width
        layers.append(nn.Linear(d, feat_dim, bias=bias))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


@register_model
def mlp(*, in_chans: int, img_size: int, feat_dim: int, depth: int = 3, width: int = 256,
        norm: str = "none", bias: bool = True) -> MLP:
    return MLP(in_chans, img_size, feat_dim, depth=int(depth), width=int(width), norm=norm, bias=bias)
