"""The built-in same-init demo family: a base and task models fine-tuned from it, trained on first use
and cached (the same-init counterpart of :func:`mudsc.zoo.demo.demo_pair`)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from mudsc.atomic import file_lock
from mudsc.models.checkpoint import load_model, sha256_file
from mudsc.zoo.demo import home, train_parent
from mudsc.zoo.finetune import finetune_parent

# The same-init demo: a BatchNorm MLP base pre-trained briefly on all digits, fine-tuned on three
# class-subset tasks with own heads (the MaTS setting at toy scale; BatchNorm so the landscape's
# exact statistics and the merges' BN reset matter).
DEMO_FAMILY = {"dataset": "digits", "arch": "mlp", "kwargs": {"width": 64, "depth": 2, "norm": "bn"},
               "base_epochs": 8, "epochs": 10, "tasks": ("0-3", "4-6", "7-9")}


def demo_family(*, root: str | os.PathLike | None = None,
                progress: Callable[[str, int, int], None] | None = None) -> tuple[Path, list[Path]]:
    """``(base, [task models])`` of the same-init demo, trained on first use (a few seconds on 2 CPU
    cores) and reused; `progress(stage, step, total)` per training step, stage ``base`` or the task.

    Safe across processes like :func:`demo_pair`: each file is trained under a lock and written
    atomically; a damaged entry is retrained, and a retrained base retrains its task models (they
    record the base's sha256)."""
    spec = DEMO_FAMILY
    root = Path(root) if root is not None else home() / "demo_family"
    base = root / "mlp.digits_all_base.safetensors"
    tasks = [root / f"mlp.digits_{t.replace('-', '')}_ft{i + 1}.safetensors" for i, t in enumerate(spec["tasks"])]

    def usable(path: Path, base_sha: str | None = None) -> bool:
        if not path.is_file():
            return False
        try:
            _, info = load_model(path)
        except Exception:  # a damaged cache entry is retrained, not trusted
            path.unlink()
            return False
        if base_sha is not None and (info.get("base") or {}).get("sha256") != base_sha:
            path.unlink()  # fine-tuned from an earlier base
            return False
        return True

    def step(stage: str):
        return None if progress is None else (lambda s, total, loss: progress(stage, s, total))

    with file_lock(base):
        if not usable(base):
            train_parent(dataset=spec["dataset"], arch=spec["arch"], classes="all", seed=0, out=base,
                         epochs=spec["base_epochs"], head="own", progress=step("base"), **spec["kwargs"])
    base_sha = sha256_file(base)
    for i, (task, path) in enumerate(zip(spec["tasks"], tasks)):
        with file_lock(path):
            if not usable(path, base_sha):
                finetune_parent(base, dataset=spec["dataset"], classes=task, seed=i + 1, out=path,
                                epochs=spec["epochs"], progress=step(task))
    return base, tasks
