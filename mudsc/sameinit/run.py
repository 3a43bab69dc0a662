"""Same-init merging end to end on task models: statistics, merged bodies with each task's own head,
BatchNorm reset, evaluation and the written result (per-task checkpoints plus a manifest).

A *task model* is a :class:`~mudsc.models.heads.Classifier` fine-tuned on one class subset; all of
them share the body architecture, and their merged bodies are evaluated with each task's own head.
The BatchNorm reset recomputes running statistics on the union of the tasks' training images (the
REPAIR-style reset of ZipIt! and MuDSC; Jordan et al., ICLR 2023), which averaged statistics of
merged bodies otherwise lack.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Collection, Sequence

import torch
from torch import Tensor, nn

from mudsc.data import Dataset, Split, batches, check_tasks
from mudsc.errors import ConfigError
from mudsc.evaluate import TaskMetrics, multitask_metrics, predict
from mudsc.diffinit.fuse import reset_bn_stats_
from mudsc.models.checkpoint import save_model
from mudsc.models.heads import SharedHead
from mudsc.sameinit.merge import SameInitConfig, SameInitReport, merge_same_init
from mudsc.sameinit.taskstats import PARTS, TaskStats, compute_stats

BODY = "body."
MANIFEST_FORMAT = "mudsc.merge-same/1"
BN_BUFFERS = ("running_mean", "running_var")


def body_of(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """The ``body.*`` tensors of a state dict."""
    return {k: v for k, v in sd.items() if k.startswith(BODY)}


def bn_buffers(sd: dict[str, Tensor]) -> list[str]:
    """Keys of BatchNorm running statistics (averaged by merges, recomputed by the reset)."""
    return [k for k in sd if k.endswith(BN_BUFFERS)]


def with_body(model: nn.Module, body: dict[str, Tensor]) -> nn.Module:
    """A copy of `model` whose ``body.*`` tensors are `body`'s (its head is kept), in eval mode."""
    out = copy.deepcopy(model)
    out.load_state_dict({**out.state_dict(), **body_of(body)})
    return out.eval()


def task_statistics(models: Sequence[nn.Module], data: Dataset, *, examples: int = 1000, fisher: str = "sampled",
                    batch_size: int = 32, seed: int = 0, device=None, parts: Collection[str] = PARTS
                    ) -> list[TaskStats]:
    """One :class:`TaskStats` per model, from the first `examples` of its own task's training images
    in a seeded order (the conventions of ``mudsc stats``); only `parts` are computed."""
    out = []
    for i, m in enumerate(models):
        split = data.train.subset(tuple(m.classes))
        g = torch.Generator().manual_seed(seed + i)
        out.append(compute_stats(m, batches(split, batch_size, shuffle=True, generator=g), examples=examples,
                                 fisher=fisher, generator=g, device=device, parts=parts))
        m.cpu()  # compute_stats leaves the model on its device
    return out


def merge_task_models(base: dict[str, Tensor], models: Sequence[nn.Module], stats: Sequence[TaskStats] | None, *,
                      config: SameInitConfig, init: dict[str, Tensor] | None = None,
                      device=None) -> tuple[list[nn.Module], SameInitReport]:
    """Merge the task models' bodies (:func:`mudsc.sameinit.merge_same_init`, BatchNorm running
    statistics treated as buffers) and return one copy of each task model carrying the merged body."""
    sds = [m.state_dict() for m in models]
    merged, report = merge_same_init(base, sds, stats, config=config, init=init, buffers=bn_buffers(base),
                                     device=device)
    return [with_body(m, merged) for m in models], report


def union_train(data: Dataset, tasks: Sequence[tuple[int, ...]], *, seed: int = 0) -> Split:
    """The training images of the union of `tasks`, in a seeded order."""
    union = tuple(sorted({c for t in tasks for c in t}))
    train = data.train.subset(union)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return Split(train.x[order], train.y[order])


def reset_bn_(models: Sequence[nn.Module], data: Dataset, *, images: int = 1000, batch_size: int = 250,
              seed: int = 0, device=None) -> bool:
    """Recompute the BatchNorm statistics of the models' common body on `images` training images of
    the union of their tasks, in place; returns whether there was any BatchNorm to reset.

    The bodies must be equal (one merged body under several heads): the reset runs once, through the
    first model, and its statistics are copied into the others."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in models[0].body.modules()):
        return False
    if images < 1:
        raise ConfigError(f"BatchNorm reset needs at least one image, got {images}")
    train = union_train(data, [tuple(m.classes) for m in models], seed=seed).head(images)
    reset_bn_stats_(models[0], batches(train, batch_size), device=device)
    models[0].cpu()
    body = body_of(models[0].state_dict())
    for m in models[1:]:
        m.load_state_dict({**m.state_dict(), **body})
    return True


def shares_output_space(models: Sequence[nn.Module]) -> bool:
    """Whether every head is the same frozen class embedding, so one model answers every task."""
    heads = [m.head for m in models]
    return all(isinstance(h, SharedHead) for h in heads) and all(
        torch.equal(heads[0].class_embed.cpu(), h.class_embed.cpu()) for h in heads[1:])


def evaluate_task_models(models: Sequence[nn.Module], data: Dataset, *, batch_size: int = 500,
                         eval_images: int | None = None, device=None) -> TaskMetrics:
    """Per-task (task-aware) and joint accuracy of one merged body under each task's head, on the
    held-out images of the union of the tasks.

    Joint: with a shared output space the argmax over all tasks' classes of one model; otherwise the
    argmax over the per-head softmaxes (as for partial zipping, :func:`mudsc.evaluate.multitask_metrics`)."""
    tasks = [tuple(m.classes) for m in models]
    if len(set(tasks)) > 1:  # identical tasks are a model soup; partial overlap is ambiguous
        check_tasks(tasks)
    union = tuple(sorted({c for t in tasks for c in t}))
    ev = data.eval.subset(union)
    if eval_images is not None:
        ev = ev.head(int(eval_images))
    if shares_output_space(models):
        logits = predict(models[0], ev, batch_size=batch_size, device=device)
        models[0].cpu()
        return multitask_metrics(logits, ev.y, tuple(models[0].output_classes), tasks)
    logits = []
    for m in models:
        logits.append(predict(m, ev, batch_size=batch_size, device=device))
        m.cpu()
    return multitask_metrics(logits, ev.y, [tuple(m.output_classes) for m in models], tasks)


def write_result(out: str | Path, models: Sequence[nn.Module], manifest: dict[str, Any]) -> dict[str, Any]:
    """Write ``task{i}.safetensors`` (model i: the merged body and task i's head, self-describing,
    loadable by :func:`mudsc.models.checkpoint.load_model`) and ``manifest.json`` under `out`; returns the manifest
    with the outputs listed."""
    root = Path(out).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    outputs = []
    for i, m in enumerate(models):
        path = root / f"task{i}.safetensors"
        save_model(m, path, task=list(m.classes), merge={"method": manifest.get("method"),
                                                         "manifest": "manifest.json", "task_index": i})
        outputs.append({"path": path.name, "task": list(m.classes)})
    manifest = {"format": MANIFEST_FORMAT, **manifest, "outputs": outputs}
    tmp = root / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True, default=float))
    tmp.replace(root / "manifest.json")
    return manifest
