"""Where the app's parents come from: uploads, paths and plain state dicts with a given architecture.

Every parent ends up as a self-describing mudsc checkpoint on disk, so a merge made in the app is
reproducible from the command line (the manifest names files and their sha256).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from torch import nn

from mudsc.data import Dataset, parse_classes
from mudsc.errors import CheckpointError, ConfigError, DataError
from mudsc.models.checkpoint import load_model, read_info, save_model, sha256_file

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth")


def store_upload(name: str, data: bytes, *, root: str | os.PathLike, max_bytes: int) -> Path:
    """Write uploaded checkpoint bytes to ``root/uploads/SHA-NAME`` (content-addressed) and return the path."""
    suffix = Path(name).suffix.lower()
    if suffix == ".py":
        raise CheckpointError(f"upload {name!r}: uploaded Python is never imported (it would run on this machine); "
                              "give the model file's path on this machine as the architecture, path.py:FUNCTION")
    if suffix not in CHECKPOINT_SUFFIXES:
        raise CheckpointError(f"upload {name!r}: expected a {', '.join(CHECKPOINT_SUFFIXES)} file")
    if len(data) > max_bytes:
        raise CheckpointError(f"upload {name!r} is {len(data) / 2**20:.1f} MB, over the {max_bytes / 2**20:.0f} MB "
                              "upload limit; give its path instead (or raise MUDSC_MAX_UPLOAD_MB)")
    digest = hashlib.sha256(data).hexdigest()
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).name)
    out = Path(root).expanduser() / "uploads" / f"{digest[:16]}-{safe}"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, out)
    return out


def plain_spec(arch: str, *, classes: str, data: Dataset, head: str = "shared", feat_dim: int = 64,
               kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model spec of a plain state dict: architecture and task given, input geometry from `data`."""
    if not arch.strip():
        raise ConfigError("give an architecture, e.g. resnet20 or timm:resnet18")
    if head not in ("shared", "own"):
        raise ConfigError(f"head must be 'shared' or 'own', got {head!r}")
    return {"arch": arch.strip(), "kwargs": dict(kwargs or {}), "head": head,
            "classes": list(parse_classes(classes, data.num_classes)), "num_classes": data.num_classes,
            "in_chans": data.in_chans, "img_size": data.img_size, "feat_dim": int(feat_dim)}


def user_spec(arch: str, *, classes: str, data: Dataset, kwargs: dict[str, Any] | None = None, mean: str = "",
              std: str = "", img_size: int | None = None, class_embeddings: str = "") -> dict[str, Any]:
    """The spec of the user's own network (``path.py:FUNCTION``, ``package.module:FUNCTION``,
    ``torchvision:NAME`` or ``timm:NAME``), its last layer classifying `classes` or emitting embeddings
    scored against `class_embeddings`; `mean`/`std` are comma-separated per-channel values."""
    from mudsc.models.external import external_spec

    def floats(text: str, what: str) -> list[float] | None:
        try:
            return [float(v) for v in text.replace(" ", "").split(",") if v] or None
        except ValueError:
            raise ConfigError(f"{what} {text!r}: expected numbers separated by commas") from None

    if not arch.strip():
        raise ConfigError("give an architecture: path/to/models.py:FUNCTION, package.module:FUNCTION, "
                          "torchvision:NAME or timm:NAME")
    return external_spec(arch, classes=parse_classes(classes, data.num_classes), data=data.describe(),
                         kwargs=kwargs, mean=floats(mean, "mean"), std=floats(std, "std"),
                         img_size=int(img_size) if img_size else None,
                         class_embeddings=class_embeddings.strip() or None)


def self_describing(path: str | os.PathLike, *, root: str | os.PathLike, spec: dict[str, Any] | None = None) -> Path:
    """`path` itself when it is a mudsc checkpoint; else the plain weights rebuilt with `spec` and saved
    under ``root/parents/`` with their source and its sha256 as provenance, one file per weights and
    spec (the same weights read with other options never overwrite a loaded parent)."""
    p = Path(path).expanduser()
    if spec is None:
        if "spec" in read_info(p):
            return p
        raise CheckpointError(f"{p.name} is a plain state dict without a mudsc spec: give its architecture "
                              "(architecture + weights)")
    model, _ = load_model(p, spec=spec)
    digest = sha256_file(p)
    options = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    out = Path(root).expanduser() / "parents" / f"{p.stem}.{digest[:12]}.{options[:8]}.safetensors"
    save_model(model, out, source=str(p), source_sha256=digest, task=spec["classes"])
    return out


def check_fits(info: dict[str, Any], data: Dataset, *, name: str = "parent") -> None:
    """Raise if a checkpoint's input geometry or classes do not fit the data set."""
    spec = info.get("spec", {})
    want = (spec.get("in_chans"), spec.get("img_size"))
    have = (data.in_chans, data.img_size)
    if None not in want and tuple(want) != have:
        raise DataError(f"{name} expects {want[0]}x{want[1]}x{want[1]} inputs, but {data.name} images are "
                        f"{have[0]}x{have[1]}x{have[1]}")
    if spec.get("num_classes") not in (None, data.num_classes):
        raise DataError(f"{name} was built for {spec['num_classes']} classes, {data.name} has {data.num_classes}")


def layer_counts(model: nn.Module) -> dict[str, int]:
    """How many leaf modules of each type (with parameters) a model has, in first-seen order."""
    counts: dict[str, int] = {}
    for m in model.modules():
        if not list(m.children()) and any(True for _ in m.parameters(recurse=False)):
            counts[type(m).__name__] = counts.get(type(m).__name__, 0) + 1
    return counts


def architecture_summary(model: nn.Module, info: dict[str, Any]) -> dict[str, Any]:
    """One row describing a parent's architecture: spec, layers by type, parameters, provenance."""
    spec = info.get("spec", {})
    return {
        "architecture": spec.get("arch", "?"),
        "options": ", ".join(f"{k}={v}" for k, v in spec.get("kwargs", {}).items()) or "-",
        "input": f"{spec.get('in_chans', '?')}x{spec.get('img_size', '?')}x{spec.get('img_size', '?')}",
        "embedding": spec.get("feat_dim"),
        "head": spec.get("head", "?"),
        "layers": ", ".join(f"{n} x{c}" for n, c in layer_counts(model).items()),
        "parameters": sum(t.numel() for t in model.parameters()),
        "seed": info.get("seed"),
        "epochs": info.get("epochs"),
    }
