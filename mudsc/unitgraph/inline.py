"""Modules fx would keep whole, written out in plain traceable ops so the unit-space rules see inside.

``nn.MultiheadAttention`` (CLIP-style towers, torchvision ViT) is a torch.nn leaf whose fused
``in_proj_weight`` [3E, E] holds q, k and v; traced as one call it would fix every space it touches.
Written out, it is the fused-projection attention of :mod:`mudsc.unitgraph.heads`: q/k and v chunks in
H head groups, q and k one space, v's heads tied to theirs (MuDSC group matching, Xu et al., 2024).
torchvision's Swin calls one fx-wrapped ``shifted_window_attention``; written out, only its
shape-dependent window steps stay single calls.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn


def _buffer(tracer: fx.Tracer, proxy: Any) -> torch.Tensor | None:
    """The tensor behind a proxy that reads a buffer of the traced root, else None."""
    node = getattr(proxy, "node", None)
    if node is None or node.op != "get_attr":
        return None
    # Through the modules' dicts: while tracing, attribute access on a module answers with proxies.
    *path, name = str(node.target).split(".")
    module = tracer.root
    for part in path:
        module = module._modules.get(part)
        if module is None:
            return None
    buf = module._buffers.get(name)
    return buf if isinstance(buf, torch.Tensor) else None


def written_out(tracer: fx.Tracer, m: nn.Module, args: tuple, kwargs: dict) -> Callable | None:
    """The traceable forward for this call of `m`, or None to trace it as usual."""
    if type(m).__name__ == "ShiftedWindowAttention" and type(m).__module__ == "torchvision.models.swin_transformer":
        return functools.partial(swin_attention_forward, m) if len(args) == 1 and not kwargs else None
    return inline_mha(tracer, m, args, kwargs)


def inline_mha(tracer: fx.Tracer, m: nn.Module, args: tuple, kwargs: dict) -> Callable | None:
    """The written-out forward of self-attention with a fused projection, no padding mask and at most a
    [T, S] buffer mask; None for any other use (the module then stays one call)."""
    if not isinstance(m, nn.MultiheadAttention) or not m._qkv_same_embed_dim:
        return None
    if m.bias_k is not None or m.add_zero_attn:
        return None
    names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask")
    bound = dict(zip(names, args)) | kwargs
    if not (bound.get("query") is bound.get("key") is bound.get("value")):
        return None
    if bound.get("key_padding_mask") is not None:
        return None
    mask = bound.get("attn_mask")
    buf = None if mask is None else _buffer(tracer, mask)
    if mask is not None and (buf is None or buf.ndim != 2):
        return None
    return functools.partial(mha_forward, m, bool_mask=buf is not None and buf.dtype == torch.bool)


def mha_forward(m: nn.MultiheadAttention, query: Any, key: Any, value: Any, key_padding_mask: Any = None,
                need_weights: bool = True, attn_mask: Any = None, average_attn_weights: bool = True,
                is_causal: bool = False, *, bool_mask: bool = False) -> tuple[Any, Any]:
    """``nn.MultiheadAttention`` self-attention in eval mode ([B, T, E], or [T, B, E] unless batch-first)
    -> (output, head-averaged weights or None), as the module computes them (`is_causal` is only a
    hint there: the mask says it)."""
    x = query if m.batch_first else query.transpose(0, 1)
    h = m.num_heads
    qkv = F.linear(x, m.in_proj_weight, m.in_proj_bias).unflatten(-1, (3, h, m.embed_dim // h))
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    if bool_mask:  # True marks a masked position, as nn.MultiheadAttention reads it
        attn_mask = torch.zeros_like(attn_mask, dtype=q.dtype).masked_fill(attn_mask, float("-inf"))
    weights = None
    if need_weights:
        logits = (q * (1.0 / math.sqrt(m.head_dim))) @ k.transpose(-2, -1)
        if attn_mask is not None:
            logits = logits + attn_mask
        w = logits.softmax(dim=-1)
        out = w @ v
        weights = w.mean(dim=1) if average_attn_weights else w
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    out = F.linear(out.transpose(1, 2).flatten(2), m.out_proj.weight, m.out_proj.bias)
    return (out if m.batch_first else out.transpose(0, 1)), weights


def _shift(window: list[int], shift: list[int], h: int, w: int) -> list[int]:
    """No shift along a side the window already covers (as torchvision's Swin does)."""
    return [0 if window[0] >= h else shift[0], 0 if window[1] >= w else shift[1]]


def swin_windows(x: torch.Tensor, window: list[int], shift: list[int]) -> torch.Tensor:
    """[B, H, W, C] -> [B * nW, wh * ww, C]: padded to whole windows, cyclically shifted, partitioned."""
    b, h, w, c = x.shape
    x = F.pad(x, (0, 0, 0, (window[1] - w % window[1]) % window[1], 0, (window[0] - h % window[0]) % window[0]))
    ph, pw = x.shape[1:3]
    s = _shift(window, shift, ph, pw)
    if sum(s):
        x = torch.roll(x, shifts=(-s[0], -s[1]), dims=(1, 2))
    x = x.view(b, ph // window[0], window[0], pw // window[1], window[1], c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window[0] * window[1], c)


def swin_mask(x: torch.Tensor, window: list[int], shift: list[int]) -> torch.Tensor:
    """[B, H, W, C] -> [B * nW, 1, N, N]: -100 between tokens a shift brought from different regions."""
    b, h, w = x.shape[:3]
    ph, pw = h + (window[0] - h % window[0]) % window[0], w + (window[1] - w % window[1]) % window[1]
    s = _shift(window, shift, ph, pw)
    region = x.new_zeros((ph, pw))
    if sum(s):
        bounds = [((0, -window[i]), (-window[i], -s[i]), (-s[i], None)) for i in (0, 1)]
        for k, (r, q) in enumerate((r, q) for r in bounds[0] for q in bounds[1]):
            region[r[0]:r[1], q[0]:q[1]] = k
    region = region.view(ph // window[0], window[0], pw // window[1], window[1]).permute(0, 2, 1, 3)
    region = region.reshape(-1, window[0] * window[1])
    mask = region.unsqueeze(1) - region.unsqueeze(2)
    mask = mask.masked_fill(mask != 0, -100.0)
    return mask.repeat(b, 1, 1).unsqueeze(1)


def swin_unwindows(y: torch.Tensor, x: torch.Tensor, window: list[int], shift: list[int]) -> torch.Tensor:
    """Windows [B * nW, N, C] back to `x`'s layout [B, H, W, C]: merged, shifted back, unpadded."""
    b, h, w, c = x.shape
    ph, pw = h + (window[0] - h % window[0]) % window[0], w + (window[1] - w % window[1]) % window[1]
    s = _shift(window, shift, ph, pw)
    y = y.view(b, ph // window[0], pw // window[1], window[0], window[1], c).permute(0, 1, 3, 2, 4, 5)
    y = y.reshape(b, ph, pw, c)
    if sum(s):
        y = torch.roll(y, shifts=(s[0], s[1]), dims=(1, 2))
    return y[:, :h, :w, :].contiguous()


# shape-dependent steps stay single calls; the rules pass the channels (last dim) through them
for _fn in ("swin_windows", "swin_mask", "swin_unwindows"):
    fx.wrap(_fn)


def swin_attention_forward(m: nn.Module, x: Any) -> Any:
    """torchvision's ``ShiftedWindowAttention`` (Swin v1) in eval mode, its attention written out:
    fused qkv in head groups, ``q @ k^T`` plus the relative-position bias (one entry per head) and the
    shift mask, softmax, ``@ v``, the output projection."""
    h = m.num_heads
    scale = (m.qkv.in_features // h) ** -0.5
    q, k, v = m.qkv(swin_windows(x, m.window_size, m.shift_size)).unflatten(-1, (3, h, -1)).permute(
        2, 0, 3, 1, 4).unbind(0)
    logits = (q * scale) @ k.transpose(-2, -1) + m.get_relative_position_bias()
    logits = logits + swin_mask(x, m.window_size, m.shift_size)
    out = (logits.softmax(dim=-1) @ v).transpose(1, 2).flatten(2)
    return swin_unwindows(m.proj(out), x, m.window_size, m.shift_size)
