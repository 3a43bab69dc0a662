"""Self-describing checkpoints.

A mudsc checkpoint is a ``.safetensors`` file whose metadata key ``mudsc`` holds JSON with the
model spec (architecture, keyword arguments, head, classes, input geometry) and provenance (data
set and normalisation, seed, measured accuracy, package version), so :func:`load_model` rebuilds the
exact model from the file alone. Plain state dicts (``.safetensors``, or ``.pt``/``.pth`` through
``torch.load(weights_only=True)``, bare or under a training loop's wrapper key, with DDP's ``module.``
or Lightning's ``model.`` prefix) load with an explicit spec. Nothing is ever unpickled.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mudsc import __version__
from mudsc.atomic import write_bytes
from mudsc.errors import CheckpointError, ShapeMismatchError
from mudsc.models.heads import BODY
from mudsc.models.multihead import UNMERGE, MultiHeadModel, build_multihead
from mudsc.models.registry import model_from_spec
from mudsc.unitgraph import trace

META_KEY = "mudsc"
WRAPPERS = ("state_dict", "model", "model_state_dict")  # where training loops put the weights in a .pt file
PREFIXES = ("", "module.", "model.", "model.module.", "module.model.", "_orig_mod.", "module._orig_mod.")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors and mudsc metadata (empty for plain files) of a checkpoint; never unpickles objects."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist")
    if p.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(p), framework="pt") as f:
                meta = f.metadata() or {}
                sd = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"cannot read {p}: not a valid safetensors file ({e})") from None
        try:
            info = json.loads(meta[META_KEY]) if META_KEY in meta else {}
        except json.JSONDecodeError:
            raise CheckpointError(f"{p}: the mudsc metadata is not valid JSON") from None
        return sd, info
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"cannot read {p} as a plain state dict ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
            "mudsc loads only tensors (weights_only=True), never pickled objects"
        ) from None
    return unwrap(obj, source=str(p)), {}


def unwrap(obj: Any, *, source: str = "checkpoint") -> dict[str, Tensor]:
    """The state dict inside a loaded ``.pt`` object: the object itself, or under one of
    :data:`WRAPPERS` as training loops save them (``torch.save({"state_dict": ..., "epoch": ...})``)."""
    for key in ("", *WRAPPERS):
        inner = obj.get(key) if key and isinstance(obj, dict) else obj
        if isinstance(inner, dict) and inner and all(isinstance(v, Tensor) for v in inner.values()):
            return dict(inner)
    found = f"a dict with keys {', '.join(map(repr, list(obj)[:6]))}" if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointError(f"{source} does not hold a state dict of tensors: tried the top level and the wrappers "
                          f"{', '.join(map(repr, WRAPPERS))}; found {found}")


def key_problems(missing: list[str], unexpected: list[str]) -> str:
    """``'2 missing keys (e.g. a, b); 1 unexpected keys (e.g. c)'``."""
    parts = [f"{len(keys)} {what} keys (e.g. {', '.join(keys[:3])})"
             for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
    return "; ".join(parts)


def _renamed(sd: dict[str, Tensor], strip: str, add: str) -> dict[str, Tensor]:
    return {add + (k[len(strip):] if k.startswith(strip) else k): v for k, v in sd.items()}


def fit_keys(model: nn.Module, sd: dict[str, Tensor], *, source: str = "checkpoint") -> dict[str, Tensor]:
    """`sd` renamed to `model`'s keys: a training wrapper's prefix (:data:`PREFIXES`) removed and, for a
    :class:`~mudsc.models.heads.Classifier` loading the user's bare network, ``body.`` added. Buffers
    the model fixes itself (class embeddings) are taken from it when the file lacks them. Raises,
    naming what was tried and the missing and unexpected keys of the closest fit, when none fits."""
    expected = model.state_dict()
    own = {k: v for k, v in expected.items() if k.endswith("class_embed")}
    tries = []
    for strip in PREFIXES:
        if strip and not any(k.startswith(strip) for k in sd):
            continue
        for add in ("", BODY):
            cand = {**own, **_renamed(sd, strip, add)}
            missing = [k for k in expected if k not in cand]
            unexpected = [k for k in cand if k not in expected]
            if not missing and not unexpected:
                return cand
            tries.append((len(missing) + len(unexpected), strip, add, missing, unexpected))
    _, strip, add, missing, unexpected = min(tries, key=lambda t: t[0])
    tried = ", ".join(repr(p) for p in PREFIXES if not p or any(k.startswith(p) for k in sd))
    raise CheckpointError(f"{source} does not fit the model: tried key prefixes {tried} (with and without "
                          f"{BODY!r}); the closest (removing {strip!r}) leaves {key_problems(missing, unexpected)}")


def read_info(path: str | os.PathLike) -> dict[str, Any]:
    """The mudsc metadata (spec, provenance) of a checkpoint from its header alone; ``{}`` for plain files."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist")
    if p.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"cannot read {p}: not a valid safetensors file ({e})") from None
    try:
        return json.loads(meta[META_KEY]) if META_KEY in meta else {}
    except json.JSONDecodeError:
        raise CheckpointError(f"{p}: the mudsc metadata is not valid JSON") from None


def check_state_dict(model: nn.Module, sd: dict[str, Tensor], *, source: str = "checkpoint") -> None:
    """Raise if `sd` does not fit `model`: missing/unexpected keys, shapes, NaN or Inf values."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        raise CheckpointError(f"{source} does not fit the model: {key_problems(missing, unexpected)}")
    for k, v in expected.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise ShapeMismatchError(
                f"{source}: tensor {k} has shape {tuple(sd[k].shape)}, the model expects {tuple(v.shape)}"
            )
    check_finite(sd, source=source)


def check_finite(sd: dict[str, Tensor], *, source: str = "checkpoint") -> None:
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{source} has NaN or Inf values in {len(bad)} tensors (e.g. {', '.join(bad[:3])})")


def save_model(model: nn.Module, path: str | os.PathLike, **provenance: Any) -> Path:
    """Write `model` (built by ``create_model``) with its spec and `provenance` in the metadata.

    Written atomically (an earlier file under `path` survives any failure); a full disk raises
    :class:`~mudsc.errors.DiskFullError`.
    """
    spec = getattr(model, "spec", None)
    if spec is None:
        raise CheckpointError("save_model: the model carries no spec; build it with mudsc.models.create_model")
    info = {"spec": spec, "version": __version__, **provenance}
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return write_bytes(Path(path).expanduser(), safetensors_bytes(sd, {META_KEY: json.dumps(info, sort_keys=True)}))


def safetensors_bytes(tensors: dict[str, Tensor], metadata: dict[str, str]) -> bytes:
    """The ``.safetensors`` file as bytes, for writing through Python: a full disk is then an ``OSError``
    (safetensors' own file writer reports it as an opaque ``SafetensorError``)."""
    from safetensors.torch import save

    return save(tensors, metadata=metadata)


def load_model(path: str | os.PathLike, *, spec: dict | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the exact model stored at `path`; plain state dicts need `spec` (see create_model).

    Returns the model in eval mode on CPU and the checkpoint's metadata (spec and provenance).
    """
    sd, info = read_state_dict(path)
    spec = spec or info.get("spec")
    if spec is None:
        raise CheckpointError(
            f"{path} is a plain state dict without a mudsc spec: give its architecture (--arch FILE.py:FUNCTION, "
            "package.module:FUNCTION, torchvision:NAME or timm:NAME), its task (--classes 0-4) and the data set "
            "(--dataset) it reads"
        )
    if info.get("kind") == "multihead":
        return load_multihead(sd, info), info
    model = model_from_spec(spec)
    if not info:  # a plain state dict: the training loop's wrapper prefix and the bare network's keys
        sd = fit_keys(model, sd, source=str(path))
    check_state_dict(model, sd, source=str(path))
    model.load_state_dict(sd)
    model.eval()
    return model, {**info, "spec": spec}


def load_multihead(sd: dict[str, Tensor], info: dict[str, Any]) -> MultiHeadModel:
    """Rebuild a multi-head model from a checkpoint written with :func:`multihead_state`."""
    specs, cut = info.get("specs"), info.get("cut")
    if not specs or not cut:
        raise CheckpointError("multi-head checkpoint lacks its parents' specs or its cut")
    parents = [model_from_spec(s).eval() for s in specs]
    graph = trace(parents[0])
    trunk = {k[len("trunk."):]: v for k, v in sd.items() if k.startswith("trunk.")}
    heads = []
    for i, p in enumerate(parents):
        own = {k[len(f"head{i}."):]: v for k, v in sd.items() if k.startswith(f"head{i}.")}
        full = {**own, **trunk}
        check_state_dict(p, {k: v for k, v in full.items() if k != UNMERGE}, source=f"multi-head checkpoint, head {i}")
        heads.append(full)
    return build_multihead(parents, graph, cut, heads[0] | trunk, heads)
