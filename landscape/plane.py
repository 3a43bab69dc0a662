"""Two-dimensional planes through parameter space, over the flattened float parameters.

A :class:`Plane` is an origin and two orthonormal directions in the space of the *coordinate
tensors* (by default every trainable parameter; BatchNorm running statistics and other buffers are
not coordinates: they come from ``base`` or are recomputed per point). Coordinates are true
Euclidean parameter distances, so a plot with equal aspect shows real angles and lengths.

Constructors:
  * :func:`three_point` -- Garipov et al. 2018 (mode connectivity, ``plane.py``): origin ``a``,
    Gram-Schmidt axes through ``b`` and ``c``, no normalisation.
  * :func:`pca` -- the MuDSC landscape figure (Xu et al., CVPR 2024, Fig. 3): the centred model
    set's top-2 right singular vectors.
  * :func:`random_directions` -- Li et al. 2018 ("Visualizing the Loss Landscape of Neural Nets",
    Sec. 4), filter-normalised Gaussian directions.
  * :func:`line` -- a degenerate plane along a segment, for 1-D paths.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from mudsc.errors import ConfigError, ShapeMismatchError

StateDict = Mapping[str, Tensor]

# Relative size below which a Gram-Schmidt residual counts as zero (collinear / rank-deficient).
_DEGENERATE = 1e-6


def trainable_names(model: nn.Module) -> tuple[str, ...]:
    """State-dict names of the trainable float parameters: the default plane coordinates."""
    return tuple(n for n, p in model.named_parameters() if p.requires_grad and p.is_floating_point())


def flatten(sd: StateDict, names: Sequence[str]) -> Tensor:
    """{name: tensor} -> [p] float64: the named tensors concatenated in `names` order."""
    missing = [n for n in names if n not in sd]
    if missing:
        raise ShapeMismatchError(f"state dict lacks plane coordinate tensors {missing[:3]}")
    return torch.cat([sd[n].detach().reshape(-1).to("cpu", torch.float64) for n in names])


@dataclass(frozen=True)
class Plane:
    """origin [p] + x * u [p] + y * v [p] over the tensors `names` with `shapes`.

    `base` holds the non-coordinate entries (buffers) a point is completed with. `kind` and `info`
    (explained variance, direction norms) describe how the plane was built.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[torch.dtype, ...]
    origin: Tensor
    u: Tensor
    v: Tensor
    base: dict[str, Tensor] = field(default_factory=dict)
    kind: str = "custom"
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        p = sum(int(torch.Size(s).numel()) for s in self.shapes)
        for what, t in (("origin", self.origin), ("u", self.u), ("v", self.v)):
            if t.shape != (p,):
                raise ShapeMismatchError(f"plane {what} has shape {tuple(t.shape)}, expected ({p},)")

    @property
    def numel(self) -> int:
        return int(self.origin.numel())

    def flat_point(self, coords: Tensor) -> Tensor:
        """[2] -> [p] (float64): origin + x u + y v."""
        c = torch.as_tensor(coords, dtype=torch.float64)
        return self.origin + c[0] * self.u + c[1] * self.v

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """[p] -> {name: tensor} in the coordinate tensors' shapes and dtypes."""
        out, i = {}, 0
        for n, s, dt in zip(self.names, self.shapes, self.dtypes):
            k = int(torch.Size(s).numel())
            out[n] = flat[i:i + k].reshape(s).to(dt)
            i += k
        return out

    def point(self, coords: Tensor) -> dict[str, Tensor]:
        """[2] -> state dict: the plane point at `coords`, completed with `base`."""
        return {**self.base, **self.unflatten(self.flat_point(coords))}

    def project(self, sd: StateDict) -> tuple[Tensor, float]:
        """state dict -> ([2] coordinates of its orthogonal projection, distance to the plane)."""
        d = flatten(sd, self.names) - self.origin
        if d.numel() != self.numel:
            raise ShapeMismatchError(f"state dict has {d.numel()} coordinate values, plane has {self.numel}")
        c = torch.stack([d @ self.u, d @ self.v])
        resid = d - c[0] * self.u - c[1] * self.v
        return c, float(resid.norm())

    def describe(self) -> dict:
        """JSON-ready summary for result files."""
        return {"kind": self.kind, "numel": self.numel, "n_tensors": len(self.names), **self.info}


def _layout(sd: StateDict, names: Sequence[str]) -> tuple[tuple, tuple, dict]:
    names = tuple(names)
    if not names:
        raise ConfigError("plane: no coordinate tensors named")
    for n in names:
        if n not in sd:
            raise ShapeMismatchError(f"plane: state dict lacks coordinate tensor {n!r}")
        if not sd[n].is_floating_point():
            raise ConfigError(f"plane: coordinate tensor {n!r} is not floating point ({sd[n].dtype})")
    shapes = tuple(tuple(sd[n].shape) for n in names)
    dtypes = tuple(sd[n].dtype for n in names)
    base = {k: t.detach().cpu() for k, t in sd.items() if k not in set(names)}
    return shapes, dtypes, base


def check_same_shapes(models: Mapping[str, StateDict], names: Sequence[str]) -> None:
    """Refuse models that cannot share a plane: a missing coordinate tensor or one of another shape."""
    labels = list(models)
    ref = models[labels[0]]
    for lab in labels[1:]:
        for n in names:
            if n not in models[lab]:
                raise ShapeMismatchError(f"plane: model {lab!r} lacks coordinate tensor {n!r}, so it cannot share a "
                                         f"plane with {labels[0]!r}")
            if n in ref and models[lab][n].shape != ref[n].shape:
                raise ShapeMismatchError(
                    f"plane: models {labels[0]!r} and {lab!r} cannot share a plane: tensor {n!r} has shape "
                    f"{tuple(ref[n].shape)} in {labels[0]!r} and {tuple(models[lab][n].shape)} in {lab!r}")


def _check_same(sds: Sequence[StateDict], names: Sequence[str], shapes: tuple) -> None:
    """`sds` (the models after the first) against the first model's `shapes`."""
    for i, sd in enumerate(sds, start=1):
        for n, s in zip(names, shapes):
            if n not in sd:
                raise ShapeMismatchError(f"plane: model {i} lacks coordinate tensor {n!r}")
            if tuple(sd[n].shape) != s:
                raise ShapeMismatchError(f"plane: model {i} tensor {n!r} has shape {tuple(sd[n].shape)}, expected {s}")


def three_point(a: StateDict, b: StateDict, c: StateDict, *, names: Sequence[str]) -> Plane:
    """Plane with origin `a`, u along b - a, v along the part of c - a orthogonal to u.

    Garipov et al. 2018, Sec. 4 / ``plane.py``: a lands at (0, 0), b at (|b - a|, 0) and c at
    (<c - a, u>, |c - a - <c - a, u> u|): true parameter distances, no normalisation.
    """
    shapes, dtypes, base = _layout(a, names)
    _check_same([b, c], names, shapes)
    fa, fb, fc = (flatten(s, names) for s in (a, b, c))
    d1, d2 = fb - fa, fc - fa
    n1 = d1.norm()
    if n1 <= _DEGENERATE * max(float(fa.norm()), 1.0):
        raise ConfigError("three-point plane: the first two models coincide, so they span no axis")
    u = d1 / n1
    r = d2 - (d2 @ u) * u
    # Relative test: c counts as collinear when its off-line part is tiny against |c - a|.
    if r.norm() <= _DEGENERATE * max(float(d2.norm()), float(n1)):
        raise ConfigError("three-point plane: the three models are collinear, so they span no plane; "
                          "use a 1-D path (barrier) instead")
    v = r / r.norm()
    info = {"axis_lengths": [float(n1), float(r.norm())]}
    return Plane(tuple(names), shapes, dtypes, fa, u, v, base, "three_point", info)


def pca(models: Sequence[StateDict], *, names: Sequence[str]) -> Plane:
    """Plane through the mean of `models` spanned by the top-2 principal directions.

    MuDSC (Xu et al., CVPR 2024) Fig. 3 / ZipIt ``get_contour_grid``: SVD of the centred [n, p]
    matrix of flattened models; ``info['explained_variance']`` is each axis's share of the total.
    """
    if len(models) < 3:
        raise ConfigError(f"PCA plane needs at least 3 models, got {len(models)}")
    shapes, dtypes, base = _layout(models[0], names)
    _check_same(models[1:], names, shapes)
    x = torch.stack([flatten(m, names) for m in models])
    centre = x.mean(0)
    _, s, vh = torch.linalg.svd(x - centre, full_matrices=False)
    var = s ** 2
    if var.sum() <= 0 or var[1] <= _DEGENERATE ** 2 * var[0]:
        raise ConfigError("PCA plane: the models span fewer than 2 dimensions (all equal or collinear)")
    u, v = vh[0], vh[1]
    # Fix the SVD's sign ambiguity so the same models always give the same picture.
    if (x[0] - centre) @ u > 0:
        u = -u
    if (x[0] - centre) @ v > 0:
        v = -v
    info = {"explained_variance": [float(var[0] / var.sum()), float(var[1] / var.sum())]}
    return Plane(tuple(names), shapes, dtypes, centre, u, v, base, "pca", info)


def filter_normalize(direction: StateDict, weights: StateDict) -> dict[str, Tensor]:
    """Li et al. 2018, Sec. 4 (filter normalisation): each filter of `direction` gets its weight's norm.

    A filter is a slice along dim 0 (a conv output channel, a linear output row). Tensors with at
    most one dimension (biases, norm affines) are zeroed, as with the paper code's
    ``--xignore biasbn``: moving them adds no scale-invariant information.
    """
    out = {}
    for n, d in direction.items():
        w = weights[n]
        if d.shape != w.shape:
            raise ShapeMismatchError(f"filter_normalize: {n!r} direction {tuple(d.shape)} vs weight {tuple(w.shape)}")
        if d.dim() <= 1:
            out[n] = torch.zeros_like(d)
            continue
        dn = d.reshape(d.shape[0], -1).norm(dim=1).clamp_min(1e-12)
        wn = w.reshape(w.shape[0], -1).norm(dim=1)
        out[n] = d * (wn / dn).reshape(-1, *([1] * (d.dim() - 1)))
    return out


def random_directions(center: StateDict, generator: torch.Generator, *, names: Sequence[str]) -> Plane:
    """Plane through `center` along two filter-normalised Gaussian directions (Li et al. 2018).

    The second direction is orthogonalised against the first (random high-dimensional directions
    are nearly orthogonal, so this barely changes it). ``info['direction_norms']`` are the lengths
    of the two normalised directions: Li's plot range [-1, 1] is [-norm, norm] in plane coordinates.
    """
    shapes, dtypes, base = _layout(center, names)
    weights = {n: center[n].detach().cpu().double() for n in names}
    dirs = []
    for _ in range(2):
        raw = {n: torch.randn(w.shape, generator=generator, dtype=torch.float64) for n, w in weights.items()}
        dirs.append(torch.cat([t.reshape(-1) for t in filter_normalize(raw, weights).values()]))
    d1, d2 = dirs
    if d1.norm() == 0:
        raise ConfigError("random plane: every coordinate tensor is 1-D, so filter normalisation zeroes them all")
    u = d1 / d1.norm()
    r = d2 - (d2 @ u) * u
    v = r / r.norm()
    info = {"direction_norms": [float(d1.norm()), float(r.norm())]}
    return Plane(tuple(names), shapes, dtypes, flatten(center, names), u, v, base, "random", info)


def line(a: StateDict, b: StateDict, *, names: Sequence[str]) -> Plane:
    """Degenerate plane for the segment a -> b: u = (b - a)/|b - a|, v = 0 (second coordinate unused)."""
    shapes, dtypes, base = _layout(a, names)
    _check_same([b], names, shapes)
    fa, fb = flatten(a, names), flatten(b, names)
    d = fb - fa
    if d.norm() == 0:
        raise ConfigError("line: the two models coincide")
    return Plane(tuple(names), shapes, dtypes, fa, d / d.norm(), torch.zeros_like(d), base, "line",
                 {"length": float(d.norm())})


def cover_grid(points: Tensor, *, resolution: int = 21, margin: float = 0.25,
               min_extent: float = 1e-3) -> tuple[Tensor, Tensor]:
    """[k, 2] -> ([nx], [ny]): an equal-step grid covering `points` plus `margin` of their extent.

    The longer side gets `resolution` points; the shorter one the number that keeps square cells,
    so the plot can use equal aspect without stretching.
    """
    if resolution < 2:
        raise ConfigError(f"grid resolution must be at least 2, got {resolution}")
    if margin < 0:
        raise ConfigError(f"grid margin must be non-negative, got {margin}")
    pts = torch.as_tensor(points, dtype=torch.float64).reshape(-1, 2)
    lo, hi = pts.min(0).values, pts.max(0).values
    extent = (hi - lo).max().clamp_min(min_extent)
    pad = margin * extent
    lo, hi = lo - pad, hi + pad
    span = (hi - lo).clamp_min(min_extent)
    step = float(span.max()) / (resolution - 1)
    axes = []
    for i in range(2):
        n = max(2, math.ceil(float(span[i]) / step - 1e-9) + 1)
        mid = float(lo[i] + hi[i]) / 2
        axes.append(mid + step * (torch.arange(n, dtype=torch.float64) - (n - 1) / 2))
    return axes[0], axes[1]
