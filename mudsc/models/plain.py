"""Which spec each parent file loads with: a mudsc checkpoint's own, else the external spec built
from the command line's (or the app's) architecture, task and preprocessing options."""
from __future__ import annotations

from typing import Any

from mudsc.errors import CheckpointError, ConfigError
from mudsc.models.checkpoint import read_info
from mudsc.models.external import external_spec


def plain_specs(paths: list[str], data: dict[str, Any], *, arch: str | None, classes: list[tuple[int, ...]] | None,
                kwargs: dict[str, Any] | None = None, mean: list[list[float] | None] | None = None,
                std: list[list[float] | None] | None = None, img_size: list[int | None] | None = None,
                class_embeddings: str | None = None) -> list[dict[str, Any] | None]:
    """Per parent file, the spec to load it with: None for a self-describing mudsc checkpoint (its
    own spec wins), else the external spec of `arch` with the parent's task (``classes[i]``) and its
    own preprocessing (``mean[i]``, ``std[i]``, ``img_size[i]``)."""
    n = len(paths)
    out: list[dict[str, Any] | None] = []
    for i, path in enumerate(paths):
        if "spec" in read_info(path):
            out.append(None)
            continue
        if not arch:
            raise CheckpointError(f"{path} is a plain state dict without a mudsc spec: give its architecture "
                                  "(--arch FILE.py:FUNCTION, package.module:FUNCTION, torchvision:NAME or timm:NAME) "
                                  "and each parent's task (--classes 0-4 5-9)")
        if not classes or len(classes) != n:
            raise ConfigError(f"{path} is a plain state dict: give each parent's task with --classes, one per "
                              f"parent ({n} parents, {len(classes or [])} tasks given)")
        pick = lambda opts: None if not opts else opts[i] if len(opts) == n else opts[0]  # noqa: E731
        out.append(external_spec(arch, classes=classes[i], data=data, kwargs=kwargs, mean=pick(mean), std=pick(std),
                                 img_size=pick(img_size), class_embeddings=class_embeddings))
    return out
