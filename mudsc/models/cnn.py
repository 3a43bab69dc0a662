"""VGG-like convolutional network (the VGG family ZipIt! evaluates), sized for small images."""
from __future__ import annotations

from torch import nn

from mudsc.models.registry import register_model


def _norm(kind: str, c: int) -> nn.Module:
    return nn.BatchNorm2d(c) if kind == "bn" else nn.Identity()


class VGG(nn.Module):
    """[b, c, s, s] -> [b, feat_dim]: stages of 3x3 conv (+norm) + ReLU, max-pooling between stages.

    Args:
        width: channel multiplier; stage widths are 16w, 32w, 64w.
        convs_per_stage: 3x3 convolutions in each stage.
        norm: ``bn`` or ``none``.
    """

    def __init__(self, in_chans: int, img_size: int, feat_dim: int, width: int = 2,
                 convs_per_stage: int = 2, norm: str = "bn") -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_chans
        for stage, c in enumerate((16 * width, 32 * width, 64 * width)):
            if stage > 0 and img_size >= 2 ** (stage + 1):
                layers.append(nn.MaxPool2d(2))
            for _ in range(convs_per_stage):
                layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=norm != "bn"), _norm(norm, c), nn.ReLU()]
                c_in = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c_in, feat_dim)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.features(x))))


@register_model
def cnn(*, in_chans: int, img_size: int, feat_dim: int, width: int = 2, convs_per_stage: int = 2,
        norm: str = "bn") -> VGG:
    return VGG(in_chans, img_size, feat_dim, width=int(width), convs_per_stage=int(convs_per_stage), norm=norm)
