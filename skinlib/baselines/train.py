"""One resumable training loop for the baseline generators (DCGAN, CVAE).

The loop knows a model only through the interface in :mod:`skinlib.baselines.models` (phases, loss,
sample_noise, generate); its steps, loss log and resume run on :mod:`skinlib.training`, the core
it shares with GLIDE's training, with the model's step passed in. What it does, pytorch/examples-style:

- Adam per phase (lr, betas), optional x``lr_decay`` every ``lr_decay_every`` epochs (StepLR);
- epoch ``e`` visits the crops in the order ``torch.randperm`` draws from a generator seeded
  with (seed, e), whole batches only (``drop_last``), so a run resumed mid-epoch sees exactly
  the batches an uninterrupted run sees;
- logs every step's losses to ``run_dir/losses.csv``; saves a grid of samples from fixed noise
  after every epoch (``run_dir/grids/epoch_NNNN.png``);
- checkpoints ``run_dir/checkpoint.pt`` atomically every ``checkpoint_every`` steps and at the
  end: model, optimisers, schedulers, AMP scaler, torch RNG states, step, configs. Only tensors
  and plain types, so it loads with ``torch.load(weights_only=True)``;
- resumes from that checkpoint (``resume=True``); on CPU the resumed run equals the
  uninterrupted one exactly. The architecture, the settings that shape the trajectory, the
  numerics (device type, autocast dtype, channels_last: :mod:`skinlib.training`) and the crops
  (their content) must match the checkpoint, otherwise a :class:`CheckpointError` names the
  difference; a checkpoint beyond the steps asked for is refused, not reused;
- mixed precision on CUDA (bfloat16 where supported, else float16 with a GradScaler);
- stops with :class:`NonFiniteLossError` (step, phase, fix) when a loss becomes NaN/inf.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.dataset import crops_content_sha256
from ..errors import CheckpointError, NonFiniteLossError  # noqa: F401 (in __all__)
from ..eta import FirstUnitEstimate
from ..io import LOSSES, read_losses, remove_files, save_json, save_torch, write_csv
from ..training import LossLog, numerics, resolve_device, restore_run, rng_state, run_steps, timed_first_step
from .models import build_model, check_image_size

CHECKPOINT = "checkpoint.pt"
GRIDS = "grids"
FORMAT = "skinlib-train-v1"

#: Settings that shape the training trajectory: a resumed run must use the checkpoint's values.
RESUME_KEYS = ("batch_size", "lr", "beta1", "beta2", "lr_decay", "lr_decay_every", "seed",
               "grid_size")


@dataclass
class TrainConfig:
    """Settings of :func:`train` (plain types; stored in the checkpoint and ``config.json``)."""

    epochs: int = 25
    batch_size: int = 64
    lr: float = 2e-4             # Adam learning rate, every phase
    beta1: float = 0.5           # Adam beta1 (DCGAN: 0.5)
    beta2: float = 0.999
    lr_decay: float = 1.0        # lr multiplied by this every lr_decay_every epochs (study: 0.96)
    lr_decay_every: int = 10     # epochs
    seed: int = 0                # shuffling, fixed grid noise, and the global torch RNG at start
    checkpoint_every: int = 500  # steps (a checkpoint is also written when training stops)
    grid_size: int = 64          # samples in the per-epoch fixed-noise grid
    grid_every: int = 1          # epochs between grids
    log_every: int = 10          # steps between loss syncs / NaN checks / progress updates
    amp: bool = True             # mixed precision (CUDA only; ignored on CPU)
    channels_last: bool = True   # NHWC memory layout for convolutions (faster on CPU and GPU)
    device: str = "auto"         # "auto" = cuda if available else cpu
    cache_images: bool = True    # decode all crops once into memory (uint8) before training
    num_workers: int = 0         # DataLoader workers when cache_images=False
    max_steps: Optional[int] = None  # stop (with a checkpoint) after this many steps in total
    progress: bool = True        # tqdm progress bar


@dataclass
class TrainResult:
    """What :func:`train` did: the run folder, files, final step, losses, throughput."""

    run_dir: Path
    checkpoint: Path
    step: int
    epoch: int
    total_steps: int
    resumed_from: int
    losses: List[Dict[str, float]] = field(default_factory=list)
    images_per_second: float = float("nan")  # this call: steps incl. grids + checkpoints, not loading


# ---- checkpoints --------------------------------------------------------------------------------
def load_checkpoint(path) -> Dict[str, Any]:
    """Load a training checkpoint with ``torch.load(weights_only=True)`` onto the CPU.

    Raises FileNotFoundError when missing and :class:`CheckpointError` when the file is
    truncated/corrupt or not a skinlib training checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist: train first (notebook 02/03) "
                                f"or pass the run folder's {CHECKPOINT}.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, pickled code, ...
        raise CheckpointError(
            f"Checkpoint {path} cannot be read ({type(exc).__name__}: {str(exc)[:200]}); it is "
            f"truncated or corrupt (e.g. an interrupted copy/Drive sync). Delete it to restart "
            f"training from scratch, or replace it with an intact copy.") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a skinlib training checkpoint (format "
                              f"{FORMAT!r}): pass a checkpoint.pt written by skinlib.baselines.train.")
    return state


def load_model(path, device="cpu") -> nn.Module:
    """Rebuild the model stored in a training checkpoint, load its weights, eval mode."""
    state = load_checkpoint(path)
    model = build_model(state["model_name"], **state["model_config"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"Checkpoint {path} does not fit the {state['model_name']} "
                              f"architecture it names: {str(exc)[:300]}") from exc
    model.checkpoint_step = int(state["step"])
    model.classes = list(state.get("classes", []))
    return model.to(device).eval()


def _diff(saved: dict, now: dict, keys) -> List[str]:
    return [f"{k}: checkpoint {saved.get(k)!r}, now {now.get(k)!r}" for k in keys
            if saved.get(k) != now.get(k)]


def _fresh_run(run_dir: Path) -> str:
    return (f"or start a fresh run: use a new run_dir, pass resume=False or delete "
            f"{Path(run_dir) / CHECKPOINT}")


def _check_resume(state: dict, path: Path, model, cfg: dict, data_id: dict) -> None:
    fresh = _fresh_run(path.parent)
    if state["model_name"] != model.name:
        raise CheckpointError(f"Checkpoint {path} holds a {state['model_name']} model, not a "
                              f"{model.name}: use that run's model, {fresh}.")
    diffs = _diff(state["model_config"], model.config,
                  sorted(set(state["model_config"]) | set(model.config)))
    if diffs:
        wanted = ", ".join(f"{k}={v!r}" for k, v in state["model_config"].items())
        raise CheckpointError(
            f"Checkpoint {path} was written by a {model.name} with another architecture ("
            f"{'; '.join(diffs)}). Build the model as {model.name}({wanted}) to continue that "
            f"run, {fresh}.")
    diffs = _diff(state["train_config"], cfg, RESUME_KEYS)
    if diffs:
        raise CheckpointError(
            f"Checkpoint {path} was trained with other settings ({'; '.join(diffs)}); exact "
            f"resume needs the same values: set them as in the checkpoint, {fresh}.")
    diffs = _diff(state["data"], data_id, sorted(data_id))
    if diffs:
        raise CheckpointError(
            f"Checkpoint {path} was trained on other crops ({'; '.join(diffs)}): pass the same "
            f"crops folder, {fresh}.")


# ---- data ------------------------------------------------------------------------------------------
def check_crops(dataset, image_size: int) -> None:
    """Check that every crop of a :class:`skinlib.data.CropDataset` exists, is square and is at
    least ``image_size`` px (crops are only ever scaled down); raise with the files and the fix."""
    from PIL import Image

    root = getattr(dataset, "root", None)
    rows = getattr(dataset, "rows", None)
    if root is None or rows is None:
        return
    missing, bad = [], []
    for row in rows:
        path = Path(root) / row["image"]
        if not path.is_file():
            missing.append(path.name)
            continue
        try:
            with Image.open(path) as im:
                w, h = im.size
        except Exception as exc:
            raise ValueError(f"Crop {path} cannot be read as an image ({exc}): delete it and its "
                             f"row in {Path(root) / 'manifest.csv'}, or re-run the cropping.") from exc
        if w != h or w < image_size:
            bad.append(f"{path.name} ({w}x{h})")
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} crops listed in {Path(root) / 'manifest.csv'} are missing (e.g. "
            f"{', '.join(missing[:5])}): re-run the cropping notebook or fix the manifest.")
    if bad:
        raise ValueError(
            f"{len(bad)} crops in {root} are not square or smaller than image_size={image_size} "
            f"(e.g. {', '.join(bad[:5])}): choose a smaller image_size (64, 128 or 256) or "
            f"re-crop at >= {image_size} px (notebook 01 writes 256x256 crops).")


def _data_id(dataset) -> dict:
    rows, root = getattr(dataset, "rows", None), getattr(dataset, "root", None)
    if rows is not None and root is not None:   # a crops folder: identify the crops by content
        digest = crops_content_sha256(root, rows)[:16]
    else:   # any other dataset: identify it by what it yields (images, masks, labels)
        h = hashlib.sha256()
        for i in range(len(dataset)):
            for part in dataset[i]:
                if part is None:
                    h.update(b"none")
                    continue
                t = torch.as_tensor(part).detach().cpu().contiguous()
                h.update(f"{t.dtype}{tuple(t.shape)}".encode())
                h.update(t.numpy().tobytes())
        digest = h.hexdigest()[:16]
    return {"n_images": len(dataset), "images_sha": digest,
            "classes": list(getattr(dataset, "classes", ["unknown"])),
            "split": getattr(dataset, "split", None) or "all"}   # side of the patient split trained on


def _cache(dataset, progress: bool):
    """Decode every item once: images uint8 [N, 3, S, S], labels int64 [N]."""
    from tqdm.auto import tqdm

    images, labels = [], []
    for i in tqdm(range(len(dataset)), desc="loading crops", disable=not progress, leave=False):
        image, _mask, label = dataset[i]
        images.append(((image + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))
        labels.append(torch.as_tensor(label, dtype=torch.long))
    return torch.stack(images), torch.stack(labels)


# ---- the loop ----------------------------------------------------------------------------------------
def _check_config(cfg: TrainConfig) -> None:
    for key in ("epochs", "batch_size", "checkpoint_every", "grid_every", "log_every",
                "lr_decay_every"):
        value = getattr(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"TrainConfig.{key}={value!r} must be an integer >= 1.")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise ValueError(f"TrainConfig.lr={cfg.lr!r} must be a positive number (DCGAN: 2e-4).")
    if cfg.max_steps is not None and cfg.max_steps < 0:
        raise ValueError(f"TrainConfig.max_steps={cfg.max_steps} must be >= 0 or None.")


def train(model: nn.Module, data, run_dir, config: Optional[TrainConfig] = None, *,
          resume: bool = True, profile: Optional[dict] = None, **overrides) -> TrainResult:
    """Train ``model`` on crops, checkpointing into ``run_dir``; resume from its checkpoint.

    ``data`` is a crops folder (read as ``CropDataset(data, image_size=model.image_size)``) or a
    :class:`skinlib.data.CropDataset` (or any dataset of ``(image [3,S,S] in [-1,1], mask,
    label)`` with ``.classes``). ``config`` fields can be overridden by keyword, e.g.
    ``train(model, crops, run, epochs=5)``. With ``resume=False`` an existing checkpoint in
    ``run_dir`` is ignored and overwritten. ``profile``: the notebook's resolved profile
    (:meth:`skinlib.profiles.Resolved.record`), recorded in ``config.json``. Returns a :class:`TrainResult`.
    """
    from tqdm.auto import tqdm

    from ..data.dataset import CropDataset
    from ..viz import save_grid

    cfg = dataclasses.replace(config or TrainConfig(), **overrides)
    _check_config(cfg)
    image_size = check_image_size(model.image_size)
    run_dir = Path(run_dir)
    if isinstance(data, Dataset):
        dataset = data
        ds_size = getattr(dataset, "image_size", image_size)
        if ds_size != image_size:
            raise ValueError(f"The dataset yields {ds_size} px images but the model is "
                             f"{image_size} px: build CropDataset(crops_dir, image_size="
                             f"{image_size}) or pass the crops folder itself.")
    else:
        dataset = CropDataset(data, image_size=image_size)
    check_crops(dataset, image_size)
    n = len(dataset)
    if cfg.batch_size > n:
        raise ValueError(f"batch_size={cfg.batch_size} is larger than the {n} crops in "
                         f"{getattr(dataset, 'root', 'the dataset')}: lower batch_size to at "
                         f"most {n} or add crops.")
    classes = list(getattr(dataset, "classes", ["unknown"]))
    if model.num_classes > 1 and model.num_classes != len(classes):
        raise ValueError(f"The model is conditioned on {model.num_classes} classes but the crops "
                         f"have {len(classes)} ({classes}): build it with num_classes="
                         f"{len(classes)}.")
    data_id = _data_id(dataset)
    cfg_dict = dataclasses.asdict(cfg)

    device = resolve_device(cfg.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    model.to(device).train()
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    phases = model.phase_modules()
    optimizers = {p: torch.optim.Adam(m.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
                  for p, m in phases.items()}
    schedulers = {p: torch.optim.lr_scheduler.StepLR(o, cfg.lr_decay_every, cfg.lr_decay)
                  for p, o in optimizers.items()}
    amp = cfg.amp and cuda
    # bfloat16 on Ampere and newer; float16 with a loss scaler before (e.g. Colab's T4)
    amp_dtype = (torch.bfloat16 if amp and torch.cuda.get_device_capability(device)[0] >= 8
                 else torch.float16)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype == torch.float16)
    numerics_now = numerics(device, amp_dtype if amp else None, cfg.channels_last)

    per_epoch = n // cfg.batch_size
    total = cfg.epochs * per_epoch
    stop = total if cfg.max_steps is None else min(total, cfg.max_steps)
    fixed_noise = model.sample_noise(cfg.grid_size, torch.Generator().manual_seed(cfg.seed))
    fixed_labels = torch.arange(cfg.grid_size) % model.num_classes
    ckpt_path = run_dir / CHECKPOINT
    step, rows = 0, []
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        _check_resume(state, ckpt_path, model, cfg_dict, data_id)
        try:
            model.load_state_dict(state["model"])
            for p in optimizers:
                optimizers[p].load_state_dict(state["optimizers"][p])
                schedulers[p].load_state_dict(state["schedulers"][p])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"Checkpoint {ckpt_path} does not fit this {model.name}: "
                                  f"{str(exc)[:300]}. Use a new run_dir (or delete the "
                                  f"checkpoint) to start fresh.") from exc
        step, rows = restore_run(
            state, ckpt_path, stop=stop, numerics_now=numerics_now, saved_config=state["train_config"],
            scaler=scaler, fresh=_fresh_run(run_dir), losses_csv=run_dir / LOSSES, cuda=cuda,
            ask=f"epochs={cfg.epochs} x {per_epoch} steps/epoch"
                f"{f', max_steps={cfg.max_steps}' if cfg.max_steps is not None else ''} now; "
                f"epochs >= {-(-int(state['step']) // per_epoch)}, max_steps >= {int(state['step'])} or None")
    else:
        _clear_run(run_dir)
        torch.manual_seed(cfg.seed)
    resumed_from = step
    run_dir.mkdir(parents=True, exist_ok=True)
    save_json(run_dir / "config.json", {"model": model.name, "model_config": model.config,
                                        "train_config": cfg_dict, "data": data_id,
                                        "crops_dir": str(getattr(dataset, "root", "")), "profile": profile})

    def save_checkpoint(step: int) -> None:
        losses.flush()  # raises before saving if a pending loss is not finite
        write_csv(run_dir / LOSSES, rows, _fieldnames(rows))
        save_torch(ckpt_path, {
            "format": FORMAT, "model_name": model.name, "model_config": model.config,
            "train_config": cfg_dict, "data": data_id, "classes": classes,
            "step": step, "epoch": step // per_epoch, "steps_per_epoch": per_epoch,
            "model": model.state_dict(),
            "optimizers": {p: o.state_dict() for p, o in optimizers.items()},
            "schedulers": {p: s.state_dict() for p, s in schedulers.items()},
            "scaler": scaler.state_dict() if scaler.is_enabled() else {}, "numerics": numerics_now,
            "rng": rng_state(cuda), "fixed_noise": fixed_noise,
        })

    def save_epoch_grid(epoch: int) -> None:
        model.eval()
        with torch.no_grad():
            images = model.generate(fixed_noise.to(device), fixed_labels.to(device))
        model.train()
        save_grid(run_dir / GRIDS / f"epoch_{epoch:04d}.png", images.float().cpu(),
                  nrow=int(math.ceil(math.sqrt(cfg.grid_size))))

    def end_of_epoch(epoch: int, step: int) -> None:
        for s in schedulers.values():
            s.step()
        if epoch % cfg.grid_every == 0 or step == total:
            save_epoch_grid(epoch)

    if cfg.cache_images:
        cached_images, cached_labels = _cache(dataset, cfg.progress)
        if cuda and cached_images.nbytes < 0.25 * torch.cuda.mem_get_info(device)[0]:
            cached_images, cached_labels = cached_images.to(device), cached_labels.to(device)

    def source(epoch: int, batches: List[List[int]]):
        if cfg.cache_images:
            return ((cached_images[b], cached_labels[b])
                    for b in (torch.tensor(i, device=cached_images.device) for i in batches))
        # its own generator, so that iterating does not consume the global RNG
        loader = DataLoader(dataset, batch_sampler=batches, num_workers=cfg.num_workers,
                            pin_memory=cuda, generator=torch.Generator().manual_seed(0))
        return ((item[0], item[2]) for item in loader)

    def train_step(batch, step: int, epoch: int):
        """One step of every phase (the model's loss), with AMP and the loss scaler."""
        images, labels = batch
        if images.dtype == torch.uint8:
            images = images.to(device, non_blocking=True).float().div_(127.5).sub_(1.0)
        else:
            images = images.to(device, non_blocking=True)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        lr = optimizers[next(iter(optimizers))].param_groups[0]["lr"]
        cache: dict = {}
        terms: Dict[str, torch.Tensor] = {}
        for phase, opt in optimizers.items():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                loss, logs = model.loss(phase, images, labels, cache)
            scaler.scale(loss).backward()
            scaler.step(opt)
            terms.update(logs)
        scaler.update()
        return terms, lr

    bar = tqdm(total=stop, initial=step, desc=f"{model.name} {image_size}px", unit="step",
               disable=not cfg.progress)
    losses = LossLog(rows, lambda k, v, s, e: (
        f"{model.name}: {k} became {v} at step {s} (epoch {e}). Lower the learning rate (lr={cfg.lr:g}, "
        f"e.g. lr={cfg.lr / 4:g}){', or set amp=False' if amp else ''}, and start a fresh run (a new "
        f"run_dir, or resume=False); the last good checkpoint stays at {ckpt_path}."), bar)
    t0 = time.perf_counter()
    timed_step = timed_first_step(train_step, FirstUnitEstimate(
        max(stop - step, 1), what=f"{stop - step} steps of {model.name} at {image_size} px", device=str(device),
        hint="lower epochs (or set max_steps) to shorten", log=tqdm.write if cfg.progress else (lambda _: None)), device)
    try:
        step, done = run_steps(step, stop, n=n, batch_size=cfg.batch_size, seed=cfg.seed, source=source,
                               train_step=timed_step, losses=losses, log_every=cfg.log_every,
                               checkpoint_every=cfg.checkpoint_every, save_checkpoint=save_checkpoint,
                               end_of_epoch=end_of_epoch, bar=bar)
    finally:
        bar.close()
    elapsed = time.perf_counter() - t0
    if not ckpt_path.exists():  # e.g. max_steps=0 or nothing left to do on a fresh folder
        save_checkpoint(step)
    return TrainResult(run_dir=run_dir, checkpoint=ckpt_path, step=step,
                       epoch=step // per_epoch, total_steps=total, resumed_from=resumed_from,
                       losses=rows,
                       images_per_second=done * cfg.batch_size / elapsed if done else float("nan"))


def _clear_run(run_dir: Path) -> None:
    """A fresh start replaces an earlier run in ``run_dir``: remove its checkpoint, losses and
    epoch grids so that nothing of it can be mistaken for (or resumed into) the new run."""
    remove_files([run_dir / CHECKPOINT, run_dir / LOSSES, *sorted((run_dir / GRIDS).glob("epoch_*.png"))],
                 f"Starting a fresh run in {run_dir}: removing the previous run's checkpoint, losses and grids")


def _fieldnames(rows: List[dict]) -> List[str]:
    names: List[str] = []
    for r in rows:
        for k in r:
            if k not in names:
                names.append(k)
    return names or ["step", "epoch", "lr"]


__all__ = ["CheckpointError", "NonFiniteLossError", "TrainConfig", "TrainResult", "check_crops",
           "load_checkpoint", "load_model", "read_losses", "train"]
