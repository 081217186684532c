"""Seconds per GLIDE variant, measured, and what a plan costs (issue 20, item 1).

A *timing* is a JSON-able dict: ``seconds_per_variant`` (wall seconds of one variant, all its
inpainting steps, measured in a batch of ``batch_size``), ``variants`` (how many were timed),
``device`` ("cpu" / "cuda:0"), ``device_name`` (the CPU model or GPU name), ``is_gpu``,
``weights`` (the checkpoint label), ``steps`` and ``identity`` (the engine's). It comes from
:func:`calibrate` (a short run of the chosen weights on the chosen device) or from a JSON file
a calibration wrote (:func:`read_timing`). No speed is ever assumed: a GPU budget or a GPU
price needs a timing measured on a GPU.
"""
from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Mapping

import torch

from ..cpu import cpu_info
from ..data.dataset import load_crop
from ..io import load_json, save_json
from .inpaint import DEFAULT_PROMPT, IMAGE_SIZE, IterativeInpainting, item_seed, make_sampler

TIMING_KEYS = ("seconds_per_variant", "variants", "batch_size", "device", "device_name", "is_gpu",
               "weights", "steps")


def device_name(device) -> str:
    """The CPU model (``/proc/cpuinfo``) or the GPU's name."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_info()["model"]


def calibrate(inpainter, crops_dir, row: Mapping[str, str], *, variants: int = 2, steps: int = 12,
              prompt: str = DEFAULT_PROMPT, guidance: float = 5.0, upsample_temp: float = 0.997,
              sampler: str = "squares", seed: int = 0) -> dict:
    """Time ``variants`` variants of the crop ``row`` in one batch with ``inpainter`` (after an
    untimed one-step warm-up, so one-off costs such as memory allocation are not counted).
    Returns a timing (see the module docstring)."""
    if variants < 1:
        raise ValueError(f"calibration needs at least 1 variant, got {variants}")
    image, mask, _ = load_crop(crops_dir, row, IMAGE_SIZE, resize=False)
    kw = dict(sampler=make_sampler(sampler), prompt=prompt, guidance_scale=guidance, upsample_temp=upsample_temp)
    IterativeInpainting(inpainter, steps=1, **kw).run(image[None], mask[None], [seed])
    algo = IterativeInpainting(inpainter, steps=steps, **kw)
    seeds = [item_seed(seed, row["image"], r) for r in range(variants)]
    device = getattr(inpainter, "device", "cpu")
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    algo.run(image[None].repeat(variants, 1, 1, 1), mask[None].repeat(variants, 1, 1, 1), seeds)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    identity = dict(getattr(inpainter, "identity", {}) or {})
    return {"seconds_per_variant": seconds / variants, "variants": variants, "batch_size": variants,
            "device": str(device), "device_name": device_name(device),
            "is_gpu": torch.device(device).type == "cuda",
            "weights": identity.get("weights_label") or identity.get("weights", type(inpainter).__name__),
            "steps": steps, "identity": identity, "cpu_threads": torch.get_num_threads(),
            "cpu": cpu_info()}


def save_timing(path, timing: Mapping) -> Path:
    save_json(Path(path), dict(timing))
    return Path(path)


def read_timing(path) -> dict:
    """A timing from a JSON file written by :func:`save_timing` (``python -m skinlib.plan
    --calibrate --timing-out FILE``). Refused, naming the file and the missing key, otherwise
    (benchmarks/bench_glide.py's JSON holds per-forward times, not seconds per variant)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"seconds-per-variant file {path} does not exist: write one with "
                                f"`python -m skinlib.plan ... --calibrate --timing-out {path}`")
    data = load_json(path)
    missing = [k for k in TIMING_KEYS if not isinstance(data, dict) or k not in data]
    if missing:
        raise ValueError(f"{path} is not a calibration record (missing {', '.join(missing)}); "
                         f"benchmark files of per-forward times do not give seconds per variant. "
                         f"Write one with `python -m skinlib.plan ... --calibrate --timing-out {path}`")
    if not (isinstance(data["seconds_per_variant"], (int, float)) and data["seconds_per_variant"] > 0):
        raise ValueError(f"{path}: seconds_per_variant must be a positive number, got {data['seconds_per_variant']!r}")
    return data


_BUDGET = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(variants?|v|s|sec|seconds?|h|hours?|gpu-?h(ours?)?)\s*$", re.I)


def parse_budget(text: str) -> tuple[float, str]:
    """"500v" / "500variants" -> (500, "variants"); "3600s" -> (3600, "seconds"); "2h" -> (2,
    "hours") of the measured device; "1.5gpu-h" -> (1.5, "gpu-hours"). A bare number is refused."""
    m = _BUDGET.match(str(text))
    if not m:
        raise ValueError(f"budget {text!r}: give a number with its unit: 500v (variants), 3600s "
                         f"(seconds), 2h (hours on the measured device) or 1.5gpu-h (GPU hours)")
    value, unit = float(m.group(1)), m.group(2).lower()
    unit = ("variants" if unit.startswith("v") else "seconds" if unit.startswith("s")
            else "gpu-hours" if unit.startswith("gpu") else "hours")
    return value, unit


def budget_variants(value: float, unit: str, timing: Mapping | None) -> int:
    """A budget in variants (rounded down) from ``parse_budget``'s (value, unit) and a timing.
    Time budgets need a timing; GPU hours need one measured on a GPU."""
    if unit == "variants":
        if value != int(value):
            raise ValueError(f"a budget in variants must be a whole number, got {value}")
        return int(value)
    if timing is None:
        raise ValueError(f"a budget in {unit} needs the measured seconds per variant: pass --calibrate "
                         f"or --seconds-per-variant-file FILE (no speed is assumed)")
    if unit == "gpu-hours" and not timing.get("is_gpu"):
        raise ValueError(f"a budget in GPU hours needs seconds per variant measured on a GPU, but the "
                         f"timing is from {timing['device']} ({timing['device_name']}): GPU not measured. "
                         f"Calibrate on a GPU, or give the budget in seconds / hours of this device")
    seconds = value * (3600 if unit in ("hours", "gpu-hours") else 1)
    return int(math.floor(seconds / float(timing["seconds_per_variant"]) + 1e-9))


def time_text(n_variants: int, timing: Mapping | None, price_per_gpu_hour: float | None = None) -> str:
    """"expected X h on DEVICE (measured: Y s/variant, calibration of Z variants ...)", plus the
    cost at ``price_per_gpu_hour`` when the timing was measured on a GPU."""
    if timing is None:
        return (f"{n_variants} variants; expected time not measured (pass --calibrate or "
                f"--seconds-per-variant-file); GPU not measured")
    spv = float(timing["seconds_per_variant"])
    hours = n_variants * spv / 3600
    kind = "GPU" if timing.get("is_gpu") else "CPU"
    text = (f"{n_variants} variants: expected {hours:.2f} h on {timing['device']} "
            f"(measured: {spv:.3g} s/variant, calibration of {timing['variants']} variant(s) in one batch, "
            f"{timing['steps']} steps, weights {timing['weights']}, on {kind} {timing['device_name']})")
    if timing.get("is_gpu"):
        if price_per_gpu_hour is not None:
            text += f"; cost {hours * price_per_gpu_hour:.2f} at {price_per_gpu_hour:g} per GPU-hour"
    else:
        text += "; GPU not measured, so no GPU time or cost"
    return text
