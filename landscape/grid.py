"""Metrics at many plane points at once: ``functional_call`` + ``vmap`` over chunks of coordinates.

Each point's weights are built on the device as origin + x u + y v (float32), so no per-point state
dict is materialised. Two BatchNorm modes:

  * ``exact``: BN running statistics are recomputed at every point on the fixed calibration
    images (train-mode forward, cumulative average; Garipov et al. 2018 ``utils.update_bn``; the
    BN reset of ZipIt!/MuDSC), then the point is evaluated in eval mode. Under ``vmap`` every point
    gets its own stacked statistics buffers, updated in place by the train-mode forward; the
    cumulative average uses momentum n_b / (seen + n_b) per batch because ``momentum=None`` reads
    the batched counter with ``.item()``.
  * ``preview``: every point uses one given set of statistics (frozen BN statistics): cheap, wrong
    between models; results say so.

The per-point loop runs the same point function without ``vmap`` (convolution weights in
channels-last layout, which oneDNN runs faster); it is the fallback for models ``vmap`` cannot
handle and the reference the tests hold ``vmap`` to. ``method='auto'`` takes ``vmap`` except for
convolutional models on CPU, where batching points turns every convolution into a grouped one that
is no faster than the loop (benchmarks/RESULTS.md, "Loss-landscape grid speed"). Where the
hardware runs bf16 natively (CUDA, CPUs with AVX512-BF16 or AMX) the forward runs under bf16
autocast by default (BN statistics and losses stay float32); ``autocast=False`` gives float32.
"""
from __future__ import annotations

import copy
import warnings
from typing import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from landscape.evaluate import EvalSet
from landscape.plane import Plane
from mudsc.device import available_memory
from mudsc.errors import ConfigError
from mudsc.evaluate import Sums, TaskLayout, means, metric_sums, task_counts

BN_LABELS = {"exact": "exact", "preview": "preview (frozen BN statistics)"}
METHODS = ("auto", "vmap", "loop")
_GiB = 2 ** 30


def native_bf16(device: torch.device | str) -> bool:
    """Whether bf16 autocast runs natively: CUDA, or a CPU whose oneDNN has bf16 kernels (AVX512-BF16, AMX)."""
    device = torch.device(device)
    if device.type == "cuda":
        return True
    try:
        return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def precision_label(autocast: bool) -> str:
    """How results record the forward precision (part of the cache key)."""
    return "bf16-autocast" if autocast else "float32"


def bn_modules(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """BatchNorm layers that keep running statistics, by module name."""
    return {n: m for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats}


def bn_buffer_names(model: nn.Module) -> tuple[str, ...]:
    """State-dict names of the BN running statistics (running_mean, running_var, num_batches_tracked)."""
    return tuple(f"{n}.{b}" for n, m in bn_modules(model).items() for b, _ in m.named_buffers(recurse=False))


def check_bn_mode(bn_mode: str) -> str:
    if bn_mode not in BN_LABELS:
        raise ConfigError(f"unknown BN mode {bn_mode!r}; choose {' or '.join(map(repr, BN_LABELS))}")
    return bn_mode


def progressive_order(ny: int, nx: int, *, strides: tuple[int, ...] = (4, 2, 1)) -> Tensor:
    """Flat indices of an [ny, nx] grid, coarse sub-grids first (every 4th point, then every 2nd, ...)."""
    seen = torch.zeros(ny * nx, dtype=torch.bool)
    order = []
    for s in strides:
        ii, jj = torch.meshgrid(torch.arange(0, ny, s), torch.arange(0, nx, s), indexing="ij")
        flat = (ii * nx + jj).reshape(-1)
        flat = flat[~seen[flat]]
        seen[flat] = True
        order.append(flat)
    rest = torch.nonzero(~seen).squeeze(1)
    return torch.cat(order + [rest])


def check_method(method: str, evaluator: "PointEvaluator") -> str:
    """``auto`` -> the evaluator's faster method; refuses unknown names."""
    if method not in METHODS:
        raise ConfigError(f"unknown grid method {method!r}; choose one of {', '.join(METHODS)}")
    return evaluator.default_method() if method == "auto" else method


class PointEvaluator:
    """Per-task and joint metrics of `template` at plane points, on the eval set's device.

    Args:
        template: module whose state-dict names match the plane (deep-copied, never modified).
        plane: coordinates -> weights.
        eval_set: fixed evaluation examples and calibration images.
        bn_mode: ``exact`` or ``preview``.
        stats: preview-mode BN statistics (state dict holding them); default the plane's ``base``.
        autocast: bf16 autocast; default where the hardware runs bf16 natively (:func:`native_bf16`).
    """

    def __init__(self, template: nn.Module, plane: Plane, eval_set: EvalSet, *, bn_mode: str = "exact",
                 stats: Mapping[str, Tensor] | None = None, autocast: bool | None = None) -> None:
        self.bn_mode = check_bn_mode(bn_mode)
        dev = eval_set.device
        self.device = dev
        self.model = copy.deepcopy(template).to(dev).eval()
        self.bns = bn_modules(self.model)
        self.bn_names = bn_buffer_names(self.model)
        self.layout = TaskLayout.from_outputs(eval_set.tasks, template.output_classes).to(dev)
        self.eval_batches = eval_set.batches()
        self.calib = eval_set.calib_batches()
        if self.bns and bn_mode == "exact" and not self.calib:
            raise ConfigError("exact BN mode needs calibration images (calib_size > 0) for this BatchNorm model")
        self.counts = task_counts(eval_set.y, self.layout).double().cpu()
        self.n = len(eval_set.y)
        self.autocast = native_bf16(dev) if autocast is None else bool(autocast)
        self.has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in self.model.modules())
        self.plane = plane
        self.origin, self.u, self.v = (t.to(dev, torch.float32) for t in (plane.origin, plane.u, plane.v))
        self.slices, off = [], 0
        for name, shape in zip(plane.names, plane.shapes):
            k = int(torch.Size(shape).numel())
            self.slices.append((name, off, k, shape))
            off += k
        base = {k: t.to(dev) for k, t in plane.base.items()}
        if bn_mode == "preview" and stats is not None:
            base.update({k: stats[k].to(dev) for k in self.bn_names if k in stats})
        missing = [k for k in self.bn_names if k not in base and bn_mode == "preview"]
        if missing:
            raise ConfigError(f"preview BN mode needs statistics, but {missing[0]!r} is missing")
        keep = set(self.bn_names) if bn_mode == "preview" else set()
        self.fixed = {k: t for k, t in base.items() if k not in self.bn_names or k in keep}
        self.bn_shapes = {}
        for mname, m in self.bns.items():
            for b, t in m.named_buffers(recurse=False):
                self.bn_shapes[f"{mname}.{b}"] = (b, tuple(t.shape), t.dtype)

    @property
    def exact_bn(self) -> bool:
        return self.bn_mode == "exact" and bool(self.bns)

    def fresh_stats(self, g: int | None = None) -> dict[str, Tensor]:
        """Reset BN statistics (mean 0, var 1, count 0), stacked [g, ...] when `g` is given."""
        out = {}
        for name, (b, shape, dt) in self.bn_shapes.items():
            full = shape if g is None else (g, *shape)
            fill = torch.ones if b == "running_var" else torch.zeros
            out[name] = fill(full, dtype=dt, device=self.device)
        return out

    @property
    def precision(self) -> str:
        return precision_label(self.autocast)

    def default_method(self) -> str:
        """``vmap`` on CUDA and for convolution-free models; the channels-last loop for conv nets on CPU."""
        return "loop" if self.has_conv and self.device.type == "cpu" else "vmap"

    def _params(self, c: Tensor, *, channels_last: bool = False) -> dict[str, Tensor]:
        flat = self.origin + c[0] * self.u + c[1] * self.v
        out = {n: flat[o:o + k].view(s) for n, o, k, s in self.slices}
        if channels_last:  # vmap cannot batch memory formats, so only the loop gets this
            out = {n: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t for n, t in out.items()}
        return out

    def _forward(self, params: dict, buffers: dict, x: Tensor):
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return functional_call(self.model, (params, buffers), (x,))

    def point_sums(self, params: dict[str, Tensor], stats: dict[str, Tensor]) -> Sums:
        """One point's metric sums; `stats` are fresh BN buffers (exact mode), updated in place."""
        buffers = {**self.fixed, **stats}
        if self.exact_bn:
            self.model.train()
            seen = 0
            try:
                for x in self.calib:
                    for m in self.bns.values():
                        m.momentum = len(x) / (seen + len(x))
                    self._forward(params, buffers, x)
                    seen += len(x)
            finally:
                self.model.eval()
        total = None
        for x, y in self.eval_batches:
            s = metric_sums(self._forward(params, buffers, x), y, self.layout)
            total = s if total is None else tuple(a + b for a, b in zip(total, s))
        return total

    def coords_sums(self, coords: Tensor, *, vectorize: bool) -> Sums:
        """[g, 2] -> sums with a leading [g] dimension."""
        c = torch.as_tensor(coords, dtype=torch.float32, device=self.device).reshape(-1, 2)
        with torch.no_grad():
            if vectorize:
                stats = self.fresh_stats(len(c)) if self.exact_bn else {}
                fn = lambda ci, st: self.point_sums(self._params(ci), st)  # noqa: E731
                return vmap(fn, in_dims=(0, 0))(c, stats)
            outs = [self.point_sums(self._params(ci, channels_last=True), self.fresh_stats() if self.exact_bn else {})
                    for ci in c]
            return tuple(torch.stack(z) for z in zip(*outs))

    def memory_needed(self, points: int, *, method: str, chunk_size: int) -> dict[str, int]:
        """Bytes a run over `points` grid points would hold at once: result grids, per-point weights, activations.

        Activations are measured by one probe forward (hooks on every module, one image), scaled by
        the largest batch and by the points evaluated at once (the chunk under ``vmap``, one in the loop).
        """
        sizes = []
        hooks = [m.register_forward_hook(lambda _m, _i, o: sizes.append(o.numel() * o.element_size())
                                         if isinstance(o, Tensor) else None)
                 for m in self.model.modules() if not list(m.children())]
        try:
            with torch.no_grad():
                stats = self.fresh_stats() if self.exact_bn else {}
                self._forward(self._params(torch.zeros(2, device=self.device)), {**self.fixed, **stats},
                              self.eval_batches[0][0][:1])
        finally:
            for h in hooks:
                h.remove()
        per_image = 3 * max(sizes, default=0)  # a residual block keeps about three feature maps alive
        batch = max([self.eval_batches[0][0].shape[0]] + [len(x) for x in self.calib])
        at_once = min(chunk_size, points) if method == "vmap" else 1
        return {"grid": points * (4 + 2 * len(self.counts)) * 8 * 2,  # float64 grids + progressive order
                "weights": at_once * self.origin.numel() * 4 * 2,
                "activations": at_once * batch * per_image}

    def check_memory(self, points: int, *, method: str, chunk_size: int, grid_shape: tuple[int, int]) -> None:
        """Refuse, with the size it would need, a run that would not fit in the device's free memory."""
        need = self.memory_needed(points, method=method, chunk_size=chunk_size)
        free = available_memory(self.device)
        if sum(need.values()) > 0.8 * free:
            ny, nx = grid_shape
            parts = ", ".join(f"{k} {v / _GiB:.2f}" for k, v in need.items())
            raise ConfigError(
                f"a {ny}x{nx} grid needs about {sum(need.values()) / _GiB:.1f} GiB on {self.device} ({parts} GiB), "
                f"but only {free / _GiB:.1f} GiB is free: lower the grid resolution, the chunk size or the "
                "number of evaluation / calibration images")

    def state_sums(self, sd: Mapping[str, Tensor]) -> Sums:
        """Sums of one model given as a state dict (its coordinate tensors; BN per the mode)."""
        params = {n: sd[n].to(self.device, torch.float32) for n in self.plane.names}
        with torch.no_grad():
            return self.point_sums(params, self.fresh_stats() if self.exact_bn else {})

    def means(self, sums: Sums) -> dict[str, Tensor]:
        """Sums (leading dims [...]) -> mean metrics: task_loss/task_acc [..., K], joint_loss/joint_acc [...]."""
        return means(tuple(t.double().cpu() for t in sums), self.counts, self.n)


def evaluate_coords(evaluator: PointEvaluator, coords: Tensor, *, method: str = "auto", chunk_size: int = 16,
                    progress: Callable[[int, int], None] | None = None,
                    should_stop: Callable[[], bool] | None = None,
                    on_chunk: Callable[[Tensor, dict[str, Tensor]], None] | None = None) -> tuple[Tensor, str]:
    """[g, 2] coordinates -> (flat indices done, method used), in chunks of `chunk_size` points.

    `on_chunk(indices, means)` receives each finished chunk; `should_stop()` is checked between
    chunks, so a cancelled run keeps what it finished. ``method='vmap'`` falls back to the loop (with
    a warning) when vmap cannot run the model; ``'auto'`` is :meth:`PointEvaluator.default_method`.
    """
    method = check_method(method, evaluator)
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be at least 1, got {chunk_size}")
    coords = torch.as_tensor(coords, dtype=torch.float64).reshape(-1, 2)
    total = len(coords)
    done = []
    for start in range(0, total, chunk_size):
        if should_stop is not None and should_stop():
            break
        idx = torch.arange(start, min(start + chunk_size, total))
        try:
            sums = evaluator.coords_sums(coords[idx], vectorize=method == "vmap")
        except (RuntimeError, NotImplementedError) as e:
            if method != "vmap":
                raise
            warnings.warn(f"vmap cannot evaluate this model ({str(e).splitlines()[0][:120]}); "
                          "using the per-point loop", RuntimeWarning, stacklevel=2)
            method = "loop"
            sums = evaluator.coords_sums(coords[idx], vectorize=False)
        if on_chunk is not None:
            on_chunk(idx, evaluator.means(sums))
        done.append(idx)
        if progress is not None:
            progress(int(sum(len(d) for d in done)), total)
    return (torch.cat(done) if done else torch.zeros(0, dtype=torch.long)), method
