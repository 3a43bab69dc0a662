"""Architectures from outside the registry: the user's own code, torchvision and timm models.

``--arch`` takes ``path/to/models.py:make_net`` or ``package.module:make_net`` (a function or class
returning an ``nn.Module``, called with the ``--kw`` options), ``torchvision:NAME`` (any torchvision
classification model, built without weights) or ``timm:NAME`` (any timm model; pretrained weights
only from a local file through timm's ``pretrained_cfg_overlay=dict(file=...)``, or from the local
Hugging Face cache when it holds them; nothing is downloaded).

Importing a user file or module runs its code, with this process's rights: only name code you trust.

The network is the body of a :class:`~mudsc.models.heads.Classifier`. Its last layer is its own
classifier over the task's classes (a :class:`~mudsc.models.heads.TaskHead`), or, with class
embeddings from a file (CLIP text embeddings of the class names, a ``[num_classes, d]`` tensor), it
emits d-dimensional embeddings scored by cosine against them, so parents share one output space.
"""
from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from mudsc.errors import CheckpointError, ConfigError, UnknownNameError
from mudsc.models.heads import Classifier, SharedHead, TaskHead
from mudsc.models.preprocess import Preprocess, preprocess_spec

EXTERNAL = "external"  # a spec's ``source`` for models built here rather than by the registry
TIMM_FILE_KW = "pretrained_file"  # --kw pretrained_file=PATH: timm weights from a local file
CODE_WARNING = ("importing a model file or module runs its code with your rights; name only code you trust "
                "(the app imports only paths on its own machine, never uploaded Python)")


def is_external(arch: str) -> bool:
    """Whether `arch` names user code or a torchvision model (``timm:NAME`` is both a registry body
    and an external model: the spec's ``source`` tells them apart)."""
    return arch.startswith("torchvision:") or (":" in arch and not arch.startswith("timm:"))


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"--arch: model file {path} does not exist")
    if path.suffix != ".py":
        raise ConfigError(f"--arch: {path} is not a Python file (.py)")
    # One module per file content, so an edited file is imported afresh and two files never collide.
    name = f"mudsc_user_{hashlib.sha256(str(path.resolve()).encode() + path.read_bytes()).hexdigest()[:16]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and fx look modules up by name while the file runs
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise ConfigError(f"--arch: importing {path} failed ({type(e).__name__}: {e})") from None
    return module


def _import_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except Exception as e:  # ModuleNotFoundError, or the module's own code failing
        raise ConfigError(f"--arch: cannot import module {name!r} ({type(e).__name__}: {e})") from None


def _file_like(where: str) -> bool:
    """Whether the part of ``--arch`` before the colon names a file rather than a module."""
    return where.endswith(".py") or os.sep in where or "/" in where


def code_file(arch: str) -> Path | None:
    """The source file of the user's code `arch` names (``FILE.py``, or the module of
    ``package.module:FUNCTION`` where Python finds it; a package's parents are imported to find it),
    for manifests to hash; None for torchvision, timm and registry names, or a module not found."""
    if not is_external(arch) or arch.startswith("torchvision:"):
        return None
    where = arch.rpartition(":")[0]
    if _file_like(where):
        return Path(where).expanduser()
    try:
        found = importlib.util.find_spec(where)
    except (ImportError, ValueError):
        return None
    origin = getattr(found, "origin", None)
    return Path(origin) if origin and Path(origin).is_file() else None


def user_builder(arch: str) -> Callable[..., nn.Module]:
    """The callable `arch` (``FILE.py:NAME`` or ``package.module:NAME``) names; imports (runs) its code."""
    where, _, attr = arch.rpartition(":")
    if not where or not attr:
        raise ConfigError(f"--arch {arch!r}: expected path/to/file.py:FUNCTION or package.module:FUNCTION")
    module = _import_file(Path(where).expanduser()) if _file_like(where) else _import_module(where)
    fn = getattr(module, attr, None)
    if not callable(fn):
        names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                       and getattr(v, "__module__", None) == module.__name__)
        close = difflib.get_close_matches(attr, names, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UnknownNameError(f"--arch: {where} has no function {attr!r}{hint}; it defines {', '.join(names) or 'none'}")
    return fn


def _torchvision_builder(name: str) -> Callable[..., nn.Module]:
    from torchvision import models

    names = models.list_models(module=models)  # classification models only
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" (did you mean {', '.join('torchvision:' + c for c in close)}?)" if close else ""
        raise UnknownNameError(f"unknown torchvision classification model {name!r}{hint}")

    def build(**kw: Any) -> nn.Module:
        if kw.get("weights") is not None:
            raise ConfigError("torchvision weights would be downloaded; load your own checkpoint instead")
        kw.pop("weights", None)
        return models.get_model(name, weights=None, **kw)
    return build


def hf_cached_weights(hf_hub_id: str, cache_dir: str | None = None) -> str | None:
    """A timm model's weights file in the local Hugging Face cache, if it is there (never downloads)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    repo, _, rev = hf_hub_id.partition("@")
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename, cache_dir=cache_dir or os.environ.get("HF_HUB_CACHE"),
                                       revision=rev or None)
        if isinstance(found, str):
            return found
    return None


def _timm_builder(name: str) -> Callable[..., nn.Module]:
    import timm

    if not timm.list_models(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join('timm:' + c for c in close)}?)" if close else ""
        raise UnknownNameError(f"unknown timm model {name!r}{hint}")

    def build(**kw: Any) -> nn.Module:
        file = kw.pop(TIMM_FILE_KW, None)
        pretrained = bool(kw.pop("pretrained", False)) or file is not None
        if pretrained and file is None:
            hub = getattr(timm.models.get_pretrained_cfg(name), "hf_hub_id", None)
            file = hf_cached_weights(hub) if hub else None
            if file is None:
                raise ConfigError(f"timm:{name}: pretrained weights are not in the local Hugging Face cache "
                                  f"({hub or 'no hub id'}); give --kw {TIMM_FILE_KW}=PATH (nothing is downloaded)")
        if file is not None:
            if not Path(file).expanduser().is_file():
                raise ConfigError(f"timm:{name}: weights file {file} does not exist")
            kw["pretrained_cfg_overlay"] = dict(file=str(Path(file).expanduser()))
        return timm.create_model(name, pretrained=pretrained, **kw)
    return build


def builder(arch: str) -> Callable[..., nn.Module]:
    """The constructor an external `arch` names."""
    if arch.startswith("torchvision:"):
        return _torchvision_builder(arch.split(":", 1)[1])
    if arch.startswith("timm:"):
        return _timm_builder(arch.split(":", 1)[1])
    return user_builder(arch)


def read_class_embeddings(path: str | os.PathLike) -> Tensor:
    """A ``[num_classes, d]`` float tensor from ``.safetensors`` (its one tensor) or ``.npy`` (no pickles)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"class embeddings {p} do not exist")
    if p.suffix == ".npy":
        import numpy as np

        try:
            t = torch.from_numpy(np.load(p, allow_pickle=False))
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot read class embeddings {p}: {e}") from None
    elif p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(p))
        except Exception as e:  # safetensors' own error types
            raise CheckpointError(f"cannot read class embeddings {p}: {e}") from None
        if len(tensors) != 1:
            raise CheckpointError(f"{p} holds {len(tensors)} tensors ({', '.join(sorted(tensors)[:4])}); "
                                  "class embeddings must be its only tensor")
        t = next(iter(tensors.values()))
    else:
        raise CheckpointError(f"class embeddings {p}: expected a .safetensors or .npy file")
    if t.ndim != 2 or not t.is_floating_point():
        raise CheckpointError(f"class embeddings {p} must be a float [num_classes, d] tensor, got {t.dtype} "
                              f"{tuple(t.shape)}")
    return t.float()


def external_spec(arch: str, *, classes: tuple[int, ...], data: dict[str, Any], kwargs: dict[str, Any] | None = None,
                  mean: list[float] | None = None, std: list[float] | None = None, img_size: int | None = None,
                  channels: int | None = None, class_embeddings: str | None = None) -> dict[str, Any]:
    """The spec of an external model for the data set `data` (``Dataset.describe()``): everything
    :func:`build_external` needs to rebuild it, the preprocessing and class-embedding file included."""
    arch = arch.strip()
    where, _, attr = arch.rpartition(":")
    if where.endswith(".py"):  # an absolute path, so the manifest reproduces from any directory
        arch = f"{Path(where).expanduser().resolve()}:{attr}"
    spec: dict[str, Any] = {
        "source": EXTERNAL, "arch": arch, "kwargs": dict(kwargs or {}),
        "head": "embeddings" if class_embeddings else "task", "classes": [int(c) for c in classes],
        "num_classes": int(data["num_classes"]), "in_chans": int(data["in_chans"]),
        "img_size": int(data["img_size"]),
        # The parent's own preprocessing, as given, and the data set's normalisation it starts from.
        "input": {"mean": mean, "std": std, "img_size": img_size, "channels": channels,
                  "data_mean": list(data["mean"]), "data_std": list(data["std"]),
                  "data_size": [int(v) for v in data.get("img_hw", (data["img_size"],) * 2)]},
    }
    _preprocess(spec, None)  # option errors show before any user code runs
    if class_embeddings:
        p = Path(class_embeddings).expanduser().resolve()
        emb = read_class_embeddings(p)
        if emb.shape[0] != spec["num_classes"]:
            raise ConfigError(f"class embeddings {p} have {emb.shape[0]} rows; the data set has "
                              f"{spec['num_classes']} classes")
        spec["class_embeddings"] = {"path": str(p), "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
    if arch.startswith(("torchvision:", "timm:")) and "num_classes" not in spec["kwargs"]:
        width = emb.shape[1] if class_embeddings else len(classes)
        spec["kwargs"]["num_classes"] = int(width)  # the network's own last layer: one output per class
    return spec


def _first_conv_channels(net: nn.Module) -> int | None:
    conv = next((m for m in net.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    return None if conv is None else int(conv.in_channels)


def _preprocess(spec: dict[str, Any], net: nn.Module | None) -> dict[str, Any] | None:
    """The :class:`Preprocess` options of an external spec; grey images go to a network whose first
    convolution takes 3 channels repeated, as torchvision's ``Grayscale(3)`` does."""
    opts = spec["input"]
    channels = opts.get("channels")
    want = None if net is None else _first_conv_channels(net)
    if channels is None and want == 3 and spec["in_chans"] == 1:
        channels = 3
    return preprocess_spec(data_mean=opts["data_mean"], data_std=opts["data_std"], data_size=_data_size(spec),
                           channels=channels, mean=opts.get("mean"), std=opts.get("std"), img_size=opts.get("img_size"))


def _data_size(spec: dict[str, Any]) -> tuple[int, int]:
    """The data set's image height and width (specs written before non-square data were square)."""
    return tuple(spec["input"].get("data_size") or (spec["img_size"],) * 2)


def build_external(spec: dict[str, Any]) -> Classifier:
    """The classifier an external spec describes: the network (built by its code, with its
    initialisation), its preprocessing and its head; outputs checked on one image."""
    fn = builder(spec["arch"])
    try:
        net = fn(**spec.get("kwargs", {}))
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:
        raise ConfigError(f"--arch {spec['arch']}: building it failed ({type(e).__name__}: {e})") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(f"--arch {spec['arch']} returned a {type(net).__name__}, not a torch.nn.Module")
    classes = tuple(spec["classes"])
    pre_spec = _preprocess(spec, net)
    if spec["head"] == "embeddings":
        emb = read_class_embeddings(spec["class_embeddings"]["path"])
        head: nn.Module = SharedHead(emb.shape[1], emb.shape[0], classes, embeddings=emb,
                                     temperature=float(spec.get("temperature", 20.0)))
        width = emb.shape[1]
    else:
        head, width = TaskHead(classes), len(classes)
    model = Classifier(net, head, Preprocess(pre_spec) if pre_spec else None)
    x = torch.zeros(1, spec["in_chans"], *_data_size(spec))
    try:
        with torch.no_grad():
            out = net.eval()(model.pre(x) if pre_spec else x)
    except Exception as e:  # the user's network failing on its input says what it expects
        raise ConfigError(f"--arch {spec['arch']}: the network fails on a {tuple(x.shape[1:])} image "
                          f"after preprocessing ({type(e).__name__}: {str(e).splitlines()[0][:200]}); check "
                          "--img-size, --mean/--std (channels) and --kw") from None
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[1] != width:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        what = (f"{width}-dimensional embeddings to score against the class embeddings" if spec["head"] == "embeddings"
                else f"{width} logits, one per class of its task {list(classes)}")
        raise ConfigError(f"--arch {spec['arch']}: the network outputs {got} per batch, expected [batch, {width}]: "
                          f"{what} (its last layer must be its own classifier, or give --class-embeddings)")
    model.spec = spec
    return model.eval()


