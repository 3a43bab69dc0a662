"""A parent's own preprocessing, applied inside the model to the data set's images.

Every data set reaches a model normalised with its own training statistics (:mod:`mudsc.data`). A
parent trained elsewhere expects its own input: torchvision's ``Resize(s) -> CenterCrop(s) ->
ToTensor -> Normalize(mean, std)`` on pixels in [0, 1], with grey images repeated to three channels
where its first layer wants them (torchvision's ``Grayscale(3)``). :class:`Preprocess` maps one to
the other with constants fixed when it is built, so torch.fx traces it as a few element-wise ops
on the input, whose channels are never a unit space. It holds no state-dict entries: checkpoints
stay as they were and the model spec records the options (:func:`preprocess_spec`).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from mudsc.data import ResizeCrop
from mudsc.errors import ConfigError


def _channels(values: Sequence[float] | None, chans: int, what: str) -> list[float] | None:
    if values is None:
        return None
    vals = [float(v) for v in values]
    if len(vals) == 1:
        vals = vals * chans
    if len(vals) != chans:
        give = "one value" if chans == 1 else f"one value or {chans}"
        raise ConfigError(f"--{what} has {len(vals)} values; the model takes {chans}-channel images (give {give})")
    if what == "std" and any(v <= 0 for v in vals):
        raise ConfigError(f"--std values must be positive, got {vals}")
    return vals


def preprocess_spec(*, data_mean: Sequence[float], data_std: Sequence[float], data_size: tuple[int, int],
                    channels: int | None = None, mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None, img_size: int | None = None) -> dict[str, Any] | None:
    """The options of :class:`Preprocess` for images normalised with (`data_mean`, `data_std`) of side
    `data_size` (height, width), or None when the model takes them as they are.

    Args:
        channels: the model's input channels (default: the data set's); grey images are repeated to 3.
        mean, std: the model's ``Normalize`` constants on [0, 1] pixels (one value, or one per channel);
            None keeps the data set's own normalisation.
        img_size: resize the shorter side to this and centre-crop a square of it (default: as they are).
    """
    in_chans = len(data_mean)
    out = int(channels or in_chans)
    if out != in_chans and not (in_chans == 1 and out == 3):
        raise ConfigError(f"the model takes {out}-channel images but the data set has {in_chans} channels; only "
                          "grey images repeated to 3 channels are converted")
    if (mean is None) != (std is None):
        raise ConfigError("give --mean and --std together (torchvision Normalize on pixels in [0, 1])")
    if img_size is not None and int(img_size) <= 0:
        raise ConfigError(f"--img-size must be positive, got {img_size}")
    h, w = (int(v) for v in data_size)
    if img_size is None and h != w:
        raise ConfigError(f"the data set's images are {h}x{w}; give --img-size to resize and centre-crop them")
    size = int(img_size) if img_size is not None else h
    if mean is None and out == in_chans and (h, w) == (size, size):
        return None
    return {"data_mean": [float(v) for v in data_mean], "data_std": [float(v) for v in data_std],
            "data_size": [h, w], "channels": out, "mean": _channels(mean, out, "mean"),
            "std": _channels(std, out, "std"), "img_size": size}


class Preprocess(nn.Module):
    """[b, c, s, s] data-set images -> [b, channels, img_size, img_size] as the parent was trained on.

    Undoes the data set's normalisation only when the parent has its own (``mean``/``std``); resizing
    is bilinear with antialiasing, like torchvision's ``Resize`` on tensors.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        self.spec = dict(spec)
        c_in, c_out = len(spec["data_mean"]), int(spec["channels"])
        dm, ds = torch.tensor(spec["data_mean"]), torch.tensor(spec["data_std"])
        if spec.get("mean") is not None:
            m, s = torch.tensor(spec["mean"]), torch.tensor(spec["std"])
            # x_model = (pixel - m) / s with pixel = x * ds + dm, folded into one scale and shift
            dm, ds = (dm if c_in == c_out else dm.expand(c_out)), (ds if c_in == c_out else ds.expand(c_out))
            scale, shift = ds / s, (dm - m) / s
        else:
            scale, shift = torch.ones(c_out), torch.zeros(c_out)
        self.register_buffer("scale", scale.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, -1, 1, 1), persistent=False)
        self.channels = c_out if c_out != c_in else None
        # the data loaders' own resize and centre crop (--data-img-size), its geometry fixed here
        self.resize_crop = ResizeCrop(tuple(spec["data_size"]), int(spec["img_size"]))

    def forward(self, x: Tensor) -> Tensor:
        if self.channels is not None:  # grey -> RGB; expand (not repeat) leaves 3-channel inputs as they are
            x = x.expand(-1, self.channels, -1, -1)
        return self.resize_crop(x) * self.scale + self.shift
