"""LandscapeResult: metric grids over a plane, the models placed on it, and its ``.npz`` file form."""
from __future__ import annotations

import json
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from landscape.grid import BN_LABELS
from mudsc.atomic import atomic_path
from mudsc.errors import CheckpointError, ConfigError

_ARRAYS = ("xs", "ys", "task_loss", "task_acc", "joint_loss", "joint_acc", "done", "model_coords",
           "model_distance", "model_task_loss", "model_task_acc", "model_joint_loss", "model_joint_acc")
_STRINGS = ("task_names", "model_labels", "model_roles")


@dataclass
class LandscapeResult:
    """Per-task and joint loss/accuracy on an [ny, nx] grid of plane coordinates.

    Grids are indexed [..., iy, ix]; points not computed yet are NaN and ``done`` is False there,
    so a partly finished (progressive, cancelled) result is still a valid result. Coordinates are in
    parameter-space L2 distance units.
    """

    xs: np.ndarray                  # [nx]
    ys: np.ndarray                  # [ny]
    task_names: list[str]
    task_loss: np.ndarray           # [K, ny, nx]
    task_acc: np.ndarray            # [K, ny, nx]
    joint_loss: np.ndarray          # [ny, nx]
    joint_acc: np.ndarray           # [ny, nx]
    done: np.ndarray                # [ny, nx] bool
    model_labels: list[str]
    model_roles: list[str]
    model_coords: np.ndarray        # [m, 2]
    model_distance: np.ndarray      # [m] distance of each model to the plane
    model_task_loss: np.ndarray     # [m, K] metrics of the models themselves
    model_task_acc: np.ndarray      # [m, K]
    model_joint_loss: np.ndarray    # [m]
    model_joint_acc: np.ndarray     # [m]
    bn_mode: str
    settings: dict = field(default_factory=dict)
    fingerprint: str = ""

    @classmethod
    def empty(cls, xs, ys, task_names: Sequence[str], labels: Sequence[str], roles: Sequence[str], coords,
              distance, *, bn_mode: str, settings: dict, fingerprint: str = "") -> "LandscapeResult":
        k, ny, nx, m = len(task_names), len(ys), len(xs), len(labels)
        nan = lambda *s: np.full(s, np.nan)  # noqa: E731
        return cls(np.asarray(xs, float), np.asarray(ys, float), list(task_names), nan(k, ny, nx), nan(k, ny, nx),
                   nan(ny, nx), nan(ny, nx), np.zeros((ny, nx), bool), list(labels), list(roles),
                   np.asarray(coords, float).reshape(m, 2), np.asarray(distance, float).reshape(m),
                   nan(m, k), nan(m, k), nan(m), nan(m), bn_mode, dict(settings), fingerprint)

    # ------------------------------------------------------------------ filling in

    def update(self, flat_idx: torch.Tensor | np.ndarray, means: dict) -> None:
        """Write metrics of grid points given by flat indices (row-major over [ny, nx])."""
        idx = np.asarray(flat_idx, dtype=np.int64)
        iy, ix = np.divmod(idx, len(self.xs))
        tl, ta = np.asarray(means["task_loss"]), np.asarray(means["task_acc"])
        self.task_loss[:, iy, ix] = tl.T
        self.task_acc[:, iy, ix] = ta.T
        self.joint_loss[iy, ix] = np.asarray(means["joint_loss"])
        self.joint_acc[iy, ix] = np.asarray(means["joint_acc"])
        self.done[iy, ix] = True

    def points(self, flat_idx: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
        """The metrics of grid points given by flat indices, as :meth:`update` takes them."""
        iy, ix = np.divmod(np.asarray(flat_idx, dtype=np.int64), len(self.xs))
        return {"task_loss": self.task_loss[:, iy, ix].T, "task_acc": self.task_acc[:, iy, ix].T,
                "joint_loss": self.joint_loss[iy, ix], "joint_acc": self.joint_acc[iy, ix]}

    def set_model_metrics(self, i: int, means: dict) -> None:
        self.model_task_loss[i] = np.asarray(means["task_loss"])
        self.model_task_acc[i] = np.asarray(means["task_acc"])
        self.model_joint_loss[i] = float(means["joint_loss"])
        self.model_joint_acc[i] = float(means["joint_acc"])

    # ------------------------------------------------------------------ views

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    @property
    def bn_label(self) -> str:
        return BN_LABELS.get(self.bn_mode, self.bn_mode)

    @property
    def coords(self) -> np.ndarray:
        """[ny * nx, 2] (x, y) of every grid point, row-major, as the flat indices use them."""
        gx, gy = np.meshgrid(self.xs, self.ys)
        return np.stack([gx.reshape(-1), gy.reshape(-1)], 1)

    @property
    def mean_loss(self) -> np.ndarray:
        """[ny, nx]: mean of the task losses (MuDSC's "Per-Task Avg" panel)."""
        return self.task_loss.mean(0)

    @property
    def mean_acc(self) -> np.ndarray:
        return self.task_acc.mean(0)

    def overlap(self, thresholds: float | Sequence[float]) -> tuple[np.ndarray, float]:
        """[ny, nx] bool where every task's loss is under its threshold, and that region's share of
        the computed points."""
        th = np.broadcast_to(np.asarray(thresholds, float), (len(self.task_names),))
        if np.any(th <= 0):
            raise ConfigError(f"overlap thresholds must be positive, got {list(th)}")
        with np.errstate(invalid="ignore"):
            mask = np.all(self.task_loss < th[:, None, None], axis=0) & self.done
        n = int(self.done.sum())
        return mask, (float(mask.sum()) / n if n else 0.0)

    # ------------------------------------------------------------------ files

    def save(self, path: str | os.PathLike) -> Path:
        """Write an ``.npz`` (no pickles) atomically (:func:`mudsc.atomic.atomic_path`): readers never see
        half a file, and a full disk raises :class:`~mudsc.errors.DiskFullError`."""
        arrays = {k: np.asarray(getattr(self, k)) for k in _ARRAYS}
        arrays.update({k: np.asarray(getattr(self, k), dtype=np.str_) for k in _STRINGS})
        arrays["bn_mode"] = np.asarray(self.bn_mode)
        arrays["settings"] = np.asarray(json.dumps(self.settings, sort_keys=True))
        arrays["fingerprint"] = np.asarray(self.fingerprint)
        # uncompressed size: an upper bound on what the write needs
        with atomic_path(path, size=sum(a.nbytes for a in arrays.values())) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LandscapeResult":
        try:
            with np.load(path, allow_pickle=False) as f:
                missing = [k for k in _ARRAYS + _STRINGS + ("bn_mode", "settings") if k not in f.files]
                if missing:
                    raise CheckpointError(f"{path} is not a landscape result (lacks {missing[:3]})")
                kw = {k: f[k] for k in _ARRAYS}
                kw.update({k: [str(s) for s in f[k].reshape(-1)] for k in _STRINGS})
                kw["done"] = kw["done"].astype(bool)
                kw["bn_mode"] = str(f["bn_mode"])
                kw["settings"] = json.loads(str(f["settings"]))
                kw["fingerprint"] = str(f["fingerprint"]) if "fingerprint" in f.files else ""
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # what a truncated file raises
            raise CheckpointError(f"cannot read landscape result {path}: {e}") from None
        return cls(**kw)
