"""Candidate unit spaces (union-find) and their assembly into a :class:`~mudsc.graph.UnitGraph`:
taps, readable names, input -> output order and the cuts of partial zipping (ZipIt!, Stoica et al.,
2024, App. "Partial Zipping": only merge points every path passes through avoid extra unmerges)."""
from __future__ import annotations

import math
from dataclasses import replace
from functools import lru_cache

import torch.fx as fx
from torch import Tensor, nn

from .graph import AxisRef, Cut, Tap, UnitGraph, UnitSpace, validate
from .graph_fx import ancestors, class_name, fx_graph, is_cut, node_params, propagate_shapes


class Spaces:
    """Union-find over candidate spaces; each root holds the refs, uses and flags of its set."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.fixed: list[bool] = []
        self.groups: list[int] = []
        self.refs: list[list[AxisRef]] = []
        self.marks: list[list[fx.Node]] = []  # where sets were united: names residual streams
        self.uses: list[list[tuple[int, Tap | None]]] = []  # (consumer order, tap of the consumed value)
        self.labels: list[str] = []  # chunk names of fused projections ("q", "k", "v")
        self.ties: list[str] = []  # spaces with one tie keep one group order (attention heads)

    def new(self, size: int) -> int:
        for lst, v in ((self.size, size), (self.fixed, False), (self.groups, 1), (self.labels, ""), (self.ties, ""),
                       (self.parent, len(self.parent))):
            lst.append(v)
        for lst in (self.refs, self.marks, self.uses):
            lst.append([])
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def fix(self, i: int) -> None:
        self.fixed[self.find(i)] = True

    def union(self, a: int | None, b: int | None, node: fx.Node | None) -> None:
        if a is None or b is None:  # fixed channels summed into a space fix it
            for c in (a, b):
                if c is not None:
                    self.fix(c)
            return
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if self.size[ra] != self.size[rb]:
                self.fixed[ra] = self.fixed[rb] = True
            self.parent[rb] = ra
            self.fixed[ra] |= self.fixed[rb]
            self.groups[ra] = math.lcm(self.groups[ra], self.groups[rb])
            self.labels[ra] += self.labels[rb] if self.labels[rb] != self.labels[ra] else ""
            self.ties[ra] = self.ties[ra] or self.ties[rb]
            for lst in (self.refs, self.marks, self.uses):
                lst[ra].extend(lst[rb])
        if node is not None:
            self.mark(ra, node)

    def split(self, i: int, k: int, labels: tuple[str, ...] | None) -> list[int] | None:
        """A fresh projection output cut into `k` equal chunks (fused q/k/v), or None when the set
        already has other members, consumers or offsets."""
        r = self.find(i)
        refs = self.refs[r]
        if (self.fixed[r] or self.uses[r] or self.marks[r] or self.size[r] % k
                or any(x.role != "out" or x.start or x.repeat != 1 for x in refs)):
            return None
        if k == 1:
            return [r]
        width = self.size[r] // k
        out = []
        for c in range(k):
            new = self.new(width)
            self.refs[new] = [replace(x, start=c * width) for x in refs]
            self.labels[new] = labels[c] if labels else f"chunk{c}"
            out.append(new)
        self.refs[r] = []
        self.fixed[r] = True
        return out

    def tie(self, a: int, b: int, node: fx.Node) -> None:
        """Sets `a` and `b` must order their groups alike (q/k and v heads of one attention)."""
        ra, rb = self.find(a), self.find(b)
        key = self.ties[ra] or self.ties[rb] or f"{_module_path(node) or node.name}"
        self.ties[ra] = self.ties[rb] = key

    def add_ref(self, i: int, ref: AxisRef) -> None:
        self.refs[self.find(i)].append(ref)

    def use(self, i: int, tap: Tap | None, order: int) -> None:
        self.uses[self.find(i)].append((order, tap))

    def set_groups(self, i: int, groups: int) -> None:
        r = self.find(i)
        self.groups[r] = math.lcm(self.groups[r], groups)

    def mark(self, i: int, node: fx.Node) -> None:
        self.marks[self.find(i)].append(node)

    def tie_shared_params(self) -> None:
        """Sets touching one tensor axis at one offset are one space (tied weights)."""
        first: dict[tuple[str, int, int], int] = {}
        for i in range(len(self.parent)):
            for r in list(self.refs[i]) if self.find(i) == i else []:
                key = (r.param, r.axis, r.start)
                if key in first:
                    self.union(first[key], i, None)
                else:
                    first[key] = i
        for i in range(len(self.parent)):
            if self.find(i) == i:
                roles: dict[tuple[str, int, int], set[str]] = {}
                for r in self.refs[i]:
                    roles.setdefault((r.param, r.axis, r.start), set()).add(r.role)
                if any("in" in v and len(v) > 1 for v in roles.values()):
                    self.fixed[i] = True  # an axis both producing and consuming: no consistent transform


def _module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.values()))[0] if stack else ""


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
        marks = [_module_path(n) for n in spaces.marks[i]]
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


def build_graph(model: nn.Module, leaf_modules: tuple[type, ...], example: Tensor | None) -> UnitGraph:
    from .graph_rules import Walker

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
