"""Which spec each parent file loads with: a mudsc checkpoint's own, else the external spec built
from the command line's (or the app's) architecture, task and preprocessing options."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mudsc.errors import CheckpointError, ConfigError
from mudsc.models.checkpoint import read_info, sha256_file
from mudsc.models.external import code_file, external_spec


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


def file_record(path: str | Path, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """A manifest's entry for an input checkpoint: its resolved path and sha256 and, for a plain state
    dict, the spec it loads with (architecture, options, task, preprocessing) and the sha256 of its
    model code (the ``FILE.py``, or the module's source file)."""
    entry: dict[str, Any] = {"path": str(Path(path).resolve()), "sha256": sha256_file(path)}
    if spec is not None:
        entry["spec"] = spec
        code = code_file(spec["arch"])
        if code is not None and code.is_file():
            entry["arch_sha256"] = sha256_file(code)
    return entry


def check_record(entry: dict[str, Any], what: str) -> str:
    """The path of a manifest entry written by :func:`file_record`, once the file, its model code and
    its class embeddings are the ones the manifest was written with."""
    path = entry["path"]
    if not Path(path).is_file():
        raise CheckpointError(f"manifest {what} {path} does not exist")
    if sha256_file(path) != entry["sha256"]:
        raise CheckpointError(f"{what} {path} changed since the manifest was written (sha256 differs)")
    spec = entry.get("spec") or {}
    if "arch_sha256" in entry:
        code = code_file(spec["arch"])
        if code is None or not code.is_file() or sha256_file(code) != entry["arch_sha256"]:
            raise CheckpointError(f"model code {code or spec['arch']} is missing or changed since the manifest "
                                  "was written")
    embed = spec.get("class_embeddings")
    if embed and sha256_file(embed["path"]) != embed["sha256"]:
        raise CheckpointError(f"class embeddings {embed['path']} changed since the manifest was written")
    return path
