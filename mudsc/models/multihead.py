"""Partial zipping (ZipIt!, Stoica et al., 2024, Sec. 4.3 and App. "Partial Zipping"): merge the
network up to a cut, keep each parent's later layers as its own head fed by the merged trunk.

A multi-head model returns one logit tensor per parent (task); its checkpoint stores the merged
trunk tensors under ``trunk.`` and each parent's head tensors under ``head{i}.``, with every parent's
spec and the cut in the metadata, so it reloads from the file alone.
"""
from __future__ import annotations


from torch import Tensor, nn

from mudsc.unitgraph import UnitGraph, split


class MultiHeadModel(nn.Module):
    """images -> [logits of head 0, logits of head 1, ...]: ``head_i(trunk(x))``."""

    def __init__(self, trunk: nn.Module, heads: list[nn.Module], output_classes: list[tuple[int, ...]],
                 tasks: list[tuple[int, ...]]) -> None:
        super().__init__()
        self.trunk = trunk
        self.heads = nn.ModuleList(heads)
        self.output_classes = [tuple(c) for c in output_classes]
        self.tasks = [tuple(t) for t in tasks]

    def forward(self, x: Tensor) -> list[Tensor]:
        t = self.trunk(x)
        return [h(t) for h in self.heads]


def build_multihead(parents: list[nn.Module], graph: UnitGraph, cut: str, merged: dict[str, Tensor],
                    heads: list[dict[str, Tensor]]) -> MultiHeadModel:
    """A multi-head model: parent 0's architecture with the `merged` tensors as trunk, and parent i's
    architecture with `heads[i]` (its tensors with the cut space unmerged) as head i."""
    import copy

    trunk_model = copy.deepcopy(parents[0])
    trunk_model.load_state_dict(merged)
    trunk, _ = split(trunk_model.eval(), graph, cut)
    head_mods = []
    for parent, sd in zip(parents, heads):
        m = copy.deepcopy(parent)
        m.load_state_dict(sd)
        head_mods.append(split(m.eval(), graph, cut)[1])
    return MultiHeadModel(trunk, head_mods, [tuple(p.output_classes) for p in parents],
                          [tuple(p.classes) for p in parents]).eval()


def multihead_state(graph: UnitGraph, cut: str, merged: dict[str, Tensor],
                    heads: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """The tensors a multi-head checkpoint stores: trunk tensors once, head tensors per parent."""
    trunk_keys = graph.cut(cut).trunk_params
    out = {f"trunk.{k}": v for k, v in merged.items() if k in trunk_keys}
    for i, sd in enumerate(heads):
        out.update({f"head{i}.{k}": v for k, v in sd.items() if k not in trunk_keys})
    return out


class Ensemble(nn.Module):
    """The upper bound: every parent runs on the input; one logit tensor per parent (task)."""

    def __init__(self, parents: list[nn.Module]) -> None:
        super().__init__()
        self.parents = nn.ModuleList(parents)
        self.output_classes = [tuple(p.output_classes) for p in parents]
        self.tasks = [tuple(p.classes) for p in parents]

    def forward(self, x: Tensor) -> list[Tensor]:
        return [p(x) for p in self.parents]
