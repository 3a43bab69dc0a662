"""Propagation rules that turn an fx graph into unit spaces (ZipIt! zip propagation, Stoica et al.,
2024, Sec. 3.3 / App.; the permutation-spec view of Git Re-Basin and MuDSC, Xu et al., 2024).

Every node gets an abstract value saying which tensor dim carries channels and which candidate
space each run of channels belongs to. Conv/linear outputs open a candidate; norms, element-wise ops,
pooling and reshapes pass it on; element-wise binary ops (residual sums) and non-channel
concatenation unite candidates (union-find); channel concatenation lays candidates side by side.
A candidate that reaches the model output or an operation these rules do not understand is fixed.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import replace
from typing import Any

import torch.fx as fx
from torch import nn

from mudsc.unitgraph.fx import shape_of, tap_of
from mudsc.unitgraph.heads import HeadRules
from mudsc.unitgraph.spaces import Spaces
from mudsc.unitgraph.types import AxisRef
from mudsc.unitgraph.values import OPAQUE, TENSORS, Opaque, Param, ParamCat, Rotated, Scores, Seg, Split, Val

_CONV = (nn.modules.conv._ConvNd,)
_NORM = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
_SAME = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
         nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Identity,
         nn.modules.dropout._DropoutNd, nn.AlphaDropout)
_POOL = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
         nn.modules.pooling._AdaptiveMaxPoolNd, nn.modules.pooling._LPPoolNd, nn.Upsample)
_PAD = (nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd, nn.modules.padding._ReplicationPadNd,
        nn.modules.padding._CircularPadNd)
_SAME_FN = {"relu", "relu_", "relu6", "gelu", "silu", "mish", "sigmoid", "sigmoid_", "tanh", "tanh_",
            "leaky_relu", "hardswish", "hardsigmoid", "hardtanh", "elu", "selu", "celu", "softplus",
            "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "clamp", "clip", "contiguous",
            "clone", "detach", "float", "double", "half", "to", "type_as", "normalize", "abs", "neg",
            "identity", "stochastic_depth"}
_POOL_FN = {"adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool1d", "adaptive_max_pool2d",
            "avg_pool1d", "avg_pool2d", "max_pool1d", "max_pool2d", "interpolate", "upsample"}
# fx-wrapped window steps of Swin (mudsc.unitgraph.inline; torchvision's patch merging and position bias)
_WINDOW_FN = {"swin_windows", "swin_unwindows", "swin_mask", "_patch_merging_pad", "_get_relative_position_bias"}
_BINARY = {"add", "sub", "mul", "truediv", "div", "iadd", "isub", "imul", "itruediv", "add_", "sub_",
           "mul_", "div_"}
_RESHAPE = {"flatten", "view", "reshape", "squeeze", "unsqueeze", "unflatten"}
_REDUCE = {"mean", "sum", "amax", "amin"}
_NO_TENSOR = {"size", "dim", "numel", "_assert", "eq", "ne", "lt", "gt", "le", "ge", "getattr"}


def _name(target: Any) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", "")


def _flat(x: Any):
    if isinstance(x, (list, tuple)):
        for y in x:
            yield from _flat(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _flat(y)
    else:
        yield x


class Walker(HeadRules):
    """Runs the rules over `gm` (shapes propagated); results land in `self.spaces`."""

    def __init__(self, gm: fx.GraphModule, sd_keys: set[str]) -> None:
        self.gm = gm
        self.mods = dict(gm.named_modules())
        self.sd_keys = sd_keys
        self.spaces = Spaces()
        self.env: dict[fx.Node, Any] = {}
        self.order = {n: i for i, n in enumerate(gm.graph.nodes)}
        self.param_why: dict[str, str] = {}  # state-dict key -> why no space reaches it

    def run(self) -> None:
        for node in self.gm.graph.nodes:
            self.node = node
            self.env[node] = self.visit(node)

    def arg(self, a: Any) -> Any:
        return fx.node.map_arg(a, self.env.__getitem__)

    def describe(self) -> str:
        """The current node as a reason names it: ``Conv2d 'stem.conv' (node stem_conv)``."""
        n = self.node
        if n.op == "call_module":
            return f"module {type(self.mods[n.target]).__name__} {n.target!r} (node {n.name})"
        if n.op == "output":
            return "the model output"
        kind = "method" if n.op == "call_method" else "function"
        return f"{kind} {_name(n.target)} (node {n.name})"

    def fix(self, *vals: Any, why: str) -> None:
        for v in _flat(vals):
            if isinstance(v, Val):
                for s in v.segs:
                    if s.cand is not None:
                        self.spaces.fix(s.cand, why)
            elif isinstance(v, Split):
                for c in v.cands:
                    self.spaces.fix(c, why)
            elif isinstance(v, (Scores, Rotated)):
                self.spaces.fix(v.cand, why)
            elif isinstance(v, Param):
                self.param_why.setdefault(v.key, why)

    def unknown(self, *vals: Any, why: str = "") -> Any:
        """Fix every space in `vals`: the rules cannot follow their units through this node."""
        self.fix(*vals, why=why or f"no rule for {self.describe()}")
        shape = self.node.meta.get("tensor_meta")
        if shape is None:
            return None
        return OPAQUE if hasattr(shape, "shape") else tuple(OPAQUE for _ in shape)

    # -- dispatch ------------------------------------------------------------------------------
    def visit(self, node: fx.Node) -> Any:
        if node.op == "placeholder":
            return OPAQUE
        if node.op == "get_attr":
            shape = shape_of(node)
            if node.target in self.sd_keys and shape is not None:
                return Param(node.target, tuple(range(len(shape))))
            return OPAQUE if shape is not None else None
        if node.op == "output":
            return self.fix(self.arg(node.args), why="reaches the model output (a fixed output space)")
        args, kwargs = self.arg(node.args), self.arg(node.kwargs)
        if node.op == "call_module":
            return self.module(self.mods[node.target], node.target, args)
        return self.function(_name(node.target), node.target, args, kwargs)

    def module(self, m: nn.Module, path: str, args: tuple) -> Any:
        x = args[0] if args else None
        passes = isinstance(m, _SAME) or type(m).__name__ in ("DropPath", "DropBlock2d")
        if len(args) == 1 and isinstance(x, (Split, Rotated, Scores)) and (passes or isinstance(m, nn.Softmax)):
            return x
        if len(args) != 1 or not isinstance(x, (Val, Opaque)):
            return self.unknown(args)
        if isinstance(m, nn.Linear):
            return self.linear(x, f"{path}.weight", f"{path}.bias" if m.bias is not None else None, m.out_features)
        if isinstance(m, _CONV):
            return self.conv(x, m, path)
        if isinstance(m, _NORM):
            keys = {k: f"{path}.{k}" for k in m.state_dict() if k != "num_batches_tracked" and "." not in k}
            groups = m.num_groups if isinstance(m, nn.GroupNorm) else 1
            kind = "layer" if isinstance(m, nn.LayerNorm) else "channel"
            if kind == "layer" and len(m.normalized_shape) != 1:
                return self.unknown(x)
            return self.norm(x, kind, keys, groups)
        if passes:
            return self.same(x, retap=not isinstance(m, (nn.Identity, nn.modules.dropout._DropoutNd)))
        if isinstance(m, _POOL) or type(m).__name__ == "SelectAdaptivePool2d":
            return self.pool(x)
        if isinstance(m, (nn.Flatten, nn.Unflatten)):
            return self.reshape(x)
        if isinstance(m, _PAD):
            return self.spatial(x)
        for k in m.state_dict():
            self.param_why.setdefault(f"{path}.{k}", f"inside {self.describe()}, which has no rule")
        return self.unknown(args)

    def function(self, name: str, target: Any, args: tuple, kwargs: dict) -> Any:
        x = args[0] if args else None
        if name == "type_as" and len(args) == 2:
            args = args[:1]  # the other tensor gives only its dtype: its channels are not read
        if name == "getitem" and isinstance(x, (tuple, list)):
            return x[args[1]] if isinstance(args[1], int) else self.unknown(x)
        tensors = [a for a in _flat((args, kwargs)) if isinstance(a, TENSORS)]
        if not tensors:
            return None if name in _NO_TENSOR or shape_of(self.node) is None else OPAQUE
        if name == "getattr":
            return None if args[1] in ("shape", "dtype", "device") else self.unknown(x)
        if name in _NO_TENSOR:
            return None
        if name in _WINDOW_FN:
            return self.windows(name, x)
        if name == "scaled_dot_product_attention":
            return self.attention(args, kwargs)
        if name == "matmul" and len(tensors) == 2 and len(args) == 2:
            return self.matmul(*args)
        if any(isinstance(a, Scores) for a in tensors):
            return self.scores_op(name, args, kwargs, tensors)
        if any(isinstance(a, (Split, Rotated)) for a in tensors):
            if name in _BINARY and len(args) == 2 and not kwargs:
                return self.heads_binary(args)
            if name in ("cat", "concat", "stack"):
                return self.heads_cat(list(args[0]), kwargs.get("dim", args[1] if len(args) > 1 else 0),
                                      stack=name == "stack")
            if name == "getitem" and isinstance(x, (Split, Rotated)):
                return self.index_heads(x, args[1])
            if isinstance(x, (Split, Rotated)):
                return self.heads_op(name, x, args, kwargs, tensors)
            return self.unknown(args, kwargs)
        if name == "expand":
            return self.expand(x)
        if isinstance(x, Param) and len(tensors) == 1:
            if name in _RESHAPE:
                return self.reshape_param(x)
            if name in _SAME_FN:
                return x
            if name in ("permute", "transpose", "swapaxes"):
                return self.permute_param(x, name, args[1:])
        if name == "getitem" and isinstance(x, Param) and isinstance(args[1], Opaque):
            # rows gathered by an index tensor (a relative-position table): the gathered dims carry no axis
            extra = len(shape_of(self.node)) - len(x.axes) + 1
            return Param(x.key, (None,) * extra + x.axes[1:])
        if name in _BINARY and len(args) == 2 and not kwargs:
            return self.binary(args)
        if name in ("cat", "concat"):
            dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
            return self.cat(list(args[0]), dim)
        if name == "getitem":
            return self.getitem(x, args[1])
        if name == "chunk" and isinstance(x, Val):
            return self.chunk(x, args[1] if len(args) > 1 else kwargs.get("chunks"),
                              kwargs.get("dim", args[2] if len(args) > 2 else 0))
        if name in ("layer_norm", "group_norm", "batch_norm"):
            return self.functional_norm(name, target, args, kwargs)
        if name == "linear":
            return self.functional_linear(target, args, kwargs)
        if not isinstance(x, (Val, Opaque)):
            return self.unknown(args, kwargs)
        others = [a for a in tensors if a is not x]
        if name == "type_as" and len(others) == 1:
            others = []
        if others:
            return self.unknown(args, kwargs)
        if name in _SAME_FN:
            return self.same(x, retap=name not in ("contiguous", "clone", "detach", "to", "float", "double", "half",
                                                    "type_as", "identity", "stochastic_depth")
                             and "dropout" not in name)
        if name in _POOL_FN:
            return self.pool(x)
        if name in ("pad", "roll"):
            return self.spatial(x)
        if name in _RESHAPE:
            return self.reshape(x)
        if name in ("permute", "transpose", "swapaxes"):
            return self.permute(x, name, args[1:])
        if name in _REDUCE:
            return self.reduce(x, kwargs.get("dim", args[1] if len(args) > 1 else None),
                               kwargs.get("keepdim", args[2] if len(args) > 2 else False))
        return self.unknown(args, kwargs)

    # -- rules ---------------------------------------------------------------------------------
    def retap(self, v: Val) -> Val:
        """The same channels, now observed at the current node (not across flattened repeats)."""
        if any(s.repeat != 1 for s in v.segs):
            return v
        return replace(v, segs=tuple(s._replace(tap=tap_of(self.node, v.dim, v.ndim, off))
                                     for off, s in v.offsets()))

    def consume(self, x: Val | Opaque, key: str, axis: int) -> None:
        if isinstance(x, Val):
            for off, s in x.offsets():
                if s.cand is not None:
                    self.spaces.add_ref(s.cand, AxisRef(key, axis, "in", off, s.repeat))
                    self.spaces.use(s.cand, s.tap, self.order[self.node])

    def produce(self, size: int, dim: int, ndim: int, refs: list[tuple[str, int]]) -> Val:
        cand = self.spaces.new(size)
        for key, axis in refs:
            self.spaces.add_ref(cand, AxisRef(key, axis, "out"))
        return Val(dim, ndim, (Seg(cand, size, 1, tap_of(self.node, dim, ndim, 0)),))

    def linear(self, x: Val | Opaque, weight: str, bias: str | ParamCat | None, out: int) -> Any:
        shape = shape_of(self.node)
        if isinstance(x, Val) and x.dim != x.ndim - 1:
            # mixes a non-channel dim (token mixing): the channels pass through untouched
            return self.retap(x)
        self.consume(x, weight, 1)
        if not isinstance(bias, ParamCat):
            return self.produce(out, len(shape) - 1, len(shape), [(weight, 0)] + ([(bias, 0)] if bias else []))
        # a bias concatenated from parts: one candidate per part, each its run of the weight's rows
        segs, start = [], 0
        for key, n in bias.parts:
            cand = self.spaces.new(n)
            self.spaces.add_ref(cand, AxisRef(weight, 0, "out", start))
            if key is not None:
                self.spaces.add_ref(cand, AxisRef(key, 0, "out"))
            segs.append(Seg(cand, n, 1, tap_of(self.node, len(shape) - 1, len(shape), start)))
            start += n
        return Val(len(shape) - 1, len(shape), tuple(segs))

    def conv(self, x: Val | Opaque, m: nn.modules.conv._ConvNd, path: str) -> Any:
        if isinstance(x, Val) and x.dim != 1:
            return self.unknown(x)
        if m.groups == m.in_channels == m.out_channels and not m.transposed:
            # depthwise: channel c only feeds channel c, so the channels pass through like a norm
            keys = {"weight": f"{path}.weight", "bias": f"{path}.bias" if m.bias is not None else None}
            return self.norm(x, "channel", keys, 1)
        if m.groups != 1:
            return self.unknown(x)
        w_out, w_in = (1, 0) if m.transposed else (0, 1)
        self.consume(x, f"{path}.weight", w_in)
        refs = [(f"{path}.weight", w_out)] + ([(f"{path}.bias", 0)] if m.bias is not None else [])
        # per-output-channel extras of conv subclasses (the gain [O, 1, 1, 1] of a scaled std conv)
        refs += [(f"{path}.{k}", 0) for k, p in m.named_parameters(recurse=False) if k not in ("weight", "bias")
                 and p.shape[0] == m.out_channels and p.numel() == m.out_channels]
        return self.produce(m.out_channels, 1, len(shape_of(self.node)), refs)

    def norm(self, x: Val | Opaque, kind: str, keys: dict[str, str], groups: int) -> Any:
        if not isinstance(x, Val):
            return OPAQUE
        if (x.dim != x.ndim - 1) if kind == "layer" else (x.dim != 1):
            return self.unknown(x)
        if groups > 1:
            if len(x.segs) != 1 or x.segs[0].repeat != 1 or x.segs[0].cand is None:
                return self.unknown(x)
            self.spaces.set_groups(x.segs[0].cand, groups)
        for off, s in x.offsets():
            if s.cand is not None:
                for k, key in keys.items():
                    if key is not None:
                        role = "stat" if k.startswith("running_") else "out"
                        self.spaces.add_ref(s.cand, AxisRef(key, 0, role, off, s.repeat))
        return self.retap(x)

    def functional_norm(self, name: str, target: Any, args: tuple, kwargs: dict) -> Any:
        try:
            bound = inspect.signature(target).bind(*args, **kwargs).arguments
        except (TypeError, ValueError):
            return self.unknown(args, kwargs)
        x = bound.get("input")
        params = {k: bound.get(k) for k in ("weight", "bias", "running_mean", "running_var")}
        if not isinstance(x, (Val, Opaque)) or any(
                p is not None and not (isinstance(p, Param) and p.axes == (0,)) for p in params.values()):
            return self.unknown(args, kwargs)
        if name == "layer_norm" and len(tuple(bound["normalized_shape"])) != 1:
            return self.unknown(x)
        keys = {k: p.key for k, p in params.items() if p is not None}
        kind = "layer" if name == "layer_norm" else "channel"
        return self.norm(x, kind, keys, bound.get("num_groups", 1) if name == "group_norm" else 1)

    def functional_linear(self, target: Any, args: tuple, kwargs: dict) -> Any:
        x, w = args[0], kwargs.get("weight", args[1] if len(args) > 1 else None)
        b = kwargs.get("bias", args[2] if len(args) > 2 else None)
        if (not isinstance(x, (Val, Opaque)) or not isinstance(w, Param) or w.axes != (0, 1)
                or not (b is None or isinstance(b, ParamCat) or (isinstance(b, Param) and b.axes == (0,)))):
            return self.unknown(args, kwargs)
        return self.linear(x, w.key, b.key if isinstance(b, Param) else b, shape_of(self.node)[-1])

    def same(self, x: Val | Opaque, *, retap: bool) -> Any:
        return self.retap(x) if isinstance(x, Val) and retap else x

    def pool(self, x: Val | Opaque) -> Any:
        """Pooling over trailing spatial dims (flattening them too, e.g. timm SelectAdaptivePool2d)."""
        shape = shape_of(self.node)
        if not isinstance(x, Val):
            return x
        if x.dim != 1 or shape is None or len(shape) < 2:
            return self.unknown(x)
        if shape[1] == x.width:
            return Val(1, len(shape), x.segs)
        if shape[1] == 2 * x.width:  # cat of avg and max pooling
            return Val(1, len(shape), x.segs + x.segs)
        return self.unknown(x)

    def spatial(self, x: Val | Opaque) -> Any:
        """Padding and cyclic shifts of positions (the same value or move for every channel): the
        channels pass when their dim keeps its size (a channels-last tensor padded in H and W)."""
        shape = shape_of(self.node)
        if not isinstance(x, Val):
            return x
        if shape is None or len(shape) != x.ndim or shape[x.dim] != x.width:
            return self.unknown(x)
        if self.node.target is not None and _name(self.node.target) == "roll":
            dims = self.node.kwargs.get("dims", self.node.args[2] if len(self.node.args) > 2 else None)
            dims = (dims,) if isinstance(dims, int) else dims
            if dims is None or x.dim in {d % x.ndim for d in dims}:
                return self.unknown(x)
        return x

    def windows(self, name: str, x: Any) -> Any:
        """Swin's window steps move positions only (the channels, last, pass); patch merging lays four
        neighbours' channels side by side; the position bias gathers a table's rows, keeping its heads."""
        shape = shape_of(self.node)
        if name == "swin_mask":
            return OPAQUE  # reads only x's shape
        if name == "_get_relative_position_bias":
            return Param(x.key, (None, x.axes[1], None, None)) if isinstance(x, Param) else self.unknown(x)
        if not isinstance(x, Val):
            return x
        if x.dim != x.ndim - 1 or shape is None or shape[-1] % x.width:
            return self.unknown(x)
        return Val(len(shape) - 1, len(shape), x.segs * (shape[-1] // x.width))

    def heads_op(self, name: str, x: Split | Rotated, args: tuple, kwargs: dict, tensors: list) -> Any:
        """Channel-preserving ops on attention heads; anything else fixes them."""
        if len(tensors) != 1:
            return self.unknown(args, kwargs)
        if name in _SAME_FN:
            return x
        if name in ("permute", "transpose", "swapaxes"):
            dims = args[1:]
            dims = tuple(dims[0]) if len(dims) == 1 and isinstance(dims[0], (list, tuple)) else tuple(dims)
            return self.permute_heads(x, name, tuple(d % x.ndim for d in dims))
        if isinstance(x, Rotated):
            return self.rotated_op(name, x, args, kwargs)
        if name == "unbind":
            return self.unbind_heads(x, kwargs.get("dim", args[1] if len(args) > 1 else 0))
        if name in ("reshape", "view", "flatten"):
            return self.merge_heads(x, shape_of(self.node.all_input_nodes[0]), shape_of(self.node))
        if name in ("chunk", "split"):  # halves of each head (rotary's rotate_half layout)
            h = self.rotate(x)
            return self.rotated_op(name, h, args, kwargs) if isinstance(h, Rotated) else h
        return self.unknown(args, kwargs)

    def reshape(self, x: Val | Opaque) -> Any:
        """Reshapes that keep the channels outermost within one output dim: flatten [C, H, W] -> C*H*W
        (each unit then repeats H*W times), squeeze, unsqueeze, view to the same layout; splitting the
        channels into attention heads (see :mod:`mudsc.graph_heads`)."""
        if not isinstance(x, Val):
            return x
        src = shape_of(self.node.all_input_nodes[0])
        dst = shape_of(self.node)
        before = math.prod(src[: x.dim])
        starts = {math.prod(src[:k]) for k in range(x.dim + 1)}
        ends = {math.prod(src[:k]) for k in range(x.dim + 1, len(src) + 1)}
        for j in range(len(dst)):
            if dst[j] % x.width:
                continue
            if math.prod(dst[:j]) == before and math.prod(dst[: j + 1]) in ends:
                r = dst[j] // x.width
                return Val(j, len(dst), tuple(s._replace(repeat=s.repeat * r) for s in x.segs))
            if math.prod(dst[:j]) in starts and math.prod(dst[: j + 1]) == before * x.width:
                # channels innermost in the merged dim ([.., 2, 2, C] -> [.., 4C], Swin patch merging):
                # the channels repeat side by side
                return Val(j, len(dst), x.segs * (dst[j] // x.width))
        heads = self.split_heads(x, src, dst)
        return heads if heads is not None else self.unknown(x)

    def reshape_param(self, p: Param) -> Param | Opaque:
        """A reshaped parameter keeps each tensor axis whose dim survives whole (same size, same number
        of entries before it): a layer scale [C] viewed as [1, C, 1, 1], a gathered table [N*N, H] viewed
        as [N, N, H]; dims without an axis may split and merge. Anything else makes it opaque."""
        src, dst = shape_of(self.node.all_input_nodes[0]), shape_of(self.node)
        where = {(math.prod(dst[:j]), d): j for j, d in enumerate(dst) if d != 1}
        axes: list[int | None] = [None] * len(dst)
        for i, (d, a) in enumerate(zip(src, p.axes)):
            if a is None or d == 1:
                continue
            j = where.get((math.prod(src[:i]), d))
            if j is None:
                return OPAQUE
            axes[j] = a
        return Param(p.key, tuple(axes))

    def permute_param(self, p: Param, name: str, dims: tuple) -> Param:
        dims = tuple(dims[0]) if len(dims) == 1 and isinstance(dims[0], (list, tuple)) else tuple(dims)
        dims = tuple(d % len(p.axes) for d in dims)
        if name == "permute":
            return Param(p.key, tuple(p.axes[d] for d in dims))
        a, b = dims
        axes = list(p.axes)
        axes[a], axes[b] = axes[b], axes[a]
        return Param(p.key, tuple(axes))

    def permute(self, x: Val | Opaque, name: str, dims: tuple) -> Any:
        if not isinstance(x, Val):
            return x
        dims = tuple(dims[0]) if len(dims) == 1 and isinstance(dims[0], (list, tuple)) else tuple(dims)
        dims = tuple(d % x.ndim for d in dims)
        if name == "permute":
            return replace(x, dim=dims.index(x.dim))
        a, b = dims
        return replace(x, dim=b if x.dim == a else a if x.dim == b else x.dim)

    def reduce(self, x: Val | Opaque, dims: Any, keepdim: bool) -> Any:
        if not isinstance(x, Val):
            return x
        if dims is None:
            return self.unknown(x)
        dims = {d % x.ndim for d in ((dims,) if isinstance(dims, int) else dims)}
        if x.dim in dims:
            return self.unknown(x)
        if keepdim:
            return x
        return Val(x.dim - sum(d < x.dim for d in dims), x.ndim - len(dims), x.segs)

    def getitem(self, x: Any, idx: Any) -> Any:
        if not isinstance(x, Val):
            return None if x is None else OPAQUE
        idx = idx if isinstance(idx, tuple) else (idx,)
        if any(isinstance(i, (Val, Param, Opaque)) for i in idx):
            return self.unknown(x)
        fill = x.ndim - sum(i is not None and i is not Ellipsis for i in idx)
        src, dst, dim = 0, 0, None
        for i in idx:
            if i is Ellipsis:
                if src <= x.dim < src + fill:
                    dim = dst + x.dim - src
                src, dst = src + fill, dst + fill
            elif i is None:
                dst += 1
            else:
                if src == x.dim:
                    if i != slice(None):
                        return self.unknown(x)
                    dim = dst
                src, dst = src + 1, dst + (not isinstance(i, int))
        if dim is None:
            dim = dst + x.dim - src
        return Val(dim, len(shape_of(self.node)), x.segs)

    def binary(self, args: tuple) -> Any:
        """Element-wise sums/products: operands' channels are one space; parameters broadcast along
        the channels (biases, positional embeddings, layer scales) become its producers."""
        shape = shape_of(self.node)
        if shape is None:
            return None
        vals = [a for a in args if isinstance(a, Val)]
        others = [(a, shape_of(n)) for a, n in zip(args, self.node.args) if isinstance(a, (Param, Opaque))]
        if not vals:
            return OPAQUE if others else None
        return self.unite(vals, others, shape, retap=True)

    def cat(self, parts: list, dim: int) -> Any:
        """Concatenation: along the channels the parts sit side by side; along any other dim (e.g. a
        class token before the patch tokens) their channels are one space."""
        shape = shape_of(self.node)
        dim %= len(shape)
        shapes = [shape_of(n) for n in self.node.args[0]]
        vals = [p for p in parts if isinstance(p, Val)]
        if not vals:
            return (self.param_cat(parts, shapes) if len(shape) == 1 else None) or OPAQUE
        if all(v.dim == dim for v in vals):
            segs = []
            for p, s in zip(parts, shapes):
                segs.extend(p.segs if isinstance(p, Val) else [Seg(None, s[dim])])
            return Val(dim, len(shape), tuple(segs))
        others = [(p, s) for p, s in zip(parts, shapes) if not isinstance(p, Val)]
        return self.unite(vals, others, shape, retap=True)

    def chunk(self, x: Val, chunks: Any, dim: int) -> Any:
        """A fresh projection output cut along its channels (SwiGLU's fused ``fc1``): one candidate per
        chunk, each its run of the projection's rows; a later ``silu(x1) * x2`` unites them again."""
        seg = x.segs[0]
        if (not isinstance(chunks, int) or dim % x.ndim != x.dim or len(x.segs) != 1 or seg.repeat != 1
                or seg.cand is None):
            return self.unknown(x)
        cands = self.spaces.split(seg.cand, chunks, None)
        if cands is None:
            return self.unknown(x)
        width = seg.size // chunks
        return tuple(Val(x.dim, x.ndim, (Seg(c, width, 1, tap_of(self.node, x.dim, x.ndim, i * width)),))
                     for i, c in enumerate(cands))

    def param_cat(self, parts: list, shapes: list) -> ParamCat | None:
        """1-D parameters and constant buffers concatenated (a fused bias), or None for anything else."""
        out = []
        for p, n, s in zip(parts, self.node.args[0], shapes):
            if isinstance(p, Param) and p.axes == (0,):
                out.append((p.key, s[0]))
            elif isinstance(p, Opaque) and self._uniform_buffer(n):
                out.append((None, s[0]))
            else:
                return None
        return ParamCat(tuple(out)) if any(k is not None for k, _ in out) else None

    def _uniform_buffer(self, node: Any) -> bool:
        """A buffer outside the state dict with the same value everywhere (timm EVA's zero k bias):
        a permutation of its entries leaves it as it is."""
        if not isinstance(node, fx.Node) or node.op != "get_attr":
            return False
        try:
            t = self.gm.get_buffer(node.target)
        except AttributeError:
            return False
        return t.ndim == 1 and t.numel() > 0 and bool((t == t[0]).all())

    def expand(self, x: Any) -> Any:
        shape = shape_of(self.node)
        extra = len(shape) - len(shape_of(self.node.all_input_nodes[0]))
        if isinstance(x, Param):
            return Param(x.key, (None,) * extra + x.axes)
        if isinstance(x, Val):
            return Val(x.dim + extra, len(shape), x.segs)
        return x

    def unite(self, vals: list[Val], others: list[tuple[Any, tuple[int, ...]]], shape: tuple[int, ...], *,
              retap: bool) -> Any:
        ndim = len(shape)
        dims = {v.dim + ndim - v.ndim for v in vals}
        if len(dims) != 1:
            return self.unknown(vals)
        od = dims.pop()
        base = vals[0]
        if any(v.width != shape[od] for v in vals):
            return self.unknown(vals)
        for v in vals[1:]:
            if [(s.size, s.repeat) for s in v.segs] != [(s.size, s.repeat) for s in base.segs]:
                return self.unknown(vals)
            for a, b in zip(base.segs, v.segs):
                self.spaces.union(a.cand, b.cand, self.node)
        for o, o_shape in others:
            pd = od - (ndim - len(o_shape))
            if pd < 0 or o_shape[pd] == 1:
                continue  # broadcast along the channels
            if not (isinstance(o, Param) and o.axes[pd] is not None):
                return self.unknown(vals)
            for off, s in base.offsets():
                if s.cand is not None:
                    self.spaces.add_ref(s.cand, AxisRef(o.key, o.axes[pd], "out", off, s.repeat))
                    self.spaces.mark(s.cand, self.node)
        out = Val(od, ndim, base.segs)
        return self.retap(out) if retap else out
