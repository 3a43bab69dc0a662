"""Partial zipping (ZipIt!, Stoica et al., 2024, Sec. 4.3 and App. "Partial Zipping"): merge the
network up to a cut, keep each parent's later layers as its own head fed by the merged trunk.

Where the cut's space ends at the cut (ZipIt!'s stopping points, e.g. a ResNet stage end), the
unmerge ``U_i`` folds into head i's first layers. Beyond ZipIt!, a cut may sit inside a residual
stream (after any block): an identity skip has no weight to fold ``U_i`` into, so head i is
``parent i's own layers after the cut ∘ Unmerge(U_i)``, and its blocks write to the stream in
parent i's basis.

A multi-head model returns one logit tensor per parent (task); its checkpoint stores the merged
trunk tensors under ``trunk.`` and each parent's head tensors under ``head{i}.`` (``U_i`` under
``head{i}.unmerge.weight``), with every parent's spec and the cut in the metadata, so it reloads
from the file alone.
"""
from __future__ import annotations

import copy
from typing import Iterable

import torch.fx as fx
from torch import Tensor, nn

from mudsc.unitgraph import UnitGraph, split

UNMERGE = "unmerge.weight"  # key of U_i among head i's tensors at a cut inside a residual stream


class Unmerge(nn.Module):
    """The merged units along `dim` -> parent i's units: ``x_i = U_i x`` with ``weight = U_i [n_i, C]``."""

    def __init__(self, weight: Tensor, dim: int) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return (x.movedim(self.dim, -1) @ self.weight.T).movedim(-1, self.dim)


def _with_unmerge(head: fx.GraphModule, weight: Tensor, dim: int) -> fx.GraphModule:
    """`head` reading its input through :class:`Unmerge` (registered as its submodule ``unmerge``)."""
    head.add_submodule("unmerge", Unmerge(weight, dim))
    t = next(n for n in head.graph.nodes if n.op == "placeholder")
    with head.graph.inserting_after(t):
        u = head.graph.call_module("unmerge", (t,))
    t.replace_all_uses_with(u, delete_user_cb=lambda n: n is not u)
    head.recompile()
    return head


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
                    heads: list[dict[str, Tensor]], *,
                    splits: list[tuple[nn.Module, nn.Module]] | None = None) -> MultiHeadModel:
    """A multi-head model: parent 0's architecture with the `merged` tensors as trunk, and parent i's
    architecture with `heads[i]` as head i: its tensors with the cut space unmerged, or its own
    tensors plus ``U_i`` under :data:`UNMERGE` at a cut inside a residual stream.

    `splits`: each parent's ``(trunk, head)`` at `cut` (:func:`~mudsc.unitgraph.split`), for a caller
    that builds many merges of the same parents (tracing them is most of the cost); their tensors
    are copied, never changed."""
    if splits is None:
        splits = [split(p.eval(), graph, cut) for p in parents]
    trunk = _with_tensors(splits[0][0], {k: v for k, v in merged.items() if k != UNMERGE})
    head_mods = []
    for (_, part), sd in zip(splits, heads):
        sd = dict(sd)
        u = sd.pop(UNMERGE, None)
        head = _with_tensors(part, sd)
        if u is not None:  # U_i in the head's float type (a checkpoint's keys may start with an int counter)
            dtype = next(v.dtype for v in sd.values() if v.is_floating_point())
            head = _with_unmerge(head, u.to(dtype), graph.cut(cut).dim)
        head_mods.append(head)
    return MultiHeadModel(trunk, head_mods, [tuple(p.output_classes) for p in parents],
                          [tuple(p.classes) for p in parents]).eval()


def _with_tensors(part: nn.Module, state: dict[str, Tensor]) -> nn.Module:
    """A copy of `part` holding the tensors of `state` that it has (all of its own must be there)."""
    out = copy.deepcopy(part)
    own = out.state_dict()
    out.load_state_dict({k: v for k, v in state.items() if k in own})
    return out.eval()


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


def cut_costs(model: nn.Module, graph: UnitGraph, example: Tensor,
              cuts: Iterable[str] | None = None) -> dict[str, dict[str, float]]:
    """Per cut in `cuts` (default: every cut and ``full``), the share of `model`'s parameters and forward FLOPs on `example` that a
    merge up to it shares between the tasks: its trunk's (the "merged" part of ZipIt!'s
    partial-zipping cost curves; the heads' cost is the rest, once per task)."""
    from mudsc.evaluate import count_flops

    params = dict(model.named_parameters())
    total_params = sum(p.numel() for p in params.values())
    total_flops = count_flops(model, example)
    wanted = None if cuts is None else set(cuts)
    out = {}
    for c in graph.cuts:
        if wanted is not None and c.name not in wanted:
            continue
        trunk, _ = split(model, graph, c.name)
        out[c.name] = {"params_share": sum(p.numel() for k, p in params.items() if k in c.trunk_params) / total_params,
                       "flops_share": count_flops(trunk, example) / max(total_flops, 1)}
    out["full"] = {"params_share": 1.0, "flops_share": 1.0}
    return out
