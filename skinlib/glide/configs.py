"""GLIDE model option dicts and the structure derived from them.

An option dict has the keys of the original's ``model_and_diffusion_defaults()`` (see
``../shared/glide-parity/configs.json``). Four are named here:

* ``BASE_INPAINT`` / ``UPSAMPLE_INPAINT``: the released full-size models (385 M / 398 M params).
* ``FIXTURE_TINY_BASE`` / ``FIXTURE_TINY_UPSAMPLE``: the tiny parity-fixture models (16 px / 32 px).
* ``TINY_RANDOM_BASE`` / ``TINY_RANDOM_UPSAMPLE``: tiny models for tests and smoke runs with
  **random weights**, shaped to run the real 64 px -> 256 px pipeline fast on a CPU (attention
  only at the coarsest resolutions; the fixture configs would put attention on 128x128 maps
  there).
* ``SMALL_BASE`` / ``SMALL_UPSAMPLE``: the small GLIDE-architecture models that
  :mod:`skinlib.glide.finetune` trains from scratch on a CPU (``TRAIN_CONFIGS["small"]``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

N_VOCAB = 50257
END_TOKEN = 50256  # <|endoftext|>, used only as padding

_FULL_DEFAULTS: dict[str, Any] = dict(
    image_size=64, num_channels=192, num_res_blocks=3, channel_mult="", num_heads=1,
    num_head_channels=64, num_heads_upsample=-1, attention_resolutions="32,16,8", dropout=0.1,
    text_ctx=128, xf_width=512, xf_layers=16, xf_heads=8, xf_final_ln=True, xf_padding=True,
    diffusion_steps=1000, noise_schedule="squaredcos_cap_v2", timestep_respacing="",
    use_scale_shift_norm=True, resblock_updown=True, use_fp16=True, cache_text_emb=False,
    inpaint=True, super_res=False,
)
OPTION_KEYS = frozenset(_FULL_DEFAULTS)

BASE_INPAINT: dict[str, Any] = dict(_FULL_DEFAULTS)
UPSAMPLE_INPAINT: dict[str, Any] = dict(
    _FULL_DEFAULTS, image_size=256, num_res_blocks=2, noise_schedule="linear", super_res=True
)

_TINY_COMMON = dict(
    num_channels=32, num_heads=1, num_head_channels=16, num_heads_upsample=-1, dropout=0.1,
    xf_width=16, xf_layers=2, xf_heads=2, xf_final_ln=True, xf_padding=True, diffusion_steps=1000,
    timestep_respacing="", use_scale_shift_norm=True, resblock_updown=True, use_fp16=False,
    cache_text_emb=False, inpaint=True,
)
FIXTURE_TINY_BASE: dict[str, Any] = dict(
    _TINY_COMMON, image_size=16, num_res_blocks=1, channel_mult="1,2",
    attention_resolutions="16,8", text_ctx=8, noise_schedule="squaredcos_cap_v2", super_res=False,
)
FIXTURE_TINY_UPSAMPLE: dict[str, Any] = dict(
    _TINY_COMMON, image_size=32, num_res_blocks=2, channel_mult="1,1,2",
    attention_resolutions="16,8", text_ctx=16, noise_schedule="linear", super_res=True,
)
TINY_RANDOM_BASE: dict[str, Any] = dict(
    _TINY_COMMON, image_size=64, num_res_blocks=1, channel_mult="1,2,2,2",
    attention_resolutions="16,8", text_ctx=128, xf_width=32, noise_schedule="squaredcos_cap_v2",
    super_res=False,
)
TINY_RANDOM_UPSAMPLE: dict[str, Any] = dict(
    _TINY_COMMON, image_size=256, num_res_blocks=1, channel_mult="1,1,2,2,2,2",
    attention_resolutions="16,8", text_ctx=128, xf_width=32, noise_schedule="linear",
    super_res=True,
)
#: Small GLIDE-architecture models sized to be trained from scratch on a CPU in minutes (notebook
#: 04 without official weights). Same layers and state-dict grammar as the released models, at
#: the minimum width (32 channels: GroupNorm's 32 groups), one res-block per level, attention
#: at the 16 and 8 px levels, a 2-layer 32-wide text transformer with a 32-token context.
SMALL_BASE: dict[str, Any] = dict(
    _TINY_COMMON, image_size=64, num_res_blocks=1, channel_mult="1,2,2,2",
    attention_resolutions="16,8", text_ctx=32, xf_width=32, noise_schedule="squaredcos_cap_v2",
    super_res=False,
)
SMALL_UPSAMPLE: dict[str, Any] = dict(
    _TINY_COMMON, image_size=256, num_res_blocks=1, channel_mult="1,1,2,2,2,2",
    attention_resolutions="16,8", text_ctx=32, xf_width=32, noise_schedule="linear",
    super_res=True,
)

#: Named model configs for training: name -> (base options, upsampler options).
TRAIN_CONFIGS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "official": (BASE_INPAINT, UPSAMPLE_INPAINT),
    "small": (SMALL_BASE, SMALL_UPSAMPLE),
    "tiny": (TINY_RANDOM_BASE, TINY_RANDOM_UPSAMPLE),
    "fixture-tiny": (FIXTURE_TINY_BASE, FIXTURE_TINY_UPSAMPLE),
}

CHECKPOINT_BASE_URL = "https://openaipublic.blob.core.windows.net/diffusion/dec-2021/"


@dataclass(frozen=True)
class CheckpointInfo:
    """A released checkpoint: its name, file name, download URL and model options."""

    name: str
    file: str
    options: Mapping[str, Any]
    num_parameters: int

    @property
    def url(self) -> str:
        return CHECKPOINT_BASE_URL + self.file


CHECKPOINTS: dict[str, CheckpointInfo] = {
    "base-inpaint": CheckpointInfo("base-inpaint", "base_inpaint.pt", BASE_INPAINT, 385_037_638),
    "upsample-inpaint": CheckpointInfo(
        "upsample-inpaint", "upsample_inpaint.pt", UPSAMPLE_INPAINT, 398_368_198
    ),
}


def complete_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """Fill missing keys from the full-size base defaults; reject unknown keys."""
    unknown = set(config) - OPTION_KEYS
    if unknown:
        raise ValueError(f"unknown GLIDE option(s) {sorted(unknown)}; known: {sorted(OPTION_KEYS)}")
    return {**_FULL_DEFAULTS, **dict(config)}


def channel_mult(options: Mapping[str, Any]) -> tuple[int, ...]:
    """Per-level channel multipliers; ``""`` picks the default for 64, 128 or 256 px."""
    spec, size = options["channel_mult"], int(options["image_size"])
    if spec == "" or spec is None:
        defaults = {64: (1, 2, 3, 4), 128: (1, 1, 2, 3, 4), 256: (1, 1, 2, 2, 4, 4)}
        if size not in defaults:
            raise ValueError(f"no default channel_mult for image_size {size}; give one explicitly")
        return defaults[size]
    mult = tuple(int(m) for m in str(spec).split(",")) if isinstance(spec, str) else tuple(spec)
    if 2 ** (len(mult) + 2) != size:
        raise ValueError(
            f"channel_mult {spec!r} has {len(mult)} levels; image_size {size} needs "
            f"2**(levels+2) == image_size"
        )
    return mult


def attention_downsample_rates(options: Mapping[str, Any]) -> frozenset[int]:
    """Downsample rates (1 = full resolution) at which attention blocks sit."""
    size = int(options["image_size"])
    return frozenset(size // int(r) for r in str(options["attention_resolutions"]).split(",") if r)


def in_channels(options: Mapping[str, Any]) -> int:
    """3 (x_t) + 4 (masked image + mask) for inpainting + 3 (upsampled low-res) for super-res."""
    return 3 + (4 if options["inpaint"] else 0) + (3 if options["super_res"] else 0)
