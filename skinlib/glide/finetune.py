"""Training GLIDE's two inpainting models on a crops folder: fine-tuning OpenAI's checkpoints
(GPU) or training a small GLIDE-architecture model from scratch (CPU).

    python -m skinlib.glide.finetune --crops runs/demo/crops --out runs/demo/glide/model \\
        --kind both --model small --init scratch --epochs 5

One call of :func:`train` trains one model (``kind`` "base": the 64 px text-guided inpainter;
"upsampler": the 64->256 px inpainting upsampler) with the models' own objective
(:mod:`skinlib.glide.losses`: L_simple + 0.001·L_vlb with learned variance; cosine schedule
for the base model, linear for the upsampler, 1000 steps), conditioned as at inference:

* a random keep-mask per example (:mod:`skinlib.glide.masks`: the study's squares, boxes,
  strokes) on the base model's 64 px grid; ``inpaint_image = image * mask``; the upsampler
  also gets the 8-bit 64 px image as ``low_res`` and may be trained on random patches
  (``patch_size``: it is fully convolutional; 16x cheaper at 64 px patches of 256 px crops);
* the text ``prompt`` (``{disease}`` in it is replaced by the crop's disease), replaced by the
  empty prompt with probability ``p_uncond`` (0.2) so classifier-free guidance keeps working;
* crops of the ``split`` side (default "train") of notebook 01's patient split only.

Two options shape the objective for a model trained from scratch on a CPU budget (both off by
default, recorded in the checkpoint and ``glide_options.json``): ``loss_region="hole"`` scores
the loss on the pixels to synthesise only (:mod:`skinlib.glide.losses`; upsampler patches are
then centred near a hole pixel), and ``max_t`` draws timesteps from 0..max_t only, for a model
that is always sampled from an SDEdit start at or below max_t (the pipeline refuses to sample
it from higher up). Notebook 04's small model uses both (250 base / 20 upsampler): on the
demo crops its fills lost their colour speckle and most of their seam error
(``other/docs/glide-training.md``).

``out_dir`` is a *weights folder* that :meth:`GlideInpainter.from_pretrained(out_dir)
<skinlib.glide.pipeline.GlideInpainter.from_pretrained>` loads: the EMA weights in the
released checkpoints' state-dict format (``base_inpaint.pt`` / ``upsample_inpaint.pt``, the
same keys) plus ``glide_options.json`` (options and provenance of each model: init, steps,
data hash, split). Training state lives in ``out_dir/train_<kind>/``: ``checkpoint.pt``
(atomic, every ``checkpoint_every`` steps and at the end; resuming reproduces an
uninterrupted run exactly on CPU, also from inside an epoch; a resume with other settings, crops
or numerics — device type, autocast dtype: :mod:`skinlib.training` — is refused, the AMP loss
scaler's state restored), ``losses.csv``, ``losses.png`` and one sample-inpainting
figure per epoch in ``samples/``. The step loop, loss log and resume are :mod:`skinlib.training`'s,
shared with the baselines' training (:func:`_train_step` is GLIDE's step). AMP on CUDA (bfloat16,
or float16 with a loss scaler; on a CPU only when asked: ``amp="auto"`` or ``"bf16"``, see
:func:`choose_autocast`), a NaN/inf loss stops with :class:`skinlib.errors.NonFiniteLossError`,
one tqdm bar with ETA.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from .. import cpu
from .. import io as skio
from ..data.dataset import crops_content_sha256, list_crop_rows, load_crop
from ..errors import CheckpointError
from ..eta import FirstUnitEstimate
from ..training import LossLog, numerics, resolve_device, restore_run, rng_state, run_steps, timed_first_step
from . import checkpoints, configs
from .checkpoints import OPTIONS_FILE, SMALL_LABEL, WEIGHTS_FORMAT, read_weights_json
from .diffusion import GaussianDiffusion, PerItemNoise
from .losses import HybridLoss
from .masks import DEFAULT_PROBS, random_keep_masks
from .pipeline import (encode_prompts, noised_start, random_model, sample_base_inpaint,
                       sample_upsample_inpaint, smooth_fill, upsample_guess)
from .tokenizer import load_tokenizer
from .unet import GlideUNet

FORMAT = "skinlib-glide-train-v1"
CHECKPOINT = "checkpoint.pt"
LOSSES = "losses.csv"
KINDS = {"base": "base-inpaint", "upsampler": "upsample-inpaint"}
LOSS_REGIONS = ("image", "hole")
AMP_MODES = (True, False, "auto", "bf16")
DEFAULT_PROMPT = "an image of measles on dark skin"

#: settings that shape the trajectory: a resumed run must use the checkpoint's values
RESUME_KEYS = ("model", "init", "batch_size", "lr", "weight_decay", "ema_rate", "grad_clip", "prompt",
               "p_uncond", "mask_probs", "patch_size", "low_res_size", "max_images", "split", "seed",
               "flip", "loss_region", "max_t")
#: settings added after checkpoints were first written, with the value those checkpoints used
ADDED_RESUME_KEYS = {"loss_region": "image", "max_t": None}


@dataclass
class FinetuneConfig:
    """Settings of :func:`train` (plain types; stored in the checkpoint and weights JSON)."""

    model: str = "small"             # named config in configs.TRAIN_CONFIGS: small | official | tiny | fixture-tiny
    init: str = "scratch"            # "scratch" (seeded random init) or "official" (OpenAI's checkpoint)
    official_folder: Optional[str] = None  # folder holding base_inpaint.pt / upsample_inpaint.pt (else the cache)
    cache_dir: Optional[str] = None  # checkpoint cache folder for init="official"
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-4                 # AdamW learning rate (GLIDE fine-tuning: 1e-5 .. 1e-4)
    weight_decay: float = 0.0
    ema_rate: float = 0.9999         # EMA decay, warmed up as min(rate, (1 + step) / (10 + step))
    grad_clip: Optional[float] = 1.0  # max gradient norm (None: off)
    prompt: str = DEFAULT_PROMPT     # "{disease}" is replaced by the crop's disease
    p_uncond: float = 0.2            # probability of the empty prompt (classifier-free guidance)
    mask_probs: Tuple[float, float, float] = DEFAULT_PROBS  # square / box / stroke
    patch_size: Optional[int] = None  # upsampler: train on random patches of this many px
    low_res_size: Optional[int] = None  # upsampler input size; None: image_size // 4
    max_images: Optional[int] = None  # use a seeded random subset of this many crops
    split: Optional[str] = "train"   # crops of this patient-split side; None: every crop (recorded)
    flip: bool = True                # random horizontal flips
    loss_region: str = "image"       # "image": every pixel (as OpenAI trained); "hole": only the pixels to synthesise
    max_t: Optional[int] = None      # train on timesteps 0..max_t only (None: all); sampling must then start at <= max_t
    seed: int = 0
    checkpoint_every: int = 200      # steps
    sample_every: int = 1            # epochs between sample figures and loss plots (0: never)
    n_samples: int = 4
    sample_respacing: str = ""       # "": "25" (base) / "10" (upsampler)
    guidance: float = 5.0            # guidance scale of the base-model samples
    log_every: int = 10
    amp: bool | str = True           # mixed precision: True (CUDA only), False, "auto", "bf16" (choose_autocast)
    device: str = "auto"
    max_steps: Optional[int] = None  # stop (with a checkpoint) after this many steps in total
    progress: bool = True


@dataclass
class FinetuneResult:
    kind: str
    out_dir: Path
    run_dir: Path
    weights: Path
    step: int
    total_steps: int
    resumed_from: int
    losses: List[Dict[str, float]] = field(default_factory=list)
    seconds: float = float("nan")


# ----------------------------------------------------------------------------- model & data
def model_options(config_name: str, kind: str) -> dict:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    if config_name not in configs.TRAIN_CONFIGS:
        raise ValueError(f"unknown model config {config_name!r}; known: {sorted(configs.TRAIN_CONFIGS)}")
    base, up = configs.TRAIN_CONFIGS[config_name]
    return configs.complete_options(base if kind == "base" else up)


def initial_model(cfg: FinetuneConfig, kind: str) -> tuple[GlideUNet, dict]:
    """The model to train and a description of its initial weights."""
    options = model_options(cfg.model, kind)
    if cfg.init == "scratch":
        return random_model(options, cfg.seed), {"init": "scratch", "seed": cfg.seed}
    if cfg.init == "official":
        name = KINDS[kind]
        if configs.CHECKPOINTS[name].options != options and cfg.model != "official":
            raise ValueError(f"init='official' needs model='official' (the released architecture), got {cfg.model!r}")
        state, info = checkpoints.fetch_state_dict(name, folder=cfg.official_folder, cache_dir=cfg.cache_dir)
        model = checkpoints.model_from_state_dict(configs.CHECKPOINTS[name].options, state)
        return model, {"init": "official", "file": info["file"], "sha256": info["sha256"]}
    raise ValueError(f"init must be 'scratch' or 'official', got {cfg.init!r}")


def select_rows(crops_dir: Path, split: Optional[str], max_images: Optional[int], seed: int) -> list[dict]:
    """Crops manifest rows to train on: the ``split`` side (error without a split column), then a
    seeded random subset of ``max_images`` (kept in manifest order)."""
    rows = list_crop_rows(crops_dir, split)
    if max_images is not None and max_images < len(rows):
        if max_images < 1:
            raise ValueError(f"max_images={max_images} must be >= 1 or None")
        keep = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:max_images]
        rows = [rows[i] for i in sorted(keep.tolist())]
    return rows


def data_sha256(crops_dir, split: Optional[str], max_images: Optional[int], seed: int) -> str:
    """The ``data_sha256`` :func:`train` records: content hash of the crops it trains on
    (:func:`select_rows`); the evaluation recomputes it on the current train split."""
    return crops_content_sha256(crops_dir, select_rows(Path(crops_dir), split, max_images, seed))


def to_base_resolution(images: torch.Tensor, size: int) -> torch.Tensor:
    """[N, 3, S, S] in [-1, 1] -> [N, 3, size, size], as the pipeline resizes for its base stage."""
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bicubic", antialias=True,
                         align_corners=False).clamp(-1, 1)


def _u8(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def _f(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 127.5 - 1.0


def load_images(crops_dir: Path, rows: list[dict], size: int, low_res_size: Optional[int],
                progress: bool) -> tuple[torch.Tensor, Optional[torch.Tensor], list[str]]:
    """uint8 images [N, 3, size, size], uint8 low-res [N, 3, l, l] (8-bit, as the base stage
    hands them to the upsampler) or None, and each crop's disease."""
    from tqdm.auto import tqdm

    hi, lo, diseases = [], [], []
    for row in tqdm(rows, desc="loading crops", disable=not progress, leave=False):
        src, _, _ = load_crop(crops_dir, row, 256 if low_res_size else None)
        img = to_base_resolution(src[None], size)[0]
        hi.append(_u8(img))
        if low_res_size:
            lo.append(_u8(to_base_resolution(src[None], low_res_size)[0]))
        diseases.append((row.get("disease") or "").replace("_", " "))
    return torch.stack(hi), (torch.stack(lo) if lo else None), diseases


# ----------------------------------------------------------------------------- checkpoints
def load_train_checkpoint(path) -> dict:
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"Training checkpoint {path} cannot be read ({type(exc).__name__}: "
                              f"{str(exc)[:200]}); it is truncated or corrupt. Delete it to restart "
                              f"training, or replace it with an intact copy.") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a skinlib GLIDE training checkpoint ({FORMAT!r}).")
    return state


def _check_resume(state: dict, path: Path, kind: str, cfg: dict, data_id: dict) -> None:
    fresh = f"or start afresh: another out_dir, resume=False, or delete {path}"
    if state["kind"] != kind:
        raise CheckpointError(f"{path} trains the {state['kind']} model, not the {kind}: {fresh}.")
    saved = {k: state["config"].get(k, ADDED_RESUME_KEYS.get(k)) for k in RESUME_KEYS}
    diffs = [f"{k}: checkpoint {saved[k]!r}, now {cfg.get(k)!r}" for k in RESUME_KEYS
             if json.dumps(saved[k]) != json.dumps(cfg.get(k))]
    if diffs:
        raise CheckpointError(f"{path} was trained with other settings ({'; '.join(diffs)}); exact "
                              f"resume needs the same values: set them as in the checkpoint, {fresh}.")
    diffs = [f"{k}: checkpoint {state['data'].get(k)!r}, now {data_id.get(k)!r}" for k in data_id
             if state["data"].get(k) != data_id.get(k)]
    if diffs:
        raise CheckpointError(f"{path} was trained on other crops ({'; '.join(diffs)}): pass the same "
                              f"crops, {fresh}.")


def _write_weights(out_dir: Path, kind: str, state: dict, entry: dict) -> Path:
    file = configs.CHECKPOINTS[KINDS[kind]].file
    path = out_dir / file
    skio.save_torch(path, state)
    entry = dict(entry, file=file, sha256=skio.sha256_file(path))
    meta = read_weights_json(out_dir) or {"format": WEIGHTS_FORMAT, "models": {}}
    meta["models"][kind] = entry
    skio.save_json(out_dir / OPTIONS_FILE, meta)
    return path


def mark_official(out_dir, kind: str) -> None:
    """Record in ``out_dir``'s weights JSON that model ``kind`` is OpenAI's released one (loaded
    from the cache or ``weights`` folder), e.g. when only the base model was fine-tuned."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = read_weights_json(out_dir) or {"format": WEIGHTS_FORMAT, "models": {}}
    meta["models"][kind] = {"official": True}
    skio.save_json(out_dir / OPTIONS_FILE, meta)


# ----------------------------------------------------------------------------- sampling figure
def figure_diffusion(options: dict, respacing: str, start: Optional[int]) -> GaussianDiffusion:
    """The sample figures' diffusion: ``respacing`` over the whole schedule, or over 0..start
    (a numeric respacing is capped at the start + 1 steps such a schedule has)."""
    if start is not None and respacing.isdigit():
        respacing = str(min(int(respacing), start + 1))
    try:
        return GaussianDiffusion.create(options["noise_schedule"], int(options["diffusion_steps"]), respacing,
                                        start=start)
    except ValueError as exc:
        raise ValueError(f"sample_respacing={respacing!r} does not fit the sample figures' schedule "
                         f"(start {start}): {exc}; pass another sample_respacing, e.g. a number") from exc


@torch.no_grad()
def sample_figure(model: GlideUNet, kind: str, tokenizer, images: torch.Tensor, low_res: Optional[torch.Tensor],
                  prompt: str, respacing: str, guidance: float, seed: int = 0,
                  start: Optional[int] = None, ddim_eta: Optional[float] = None) -> torch.Tensor:
    """Inpaint the centre square (15/64 of the side) of each image with ``model``; returns a
    uint8 grid [3, H', W']: row 1 masked input, row 2 inpainting, row 3 original. ``start``:
    sample from that timestep (a model trained with ``max_t``), starting from the noised smooth
    fill (base) or the noised upsample of ``low_res`` (upsampler), as the pipeline does;
    ``ddim_eta``: DDIM steps (None: ancestral)."""
    from torchvision.utils import make_grid

    model.eval()
    dev = next(model.parameters()).device
    n, size = images.shape[0], images.shape[-1]
    grid = low_res.shape[-1] if low_res is not None else size
    s = round(15 / 64 * grid)
    m = torch.ones(1, 1, grid, grid)
    m[..., (grid - s) // 2:(grid + s) // 2, (grid - s) // 2:(grid + s) // 2] = 0
    mask = F.interpolate(m, size=(size, size), mode="nearest").expand(n, 1, size, size).to(dev)
    x0 = images.to(dev)
    noise = PerItemNoise.from_seeds([seed + i for i in range(n)])
    diffusion = figure_diffusion(model.options, respacing, start)
    init = noise.draw((3, size, size), dev) * (1.0 if kind == "base" else 0.997)
    if start is not None:  # SDEdit, as the pipeline starts such a model
        guess = smooth_fill(x0, mask, sigma=size / 16) if kind == "base" else upsample_guess(x0, mask, low_res.to(dev))
        init = noised_start(diffusion, guess, init)
    if kind == "base":
        text = encode_prompts(model, tokenizer, [prompt] * n + [""] * n)
        out = sample_base_inpaint(model, diffusion, text, x0 * mask, mask, guidance_scale=guidance,
                                  initial_noise=init, noise=noise, ddim_eta=ddim_eta)
    else:
        text = encode_prompts(model, tokenizer, [prompt] * n)
        out = sample_upsample_inpaint(model, diffusion, text, x0 * mask, mask, low_res.to(dev),
                                      initial_noise=init, noise=noise, ddim_eta=ddim_eta)
    out = torch.where(mask.bool(), x0, out.clamp(-1, 1))
    rows = torch.cat([x0 * mask + (1 - mask) * 0.0, out, x0]).cpu()
    return make_grid(((rows + 1) * 127.5).round().clamp(0, 255).to(torch.uint8), nrow=n, padding=2)


# ----------------------------------------------------------------------------- training loop
def _check_config(cfg: FinetuneConfig) -> None:
    for key in ("epochs", "batch_size", "checkpoint_every", "log_every", "n_samples"):
        v = getattr(cfg, key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"FinetuneConfig.{key}={v!r} must be an integer >= 1")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise ValueError(f"FinetuneConfig.lr={cfg.lr!r} must be a positive number")
    if not 0 <= cfg.p_uncond <= 1:
        raise ValueError(f"FinetuneConfig.p_uncond={cfg.p_uncond!r} must lie in [0, 1]")
    if not 0 <= cfg.ema_rate < 1:
        raise ValueError(f"FinetuneConfig.ema_rate={cfg.ema_rate!r} must lie in [0, 1)")
    if cfg.loss_region not in LOSS_REGIONS:
        raise ValueError(f"FinetuneConfig.loss_region={cfg.loss_region!r} must be one of {LOSS_REGIONS}")
    if not (isinstance(cfg.amp, bool) or cfg.amp in ("auto", "bf16")):
        raise ValueError(f"FinetuneConfig.amp={cfg.amp!r} must be one of {AMP_MODES}")


def choose_autocast(amp, device_type: str, native_bf16: bool, cuda_bf16: bool) -> Optional[torch.dtype]:
    """The autocast dtype of training (None: plain float32). ``amp``: True (the default): on CUDA
    bfloat16 where ``cuda_bf16`` (the GPU supports it), else float16 with a loss scaler; float32
    on a CPU, where bf16 is slower than fp32 unless the CPU has native bf16; "auto": as True on
    CUDA, and on a CPU bfloat16 only where ``native_bf16`` (:func:`skinlib.cpu.cpu_info`);
    "bf16": bfloat16 on CUDA (if supported) and CPU; False: float32. Other devices: float32."""
    if amp is False or device_type not in ("cuda", "cpu"):
        return None
    if device_type == "cuda":
        if amp == "bf16" and not cuda_bf16:
            raise ValueError("amp='bf16': this GPU does not support bfloat16; use amp=True (float16 with a loss scaler)")
        return torch.bfloat16 if cuda_bf16 else torch.float16
    if amp == "bf16" or (amp == "auto" and native_bf16):
        return torch.bfloat16
    return None


def _dtype_name(dtype: Optional[torch.dtype]) -> Optional[str]:
    return None if dtype is None else str(dtype).replace("torch.", "")


def _prompts(template: str, diseases: list[str], drop: torch.Tensor) -> list[str]:
    return ["" if d else template.replace("{disease}", dis or "skin disease") for dis, d in zip(diseases, drop.tolist())]


def train(kind: str, crops_dir, out_dir, config: Optional[FinetuneConfig] = None, *, resume: bool = True,
          log=print, **overrides) -> FinetuneResult:
    """Train the ``kind`` ("base" / "upsampler") model on ``crops_dir`` into the weights folder
    ``out_dir`` (see the module docstring); resumes from ``out_dir/train_<kind>/checkpoint.pt``
    unless ``resume=False``. ``config`` fields can be overridden by keyword."""
    from tqdm.auto import tqdm

    cfg = dataclasses.replace(config or FinetuneConfig(), **overrides)
    cfg.mask_probs = tuple(float(p) for p in cfg.mask_probs)
    _check_config(cfg)
    crops_dir, out_dir = Path(crops_dir), Path(out_dir)
    run_dir = out_dir / f"train_{kind}"
    options = model_options(cfg.model, kind)
    size = int(options["image_size"])
    low_res_size = None
    if options["super_res"]:
        low_res_size = cfg.low_res_size or size // 4
        if size % low_res_size:
            raise ValueError(f"low_res_size {low_res_size} does not divide the upsampler's {size} px")
    patch = cfg.patch_size if options["super_res"] else None
    ratio = size // low_res_size if low_res_size else 1
    if patch is not None and (patch % ratio or not ratio <= patch <= size):
        raise ValueError(f"patch_size={patch} must be a multiple of {ratio} between {ratio} and {size}")
    grid = low_res_size or size  # masks are drawn on the base model's grid
    steps_t = int(options["diffusion_steps"])
    if cfg.max_t is not None:
        if isinstance(cfg.max_t, bool) or int(cfg.max_t) != cfg.max_t or not 1 <= int(cfg.max_t) < steps_t:
            raise ValueError(f"max_t={cfg.max_t!r} must be an integer in 1..{steps_t - 1} (None: all timesteps)")
        cfg.max_t = int(cfg.max_t)

    rows = select_rows(crops_dir, cfg.split, cfg.max_images, cfg.seed)
    n = len(rows)
    if cfg.batch_size > n:
        raise ValueError(f"batch_size={cfg.batch_size} is larger than the {n} crops selected from {crops_dir} "
                         f"(split={cfg.split!r}): lower batch_size or add crops.")
    data_id = {"n_images": n, "data_sha256": crops_content_sha256(crops_dir, rows),
               "trained_on_split": cfg.split or "all"}
    cfg_dict = json.loads(json.dumps(dataclasses.asdict(cfg)))
    device = resolve_device(cfg.device)
    cuda = device.type == "cuda"
    ckpt_path = run_dir / CHECKPOINT
    state = None
    if resume and ckpt_path.is_file():
        state = load_train_checkpoint(ckpt_path)
        _check_resume(state, ckpt_path, kind, cfg_dict, data_id)
    elif run_dir.exists():
        _clear_run(run_dir, log)

    if state is not None:  # the checkpoint holds the weights: no need to fetch the initial ones
        model = random_model(options, 0) if cfg.init == "scratch" else checkpoints.model_from_state_dict(options, state["model"])
        init_info = state["init_info"]
    else:
        model, init_info = initial_model(cfg, kind)
    model = model.float().to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    params = [p for p in model.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    cpu_info = cpu.cpu_info()
    autocast = choose_autocast(cfg.amp, device.type, cpu_info["native_bf16"], cuda and torch.cuda.is_bf16_supported())
    cpu.warn_if_slow_bf16(autocast, device, "GLIDE training", cpu_info)
    amp, amp_dtype = autocast is not None, autocast or torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and amp and amp_dtype == torch.float16)
    numerics_now = numerics(device, amp_dtype if amp else None)
    loss_fn = HybridLoss(options["noise_schedule"], int(options["diffusion_steps"]))
    tokenizer = load_tokenizer()
    gen = torch.Generator().manual_seed(cfg.seed)

    per_epoch = n // cfg.batch_size
    total = cfg.epochs * per_epoch
    stop = total if cfg.max_steps is None else min(total, cfg.max_steps)
    step, rows_log = 0, []
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            opt.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{ckpt_path} does not fit the {cfg.model} {kind} model: {str(exc)[:300]}. "
                                  f"Delete it (or use another out_dir) to start afresh.") from exc
        step, rows_log = restore_run(
            state, ckpt_path, stop=stop, numerics_now=numerics_now, saved_config=state["config"], scaler=scaler,
            fresh=f"or delete {run_dir} to train afresh", losses_csv=run_dir / LOSSES, cuda=cuda, generator=gen,
            ask="max_steps / small_steps / small_upsample_steps")
    else:
        torch.manual_seed(cfg.seed)
    resumed_from = step
    run_dir.mkdir(parents=True, exist_ok=True)
    skio.save_json(run_dir / "config.json", {"kind": kind, "options": options, "config": cfg_dict,
                                             "data": data_id, "crops_dir": str(crops_dir), "init": init_info,
                                             # this session's arithmetic and the CPU it ran on (issue 21)
                                             "device": str(device), "autocast": _dtype_name(autocast),
                                             "cpu": cpu_info})

    images, low_res, diseases = load_images(crops_dir, rows, size, low_res_size, cfg.progress)
    fixed = list(range(min(cfg.n_samples, n)))
    sample_prompt = cfg.prompt.replace("{disease}", diseases[0] or "skin disease")
    respacing = cfg.sample_respacing or ("25" if kind == "base" else "10")
    if cfg.sample_every:  # fail now, not at the first figure after minutes of training
        figure_diffusion(options, respacing, cfg.max_t)
    label = (SMALL_LABEL if cfg.model == "small" and cfg.init == "scratch"
             else f"{cfg.model} GLIDE {kind} ({cfg.init} init)")
    log(f"GLIDE {kind}: {label}; {n} crops (split {cfg.split or 'all'}), {per_epoch} steps/epoch, "
        f"{stop} steps{f', resuming at {step}' if step else ''}, device {device}"
        f"{f' ({_dtype_name(amp_dtype)} autocast)' if amp else ''}")

    def save_checkpoint(step: int) -> None:
        losses.flush()
        skio.write_csv(run_dir / LOSSES, rows_log, ["step", "epoch", "lr", "loss", "mse", "vlb"])
        skio.save_torch(ckpt_path, {
            "format": FORMAT, "kind": kind, "options": options, "config": cfg_dict, "data": data_id,
            "init_info": init_info, "step": step, "model": model.state_dict(), "ema": ema.state_dict(),
            "optimizer": opt.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "numerics": numerics_now, "rng": rng_state(cuda, gen),
        })

    def epoch_outputs(epoch: int, step: int, force: bool = False) -> None:
        from ..viz import plot_losses
        import matplotlib.pyplot as plt

        if rows_log:
            skio.write_csv(run_dir / LOSSES, rows_log, ["step", "epoch", "lr", "loss", "mse", "vlb"])
        if not cfg.sample_every or (epoch % cfg.sample_every and step != total and not force):
            return
        figures_at.append(step)
        g = sample_figure(ema, kind, tokenizer, _f(images[fixed]),
                          _f(low_res[fixed]) if low_res is not None else None,
                          sample_prompt, respacing, cfg.guidance, seed=cfg.seed, start=cfg.max_t,
                          ddim_eta=0.0 if cfg.loss_region == "hole" else None)
        skio.save_png(run_dir / "samples" / f"epoch_{epoch:04d}.png", g.permute(1, 2, 0).numpy())
        if rows_log:
            fig = plot_losses(run_dir, columns=["loss", "mse", "vlb"])
            fig.suptitle(f"GLIDE {kind} training losses — {label}", fontsize=9)
            fig.savefig(run_dir / "losses.png", dpi=80)
            plt.close(fig)

    figures_at: list = []

    def train_step(idx: List[int], step: int, epoch: int):
        idx = torch.tensor(idx)
        terms = _train_step(model, ema, opt, scaler, loss_fn, tokenizer, gen, cfg, step, images[idx],
                            None if low_res is None else low_res[idx], [diseases[i] for i in idx.tolist()],
                            grid, patch, ratio, device, amp, amp_dtype)
        return {k: terms[k] for k in ("loss", "mse", "vlb")}, cfg.lr

    bar = tqdm(total=stop, initial=step, desc=f"GLIDE {kind} ({cfg.model})", unit="step",
               disable=not cfg.progress, dynamic_ncols=True)
    losses = LossLog(rows_log, lambda k, v, s, e: (
        f"GLIDE {kind}: {k} became {v} at step {s} (epoch {e}). Lower the learning rate (lr={cfg.lr:g}, e.g. "
        f"lr={cfg.lr / 4:g}){', or set amp=False' if amp else ''} and start afresh (another out_dir, or "
        f"resume=False); the last good checkpoint stays at {ckpt_path}."), bar, shown=["loss"])
    t0 = time.perf_counter()
    timed_step = timed_first_step(train_step, FirstUnitEstimate(
        max(stop - step, 1), what=f"{stop - step} steps of GLIDE {kind} ({cfg.model})", device=str(device),
        hint="lower the training steps to shorten", log=tqdm.write if cfg.progress else (lambda _: None)), device)
    try:
        step, done = run_steps(step, stop, n=n, batch_size=cfg.batch_size, seed=cfg.seed,
                               source=lambda epoch, batches: batches, train_step=timed_step, losses=losses,
                               log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
                               save_checkpoint=save_checkpoint, end_of_epoch=epoch_outputs, bar=bar)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    if not ckpt_path.exists():
        save_checkpoint(step)
    if done and (not figures_at or figures_at[-1] != step):  # figures of the final state
        epoch_outputs(-(-step // per_epoch), step, force=True)
    entry = {"options": options, "config": cfg.model, "init": init_info["init"], "init_info": init_info,
             "steps": step, "epochs": step / per_epoch, "batch_size": cfg.batch_size, "lr": cfg.lr,
             "ema_rate": cfg.ema_rate, "prompt": cfg.prompt, "p_uncond": cfg.p_uncond,
             "patch_size": patch, "crops_dir": str(crops_dir), **data_id,
             # which crops: recomputing data_sha256 on the current split needs the subset's size and seed
             "data_selection": {"max_images": cfg.max_images, "seed": cfg.seed},
             # recorded when not the defaults, so folders written before these options keep their identity
             **{k: getattr(cfg, k) for k, v in ADDED_RESUME_KEYS.items() if getattr(cfg, k) != v}}
    weights = _write_weights(out_dir, kind, ema.state_dict(), entry)
    log(f"GLIDE {kind}: {step} steps done ({done} now, {seconds:.0f} s); EMA weights -> {weights}")
    return FinetuneResult(kind, out_dir, run_dir, weights, step, total, resumed_from, rows_log, seconds)


def _train_step(model, ema, opt, scaler, loss_fn: HybridLoss, tokenizer, gen: torch.Generator,
                cfg: FinetuneConfig, step: int, images_u8, low_res_u8, diseases, grid: int,
                patch: Optional[int], ratio: int, device, amp: bool, amp_dtype) -> dict:
    """One optimisation step. Draws from ``gen`` in a fixed order: flips, t, noise, masks,
    prompt drops, patch offsets."""
    b, size = images_u8.shape[0], images_u8.shape[-1]
    x0 = _f(images_u8)
    lo = _f(low_res_u8) if low_res_u8 is not None else None
    flips = torch.rand(b, generator=gen) < 0.5
    if cfg.flip:
        x0 = torch.where(flips[:, None, None, None], x0.flip(-1), x0)
        if lo is not None:
            lo = torch.where(flips[:, None, None, None], lo.flip(-1), lo)
    t = torch.randint(0, loss_fn.num_timesteps if cfg.max_t is None else cfg.max_t + 1, (b,), generator=gen)
    out_size = patch or size
    noise = torch.randn(b, 3, out_size, out_size, generator=gen)
    mask = random_keep_masks(b, grid, gen, probs=cfg.mask_probs)
    drop = torch.rand(b, generator=gen) < cfg.p_uncond
    prompts = _prompts(cfg.prompt, diseases, drop)
    mask = F.interpolate(mask, size=(size, size), mode="nearest") if grid != size else mask
    if patch:
        if cfg.loss_region == "hole":  # every patch must hold pixels to score
            offs = patch_offsets_on_holes(mask, patch, ratio, gen)
        else:
            offs = torch.randint(0, (size - patch) // ratio + 1, (b, 2), generator=gen) * ratio
        x0 = torch.stack([x[:, y:y + patch, z:z + patch] for x, (y, z) in zip(x0, offs.tolist())])
        mask = torch.stack([m[:, y:y + patch, z:z + patch] for m, (y, z) in zip(mask, offs.tolist())])
        lp = patch // ratio
        lo = torch.stack([x[:, y // ratio:y // ratio + lp, z // ratio:z // ratio + lp]
                          for x, (y, z) in zip(lo, offs.tolist())])
    x0, t, noise, mask = x0.to(device), t.to(device), noise.to(device), mask.to(device)
    lo = lo.to(device) if lo is not None else None
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
        text = encode_prompts(model, tokenizer, prompts)
        x_t = loss_fn.q_sample(x0, t, noise)
        out = model(x_t, t, text=text, inpaint_image=x0 * mask, inpaint_mask=mask, low_res=lo)
    terms = loss_fn(out.float(), x0, x_t, t, noise, region=1 - mask if cfg.loss_region == "hole" else None)
    scaler.scale(terms["loss"]).backward()
    if cfg.grad_clip:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    scaler.step(opt)
    scaler.update()
    decay = min(cfg.ema_rate, (1 + step) / (10 + step))
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)
    return terms


def patch_offsets_on_holes(mask: torch.Tensor, patch: int, ratio: int, gen: torch.Generator) -> torch.Tensor:
    """Top-left corners int64 [B, 2] (multiples of ``ratio``) of ``patch``-px patches of the
    keep-masks ``mask`` [B, 1, S, S] (0 = hole), each centred near a hole pixel drawn
    uniformly from ``gen``, so that every patch holds part of its example's hole."""
    size = mask.shape[-1]
    offs = []
    for m in mask[:, 0]:
        holes = (m < 0.5).nonzero()
        y, x = holes[int(torch.randint(0, len(holes), (1,), generator=gen))].tolist()
        corner = []
        for c in (y, x):
            o = min(max(c - patch // 2, 0), size - patch) // ratio * ratio
            corner.append(o + ratio if o + patch <= c else o)  # rounding down must not drop c
        offs.append(corner)
    return torch.tensor(offs, dtype=torch.long)


def _clear_run(run_dir: Path, log) -> None:
    skio.remove_files([run_dir / CHECKPOINT, run_dir / LOSSES, run_dir / "losses.png",
                       *sorted((run_dir / "samples").glob("epoch_*.png"))],
                      f"Starting afresh in {run_dir}: removing the previous run's checkpoint, losses and samples",
                      log)


# ----------------------------------------------------------------------------- command line
def main(argv: Optional[list[str]] = None) -> int:
    """``python -m skinlib.glide.finetune --crops DIR --out DIR [--kind both] ...``"""
    d = FinetuneConfig()
    p = argparse.ArgumentParser(prog="python -m skinlib.glide.finetune", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--crops", required=True, help="crops folder (notebook 01's format, with a split column)")
    p.add_argument("--out", required=True, help="weights folder (loadable with GlideInpainter.from_pretrained)")
    p.add_argument("--kind", default="both", choices=["base", "upsampler", "both"])
    p.add_argument("--model", default=d.model, choices=sorted(configs.TRAIN_CONFIGS))
    p.add_argument("--init", default=d.init, choices=["scratch", "official"])
    p.add_argument("--official-folder", default=None, help="folder holding base_inpaint.pt/upsample_inpaint.pt")
    p.add_argument("--cache-dir", default=None, help="checkpoint cache folder (init=official)")
    p.add_argument("--keep-official-upsampler", action="store_true",
                   help="with --kind base: record that the upsampler stays OpenAI's")
    for name in ("epochs", "batch_size", "checkpoint_every", "log_every", "n_samples", "sample_every", "seed"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name))
    for name in ("lr", "weight_decay", "ema_rate", "p_uncond", "guidance"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(d, name))
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="0: off")
    p.add_argument("--prompt", default=d.prompt, help='text prompt; "{disease}" = the crop\'s disease')
    p.add_argument("--patch-size", type=int, default=None, help="upsampler: train on patches of this size")
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--split", default="train", help='"train" (default), "test" or "all" (every crop; recorded)')
    p.add_argument("--sample-respacing", default=d.sample_respacing)
    p.add_argument("--device", default=d.device)
    p.add_argument("--no-amp", action="store_true", help="float32 everywhere")
    p.add_argument("--amp", default=None, choices=["auto", "bf16"],
                   help="auto: as the default on CUDA, and bf16 autocast on a CPU only where it has native bf16 "
                        "(else float32); bf16: bf16 autocast on CPU too (slower than fp32 on CPUs without native "
                        "bf16). Default: mixed precision on CUDA, float32 on a CPU")
    p.add_argument("--no-flip", action="store_true")
    p.add_argument("--max-t", type=int, default=None,
                   help="train on timesteps 0..MAX_T only (1..999; a model for SDEdit starts at or below it, as "
                        "notebook 04 samples the small model: 250 base / 20 upsampler); default: all 1000")
    p.add_argument("--loss-region", default=d.loss_region, choices=LOSS_REGIONS,
                   help='"image": loss on every pixel (as OpenAI trained the released models); "hole": only on '
                        'the pixels the model has to synthesise (what notebook 04 uses for the small model)')
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.no_amp and a.amp:
        p.error("--no-amp and --amp exclude each other")
    cfg = FinetuneConfig(
        model=a.model, init=a.init, official_folder=a.official_folder, cache_dir=a.cache_dir, epochs=a.epochs,
        batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay, ema_rate=a.ema_rate,
        grad_clip=a.grad_clip or None, prompt=a.prompt, p_uncond=a.p_uncond, patch_size=a.patch_size,
        max_images=a.max_images, split=None if a.split == "all" else a.split, flip=not a.no_flip, seed=a.seed,
        loss_region=a.loss_region, max_t=a.max_t,
        checkpoint_every=a.checkpoint_every, sample_every=a.sample_every, n_samples=a.n_samples,
        sample_respacing=a.sample_respacing, guidance=a.guidance, log_every=a.log_every, amp=False if a.no_amp else (a.amp or True),
        device=a.device, max_steps=a.max_steps, progress=not a.no_progress)
    kinds = ["base", "upsampler"] if a.kind == "both" else [a.kind]
    for kind in kinds:
        train(kind, a.crops, a.out, cfg, resume=not a.no_resume)
    if a.keep_official_upsampler and "upsampler" not in kinds:
        mark_official(a.out, "upsampler")
    print(json.dumps(read_weights_json(a.out), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())


# ----------------------------------------------------------------------------- notebook 04's choice
def official_weights_present(folder=None, cache_dir=None) -> bool:
    """True when both released checkpoint files are in ``folder`` (or the cache folder)."""
    where = Path(folder) if folder else checkpoints.resolve_cache_dir(cache_dir)
    return all((where / configs.CHECKPOINTS[n].file).is_file() for n in KINDS.values())


def prepare_weights(weights: str, crops_dir, model_dir, *, smoke: bool = False, cache_dir=None,
                    finetune_steps: int = 0, finetune_batch: int = 4, finetune_lr: float = 1e-5,
                    small_images: int = 96, small_steps: int = 300, small_upsample_steps: int = 100,
                    small_batch: int = 8, small_lr: float = 1e-3, small_base_max_t: Optional[int] = 250,
                    small_upsample_max_t: Optional[int] = 20, seed: int = 0, log=print) -> str:
    """Decide (and train) the weights of notebook 04; returns the ``weights`` argument of
    :meth:`GlideInpainter.from_pretrained`.

    * "auto": OpenAI's released weights when both files are in the cache folder, otherwise the
      small GLIDE-architecture model trained here on the run's train-split crops ("small");
    * "official" or a folder holding OpenAI's two files: those weights, fine-tuned first on the
      train-split crops for ``finetune_steps`` steps when > 0 (a GPU job; result in
      ``model_dir/finetuned``);
    * "small": train :data:`configs.SMALL_BASE` / ``SMALL_UPSAMPLE`` from scratch for
      ``small_steps`` (base) and ``small_upsample_steps`` (upsampler, on 64 px patches) steps
      on ``small_images`` crops (``model_dir/small``; resumes), with the loss on the pixels to
      synthesise only (``loss_region="hole"``) and on timesteps 0..``small_base_max_t`` /
      ``small_upsample_max_t`` only (None: all), where notebook 04 samples them;
      in ``smoke`` mode the "tiny" config for 2 steps instead (labelled as such);
    * a folder written by this module: used as it is; "tiny-random": smoke runs only.
    """
    model_dir = Path(model_dir)
    if weights == "tiny-random":
        if not smoke:
            raise ValueError('weights="tiny-random" (RANDOM weights) is for smoke runs only: use "auto", '
                             '"official", "small" or a weights folder')
        return weights
    if weights not in ("auto", "official", "small"):
        folder = Path(weights)
        if not folder.is_dir():
            raise checkpoints.CheckpointUnavailableError(
                f"weights folder {folder} does not exist (mistyped?): pass a folder holding OpenAI's "
                f"base_inpaint.pt + upsample_inpaint.pt or one written by skinlib.glide.finetune, or "
                f'weights="auto" / "official" / "small"')
        if (folder / checkpoints.OPTIONS_FILE).is_file():
            return str(folder)
        if not official_weights_present(folder):
            raise checkpoints.CheckpointUnavailableError(
                f"{folder} holds neither OpenAI's base_inpaint.pt + upsample_inpaint.pt nor a "
                f"{checkpoints.OPTIONS_FILE} written by skinlib.glide.finetune")
    if weights == "auto":
        weights = "official" if official_weights_present(cache_dir=cache_dir) else "small"
        log('weights="auto": ' + ("OpenAI's official weights are in the cache folder: using them"
                                  if weights == "official" else
                                  f"no official weights in the cache folder {checkpoints.resolve_cache_dir(cache_dir)}: "
                                  f"training a GLIDE-architecture model on this run's crops — not OpenAI's GLIDE "
                                  f"({'tiny, 2 steps: smoke run' if smoke else 'the small model'})"))
    if weights == "small":
        out = model_dir / ("tiny-smoke" if smoke else "small")
        train_small(crops_dir, out, smoke=smoke, images=small_images, steps=small_steps,
                    upsample_steps=small_upsample_steps, batch=small_batch, lr=small_lr,
                    base_max_t=small_base_max_t, upsample_max_t=small_upsample_max_t, seed=seed, log=log)
        return str(out)
    # OpenAI's weights (cache: "official"; or a folder), optionally fine-tuned
    if finetune_steps <= 0:
        return weights
    out = model_dir / "finetuned"
    cfg = FinetuneConfig(model="official", init="official", cache_dir=cache_dir,
                         official_folder=None if weights == "official" else weights, batch_size=finetune_batch,
                         epochs=10**6, max_steps=finetune_steps, lr=finetune_lr, seed=seed,
                         sample_every=10**6, checkpoint_every=500)
    for kind in KINDS:
        train(kind, crops_dir, out, cfg, log=log)
    return str(out)


def train_small(crops_dir, out, *, smoke: bool = False, images: int = 96, steps: int = 300,
                upsample_steps: int = 100, batch: int = 8, lr: float = 1e-3, base_max_t: Optional[int] = 250,
                upsample_max_t: Optional[int] = 20, loss_region: str = "hole", seed: int = 0, log=print) -> None:
    """Train notebook 04's small CPU model (base, then upsampler on 64 px patches) into ``out``;
    resumes. ``smoke``: the "tiny" config for 2 steps instead. ``loss_region`` / ``*_max_t`` are the
    options compared by ``benchmarks/ablate_glide_small.py``."""
    if smoke:
        cfg = FinetuneConfig(model="tiny", batch_size=2, max_images=4, epochs=1, max_steps=2, lr=1e-3,
                             ema_rate=0.9, n_samples=1, sample_respacing="2", seed=seed, loss_region=loss_region)
    else:
        cfg = FinetuneConfig(model="small", batch_size=batch, max_images=images, epochs=10**6,
                             max_steps=steps, lr=lr, ema_rate=0.98, n_samples=4,
                             sample_every=10**6, seed=seed, checkpoint_every=50, loss_region=loss_region)
    train("base", crops_dir, out, cfg, sample_respacing=cfg.sample_respacing or "10", log=log, max_t=base_max_t)
    train("upsampler", crops_dir, out, cfg, patch_size=64, sample_respacing=cfg.sample_respacing or "3",
          log=log, max_t=upsample_max_t, **({} if smoke else {"max_steps": upsample_steps}))


def trained_from_scratch(weights: str) -> bool:
    """True when ``weights`` is a folder whose models were all trained from scratch here (the
    small / tiny CPU models: run them with few diffusion steps and a windowed upsampler)."""
    meta = read_weights_json(weights) if weights not in ("official", "tiny-random") else {}
    entries = meta.get("models", {}).values()
    return bool(entries) and all(not e.get("official") and e.get("init") == "scratch" for e in entries)
