"""Accuracy of classifiers on class-subset tasks.

Joint and per-task accuracy follow ZipIt! (Stoica et al., 2024, Sec. 5) and MuDSC (Xu et al., 2024):
*joint* takes the argmax over the union of all tasks' classes; *per-task* knows the task and takes the
argmax over that task's classes only. A multi-head model (partial zipping) returns one logit tensor per
task; joint then takes a softmax per head and the argmax over all heads' probabilities.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mudsc.data import Split, batches
from mudsc.device import default_device


def columns(output_classes: tuple[int, ...], classes: tuple[int, ...]) -> list[int]:
    """Output-column index of each class in `classes`."""
    pos = {c: i for i, c in enumerate(output_classes)}
    return [pos[c] for c in classes]


@torch.no_grad()
def predict(model: nn.Module, split: Split, *, batch_size: int = 500, device=None) -> Tensor | list[Tensor]:
    """Logits of `model` on every example of `split` (a list for multi-head models), on CPU."""
    device = default_device(device)
    model = model.to(device).eval()
    outs: list = []
    for x, _ in batches(split, batch_size):
        out = model(x.to(device))
        outs.append([o.float().cpu() for o in out] if isinstance(out, (list, tuple)) else out.float().cpu())
    if outs and isinstance(outs[0], list):
        return [torch.cat([o[i] for o in outs]) for i in range(len(outs[0]))]
    return torch.cat(outs) if outs else torch.empty(0)


def task_accuracy(logits: Tensor, y: Tensor, output_classes: tuple[int, ...], classes: tuple[int, ...]) -> float:
    """[n, k], [n] -> fraction of examples of `classes` whose argmax over `classes` is right."""
    keep = torch.isin(y, torch.tensor(classes))
    if not keep.any():
        return float("nan")
    cols = columns(output_classes, classes)
    pred = torch.tensor(classes)[logits[keep][:, cols].argmax(1)]
    return float((pred == y[keep]).float().mean())


@dataclass(frozen=True)
class TaskMetrics:
    joint: float                 # argmax over the union of all tasks' classes
    per_task: float              # mean over tasks of the task-aware accuracy
    tasks: tuple[float, ...]     # task-aware accuracy of each task

    def as_dict(self) -> dict:
        return {"joint_acc": self.joint, "per_task_acc": self.per_task, "task_acc": list(self.tasks)}


def multitask_metrics(logits: Tensor | list[Tensor], y: Tensor, output_classes: tuple[int, ...] | list,
                      tasks: list[tuple[int, ...]]) -> TaskMetrics:
    """Joint and per-task accuracy from one set of logits.

    Single head: `logits` [n, k] over `output_classes`. Multi-head: one [n, k_t] tensor per task, head t's
    columns being `output_classes[t]`; joint = argmax of the per-head softmaxes.
    """
    union = tuple(sorted({c for t in tasks for c in t}))
    keep = torch.isin(y, torch.tensor(union))
    y = y[keep]
    if isinstance(logits, (list, tuple)):
        heads = [l[keep] for l in logits]
        probs, ids = [], []
        for t, (l, oc) in enumerate(zip(heads, output_classes)):
            cols = columns(tuple(oc), tasks[t])
            probs.append(l[:, cols].softmax(1))
            ids.extend(tasks[t])
        joint_pred = torch.tensor(ids)[torch.cat(probs, 1).argmax(1)]
        task_accs = tuple(task_accuracy(heads[t], y, tuple(output_classes[t]), tasks[t]) for t in range(len(tasks)))
    else:
        l = logits[keep]
        joint_pred = torch.tensor(union)[l[:, columns(tuple(output_classes), union)].argmax(1)]
        task_accs = tuple(task_accuracy(l, y, tuple(output_classes), t) for t in tasks)
    joint = float((joint_pred == y).float().mean()) if len(y) else float("nan")
    return TaskMetrics(joint, sum(task_accs) / len(task_accs), task_accs)


def accuracy(model: nn.Module, split: Split, classes: tuple[int, ...], *, device=None) -> float:
    """Task-aware accuracy of a single-head model on the examples of `classes`."""
    sub = split.subset(classes)
    return task_accuracy(predict(model, sub, device=device), sub.y, tuple(model.output_classes), classes)


def count_flops(model: nn.Module, example: Tensor) -> int:
    """Forward FLOPs of `model` on one example [1, c, h, w] (torch's FLOP counter: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    p = next(model.parameters())
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(example.to(p.device, p.dtype))
    return int(counter.get_total_flops())
