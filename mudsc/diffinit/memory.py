"""Memory a merge holds at once, estimated before it starts, so that a configuration that cannot fit
is refused with the size it needs (as the landscape refuses a grid) instead of failing mid-way.

The statistics pass holds one batch of every parent's tapped activations (measured by one probe
image), a forward's working set, float32 copies of the largest space's features, and per space the
float64 moment sums and the float32 products of its parent blocks i <= j not yet added to them; the
iterative solve holds one [O, O] Gram part per descriptor group of every space
(:class:`~mudsc.diffinit.descriptor_cache.DescriptorCache`), one group's descriptor columns while it
is computed, the activation correlations, the dense merge/unmerge maps of the current and the best
solutions, and a few [O, O] work matrices; fusion holds N + 1 copies of the weights. The statistics
pass and the solve run one after the other: the peak is the larger of them.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from mudsc.device import available_memory
from mudsc.diffinit.config import MergeConfig
from mudsc.diffinit.similarity import descriptor_refs, ref_neighbours
from mudsc.errors import ResourceError
from mudsc.unitgraph import UnitGraph, observed

_GiB = 2 ** 30


@torch.no_grad()
def tap_bytes_per_image(model: nn.Module, graph: UnitGraph, image: Tensor) -> tuple[int, int, dict[str, int]]:
    """One probe image -> (float32 bytes of all tapped activations, bytes of the largest module output,
    per space the positions per image summed over its taps)."""
    largest = [0]
    hooks = [m.register_forward_hook(lambda _m, _i, o: largest.__setitem__(0, max(largest[0], o.numel() * 4))
                                     if isinstance(o, Tensor) else None)
             for m in model.modules() if not list(m.children())]
    try:
        acts = observed(model.eval(), graph)(image[:1])[1]
    finally:
        for h in hooks:
            h.remove()
    taps = sum(a.numel() * 4 for name in acts for a in acts[name])
    positions = {s.name: sum(a.numel() // a.shape[t.dim] for a, t in zip(acts[s.name], s.taps))
                 for s in graph.spaces}
    return taps, largest[0], positions


def merge_memory(parents: list[nn.Module], graph: UnitGraph, spaces: list[str], config: MergeConfig, *,
                 image: Tensor, batch_size: int, stats_needed: bool) -> dict[str, int]:
    """Bytes a merge of `spaces` would add to what the process holds, by stage: ``statistics`` (0 when
    cached or not needed), ``solve`` (its activation correlations only when the pass is still to make
    them: cached ones already take their memory) and ``weights``."""
    n = len(parents)
    size = {s.name: s.size * n for s in graph.spaces}
    need = {"statistics": 0, "solve": 0, "weights": 0}
    if stats_needed:
        taps, largest, positions = tap_bytes_per_image(parents[0], graph, image)
        keep = {s: min(p, config.stats_positions or p) for s, p in positions.items()}
        rows = max(batch_size * keep[s] * size[s] * 4 for s in spaces)
        need["statistics"] = (n * batch_size * taps + 3 * batch_size * largest + rows
                              + sum(8 * (size[s] ** 2 + size[s]) for s in spaces)  # float64 moment sums
                              + sum(4 * size[s] ** 2 * (n + 1) // (2 * n) for s in spaces))  # float32 parts i <= j
    sd = parents[0].state_dict()
    if config.iterative:
        width = {s: sum(sd[r.param].numel() // sd[r.param].shape[r.axis] * r.repeat for r in descriptor_refs(graph, s))
                 for s in spaces}
        groups = {s: len({ref_neighbours(graph, s, r) for r in descriptor_refs(graph, s)}) for s in spaces}
        item = 8 if config.method == "rebasin" else 4  # Git Re-Basin's inner products are float64
        need["solve"] = (sum(item * groups[s] * size[s] ** 2 for s in spaces)  # cached Gram parts
                         + stats_needed * sum(4 * size[s] ** 2 for s in spaces)  # correlations (held when cached)
                         + sum(2 * 8 * size[s] ** 2 // n for s in spaces)     # current and best maps
                         + 12 * max(size[s] * width[s] for s in spaces)      # one group's columns, float64 sums
                         + 6 * 8 * max(size[s] ** 2 for s in spaces))        # S_W, mix, solver copies
    need["weights"] = (n + 2) * sum(v.numel() * 4 for v in sd.values())
    return need


def peak_bytes(need: dict[str, int]) -> int:
    """The most a merge holds at once: its weights and the larger of its statistics pass and its solve,
    which run one after the other (the pass's float64 sums are freed before the solve starts)."""
    return need["weights"] + max(need["statistics"], need["solve"])


def check_merge_memory(need: dict[str, int], device: torch.device | str) -> None:
    """ResourceError naming the size needed when the peak of `need` (bytes by stage) exceeds 80 % of
    `device`'s free memory."""
    free = available_memory(device)
    total = peak_bytes(need)
    if total > 0.8 * free:
        parts = ", ".join(f"{k} {v / _GiB:.2f}" for k, v in need.items())
        raise ResourceError(f"this merge needs about {total / _GiB:.1f} GiB on {device} ({parts} GiB), but only "
                            f"{free / _GiB:.1f} GiB is free: use a smaller --batch-size, --stats-positions, "
                            "a cut, or a machine with more memory")
