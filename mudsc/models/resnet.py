"""CIFAR-style ResNet-20 (He et al., 2016, Sec. 4.2) with a width multiplier, BatchNorm or GroupNorm.

The network ZipIt! and MuDSC merge: three stages of three BasicBlocks at 16w/32w/64w channels, a
1x1 projection shortcut where the shape changes, global average pooling and a linear map to the
embedding. ``strides`` adapts it to small inputs (1/1/2 for the 8x8 digits demo).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from mudsc.errors import ConfigError
from mudsc.models.registry import register_model


def _norm(kind: str, c: int, groups: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(c)
    if kind == "gn":
        if c % groups:
            raise ConfigError(f"GroupNorm: {c} channels do not split into {groups} groups")
        return nn.GroupNorm(groups, c)
    raise ConfigError(f"unknown norm {kind!r}; choose 'bn' or 'gn'")


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, norm: str, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = _norm(norm, c_out, groups)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = _norm(norm, c_out, groups)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), _norm(norm, c_out, groups))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """[b, c, s, s] -> [b, feat_dim].

    Args:
        width: channel multiplier (16w/32w/64w).
        blocks: BasicBlocks per stage (3 gives ResNet-20).
        strides: stride of each stage's first block.
        norm: ``bn`` or ``gn``; ``groups`` GroupNorm groups.
    """

    def __init__(self, in_chans: int, img_size: int, feat_dim: int, width: int = 1, blocks: int = 3,
                 strides: tuple[int, int, int] = (1, 2, 2), norm: str = "bn", groups: int = 8) -> None:
        super().__init__()
        c = 16 * width
        self.conv1 = nn.Conv2d(in_chans, c, 3, 1, 1, bias=False)
        self.bn1 = _norm(norm, c, groups)
        stages = []
        for i, (mult, stride) in enumerate(zip((1, 2, 4), strides)):
            c_out = 16 * width * mult
            stage = [BasicBlock(c if j == 0 else c_out, c_out, stride if j == 0 else 1, norm, groups)
                     for j in range(blocks)]
            stages.append(nn.Sequential(*stage))
            c = c_out
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c, feat_dim)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


def _create_resnet(*, in_chans: int, img_size: int, feat_dim: int, width: int = 1, norm: str = "bn",
                   groups: int = 8, strides=None, blocks: int = 3) -> ResNet:
    if strides is None:
        strides = (1, 1, 2) if img_size <= 12 else (1, 2, 2)
    strides = tuple(int(s) for s in (strides.split("/") if isinstance(strides, str) else strides))
    if len(strides) != 3:
        raise ConfigError(f"resnet20: strides needs 3 values, got {strides}")
    return ResNet(in_chans, img_size, feat_dim, width=int(width), blocks=int(blocks), strides=strides,
                  norm=norm, groups=int(groups))


@register_model
def resnet20(**kwargs) -> ResNet:
    return _create_resnet(**kwargs)


@register_model
def resnet20gn(**kwargs) -> ResNet:
    return _create_resnet(norm="gn", **kwargs)
