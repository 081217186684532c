"""GLIDE inpainting pipeline (spec section 7): guided 64 px base stage, then the 64->256 upsampler.

:class:`GlideInpainter` is the public entry point (contract in notes/glide_interface.md).
The stage functions (:func:`sample_base_inpaint`, :func:`sample_upsample_inpaint`) take any
noise source, so the parity tests replay the fixtures' recorded noise through the same code.
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from .. import cpu
from . import checkpoints, configs
from .diffusion import GaussianDiffusion, NoiseFn, PerItemNoise
from .tokenizer import GlideTokenizer, load_tokenizer
from .unet import GlideUNet, TextCondition, build_model

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- building blocks
def encode_prompts(model: GlideUNet, tokenizer: GlideTokenizer, prompts: Sequence[str]) -> TextCondition:
    """Text condition for ``prompts``, running the text transformer once per distinct prompt."""
    unique = list(dict.fromkeys(prompts))
    tokens, mask = tokenizer.tokenize(unique, model.text_ctx)
    device = model.positional_embedding.device
    cond = model.encode_text(tokens.to(device), mask.to(device))
    return cond.index_select(torch.tensor([unique.index(p) for p in prompts], device=device))


def inpaint_denoised_fn(inpaint_image: torch.Tensor,
                        inpaint_mask: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """x0 -> x0 * (1 - mask) + image * mask: re-impose known pixels (mask 1 = known)."""
    return lambda x0: x0 * (1 - inpaint_mask) + inpaint_image * inpaint_mask


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """Round [-1, 1] images to the 256 levels of an 8-bit image (round half to even)."""
    return torch.round((x + 1) * 127.5) / 127.5 - 1


class GuidedModel:
    """Classifier-free guidance in one forward: runs the network on [x; x] with text rows
    [cond; uncond] and returns [eps_u + s (eps_c - eps_u) | v_cond] for the n rows of x.
    ``last_raw`` keeps the last raw [2n, 6, H, W] network output (for tests/inspection)."""

    def __init__(self, model: GlideUNet, text: TextCondition, guidance_scale: float,
                 inpaint_image: torch.Tensor, inpaint_mask: torch.Tensor):
        self.model, self.text, self.scale = model, text, float(guidance_scale)
        self.inpaint_image = torch.cat([inpaint_image, inpaint_image])
        self.inpaint_mask = torch.cat([inpaint_mask, inpaint_mask])
        self.last_raw: Optional[torch.Tensor] = None

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        raw = self.model(torch.cat([x, x]), torch.cat([t, t]), text=self.text,
                         inpaint_image=self.inpaint_image, inpaint_mask=self.inpaint_mask)
        self.last_raw = raw
        eps_c, eps_u = raw[:n, :3], raw[n:, :3]
        return torch.cat([eps_u + self.scale * (eps_c - eps_u), raw[:n, 3:]], dim=1)


def sample_base_inpaint(model: GlideUNet, diffusion: GaussianDiffusion, text: TextCondition,
                        inpaint_image: torch.Tensor, inpaint_mask: torch.Tensor, *,
                        guidance_scale: float, initial_noise: torch.Tensor, noise: NoiseFn,
                        progress: bool = False, callback=None, ddim_eta: Optional[float] = None) -> torch.Tensor:
    """Guided base stage for n images. text: 2n rows (n prompts, then n empty prompts);
    inpaint_image [n, 3, h, w] (already masked), inpaint_mask [n, 1, h, w] (1 = known);
    initial_noise [n, 3, h, w]. Only the conditional half of the original's 2n-row
    chain is tracked (the other half never reaches the network). Returns [n, 3, h, w]."""
    if len(text) != 2 * inpaint_image.shape[0]:
        raise ValueError(f"text has {len(text)} rows, expected 2 x {inpaint_image.shape[0]} (cond + uncond)")
    guided = GuidedModel(model, text, guidance_scale, inpaint_image, inpaint_mask)
    cb = None if callback is None else (lambda k, d: callback(k, dict(d, model_out_raw=guided.last_raw)))
    return diffusion.p_sample_loop(
        guided, initial_noise, noise, denoised_fn=inpaint_denoised_fn(inpaint_image, inpaint_mask),
        clip_denoised=True, progress=progress, callback=cb, desc="GLIDE base", ddim_eta=ddim_eta,
    )


def sample_upsample_inpaint(model: GlideUNet, diffusion: GaussianDiffusion, text: TextCondition,
                            inpaint_image: torch.Tensor, inpaint_mask: torch.Tensor, low_res: torch.Tensor, *,
                            initial_noise: torch.Tensor, noise: NoiseFn, progress: bool = False,
                            callback=None, ddim_eta: Optional[float] = None) -> torch.Tensor:
    """Upsampler stage (no guidance). low_res [n, 3, h, w] (8-bit quantised base output);
    inpaint_image/mask at full size; initial_noise already scaled by the temperature."""

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(x, t, text=text, inpaint_image=inpaint_image, inpaint_mask=inpaint_mask, low_res=low_res)

    return diffusion.p_sample_loop(
        model_fn, initial_noise, noise, denoised_fn=inpaint_denoised_fn(inpaint_image, inpaint_mask),
        clip_denoised=True, progress=progress, callback=callback, desc="GLIDE upsampler", ddim_eta=ddim_eta,
    )


def _diffusion(options, respacing: str, start: Optional[int], stage: str) -> GaussianDiffusion:
    """The stage's respaced diffusion, truncated at ``start`` (None: whole schedule), with an
    error that names the start and the respacing when they do not fit together."""
    try:
        return GaussianDiffusion.create(options["noise_schedule"], int(options["diffusion_steps"]), respacing,
                                        start=None if start is None else int(start))
    except ValueError as exc:
        if start is None:
            raise
        raise ValueError(f"{stage}_start={start} does not fit the {stage} respacing {respacing!r} ({exc}): "
                         f"use fewer respaced steps than {int(start) + 1} or a later start") from exc


def smooth_fill(images: torch.Tensor, keep_mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """Known pixels kept, holes filled by a normalised Gaussian blur of the known pixels
    (blur(image * keep) / blur(keep); beyond the kernel's reach, the known pixels' mean). images [N, C, H, W] in [-1, 1], keep_mask [N, 1, H, W]
    (1 = known); sigma in px. Returns [N, C, H, W] in [-1, 1]."""
    r = max(1, int(3 * sigma))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float32, device=images.device) ** 2 / (2 * sigma ** 2))
    k = k / k.sum()

    def blur(x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
        return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)

    weight = blur(keep_mask)
    est = blur(images * keep_mask) / weight.clamp(min=1e-6)
    # pixels farther than 3 sigma from any known pixel: the mean of the known pixels
    mean = (images * keep_mask).sum((2, 3), keepdim=True) / keep_mask.sum((2, 3), keepdim=True).clamp(min=1)
    est = torch.where(weight > 1e-6, est, mean.expand_as(est))
    return torch.where(keep_mask.bool(), images, est.clamp(-1, 1))


def noised_start(diffusion: GaussianDiffusion, guess: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """SDEdit's initial sample: ``guess`` noised to the level of the diffusion's first (highest)
    timestep, sqrt(abar)·guess + sqrt(1 − abar)·noise (same shapes, [-1, 1] scale)."""
    abar = float(diffusion.alphas_cumprod[-1])
    return math.sqrt(abar) * guess + math.sqrt(1 - abar) * noise


def upsample_guess(images: torch.Tensor, keep_mask: torch.Tensor, low_res: torch.Tensor) -> torch.Tensor:
    """The upsampler's SDEdit guess: the known pixels of ``images`` [N, 3, H, W], elsewhere the
    bilinear upsample of ``low_res`` [N, 3, h, w] to H x W; keep_mask [N, 1, H, W] (1 = known)."""
    up = F.interpolate(low_res, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return torch.where(keep_mask.bool(), images, up)


# ----------------------------------------------------------------------------- random weights
def random_model(options, seed: int) -> GlideUNet:
    """Model with seeded random weights, following the fixtures' recipe (spec 3.2): PyTorch
    default init under ``torch.manual_seed(seed)`` (global RNG restored afterwards), then a
    generator seeded ``seed + 1`` sets the position/padding embeddings to N(0, 0.5^2),
    all-zero tensors to N(0, 1/fan_in) (matrices) or N(0, 0.05^2) (vectors) and all-one
    tensors to 1 + N(0, 0.1^2), in state-dict order."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(options)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.state_dict(keep_vars=True).items():
            if name in ("positional_embedding", "padding_embedding"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            elif bool((p == 0).all()):
                std = 1 / math.sqrt(p[0].numel()) if p.dim() > 1 else 0.05
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif bool((p == 1).all()):
                p.copy_(1 + torch.randn(p.shape, generator=g) * 0.1)
    return model


# ----------------------------------------------------------------------------- pipeline
def _default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


DTYPE_NAMES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
               "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def choose_dtype(dtype, device_type: str, native_bf16: bool) -> torch.dtype:
    """The engine's compute dtype. ``dtype``: a torch dtype, a name of :data:`DTYPE_NAMES`,
    None (the default: float16 on CUDA, else float32; never bf16, which is slower than fp32 on
    CPUs without native bf16) or "auto" (float16 on CUDA; on a CPU bfloat16 only where
    ``native_bf16`` (:func:`skinlib.cpu.cpu_info`), else float32; float32 elsewhere)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device_type == "cuda":
            return torch.float16
        return torch.bfloat16 if dtype == "auto" and device_type == "cpu" and native_bf16 else torch.float32
    if isinstance(dtype, str) and dtype.lower() in DTYPE_NAMES:
        return DTYPE_NAMES[dtype.lower()]
    raise ValueError(f"dtype={dtype!r}: use a torch dtype, None, 'auto' or one of {sorted(DTYPE_NAMES)}")


def _prepare(model: GlideUNet, dtype: torch.dtype) -> GlideUNet:
    """Compute dtype, and channels-last layout where it speeds convolutions up (CPU, CUDA)."""
    model.set_compute_dtype(dtype)
    return model.set_channels_last(model.positional_embedding.device.type in ("cpu", "cuda"))


class GlideInpainter:
    """Base-inpaint (64 px, text-guided, classifier-free guidance) + upsample-inpaint (64->256).

    ``is_random`` is True for "tiny-random" weights: show it in every log line and figure
    title. ``identity`` (JSON-able) records weights, files + sha256, respacings, dtype, device.
    """

    def __init__(self, base: GlideUNet, upsampler: GlideUNet, tokenizer: GlideTokenizer, *,
                 base_respacing: str = "100", upsample_respacing: str = "fast27",
                 is_random: bool = False, identity: Optional[dict] = None):
        self.base, self.upsampler, self.tokenizer = base.eval(), upsampler.eval(), tokenizer
        self.base_diffusion = GaussianDiffusion.create(
            base.options["noise_schedule"], int(base.options["diffusion_steps"]), base_respacing)
        self.upsample_diffusion = GaussianDiffusion.create(
            upsampler.options["noise_schedule"], int(upsampler.options["diffusion_steps"]), upsample_respacing)
        self.base_image_size = int(base.options["image_size"])
        self.image_size = int(upsampler.options["image_size"])
        if self.image_size % self.base_image_size:
            raise ValueError(f"upsampler size {self.image_size} is not a multiple of "
                             f"base size {self.base_image_size}")
        self.is_random = bool(is_random)
        self.device = base.positional_embedding.device
        self.dtype = base.compute_dtype
        self.identity = dict(identity or {})
        self.upsample_window: Optional[int] = None
        self.upsample_start: Optional[int] = None
        self.base_start: Optional[int] = None
        self.ddim_eta: Optional[float] = None
        self._upsample_respacing = upsample_respacing
        self._base_respacing = base_respacing
        self.identity.update(
            upsample_window=None, upsample_start=None, base_start=None, ddim_eta=None, base_respacing=base_respacing,
            upsample_respacing=upsample_respacing,
            dtype=str(self.dtype).replace("torch.", ""), device=str(self.device), is_random=self.is_random,
        )

    @property
    def name(self) -> str:
        """Short label for logs and figure titles (says RANDOM for tiny-random; names trained
        weights by what they are, e.g. the small model trained on the run's crops)."""
        w = self.identity.get("weights", "?")
        if self.is_random:
            return f"GLIDE {w} (RANDOM WEIGHTS)"
        return f"GLIDE: {self.identity['weights_label']}" if "weights_label" in self.identity else f"GLIDE {w}"

    def __repr__(self) -> str:
        return f"GlideInpainter({self.name}, device={self.device}, dtype={self.dtype})"

    def set_upsample_window(self, window: Optional[int]) -> "GlideInpainter":
        """Run the upsampler on a ``window`` x ``window`` px crop around each image's hole
        instead of the whole image (None: the whole image, as the original). The window grows
        (in steps of 32 px) when a hole plus 16 px of context does not fit. Known pixels are
        re-imposed everywhere as before; only the upsampler's view of far-away context is cut.
        Cost falls with the area (128 of 256 px: about 4x fewer upsampler FLOPs); meant for
        the small CPU model, which is trained on 64 px patches. Recorded in ``identity``."""
        if window is not None and (window < 32 or window % 32):
            raise ValueError(f"upsample_window must be a multiple of 32 px (or None), got {window}")
        self.upsample_window = window
        self.identity["upsample_window"] = window
        return self

    def set_upsample_start(self, start: Optional[int]) -> "GlideInpainter":
        """Start the upsampler at original timestep ``start`` from the bilinear upsample of the
        base result, noised to that level (SDEdit), instead of from pure noise at t = 999
        (None: pure noise, as the original and the study). The respacing then spreads its
        steps over 0..start. Meant for the small CPU model: its upsampler, trained for minutes,
        predicts x0 poorly from near-pure noise (t > 500) but refines a noised upsample well;
        OpenAI's upsampler needs no such help. Recorded in ``identity``."""
        return self._set_start("upsample", start)

    def set_base_start(self, start: Optional[int]) -> "GlideInpainter":
        """Start the base model at original timestep ``start`` from a smooth fill of each hole
        (:func:`smooth_fill`: normalised Gaussian blur of the known pixels) noised to that
        level (SDEdit), instead of from pure noise at t = 999 (None: pure noise, as the
        original and the study). The respacing spreads its steps over 0..start. Meant for the
        small CPU model: trained for minutes, its x0 predictions from near-pure noise drift
        to a pale grey that later steps never correct; from a noised fill it keeps the
        surrounding skin's colour and re-draws the detail. Recorded in ``identity``."""
        return self._set_start("base", start)

    def _set_start(self, stage: str, start: Optional[int]) -> "GlideInpainter":
        """``stage`` "base" / "upsample": its diffusion truncated at ``start`` (None: whole schedule);
        records the timestep sampling really starts at (a respacing such as fast27 may drop
        ``start`` itself) as ``<stage>_start`` and in ``identity``."""
        model, respacing = ((self.base, self._base_respacing) if stage == "base"
                            else (self.upsampler, self._upsample_respacing))
        diffusion = _diffusion(model.options, respacing, start, stage)
        actual = None if start is None else int(diffusion.timestep_map[-1])
        setattr(self, f"{stage}_diffusion", diffusion)
        setattr(self, f"{stage}_start", actual)
        self.identity[f"{stage}_start"] = actual
        return self

    def set_ddim(self, eta: Optional[float]) -> "GlideInpainter":
        """Sample both stages with DDIM steps of this eta (0: deterministic) instead of the
        original's ancestral steps (None, the default and the study's). With few respaced
        steps an ancestral sampler's last step adds noise that nothing removes (at 8 base
        steps, std about 0.2 on the [-1, 1] scale): the small CPU model samples with
        DDIM. Recorded in ``identity``."""
        if eta is not None and not 0.0 <= float(eta) <= 1.0:
            raise ValueError(f"ddim eta must lie in [0, 1] (or None: ancestral sampling), got {eta}")
        self.ddim_eta = None if eta is None else float(eta)
        self.identity["ddim_eta"] = self.ddim_eta
        return self

    def _window_boxes(self, hole: torch.Tensor) -> Optional[list[tuple[int, int, int]]]:
        """Per item (y0, x0, side) of the upsampler window, or None for the whole image."""
        size, ratio = self.image_size, self.image_size // self.base_image_size
        if self.upsample_window is None:
            return None
        ys, xs = hole[:, 0].any(dim=2), hole[:, 0].any(dim=1)  # [n, S] rows / columns with holes
        spans = []
        for r, c in zip(ys, xs):
            rr, cc = r.nonzero().flatten(), c.nonzero().flatten()
            spans.append((int(rr.min()), int(rr.max()) + 1, int(cc.min()), int(cc.max()) + 1) if len(rr) else (0, 1, 0, 1))
        need = max(max(y1 - y0, x1 - x0) for y0, y1, x0, x1 in spans) + 32
        side = max(self.upsample_window, -(-need // 32) * 32)
        if side >= size:
            return None
        boxes = []
        for y0, y1, x0, x1 in spans:
            top = min(max((y0 + y1 - side) // 2, 0), size - side) // ratio * ratio
            left = min(max((x0 + x1 - side) // 2, 0), size - side) // ratio * ratio
            boxes.append((top, left, side))
        return boxes

    @classmethod
    def from_pretrained(cls, weights: str = "official", *, upsample_window: Optional[int] = None,
                        upsample_start: Optional[int] = None, base_start: Optional[int] = None,
                        ddim_eta: Optional[float] = None, **kwargs) -> "GlideInpainter":
        """Load an engine (see :meth:`_load` for ``weights`` and the other arguments);
        ``upsample_window``: see :meth:`set_upsample_window` (default None: whole image);
        ``upsample_start``: see :meth:`set_upsample_start` (default None: from pure noise);
        ``base_start``: see :meth:`set_base_start` (default None: from pure noise);
        ``ddim_eta``: see :meth:`set_ddim` (default None: ancestral sampling, as the original)."""
        engine = cls._load(weights, **kwargs).set_upsample_window(upsample_window).set_ddim(ddim_eta)
        if base_start is not None:
            engine.set_base_start(base_start)
        if upsample_start is not None:
            engine.set_upsample_start(upsample_start)
        return engine

    def check_trained_timesteps(self) -> None:
        """Refuse to sample a model the way it was not trained for (called by :meth:`inpaint`):
        a weights folder trained with ``max_t`` (:mod:`skinlib.glide.finetune`) must be sampled
        from a start at or below it (``set_base_start`` / ``set_upsample_start``), and one
        trained with ``loss_region="hole"`` with DDIM steps (``set_ddim``): its variance output
        was not trained outside the hole, and ancestral steps would use it there."""
        for stage, key in (("base", "base"), ("upsample", "upsampler")):
            info = self.identity.get(key)
            info = info if isinstance(info, dict) else {}
            max_t = info.get("max_t")
            top = int(getattr(self, f"{stage}_diffusion").timestep_map[-1])
            if max_t is not None and top > int(max_t):
                raise ValueError(
                    f"the {key} model of {self.identity.get('weights')} was trained on timesteps 0..{max_t} "
                    f"only (max_t), but sampling would start at t = {top}: start at {max_t} or lower "
                    f"(set_{stage}_start / from_pretrained({stage}_start=...); python -m skinlib.generate "
                    f"--{stage}-start; notebook 04: small_{stage}_start), or train it without max_t")
            if info.get("loss_region") == "hole" and self.ddim_eta is None:
                raise ValueError(
                    f"the {key} model of {self.identity.get('weights')} was trained with loss_region='hole' "
                    f"(its variance output is untrained outside the hole), but sampling uses ancestral steps: "
                    f"use DDIM (set_ddim(0.0) / from_pretrained(ddim_eta=0.0); python -m skinlib.generate "
                    f"--ddim-eta 0; notebook 04: small_ddim_eta = 0.0)")

    @classmethod
    def _load(cls, weights: str = "official", *, device=None, dtype=None, cache_dir=None,
                        base_respacing: str = "100", upsample_respacing: str = "fast27",
                        seed: int = 0, download: bool = True, progress: bool = True) -> "GlideInpainter":
        """weights: "official" (OpenAI base_inpaint.pt + upsample_inpaint.pt from the cache,
        downloaded when missing; offline -> CheckpointUnavailableError), a local folder holding
        those two files, a weights folder written by :mod:`skinlib.glide.finetune` (its
        ``glide_options.json`` gives each model's options; strict key/shape and sha256 checks,
        corrupt or mismatched -> CheckpointInvalidError), or "tiny-random" (tiny configs with random weights seeded by ``seed``,
        for tests/smoke; never a fallback). device: default cuda > mps > cpu; dtype: default
        float16 on CUDA, else float32; "auto" adds bfloat16 on CPUs with native bf16 (see
        :func:`choose_dtype`); bfloat16 on a CPU without it runs, slower than float32, and warns."""
        device = torch.device(device) if device is not None else _default_device()
        requested = dtype
        info = cpu.cpu_info()
        dtype = choose_dtype(dtype, device.type, info["native_bf16"])
        if requested == "auto":
            log.info("GLIDE dtype auto -> %s on %s (CPU: %s)", str(dtype).replace("torch.", ""), device,
                     cpu.describe(info))
        cpu.warn_if_slow_bf16(dtype, device, "GLIDE engine", info)
        tokenizer = load_tokenizer()
        if weights == "tiny-random":
            base = random_model(configs.TINY_RANDOM_BASE, seed)
            up = random_model(configs.TINY_RANDOM_UPSAMPLE, seed + 1000)
            base, up = (_prepare(m.to(device), dtype) for m in (base, up))
            identity = {"weights": "tiny-random", "base": f"tiny-random seed {seed}",
                        "upsampler": f"tiny-random seed {seed + 1000}",
                        "base_options": dict(base.options), "upsample_options": dict(up.options)}
            log.warning("GLIDE weights: tiny-random (seed %d) - RANDOM, UNTRAINED models for tests and "
                        "smoke runs; their outputs are not real inpaintings", seed)
            return cls(base, up, tokenizer, base_respacing=base_respacing,
                       upsample_respacing=upsample_respacing, is_random=True, identity=identity)
        folder = None if weights == "official" else weights
        if folder is not None and not str(folder).strip():
            raise ValueError("weights must be 'official', 'tiny-random' or a folder path")
        meta = checkpoints.read_weights_json(folder) if folder is not None else {}
        if meta:
            return cls._from_trained_folder(folder, meta, device=device, dtype=dtype, cache_dir=cache_dir,
                                            download=download, progress=progress, tokenizer=tokenizer,
                                            base_respacing=base_respacing, upsample_respacing=upsample_respacing)
        models, infos = [], {}
        for key, name in (("base", "base-inpaint"), ("upsampler", "upsample-inpaint")):
            try:
                model, info = checkpoints.load_model(name, folder=folder, cache_dir=cache_dir, download=download,
                                                     device=device, dtype=dtype, progress=progress)
            except checkpoints.WeightsOfflineError as e:   # name both files: the user needs both
                files = [checkpoints.checkpoint_info(n).file for n in ("base-inpaint", "upsample-inpaint")]
                raise checkpoints.WeightsOfflineError(
                    f"OpenAI's GLIDE weights are two files, {files[0]} and {files[1]}, and this machine is offline: "
                    f"put both in the cache folder {checkpoints.resolve_cache_dir(cache_dir)} (or pass a folder "
                    f"holding them as weights). {e}") from e
            models.append(_prepare(model, dtype))
            infos[key] = info
        identity = {"weights": "official" if folder is None else str(folder), "weights_kind": "official",
                    "weights_label": "OpenAI's GLIDE (official weights)", **infos}
        log.info("GLIDE weights: %s (%s sha256 %s, %s sha256 %s)", identity["weights"],
                 infos["base"]["file"], infos["base"]["sha256"][:12],
                 infos["upsampler"]["file"], infos["upsampler"]["sha256"][:12])
        return cls(models[0], models[1], tokenizer, base_respacing=base_respacing,
                   upsample_respacing=upsample_respacing, is_random=False, identity=identity)

    @classmethod
    def _from_trained_folder(cls, folder, meta: dict, *, device, dtype, cache_dir, download, progress,
                             tokenizer, base_respacing: str, upsample_respacing: str) -> "GlideInpainter":
        """A weights folder written by :mod:`skinlib.glide.finetune` (``glide_options.json``)."""
        entries = meta["models"]
        missing = [k for k in ("base", "upsampler") if k not in entries]
        if missing:
            raise checkpoints.CheckpointUnavailableError(
                f"{folder} holds no {' and no '.join(missing)} model ({checkpoints.OPTIONS_FILE} lists "
                f"{sorted(entries)}): train it with python -m skinlib.glide.finetune --out {folder} --kind "
                f"{missing[0]}, or record that OpenAI's is used (finetune.mark_official)")
        models, infos = [], {}
        for key in ("base", "upsampler"):
            model, info = checkpoints.load_folder_model(folder, key, entries[key], cache_dir=cache_dir,
                                                        download=download, device=device, dtype=dtype,
                                                        progress=progress)
            models.append(_prepare(model, dtype))
            infos[key] = info
        kind, label = checkpoints.weights_label(entries)
        identity = {"weights": str(folder), "weights_kind": kind, "weights_label": label, **infos}
        log.info("GLIDE weights: %s (%s)", folder, label)
        return cls(models[0], models[1], tokenizer, base_respacing=base_respacing,
                   upsample_respacing=upsample_respacing, is_random=False, identity=identity)

    @torch.no_grad()
    def inpaint(self, images: torch.Tensor, keep_mask: torch.Tensor, prompts, seeds: Sequence[int], *,
                guidance_scale: float = 5.0, upsample_temp: float = 0.997, progress: bool = False,
                base_callback=None, upsample_callback=None) -> torch.Tensor:
        """images float [N, 3, 256, 256] in [-1, 1]; keep_mask float [N, 1, 256, 256] in [0, 1],
        1 = keep (known pixel), 0 = synthesise (binarised at 0.5); prompts: str or N str;
        seeds: N ints - all noise of item i comes from a CPU generator seeded seeds[i].
        (256/64 are the official and tiny-random sizes; in general the upsampler's and the
        base model's ``image_size``.)

        Base stage at 64 px: image resized (bicubic, antialiased), mask min-pooled (a 64 px
        pixel is known only if all its 16 source pixels are), guidance pair in one forward,
        text encoded once per distinct prompt, known pixels re-imposed on every x0
        prediction. Upsampler at 256 px on the 8-bit-quantised base result with the
        full-resolution image and mask. ``*_callback(k, step_dict)`` see every step.
        Returns float [N, 3, 256, 256] in [-1, 1] on the CPU, known pixels equal to the input."""
        n = images.shape[0]
        size, base_size = self.image_size, self.base_image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"images must be [N, 3, {size}, {size}], got {tuple(images.shape)}")
        if tuple(keep_mask.shape) != (n, 1, size, size):
            raise ValueError(f"keep_mask must be [N, 1, {size}, {size}] with N = {n}, got {tuple(keep_mask.shape)}")
        if float(keep_mask.min()) < 0 or float(keep_mask.max()) > 1:
            raise ValueError("keep_mask values must lie in [0, 1] (1 = keep)")
        if float(images.min()) < -1.0001 or float(images.max()) > 1.0001:
            raise ValueError("images must be scaled to [-1, 1]")
        self.check_trained_timesteps()
        prompts = [prompts] * n if isinstance(prompts, str) else list(prompts)
        if len(prompts) != n or len(seeds) != n:
            raise ValueError(f"need {n} prompts and {n} seeds, got {len(prompts)} and {len(seeds)}")
        if self.is_random:
            log.warning("%s: inpainting %d image(s) with RANDOM weights", self.name, n)

        dev = self.device
        images = images.float().clamp(-1, 1).to(dev)
        mask_full = (keep_mask.float() >= 0.5).float().to(dev)
        mask_base = 1 - F.max_pool2d(1 - mask_full, kernel_size=size // base_size)
        image_base = F.interpolate(images, size=(base_size, base_size), mode="bicubic", antialias=True,
                                   align_corners=False).clamp(-1, 1)
        noise = PerItemNoise.from_seeds(seeds)

        base_text = encode_prompts(self.base, self.tokenizer, prompts + [""] * n)
        base_noise = noise.draw((3, base_size, base_size), dev)
        if self.base_start is not None:  # SDEdit: a noised smooth fill of the hole
            base_noise = noised_start(self.base_diffusion, smooth_fill(image_base, mask_base, sigma=base_size / 16),
                                      base_noise)
        base_out = sample_base_inpaint(
            self.base, self.base_diffusion, base_text, image_base * mask_base, mask_base,
            guidance_scale=guidance_scale, initial_noise=base_noise,
            noise=noise, progress=progress, callback=base_callback, ddim_eta=self.ddim_eta,
        )
        up_text = encode_prompts(self.upsampler, self.tokenizer, prompts)
        low_res = quantize_8bit(base_out)
        boxes = self._window_boxes(mask_full < 0.5)
        if boxes is None:
            up_images, up_mask = images, mask_full
        else:  # the upsampler sees a window around each hole (set_upsample_window)
            ratio = size // base_size
            side = boxes[0][2]
            up_images = torch.stack([im[:, y:y + side, x:x + side] for im, (y, x, _) in zip(images, boxes)])
            up_mask = torch.stack([m[:, y:y + side, x:x + side] for m, (y, x, _) in zip(mask_full, boxes)])
            low_res = torch.stack([lr[:, y // ratio:(y + side) // ratio, x // ratio:(x + side) // ratio]
                                   for lr, (y, x, _) in zip(low_res, boxes)])
        up_noise = noise.draw(tuple(up_images.shape[1:]), dev) * upsample_temp
        if self.upsample_start is not None:  # SDEdit: the noised upsample of the base result
            up_noise = noised_start(self.upsample_diffusion, upsample_guess(up_images, up_mask, low_res), up_noise)
        out = sample_upsample_inpaint(
            self.upsampler, self.upsample_diffusion, up_text, up_images * up_mask, up_mask,
            low_res, initial_noise=up_noise, noise=noise, progress=progress,
            callback=upsample_callback, ddim_eta=self.ddim_eta,
        )
        if boxes is not None:
            full = images.clone()
            for i, (y, x, side) in enumerate(boxes):
                full[i, :, y:y + side, x:x + side] = out[i]
            out = full
        out = torch.where(mask_full.bool(), images, out.clamp(-1, 1))
        return out.cpu()
