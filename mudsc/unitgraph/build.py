"""Building a :class:`~mudsc.unitgraph.types.UnitGraph`: the fx walk, then assembly of the candidate spaces:
taps, readable names, input -> output order and the cuts of partial zipping (ZipIt!, Stoica et al.,
2024, App. "Partial Zipping"). ZipIt! stops only where a space ends and every path passes (ResNet
stage ends); here every node all paths pass through is a cut, after every block too, and a residual
stream that spans the cut is split there (see :mod:`mudsc.models.multihead`)."""
from __future__ import annotations

from functools import lru_cache

import torch.fx as fx
from torch import Tensor, nn

from mudsc.unitgraph.fx import ancestors, class_name, fx_graph, is_cut, module_path, node_params, propagate_shapes
from mudsc.unitgraph.rules import Walker
from mudsc.unitgraph.spaces import Spaces
from mudsc.unitgraph.types import Cut, UnitGraph, UnitSpace, validate
from mudsc.unitgraph.values import Opaque, Val


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


def assemble(spaces: Spaces, order: dict[str, int]) -> tuple[tuple[UnitSpace, ...], dict[int, str]]:
    """Permutable sets (not fixed, consumed somewhere) as named UnitSpaces, ordered by where they are
    observed (`order`: node name -> position), i.e. input -> output; and each set's root -> space name."""
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
                      tuple(r for r in refs if r.role == "in"), tuple(taps), spaces.ties[i], spaces.rigid[i]))
    found.sort(key=lambda f: (f[0], f[1]))
    names = _unique([f[2] for f in found])
    out = tuple(UnitSpace(name=n, size=f[3], groups=f[4], producers=f[5], consumers=f[6], taps=f[7], index=k,
                          group_tie=f[8], rigid=f[9]) for k, (n, f) in enumerate(zip(names, found)))
    return out, {f[1]: n for n, f in zip(names, found)}


def _points(gm: fx.GraphModule, env: dict, cands: Spaces, roots: dict[int, str],
            ends: dict[fx.Node, list[str]]) -> list[tuple[fx.Node, str | None]]:
    """Nodes every path passes through, in graph order, with the space whose units are exactly their
    output; or None for the output of a module (a block) whose channels are fixed or untracked, where
    the propagation rules cannot follow the stream (e.g. through window attention)."""
    out = []
    for node in gm.graph.nodes:
        val, name = env.get(node), None
        if isinstance(val, Val) and len(val.segs) == 1:
            seg = val.segs[0]
            name = roots.get(cands.find(seg.cand)) if seg.cand is not None and seg.repeat == 1 else None
        fixed = name is None and node in ends and node.op not in ("placeholder", "output") and (
            isinstance(val, Opaque) or isinstance(val, Val) and
            all(s.cand is None or cands.find(s.cand) not in roots for s in val.segs))
        if (name is not None or fixed) and is_cut(gm.graph, node):
            out.append((node, name))
    return out


def _chains(points: list[tuple[fx.Node, str | None]], gm: fx.GraphModule, spaces: dict[str, UnitSpace],
            sd_keys: set[str]) -> list[list[fx.Node]]:
    """Consecutive points of one space with no layer of another space between them (conv -> bn -> relu,
    add -> relu -> pool, patch embedding -> class token -> position embedding) are one cut; so are
    consecutive fixed points with no layer between them."""
    nodes = list(gm.graph.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    others = {name: {r.param for t in spaces.values() for r in (t.refs if t.name != name else t.consumers)}
              for name in spaces}
    chains: list[list[fx.Node]] = []
    prev: tuple[fx.Node, str | None] | None = None
    for node, name in points:
        between = node_params(gm, nodes[pos[prev[0]] + 1: pos[node] + 1], sd_keys) if prev else None
        if prev and prev[1] == name and not between & others.get(name, sd_keys):
            chains[-1].append(node)
        else:
            chains.append([node])
        prev = (node, name)
    return chains


def _ends(gm: fx.GraphModule) -> dict[fx.Node, list[str]]:
    """Per node, the module paths whose forward returns its output."""
    last: dict[str, fx.Node] = {}
    for n in gm.graph.nodes:
        for path, _ in (n.meta.get("nn_module_stack") or {}).values():
            last[path] = n
        if n.op == "call_module":
            last[n.target] = n
    ends: dict[fx.Node, list[str]] = {}
    for path, n in last.items():
        ends.setdefault(n, []).append(path)
    return ends


def _cut_names(chain: list[fx.Node], ends: dict[fx.Node, list[str]], gm: fx.GraphModule,
               sd_keys: set[str]) -> list[str]:
    """Names for a cut, best first: the modules whose output lies on it, outermost first and earliest on
    ties (``layer2`` is after stage 2, i.e. after its last block; ``layer2.1``; ``blocks.5``; ``conv1``
    for the stem). A cut that ends no module (a transformer block's residual sum after attention) is
    named by its block and the block's last child with weights before it (``blocks.5.attn``)."""
    paths = sorted((p for n in chain for p in ends.get(n, [])), key=lambda p: p.count("."))
    if paths:
        return paths
    block = module_path(chain[0])
    nodes = list(gm.graph.nodes)
    for n in reversed(nodes[: nodes.index(chain[0])]):
        path = n.target if n.op == "call_module" else module_path(n)
        if path.startswith(block + ".") and node_params(gm, [n], sd_keys):
            return [f"{block}.{path[len(block) + 1:].split('.')[0]}"]
    return [block or chain[0].name]


def _layer_after(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether a linear or convolution layer runs after `node`."""
    nodes = list(gm.graph.nodes)
    mods = dict(gm.named_modules())
    return any(n.op == "call_module" and isinstance(mods[n.target], (nn.Linear, nn.modules.conv._ConvNd))
               for n in nodes[nodes.index(node) + 1:])


def find_cuts(spaces: tuple[UnitSpace, ...], roots: dict[int, str], cands: Spaces, gm: fx.GraphModule,
              env: dict, sd_keys: set[str]) -> tuple[Cut, ...]:
    """Every node all paths pass through that carries only the units of one space: after every residual
    block, stage, transformer block or stem. Beyond ZipIt! (which stops only where a space ends, e.g.
    ResNet stage ends), a cut may sit inside a residual stream: the stream's space is split there, merged
    before the cut and unmerged into each parent's basis for the per-task layers after it. Where the rules
    leave the stream fixed (no space), a block's output is still a cut (``space`` empty) if it merges
    some spaces and a layer follows it: the heads read the trunk's fixed channels as they are."""
    ends = _ends(gm)
    by_name = {t.name: t for t in spaces}
    picked = []
    for chain in _chains(_points(gm, env, cands, roots, ends), gm, by_name, sd_keys):
        val = env[chain[0]]
        s = by_name.get(roots.get(cands.find(val.segs[0].cand))) if isinstance(val, Val) and val.segs[0].cand \
            is not None else None
        # observe at the chain's last retapped node: where the units are seen before the next layer
        tap = env[chain[-1]].segs[0].tap if s is not None else None
        node = next((n for n in chain if tap is not None and n.name == tap.node), chain[-1])
        trunk = node_params(gm, ancestors(node), sd_keys)
        merged = tuple(t.name for t in spaces if t is s or all(r.param in trunk for r in t.producers))
        if s is None and (not merged or not _layer_after(gm, node) or picked and picked[-1][1] is None
                          and picked[-1][4] == merged):
            # a fixed point merging nothing, nothing new (a downsampling's norm: averaged, not aligned),
            # or with no layer after it (logits) is no depth worth offering
            continue
        val = env[node]
        dim = (-1 if val.dim == val.ndim - 1 and val.ndim > 2 else val.dim) if isinstance(val, Val) else 1
        picked.append((_cut_names(chain, ends, gm, sd_keys), s, node, trunk, merged, dim))
    # names inside one wrapper (a classifier's ``body``) drop it, unless the wrapper itself ends at a cut
    # (torchvision Swin's ``features`` is its last stage's end)
    names = [ns[0] for ns, *_ in picked]
    tops = {n.split(".")[0] for ns, *_ in picked for n in ns}
    if len(tops) == 1 and tops.isdisjoint(names):
        names = [n.removeprefix(next(iter(tops)) + ".") for n in names]
    names = _unique([n if n != "full" else "full_" for n in names])
    return tuple(Cut(name=n, space=s.name if s is not None else "", node=node.name, trunk_params=trunk,
                     merged_spaces=merged, dim=dim)
                 for n, (_, s, node, trunk, merged, dim) in zip(names, picked))


@lru_cache(maxsize=1)
def default_leaves() -> tuple[type, ...]:
    """timm's no-trace layers (registered by timm itself), its stochastic drop layers and its
    weight-standardised convolutions (Qiao et al., 2019: each output channel's filter is standardised
    over its inputs, so these permute like any convolution; the conv rule handles them as leaves)."""
    try:
        import timm.layers
        from timm.layers._fx import get_notrace_modules
    except ImportError:
        return ()
    std = (timm.layers.StdConv2d, timm.layers.StdConv2dSame, timm.layers.ScaledStdConv2d,
           timm.layers.ScaledStdConv2dSame)
    return tuple(sorted({*get_notrace_modules(), timm.layers.DropPath, timm.layers.DropBlock2d, *std}, key=class_name))


def _walk(model: nn.Module, leaf_modules: tuple[type, ...] | None,
          example: Tensor | None) -> tuple[UnitGraph, Walker, fx.GraphModule]:
    leaf_modules = default_leaves() if leaf_modules is None else tuple(leaf_modules)
    leaves = tuple(sorted({class_name(t) for t in leaf_modules}))
    gm = fx_graph(model, leaves)
    propagate_shapes(gm, model, example)
    sd = model.state_dict()
    walker = Walker(gm, set(sd))
    walker.run()
    spaces, roots = assemble(walker.spaces, {n.name: i for n, i in walker.order.items()})
    cuts = find_cuts(spaces, roots, walker.spaces, gm, walker.env, set(sd))
    graph = UnitGraph(spaces=spaces, cuts=cuts, params=tuple((k, tuple(v.shape)) for k, v in sd.items()),
                      leaves=leaves)
    validate(graph)
    return graph, walker, gm


def trace(model: nn.Module, *, leaf_modules: tuple[type, ...] | None = None,
          example: Tensor | None = None) -> UnitGraph:
    """The unit graph of `model`, found by walking its torch.fx graph.

    Args:
        model: the network (its training flags are restored afterwards).
        leaf_modules: module classes fx must not trace into (default :func:`default_leaves`: timm's
            no-trace layers and drop layers); unknown leaves fix every space they touch.
        example: an input batch for shape propagation; guessed from the first layer when omitted.
    """
    return _walk(model, leaf_modules, example)[0]


def explain(model: nn.Module, *, leaf_modules: tuple[type, ...] | None = None,
            example: Tensor | None = None) -> tuple[UnitGraph, dict[str, str]]:
    """:func:`trace`, plus why each state-dict tensor outside every unit space stays fixed: the op or
    module the rules could not follow, the model output its units reach, or the op that read it."""
    graph, walker, gm = _walk(model, leaf_modules, example)
    cands = walker.spaces
    inside = {r.param for s in graph.spaces for r in s.refs}
    by_param: dict[str, list[int]] = {}
    for i in range(len(cands.parent)):
        if cands.find(i) == i:
            for r in cands.refs[i]:
                by_param.setdefault(r.param, []).append(i)
    readers: dict[str, fx.Node] = {}
    keys = {k for k, _ in graph.params}
    for n in gm.graph.nodes:
        for k in sorted(node_params(gm, [n], keys)):
            readers.setdefault(k, next(iter(n.users), n) if n.op == "get_attr" else n)
    why = {}
    for key, _ in graph.params:
        if key in inside:
            continue
        roots = by_param.get(key, [])
        fixed = [cands.why[r] for r in roots if cands.fixed[r] and cands.why[r]]
        if fixed:
            why[key] = fixed[0]
        elif roots:
            why[key] = "its units are never read by a later layer"
        elif key in walker.param_why:
            why[key] = walker.param_why[key]
        elif key in readers:
            walker.node = readers[key]
            why[key] = f"no unit space reaches it (read by {walker.describe()})"
        else:
            why[key] = "not used in the traced forward pass"
    return graph, why
