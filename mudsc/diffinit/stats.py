"""Activation statistics of every unit space, for N parents at once, in one pass over the data.

ZipIt! (Stoica et al., 2024, Sec. 4.3) and MuDSC (Xu et al., 2024, Sec. 3.2) match units by the
Pearson correlation of their activations over the same inputs: the features of all N parents at a
merge point are stacked into F [O, L] (O = sum of widths; L = images x spatial positions or tokens,
every position a sample) and Corr = Cov / (std std^T) with Cov = E[F F^T] - E[F] E[F]^T. Here the
moments are exact single-pass sums in float64 on the compute device (the published code averages
per-batch moments, which is close but not exact).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from mudsc.distributed import Launch
from mudsc.errors import DataError
from mudsc.unitgraph import UnitGraph, observed


def _units_first(x: Tensor, dim: int) -> Tensor:
    """[..., C (at dim), ...] -> [C, samples]."""
    return x.movedim(dim, 0).reshape(x.shape[dim], -1)


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


def correlation(sum_x: Tensor, sum_xx: Tensor, n: int, *, eps: float = 1e-7) -> tuple[Tensor, Tensor, Tensor]:
    """[O], [O, O], count -> (corr [O, O], mean [O], std [O]) from first and second moment sums."""
    mean = sum_x / n
    cov = sum_xx / n - torch.outer(mean, mean)
    std = cov.diagonal().clamp_min(0).sqrt()
    corr = cov / torch.outer(std, std).clamp_min(eps)
    # Dead units (zero variance) correlate with nothing, not with everything.
    corr = corr.clamp(-1, 1)
    return corr, mean, std


@torch.no_grad()
def activation_stats(models: list[nn.Module], graph: UnitGraph, images: Tensor, *, batch_size: int = 250,
                     spaces: list[str] | None = None, device=None, sample_units: int = 512,
                     progress: Callable[[int, int], None] | None = None,
                     launch: Launch | None = None) -> ActivationStats:
    """One pass of `images` [n, c, h, w] through every parent, accumulating the moments of `spaces`
    (default: all). `progress(done_images, total_images)` after each batch.

    In a torchrun job (`launch`) each rank takes its run of whole batches
    (:meth:`~mudsc.distributed.Launch.batch_block`) and the float64 moment sums are summed over the
    ranks before the correlations: every rank returns one process's statistics, to rounding. The
    activation samples are the first ones of this rank's images (rank 0: those of one process)."""
    from mudsc.device import default_device

    device = default_device(device)
    if len(images) == 0:
        raise DataError("activation statistics need at least one image")
    n_images = len(images)
    if launch is not None:
        images = images[launch.batch_block(n_images, batch_size)]
    names = [s.name for s in graph.spaces] if spaces is None else list(spaces)
    watched = [observed(m.to(device).eval(), graph) for m in models]
    sums: dict[str, Tensor] = {}
    prods: dict[str, Tensor] = {}
    counts: dict[str, int] = {n: 0 for n in names}
    samples: dict[str, list[Tensor]] = {n: [] for n in names}
    kept: dict[str, int] = {n: 0 for n in names}
    total = len(images)
    for start in range(0, total, batch_size):
        x = images[start:start + batch_size].to(device)
        per_parent = [w(x)[1] for w in watched]
        for name in names:
            space = graph.space(name)
            feats = torch.cat([torch.cat([_units_first(a, t.dim) for a, t in zip(acts[name], space.taps)], 1)
                               for acts in per_parent], 0).double()
            if not torch.isfinite(feats).all():
                raise DataError(f"NaN or Inf activations in unit space {name!r}; check the parents' weights and data")
            if name not in sums:
                sums[name] = torch.zeros(feats.shape[0], dtype=torch.float64, device=device)
                prods[name] = torch.zeros(feats.shape[0], feats.shape[0], dtype=torch.float64, device=device)
            sums[name] += feats.sum(1)
            prods[name] += feats @ feats.T
            counts[name] += feats.shape[1]
            if kept[name] < sample_units:
                take = feats[:, : sample_units - kept[name]]
                samples[name].append(take.float().cpu())
                kept[name] += take.shape[1]
        if progress is not None:
            progress(min(start + batch_size, total), total)
    if launch is not None and launch.distributed:
        launch.sum_([sums[n] for n in names] + [prods[n] for n in names], "the sum of the activation statistics")
        counts = dict(zip(names, launch.sum_counts([counts[n] for n in names], "the sum of the sample counts")))
    corr, mean, std = {}, {}, {}
    for name in names:
        c, m, s = correlation(sums[name], prods[name], counts[name])
        corr[name], mean[name], std[name] = c.float().cpu(), m.float().cpu(), s.float().cpu()
    return ActivationStats(corr, mean, std, {n: torch.cat(v, 1) for n, v in samples.items()}, n_images, counts)
