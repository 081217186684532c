"""GLIDE's text transformer (spec section 5.3): pre-LN blocks, head-major fused QKV, no masks.

The embeddings, final LayerNorm and projection live on the U-Net module itself (their
state-dict keys are top-level: ``token_embedding``, ``positional_embedding``,
``padding_embedding``, ``final_ln``, ``transformer_proj``); see :meth:`GlideUNet.encode_text`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype (eps 1e-5)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(
            x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps
        ).to(x.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, naive: bool = False) -> torch.Tensor:
    """Unmasked softmax attention with scale 1/sqrt(head_dim).

    q [..., Lq, d], k/v [..., Lk, d] -> [..., Lq, d]. ``naive`` uses the explicit
    score matrix with a float32 softmax (the in-process baseline); otherwise PyTorch's
    ``scaled_dot_product_attention`` (fused/flash kernels where available).
    """
    if not naive:
        return F.scaled_dot_product_attention(q, k, v)
    scale = 1.0 / math.sqrt(math.sqrt(q.shape[-1]))
    w = torch.matmul(q * scale, (k * scale).transpose(-1, -2))
    w = torch.softmax(w.float(), dim=-1).to(q.dtype)
    return torch.matmul(w, v)


class TextSelfAttention(nn.Module):
    """``c_qkv`` (W -> 3W, head-major: per head [q | k | v]), attention, ``c_proj`` (W -> W)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.naive = False
        self.c_qkv = nn.Linear(width, 3 * width)
        self.c_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, L, W]
        b, length, width = x.shape
        qkv = self.c_qkv(x).view(b, length, self.heads, -1).transpose(1, 2)  # [B, h, L, 3hc]
        q, k, v = qkv.chunk(3, dim=-1)
        out = attention(q, k, v, self.naive)  # [B, h, L, hc]
        return self.c_proj(out.transpose(1, 2).reshape(b, length, width))


class TextMLP(nn.Module):
    """``c_fc`` (W -> 4W), exact GELU, ``c_proj`` (4W -> W)."""

    def __init__(self, width: int):
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """x + attn(ln_1(x)); then x + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = TextSelfAttention(width, heads)
        self.ln_1 = LayerNorm32(width)
        self.mlp = TextMLP(width)
        self.ln_2 = LayerNorm32(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TextTransformer(nn.Module):
    """``resblocks.{i}``: a stack of :class:`ResidualAttentionBlock` on [B, L, W] tensors."""

    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"xf_width {width} is not divisible by xf_heads {heads}")
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x
