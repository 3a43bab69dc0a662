"""Parent zoo: train self-describing parents on class subsets, and the built-in demo pair."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import torch

from mudsc.atomic import file_lock
from mudsc.data import load_dataset, parse_classes
from mudsc.models import create_model
from mudsc.models.checkpoint import load_model, save_model
from mudsc.models.preprocess import preprocess_spec
from mudsc.zoo.train import train_model

# The demo: digits, two disjoint 5-class tasks, different seeds. ResNet-20 at width 1 with stage
# strides 1/1/2 suits 8x8 input and shows the papers' method ordering (see the foundation issue).
# Seeds 4 and 5 are the third of the five pairs of benchmarks/bench_demo_pairs.py; "merge" is what the
# Merge page shows first for this pair: MuDSC's zip up to the end of the first stage, a partial zip
# (the 5-pair means are in benchmarks/RESULTS.md, "The built-in demo over five seed pairs").
DEMO = {"dataset": "digits", "arch": "resnet20", "kwargs": {"width": 1, "strides": "1/1/2"},
        "epochs": 25, "tasks": ("0-4", "5-9"), "seeds": (4, 5),
        "merge": {"method": "mudsc-zip", "alpha": 0.5, "cut": "layer1"}}


def home() -> Path:
    """The cache directory: $MUDSC_HOME, default ~/.cache/mudsc."""
    return Path(os.environ.get("MUDSC_HOME", "~/.cache/mudsc")).expanduser()


def default_parent_path(arch: str, dataset: str, classes: str, seed: int, width: int | None = None) -> Path:
    """``$MUDSC_HOME/zoo/ARCH[xW].DATASET_TASK_sSEED.safetensors`` (timm's ``arch.tag`` naming)."""
    tag = "".join(ch if ch.isalnum() else "" for ch in str(classes))
    name = arch.replace("timm:", "timm-") + (f"x{width}" if width else "")
    return home() / "zoo" / f"{name}.{Path(dataset).stem}_{tag}_s{seed}.safetensors"


def train_parent(*, dataset: str, arch: str, classes: str, seed: int, out: str | os.PathLike,
                 data_dir: str | None = None, data_img_size: int | None = None, epochs: int = 10, head: str = "shared",
                 feat_dim: int = 64, lr: float = 2e-3, batch_size: int = 128, device=None,
                 progress: Callable[[int, int, float], None] | None = None, **arch_kwargs: Any) -> dict:
    """Train one parent on the task `classes` of `dataset` (loaded at `data_img_size` if given) and save
    it at `out`; returns its record."""
    data = load_dataset(dataset, data_dir, img_size=data_img_size)
    task = parse_classes(classes, data.num_classes)
    t0 = time.perf_counter()
    # --kw img_size=N overrides the data set's size: the model is built for N and resizes its input.
    img_size = int(arch_kwargs.pop("img_size", data.img_size))
    pre = None
    if img_size != data.img_size:
        pre = preprocess_spec(data_mean=data.mean, data_std=data.std, data_size=(data.img_size,) * 2, img_size=img_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # parameter initialisation is the only use of the global generator
        model = create_model(arch, classes=task, num_classes=data.num_classes, head=head, in_chans=data.in_chans,
                             img_size=img_size, feat_dim=feat_dim, preprocess=pre, **arch_kwargs)
    acc = train_model(model, data, task, epochs=epochs, seed=seed, lr=lr, batch_size=batch_size,
                      device=device, progress=progress)
    seconds = time.perf_counter() - t0
    record = {"dataset": data.describe(), "seed": seed, "epochs": epochs, "accuracy": acc,
              "train_seconds": round(seconds, 2), "task": list(task)}
    save_model(model.cpu(), out, **record)
    return {"path": str(out), **record}


def demo_names() -> list[str]:
    """File names of the demo parents; they name the whole recipe, so a cache of another recipe is not reused."""
    return [f"{DEMO['arch']}x{DEMO['kwargs']['width']}.{DEMO['dataset']}_{t.replace('-', '')}_s{s}"
            f"_e{DEMO['epochs']}.safetensors" for t, s in zip(DEMO["tasks"], DEMO["seeds"])]


def demo_pair(*, root: str | os.PathLike | None = None,
              progress: Callable[[int, int, float], None] | None = None) -> list[Path]:
    """Paths of the demo parents, trained on first use (about 6 s each on 2 CPU cores) and reused.

    Safe across processes: a second process asking for a parent being trained waits for it and
    reuses it; the checkpoint is written atomically, so a killed trainer leaves no half file.
    """
    root = Path(root) if root is not None else home() / "demo"
    paths = [root / name for name in demo_names()]
    for path, task, seed in zip(paths, DEMO["tasks"], DEMO["seeds"]):
        with file_lock(path):
            if path.is_file():
                try:
                    load_model(path)
                    continue
                except Exception:  # a damaged cache entry is retrained, not trusted
                    path.unlink()
            train_parent(dataset=DEMO["dataset"], arch=DEMO["arch"], classes=task, seed=seed, out=path,
                         epochs=DEMO["epochs"], progress=progress, **DEMO["kwargs"])
    return paths

