"""What both training loops (:mod:`skinlib.baselines.train`, :mod:`skinlib.glide.finetune`) share
for an exact resume: the record of the numerics a run computes with, and the loss scaler.

A checkpoint stores :func:`numerics` (device type, autocast dtype, memory layout): settings that
change the bytes each step computes. A resume with other numerics is refused, naming the setting,
because the resumed run would not be the run its settings describe; the AMP loss scaler's state is
restored, never dropped.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from .errors import CheckpointError

def numerics(device: torch.device, amp_dtype: Optional[torch.dtype], channels_last: bool = False) -> dict:
    """The record of what changes a training step's bytes: device type ("cpu" / "cuda"), the
    autocast dtype ("bfloat16" / "float16"; None: float32) and the NHWC memory layout."""
    return {"device": torch.device(device).type,
            "amp": str(amp_dtype).replace("torch.", "") if amp_dtype is not None else None,
            "channels_last": bool(channels_last)}


def saved_numerics(state: Mapping[str, Any], config: Mapping[str, Any]) -> dict:
    """The numerics record of a checkpoint; for checkpoints written before it was stored, derived
    from what they hold: CUDA RNG states (device), the amp setting and a loss-scaler state (float16
    on CUDA has one, bfloat16 none), the channels_last setting."""
    if "numerics" in state:
        return dict(state["numerics"])
    cuda = bool(state.get("rng", {}).get("cuda"))
    amp = ("float16" if state.get("scaler") else "bfloat16") if cuda and config.get("amp", True) else None
    return {"device": "cuda" if cuda else "cpu", "amp": amp,
            "channels_last": bool(config.get("channels_last", False))}


def check_numerics(saved: Mapping[str, Any], now: Mapping[str, Any], path, fresh: str) -> None:
    """Raise :class:`CheckpointError` naming every numerics setting that differs."""
    keys = [k for k in now if saved.get(k) != now.get(k)]
    if keys:
        diffs = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, now {now.get(k)!r}" for k in keys)
        amp = (" (amp: float16 on a GPU without bfloat16, bfloat16 on one with it, None with amp=False "
               "or on a CPU)" if "amp" in keys else "")
        raise CheckpointError(
            f"{path} was trained with other numerics ({diffs}): they change the bytes each step computes, "
            f"so the resumed run would not be the run its settings describe. Resume with the checkpoint's "
            f"values{amp}, {fresh}.")


def restore_scaler(scaler, saved_state: Mapping[str, Any], path) -> None:
    """Load a checkpoint's AMP loss-scaler state into ``scaler``; refuse a checkpoint whose scaler
    state and ``scaler`` disagree (one has a scale, the other none) instead of dropping it."""
    if bool(saved_state) != scaler.is_enabled():
        raise CheckpointError(
            f"{path} {'holds' if saved_state else 'holds no'} loss-scaler (float16 AMP) state but this run "
            f"{'uses' if scaler.is_enabled() else 'uses no'} loss scaler: resume on the same kind of device "
            f"with the same amp setting.")
    if saved_state:
        scaler.load_state_dict(dict(saved_state))
