"""Unit-space rules for multi-head attention (MuDSC, Xu et al., 2024, group structures; brief Sec. C).

A fused projection such as timm's ``qkv`` is reshaped to ``[B, T, 3, H, D]``: its output splits into
one candidate per chunk (q, k, v), each with H contiguous groups (heads) of D units. Scaled dot-product
attention unites q and k (their inner product within a head must see one permutation) and ties the
head order of q/k to that of v (head h's attention weights multiply v's head h). The head tensor
merges back into channels before the output projection, which consumes the v space. Written out
(``q @ k^T``, softmax, ``@ v``), the logits carry the heads of q/k; a table added to them along
the heads (Swin's relative-position bias) is a space of its own, one unit per head, tied to them.

Rotary embeddings (RoFormer, Su et al., 2021; timm's ``apply_rot_embed_cat`` in EVA-02) rotate fixed
pairs of units inside each q/k head by a position-dependent angle: ``x * cos + rot(x) * sin``, with
``rot`` picking every other unit, negating and interleaving them again. These ops are the same for
every head but not for every unit of a head, so q/k's heads may still be permuted but the units inside
a head may not: the space becomes *rigid* (our extension of MuDSC's group structures, see
:func:`mudsc.diffinit.solvers.groups.group_rigid`). The rotated tensor is followed as heads only
(:class:`~mudsc.unitgraph.values.Rotated`) through slices, sums, stacks and views that keep every head
whole and alike. v is never rotated: its head order stays tied to q/k's and its units stay free inside
a head, because the attention weights of head h multiply v's head h as a whole and the output projection
reads v's units one by one, so any order inside v's head h, applied to v's producer rows and the output
projection's columns alike, leaves the function unchanged.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from mudsc.unitgraph.fx import shape_of, tap_of
from mudsc.unitgraph.types import AxisRef, Tap
from mudsc.unitgraph.values import OPAQUE, TENSORS, Opaque, Param, Rotated, Scores, Seg, Split, Val

_LABELS = {2: ("k", "v"), 3: ("q", "k", "v")}


def _index_map(src: tuple[int, ...], dst: tuple[int, ...], idx: tuple) -> tuple[dict[int, int], set[int]] | None:
    """``getitem`` with `idx` taking shape `src` to `dst` -> (source dim -> result dim of each dim it keeps,
    the source dims it narrows or drops); None for tensor indices."""
    if any(i is not None and i is not Ellipsis and not isinstance(i, (int, slice)) for i in idx):
        return None
    fill = len(src) - sum(i is not None and i is not Ellipsis for i in idx)
    keep: dict[int, int] = {}
    cut: set[int] = set()
    s = d = 0
    for i in idx:
        if i is Ellipsis:
            keep.update({s + k: d + k for k in range(fill)})
            s, d = s + fill, d + fill
        elif i is None:
            d += 1
        elif isinstance(i, int):
            cut.add(s)
            s += 1
        else:
            keep[s] = d
            if i.step not in (None, 1) or dst[d] != src[s]:  # a slice bound may be a traced int: judge by size
                cut.add(s)
            s, d = s + 1, d + 1
    keep.update({s + k: d + k for k in range(len(src) - s)})
    return keep, cut


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

    def permute_heads(self, x: Split | Rotated, name: str, dims: tuple[int, ...]) -> Split | Rotated:
        def move(d: int | None) -> int | None:
            if d is None:
                return None
            if name == "permute":
                return dims.index(d)
            a, b = dims
            return b if d == a else a if d == b else d

        if isinstance(x, Rotated):
            return replace(x, hdim=move(x.hdim))
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
        hq, hk = self.as_heads(q), self.as_heads(k)
        if (not (isinstance(v, Split) and v.dims[0] is None and v.dims[2] == v.ndim - 1) or hq is None or hk is None
                or any(isinstance(s, Split) and s.dims[2] != s.ndim - 1 for s in (q, k))):
            return self.unknown(args, kwargs)
        if len({hq.hdim, hk.hdim, v.dims[1]}) != 1 or v.dims[1] >= v.ndim - 2:
            return self.unknown(args, kwargs)
        order = self.order[self.node]
        for h in (hq, hk):
            self.spaces.use(h.cand, h.tap, order)
        self.spaces.union(hq.cand, hk.cand, None)
        self.spaces.tie(hq.cand, v.cands[0], self.node)
        mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
        node = self.node.kwargs.get("attn_mask", self.node.args[3] if len(self.node.args) > 3 else None)
        if (isinstance(mask, TENSORS) and shape_of(node) is not None  # an optional mask traced as an input, None
                and not self.on_heads(Scores(hq.ndim, hq.hdim, hq.cand, hq.heads), mask, node, hq.ndim)):
            return self.unknown(args, kwargs)  # a mask that differs per head in a way no rule follows
        return Split(v.ndim, v.dims, v.cands, (None,), v.heads)

    def matmul(self, a: Any, b: Any) -> Any:
        """``q @ k^T`` -> logits (q and k one space); ``weights @ v`` -> v's heads (tied to q/k's)."""
        if isinstance(a, (Split, Rotated)) and isinstance(b, (Split, Rotated)):
            ha, hb = self.as_heads(a), self.as_heads(b)
            ok = (ha is not None and hb is not None and ha.hdim == hb.hdim < ha.ndim - 2 and ha.heads == hb.heads
                  and ha.ndim == hb.ndim)
            if isinstance(a, Split) and isinstance(b, Split):  # free units: contracted one with one
                ok = ok and a.dims[2] == a.ndim - 1 and b.dims[2] == b.ndim - 2
            if not ok:
                return self.unknown(a, b)
            order = self.order[self.node]
            for h in (ha, hb):
                self.spaces.use(h.cand, h.tap, order)
            self.spaces.union(ha.cand, hb.cand, None)
            return Scores(ha.ndim, ha.hdim, ha.cand, ha.heads)
        if isinstance(a, Scores) and isinstance(b, Split):
            if b.dims[0] is not None or b.dims[1] != a.hdim or b.dims[2] != b.ndim - 1 or a.heads != b.heads:
                return self.unknown(a, b)
            self.spaces.tie(a.cand, b.cands[0], self.node)
            return Split(b.ndim, b.dims, b.cands, (None,), b.heads)
        return self.unknown(a, b)

    def as_heads(self, x: Any) -> Rotated | None:
        """q or k (one candidate, no chunk dim) followed as heads only; None for anything else."""
        if isinstance(x, Rotated):
            return x
        if isinstance(x, Split) and x.dims[0] is None:
            return Rotated(x.ndim, x.dims[1], x.cands[0], x.heads, x.taps[0])
        return None

    def rotate(self, x: Split | Rotated, ndim: int | None = None) -> Any:
        """An op the same for every head but not for every unit of one (a rotary rotation, its sin/cos
        factors, a strided pick of units): the heads of `x` (now of rank `ndim`) keep their order, its
        units may no longer move inside a head."""
        h = self.as_heads(x)
        if h is None:
            return self.unknown(x)
        self.spaces.make_rigid(h.cand)
        ndim = h.ndim if ndim is None else ndim
        return replace(h, ndim=ndim, hdim=h.hdim + ndim - h.ndim)

    def index_heads(self, x: Split | Rotated, idx: Any) -> Any:
        """Slices of q/k/v: token dims pass; narrowing the units inside each head (rotary's ``x[..., ::2]``)
        makes the space rigid; picking heads or chunks is not followed."""
        idx = idx if isinstance(idx, tuple) else (idx,)
        dst = shape_of(self.node)
        where = _index_map(shape_of(self.node.all_input_nodes[0]), dst, idx)
        if where is None:
            return self.unknown(x)
        keep, cut = where
        if isinstance(x, Split):
            chunk, h, u = x.dims
            if any(d is not None and d in cut for d in (chunk, h)):
                return self.unknown(x)
            if u not in cut:
                return Split(len(dst), (keep.get(chunk), keep[h], keep[u]), x.cands, x.taps, x.heads)
            x = self.rotate(x)
            if not isinstance(x, Rotated):
                return x
        if x.hdim in cut:
            return self.unknown(x)
        return replace(x, ndim=len(dst), hdim=keep[x.hdim])

    def heads_binary(self, args: tuple) -> Any:
        """Element-wise ops on q/k/v heads: with a number, or a tensor the same for every head (rotary's
        sin/cos tables), the heads pass, and the space turns rigid where that tensor differs along the
        units of a head; two head tensors of one layout are one space."""
        ndim = len(shape_of(self.node))
        heads = [a for a in args if isinstance(a, (Split, Rotated))]
        if len(heads) == 2:
            a, b = heads
            if isinstance(a, Split) and isinstance(b, Split) and a.dims == b.dims and a.ndim == b.ndim == ndim:
                for p, q in zip(a.cands, b.cands):
                    self.spaces.union(p, q, None)
                return a
            ha, hb = self.as_heads(a), self.as_heads(b)
            if ha is None or hb is None or ha.heads != hb.heads or ha.hdim - ha.ndim != hb.hdim - hb.ndim:
                return self.unknown(*args)
            self.spaces.union(ha.cand, hb.cand, None)
            return self.rotate(replace(ha, tap=ha.tap or hb.tap), ndim)
        x = heads[0]
        other, node = next((a, n) for a, n in zip(args, self.node.args) if a is not x)
        if not isinstance(other, TENSORS):
            return x  # a number
        if not isinstance(other, Opaque):
            return self.unknown(*args)
        o_shape = shape_of(node)

        def varies(d: int | None) -> bool:
            """Whether `other` differs along dim `d` of the result."""
            return d is not None and d - ndim + len(o_shape) >= 0 and o_shape[d - ndim + len(o_shape)] != 1

        off = ndim - x.ndim
        if isinstance(x, Split):
            chunk, h, u = (None if d is None else d + off for d in x.dims)
            if varies(chunk) or varies(h):
                return self.unknown(*args)
            if not varies(u):
                return Split(ndim, (chunk, h, u), x.cands, x.taps, x.heads)
            return self.rotate(x, ndim)
        if varies(x.hdim + off):
            return self.unknown(*args)
        return replace(x, ndim=ndim, hdim=x.hdim + off)

    def heads_cat(self, parts: list, dim: int, *, stack: bool) -> Any:
        """q/k/v pieces joined along a token dim (a class token beside rotated patch tokens) keep their
        heads; stacked (rotary's interleaved pairs) or joined along the units of a head, the space turns
        rigid."""
        ndim = len(shape_of(self.node))
        dim %= ndim
        if not all(isinstance(p, (Split, Rotated)) for p in parts):
            return self.unknown(parts)
        a = parts[0]
        if not stack and all(isinstance(p, Split) and p.dims == a.dims for p in parts) and dim not in a.dims:
            for p in parts[1:]:
                for c, d in zip(a.cands, p.cands):
                    self.spaces.union(c, d, None)
            return a
        hs = [self.as_heads(p) for p in parts]
        if any(h is None for h in hs) or len({(h.hdim, h.heads, h.ndim) for h in hs}) != 1 or (
                not stack and dim == hs[0].hdim):
            return self.unknown(parts)
        for h in hs[1:]:
            self.spaces.union(hs[0].cand, h.cand, None)
        h = hs[0]
        return self.rotate(replace(h, ndim=ndim, hdim=h.hdim + (stack and dim <= h.hdim),
                                   tap=next((h.tap for h in hs if h.tap is not None), None)))

    def rotated_op(self, name: str, x: Rotated, args: tuple, kwargs: dict) -> Any:
        """Views that keep the head dim whole, and chunks along another dim, keep rotated heads."""
        shape = shape_of(self.node)
        if name in ("reshape", "view", "flatten", "unflatten", "squeeze", "unsqueeze"):
            src = shape_of(self.node.all_input_nodes[0])
            for j, d in enumerate(shape):
                if d == x.heads and math.prod(shape[:j]) == math.prod(src[: x.hdim]):
                    return replace(x, ndim=len(shape), hdim=j)
        if name in ("chunk", "split"):
            dim = kwargs.get("dim", args[2] if len(args) > 2 else 0) % x.ndim
            metas = self.node.meta.get("tensor_meta")
            if dim != x.hdim and isinstance(metas, (tuple, list)):
                return tuple(x for _ in metas)
        return self.unknown(args, kwargs)

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
