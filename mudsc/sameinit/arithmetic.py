"""Same-init merges by arithmetic on the weights alone (no statistics): ``average``,
``task-arithmetic`` and ``ties``, registered under their :mod:`mudsc.methods` names.

With base ``theta_0`` and task models ``theta_i``, the task vectors are ``tau_i = theta_i - theta_0``.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import Tensor

from mudsc.errors import ConfigError, ShapeMismatchError
from mudsc.sameinit.registry import LayerReport, Merged, MergeJob, register
from mudsc.sameinit.subspace import initial_point


@register("average")
def average(job: MergeJob) -> Iterator[Merged]:
    """Model soups (Wortsman et al., ICML 2022), the uniform soup: ``theta = 1/N sum_i theta_i``."""
    for k in job.params:
        get = job.reader(k)
        yield {k: initial_point("average", get(job.base), job.weights(get))}, LayerReport((k,), "average")


@register("task-arithmetic")
def task_arithmetic(job: MergeJob) -> Iterator[Merged]:
    """Task arithmetic (Ilharco et al., ICLR 2023, Sec. 2): ``theta = theta_0 + lam * sum_i tau_i``."""
    for k in job.params:
        get = job.reader(k)
        yield ({k: initial_point("task-arithmetic", get(job.base), job.weights(get), lam=job.config.lam)},
               LayerReport((k,), "task-arithmetic"))


def ties_merge(task_vectors: Tensor, *, density: float) -> Tensor:
    """[N, P] -> [P]: TIES (Yadav et al., NeurIPS 2023, Sec. 3, Alg. 1): keep each row's top
    ``ceil(density * P)`` magnitudes (trim), elect the sign of the summed kept values, average the
    kept values of that sign (disjoint merge)."""
    if task_vectors.ndim != 2:
        raise ShapeMismatchError(f"ties_merge: task vectors must be [N, P], got {tuple(task_vectors.shape)}")
    if not 0.0 < density <= 1.0:
        raise ConfigError(f"ties_merge: density must lie in (0, 1], got {density}")
    n, p = task_vectors.shape
    k = max(1, math.ceil(density * p))
    idx = task_vectors.abs().topk(k, dim=1).indices
    trimmed = torch.zeros_like(task_vectors).scatter(1, idx, task_vectors.gather(1, idx))
    sign = torch.sign(trimmed.sum(0))
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
    count = agree.sum(0).clamp_min(1)
    return (trimmed * agree).sum(0) / count


@register("ties")
def ties(job: MergeJob) -> Iterator[Merged]:
    """TIES-merging (Yadav et al., NeurIPS 2023, Sec. 3, Alg. 1): ``theta = theta_0 + ties_lambda *
    tau_m`` with ``tau_m`` the :func:`ties_merge` of the task vectors, trimmed over the whole body at
    once (one flat vector per task), as the paper does."""
    if not job.params:
        return
    base = {k: job.reader(k)(job.base) for k in job.params}
    tv = torch.stack([torch.cat([(job.reader(k)(m) - base[k]).flatten() for k in job.params])
                      for m in job.finetuned])
    merged = ties_merge(tv, density=job.config.ties_density) * job.config.ties_lambda
    offset = 0
    for k in job.params:
        n = base[k].numel()
        yield {k: base[k].flatten() + merged[offset:offset + n]}, LayerReport((k,), "ties")
        offset += n
