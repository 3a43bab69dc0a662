"""Training parents on a class subset: the zoo's one training loop."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mudsc.data import Dataset, batches
from mudsc.device import default_device
from mudsc.errors import DataError
from mudsc.evaluate import accuracy, columns


def train_model(model: nn.Module, data: Dataset, classes: tuple[int, ...], *, epochs: int = 10,
                seed: int = 0, lr: float = 2e-3, weight_decay: float = 5e-4, batch_size: int = 128,
                device=None, progress: Callable[[int, int, float], None] | None = None) -> float:
    """Train `model` in place on the examples of `classes`; returns held-out task accuracy.

    AdamW with a one-epoch linear warm-up and cosine decay, cross-entropy over the task's classes,
    small random shifts. Data order and augmentation come from a generator seeded by `seed`.
    `progress(step, total_steps, loss)` is called after every step.
    """
    train = data.train.subset(classes)
    if len(train) < batch_size:
        batch_size = max(1, len(train))
    if len(train) == 0:
        raise DataError(f"no training examples of classes {list(classes)} in {data.name}")
    device = default_device(device)
    model.to(device).train()
    cols = torch.tensor(columns(tuple(model.output_classes), classes), device=device)
    remap = torch.full((data.num_classes,), -1, dtype=torch.long)
    remap[torch.tensor(classes)] = torch.arange(len(classes))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = len(train) // batch_size
    total = max(1, epochs * steps_per_epoch)
    warm = max(1, steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + torch.cos(torch.tensor(s / total * torch.pi)).item())
    )
    g = torch.Generator().manual_seed(seed)
    step = 0
    for _ in range(epochs):
        for x, y in batches(train, batch_size, shuffle=True, augment=True, generator=g, drop_last=True):
            x, target = x.to(device), remap[y].to(device)
            loss = F.cross_entropy(model(x)[:, cols], target)
            step = optimizer_step(opt, sched, loss, step, total, progress)
    model.eval()
    return accuracy(model, data.eval, classes, device=device)


def optimizer_step(opt: torch.optim.Optimizer, sched, loss: torch.Tensor, step: int, total: int,
                   progress: Callable[[int, int, float], None] | None) -> int:
    """One optimiser and schedule step on `loss`; reports progress and returns the new step count."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    if progress is not None:
        progress(step + 1, total, loss.item())
    return step + 1
