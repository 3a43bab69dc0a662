"""Loss along straight segments between models, and the interpolation barrier.

Frankle et al. 2020 (linear mode connectivity) / Entezari et al. 2022 define the barrier of the
segment a -> b as max_t [L((1-t) a + t b) - ((1-t) L(a) + t L(b))]. Through a third model (the
merge) the path is the polyline a -> m -> b, with t the normalised arc length.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from landscape import plane as planes
from landscape.evaluate import EvalSet
from landscape.grid import BN_LABELS, PointEvaluator, check_bn_mode, evaluate_coords
from mudsc.errors import ConfigError

StateDict = Mapping[str, Tensor]


def interpolation_barrier(loss: np.ndarray, t: np.ndarray) -> float:
    """[s], [s] (t from 0 to 1) -> max over t of loss(t) minus the straight line between the end losses."""
    loss, t = np.asarray(loss, float), np.asarray(t, float)
    if loss.shape != t.shape or loss.ndim != 1 or len(loss) < 2:
        raise ConfigError(f"barrier needs matching 1-D loss and t of length >= 2, got {loss.shape} and {t.shape}")
    return float(np.max(loss - ((1 - t) * loss[0] + t * loss[-1])))


@dataclass
class PathResult:
    """Metrics at `t` (normalised arc length) along the polyline through `labels`."""

    t: np.ndarray                 # [s]
    arc: np.ndarray               # [s] parameter distance from the first model
    vertex_t: np.ndarray          # [v] t of each model on the path
    labels: list[str]
    task_names: list[str]
    task_loss: np.ndarray         # [s, K]
    task_acc: np.ndarray          # [s, K]
    joint_loss: np.ndarray        # [s]
    joint_acc: np.ndarray         # [s]
    bn_mode: str

    @property
    def bn_label(self) -> str:
        return BN_LABELS[self.bn_mode]

    @property
    def mean_loss(self) -> np.ndarray:
        return self.task_loss.mean(1)

    def barriers(self) -> dict[str, float]:
        """Barrier of the mean task loss, the joint loss and each task's loss."""
        out = {"mean": interpolation_barrier(self.mean_loss, self.t),
               "joint": interpolation_barrier(self.joint_loss, self.t)}
        for k, name in enumerate(self.task_names):
            out[name] = interpolation_barrier(self.task_loss[:, k], self.t)
        return out


def evaluate_path(template: nn.Module, states: Sequence[StateDict], eval_set: EvalSet, *,
                  labels: Sequence[str] | None = None, steps: int = 11, bn_mode: str = "exact",
                  stats: StateDict | None = None, names: Sequence[str] | None = None, chunk_size: int = 16,
                  method: str = "auto", autocast: bool | None = None,
                  task_names: Sequence[str] | None = None) -> PathResult:
    """Metrics at `steps` evenly spaced points on each segment of the polyline through `states`.

    Two states give the plain interpolation a -> b; three (a, merge, b) the path through the merge.
    """
    if len(states) < 2:
        raise ConfigError(f"a path needs at least 2 models, got {len(states)}")
    if steps < 2:
        raise ConfigError(f"steps per segment must be at least 2, got {steps}")
    check_bn_mode(bn_mode)
    names = tuple(names) if names is not None else planes.trainable_names(template)
    labels = list(labels) if labels is not None else [f"model {i}" for i in range(len(states))]
    arcs, rows, lengths = [], [], []
    for i in range(len(states) - 1):
        seg = planes.line(states[i], states[i + 1], names=names)
        length = seg.info["length"]
        s = torch.linspace(0, 1, steps, dtype=torch.float64)
        if i:
            s = s[1:]  # the shared vertex is already the previous segment's end
        ev = PointEvaluator(template, seg, eval_set, bn_mode=bn_mode, stats=stats or states[0], autocast=autocast)
        coords = torch.stack([s * length, torch.zeros_like(s)], 1)
        means = {}

        def keep(idx, m, _store=means):
            for k, v in m.items():
                _store.setdefault(k, []).append(v)

        evaluate_coords(ev, coords, method=method, chunk_size=chunk_size, on_chunk=keep)
        rows.append({k: torch.cat(v).numpy() for k, v in means.items()})
        arcs.append(sum(lengths) + s.numpy() * length)
        lengths.append(length)
    arc = np.concatenate(arcs)
    total = sum(lengths)
    cat = lambda k: np.concatenate([r[k] for r in rows])  # noqa: E731
    vertex_t = np.concatenate([[0.0], np.cumsum(lengths) / total])
    tn = list(task_names) if task_names is not None else eval_set.task_names
    return PathResult(arc / total, arc, vertex_t, labels, tn, cat("task_loss"), cat("task_acc"),
                      cat("joint_loss"), cat("joint_acc"), bn_mode)
