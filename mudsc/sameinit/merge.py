"""Same-init merging of state dicts fine-tuned from one base: checks, dispatch, and what every
method shares.

The methods are those of :mod:`mudsc.methods` with family ``same-init``; each is a function in its
family's module, found through :mod:`mudsc.sameinit.registry`:

* :mod:`mudsc.sameinit.arithmetic`: ``average`` (model soups, Wortsman et al., ICML 2022),
  ``task-arithmetic`` (Ilharco et al., ICLR 2023, Sec. 2), ``ties`` (Yadav et al., NeurIPS 2023,
  Sec. 3, Alg. 1);
* :mod:`mudsc.sameinit.curvature`: ``fisher`` (Matena & Raffel, NeurIPS 2022, Eq. 3), ``regmean``
  (Jin et al., ICLR 2023, Eq. 2), ``mats`` (Tam et al., TMLR 2024, Sec. 3-4).

Only keys under ``body.`` are merged; per-task heads and everything else keep the base's values.
Parameters without statistics (norms; everything a method does not solve) and the keys named in
``buffers`` (e.g. BatchNorm running statistics) are averaged, or kept from the base when
``unsolved='base'``; integer tensors always keep the base's values.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Collection, Sequence

import torch
from torch import Tensor

import mudsc.sameinit.arithmetic  # noqa: F401  the explicit family list fills the registry
import mudsc.sameinit.curvature  # noqa: F401
from mudsc.device import default_device
from mudsc.errors import CheckpointError, ConfigError, ShapeMismatchError
from mudsc.methods import names
from mudsc.models.heads import BODY
from mudsc.sameinit.config import SameInitConfig
from mudsc.sameinit.registry import LayerReport, MergeJob, StateDict, merger
from mudsc.sameinit.taskstats import TaskStats

METHODS = names("same-init")


@dataclass(frozen=True)
class SameInitReport:
    """Per-layer record of a merge; ``merged`` are the body keys computed from the fine-tuned models,
    ``from_base`` the keys copied from the base (heads, integer buffers, ``unsolved='base'``)."""

    config: SameInitConfig
    layers: tuple[LayerReport, ...]
    merged: tuple[str, ...]
    from_base: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "layers": [asdict(r) for r in self.layers],
                "merged": list(self.merged), "from_base": list(self.from_base)}


def check_bodies(base: StateDict, finetuned: Sequence[StateDict]) -> None:
    """Same body keys and shapes as the base; heads may differ (they are not merged)."""
    if not finetuned:
        raise ConfigError("same-init merge needs at least one fine-tuned model")
    body = {k for k in base if k.startswith(BODY)}
    for i, sd in enumerate(finetuned):
        missing = sorted(body - set(sd))
        if missing:
            raise CheckpointError(f"fine-tuned model {i} lacks key {missing[0]!r} that the base has"
                                  + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        extra = sorted({k for k in sd if k.startswith(BODY)} - body)
        if extra:
            raise CheckpointError(f"fine-tuned model {i} has key {extra[0]!r} that the base lacks"
                                  + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
        for k in sorted(body):
            t = sd[k]
            if t.shape != base[k].shape:
                raise ShapeMismatchError(f"key {k!r}: fine-tuned model {i} has shape {tuple(t.shape)}, "
                                         f"the base {tuple(base[k].shape)}")


def _validate_stats(base: StateDict, stats: Sequence[TaskStats], n: int, config: SameInitConfig) -> None:
    if len(stats) != n:
        raise ConfigError(f"{config.method} needs statistics for each of the {n} fine-tuned models, got {len(stats)}")
    what = {"gram": "input Gram", "grad": "output-gradient factor", "fisher": "diagonal Fisher"}
    for part in config.stat_parts:
        ref = {k for k in getattr(stats[0], part) if k.startswith(BODY)}
        if not ref:
            raise CheckpointError(f"statistics of task 0 hold no {what[part]} for any key under {BODY!r}")
        for i, s in enumerate(stats):
            have = {k for k in getattr(s, part) if k.startswith(BODY)}
            lost = sorted(ref - have) or sorted(have - ref)
            if lost:
                who, other = (i, 0) if lost[0] in ref else (0, i)
                raise CheckpointError(f"statistics of task {who} lack the {what[part]} of {lost[0]!r} "
                                      f"(task {other} has it)")
            for k in sorted(have):
                if k not in base:
                    raise CheckpointError(f"statistics of task {i} name {k!r}, which the models lack")
                _check_stat_shape(base, s, part, k, i)


def _check_stat_shape(base: StateDict, s: TaskStats, part: str, key: str, task: int) -> None:
    t = getattr(s, part)[key]
    w = base[key]
    if part == "fisher":
        want = tuple(w.shape)
    else:
        bias = s.bias.get(key)
        if bias is not None and bias not in base:
            raise CheckpointError(f"statistics of task {task} fold bias {bias!r} into {key!r}, but the models lack it")
        d = w[0].numel() + (bias is not None) if part == "gram" else w.shape[0]
        want = (d, d)
    if tuple(t.shape) != want:
        raise ShapeMismatchError(f"statistics of task {task}: {part} of {key!r} has shape {tuple(t.shape)}, "
                                 f"the model needs {want}")


def merge_same_init(base: StateDict, finetuned: Sequence[StateDict], stats: Sequence[TaskStats] | None = None,
                    *, config: SameInitConfig, init: StateDict | None = None, buffers: Collection[str] = (),
                    device: torch.device | str | None = None,
                    progress: Callable[[int, int], None] | None = None) -> tuple[StateDict, SameInitReport]:
    """Merge `finetuned` (all fine-tuned from `base`) with ``config.method``.

    Args:
        base: the shared initialisation.
        finetuned: the task models' state dicts (same ``body.`` keys and shapes as `base`; heads may differ).
        stats: one :class:`~mudsc.sameinit.taskstats.TaskStats` per model, for ``fisher``, ``regmean``, ``mats``.
        config: the method and its options.
        init: a state dict to start CG from (and to keep in null spaces), replacing ``config.init``.
        buffers: keys that are not parameters (e.g. BatchNorm running statistics).
        device: where to solve; default :func:`mudsc.device.default_device`.
        progress: ``progress(solved_params, params)`` before the first layer (0) and after each layer
            the method solves (a MaTS layer is one CG solve).

    Returns the merged state dict (all of `base`'s keys, on CPU in their dtypes) and a report.
    """
    check_bodies(base, finetuned)
    if init is not None:
        check_bodies(base, [init])
    if config.needs_stats:
        _validate_stats(base, stats or [], len(finetuned), config)
    dev = default_device() if device is None else torch.device(device)
    body = [k for k in base if k.startswith(BODY) and base[k].is_floating_point()]
    skip = set(buffers)
    job = MergeJob(base, finetuned, stats or (), config, tuple(k for k in body if k not in skip), dev, init)
    out = {k: v.clone() for k, v in base.items()}
    layers: list[LayerReport] = []
    done: set[str] = set()

    def put(key: str, value: Tensor) -> None:
        out[key] = value.to("cpu", base[key].dtype).reshape(base[key].shape)
        done.add(key)

    if progress is not None:
        progress(0, len(job.params))
    for values, layer in merger(config.method)(job):
        for k, v in values.items():
            put(k, v)
        layers.append(layer)
        if progress is not None:
            progress(sum(k in done for k in job.params), len(job.params))
    for k in body:
        if k in done:
            continue
        if config.unsolved == "average":
            put(k, torch.stack([m[k].to(dev, torch.float64) for m in finetuned]).mean(0))
        layers.append(LayerReport((k,), config.unsolved))
    if progress is not None:  # the keys the method left are settled too
        progress(len(job.params), len(job.params))
    report = SameInitReport(config, tuple(layers), tuple(k for k in base if k in done),
                            tuple(k for k in base if k not in done))
    return out, report
