"""Modules derived from a traced model: `observed` returns every unit space's activations beside the
output; `split` cuts it into a trunk and a head at a cut (partial zipping)."""
from __future__ import annotations

import torch
import torch.fx as fx
from torch import Tensor, nn

from mudsc.errors import ConfigError
from mudsc.unitgraph.fx import ancestors, fx_graph, input_dependent, is_cut, nodes_by_name
from mudsc.unitgraph.types import UnitGraph


def observed(model: nn.Module, graph: UnitGraph) -> nn.Module:
    """A module sharing `model`'s parameters, in eval mode, whose forward returns
    ``(output, {space: [activations of each tap]})``; each activation holds exactly the space's units
    along ``tap.dim``. An fx GraphModule, or forward hooks when the taps name modules."""
    taps = [t for s in graph.spaces for t in s.taps]
    if taps and all(t.hook for t in taps):
        return _Hooked(model, graph).eval()
    if any(t.hook for t in taps):
        raise ConfigError("observed: taps mix fx nodes and module hooks; use one kind")
    gm = fx_graph(model, graph.leaves)
    nodes = nodes_by_name(gm)
    out = gm.graph.output_node()
    acts = {}
    with gm.graph.inserting_before(out):
        for s in graph.spaces:
            acts[s.name] = []
            for t in s.taps:
                if t.node not in nodes:
                    raise ConfigError(f"observed: tap {t.node!r} of space {s.name!r} is not a node of the traced graph")
                acts[s.name].append(gm.graph.call_function(torch.narrow, (nodes[t.node], t.dim, t.start, s.size)))
    out.args = ((out.args[0], acts),)
    gm.recompile()
    return gm.eval()


class _Hooked(nn.Module):
    """Observed model for hand-written specs: forward hooks on the modules the taps name."""

    def __init__(self, model: nn.Module, graph: UnitGraph) -> None:
        super().__init__()
        self.model = model
        self.graph = graph
        mods = dict(model.named_modules())
        for s in graph.spaces:
            for t in s.taps:
                if t.node not in mods:
                    raise ConfigError(f"observed: tap module {t.node!r} of space {s.name!r} is not in the model")

    def forward(self, x: Tensor):
        seen: dict[tuple[str, str], Tensor] = {}
        handles = []
        mods = dict(self.model.named_modules())
        for name in {t.node for s in self.graph.spaces for t in s.taps}:
            def keep(mod, args, out, name=name):
                seen[name, "input"] = args[0]
                seen[name, "output"] = out
            handles.append(mods[name].register_forward_hook(keep))
        try:
            y = self.model(x)
        finally:
            for h in handles:
                h.remove()
        acts = {s.name: [seen[t.node, t.hook].narrow(t.dim, t.start, s.size) for t in s.taps]
                for s in self.graph.spaces}
        return y, acts


def split(model: nn.Module, graph: UnitGraph, cut: str) -> tuple[nn.Module, nn.Module]:
    """``(trunk, head)`` GraphModules sharing `model`'s parameters: ``head(trunk(x)) == model(x)``,
    ``trunk(x)`` being the tensor at cut `cut` (ZipIt! partial zipping, Stoica et al., 2024,
    App. "Partial Zipping")."""
    cut = graph.cut(cut)
    gm = fx_graph(model, graph.leaves)
    nodes = nodes_by_name(gm)
    if cut.node not in nodes:
        raise ConfigError(f"split: cut {cut.name!r} node {cut.node!r} is not a node of the traced graph")
    at = nodes[cut.node]
    if not is_cut(gm.graph, at):
        raise ConfigError(f"split: {cut.name!r} ({cut.node}) is bypassed by some path, so it cannot cut the model")
    trunk = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    before = ancestors(at)
    for n in gm.graph.nodes:
        if n in before:
            env[n] = trunk.node_copy(n, env.__getitem__)
    trunk.output(env[at])
    head = fx.Graph()
    dependent = input_dependent(gm.graph)
    after = dependent - input_dependent(gm.graph, skip=at)
    needed = ancestors(gm.graph.output_node())
    env = {at: head.placeholder("t")}
    for n in gm.graph.nodes:
        if n in needed and n is not at and (n not in dependent or n in after):
            env[n] = head.node_copy(n, env.__getitem__)
    return fx.GraphModule(gm, trunk), fx.GraphModule(gm, head)
