"""Activation statistics of every unit space, for N parents at once, in one pass over the data.

ZipIt! (Stoica et al., 2024, Sec. 4.3) and MuDSC (Xu et al., 2024, Sec. 3.2) match units by the
Pearson correlation of their activations over the same inputs: the features of all N parents at a
merge point are stacked into F [O, L] (O = sum of widths; L = images x spatial positions or tokens,
every position a sample) and Corr = Cov / (std std^T) with Cov = E[F F^T] - E[F] E[F]^T. Here the
moments are exact single-pass sums (the published code averages per-batch moments, which is close but
not exact): the products F F^T run on the compute device in float32, accumulated over at most
``chunk_size`` samples (across taps and batches) before they are added to float64 sums, so rounding
grows with the chunk, not with L; the feature sums are float32 over blocks of ``SUM_BLOCK`` samples,
float64 across them. Only the N (N + 1) / 2 parent blocks i <= j are computed (the sums are symmetric).

The pass accumulates :class:`MomentSums` (float64) and then :func:`finalise` turns them into
correlations; a pass split over several workers sums their :class:`MomentSums` before finalising.
With ``positions``, each image contributes only that many seeded random spatial positions (or tokens)
per tap, the same ones for every parent.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from mudsc.diffinit.transpose import copy_transposed_
from mudsc.distributed import Launch
from mudsc.errors import DataError
from mudsc.unitgraph import UnitGraph, observed

CHUNK = 2048  # samples per float32 product; the moment test bounds the rounding this leaves
SUM_BLOCK = 32  # samples per float32 partial sum of the features
ROWS = 256  # rows of a correlation scaled at once


@dataclass
class ActivationStats:
    """Per unit space: the [O, O] Pearson correlation of the stacked units of all parents, their means
    and standard deviations, and a fixed sample of activations per unit (for UMAP views)."""

    corr: dict[str, Tensor]
    mean: dict[str, Tensor]
    std: dict[str, Tensor]
    samples: dict[str, Tensor]   # [O, k] activations at the same k positions for every unit
    n_images: int
    n_samples: dict[str, int]


@dataclass
class MomentSums:
    """What a statistics pass accumulates per unit space, in float64 on the compute device: the sum of
    the features [O] and of their products [O, O] over `count` samples; `samples` [O, k] are the first
    k samples of every unit (kept on the CPU, not summed)."""

    sum_x: dict[str, Tensor]
    sum_xx: dict[str, Tensor]
    count: dict[str, int]
    images: int
    samples: dict[str, Tensor]


def correlation(sum_x: Tensor, sum_xx: Tensor, n: int, *, eps: float = 1e-7) -> tuple[Tensor, Tensor, Tensor]:
    """[O], [O, O], count -> (corr [O, O], mean [O], std [O]) from first and second moment sums.
    `sum_xx` becomes the correlation (in place: a ViT-B MLP space's [O, O] is 300 MB in float64)."""
    mean = sum_x / n
    cov = sum_xx.div_(n).addr_(mean, mean, alpha=-1)
    std = cov.diagonal().clamp_min(0).sqrt()
    # Dead units (zero variance) correlate with nothing, not with everything. By rows, so that no second
    # [O, O] float64 matrix is allocated; std_i std_j is one product either way, so corr stays symmetric.
    for r in range(0, len(std), ROWS):
        cov[r:r + ROWS].div_((std[r:r + ROWS, None] * std[None, :]).clamp_min_(eps))
    return cov.clamp_(-1, 1), mean, std


def position_index(batch: int, positions: int, keep: int, generator: torch.Generator) -> Tensor:
    """[batch, keep] long: `keep` distinct positions out of `positions` per image, drawn from `generator`."""
    return torch.rand(batch, positions, generator=generator).argsort(dim=1)[:, :keep]


def tap_rows(a: Tensor, dim: int, index: Tensor | None) -> Tensor:
    """[B, ..., C (at dim), ...] activation -> [samples, C] float32 rows (image-major, then positions in
    memory order); `index` [B, k] keeps k positions of each image."""
    a = a.movedim(dim, 1)
    a = a.reshape(a.shape[0], a.shape[1], -1)  # [B, C, P]
    if index is not None:
        a = a.gather(2, index.to(a.device)[:, None, :].expand(-1, a.shape[1], -1))
    return a.transpose(1, 2).reshape(-1, a.shape[1]).float()


def _offsets(widths: list[int]) -> list[int]:
    offs = [0]
    for w in widths:
        offs.append(offs[-1] + w)
    return offs


def feature_sums(rows: Tensor) -> Tensor:
    """[L, C] float32 -> [C] float64 column sums: float32 over blocks of SUM_BLOCK rows, float64 across
    the blocks (a float64 reduction of float32 rows converts every element and runs >10x slower)."""
    full = len(rows) - len(rows) % SUM_BLOCK
    out = rows[full:].sum(0, dtype=torch.float64)
    if full:
        out += rows[:full].reshape(-1, SUM_BLOCK, rows.shape[1]).sum(1).sum(0, dtype=torch.float64)
    return out


class ProductSums:
    """The float64 sum of X^T X over every sample added, for X = [rows_0 | rows_1 | ...] (one [L, n_i]
    block of columns per parent): float32 products accumulate in place over at most `chunk_size`
    samples before they are added to the float64 sum, so a pass of many small batches (deep layers
    have few positions per image) adds to the float64 sum once per chunk, not once per batch. Only the
    parent blocks i <= j are multiplied; :meth:`total` mirrors the others once."""

    def __init__(self, widths: list[int], *, chunk_size: int = CHUNK, device=None) -> None:
        self.offs = _offsets(widths)
        self.chunk = chunk_size
        o = self.offs[-1]
        self.sum = torch.zeros(o, o, dtype=torch.float64, device=device)
        self.parts = {(i, j): torch.empty(widths[i], widths[j], device=device)
                      for i in range(len(widths)) for j in range(i, len(widths))}
        self.pending = 0  # samples in `parts` not yet added to `sum`

    def add(self, rows: list[Tensor]) -> None:
        """Add the samples of `rows` (float32 [L, n_i] per parent, the same L samples)."""
        for s in range(0, rows[0].shape[0], self.chunk):
            piece = [r[s:s + self.chunk] for r in rows]
            if self.pending + len(piece[0]) > self.chunk:
                self._flush()
            for (i, j), part in self.parts.items():
                if self.pending:
                    part.addmm_(piece[i].T, piece[j])
                else:  # a fresh chunk overwrites the last one's parts
                    torch.mm(piece[i].T, piece[j], out=part)
            self.pending += len(piece[0])

    def _flush(self) -> None:
        if self.pending:
            o = self.offs
            for (i, j), part in self.parts.items():
                self.sum[o[i]:o[i + 1], o[j]:o[j + 1]] += part
            self.pending = 0

    def total(self) -> Tensor:
        """The [O, O] float64 sum, its blocks i > j the exact transposes of the blocks j < i. The last call:
        it frees the float32 parts."""
        self._flush()
        o = self.offs
        for i, j in self.parts:
            if j > i:
                copy_transposed_(self.sum[o[j]:o[j + 1], o[i]:o[i + 1]], self.sum[o[i]:o[i + 1], o[j]:o[j + 1]])
        self.parts = {}
        return self.sum


@torch.no_grad()
def accumulate_moments(models: list[nn.Module], graph: UnitGraph, images: Tensor, *, batch_size: int = 250,
                       spaces: list[str] | None = None, device=None, sample_units: int = 512,
                       positions: int | None = None, seed: int = 0, offset: int = 0, chunk_size: int = CHUNK,
                       progress: Callable[[int, int], None] | None = None) -> MomentSums:
    """One pass of `images` [n, c, h, w] through every parent, summing the moments of `spaces` (default:
    all). `positions` keeps that many spatial positions per image and tap (None: all); the draw of
    the batch starting at image s uses a generator seeded with (seed, offset + s), `offset` being the
    index of ``images[0]`` in the whole pass, so it does not depend on which other batches a pass (or
    a rank of a torchrun job) takes; within a batch the spaces draw in turn, so a space's positions do
    depend on the `spaces` before it. `progress(done_images, total_images)` before the first batch (0)
    and after each."""
    from mudsc.device import default_device

    device = default_device(device)
    if len(images) == 0:
        raise DataError("activation statistics need at least one image")
    if positions is not None and positions < 1:
        raise DataError(f"statistics: positions per image must be >= 1, got {positions}")
    names = [s.name for s in graph.spaces] if spaces is None else list(spaces)
    watched = [observed(m.to(device).eval(), graph) for m in models]
    sums: dict[str, Tensor] = {}
    prods: dict[str, ProductSums] = {}
    counts: dict[str, int] = {n: 0 for n in names}
    samples: dict[str, list[Tensor]] = {n: [] for n in names}
    kept: dict[str, int] = {n: 0 for n in names}
    total = len(images)
    if progress is not None:
        progress(0, total)
    for start in range(0, total, batch_size):
        x = images[start:start + batch_size].to(device)
        per_parent = [w(x)[1] for w in watched]
        gen = torch.Generator().manual_seed(seed * 1_000_003 + offset + start) if positions is not None else None
        for name in names:
            space = graph.space(name)
            index = []
            for k, t in enumerate(space.taps):
                a = per_parent[0][name][k]
                p = a.numel() // (a.shape[0] * a.shape[t.dim])
                index.append(position_index(a.shape[0], p, min(positions, p), gen) if gen is not None else None)
            for k, t in enumerate(space.taps):  # taps one by one: their samples are summed alike
                rows = [tap_rows(acts[name][k], t.dim, index[k]) for acts in per_parent]
                if name not in sums:
                    widths = [r.shape[1] for r in rows]
                    sums[name] = torch.zeros(sum(widths), dtype=torch.float64, device=device)
                    prods[name] = ProductSums(widths, chunk_size=chunk_size, device=device)
                sums[name] += torch.cat([feature_sums(r) for r in rows])
                prods[name].add(rows)
                counts[name] += rows[0].shape[0]
                if kept[name] < sample_units:
                    take = torch.cat([r[: sample_units - kept[name]] for r in rows], 1).T
                    samples[name].append(take.cpu())
                    kept[name] += take.shape[1]
                del rows
        del per_parent  # the next batch's activations do not coexist with these
        if progress is not None:
            progress(min(start + batch_size, total), total)
    totals = {name: prods.pop(name).total() for name in names}  # one space's float32 parts freed at a time
    return MomentSums(sums, totals, counts, total, {n: torch.cat(v, 1) for n, v in samples.items()})


def finalise(m: MomentSums) -> ActivationStats:
    """Summed moments -> correlations, means and standard deviations (float32, CPU). Consumes `m`: its
    product sums are turned into the correlations in place."""
    corr, mean, std = {}, {}, {}
    for name in m.sum_x:
        # |x_i x_j| <= (x_i^2 + x_j^2) / 2: with finite sums and diagonal every product sum is finite
        if not (torch.isfinite(m.sum_x[name]).all() and torch.isfinite(m.sum_xx[name].diagonal()).all()):
            raise DataError(f"NaN or Inf activations in unit space {name!r}; check the parents' weights and data")
        c, mu, s = correlation(m.sum_x[name], m.sum_xx[name], m.count[name])
        corr[name], mean[name], std[name] = c.float().cpu(), mu.float().cpu(), s.float().cpu()
    return ActivationStats(corr, mean, std, m.samples, m.images, dict(m.count))


def activation_stats(models: list[nn.Module], graph: UnitGraph, images: Tensor, *, batch_size: int = 250,
                     spaces: list[str] | None = None, device=None, sample_units: int = 512,
                     positions: int | None = None, seed: int = 0,
                     progress: Callable[[int, int], None] | None = None,
                     launch: Launch | None = None) -> ActivationStats:
    """:func:`accumulate_moments` then :func:`finalise` (see there for the options).

    In a torchrun job (`launch`) each rank takes its run of whole batches
    (:meth:`~mudsc.distributed.Launch.batch_block`) and the float64 moment sums are summed over the
    ranks before the correlations: every rank returns one process's statistics, to rounding. The
    activation samples are the first ones of this rank's images (rank 0: those of one process)."""
    n_images = len(images)
    block = launch.batch_block(n_images, batch_size) if launch is not None else slice(0, n_images)
    m = accumulate_moments(models, graph, images[block], batch_size=batch_size, spaces=spaces, device=device,
                           sample_units=sample_units, positions=positions, seed=seed, offset=block.start,
                           progress=progress)
    if launch is not None and launch.distributed:
        names = list(m.sum_x)
        launch.sum_([m.sum_x[n] for n in names] + [m.sum_xx[n] for n in names], "the sum of the activation statistics")
        counts = dict(zip(names, launch.sum_counts([m.count[n] for n in names], "the sum of the sample counts")))
        m = MomentSums(m.sum_x, m.sum_xx, counts, n_images, m.samples)
    return finalise(m)
