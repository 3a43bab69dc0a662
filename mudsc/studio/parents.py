"""What the app's pages ask of the engine about parents, kept out of the pages (no Streamlit here)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from mudsc.data import load_dataset, task_label
from mudsc.evaluate import accuracy
from mudsc.models.checkpoint import load_model


@dataclass
class Parent:
    path: str
    model: nn.Module
    info: dict
    dataset: str
    data_dir: str | None
    task_acc: dict[str, float]   # _key(classes) -> held-out task-aware accuracy
    data_img_size: int | None = None  # the size the data set was loaded at (--data-img-size), if any

    @property
    def name(self) -> str:
        return Path(self.path).name


def load_parent(path: str, *, dataset: str, data_dir: str | None = None, data_img_size: int | None = None) -> Parent:
    """Load a checkpoint and measure its accuracy on its own task and, when its outputs cover them, on
    the other classes (a network whose last layer is its own task's classifier cannot score those)."""
    model, info = load_model(path)
    data = load_dataset(dataset, data_dir, img_size=data_img_size)
    own = tuple(model.classes)
    rest = tuple(c for c in range(data.num_classes) if c not in own)
    accs = {_key(own): accuracy(model, data.eval, own)}
    if rest and set(rest) <= set(model.output_classes):
        accs[_key(rest)] = accuracy(model, data.eval, rest)
    return Parent(str(path), model, info, dataset, data_dir, accs, data_img_size)


def _key(classes: tuple[int, ...]) -> str:
    """A class list's key in ``Parent.task_acc``: its ids joined by commas (tables show
    :func:`mudsc.data.task_label`)."""
    return ",".join(map(str, classes))


def describe_parents(parents: list[Parent]) -> list[dict]:
    """One row per parent for a table."""
    rows = []
    for p in parents:
        spec = p.info.get("spec", {})
        own = _key(tuple(p.model.classes))
        rows.append({
            "parent": p.name,
            "architecture": spec.get("arch", "?") + "".join(f" {k}={v}" for k, v in spec.get("kwargs", {}).items()),
            "head": spec.get("head", "?"),
            "task": task_label(p.model.classes),
            "own-task accuracy": round(p.task_acc[own], 4),
            "other classes (task-aware)": round(next((v for k, v in p.task_acc.items() if k != own), float("nan")), 4),
            "parameters": sum(t.numel() for t in p.model.parameters()),
            "seed": p.info.get("seed"),
        })
    return rows
