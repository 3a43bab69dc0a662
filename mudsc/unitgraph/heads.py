"""Unit-space rules for multi-head attention (MuDSC, Xu et al., 2024, group structures; brief Sec. C).

A fused projection such as timm's ``qkv`` is reshaped to ``[B, T, 3, H, D]``: its output splits into
one candidate per chunk (q, k, v), each with H contiguous groups (heads) of D units. Scaled dot-product
attention unites q and k (their inner product within a head must see one permutation) and ties the
head order of q/k to that of v (head h's attention weights multiply v's head h). The head tensor
merges back into channels before the output projection, which consumes the v space. Written out
(``q @ k^T``, softmax, ``@ v``), the logits carry the heads of q/k; a table added to them along
the heads (Swin's relative-position bias) is a space of its own, one unit per head, tied to them.
"""
from __future__ import annotations

import math
from typing import Any

from mudsc.unitgraph.fx import tap_of
from mudsc.unitgraph.types import AxisRef, Tap
from mudsc.unitgraph.values import OPAQUE, Opaque, Param, Scores, Seg, Split, Val

_LABELS = {2: ("k", "v"), 3: ("q", "k", "v")}


class HeadRules:
    """Rules mixed into the walker (which provides ``node``, ``spaces``, ``order`` and ``unknown``)."""

    def split_heads(self, x: Any, src: tuple[int, ...], dst: tuple[int, ...]) -> Any:
        """[.., k*H*D] -> [.., k, H, D] or [.., H, D]: channels split into chunks and heads."""
        segs = x.segs
        if (any(s.repeat != 1 or s.cand is None for s in segs)
                or len(self.node.all_input_nodes[0].users) != 1):
            return None
        j = next((j for j in range(len(dst)) if math.prod(dst[:j]) == math.prod(src[: x.dim])), None)
        if j is None:
            return None
        for m in (3, 2):
            if j + m <= len(dst) and math.prod(dst[j:j + m]) == x.width and all(d > 1 for d in dst[j:j + m]):
                break
        else:
            return None
        chunks = dst[j] if m == 3 else 1
        width = x.width // chunks
        labels = _LABELS.get(chunks)
        if len(segs) == 1:
            seg = segs[0]
            cands = self.spaces.split(seg.cand, chunks, labels)
            taps = tuple(Tap(seg.tap.node, seg.tap.dim, seg.tap.start + i * width) if seg.tap else None
                         for i in range(chunks))
        elif len(segs) == chunks and all(s.size == width for s in segs):  # one candidate per chunk already
            cands = [self.spaces.find(s.cand) for s in segs] if all(self.spaces.fresh(s.cand) for s in segs) else None
            for c, label in zip(cands or (), labels or ()):
                self.spaces.labels[c] = label
            taps = tuple(s.tap for s in segs)
        else:
            return None
        if cands is None:
            return None
        for c in cands:
            self.spaces.set_groups(c, dst[j + m - 2])
        dims = (j, j + 1, j + 2) if m == 3 else (None, j, j + 1)
        return Split(len(dst), dims, cands, taps, dst[j + m - 2])

    def merge_heads(self, x: Split, src: tuple[int, ...], dst: tuple[int, ...]) -> Any:
        """[.., H, D] -> [.., H*D]: heads back into one channel dim (the output projection's input)."""
        chunk, h, u = x.dims
        if chunk is not None or u != h + 1:
            return self.unknown(x)
        for j in range(len(dst)):
            if math.prod(dst[:j]) == math.prod(src[:h]) and dst[j] == src[h] * src[u]:
                seg = Seg(x.cands[0], dst[j], 1, tap_of(self.node, j, len(dst), 0))
                return Val(j, len(dst), (seg,))
        return self.unknown(x)

    def permute_heads(self, x: Split, name: str, dims: tuple[int, ...]) -> Split:
        def move(d: int | None) -> int | None:
            if d is None:
                return None
            if name == "permute":
                return dims.index(d)
            a, b = dims
            return b if d == a else a if d == b else d

        return Split(x.ndim, tuple(move(d) for d in x.dims), x.cands, x.taps, x.heads)

    def unbind_heads(self, x: Split, dim: int) -> Any:
        chunk, h, u = x.dims
        if dim % x.ndim != chunk:
            return self.unknown(x)
        shift = lambda d: d - (d > chunk)  # noqa: E731
        return tuple(Split(x.ndim - 1, (None, shift(h), shift(u)), (c,), (t,), x.heads)
                     for c, t in zip(x.cands, x.taps))

    def attention(self, args: tuple, kwargs: dict) -> Any:
        """scaled_dot_product_attention(q, k, v): q and k one space, heads tied to v's."""
        q, k, v = (list(args) + [kwargs.get(n) for n in ("query", "key", "value")][len(args):])[:3]
        splits = (q, k, v)
        if not all(isinstance(s, Split) and s.dims[0] is None and s.dims[2] == s.ndim - 1 for s in splits):
            return self.unknown(args, kwargs)
        if len({s.dims[1] for s in splits}) != 1 or q.dims[1] >= q.ndim - 2:
            return self.unknown(args, kwargs)
        order = self.order[self.node]
        for s in (q, k):
            self.spaces.use(s.cands[0], s.taps[0], order)
        self.spaces.union(q.cands[0], k.cands[0], None)
        self.spaces.tie(q.cands[0], v.cands[0], self.node)
        mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
        node = self.node.kwargs.get("attn_mask", self.node.args[3] if len(self.node.args) > 3 else None)
        if mask is not None and not self.on_heads(Scores(q.ndim, q.dims[1], q.cands[0], q.heads), mask, node, q.ndim):
            return self.unknown(args, kwargs)  # a mask that differs per head in a way no rule follows
        return Split(v.ndim, v.dims, v.cands, (None,), v.heads)

    def matmul(self, a: Any, b: Any) -> Any:
        """``q @ k^T`` -> logits (q and k one space); ``weights @ v`` -> v's heads (tied to q/k's)."""
        if isinstance(a, Split) and isinstance(b, Split):
            ok = (a.dims[0] is None and b.dims[0] is None and a.dims[1] == b.dims[1] and a.heads == b.heads
                  and a.dims[2] == a.ndim - 1 and b.dims[2] == b.ndim - 2 and a.ndim == b.ndim)
            if not ok:
                return self.unknown(a, b)
            order = self.order[self.node]
            for s in (a, b):
                self.spaces.use(s.cands[0], s.taps[0], order)
            self.spaces.union(a.cands[0], b.cands[0], None)
            return Scores(a.ndim, a.dims[1], a.cands[0], a.heads)
        if isinstance(a, Scores) and isinstance(b, Split):
            if b.dims[0] is not None or b.dims[1] != a.hdim or b.dims[2] != b.ndim - 1 or a.heads != b.heads:
                return self.unknown(a, b)
            self.spaces.tie(a.cand, b.cands[0], self.node)
            return Split(b.ndim, b.dims, b.cands, (None,), b.heads)
        return self.unknown(a, b)

    def scores_op(self, name: str, args: tuple, kwargs: dict, tensors: list) -> Any:
        """Scaling, masking, softmax, dropout and views of attention logits keep their heads."""
        x = args[0] if args else None
        shape = self.node.meta["tensor_meta"].shape
        if name in ("softmax", "dropout", "contiguous", "clone", "float", "to", "type_as") and isinstance(x, Scores):
            return x
        if name in ("mean", "sum") and isinstance(x, Scores) and len(tensors) == 1:
            dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
            dims = {d % x.ndim for d in ((dims,) if isinstance(dims, int) else dims or ())}
            if x.hdim in dims:
                return OPAQUE  # averaged over the heads: the same for any head order
            return self.unknown(*tensors)
        if name in ("view", "reshape", "flatten", "unflatten") and isinstance(x, Scores) and len(tensors) == 1:
            src = self.node.all_input_nodes[0].meta["tensor_meta"].shape
            for j, d in enumerate(shape):
                if d == x.heads and math.prod(shape[:j]) == math.prod(src[: x.hdim]):
                    return Scores(len(shape), j, x.cand, x.heads)
            return self.unknown(*tensors)
        if name in ("add", "sub", "mul", "truediv", "div", "iadd", "imul") and len(args) == 2:
            sc = [a for a in args if isinstance(a, Scores)]
            if len(sc) != 1:
                return self.unknown(*tensors)
            x = sc[0]
            for a, n in zip(args, self.node.args):
                if a is not x and not self.on_heads(x, a, n, len(shape)):
                    return self.unknown(*tensors)
            return Scores(len(shape), x.hdim + len(shape) - x.ndim, x.cand, x.heads)
        return self.unknown(*tensors)

    def on_heads(self, x: Scores, a: Any, n: Any, ndim: int) -> bool:
        """Whether `a` (fx argument `n`) may be combined element-wise with the logits `x` in a result of
        rank `ndim`: constants and tensors the same for every head pass; a parameter with an axis along
        the heads becomes a heads space (:meth:`head_table`); anything else (channels, per-head buffers) not."""
        if a is None:
            return True  # a number (the rules give non-tensors no value)
        if not isinstance(a, (Param, Opaque)):
            return False
        o_shape = n.meta["tensor_meta"].shape
        pd = x.hdim + ndim - x.ndim - (ndim - len(o_shape))
        if pd < 0 or o_shape[pd] == 1:
            return True  # the same for every head
        if not (isinstance(a, Param) and a.axes[pd] is not None):
            return False
        self.head_table(x, a.key, a.axes[pd], ndim)
        return True

    def head_table(self, x: Scores, key: str, axis: int, ndim: int) -> None:
        """Axis `axis` of `key` holds one entry per head of the logits `x`: a space of its own, one unit
        per head, whose order is tied to the q/k heads."""
        cand = self.spaces.new(x.heads)
        self.spaces.set_groups(cand, x.heads)
        self.spaces.labels[cand] = "heads"
        self.spaces.add_ref(cand, AxisRef(key, axis, "out"))
        self.spaces.tie(cand, x.cand, self.node)
        hdim = x.hdim + ndim - x.ndim
        self.spaces.use(cand, tap_of(self.node, hdim, ndim, 0), self.order[self.node])
