"""The multitask upper bound of same-init merging: one body fine-tuned on the union of the tasks.

Merging papers report it next to the merges (e.g. MaTS, Tam et al., TMLR 2024, Sec. 5; "multitask"
in task arithmetic, Ilharco et al., ICLR 2023): the body starts from the shared base, every task keeps
its own head, and each training example's loss is the cross-entropy of its task's head over that
task's classes. Training follows :func:`mudsc.train.train_model` (AdamW, one-epoch warm-up, cosine
decay, small random shifts), on the union of the tasks' training images.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mudsc.data import Dataset, batches, check_tasks
from mudsc.device import default_device
from mudsc.errors import ConfigError, DataError
from mudsc.evaluate import columns
from mudsc.models.heads import BODY
from mudsc.zoo.train import optimizer_step


def train_multitask(models: Sequence[nn.Module], base_body: dict[str, Tensor], data: Dataset, *, epochs: int = 3,
                    lr: float = 1e-3, weight_decay: float = 5e-4, batch_size: int = 128, seed: int = 0,
                    device=None, progress: Callable[[int, int, float], None] | None = None) -> list[nn.Module]:
    """Train one body (initialised from `base_body`, the base's ``body.*`` tensors) jointly with the
    heads of `models` (task models fine-tuned from that base; their heads are the starting heads).

    Returns one model per task: a copy of ``models[t]`` with the trained body and task t's trained
    head, in eval mode on CPU. Data order and shifts come from a generator seeded by `seed`.
    """
    if not models:
        raise ConfigError("multitask training needs at least one task model")
    if epochs < 1:
        raise ConfigError(f"multitask training needs at least one epoch, got {epochs}")
    tasks = [tuple(m.classes) for m in models]
    check_tasks(tasks)
    union = tuple(sorted({c for t in tasks for c in t}))
    train = data.train.subset(union)
    if len(train) == 0:
        raise DataError(f"no training examples of classes {list(union)} in {data.name}")
    dev = default_device(device)
    body = copy.deepcopy(models[0].body)
    missing = sorted(BODY + k for k in body.state_dict() if BODY + k not in base_body)
    if missing:
        raise ConfigError(f"the base lacks body tensor {missing[0]!r}")
    body.load_state_dict({k.removeprefix(BODY): v for k, v in base_body.items() if k.startswith(BODY)})
    heads = nn.ModuleList(copy.deepcopy(m.head) for m in models)
    body.to(dev).train()
    heads.to(dev).train()
    # task of each class id, and each class's position among its task head's columns
    task_of = torch.full((data.num_classes,), -1, dtype=torch.long)
    target_of = torch.full((data.num_classes,), -1, dtype=torch.long)
    cols = []
    for t, (task, head) in enumerate(zip(tasks, heads)):
        task_of[torch.tensor(task)] = t
        target_of[torch.tensor(task)] = torch.arange(len(task))
        cols.append(torch.tensor(columns(tuple(head.output_classes), task), device=dev))
    params = [p for p in list(body.parameters()) + list(heads.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    batch_size = max(1, min(batch_size, len(train)))
    steps_per_epoch = len(train) // batch_size
    total = max(1, epochs * steps_per_epoch)
    warm = max(1, steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * s / total)))
    g = torch.Generator().manual_seed(seed)
    step = 0
    for _ in range(epochs):
        for x, y in batches(train, batch_size, shuffle=True, augment=True, generator=g, drop_last=True):
            z = body(x.to(dev))
            which, target = task_of[y].to(dev), target_of[y].to(dev)
            loss = z.new_zeros(())
            for t, head in enumerate(heads):
                rows = which == t
                if rows.any():
                    logits = head(z[rows])[:, cols[t]]
                    loss = loss + F.cross_entropy(logits, target[rows], reduction="sum")
            step = optimizer_step(opt, sched, loss / len(y), step, total, progress)
    body_sd = {BODY + k: v.detach().cpu() for k, v in body.state_dict().items()}
    out = []
    for m, head in zip(models, heads):
        model = copy.deepcopy(m).cpu()
        model.load_state_dict({**body_sd, **{f"head.{k}": v.detach().cpu() for k, v in head.state_dict().items()}})
        out.append(model.eval())
    return out
