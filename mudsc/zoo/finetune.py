"""Same-init task models: fine-tune one base checkpoint's body on a task with a fresh head.

The setting of task arithmetic, TIES, Fisher merging, RegMean and MaTS: every task model starts from
the same base parameters (``body.*``), gets its own head for the task's classes, and is trained on
that task; :mod:`mudsc.sameinit` then merges the bodies.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from mudsc.data import load_dataset, parse_classes
from mudsc.errors import CheckpointError
from mudsc.models import create_model
from mudsc.models.checkpoint import load_model, save_model, sha256_file
from mudsc.models.heads import BODY
from mudsc.zoo.train import train_model


def finetune_parent(base: str | os.PathLike, *, dataset: str, classes: str, seed: int, out: str | os.PathLike,
                    data_dir: str | None = None, data_img_size: int | None = None, epochs: int = 5,
                    head: str = "own", lr: float = 1e-3,
                    batch_size: int = 128, device=None,
                    progress: Callable[[int, int, float], None] | None = None) -> dict:
    """Fine-tune the body of checkpoint `base` on the task `classes` of `dataset` (loaded at
    `data_img_size` if given) and save it at `out`.

    The new model has `base`'s architecture and body weights and a new `head` (seeded by `seed`)
    for the task; returns the saved record, which names the base and its sha256.
    """
    base_model, info = load_model(base)
    spec = info["spec"]
    data = load_dataset(dataset, data_dir, img_size=data_img_size)
    if (spec["in_chans"], spec["img_size"]) != (data.in_chans, data.img_size):
        raise CheckpointError(f"base {base} takes {spec['in_chans']}x{spec['img_size']}px images, "
                              f"{data.name} has {data.in_chans}x{data.img_size}px")
    task = parse_classes(classes, data.num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # initialises the new head only
        model = create_model(spec["arch"], classes=task, num_classes=data.num_classes, head=head,
                             in_chans=spec["in_chans"], img_size=spec["img_size"], feat_dim=spec["feat_dim"],
                             head_seed=spec.get("head_seed", 0), temperature=spec.get("temperature", 20.0),
                             **spec.get("kwargs", {}))
    sd = model.state_dict()
    sd.update({k: v for k, v in base_model.state_dict().items() if k.startswith(BODY)})
    model.load_state_dict(sd)
    t0 = time.perf_counter()
    acc = train_model(model, data, task, epochs=epochs, seed=seed, lr=lr, batch_size=batch_size,
                      device=device, progress=progress)
    record = {"dataset": data.describe(), "seed": seed, "epochs": epochs, "accuracy": acc, "task": list(task),
              "train_seconds": round(time.perf_counter() - t0, 2),
              "base": {"path": str(base), "sha256": sha256_file(base)}}
    save_model(model.cpu(), Path(out), **record)
    return {"path": str(out), **record}


def task_family(root: str | os.PathLike, *, dataset: str, arch: str, tasks: Sequence[str], data_dir: str | None = None,
                base_epochs: int = 1, epochs: int = 5, device=None, **kwargs) -> tuple[Path, list[Path]]:
    """A same-init family: a base trained on all classes (seed 0, own head) at ``root/base.safetensors``,
    fine-tuned once per task (seed i + 1) to ``root/task{i}.safetensors``; returns (base, task paths).
    `kwargs` are the architecture's options."""
    from mudsc.zoo.demo import train_parent

    root = Path(root)
    base = root / "base.safetensors"
    train_parent(dataset=dataset, data_dir=data_dir, arch=arch, classes="all", seed=0, out=base,
                 epochs=base_epochs, head="own", device=device, **kwargs)
    paths = [root / f"task{i}.safetensors" for i in range(len(tasks))]
    for i, (task, out) in enumerate(zip(tasks, paths)):
        finetune_parent(base, dataset=dataset, data_dir=data_dir, classes=task, seed=i + 1, out=out, epochs=epochs,
                        device=device)
    return base, paths
