"""Merging as a linear system in a task parameter subspace, solved in closed form or by matrix-free CG.

MaTS (Tam, Bansal & Raffel, "Merging by Matching Models in Task Parameter Subspaces", TMLR 2024,
Sec. 3) merges by minimising ``sum_i (theta - theta_i)^T C_i (theta - theta_i)``, i.e. by solving
``(sum_i C_i) theta = sum_i C_i theta_i`` per parameter block. The objectives here:

* identity (``C_i = I``): the simple average;
* diagonal Fisher (``C_i = diag F_i``): Fisher merging (Matena & Raffel, NeurIPS 2022, Eq. 3);
* RegMean (``C_i = A_i (x) I``): ``W (sum A_i) = sum W_i A_i`` (Jin et al., ICLR 2023, Eq. 2),
  with the off-diagonal scaling ``A <- alpha A + (1 - alpha) diag(A)`` (their Sec. 3.2);
* K-FAC block Fisher (``C_i = A_i (x) G_i``): ``sum_i G_i W A_i = sum_i G_i W_i A_i`` (MaTS Sec. 4),
  which has no closed form and is solved by conjugate gradient (MaTS Sec. 3.2).

A block is a matrix ``W [d_out, d_in]`` in PyTorch's layout (``W x``); a convolution kernel is
reshaped to ``[d_out, c_in*kh*kw]`` and a folded bias is ``W``'s last column. All solves run in the
dtype of their inputs (callers pass float64). Damping ``delta`` adds ``delta * ||W - W0||^2`` to the
objective, i.e. ``delta I`` to the operator and ``delta W0`` to the right-hand side, so that it pulls
towards the initialisation and, like CG, never moves null-space components away from it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from mudsc.errors import ConfigError, ShapeMismatchError

INITS = ("average", "task-arithmetic", "base", "zeros")


@dataclass(frozen=True)
class LinearSystem:
    """``apply(V) = (sum_i C_i) V`` for ``V`` shaped like ``rhs = sum_i C_i W_i``; ``scale`` is the mean
    diagonal entry of ``sum_i C_i``, the unit of relative damping."""

    apply: Callable[[Tensor], Tensor]
    rhs: Tensor
    scale: float


@dataclass(frozen=True)
class Solution:
    """A solved block, its relative residual ``||b - C x|| / ||b||`` and the CG steps taken;
    ``history`` is CG's relative residual before the first step and after each one (empty for
    closed forms); ``indefinite`` says CG met a direction of clearly negative curvature and stopped."""

    x: Tensor
    residual: float
    iterations: int
    history: tuple[float, ...] = ()
    indefinite: bool = False

    @property
    def diverged(self) -> bool:
        """Whether the solve cannot be trusted: an indefinite operator, or see :func:`diverged`."""
        return self.indefinite or diverged(self.history, self.residual)


def diverged(history: Sequence[float], residual: float | None = None) -> bool:
    """Whether a CG run diverged: a non-finite residual, or a last residual above the first. On a
    positive semi-definite system CG's residual may oscillate but ends below where it began; it grows
    when the statistics give an indefinite operator (corrupt or foreign statistics files)."""
    values = [*history, *([] if residual is None else [residual])]
    if any(not math.isfinite(v) for v in values):
        return True
    return len(values) > 1 and values[-1] > values[0] * (1 + 1e-6)  # rounding of an unmoved x is no growth


def _check_same(weights: Sequence[Tensor], what: str) -> None:
    if not weights:
        raise ConfigError(f"{what}: no weights to merge")
    for i, w in enumerate(weights):
        if w.shape != weights[0].shape:
            raise ShapeMismatchError(f"{what}: weight {i} has shape {tuple(w.shape)}, "
                                     f"weight 0 {tuple(weights[0].shape)}")


def scale_offdiagonal(m: Tensor, alpha: float) -> Tensor:
    """[d, d] -> [d, d]: ``alpha * M + (1 - alpha) * diag(M)`` (RegMean, Jin et al. 2023, Sec. 3.2)."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"off-diagonal scaling alpha must lie in [0, 1], got {alpha}")
    if alpha == 1.0:
        return m
    return alpha * m + (1.0 - alpha) * torch.diag_embed(torch.diagonal(m))


def initial_point(kind: str, base: Tensor, weights: Sequence[Tensor], *, lam: float = 0.3) -> Tensor:
    """[...], N x [...] -> [...]: the average, ``base + lam * sum_i (W_i - base)``, the base, or zeros."""
    if kind == "average":
        return torch.stack(list(weights)).mean(0)
    if kind == "task-arithmetic":
        return base + lam * torch.stack([w - base for w in weights]).sum(0)
    if kind == "base":
        return base.clone()
    if kind == "zeros":
        return torch.zeros_like(base)
    raise ConfigError(f"unknown initialisation {kind!r}; choose one of {', '.join(INITS)}")


def identity_system(weights: Sequence[Tensor]) -> LinearSystem:
    """N x [...] -> system ``N V = sum_i W_i``."""
    _check_same(weights, "identity objective")
    n = len(weights)
    return LinearSystem(lambda v: n * v, torch.stack(list(weights)).sum(0), float(n))


def fisher_system(weights: Sequence[Tensor], fishers: Sequence[Tensor], *, floor: float = 1e-8) -> LinearSystem:
    """N x [...], N x [...] -> system ``(sum_i F_i) * V = sum_i F_i * W_i`` (elementwise), each F_i
    floored at `floor` so that a parameter no task cares about is averaged."""
    _check_same(list(weights) + list(fishers), "Fisher objective")
    f = [fi.clamp_min(floor) for fi in fishers]
    total = torch.stack(f).sum(0)
    rhs = torch.stack([fi * w for fi, w in zip(f, weights)]).sum(0)
    return LinearSystem(lambda v: total * v, rhs, float(total.mean()))


def regmean_system(weights: Sequence[Tensor], grams: Sequence[Tensor], *, alpha: float = 1.0) -> LinearSystem:
    """N x [o, d], N x [d, d] -> system ``V (sum_i A_i) = sum_i W_i A_i``."""
    _check_same(weights, "RegMean objective")
    a = [_check_factor(scale_offdiagonal(ai, alpha), weights[0].shape[1], "Gram") for ai in grams]
    total = torch.stack(a).sum(0)
    rhs = torch.stack([w @ ai for w, ai in zip(weights, a)]).sum(0)
    return LinearSystem(lambda v: v @ total, rhs, float(torch.diagonal(total).mean()))


def kfac_system(weights: Sequence[Tensor], grams: Sequence[Tensor], grads: Sequence[Tensor], *,
                alpha: float = 1.0) -> LinearSystem:
    """N x [o, d], N x [d, d], N x [o, o] -> system ``sum_i G_i V A_i = sum_i G_i W_i A_i``.

    `alpha` scales the off-diagonals of both factors, as MaTS does."""
    _check_same(weights, "K-FAC objective")
    o, d = weights[0].shape
    a = [_check_factor(scale_offdiagonal(ai, alpha), d, "Gram") for ai in grams]
    g = [_check_factor(scale_offdiagonal(gi, alpha), o, "output-gradient factor") for gi in grads]
    if not len(a) == len(g) == len(weights):
        raise ConfigError(f"K-FAC objective: {len(weights)} weights, {len(a)} Grams, {len(g)} gradient factors")
    rhs = torch.stack([gi @ w @ ai for w, ai, gi in zip(weights, a, g)]).sum(0)
    scale = sum(float(torch.diagonal(ai).mean() * torch.diagonal(gi).mean()) for ai, gi in zip(a, g))

    def apply(v: Tensor) -> Tensor:
        out = torch.zeros_like(v)
        for ai, gi in zip(a, g):
            out += gi @ v @ ai
        return out

    return LinearSystem(apply, rhs, scale)


def _check_factor(m: Tensor, d: int, what: str) -> Tensor:
    if m.shape != (d, d):
        raise ShapeMismatchError(f"{what} has shape {tuple(m.shape)}, the weight needs ({d}, {d})")
    return m


def _relative_residual(apply: Callable[[Tensor], Tensor], rhs: Tensor, x: Tensor) -> float:
    b = float(torch.linalg.vector_norm(rhs))
    r = float(torch.linalg.vector_norm(rhs - apply(x)))
    return r / b if b > 0 else r


def conjugate_gradient(apply: Callable[[Tensor], Tensor], rhs: Tensor, x0: Tensor, *, iterations: int = 100,
                       tol: float = 1e-5) -> Solution:
    """[...] -> [...]: at most `iterations` CG steps on ``apply(x) = rhs`` from `x0` (Hestenes &
    Stiefel, 1952), `apply` symmetric positive semi-definite; stops once ``||r|| <= tol * ||rhs||``.

    Every step moves ``x`` within the Krylov space of ``rhs - apply(x0)``, which lies in the range of
    `apply` when the system is consistent, so components of `x0` in its null space are kept."""
    if iterations < 0:
        raise ConfigError(f"conjugate gradient: iterations must be >= 0, got {iterations}")
    if x0.shape != rhs.shape:
        raise ShapeMismatchError(f"conjugate gradient: x0 has shape {tuple(x0.shape)}, rhs {tuple(rhs.shape)}")
    x = x0.clone()
    r = rhs - apply(x)
    p = r.clone()
    rs = torch.vdot(r.flatten(), r.flatten()).real
    b2 = torch.vdot(rhs.flatten(), rhs.flatten()).real
    stop = (tol * torch.linalg.vector_norm(rhs)) ** 2
    # CG's recurrence residual, relative to ||rhs|| (one float per step, for the app's residual chart)
    history = [float((rs / b2).sqrt()) if b2 > 0 else float(rs.sqrt())]
    steps, indefinite = 0, False
    while steps < iterations and rs > stop:
        ap = apply(p)
        curvature = torch.vdot(p.flatten(), ap.flatten()).real
        if curvature <= 0:
            # Zero up to rounding: p has left the operator's range, nothing more to gain. Clearly
            # negative (beyond |p.Ap| <= |p||Ap| times rounding): the operator is indefinite.
            bound = torch.linalg.vector_norm(p) * torch.linalg.vector_norm(ap)
            indefinite = bool(curvature < -1e-8 * bound)
            break
        step = rs / curvature
        x += step * p
        r -= step * ap
        rs_new = torch.vdot(r.flatten(), r.flatten()).real
        p = r + (rs_new / rs) * p
        rs = rs_new
        steps += 1
        history.append(float((rs / b2).sqrt()) if b2 > 0 else float(rs.sqrt()))
    return Solution(x, _relative_residual(apply, rhs, x), steps, tuple(history), indefinite)


def damped(system: LinearSystem, x0: Tensor, damping: float) -> LinearSystem:
    """The system of ``sum_i ||W - W_i||^2_{C_i} + delta ||W - x0||^2`` with ``delta = damping * scale``."""
    if damping < 0:
        raise ConfigError(f"damping must be >= 0, got {damping}")
    if damping == 0:
        return system
    delta = damping * system.scale
    return LinearSystem(lambda v: system.apply(v) + delta * v, system.rhs + delta * x0, system.scale)


def solve_cg(system: LinearSystem, x0: Tensor, *, iterations: int = 100, tol: float = 1e-5,
             damping: float = 0.0) -> Solution:
    """[o, d] -> [o, d]: CG on `system` (damping relative to ``system.scale``) from `x0`."""
    s = damped(system, x0, damping)
    return conjugate_gradient(s.apply, s.rhs, x0, iterations=iterations, tol=tol)


def solve_fisher(weights: Sequence[Tensor], fishers: Sequence[Tensor], x0: Tensor, *, floor: float = 1e-8,
                 damping: float = 0.0) -> Solution:
    """N x [...] -> [...]: closed-form Fisher merge ``sum_i F_i W_i / sum_i F_i`` (Matena & Raffel, Eq. 3)."""
    s = damped(fisher_system(weights, fishers, floor=floor), x0, damping)
    total = s.apply(torch.ones_like(x0))
    x = s.rhs / total
    return Solution(x, _relative_residual(s.apply, s.rhs, x), 0)


def solve_regmean(weights: Sequence[Tensor], grams: Sequence[Tensor], x0: Tensor, *, alpha: float = 1.0,
                  damping: float = 0.0, rtol: float = 1e-10) -> Solution:
    """N x [o, d], N x [d, d] -> [o, d]: closed-form RegMean ``(sum_i W_i A_i)(sum_i A_i)^-1``.

    A singular ``sum_i A_i`` (dead or collinear input features) is pseudo-inverted: eigenvalues below
    ``rtol`` times the largest count as zero, and the solution keeps `x0` in that null space, which is
    where CG from `x0` converges to."""
    _check_same(weights, "RegMean objective")
    a = [_check_factor(scale_offdiagonal(ai, alpha), weights[0].shape[1], "Gram") for ai in grams]
    total = torch.stack(a).sum(0)
    s = damped(regmean_system(weights, a), x0, damping)
    if damping:
        total = total + damping * s.scale * torch.eye(len(total), dtype=total.dtype, device=total.device)
    evals, evecs = torch.linalg.eigh(total)
    keep = evals > rtol * evals.abs().max().clamp_min(torch.finfo(evals.dtype).tiny)
    inv = torch.where(keep, 1.0 / torch.where(keep, evals, torch.ones_like(evals)), torch.zeros_like(evals))
    residual = s.rhs - x0 @ total
    x = x0 + ((residual @ evecs) * inv) @ evecs.T
    return Solution(x, _relative_residual(s.apply, s.rhs, x), 0)
