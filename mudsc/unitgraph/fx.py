"""torch.fx plumbing for unit graphs: tracing with leaf modules, shape propagation, cut tests and
the node helpers the walk and the derived modules share."""
from __future__ import annotations

import contextlib
import io
import threading

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.shape_prop import ShapeProp

from mudsc.errors import ConfigError
from mudsc.unitgraph.inline import written_out
from mudsc.unitgraph.types import Tap


def class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


_TRACE_LOCK = threading.Lock()  # fx patches nn.Module process-wide while it traces: one trace at a time


class _Tracer(fx.Tracer):
    """torch.nn modules plus any module whose class (or a base class) is named in `leaves` are leaves,
    except those :mod:`mudsc.unitgraph.inline` writes out; buffers become ``get_attr`` nodes so graphs
    keep sharing them.

    While fx traces, ``nn.Module.__call__`` and ``__getattr__`` are patched for the whole process, so a
    forward pass on another thread (another studio session's merge) would be recorded into this trace
    and fail. Module calls and attributes from other threads pass straight through instead.
    """

    def __init__(self, leaves: frozenset[str]) -> None:
        super().__init__()
        self.leaves = leaves
        self.proxy_buffer_attributes = True
        self.inlining: nn.Module | None = None  # a module traced through its written-out forward
        self.thread = threading.get_ident()

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if m is self.inlining:
            return False
        return super().is_leaf_module(m, qualname) or any(class_name(c) in self.leaves for c in type(m).__mro__)

    def call_module(self, m: nn.Module, forward, args: tuple, kwargs: dict):
        if threading.get_ident() != self.thread:
            return forward(*args, **kwargs)
        written = written_out(self, m, args, kwargs)
        if written is None:
            return super().call_module(m, forward, args, kwargs)
        outer, self.inlining = self.inlining, m
        try:
            return super().call_module(m, written, args, kwargs)
        finally:
            self.inlining = outer

    def getattr(self, attr: str, attr_val, parameter_proxy_cache: dict):
        if threading.get_ident() != self.thread:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)


class _Modes:
    """Puts a model in eval mode for the duration of a block, then restores every module's flag."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc) -> None:
        for m, flag in self.flags:
            m.training = flag


def fx_graph(model: nn.Module, leaves: tuple[str, ...]) -> fx.GraphModule:
    """`model` traced in eval mode (train-only branches such as drop-path stay out of the graph)."""
    tracer = _Tracer(frozenset(leaves))
    with _Modes(model):
        try:
            with _TRACE_LOCK:
                graph = tracer.trace(model)
        except Exception as e:  # fx raises many kinds on untraceable code
            where = [f"{path or '(top)'} ({getattr(kind, '__name__', kind)})"
                     for path, kind in list(tracer.module_stack.values())[-1:]]
            inside = f" inside module {where[0]}" if where else ""
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ConfigError(f"{type(model).__name__} does not trace with torch.fx{inside}: {type(e).__name__}: "
                              f"{first}; add that module to leaf_modules or give a hand-written spec "
                              "(UnitGraph.from_dict; README, 'Models torch.fx cannot trace')") from None
    return fx.GraphModule(model, graph)


def _first_weight(gm: fx.GraphModule) -> nn.Module | None:
    mods = dict(gm.named_modules())
    for n in gm.graph.nodes:
        if n.op == "call_module" and isinstance(mods[n.target], (nn.Linear, nn.modules.conv._ConvNd)):
            return mods[n.target]
    return None


def propagate_shapes(gm: fx.GraphModule, model: nn.Module, example: Tensor | None) -> None:
    """Fill ``node.meta['tensor_meta']``; without `example`, try inputs shaped for the first layer."""
    first = _first_weight(gm)
    if example is not None:
        tries = [example]
    elif isinstance(first, nn.Linear):
        tries = [torch.zeros(2, first.in_features)]
    elif first is not None:
        sizes = [getattr(getattr(model, "patch_embed", None), "img_size", None)]
        sizes += [getattr(getattr(getattr(model, "body", None), "patch_embed", None), "img_size", None)]
        nd = len(first.kernel_size)
        tries = [torch.zeros(2, first.in_channels, *((s,) * nd if isinstance(s, int) else tuple(s)))
                 for s in [*sizes, 28, 32, 8, 64, 224] if s is not None]
    else:
        tries = []
    p = next(iter(model.parameters()), None)
    last: Exception | None = None
    for x in tries:
        if p is not None:
            x = x.to(device=p.device, dtype=p.dtype if x.is_floating_point() else x.dtype)
        for fake in (True, False):  # fake tensors skip the arithmetic; some ops only run for real
            try:
                # ShapeProp prints the traceback of every failed guess
                with _Modes(model), torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
                    mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else None
                    ShapeProp(gm, fake_mode=mode).propagate(x)
                return
            except Exception as e:  # a wrong guess fails somewhere inside the model
                last = e
    raise ConfigError(f"trace: could not run {type(model).__name__} on a guessed input ({last}); pass example=")


def input_dependent(graph: fx.Graph, skip: fx.Node | None = None) -> set[fx.Node]:
    """Nodes reachable from the placeholders without passing through `skip`."""
    seen: set[fx.Node] = set()
    stack = [n for n in graph.nodes if n.op == "placeholder"]
    while stack:
        n = stack.pop()
        if n in seen or n is skip:
            continue
        seen.add(n)
        stack.extend(n.users)
    return seen


def is_cut(graph: fx.Graph, node: fx.Node) -> bool:
    """Whether every placeholder -> output path passes through `node`."""
    return graph.output_node() not in input_dependent(graph, skip=node)


def ancestors(node: fx.Node) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(n.all_input_nodes)
    return seen


def node_params(gm: fx.GraphModule, nodes, sd_keys: set[str]) -> frozenset[str]:
    """State-dict keys read by `nodes` (module parameters and buffers, get_attr targets)."""
    keys = set()
    for n in nodes:
        if n.op == "call_module":
            keys |= {f"{n.target}.{k}" for k in gm.get_submodule(n.target).state_dict()}
        elif n.op == "get_attr":
            keys.add(n.target)
    return frozenset(keys & sd_keys)


def module_path(node: fx.Node) -> str:
    """The path of the module that `node` was traced inside, '' at top level."""
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.values()))[0] if stack else ""


def nodes_by_name(gm: fx.GraphModule) -> dict[str, fx.Node]:
    return {n.name: n for n in gm.graph.nodes}


def shape_of(node: fx.Node) -> tuple[int, ...] | None:
    """The propagated shape of `node`'s output, None for non-tensors (and tuples of tensors)."""
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if hasattr(meta, "shape") else None


def tap_of(node: fx.Node, dim: int, ndim: int, start: int) -> Tap:
    """Tap on `node`'s output; token tensors [B, T, C] report their channel dim as -1."""
    return Tap(node.name, -1 if dim == ndim - 1 and ndim > 2 else dim, start)
