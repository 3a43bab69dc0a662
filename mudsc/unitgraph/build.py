"""Building a :class:`~mudsc.unitgraph.types.UnitGraph`: the fx walk, then assembly of the candidate spaces:
taps, readable names, input -> output order and the cuts of partial zipping (ZipIt!, Stoica et al.,
2024, App. "Partial Zipping": only merge points every path passes through avoid extra unmerges)."""
from __future__ import annotations

from functools import lru_cache

import torch.fx as fx
from torch import Tensor, nn

from mudsc.unitgraph.rules import Walker
from mudsc.unitgraph.spaces import Spaces
from mudsc.unitgraph.types import Cut, UnitGraph, UnitSpace, validate
from mudsc.unitgraph.fx import ancestors, class_name, fx_graph, is_cut, module_path, node_params, propagate_shapes


def _common_prefix(paths: list[str]) -> str:
    parts = [p.split(".") if p else [] for p in paths]
    out = []
    for items in zip(*parts):
        if len(set(items)) != 1:
            break
        out.append(items[0])
    return ".".join(out)


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def assemble(spaces: Spaces, order: dict[str, int]) -> tuple[UnitSpace, ...]:
    """Permutable sets (not fixed, consumed somewhere) as named UnitSpaces, ordered by where they are
    observed (`order`: node name -> position), i.e. input -> output."""
    spaces.tie_shared_params()
    found = []
    for i in range(len(spaces.parent)):
        if spaces.find(i) != i or spaces.fixed[i] or not spaces.uses[i]:
            continue
        last = max(o for o, _ in spaces.uses[i])
        taps = list(dict.fromkeys(t for o, t in spaces.uses[i] if o == last and t is not None))
        if not taps:
            continue
        refs = list(dict.fromkeys(spaces.refs[i]))
        producers = tuple(r for r in refs if r.role != "in")
        marks = [module_path(n) for n in spaces.marks[i]]
        owner = producers[0].param.rsplit(".", 1)[0] if producers else f"space{i}"
        if spaces.labels[i]:  # a chunk of a fused projection: name it beside the projection
            name = f"{owner.rsplit('.', 1)[0]}.{spaces.labels[i]}"
        else:
            name = (_common_prefix(marks) if marks else "") or owner
        found.append((max(order[t.node] for t in taps), i, name, spaces.size[i], spaces.groups[i], producers,
                      tuple(r for r in refs if r.role == "in"), tuple(taps), spaces.ties[i]))
    found.sort(key=lambda f: (f[0], f[1]))
    names = _unique([f[2] for f in found])
    return tuple(UnitSpace(name=n, size=f[3], groups=f[4], producers=f[5], consumers=f[6], taps=f[7], index=k,
                           group_tie=f[8]) for k, (n, f) in enumerate(zip(names, found)))


def find_cuts(spaces: tuple[UnitSpace, ...], gm: fx.GraphModule, env: dict, sd_keys: set[str]) -> tuple[Cut, ...]:
    """Spaces observed at one node that carries only their units and that every path passes through."""
    nodes = {n.name: n for n in gm.graph.nodes}
    picked = []
    for s in spaces:
        if len(s.taps) != 1 or s.taps[0].start != 0 or s.taps[0].hook:
            continue
        node = nodes[s.taps[0].node]
        val = env.get(node)
        if getattr(val, "width", None) != s.size or not is_cut(gm.graph, node):
            continue
        trunk = node_params(gm, ancestors(node), sd_keys)
        merged = tuple(t.name for t in spaces if all(r.param in trunk for r in t.producers))
        picked.append((s, node, trunk, merged))
    names = [s.name for s, *_ in picked]
    heads = {n.split(".")[0] for n in names}
    if len(heads) == 1 and all("." in n for n in names):
        names = [n.split(".", 1)[1] for n in names]
    names = _unique([n if n != "full" else "full_" for n in names])
    return tuple(Cut(name=n, space=s.name, node=node.name, trunk_params=trunk, merged_spaces=merged)
                 for n, (s, node, trunk, merged) in zip(names, picked))


@lru_cache(maxsize=1)
def default_leaves() -> tuple[type, ...]:
    """timm's no-trace layers (registered by timm itself) and its stochastic drop layers."""
    try:
        import timm.layers
        from timm.layers._fx import get_notrace_modules
    except ImportError:
        return ()
    return tuple(sorted({*get_notrace_modules(), timm.layers.DropPath, timm.layers.DropBlock2d}, key=class_name))


def trace(model: nn.Module, *, leaf_modules: tuple[type, ...] | None = None,
          example: Tensor | None = None) -> UnitGraph:
    """The unit graph of `model`, found by walking its torch.fx graph.

    Args:
        model: the network (its training flags are restored afterwards).
        leaf_modules: module classes fx must not trace into (default :func:`default_leaves`: timm's
            no-trace layers and drop layers); unknown leaves fix every space they touch.
        example: an input batch for shape propagation; guessed from the first layer when omitted.
    """
    leaf_modules = default_leaves() if leaf_modules is None else tuple(leaf_modules)
    leaves = tuple(sorted({class_name(t) for t in leaf_modules}))
    gm = fx_graph(model, leaves)
    propagate_shapes(gm, model, example)
    sd = model.state_dict()
    walker = Walker(gm, set(sd))
    walker.run()
    spaces = assemble(walker.spaces, {n.name: i for n, i in walker.order.items()})
    cuts = find_cuts(spaces, gm, walker.env, set(sd))
    graph = UnitGraph(spaces=spaces, cuts=cuts, params=tuple((k, tuple(v.shape)) for k, v in sd.items()),
                      leaves=leaves)
    validate(graph)
    return graph
