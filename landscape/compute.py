"""compute_landscape: the one entry point the CLI and the app call.

Builds the plane, places the models on it, evaluates the models themselves and a grid of plane
points (coarse sub-grid first), and caches / resumes under a content fingerprint.
"""
from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import asdict, dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from landscape import plane as planes
from landscape.cache import LandscapeCache, landscape_key
from landscape.evaluate import EvalSet
from landscape.grid import (
    PointEvaluator,
    check_bn_mode,
    check_method,
    evaluate_coords,
    native_bf16,
    precision_label,
    progressive_order,
)
from landscape.result import LandscapeResult
from mudsc.distributed import Launch, RankFailedError
from mudsc.errors import ConfigError, UnknownNameError

StateDict = Mapping[str, Tensor]
# The one list of plane kinds and what each plane goes through; the app and the CLI offer these.
PLANE_KINDS = {"three_point": "three points: parent 0', parent 1' and a third model",
               "pca": "PCA through the merges and their primed parents",
               "random": "random directions around the merge (filter-normalised)"}


@dataclass(frozen=True)
class PlaneSpec:
    """Which plane: ``three_point`` through models (origin, x-axis end, third), ``pca`` through the
    listed models (empty: all), or ``random`` filter-normalised directions around one model
    (``seed``; the grid spans ``span`` direction norms each way, Li et al.'s [-1, 1] for 1)."""

    kind: str = "three_point"
    models: tuple[str, ...] = ()
    seed: int = 0
    span: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in PLANE_KINDS:
            raise ConfigError(f"unknown plane kind {self.kind!r}; choose one of {', '.join(PLANE_KINDS)}")
        object.__setattr__(self, "models", tuple(self.models))
        if self.kind == "three_point" and len(self.models) not in (0, 3):
            raise ConfigError(f"three-point plane names 3 models, got {len(self.models)}")
        if self.kind == "random" and len(self.models) > 1:
            raise ConfigError(f"random plane is centred on one model, got {len(self.models)}")
        if self.span <= 0:
            raise ConfigError(f"plane span must be positive, got {self.span}")


@dataclass(frozen=True)
class GridSpec:
    """`resolution` points along the longer side, `margin` (share of the models' extent) around them."""

    resolution: int = 21
    margin: float = 0.25

    def __post_init__(self) -> None:
        if self.resolution < 2:
            raise ConfigError(f"grid resolution must be at least 2, got {self.resolution}")
        if self.margin < 0:
            raise ConfigError(f"grid margin must be non-negative, got {self.margin}")


def build_plane(spec: PlaneSpec, models: Mapping[str, StateDict], *, names: Sequence[str]) -> planes.Plane:
    """The plane `spec` describes, through the labelled `models`."""
    labels = list(spec.models) or list(models)
    for lab in labels:
        if lab not in models:
            raise UnknownNameError(f"plane names model {lab!r}, but the models are {', '.join(models)}")
    if spec.kind == "three_point":
        if len(labels) != 3:
            raise ConfigError(f"three-point plane needs exactly 3 models, got {len(labels)}: name them")
        return planes.three_point(*(models[lab] for lab in labels), names=names)
    if spec.kind == "pca":
        return planes.pca([models[lab] for lab in labels], names=names)
    g = torch.Generator().manual_seed(int(spec.seed))
    return planes.random_directions(models[labels[0]], g, names=names)


def _should_stop(stop) -> Callable[[], bool] | None:
    if stop is None:
        return None
    if isinstance(stop, threading.Event) or hasattr(stop, "is_set"):
        return stop.is_set
    return stop


def compute_landscape(template: nn.Module, models: Mapping[str, StateDict], plane_spec: PlaneSpec,
                      eval_set: EvalSet, *, grid: GridSpec = GridSpec(), bn_mode: str = "exact",
                      chunk_size: int = 16, cache_dir: str | None = None, use_cache: bool = True,
                      progress: Callable[[int, int], None] | None = None,
                      should_stop: Callable[[], bool] | threading.Event | None = None,
                      on_update: Callable[[LandscapeResult], None] | None = None,
                      roles: Mapping[str, str] | None = None, names: Sequence[str] | None = None,
                      stats_from: str | None = None, method: str = "auto",
                      autocast: bool | None = None, launch: Launch | None = None) -> LandscapeResult:
    """Per-task and joint loss/accuracy over a plane through `models` (all in one basis).

    Args:
        template: module the state dicts load into (its ``output_classes`` give the task layout).
        models: label -> state dict; the order is the legend's order.
        plane_spec: which plane (:class:`PlaneSpec`).
        eval_set: fixed evaluation examples and BN calibration images (:func:`make_eval_set`).
        grid: resolution and margin (:class:`GridSpec`); square cells.
        bn_mode: ``exact`` (BN statistics recomputed per point) or ``preview`` (frozen statistics
            taken from model `stats_from`, default the first model).
        chunk_size: grid points per vmap call (memory ~ chunk x activations).
        cache_dir: cache directory (default ``$MUDSC_HOME/landscape``); `use_cache` False skips it.
        progress: ``progress(done, total)`` after every chunk.
        should_stop: callable or ``threading.Event``; checked between chunks. A stopped run returns
            the partial result (``result.complete`` False) and caches it for resuming.
        on_update: receives the result after every chunk (coarse sub-grid first).
        roles: label -> 'parent' / 'merge' / ... for the figure's markers (default 'model').
        names: coordinate tensors (default: the template's trainable parameters).
        method: ``auto`` (see :func:`landscape.grid.evaluate_coords`), ``vmap`` (falls back to the
            loop if the model is not vmappable) or ``loop``.
        autocast: bf16 autocast (default: where the hardware runs bf16 natively).
        launch: a torchrun job (:class:`mudsc.distributed.Launch`): every rank evaluates every
            world-th missing point, keeps them in its part file of the cache, and rank 0 gathers
            them into the result it returns and caches (other ranks return only their own points).
            Every rank must be given the same inputs (checked through the cache key).
    """
    if not models:
        raise ConfigError("compute_landscape needs at least one model")
    check_bn_mode(bn_mode)
    names = tuple(names) if names is not None else planes.trainable_names(template)
    labels = list(models)
    stats_label = stats_from or labels[0]
    if stats_label not in models:
        raise UnknownNameError(f"stats_from names model {stats_label!r}, but the models are {', '.join(labels)}")
    planes.check_same_shapes(models, names)
    plane = build_plane(plane_spec, models, names=names)
    placed = [plane.project(models[lab]) for lab in labels]
    coords = torch.stack([c for c, _ in placed])
    if plane_spec.kind == "random":
        n1, n2 = (plane_spec.span * n for n in plane.info["direction_norms"])
        corners = torch.tensor([[-n1, -n2], [n1, n2]], dtype=torch.float64)
        xs, ys = planes.cover_grid(corners, resolution=grid.resolution, margin=0.0)
    else:
        xs, ys = planes.cover_grid(coords, resolution=grid.resolution, margin=grid.margin)
    use_autocast = native_bf16(eval_set.device) if autocast is None else bool(autocast)
    spec = {"plane": asdict(plane_spec), "grid": asdict(grid), "bn_mode": bn_mode,
            "stats_from": stats_label if bn_mode == "preview" else None,
            "precision": precision_label(use_autocast), "names": list(names),
            "template": repr(template), "output_classes": repr(template.output_classes),
            "tasks": [list(t) for t in eval_set.tasks]}
    key = landscape_key(models, data_fingerprint=eval_set.fingerprint, spec=spec)
    cache = LandscapeCache(cache_dir) if use_cache else None
    role_list = [(roles or {}).get(lab, "model") for lab in labels]

    stop = _should_stop(should_stop)
    sharded = launch is not None and launch.distributed
    main = not sharded or launch.main
    if sharded:
        launch.check_same("landscape inputs (models, data, plane, grid)", key)
    # One writer per entry across processes: a second one waits for the first, then resumes from its
    # saved points (or returns its finished result). Stopped while waiting: the saved points, read-only.
    # In a torchrun job rank 0 is the writer; the others keep their points in part files.
    with cache.lock(key, should_stop=stop) if cache is not None and main else contextlib.nullcontext(False) as writer:
        result = cache.load(key) if cache is not None and main else None
        if result is not None:  # labels are not part of the key: a cached run shows today's
            result.model_roles, result.task_names = role_list, eval_set.task_names
        if result is not None and result.complete and not sharded:
            if progress is not None:
                progress(result.done.size, result.done.size)
            return result

        evaluator = PointEvaluator(template, plane, eval_set, bn_mode=bn_mode, stats=models[stats_label],
                                   autocast=use_autocast)
        method = check_method(method, evaluator)
        # Before any grid array is allocated: a grid that cannot fit is refused with the size it needs.
        evaluator.check_memory(len(xs) * len(ys), method=method, chunk_size=chunk_size, grid_shape=(len(ys), len(xs)))
        if result is None and main:
            settings = {**spec, "plane_info": plane.describe(), "eval_set": eval_set.info,
                        "axis_units": "parameter-space L2 distance"}
            settings.pop("template")
            settings = json.loads(json.dumps(settings))  # JSON types now, so a reloaded result compares equal
            result = LandscapeResult.empty(xs.numpy(), ys.numpy(), eval_set.task_names, labels,
                                           role_list, coords.numpy(), [d for _, d in placed], bn_mode=bn_mode,
                                           settings=settings, fingerprint=key)
        if writer:  # the points the ranks of a killed torchrun job finished
            cache.absorb_parts(key, result)
        if sharded:  # every rank starts from rank 0's entry, so all agree on the missing points
            result = launch.broadcast(result, "the start of the grid")
        if result.complete:
            if progress is not None:
                progress(result.done.size, result.done.size)
            return result
        total = result.done.size
        if main:
            for i, lab in enumerate(labels):
                if torch.isnan(torch.as_tensor(result.model_joint_loss[i])):
                    result.set_model_metrics(i, evaluator.means(evaluator.state_sums(models[lab])))
        order = progressive_order(len(ys), len(xs))
        todo = order[~torch.as_tensor(result.done.reshape(-1))[order]]
        already = total - len(todo)
        if sharded:  # every world-th point of the coarse-first order: each rank sees the coarse grid early
            todo = todo[launch.rank::launch.world]
        grid_coords = torch.as_tensor(result.coords)

        def on_chunk(idx: Tensor, means: dict) -> None:
            result.update(todo[idx].numpy(), means)
            if writer and not sharded:
                cache.save(key, result)
            elif cache is not None and sharded:
                result.fingerprint = key
                result.save(cache.part_path(key, launch.rank))
            if on_update is not None:
                on_update(result)

        def prog(done: int, _total: int) -> None:
            if progress is not None:
                progress(already + done, total)

        _, used = evaluate_coords(evaluator, grid_coords[todo], method=method, chunk_size=chunk_size, progress=prog,
                                  should_stop=stop, on_chunk=on_chunk)
        result.settings["method"] = used
        if sharded:
            mine = todo.numpy()[result.done.reshape(-1)[todo.numpy()]]
            try:
                shares = launch.gather((mine, result.points(mine)), "the gather of the grid points")
            except RankFailedError as e:
                where = f" in {cache.dir}" if cache is not None else ""
                raise RankFailedError(f"{e}; each rank's finished grid points stay in the cache{where}: rerun the "
                                      "same command (any number of ranks) to compute only the missing ones") from None
            if not main:
                return result
            for idx, means in shares[1:]:
                result.update(idx, means)
        if writer:
            cache.save(key, result)
            if sharded:
                cache.absorb_parts(key, result)  # all in the entry now: the parts go
        return result
