"""Choosing alpha and the cut on training data, then reporting test accuracy at that choice: the papers'
protocol (ZipIt!, Stoica et al., ICLR 2024, and MuDSC, Xu et al., CVPR 2024, choose their hyper-parameters
on held-out training data), instead of reporting the best point of a sweep on the images it is
evaluated on.

The selection images are the tail of the session's training images (its seeded order); activation
statistics and BatchNorm resets read the head, so the two never overlap, and the test split is never
read. Selection sits on top of a sweep's per-config results: it only re-evaluates merges the session
has cached.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from mudsc.data import Split
from mudsc.diffinit.config import MergeConfig
from mudsc.diffinit.session import MergeSession
from mudsc.errors import ConfigError

METRICS = ("joint_acc", "per_task_acc")
MAX_IMAGES = 1000  # default cap on the selection images


def selection_range(session: MergeSession, configs: list[MergeConfig], images: int | None = None) -> range:
    """Positions in ``session.train`` of the selection images: the last `images` (default: every image
    that neither the statistics nor any config's BatchNorm reset reads, at most :data:`MAX_IMAGES`)."""
    n = len(session.train)
    used = max([session.stats_images] + [c.reset_images for c in configs if c.reset_bn])
    free = n - min(used, n)
    want = min(free, MAX_IMAGES) if images is None else int(images)
    if want < 1 or want > free:
        raise ConfigError(f"selection on training data needs held-out training images: {n:,} training images, "
                          f"{min(used, n):,} used for statistics and BatchNorm resets, {free:,} left"
                          + ("" if images is None else f", {images:,} asked for")
                          + "; use fewer --stats-images / --reset-images")
    return range(n - want, n)


def selection_split(session: MergeSession, positions: range) -> Split:
    return Split(session.train.x[positions.start:positions.stop], session.train.y[positions.start:positions.stop])


@dataclass(frozen=True)
class Selection:
    """The config chosen on the selection images and the test metrics the sweep measured for it."""

    config: MergeConfig
    index: int                   # of the chosen config in the sweep
    metric: str
    images: range                # positions in session.train
    scores: tuple[float, ...]    # per config, the selection metric on the selection images (NaN: ensemble)
    test: dict                   # the sweep row of the chosen config (test accuracies)

    def summary(self) -> dict:
        return {"metric": self.metric, "selection_images": len(self.images), "method": self.config.method,
                "alpha": self.test["alpha"], "cut": self.config.cut, "selection_score": self.scores[self.index],
                **{k: v for k, v in self.test.items() if k.endswith("_acc")}}


def select_on_train(session: MergeSession, configs: list[MergeConfig], rows: list[dict], *,
                    metric: str = "joint_acc", images: int | None = None) -> Selection:
    """The config of `configs` with the best `metric` on held-out training images (ties: the first), and
    its test row among `rows` (:func:`mudsc.diffinit.sweep.run_sweep`'s output for `configs`, in order)."""
    if metric not in METRICS:
        raise ConfigError(f"selection metric {metric!r} is not one of {', '.join(METRICS)}")
    if len(rows) != len(configs) or not configs:
        raise ConfigError(f"select_on_train: {len(configs)} configs but {len(rows)} sweep rows")
    merges = [i for i, c in enumerate(configs) if c.method != "ensemble"]  # the bound is no candidate
    if not merges:
        raise ConfigError("selection on training data needs at least one merge method besides the ensemble")
    positions = selection_range(session, configs, images)
    split = selection_split(session, positions)
    scores = [math.nan] * len(configs)
    for i in merges:
        m = session.evaluate(session.merge(configs[i]).model, split=split)
        scores[i] = m.joint if metric == "joint_acc" else m.per_task
    best = max(merges, key=lambda i: (scores[i], -i))
    return Selection(configs[best], best, metric, positions, tuple(scores), rows[best])


def aggregate_selections(selections: list[Selection]) -> dict:
    """Several pairs' choices: the test accuracy at each pair's choice as mean and std, and the choices."""
    out: dict = {"pairs": len(selections), "metric": selections[0].metric,
                 "choices": [s.summary() for s in selections]}
    for key in (k for k in selections[0].test if k.endswith("_acc")):
        vals = [s.test[key] for s in selections]
        mean = sum(vals) / len(vals)
        out[key] = mean
        out[key + "_std"] = math.sqrt(sum((v - mean) ** 2 for v in vals) / max(len(vals) - 1, 1))
    return out
