"""Same-initialisation merging of state dicts fine-tuned from one base: the named methods.

* ``average``: the mean of the fine-tuned models (model soups, Wortsman et al., ICML 2022).
* ``task-arithmetic``: ``base + lam * sum_i (theta_i - base)`` (Ilharco et al., ICLR 2023, Sec. 2).
* ``ties``: trim each task vector to its top-``density`` magnitudes, elect the sign of the summed
  mass, average the agreeing entries (Yadav et al., NeurIPS 2023, Sec. 3, Alg. 1).
* ``fisher``: diagonal Fisher-weighted average, closed form (Matena & Raffel, NeurIPS 2022, Eq. 3).
* ``regmean``: per layer ``W = (sum_i W_i A_i)(sum_i A_i)^-1``, closed form (Jin et al., ICLR 2023).
* ``mats``: CG on the K-FAC block-Fisher objective (or on another objective), from an
  initialisation (Tam et al., TMLR 2024, Sec. 3-4); see :mod:`mudsc.sameinit.subspace`.

Only keys under ``body.`` are merged; per-task heads and everything else keep the base's values.
Parameters without statistics (norms; everything a method does not solve) and the keys named in
``buffers`` (e.g. BatchNorm running statistics) are averaged, or kept from the base when
``unsolved='base'``; integer tensors always keep the base's values.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Collection, Sequence

import torch
from torch import Tensor

from mudsc.device import default_device
from mudsc.errors import CheckpointError, ConfigError, ShapeMismatchError, UnknownNameError
from mudsc.sameinit.subspace import (INITS, identity_system, initial_point, kfac_system, regmean_system, solve_cg,
                       solve_fisher, solve_regmean, fisher_system)
from mudsc.sameinit.taskstats import TaskStats

METHODS = ("average", "task-arithmetic", "ties", "fisher", "regmean", "mats")
OBJECTIVES = ("kfac", "regmean", "fisher", "identity")
BODY = "body."
StateDict = dict[str, Tensor]


@dataclass(frozen=True)
class SameInitConfig:
    """What to merge and how; JSON-serialisable through :meth:`to_dict` / :meth:`from_dict`.

    Args:
        method: one of :data:`METHODS`.
        lam: task-arithmetic scale (also the ``task-arithmetic`` initialisation's).
        ties_density: fraction of each task vector TIES keeps (top magnitudes over the whole body).
        ties_lambda: scale of the TIES-merged task vector.
        alpha: off-diagonal scaling of Grams and gradient factors, in [0, 1] (1 keeps them whole).
        objective: the ``mats`` objective, one of :data:`OBJECTIVES`.
        init: starting point of CG and null-space fallback of RegMean, one of ``INITS``.
        iterations, tol: CG step cap and relative-residual tolerance.
        damping: pull towards the initialisation, relative to each layer's mean curvature.
        fisher_floor: lower bound of each Fisher entry.
        unsolved: ``average`` or ``base``: parameters a method leaves without a solve.
    """

    method: str = "mats"
    lam: float = 0.3
    ties_density: float = 0.2
    ties_lambda: float = 1.0
    alpha: float = 1.0
    objective: str = "kfac"
    init: str = "average"
    iterations: int = 100
    tol: float = 1e-5
    damping: float = 0.0
    fisher_floor: float = 1e-8
    unsolved: str = "average"

    def __post_init__(self) -> None:
        for name, value, valid in (("method", self.method, METHODS), ("objective", self.objective, OBJECTIVES),
                                   ("init", self.init, INITS), ("unsolved", self.unsolved, ("average", "base"))):
            if value not in valid:
                raise UnknownNameError(f"unknown {name} {value!r}; choose one of {', '.join(valid)}")
        if not 0.0 < self.ties_density <= 1.0:
            raise ConfigError(f"ties_density must lie in (0, 1], got {self.ties_density}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must lie in [0, 1], got {self.alpha}")
        if self.iterations < 0 or self.tol < 0 or self.damping < 0 or self.fisher_floor < 0:
            raise ConfigError("iterations, tol, damping and fisher_floor must be non-negative")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SameInitConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown same-init options {unknown}; valid: {', '.join(sorted(known))}")
        return cls(**data)

    @property
    def stat_parts(self) -> tuple[str, ...]:
        """The :class:`~mudsc.sameinit.taskstats.TaskStats` fields this merge reads (empty: none)."""
        kind = self.objective if self.method == "mats" else self.method
        return {"regmean": ("gram",), "fisher": ("fisher",), "kfac": ("gram", "grad")}.get(kind, ())

    @property
    def needs_stats(self) -> bool:
        return bool(self.stat_parts)


@dataclass(frozen=True)
class LayerReport:
    """How one group of keys was merged: ``how`` is the method, ``cg``, ``closed-form``, ``average``
    or ``base``; residual and iterations where a linear system was solved."""

    keys: tuple[str, ...]
    how: str
    residual: float | None = None
    iterations: int | None = None


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


def ties_merge(task_vectors: Tensor, *, density: float) -> Tensor:
    """[N, P] -> [P]: TIES (Yadav et al. 2023, Alg. 1): keep each row's top ``ceil(density * P)``
    magnitudes, elect the sign of the summed kept values, average the kept values of that sign."""
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
    names = {"gram": "input Gram", "grad": "output-gradient factor", "fisher": "diagonal Fisher"}
    for part in config.stat_parts:
        ref = {k for k in getattr(stats[0], part) if k.startswith(BODY)}
        if not ref:
            raise CheckpointError(f"statistics of task 0 hold no {names[part]} for any key under {BODY!r}")
        for i, s in enumerate(stats):
            have = {k for k in getattr(s, part) if k.startswith(BODY)}
            lost = sorted(ref - have) or sorted(have - ref)
            if lost:
                who, other = (i, 0) if lost[0] in ref else (0, i)
                raise CheckpointError(f"statistics of task {who} lack the {names[part]} of {lost[0]!r} "
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


def _block(sd: StateDict, weight: str, bias: str | None, device: torch.device) -> Tensor:
    """``[W | b]`` as a float64 [d_out, d_in (+1)] matrix."""
    w = sd[weight].to(device, torch.float64)
    w = w.reshape(w.shape[0], -1)
    return torch.cat([w, sd[bias].to(device, torch.float64)[:, None]], 1) if bias else w


def merge_same_init(base: StateDict, finetuned: Sequence[StateDict], stats: Sequence[TaskStats] | None = None,
                    *, config: SameInitConfig, init: StateDict | None = None, buffers: Collection[str] = (),
                    device: torch.device | str | None = None) -> tuple[StateDict, SameInitReport]:
    """Merge `finetuned` (all fine-tuned from `base`) with ``config.method``.

    Args:
        base: the shared initialisation.
        finetuned: the task models' state dicts (same ``body.`` keys and shapes as `base`; heads may differ).
        stats: one :class:`~mudsc.sameinit.taskstats.TaskStats` per model, for ``fisher``, ``regmean``, ``mats``.
        config: the method and its options.
        init: a state dict to start CG from (and to keep in null spaces), replacing ``config.init``.
        buffers: keys that are not parameters (e.g. BatchNorm running statistics).
        device: where to solve; default :func:`mudsc.device.default_device`.

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
    params = [k for k in body if k not in skip]
    out = {k: v.clone() for k, v in base.items()}
    layers: list[LayerReport] = []
    done: set[str] = set()

    def put(key: str, value: Tensor) -> None:
        out[key] = value.to("cpu", base[key].dtype).reshape(base[key].shape)
        done.add(key)

    def start(get) -> Tensor:
        if init is not None:
            return get(init)
        return initial_point(config.init, get(base), [get(m) for m in finetuned], lam=config.lam)

    def tensor(k: str):
        return lambda sd: sd[k].to(dev, torch.float64)

    method = config.method
    if method in ("average", "task-arithmetic"):
        kind = "average" if method == "average" else "task-arithmetic"
        for k in params:
            get = tensor(k)
            put(k, initial_point(kind, get(base), [get(m) for m in finetuned], lam=config.lam))
            layers.append(LayerReport((k,), method))
    elif method == "ties":
        if params:
            tv = torch.stack([torch.cat([(m[k].to(dev, torch.float64) - base[k].to(dev, torch.float64)).flatten()
                                         for k in params]) for m in finetuned])
            merged = ties_merge(tv, density=config.ties_density) * config.ties_lambda
            offset = 0
            for k in params:
                n = base[k].numel()
                put(k, base[k].to(dev, torch.float64).flatten() + merged[offset:offset + n])
                offset += n
                layers.append(LayerReport((k,), method))
    else:
        objective = {"fisher": "fisher", "regmean": "regmean"}.get(method, config.objective)
        if objective == "fisher":
            for k in params:
                if k not in stats[0].fisher:
                    continue
                ws = [m[k].to(dev, torch.float64) for m in finetuned]
                f = [s.fisher[k].to(dev, torch.float64) for s in stats]
                x0 = start(tensor(k))
                if method == "fisher":
                    sol = solve_fisher(ws, f, x0, floor=config.fisher_floor, damping=config.damping)
                else:
                    sol = solve_cg(fisher_system(ws, f, floor=config.fisher_floor), x0,
                                   iterations=config.iterations, tol=config.tol, damping=config.damping)
                put(k, sol.x)
                layers.append(LayerReport((k,), "closed-form" if method == "fisher" else "cg",
                                          sol.residual, sol.iterations))
        elif objective == "identity":
            for k in params:
                ws = [m[k].to(dev, torch.float64) for m in finetuned]
                sol = solve_cg(identity_system(ws), start(tensor(k)),
                               iterations=config.iterations, tol=config.tol, damping=config.damping)
                put(k, sol.x)
                layers.append(LayerReport((k,), "cg", sol.residual, sol.iterations))
        else:
            for w in sorted(k for k in stats[0].gram if k.startswith(BODY)):
                b = stats[0].bias.get(w)
                ws = [_block(m, w, b, dev) for m in finetuned]
                a = [s.gram[w].to(dev, torch.float64) for s in stats]
                x0 = start(lambda sd: _block(sd, w, b, dev))
                if method == "regmean":
                    sol = solve_regmean(ws, a, x0, alpha=config.alpha, damping=config.damping)
                else:
                    system = (regmean_system(ws, a, alpha=config.alpha) if objective == "regmean" else
                              kfac_system(ws, a, [s.grad[w].to(dev, torch.float64) for s in stats],
                                          alpha=config.alpha))
                    sol = solve_cg(system, x0, iterations=config.iterations, tol=config.tol,
                                   damping=config.damping)
                put(w, sol.x[:, :-1] if b else sol.x)
                if b:
                    put(b, sol.x[:, -1])
                layers.append(LayerReport((w, b) if b else (w,), "closed-form" if method == "regmean" else "cg",
                                          sol.residual, sol.iterations))
    for k in body:
        if k in done:
            continue
        if config.unsolved == "average":
            put(k, torch.stack([m[k].to(dev, torch.float64) for m in finetuned]).mean(0))
        layers.append(LayerReport((k,), config.unsolved))
    report = SameInitReport(config, tuple(layers), tuple(k for k in base if k in done),
                            tuple(k for k in base if k not in done))
    return out, report
