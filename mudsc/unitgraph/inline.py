"""Modules fx would keep whole, written out in plain traceable ops so the unit-space rules see inside.

``nn.MultiheadAttention`` (CLIP-style towers, torchvision ViT) is a torch.nn leaf whose fused
``in_proj_weight`` [3E, E] holds q, k and v; traced as one call it would fix every space it touches.
Written out, it is the fused-projection attention of :mod:`mudsc.unitgraph.heads`: q/k and v chunks in
H head groups, q and k one space, v's heads tied to theirs (MuDSC group matching, Xu et al., 2024).
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
    try:
        return tracer.root.get_buffer(node.target)
    except AttributeError:
        return None


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
