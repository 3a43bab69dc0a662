"""The fixed evaluation and BatchNorm-calibration subsets a landscape is measured on.

The metrics themselves (per-task and joint loss and accuracy, ZipIt! / MuDSC definitions) are the
merge engine's: :func:`mudsc.evaluate.metric_sums` over a :class:`mudsc.evaluate.TaskLayout`.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from mudsc.data import task_label
from mudsc.errors import ConfigError, DataError


@dataclass(frozen=True)
class EvalSet:
    """Fixed evaluation examples (all tasks, stratified) and BatchNorm calibration images, on one device.

    The same examples serve every grid point and every plane, so surfaces are comparable.
    """

    x: Tensor
    y: Tensor
    tasks: tuple[tuple[int, ...], ...]
    calib_x: Tensor
    batch_size: int
    calib_batch_size: int
    fingerprint: str
    info: dict

    @classmethod
    def from_tensors(cls, x: Tensor, y: Tensor, tasks: Sequence[Sequence[int]], *, calib_x: Tensor | None = None,
                     batch_size: int = 256, calib_batch_size: int | None = None,
                     device: torch.device | str = "cpu", info: dict | None = None) -> "EvalSet":
        """Wrap given tensors; the fingerprint is sha256 over their bytes and the settings."""
        tasks = tuple(tuple(sorted(int(c) for c in t)) for t in tasks)
        if batch_size <= 0:
            raise ConfigError(f"evaluation batch size must be positive, got {batch_size}")
        if len(x) != len(y) or len(y) == 0:
            raise DataError(f"evaluation set needs matching non-empty x and y (got {len(x)} and {len(y)})")
        known = {c for t in tasks for c in t}
        stray = sorted(set(y.tolist()) - known)
        if stray:
            raise DataError(f"evaluation labels {stray[:5]} belong to no task {[list(t) for t in tasks]}")
        calib_x = x[:0] if calib_x is None else calib_x
        cbs = min(calib_batch_size or batch_size, max(len(calib_x), 1))
        h = hashlib.sha256()
        for t in (x, y, calib_x):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        h.update(repr((tasks, batch_size, cbs)).encode())
        return cls(x.to(device), y.to(device), tasks, calib_x.to(device), batch_size, cbs, h.hexdigest(),
                   dict(info or {}, n_eval=len(y), n_calib=len(calib_x)))

    @property
    def device(self) -> torch.device:
        return self.x.device

    @property
    def task_names(self) -> list[str]:
        """``['task 0-4', 'task 5-9']``: each task as the studio's tables name it."""
        return [f"task {task_label(t)}" for t in self.tasks]

    def batches(self) -> list[tuple[Tensor, Tensor]]:
        return [(self.x[i:i + self.batch_size], self.y[i:i + self.batch_size])
                for i in range(0, len(self.y), self.batch_size)]

    def calib_batches(self) -> list[Tensor]:
        """Equal-size calibration batches (the remainder is dropped, so every batch weighs the same)."""
        n = len(self.calib_x) - len(self.calib_x) % self.calib_batch_size
        return [self.calib_x[i:i + self.calib_batch_size] for i in range(0, n, self.calib_batch_size)]


def _stratified(y: Tensor, classes: Sequence[int], n: int, generator: torch.Generator) -> Tensor:
    """Indices of up to `n` examples of `classes`, as equal per class as the data allow."""
    pools = [torch.nonzero(y == c).squeeze(1) for c in classes]
    pools = [p[torch.randperm(len(p), generator=generator)] for p in pools]
    take = [0] * len(pools)
    left = n
    while left > 0 and any(t < len(p) for t, p in zip(take, pools)):
        for i, p in enumerate(pools):
            if left and take[i] < len(p):
                take[i] += 1
                left -= 1
    return torch.cat([p[:t] for p, t in zip(pools, take)])


def make_eval_set(dataset, tasks: Sequence[Sequence[int]], *, per_task: int = 500, calib_size: int = 256,
                  batch_size: int = 512, calib_batch_size: int = 256, generator: torch.Generator,
                  device: torch.device | str = "cpu") -> EvalSet:
    """Class-stratified `per_task` examples per task from ``dataset.eval``, and `calib_size`
    stratified training images (all tasks' classes, no augmentation) for BatchNorm calibration."""
    if per_task <= 0:
        raise ConfigError(f"per-task evaluation size must be positive, got {per_task}")
    if calib_size < 0:
        raise ConfigError(f"calibration size must be non-negative, got {calib_size}")
    tasks = [tuple(sorted(int(c) for c in t)) for t in tasks]
    idx = []
    for k, t in enumerate(tasks):
        sel = _stratified(dataset.eval.y, t, per_task, generator)
        if len(sel) == 0:
            raise DataError(f"task {k} (classes {list(t)}) has no evaluation examples in {dataset.name!r}")
        idx.append(sel)
    idx = torch.cat(idx)
    union = [c for t in tasks for c in t]
    cidx = _stratified(dataset.train.y, union, calib_size, generator) if calib_size else torch.zeros(0, dtype=torch.long)
    cidx = cidx[torch.randperm(len(cidx), generator=generator)]  # mixed batches, like a shuffled loader
    info = {"dataset": dataset.name, "dataset_sha256": dataset.fingerprint, "per_task": per_task,
            "calib_size": int(len(cidx))}
    return EvalSet.from_tensors(dataset.eval.x[idx], dataset.eval.y[idx], tasks, calib_x=dataset.train.x[cidx],
                                batch_size=batch_size, calib_batch_size=calib_batch_size, device=device,
                                info=info)
