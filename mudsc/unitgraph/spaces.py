"""Candidate unit spaces during a walk of the fx graph: a union-find over tensor axes whose units
must move together, with the producers, consumers and taps each set collects."""
from __future__ import annotations

import math
from dataclasses import replace

import torch.fx as fx

from mudsc.unitgraph.fx import module_path
from mudsc.unitgraph.types import AxisRef, Tap


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
        self.rigid: list[bool] = []  # groups move only as wholes (rotary q/k heads)
        self.why: list[str] = []  # why a set is fixed (the first cause found)

    def new(self, size: int) -> int:
        for lst, v in ((self.size, size), (self.fixed, False), (self.groups, 1), (self.labels, ""), (self.ties, ""),
                       (self.rigid, False), (self.why, ""), (self.parent, len(self.parent))):
            lst.append(v)
        for lst in (self.refs, self.marks, self.uses):
            lst.append([])
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def fix(self, i: int, why: str) -> None:
        r = self.find(i)
        self.fixed[r] = True
        self.why[r] = self.why[r] or why

    def union(self, a: int | None, b: int | None, node: fx.Node | None) -> None:
        if a is None or b is None:  # fixed channels summed into a space fix it
            for c in (a, b):
                if c is not None:
                    self.fix(c, f"combined with untracked channels at node {node.name if node else '?'}")
            return
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if self.size[ra] != self.size[rb]:
                for r in (ra, rb):
                    self.fix(r, f"combined with a space of another size at node {node.name if node else '?'}")
            self.parent[rb] = ra
            self.fixed[ra] |= self.fixed[rb]
            self.why[ra] = self.why[ra] or self.why[rb]
            self.groups[ra] = math.lcm(self.groups[ra], self.groups[rb])
            self.labels[ra] += self.labels[rb] if self.labels[rb] != self.labels[ra] else ""
            self.ties[ra] = self.ties[ra] or self.ties[rb]
            self.rigid[ra] |= self.rigid[rb]
            for lst in (self.refs, self.marks, self.uses):
                lst[ra].extend(lst[rb])
        if node is not None:
            self.mark(ra, node)

    def split(self, i: int, k: int, labels: tuple[str, ...] | None) -> list[int] | None:
        """A fresh projection output cut into `k` equal chunks (fused q/k/v), or None when the set
        already has other members, consumers or offsets."""
        r = self.find(i)
        refs = self.refs[r]
        if (not self.fresh(r) or self.size[r] % k
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
        self.fix(r, "split into chunks")
        return out

    def fresh(self, i: int) -> bool:
        """Whether set `i` is only produced so far: not fixed, consumed or united with another."""
        r = self.find(i)
        return not (self.fixed[r] or self.uses[r] or self.marks[r])

    def tie(self, a: int, b: int, node: fx.Node) -> None:
        """Sets `a` and `b` must order their groups alike (q/k and v heads of one attention)."""
        ra, rb = self.find(a), self.find(b)
        key = self.ties[ra] or self.ties[rb] or f"{module_path(node) or node.name}"
        self.ties[ra] = self.ties[rb] = key

    def make_rigid(self, i: int) -> None:
        """Set `i`'s groups may move only as wholes, each keeping its inner order."""
        self.rigid[self.find(i)] = True

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
                    # an axis both producing and consuming: no consistent transform
                    self.fix(i, "one tensor axis both produces and consumes its units")
