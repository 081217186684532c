"""GLIDE's text-conditional inpainting U-Net (spec sections 5.1-5.9), checkpoint-compatible.

``build_model(options)`` returns a :class:`GlideUNet` whose state-dict keys, order and shapes
equal the released ``base_inpaint.pt`` / ``upsample_inpaint.pt`` for the full-size options.

Call: ``model(x_t, timesteps, tokens=..., mask=..., inpaint_image=..., inpaint_mask=...,
low_res=...)`` -> [B, 6, H, W] float32 = (eps [0:3], variance interpolation v [3:6]).
Precompute the text part once with ``text = model.encode_text(tokens, mask)`` and pass
``text=text`` on every sampling step instead of tokens/mask.

Precision: ``model.set_compute_dtype(torch.float16 | torch.bfloat16)`` casts the U-Net torso
and transformer weights (the set the original casts on GPU); time embedding, norms, softmax
and the output head stay float32.

Speed (same results up to float rounding): ``set_channels_last(True)`` (NHWC convolutions),
``scaled_dot_product_attention`` (``set_naive_attention(True)`` gives the plain baseline), the
attention blocks' text keys/values computed once per ``TextCondition`` while sampling, and the
opt-in ``set_compile(True)`` (torch.compile of the U-Net torso; falls back to eager with one
warning line where no compiler works).
"""
from __future__ import annotations

import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import configs
from .text_encoder import LayerNorm32, TextTransformer, attention

log = logging.getLogger(__name__)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm (32 groups, eps 1e-5) computed in float32, returned in the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 and x.device.type == "cpu" and self.weight.dtype == torch.float32:
            # PyTorch's CPU kernel takes low-precision input with float32 affine parameters and
            # does its math in float32: same numbers as the explicit cast, without the copies.
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return F.group_norm(
            x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps
        ).to(x.dtype)


def timestep_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] (all cosines, then all sines) of original timesteps 0..999."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(10000) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def _silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU of a freshly computed tensor: in place when no gradient is recorded (one tensor fewer)."""
    return F.silu(x, inplace=not torch.is_grad_enabled())


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, scale-shift by the embedding, GroupNorm-SiLU-conv, plus skip.

    ``up``/``down`` resample both branches (nearest x2 / 2x2 average pool) between the
    first activation and the first conv. x [B, cin, H, W], emb [B, 4C] -> [B, cout, H', W'].
    """

    def __init__(self, channels: int, emb_channels: int, out_channels: Optional[int] = None, *,
                 use_scale_shift_norm: bool = True, up: bool = False, down: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        out_channels = out_channels or channels
        self.up, self.down = up, down
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            GroupNorm32(32, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels),
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(32, out_channels), nn.SiLU(), nn.Dropout(dropout),
            _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    @staticmethod
    def _resample(x: torch.Tensor, up: bool) -> torch.Tensor:
        if up:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return F.avg_pool2d(x, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = _silu(self.in_layers[0](x))  # GroupNorm, SiLU
        if self.up or self.down:
            h, x = self._resample(h, self.up), self._resample(x, self.up)
        h = self.in_layers[2](h)
        e = self.emb_layers(emb).to(h.dtype)[..., None, None]
        out_norm, dropout, conv = self.out_layers[0], self.out_layers[2], self.out_layers[3]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = torch.addcmul(shift, out_norm(h), 1 + scale)  # norm(h) * (1 + scale) + shift
        else:
            h = out_norm(h + e)
        h = conv(dropout(_silu(h)))
        skip = self.skip_connection(x)
        return skip.add_(h) if skip is not x else x + h


class AttentionBlock(nn.Module):
    """Spatial self-attention that also attends to the text (text keys/values first).

    ``qkv``/``encoder_kv``/``proj_out`` are 1x1 Conv1d weights (checkpoint layout) applied as
    linear maps on [B, tokens, channels]; channels are head-major ([q|k|v] per head).
    x [B, ch, H, W], text tokens [B, L, W_text] -> [B, ch, H, W].
    """

    def __init__(self, channels: int, num_heads: int, encoder_channels: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels cannot be split into {num_heads} heads")
        self.num_heads = num_heads
        self.naive = False
        self.norm = GroupNorm32(32, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.encoder_kv = nn.Conv1d(encoder_channels, 2 * channels, 1)
        self.proj_out = _zero(nn.Conv1d(channels, channels, 1))

    def text_kv(self, text_tokens: torch.Tensor) -> torch.Tensor:
        """``encoder_kv`` applied to the text: [B, L, W_text] -> [B, L, 2ch] (per head [k | v])."""
        return F.linear(text_tokens.to(self.encoder_kv.weight.dtype), self.encoder_kv.weight[..., 0],
                        self.encoder_kv.bias)

    def forward(self, x: torch.Tensor, text_tokens: torch.Tensor,
                ekv: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``ekv``: :meth:`text_kv` of ``text_tokens`` when already computed (it is the same on
        every sampling step of a prompt)."""
        b, c, hgt, wid = x.shape
        heads = self.num_heads
        h = self.norm(x).flatten(2).transpose(1, 2)  # [B, T, C]
        qkv = F.linear(h, self.qkv.weight[..., 0], self.qkv.bias)
        qkv = qkv.view(b, -1, heads, 3 * c // heads).transpose(1, 2)  # [B, heads, T, 3hc]
        q, k, v = qkv.chunk(3, dim=-1)
        if ekv is None:
            ekv = self.text_kv(text_tokens)
        ekv = ekv.view(b, -1, heads, 2 * c // heads).transpose(1, 2)  # [B, heads, L, 2hc]
        ek, ev = ekv.chunk(2, dim=-1)
        k = torch.cat([ek, k], dim=2)
        v = torch.cat([ev, v], dim=2)
        out = attention(q, k, v, self.naive)  # [B, heads, T, hc]
        out = out.transpose(1, 2).reshape(b, hgt * wid, c)
        out = F.linear(out, self.proj_out.weight[..., 0], self.proj_out.bias)
        return x + out.transpose(1, 2).reshape(b, c, hgt, wid)


@dataclass
class TextCondition:
    """Text encoder output for a batch: ``xf_proj`` [B, 4C] float32 (added to the time
    embedding) and ``xf_out`` [B, L, W] (keys/values for every attention block).

    ``kv_cache`` holds the attention blocks' ``encoder_kv`` projections of ``xf_out`` once a
    model has computed them without gradients (they are the same on every sampling step)."""

    xf_proj: torch.Tensor
    xf_out: torch.Tensor
    kv_cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return self.xf_proj.shape[0]

    def index_select(self, index: torch.Tensor) -> "TextCondition":
        return TextCondition(self.xf_proj[index], self.xf_out[index])

    @staticmethod
    def cat(parts: list["TextCondition"]) -> "TextCondition":
        return TextCondition(torch.cat([p.xf_proj for p in parts]), torch.cat([p.xf_out for p in parts]))


class GlideUNet(nn.Module):
    """GLIDE text-conditional (inpainting / super-resolution) U-Net with its text transformer.

    Built from an option dict (see :mod:`skinlib.glide.configs`); ``self.options`` keeps it.
    """

    def __init__(self, options: Mapping[str, Any]):
        super().__init__()
        opt = configs.complete_options(options)
        self.options = opt
        c = int(opt["num_channels"])
        mult = configs.channel_mult(opt)
        att = configs.attention_downsample_rates(opt)
        nrb = int(opt["num_res_blocks"])
        emb_dim = 4 * c
        xf_width, text_ctx = int(opt["xf_width"]), int(opt["text_ctx"])
        self.model_channels, self.text_ctx = c, text_ctx
        self.in_channels = configs.in_channels(opt)
        self.inpaint, self.super_res = bool(opt["inpaint"]), bool(opt["super_res"])
        self.xf_padding, self.xf_final_ln = bool(opt["xf_padding"]), bool(opt["xf_final_ln"])
        dropout, sss = float(opt["dropout"]), bool(opt["use_scale_shift_norm"])
        updown = bool(opt["resblock_updown"])
        if not updown:
            raise NotImplementedError("resblock_updown=False (conv up/downsampling) is not implemented")

        def heads(ch: int, upsample: bool) -> int:
            if int(opt["num_head_channels"]) != -1:
                return ch // int(opt["num_head_channels"])
            n = int(opt["num_heads_upsample"]) if upsample else -1
            return n if n != -1 else int(opt["num_heads"])

        def res(cin: int, cout: Optional[int] = None, **kw: bool) -> ResBlock:
            return ResBlock(cin, emb_dim, cout, use_scale_shift_norm=sss, dropout=dropout, **kw)

        # Parameters owned directly by the root come first in the state dict.
        self.positional_embedding = nn.Parameter(torch.empty(text_ctx, xf_width))
        self.padding_embedding = nn.Parameter(torch.empty(text_ctx, xf_width)) if self.xf_padding else None
        self.time_embed = nn.Sequential(nn.Linear(c, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        ch = c * mult[0]
        self.input_blocks = nn.ModuleList([nn.ModuleList([nn.Conv2d(self.in_channels, ch, 3, padding=1)])])
        skip_chans, ds = [ch], 1
        for level, m in enumerate(mult):
            for _ in range(nrb):
                layers: list[nn.Module] = [res(ch, m * c)]
                ch = m * c
                if ds in att:
                    layers.append(AttentionBlock(ch, heads(ch, False), xf_width))
                self.input_blocks.append(nn.ModuleList(layers))
                skip_chans.append(ch)
            if level != len(mult) - 1:
                self.input_blocks.append(nn.ModuleList([res(ch, ch, down=True)]))
                skip_chans.append(ch)
                ds *= 2
        self.middle_block = nn.ModuleList(
            [res(ch), AttentionBlock(ch, heads(ch, False), xf_width), res(ch)]
        )
        self.output_blocks = nn.ModuleList()
        for level, m in reversed(list(enumerate(mult))):
            for i in range(nrb + 1):
                layers = [res(ch + skip_chans.pop(), m * c)]
                ch = m * c
                if ds in att:
                    layers.append(AttentionBlock(ch, heads(ch, True), xf_width))
                if level and i == nrb:
                    layers.append(res(ch, ch, up=True))
                    ds //= 2
                self.output_blocks.append(nn.ModuleList(layers))
        self.out = nn.Sequential(GroupNorm32(32, ch), nn.SiLU(), _zero(nn.Conv2d(ch, 6, 3, padding=1)))

        self.transformer = TextTransformer(xf_width, int(opt["xf_layers"]), int(opt["xf_heads"]))
        self.final_ln = LayerNorm32(xf_width) if self.xf_final_ln else None
        self.token_embedding = nn.Embedding(configs.N_VOCAB, xf_width)
        self.transformer_proj = nn.Linear(xf_width, emb_dim)
        self.channels_last = False
        self._attention_blocks = [m for m in self.modules() if isinstance(m, AttentionBlock)]  # forward order
        self._compiled = None
        self.compile_status = "off"
        self.eval()

    # ----------------------------------------------------------------- precision / modes
    @property
    def compute_dtype(self) -> torch.dtype:
        return self.input_blocks[0][0].weight.dtype

    def _torso_modules(self):
        for blocks in (self.input_blocks, self.middle_block, self.output_blocks):
            for m in blocks.modules():
                if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                    yield m
        for m in self.transformer.modules():
            if isinstance(m, nn.Linear):
                yield m
        yield self.token_embedding
        yield self.transformer_proj

    def set_compute_dtype(self, dtype: torch.dtype) -> "GlideUNet":
        """Cast torso convs, transformer Linears, token embedding and text projection to
        ``dtype`` (float32/float16/bfloat16); everything else stays float32. Returns self."""
        self.float()
        for m in self._torso_modules():
            m.to(dtype)
        return self

    def set_channels_last(self, enabled: bool = True) -> "GlideUNet":
        """Run the U-Net in channels-last (NHWC) memory layout: faster convolutions on CPU
        (oneDNN) and tensor-core GPUs, and attention without transposition copies."""
        self.channels_last = bool(enabled)
        return self.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)

    def set_naive_attention(self, naive: bool) -> "GlideUNet":
        """Explicit score-matrix attention (in-process benchmark baseline) instead of SDPA."""
        for m in self.modules():
            if hasattr(m, "naive"):
                m.naive = naive
        return self

    # ----------------------------------------------------------------- text
    def encode_text(self, tokens: torch.Tensor, mask: Optional[torch.Tensor],
                    capture: Optional[dict] = None) -> TextCondition:
        """tokens int64 [B, L], mask bool [B, L] (True = real token) -> :class:`TextCondition`."""
        if tokens.shape[-1] != self.text_ctx:
            raise ValueError(f"tokens have length {tokens.shape[-1]}, the model's text_ctx is {self.text_ctx}")
        x = self.token_embedding(tokens.long()).float() + self.positional_embedding.float()[None]
        if self.xf_padding:
            if mask is None:
                raise ValueError("this model uses padding embeddings: pass the token mask")
            x = torch.where(mask.bool()[..., None], x, self.padding_embedding.float()[None])
        if capture is not None:
            capture["xf_in"] = x
        x = self.transformer(x.to(self.compute_dtype))
        if capture is not None:
            capture["xf_out_pre_final_ln"] = x
        if self.final_ln is not None:
            x = self.final_ln(x)
        xf_proj = self.transformer_proj(x[:, -1]).float()
        if capture is not None:
            capture["xf_out"], capture["xf_proj"] = x, xf_proj
        return TextCondition(xf_proj=xf_proj, xf_out=x)

    # ----------------------------------------------------------------- forward
    def forward(self, x_t: torch.Tensor, timesteps: torch.Tensor, tokens: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None, inpaint_image: Optional[torch.Tensor] = None,
                inpaint_mask: Optional[torch.Tensor] = None, low_res: Optional[torch.Tensor] = None, *,
                text: Optional[TextCondition] = None, capture: Optional[dict] = None) -> torch.Tensor:
        """x_t [B, 3, H, W]; timesteps int [B] (original 0..999 indices); tokens/mask [B, L]
        or a precomputed ``text``; inpaint_image [B, 3, H, W] in [-1, 1] (the model masks it
        itself) and inpaint_mask [B, 1, H, W] (1 = known pixel), zeros when omitted; low_res
        [B, 3, h, w] (super-res only; bilinearly resized to H, W). Returns [B, 6, H, W] float32.
        ``capture`` (a dict) receives intermediate activations under the fixture names."""
        if text is None:
            if tokens is None:
                raise ValueError("pass tokens and mask, or a precomputed text=model.encode_text(...)")
            text = self.encode_text(tokens, mask, capture)
        parts = [x_t]
        if self.inpaint:
            if inpaint_image is None:
                inpaint_image = torch.zeros_like(x_t)
            if inpaint_mask is None:
                inpaint_mask = torch.zeros_like(x_t[:, :1])
            parts += [inpaint_image * inpaint_mask, inpaint_mask]
        if self.super_res:
            if low_res is None:
                raise ValueError("the upsampler needs low_res [B, 3, h, w]")
            parts.append(F.interpolate(low_res, size=x_t.shape[-2:], mode="bilinear", align_corners=False))
        h = torch.cat([p.float() for p in parts], dim=1)

        t_emb = timestep_embedding(timesteps.to(x_t.device), self.model_channels)
        emb = self.time_embed(t_emb)
        if capture is not None:
            capture.update(timestep_embedding=t_emb, time_embed=emb, unet_input=h)
        emb = emb + text.xf_proj.to(emb.dtype)
        if capture is not None:
            capture["emb"] = emb

        h = h.to(self.compute_dtype)
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        kvs = self.text_kv(text)
        if capture is None and self._compiled is not None and not torch.is_grad_enabled():
            out = self._run_compiled(h, emb, kvs)
            if out is not None:
                return out
        return self._torso(h, emb, kvs, capture)

    def _torso(self, h: torch.Tensor, emb: torch.Tensor, kvs: list[torch.Tensor],
               capture: Optional[dict] = None) -> torch.Tensor:
        """U-Net blocks and output head: h [B, in_channels, H, W] (compute dtype), emb [B, 4C],
        kvs = :meth:`text_kv` -> [B, 6, H, W] float32."""
        kv = iter(kvs)
        skips = []
        for i, block in enumerate(self.input_blocks):
            h = self._run_block(block, h, emb, kv)
            skips.append(h)
            if capture is not None:
                capture[f"input_blocks.{i}"] = h
        h = self._run_block(self.middle_block, h, emb, kv)
        if capture is not None:
            capture["middle_block"] = h
        for i, block in enumerate(self.output_blocks):
            h = self._run_block(block, torch.cat([h, skips.pop()], dim=1), emb, kv)
            if capture is not None:
                capture[f"output_blocks.{i}"] = h
        return self.out(h.float())

    @staticmethod
    def _run_block(block: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor, kv) -> torch.Tensor:
        for layer in block:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, AttentionBlock):
                h = layer(h, None, next(kv))
            else:
                h = layer(h)
        return h

    # ----------------------------------------------------------------- text keys/values
    def text_kv(self, text: TextCondition) -> list[torch.Tensor]:
        """Every attention block's ``encoder_kv`` projection of ``text.xf_out`` ([B, L, 2ch]),
        in forward order. Without gradients (sampling) they are cached on ``text``, keyed by
        this model's weights (identity, dtype and in-place version), so a prompt's text
        keys/values are computed once per sampling run instead of once per step."""
        blocks = self._attention_blocks
        if torch.is_grad_enabled() or torch.is_autocast_enabled(text.xf_out.device.type):
            return [blk.text_kv(text.xf_out) for blk in blocks]
        key = (id(self),) + tuple((blk.encoder_kv.weight.data_ptr(), blk.encoder_kv.weight._version,
                                   blk.encoder_kv.bias.data_ptr(), blk.encoder_kv.bias._version)
                                  for blk in blocks)
        if key not in text.kv_cache:
            text.kv_cache.clear()
            text.kv_cache[key] = [blk.text_kv(text.xf_out) for blk in blocks]
        return text.kv_cache[key]

    # ----------------------------------------------------------------- torch.compile
    def set_compile(self, enabled: bool = True) -> "GlideUNet":
        """Run the U-Net torso (blocks + output head) through ``torch.compile`` (inductor) when
        sampling (no gradients, no ``capture``): GroupNorm+SiLU, the scale-shift and the other
        element-wise chains become fused kernels, concatenations are written in place. Results
        equal eager up to float rounding. Compilation happens on the first call for each input
        shape and dtype (minutes on a CPU), so it pays for sampling runs of many steps, not for
        a few. Where it cannot work (no C++ compiler for a CPU, no Triton for a GPU, another
        device, or the compiler fails) one warning line is logged and the model stays eager;
        :attr:`compile_status` records what happened. Returns self."""
        self._compiled = None
        if not enabled:
            self.compile_status = "off"
            return self
        reason = _compile_unavailable(self.positional_embedding.device.type)
        if reason:
            self.compile_status = f"eager (torch.compile unavailable: {reason})"
            log.warning("GLIDE U-Net: torch.compile unavailable (%s); running eager", reason)
            return self
        self._compiled = torch.compile(self._torso, dynamic=False)
        self.compile_status = "compiled (torch.compile, inductor)"
        return self

    def _run_compiled(self, h: torch.Tensor, emb: torch.Tensor, kvs: list[torch.Tensor]) -> Optional[torch.Tensor]:
        try:
            return self._compiled(h, emb, kvs)
        except torch._dynamo.exc.BackendCompilerFailed as e:  # compiler missing/broken: not a model bug
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            self._compiled = None
            self.compile_status = f"eager (torch.compile failed: {first})"
            log.warning("GLIDE U-Net: torch.compile failed (%s); running eager", first)
            return None


def _compile_unavailable(device_type: str) -> Optional[str]:
    """Why torch.compile cannot run on this device type here, or None when it can."""
    if device_type == "cpu":
        cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
        return None if cxx else "no C++ compiler found (install g++ or set CXX)"
    if device_type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "Triton is not installed"
    return f"not used on {device_type} devices"


def build_model(config: Mapping[str, Any], device: Optional[torch.device | str] = None) -> GlideUNet:
    """Model for an option dict (the fixture config keys), in eval mode, float32, PyTorch
    default init (zero-initialised output convs; embeddings uninitialised until loaded).
    ``device="meta"`` builds the structure without allocating memory.

    Options that do not shape the network are not used here: precision is set with
    :meth:`GlideUNet.set_compute_dtype` (``use_fp16``), the diffusion is built with
    :meth:`skinlib.glide.diffusion.GaussianDiffusion.create` (``noise_schedule``,
    ``diffusion_steps``, ``timestep_respacing``), dropout is inactive (inference only)."""
    if device is None:
        return GlideUNet(config)
    with torch.device(device):
        return GlideUNet(config)
