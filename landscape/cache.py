"""On-disk cache of landscape results under a content fingerprint.

The key is sha256 over the bytes of every model tensor, the evaluation data's fingerprint, the
plane and grid specifications and every setting that changes the numbers (never Python's
``hash``, which for tensors is their identity). Partial results are stored under the same key after
every chunk, each write atomic, so an interrupted or killed job resumes where it stopped. One writer
per key at a time, across processes (:meth:`LandscapeCache.lock`); in a torchrun job the other ranks
keep their finished points in part files beside the entry (:meth:`LandscapeCache.part_path`), which
the next writer of the key absorbs.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, ContextManager, Mapping

import numpy as np
import torch
from torch import Tensor

from landscape.result import LandscapeResult
from mudsc.atomic import file_lock
from mudsc.errors import CheckpointError

# Bump when the engine's numbers change for the same inputs, so old cache entries stop matching.
ENGINE_VERSION = "landscape-1"


def default_cache_dir() -> Path:
    """``$MUDSC_HOME/landscape``, ``$MUDSC_HOME`` defaulting to ``~/.cache/mudsc``."""
    return Path(os.environ.get("MUDSC_HOME", "~/.cache/mudsc")).expanduser() / "landscape"


def _update_tensor(h, t: Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def state_dict_fingerprint(sd: Mapping[str, Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a state dict's tensors (sorted by name)."""
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        _update_tensor(h, sd[k])
    return h.hexdigest()


def landscape_key(models: Mapping[str, Mapping[str, Tensor]], *, data_fingerprint: str, spec: dict) -> str:
    """sha256 of (engine version, labelled model fingerprints, data fingerprint, JSON spec)."""
    h = hashlib.sha256(ENGINE_VERSION.encode())
    for label, sd in models.items():
        h.update(label.encode())
        h.update(state_dict_fingerprint(sd).encode())
    h.update(data_fingerprint.encode())
    h.update(json.dumps(spec, sort_keys=True, default=str).encode())
    return h.hexdigest()


class LandscapeCache:
    """Results as ``<dir>/<key>.npz``; an unreadable (damaged) entry counts as a miss and is rewritten."""

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        self.dir = Path(directory).expanduser() if directory is not None else default_cache_dir()

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.npz"

    def load(self, key: str) -> LandscapeResult | None:
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            res = LandscapeResult.load(p)
        except CheckpointError:
            return None
        return res if res.fingerprint == key else None

    def lock(self, key: str, *, should_stop: Callable[[], bool] | None = None) -> ContextManager[bool]:
        """The entry's writer lock (see :func:`mudsc.atomic.file_lock`): a second process computing the
        same landscape waits, then resumes from (or returns) the first one's result."""
        return file_lock(self.path(key), should_stop=should_stop)

    def save(self, key: str, result: LandscapeResult) -> Path:
        result.fingerprint = key
        return result.save(self.path(key))

    def part_path(self, key: str, rank: int) -> Path:
        """Where rank `rank` of a torchrun job keeps the grid points it finished."""
        return self.dir / f"{key}.part{rank}.npz"

    def absorb_parts(self, key: str, result: LandscapeResult) -> int:
        """Copy the finished points of every readable part file of `key` into `result`, save it as the
        entry, delete the parts; returns the points gained. Call while holding :meth:`lock`."""
        parts = sorted(self.dir.glob(f"{key}.part*.npz"))
        before = int(result.done.sum())
        for p in parts:
            try:
                part = LandscapeResult.load(p)
            except CheckpointError:
                continue
            if part.fingerprint == key and part.done.shape == result.done.shape:
                idx = np.flatnonzero(part.done & ~result.done)
                result.update(idx, part.points(idx))
        if parts:
            self.save(key, result)
            for p in parts:
                p.unlink(missing_ok=True)
        return int(result.done.sum()) - before
