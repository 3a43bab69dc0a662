"""Unit spaces of a model: which tensor axes share one set of hidden units, derived with torch.fx.

A unit space is a set of hidden channels between weight layers (a ZipIt! merge point, Stoica et al.,
2024, Sec. 3 and App. "Partial Zipping"; a MuDSC / Git Re-Basin permutation group, Xu et al., 2024).
Each space lists the tensor axes that produce its units (role ``out``; BatchNorm running statistics
``stat``) and the axes that consume them (role ``in``), so permuting or merging the units of one
space is applying one matrix to each of these axes. :func:`trace` finds the spaces by walking the fx
graph (rules in :mod:`mudsc.unitgraph.rules`); :meth:`UnitGraph.from_dict` takes a hand-written spec for
models that do not trace, in the spirit of mergekit's architecture files.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from mudsc.errors import CheckpointError, ConfigError, ShapeMismatchError, UnknownNameError

ROLES = ("out", "in", "stat")
HOOKS = ("", "output", "input")


@dataclass(frozen=True)
class AxisRef:
    """Axis `axis` of state-dict tensor `param` holds the units of a space.

    ``role``: ``out`` produces the units, ``in`` consumes them, ``stat`` is a produced BatchNorm
    running statistic (kept out of weight similarity). The units occupy entries
    ``[start, start + size * repeat)`` of the axis, each spanning ``repeat`` consecutive entries.
    """

    param: str
    axis: int
    role: str
    start: int = 0
    repeat: int = 1


@dataclass(frozen=True)
class Tap:
    """Where the units are observed: channel dim `dim` of fx node `node`'s output, entries from `start`.

    With ``hook`` set (hand-written specs of untraceable models), `node` names a module instead and
    the units are its ``output`` or its first ``input``, seen through a forward hook.
    """

    node: str
    dim: int
    start: int = 0
    hook: str = ""


@dataclass(frozen=True)
class UnitSpace:
    """One set of `size` hidden units in `groups` contiguous groups that merges must respect (GroupNorm
    groups, attention heads). Spaces sharing a non-empty `group_tie` must map their groups alike: the
    q/k and v spaces of one attention layer permute heads together. A `rigid` space moves only whole
    groups, each keeping the order of its units (q/k heads under rotary embeddings, which rotate fixed
    pairs of units inside a head)."""

    name: str
    size: int
    producers: tuple[AxisRef, ...]
    consumers: tuple[AxisRef, ...]
    taps: tuple[Tap, ...]
    index: int
    groups: int = 1
    group_tie: str = ""
    rigid: bool = False

    @property
    def refs(self) -> tuple[AxisRef, ...]:
        return self.producers + self.consumers


@dataclass(frozen=True)
class Cut:
    """A partial-zipping point: every input -> output path passes through fx node `node`, whose output
    holds exactly the units of `space` along dim `dim`; or, with `space` empty, channels that stay in the
    parents' shared basis (a stream the propagation rules fix), which the heads read as they are."""

    name: str
    space: str
    node: str
    trunk_params: frozenset[str]
    merged_spaces: tuple[str, ...]
    dim: int = 1


@dataclass(frozen=True)
class UnitGraph:
    """The unit spaces of a model in input -> output order and its valid cuts (``full`` excluded).

    ``params`` lists every state-dict key with its shape; ``leaves`` the qualified class names that
    tracing kept as leaf modules, so :func:`observed` and :func:`split` trace the same graph again.
    """

    spaces: tuple[UnitSpace, ...]
    cuts: tuple[Cut, ...]
    params: tuple[tuple[str, tuple[int, ...]], ...] = ()
    leaves: tuple[str, ...] = ()
    _by_name: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_name.update({s.name: s for s in self.spaces})

    def space(self, name: str) -> UnitSpace:
        if name not in self._by_name:
            raise UnknownNameError(f"unknown unit space {name!r}; spaces: {', '.join(self._by_name) or '(none)'}")
        return self._by_name[name]

    def cut(self, name: str) -> Cut:
        for c in self.cuts:
            if c.name == name:
                return c
        valid = ", ".join(c.name for c in self.cuts) or "(none)"
        raise UnknownNameError(f"unknown cut {name!r}; valid cuts: {valid} (or full)")

    def table(self) -> list[tuple[str, tuple[str | None, ...]]]:
        """Per state-dict key, the space of each axis (``None``: fixed; ``a+b``: concatenated spaces)."""
        on_axis: dict[tuple[str, int], list[tuple[int, str]]] = {}
        for s in self.spaces:
            for r in s.refs:
                on_axis.setdefault((r.param, r.axis), []).append((r.start, s.name))
        rows = []
        for key, shape in self.params:
            rows.append((key, tuple("+".join(n for _, n in sorted(set(on_axis[key, a])))
                                    if (key, a) in on_axis else None for a in range(len(shape)))))
        return rows

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form; :meth:`from_dict` reads it back (or a hand-written spec)."""
        def ref(r: AxisRef) -> dict:
            return {"param": r.param, "axis": r.axis, "role": r.role, "start": r.start, "repeat": r.repeat}

        return {
            "spaces": [{"name": s.name, "size": s.size, "groups": s.groups, "group_tie": s.group_tie,
                        "rigid": s.rigid, "producers": [ref(r) for r in s.producers], "consumers": [ref(r) for r in s.consumers],
                        "taps": [{"node": t.node, "dim": t.dim, "start": t.start, "hook": t.hook} for t in s.taps]}
                       for s in self.spaces],
            "cuts": [{"name": c.name, "space": c.space, "node": c.node, "trunk_params": sorted(c.trunk_params),
                      "merged_spaces": list(c.merged_spaces), "dim": c.dim} for c in self.cuts],
            "params": [[k, list(shape)] for k, shape in self.params],
            "leaves": list(self.leaves),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UnitGraph":
        """A graph from :meth:`to_dict` output or a hand-written spec; spaces keep the listed order.

        Required per space: ``name``, ``size``, ``producers``, ``taps``; refs need ``param``, ``axis``,
        ``role``. ``"rigid": true`` lets a space's groups move only as wholes (rotary q/k heads). Cut
        ``merged_spaces`` default to the spaces up to and including the cut's space, ``dim`` (the channel
        dim of the cut tensor) to 1.
        """
        try:
            spaces = []
            for i, s in enumerate(d["spaces"]):
                refs = [AxisRef(str(r["param"]), int(r["axis"]), str(r["role"]), int(r.get("start", 0)),
                                int(r.get("repeat", 1))) for r in list(s["producers"]) + list(s.get("consumers", []))]
                taps = tuple(Tap(str(t["node"]), int(t["dim"]), int(t.get("start", 0)), str(t.get("hook", "")))
                             for t in s["taps"])
                spaces.append(UnitSpace(name=str(s["name"]), size=int(s["size"]), index=i,
                                        groups=int(s.get("groups", 1)), group_tie=str(s.get("group_tie", "")),
                                        rigid=s.get("rigid", False),
                                        producers=tuple(r for r in refs if r.role != "in"),
                                        consumers=tuple(r for r in refs if r.role == "in"), taps=taps))
            names = [s.name for s in spaces]
            cuts = []
            for c in d.get("cuts", []):
                upto = names[: names.index(c["space"]) + 1] if c["space"] in names else []
                cuts.append(Cut(name=str(c["name"]), space=str(c["space"]), node=str(c["node"]),
                                trunk_params=frozenset(c["trunk_params"]),
                                merged_spaces=tuple(c.get("merged_spaces", upto)), dim=int(c.get("dim", 1))))
            params = tuple((str(k), tuple(int(n) for n in shape)) for k, shape in d.get("params", []))
            graph = cls(spaces=tuple(spaces), cuts=tuple(cuts), params=params,
                        leaves=tuple(d.get("leaves", ())))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"unit graph spec: malformed entry ({type(e).__name__}: {e})") from None
        validate(graph)
        return graph


def validate(graph: UnitGraph) -> None:
    """Raise ConfigError on inconsistent specs (duplicate names, bad roles, unknown cut spaces)."""
    names = [s.name for s in graph.spaces]
    if len(set(names)) != len(names):
        raise ConfigError(f"unit graph: duplicate space names in {names}")
    shapes = dict(graph.params)
    for s in graph.spaces:
        if s.size < 1 or s.groups < 1 or s.size % s.groups:
            raise ConfigError(f"unit space {s.name!r}: size {s.size} must be a positive multiple of groups {s.groups}")
        if not isinstance(s.rigid, bool):
            raise ConfigError(f"unit space {s.name!r}: rigid must be true or false, got {s.rigid!r}")
        if not s.taps:
            raise ConfigError(f"unit space {s.name!r}: no taps")
        for t in s.taps:
            if t.hook not in HOOKS:
                raise ConfigError(f"unit space {s.name!r}: tap hook {t.hook!r} is not one of {HOOKS}")
        for r in s.refs:
            if r.role not in ROLES:
                raise ConfigError(f"unit space {s.name!r}: role {r.role!r} of {r.param} is not one of {ROLES}")
            shape = shapes.get(r.param)
            if shape is not None and (r.axis >= len(shape) or r.start + s.size * r.repeat > shape[r.axis]):
                raise ConfigError(f"unit space {s.name!r}: {r.param} {tuple(shape)} has no units "
                                  f"[{r.start}, {r.start + s.size * r.repeat}) on axis {r.axis}")
    for c in graph.cuts:
        if c.name == "full":
            raise ConfigError("unit graph: 'full' is reserved and cannot name a cut")
        unknown = [n for n in ((c.space,) if c.space else ()) + c.merged_spaces if n not in names]
        if unknown:
            raise ConfigError(f"cut {c.name!r}: unknown spaces {unknown}")


def check_params(graph: UnitGraph, sd: dict[str, Tensor]) -> None:
    """Raise CheckpointError when a space names a tensor the state dict lacks, ShapeMismatchError when
    the tensor has no room for the space's units."""
    for s in graph.spaces:
        for r in s.refs:
            if r.param not in sd:
                raise CheckpointError(f"unit space {s.name!r}: state dict has no tensor {r.param!r}")
            shape = sd[r.param].shape
            if r.axis >= len(shape) or r.start + s.size * r.repeat > shape[r.axis]:
                raise ShapeMismatchError(f"unit space {s.name!r}: {r.param} {tuple(shape)} has no units "
                                  f"[{r.start}, {r.start + s.size * r.repeat}) on axis {r.axis}")
