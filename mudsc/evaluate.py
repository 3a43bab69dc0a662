"""Multi-task loss and accuracy of classifiers on class-subset tasks: one metric core for the merge
engine and the loss landscape.

Definitions follow ZipIt! (Stoica et al., ICLR 2024, Sec. 5) and MuDSC (Xu et al., CVPR 2024,
``evaluate_*_alltasks``):
  * per task (task known): softmax over the task's own classes; loss = cross-entropy there,
    accuracy = argmax there;
  * joint (task unknown), single head: softmax / argmax over the union of all tasks' classes;
  * joint, multi-head (partial zipping or the ensemble: one logit tensor per task, head k scoring
    task k): softmax over each task's classes within its head, prediction = argmax over all heads'
    probabilities; loss = -log of the equal-weight mixture of the heads' probabilities of the true
    class (a proper distribution over the union).

:func:`metric_sums` is the core: a pure tensor function of (logits, labels, :class:`TaskLayout`)
that works under ``torch.func.vmap`` (the landscape's grid evaluates many points at once);
:func:`multitask_metrics` is the engine's per-split report built on it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from mudsc.data import Split, batches
from mudsc.device import default_device
from mudsc.errors import ConfigError, DataError

Logits = Tensor | Sequence[Tensor]
Sums = tuple[Tensor, Tensor, Tensor, Tensor]


def columns(output_classes: tuple[int, ...], classes: tuple[int, ...]) -> list[int]:
    """Output-column index of each class in `classes`."""
    pos = {c: i for i, c in enumerate(output_classes)}
    return [pos[c] for c in classes]


@torch.no_grad()
def predict(model: nn.Module, split: Split, *, batch_size: int = 500, device=None,
            progress: Callable[[int, int], None] | None = None) -> Tensor | list[Tensor]:
    """Logits of `model` on every example of `split` (a list for multi-head models), on CPU.
    `progress(done_examples, total)` after each batch."""
    device = default_device(device)
    model = model.to(device).eval()
    outs: list = []
    for x, _ in batches(split, batch_size, progress=progress):
        out = model(x.to(device))
        outs.append([o.float().cpu() for o in out] if isinstance(out, (list, tuple)) else out.float().cpu())
    if outs and isinstance(outs[0], list):
        return [torch.cat([o[i] for o in outs]) for i in range(len(outs[0]))]
    return torch.cat(outs) if outs else torch.empty(0)


@dataclass(frozen=True)
class TaskLayout:
    """Which output columns belong to which task.

    `tasks`: class ids per task; two tasks are disjoint or identical (a same-task merge scores one
    task once per parent). `heads`: class id of every output column, one tuple per head (a
    single-head model has one). Built by :meth:`from_outputs`.
    """

    tasks: tuple[tuple[int, ...], ...]
    heads: tuple[tuple[int, ...], ...]
    task_head: tuple[int, ...]                    # head that scores each task
    task_cols: tuple[Tensor, ...]                 # columns of each task's classes in its head
    local: Tensor                                 # [K, max_class + 1] position of a class in task k, -1 if absent
    union_cols: Tensor = field(repr=False)        # single head: columns of the union of the tasks
    union_classes: Tensor = field(repr=False)     # class id of each joint column (multi-head: tasks in turn)

    @classmethod
    def from_outputs(cls, tasks: Sequence[Sequence[int]],
                     output_classes: Sequence[int] | Sequence[Sequence[int]]) -> "TaskLayout":
        """`output_classes`: one class id per output column, or one such tuple per head (head k scores task k)."""
        tasks = tuple(tuple(int(c) for c in t) for t in tasks)
        if not tasks or any(not t for t in tasks):
            raise ConfigError("task layout: every task needs at least one class")
        for i, a in enumerate(tasks):
            if len(set(a)) != len(a) or any(set(a) & set(b) and set(a) != set(b) for b in tasks[i + 1:]):
                raise ConfigError(f"task layout: tasks {tasks} overlap")
        oc = list(output_classes)
        heads = (tuple(tuple(int(c) for c in h) for h in oc) if oc and not isinstance(oc[0], (int, np.integer))
                 else (tuple(int(c) for c in oc),))
        if len(heads) > 1 and len(heads) != len(tasks):
            raise ConfigError(f"a model with {len(heads)} output heads scores {len(heads)} tasks, one per head; "
                              f"got {len(tasks)} tasks")
        task_head = tuple(k if len(heads) > 1 else 0 for k in range(len(tasks)))
        task_cols = []
        for k, (t, h) in enumerate(zip(tasks, task_head)):
            if not set(t) <= set(heads[h]):
                raise ConfigError(f"task {k} (classes {list(t)}) is not scored by output head {h} "
                                  f"(heads cover {[list(c) for c in heads]})")
            task_cols.append(torch.tensor([heads[h].index(c) for c in t]))
        flat = {c for t in tasks for c in t}
        local = torch.full((len(tasks), max(flat | {c for h in heads for c in h}) + 1), -1, dtype=torch.long)
        for k, t in enumerate(tasks):
            local[k, list(t)] = torch.arange(len(t))
        if len(heads) == 1:
            union_cols = torch.tensor([i for i, c in enumerate(heads[0]) if c in flat])
            union_classes = torch.tensor(heads[0])[union_cols]
        else:
            union_cols = torch.arange(sum(len(t) for t in tasks))
            union_classes = torch.tensor([c for t in tasks for c in t])
        return cls(tasks, heads, task_head, tuple(task_cols), local, union_cols, union_classes)

    def to(self, device: torch.device | str) -> "TaskLayout":
        mv = lambda t: t.to(device)  # noqa: E731
        return TaskLayout(self.tasks, self.heads, self.task_head, tuple(mv(c) for c in self.task_cols),
                          mv(self.local), mv(self.union_cols), mv(self.union_classes))

    def covers(self, labels: Tensor) -> Tensor:
        """[n] -> [n] bool: the label is a class of some task."""
        inside = labels < self.local.shape[1]
        return inside & (self.local[:, labels.clamp_max(self.local.shape[1] - 1)] >= 0).any(0)


def metric_sums(logits: Logits, labels: Tensor, layout: TaskLayout) -> Sums:
    """[b, C] (or per-head [b, C_h]), [b] -> per-task loss sum [K], per-task correct [K], joint loss sum [], joint correct [].

    Sums (float64) so batches add up; :func:`means` turns them into means. Every label must be a
    class of some task (:meth:`TaskLayout.covers`). Vmappable over the logits (labels and layout
    unbatched).
    """
    heads = [logits] if isinstance(logits, Tensor) else list(logits)
    if len(heads) != len(layout.heads):
        raise ConfigError(f"model returned {len(heads)} output heads, layout expects {len(layout.heads)}")
    heads = [h.float() for h in heads]
    loss_sum, correct = [], []
    for k in range(len(layout.tasks)):
        pos = layout.local[k][labels]
        idx = (pos >= 0).nonzero().squeeze(1)
        tgt = pos.index_select(0, idx)
        lg = heads[layout.task_head[k]].index_select(-2, idx).index_select(-1, layout.task_cols[k])
        logp = lg.log_softmax(-1)
        loss_sum.append(-logp.gather(-1, tgt[:, None]).sum().double())
        correct.append((lg.argmax(-1) == tgt).sum().double())
    if len(heads) == 1:
        lj = heads[0].index_select(-1, layout.union_cols).log_softmax(-1)
    else:
        lj = torch.cat([heads[h].index_select(-1, cols).log_softmax(-1)
                        for h, cols in zip(layout.task_head, layout.task_cols)], -1) - math.log(len(heads))
    match = layout.union_classes[None, :] == labels[:, None]
    joint_logp = lj.masked_fill(~match, float("-inf")).logsumexp(-1)
    joint_pred = layout.union_classes[lj.argmax(-1)]
    return (torch.stack(loss_sum), torch.stack(correct), -joint_logp.sum().double(),
            (joint_pred == labels).sum().double())


def task_counts(labels: Tensor, layout: TaskLayout) -> Tensor:
    """[n] -> [K]: examples per task."""
    return (layout.local[:, labels] >= 0).sum(1)


def means(sums: Sums, counts: Tensor, n: int) -> dict[str, Tensor]:
    """:func:`metric_sums` (any leading dims) over `counts` [K] examples per task and `n` in all ->
    {'task_loss' [..., K], 'task_acc' [..., K], 'joint_loss' [...], 'joint_acc' [...]}; NaN where
    there are no examples."""
    tl, tc, jl, jc = sums
    counts = counts.to(tl)
    return {"task_loss": tl / counts, "task_acc": tc / counts, "joint_loss": jl / n, "joint_acc": jc / n}


def metric_means(logits: Logits, labels: Tensor, layout: TaskLayout) -> dict[str, Tensor]:
    """[b, C] (or per-head), [b] -> :func:`means` of one batch; labels outside the tasks are refused."""
    if labels.numel() and not layout.covers(labels).all():
        raise DataError(f"labels include classes outside the tasks {[list(t) for t in layout.tasks]}")
    return means(metric_sums(logits, labels, layout), task_counts(labels, layout), len(labels))


@dataclass(frozen=True)
class TaskMetrics:
    joint: float                 # argmax over the union of all tasks' classes
    per_task: float              # mean over tasks of the task-aware accuracy
    tasks: tuple[float, ...]     # task-aware accuracy of each task

    def as_dict(self) -> dict:
        return {"joint_acc": self.joint, "per_task_acc": self.per_task, "task_acc": list(self.tasks)}


def multitask_metrics(logits: Logits, y: Tensor, output_classes: tuple[int, ...] | list,
                      tasks: list[tuple[int, ...]]) -> TaskMetrics:
    """Joint and per-task accuracy of one split's logits, over its examples of the tasks' classes.

    Single head: `logits` [n, k] over `output_classes`. Multi-head: one [n, k_t] tensor per task, head t's
    columns being `output_classes[t]`. A task without examples has accuracy NaN.
    """
    layout = TaskLayout.from_outputs(tasks, output_classes)
    keep = layout.covers(y)
    y = y[keep]
    logits = logits[keep] if isinstance(logits, Tensor) else [lg[keep] for lg in logits]
    m = means(metric_sums(logits, y, layout), task_counts(y, layout), len(y))
    task_accs = tuple(float(a) for a in m["task_acc"])
    return TaskMetrics(float(m["joint_acc"]), sum(task_accs) / len(task_accs), task_accs)


def accuracy(model: nn.Module, split: Split, classes: tuple[int, ...], *, device=None) -> float:
    """Task-aware accuracy of a single-head model on the examples of `classes`."""
    sub = split.subset(classes)
    return multitask_metrics(predict(model, sub, device=device), sub.y, tuple(model.output_classes), [classes]).tasks[0]


def count_flops(model: nn.Module, example: Tensor) -> int:
    """Forward FLOPs of `model` on one example [1, c, h, w] (torch's FLOP counter: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    p = next(model.parameters())
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(example.to(p.device, p.dtype))
    return int(counter.get_total_flops())
