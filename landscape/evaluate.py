"""Multi-task metrics from one forward pass, and the fixed evaluation / calibration subsets.

Metric definitions follow ZipIt! (Stoica et al., ICLR 2024, Sec. 5) and MuDSC (Xu et al., CVPR
2024), ``evaluate_*_alltasks``:
  * per task (task known): softmax over the task's own classes; loss = cross-entropy there,
    accuracy = argmax there;
  * joint (task unknown), single head: softmax / argmax over the union of all tasks' classes;
  * joint, multi-head (a model returning one logit tensor per head): softmax within each head,
    prediction = argmax over all heads' probabilities; loss = -log of the equal-weight mixture of
    the heads' probabilities of the true class (a proper distribution over the union).

Everything here is a pure tensor function of (logits, labels, :class:`TaskLayout`) and works under
``torch.func.vmap``, so the grid engine and the merge engine share it.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from mudsc.errors import ConfigError, DataError

Logits = Tensor | Sequence[Tensor]


@dataclass(frozen=True)
class TaskLayout:
    """Which output columns belong to which task.

    `tasks`: class ids per task (disjoint). `heads`: class id of every output column, one tuple per
    head (a single-head model has one). Built by :meth:`from_outputs`.
    """

    tasks: tuple[tuple[int, ...], ...]
    heads: tuple[tuple[int, ...], ...]
    task_head: tuple[int, ...]                    # head that scores each task
    task_cols: tuple[Tensor, ...]                 # columns of each task's classes in its head
    task_of: Tensor                               # [max_class + 1] task id per class, -1 if none
    local_of: Tensor                              # [max_class + 1] position of a class within its task
    union_cols: Tensor = field(repr=False)        # single head: columns of the union of the tasks
    union_classes: Tensor = field(repr=False)     # class id of each union column (multi-head: all heads)

    @property
    def multi_head(self) -> bool:
        return len(self.heads) > 1

    @classmethod
    def from_outputs(cls, tasks: Sequence[Sequence[int]],
                     output_classes: Sequence[int] | Sequence[Sequence[int]]) -> "TaskLayout":
        """`output_classes`: one class id per output column, or one such tuple per head."""
        tasks = tuple(tuple(int(c) for c in t) for t in tasks)
        if not tasks or any(not t for t in tasks):
            raise ConfigError("task layout: every task needs at least one class")
        flat = [c for t in tasks for c in t]
        if len(set(flat)) != len(flat):
            raise ConfigError(f"task layout: tasks {tasks} overlap")
        oc = list(output_classes)
        heads = (tuple(tuple(int(c) for c in h) for h in oc) if oc and not isinstance(oc[0], (int, np.integer))
                 else (tuple(int(c) for c in oc),))
        task_head, task_cols = [], []
        for k, t in enumerate(tasks):
            hits = [h for h, cols in enumerate(heads) if set(t) <= set(cols)]
            if not hits:
                raise ConfigError(f"task {k} (classes {list(t)}) is not scored by any one output head "
                                  f"(heads cover {[list(h) for h in heads]})")
            h = hits[0]
            task_head.append(h)
            task_cols.append(torch.tensor([heads[h].index(c) for c in t]))
        size = max(flat + [c for h in heads for c in h]) + 1
        task_of = torch.full((size,), -1, dtype=torch.long)
        local_of = torch.full((size,), -1, dtype=torch.long)
        for k, t in enumerate(tasks):
            for i, c in enumerate(t):
                task_of[c], local_of[c] = k, i
        if len(heads) == 1:
            union_cols = torch.tensor([i for i, c in enumerate(heads[0]) if c in set(flat)])
            union_classes = torch.tensor(heads[0])[union_cols]
        else:
            union_cols = torch.arange(sum(len(h) for h in heads))
            union_classes = torch.tensor([c for h in heads for c in h])
        return cls(tasks, heads, tuple(task_head), tuple(task_cols), task_of, local_of, union_cols, union_classes)

    def to(self, device: torch.device | str) -> "TaskLayout":
        mv = lambda t: t.to(device)  # noqa: E731
        return TaskLayout(self.tasks, self.heads, self.task_head, tuple(mv(c) for c in self.task_cols),
                          mv(self.task_of), mv(self.local_of), mv(self.union_cols), mv(self.union_classes))


def metric_sums(logits: Logits, labels: Tensor, layout: TaskLayout) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """[b, C] (or per-head [b, C_h]), [b] -> per-task loss sum [K], per-task correct [K], joint loss sum [], joint correct [].

    Sums (float64) so batches add up; divide by the per-task counts for means. Vmappable over the
    logits (labels and layout unbatched).
    """
    heads = [logits] if isinstance(logits, Tensor) else list(logits)
    if len(heads) != len(layout.heads):
        raise ConfigError(f"model returned {len(heads)} output heads, layout expects {len(layout.heads)}")
    heads = [h.float() for h in heads]
    task_ids = layout.task_of[labels]
    local = layout.local_of[labels]
    loss_sum, correct = [], []
    for k in range(len(layout.tasks)):
        idx = (task_ids == k).nonzero().squeeze(1)
        lg = heads[layout.task_head[k]].index_select(-2, idx).index_select(-1, layout.task_cols[k])
        tgt = local.index_select(0, idx)
        logp = lg.log_softmax(-1)
        loss_sum.append(-logp.gather(-1, tgt[:, None]).sum().double())
        correct.append((lg.argmax(-1) == tgt).sum().double())
    if len(heads) == 1:
        lj = heads[0].index_select(-1, layout.union_cols).log_softmax(-1)
    else:
        lj = torch.cat([h.log_softmax(-1) for h in heads], -1) - math.log(len(heads))
    match = layout.union_classes[None, :] == labels[:, None]
    joint_logp = lj.masked_fill(~match, float("-inf")).logsumexp(-1)
    joint_pred = layout.union_classes[lj.argmax(-1)]
    return (torch.stack(loss_sum), torch.stack(correct), -joint_logp.sum().double(),
            (joint_pred == labels).sum().double())


def task_name(classes: Sequence[int]) -> str:
    """A task's display name from its classes: 'classes 0-4' or 'classes 1,3,5'."""
    c = list(classes)
    if len(c) > 2 and c == list(range(c[0], c[-1] + 1)):
        return f"classes {c[0]}-{c[-1]}"
    return "classes " + ",".join(map(str, c))


def task_counts(labels: Tensor, layout: TaskLayout) -> Tensor:
    """[n] -> [K]: examples per task."""
    return torch.bincount(layout.task_of[labels], minlength=len(layout.tasks))


def multitask_metrics(logits: Logits, labels: Tensor, layout: TaskLayout) -> dict[str, Tensor]:
    """[b, C] (or per-head), [b] -> {'task_loss' [K], 'task_acc' [K], 'joint_loss' [], 'joint_acc' []}: means."""
    if labels.numel() and (labels.max() >= len(layout.task_of) or (layout.task_of[labels] < 0).any()):
        raise DataError(f"labels include classes outside the tasks {[list(t) for t in layout.tasks]}")
    tl, tc, jl, jc = metric_sums(logits, labels, layout)
    n = task_counts(labels, layout).double().clamp_min(1)
    return {"task_loss": tl / n, "task_acc": tc / n,
            "joint_loss": jl / max(len(labels), 1), "joint_acc": jc / max(len(labels), 1)}


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
