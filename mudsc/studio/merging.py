"""Merges as the studio's jobs run them: per-stage progress, and merges made ahead of the alpha slider.

A merge depends only on its config (no warm start from the previous one), so a merge made ahead of
need is exactly the merge a later slider step asks for; making the neighbours of the current alpha in
the background lets a step on a small pair find its merge ready instead of waiting for the solve.
"""
from __future__ import annotations

import time
from typing import Callable

from mudsc.diffinit.config import MergeConfig
from mudsc.diffinit.session import MergeResult, MergeSession, Steps

Progress = Callable[[str, float], None]
AHEAD_MAX_S = 5.0  # merge ahead only where one merge takes at most this long (small pairs; two busy cores)


def stage_progress(progress: Progress) -> Steps:
    """The session's ``steps(stage, done, total)`` as a job's ``progress(message, fraction)``: one report per
    batch or sweep, each a point where the job can be cancelled or hand its slot over."""
    return lambda stage, done, total: progress(f"{stage} ({done}/{total})", done / max(total, 1))


def merge(session: MergeSession, config: MergeConfig, progress: Progress) -> MergeResult:
    """`session.merge(config)` reporting each stage to `progress`."""
    return session.merge(config, steps=stage_progress(progress))


def await_in_flight(session: MergeSession, config: MergeConfig, *, timeout: float,
                    stop: Callable[[], bool] = lambda: False) -> MergeResult | None:
    """The merge for `config` once the thread making it now (a merge ahead, a sweep) is done, waiting at
    most `timeout` s or until `stop()`; None if it is not ready by then. Starting a second merge of the
    same config instead would take as long again and share the cores with the first."""
    deadline = time.monotonic() + timeout
    while session.in_flight(config) and time.monotonic() < deadline and not stop():
        time.sleep(0.01)
    return session.cached(config)


def alpha_neighbours(config: MergeConfig, *, step: float, radius: int, toward: int = -1) -> list[MergeConfig]:
    """`config` at alpha -step, +step, -2 step, +2 step, ... up to `radius` steps (nearest first, inside
    [0, 1], rounded as the slider rounds its values); with `toward` = +1 the side above comes first at
    each distance (the way the slider last moved, where its next step most likely goes)."""
    digits = len(f"{step:g}".partition(".")[2])
    out = []
    for k in range(1, radius + 1):
        for sign in ((1, -1) if toward > 0 else (-1, 1)):
            a = round(config.alpha + sign * k * step, digits)
            if 0.0 <= a <= 1.0:
                out.append(config.model_copy(update={"alpha": a}))
    return out


def worth_ahead(result: MergeResult) -> bool:
    """Whether merging ahead of the slider pays: the pair merges in at most AHEAD_MAX_S."""
    return sum(result.timings.values()) <= AHEAD_MAX_S


def merge_ahead(session: MergeSession, configs: list[MergeConfig], progress: Progress) -> int:
    """Merge every config the session does not hold yet, nearest first; returns how many were merged."""
    made = 0
    for i, cfg in enumerate(configs):
        progress(f"alpha {cfg.alpha:g}", i / len(configs))
        if session.cached(cfg) is None:
            merge(session, cfg, progress)
            made += 1
    return made
