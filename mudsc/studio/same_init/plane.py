"""The task-vector landscape: the plane through the base and two task models (the classic picture of
task arithmetic, Ilharco et al., ICLR 2023, Fig. 1; Garipov et al.'s three-point plane), with the
merges of the chosen methods projected onto it, evaluated by the landscape engine.

Every point is one body under every task's own head: a :class:`~mudsc.models.multihead.MultiHeadModel`
whose trunk is the body and whose heads are the task models' heads (fixed across the plane), so the
loss of each task and their mean come from the engine's one metric core, with BatchNorm statistics
recomputed at every point when the body has BatchNorm (``bn='exact'``). The plane's coordinates are
the body's trainable tensors: task vectors live there; heads are not merged.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
from torch import Tensor, nn

from landscape import GridSpec, PlaneSpec, compute_landscape, make_eval_set
from landscape.plane import trainable_names
from landscape.result import LandscapeResult
from mudsc.data import task_label
from mudsc.errors import ConfigError
from mudsc.models.heads import BODY, body_of
from mudsc.models.multihead import MultiHeadModel
from mudsc.sameinit.session import SameInitResult, SameInitSession

StateDict = dict[str, Tensor]


@dataclass
class TaskPlane:
    """The landscape's template, its models (label -> multi-head state dict) and the plane through
    the base and two task models."""

    template: nn.Module
    models: dict[str, StateDict] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)
    plane: PlaneSpec = field(default_factory=PlaneSpec)
    names: tuple[str, ...] = ()


def _template(session: SameInitSession) -> MultiHeadModel:
    m0 = session.models[0]
    return MultiHeadModel(copy.deepcopy(m0.body), [copy.deepcopy(m.head) for m in session.models],
                          [tuple(m.output_classes) for m in session.models], session.tasks).eval()


def _state(template: MultiHeadModel, heads: Mapping[str, Tensor], body: Mapping[str, Tensor]) -> StateDict:
    """The template's state with `body` (``body.*`` keys) as its trunk."""
    trunk = {"trunk." + k[len(BODY):]: v.detach().clone() for k, v in body_of(dict(body)).items()}
    return {**heads, **trunk}


def task_plane(session: SameInitSession, merges: Mapping[str, SameInitResult], *, pair: tuple[int, int] = (0, 1)
               ) -> TaskPlane:
    """Base (origin), task model ``pair[0]`` (x axis) and ``pair[1]``: the plane; every other task model
    and every merge of `merges` (label -> result) projected onto it."""
    a, b = pair
    n = len(session.models)
    if a == b or not (0 <= a < n and 0 <= b < n):
        raise ConfigError(f"the task-vector plane needs two different task models of {n}, got {pair}")
    template = _template(session)
    heads = {k: v.detach().clone() for k, v in template.state_dict().items() if k.startswith("heads.")}
    plan = TaskPlane(template)
    order = [a, b] + [i for i in range(n) if i not in (a, b)]
    plan.models["base"] = _state(template, heads, session.base)
    plan.roles["base"] = "parent"
    labels = []
    for i in order:
        lab = f"fine-tuned on {task_label(session.models[i].classes)}"
        labels.append(lab)
        plan.models[lab] = _state(template, heads, session.models[i].state_dict())
        plan.roles[lab] = "parent"
    for lab, res in merges.items():
        plan.models[f"merge: {lab}"] = _state(template, heads, res.models[0].state_dict())
        plan.roles[f"merge: {lab}"] = "merge"
    plan.names = tuple(k for k in trainable_names(template) if k.startswith("trunk."))
    plan.plane = PlaneSpec("three_point", ("base", labels[0], labels[1]))
    return plan


def task_landscape(session: SameInitSession, merges: Mapping[str, SameInitResult], *, pair: tuple[int, int] = (0, 1),
                   resolution: int = 11, per_task: int = 100, bn: str = "exact",
                   progress: Callable[[int, int], None] | None = None,
                   should_stop: Callable[[], bool] | None = None,
                   on_update: Callable[[LandscapeResult], None] | None = None) -> LandscapeResult:
    """Loss and accuracy of each task and their mean over the task-vector plane (cached on disk by
    content like every landscape; resumes after a cancel)."""
    plan = task_plane(session, merges, pair=pair)
    ev = make_eval_set(session.data, session.tasks, per_task=per_task, calib_size=256,
                       generator=torch.Generator().manual_seed(0), device=session.device)
    return compute_landscape(plan.template, plan.models, plan.plane, ev, grid=GridSpec(resolution), bn_mode=bn,
                             roles=plan.roles, names=plan.names, stats_from="base", progress=progress,
                             should_stop=should_stop, on_update=on_update)
