"""Same-init merges weighted by each task's curvature statistics: ``fisher``, ``regmean`` and
``mats``, registered under their :mod:`mudsc.methods` names.

All three solve MaTS's ``(sum_i C_i) theta = sum_i C_i theta_i`` per block (Tam et al., TMLR 2024,
Sec. 3; :mod:`mudsc.sameinit.subspace`), with ``C_i`` a diagonal Fisher (per parameter) or built
from a layer's input Gram (per linear or convolution layer, ``[W | b]`` with its folded bias).
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import Tensor

from mudsc.models.heads import BODY
from mudsc.sameinit.registry import LayerReport, Merged, MergeJob, Reader, StateDict, register
from mudsc.sameinit.subspace import (
    LinearSystem,
    fisher_system,
    identity_system,
    kfac_system,
    regmean_system,
    solve_cg,
    solve_fisher,
    solve_regmean,
)

Block = tuple[tuple[str, ...], Reader]  # the keys a block fills, and how to read it from a state dict


def _block(sd: StateDict, weight: str, bias: str | None, device: torch.device) -> Tensor:
    """``[W | b]`` as a float64 [d_out, d_in (+1)] matrix."""
    w = sd[weight].to(device, torch.float64)
    w = w.reshape(w.shape[0], -1)
    return torch.cat([w, sd[bias].to(device, torch.float64)[:, None]], 1) if bias else w


def _parameters(job: MergeJob) -> Iterator[Block]:
    """Every parameter, alone."""
    for k in job.params:
        yield (k,), job.reader(k)


def _fisher_parameters(job: MergeJob) -> Iterator[Block]:
    """The parameters with a diagonal Fisher (the rest are left unsolved)."""
    for keys, get in _parameters(job):
        if keys[0] in job.stats[0].fisher:
            yield keys, get


def _layers(job: MergeJob) -> Iterator[Block]:
    """Every layer with an input Gram, as ``[W | b]``."""
    for w in sorted(k for k in job.stats[0].gram if k.startswith(BODY)):
        b = job.stats[0].bias.get(w)
        yield ((w, b) if b else (w,)), (lambda sd, w=w, b=b: _block(sd, w, b, job.device))


def _factors(job: MergeJob, part: str, keys: tuple[str, ...]) -> list[Tensor]:
    """Each task's statistic `part` (``gram``, ``grad`` or ``fisher``) of the block `keys`."""
    return [getattr(s, part)[keys[0]].to(job.device, torch.float64) for s in job.stats]


def _unblock(keys: tuple[str, ...], x: Tensor) -> dict[str, Tensor]:
    """A solved block back to its tensors (``[W | b]`` to the weight and the bias)."""
    return {keys[0]: x[:, :-1], keys[1]: x[:, -1]} if len(keys) == 2 else {keys[0]: x}


@register("fisher")
def fisher(job: MergeJob) -> Iterator[Merged]:
    """Fisher merging (Matena & Raffel, NeurIPS 2022, Eq. 3): ``theta = sum_i F_i theta_i / sum_i F_i``
    per parameter, ``F_i`` the diagonal Fisher floored at ``fisher_floor``; closed form."""
    cfg = job.config
    for keys, get in _fisher_parameters(job):
        sol = solve_fisher(job.weights(get), _factors(job, "fisher", keys), job.start(get), floor=cfg.fisher_floor,
                           damping=cfg.damping)
        yield _unblock(keys, sol.x), LayerReport(keys, "closed-form", sol.residual, sol.iterations)


@register("regmean")
def regmean(job: MergeJob) -> Iterator[Merged]:
    """RegMean (Jin et al., ICLR 2023, Eq. 2): per layer ``W = (sum_i W_i A_i)(sum_i A_i)^-1``, ``A_i``
    the input Gram with off-diagonals scaled by ``alpha`` (their Sec. 3.2); closed form, the
    initialisation kept in the null space of ``sum_i A_i``."""
    cfg = job.config
    for keys, get in _layers(job):
        sol = solve_regmean(job.weights(get), _factors(job, "gram", keys), job.start(get), alpha=cfg.alpha,
                            damping=cfg.damping)
        yield _unblock(keys, sol.x), LayerReport(keys, "closed-form", sol.residual, sol.iterations)


def _kfac(job: MergeJob, keys: tuple[str, ...], ws: list[Tensor]) -> LinearSystem:
    return kfac_system(ws, _factors(job, "gram", keys), _factors(job, "grad", keys), alpha=job.config.alpha)


def _regmean(job: MergeJob, keys: tuple[str, ...], ws: list[Tensor]) -> LinearSystem:
    return regmean_system(ws, _factors(job, "gram", keys), alpha=job.config.alpha)


def _fisher(job: MergeJob, keys: tuple[str, ...], ws: list[Tensor]) -> LinearSystem:
    return fisher_system(ws, _factors(job, "fisher", keys), floor=job.config.fisher_floor)


def _identity(job: MergeJob, keys: tuple[str, ...], ws: list[Tensor]) -> LinearSystem:
    return identity_system(ws)


# mats objective -> (its blocks, its system per block)
_OBJECTIVES: dict[str, tuple[Callable[[MergeJob], Iterator[Block]],
                             Callable[[MergeJob, tuple[str, ...], list[Tensor]], LinearSystem]]] = {
    "kfac": (_layers, _kfac), "regmean": (_layers, _regmean),
    "fisher": (_fisher_parameters, _fisher), "identity": (_parameters, _identity),
}


@register("mats")
def mats(job: MergeJob) -> Iterator[Merged]:
    """MaTS (Tam et al., TMLR 2024, Sec. 3-4): at most ``iterations`` conjugate-gradient steps (their
    Sec. 3.2) on ``(sum_i C_i) theta = sum_i C_i theta_i`` from the initialisation, per block.

    ``C_i`` by ``objective``: ``kfac``, the K-FAC block Fisher ``A_i (x) G_i``, i.e.
    ``sum_i G_i W A_i = sum_i G_i W_i A_i`` (their Sec. 4); ``regmean``, ``A_i (x) I``; ``fisher``,
    the diagonal Fisher; ``identity``, ``I`` (the average)."""
    cfg = job.config
    blocks, system = _OBJECTIVES[cfg.objective]
    for keys, get in blocks(job):
        ws = job.weights(get)
        sol = solve_cg(system(job, keys, ws), job.start(get), iterations=cfg.iterations, tol=cfg.tol,
                       damping=cfg.damping)
        yield _unblock(keys, sol.x), LayerReport(keys, "cg", sol.residual, sol.iterations, sol.history, sol.indefinite)
