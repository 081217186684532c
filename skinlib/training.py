"""The training core both loops share (:mod:`skinlib.baselines.train` for DCGAN/CVAE,
:mod:`skinlib.glide.finetune` for GLIDE), so that a fix lands once; each passes in its own step.

* :func:`epoch_batches` and :func:`run_steps`: epoch ``e`` visits the items in the order of a
  permutation seeded with (seed, e), whole batches only; a run resumed inside an epoch continues
  with that epoch's next batch. After each step the losses are logged (:class:`LossLog`: synced
  every ``log_every`` steps, at epoch ends and at the stop, NaN/inf stops training), the epoch-end
  hook runs, and a checkpoint is written every ``checkpoint_every`` steps and at the stop.
* :func:`restore_run`: the parts of a resume both loops do alike (numerics, loss scaler, RNG states,
  step, the losses logged so far); a checkpoint beyond the steps asked for is refused.
* :func:`numerics`: a checkpoint stores the device type, autocast dtype and memory layout, the
  settings that change the bytes each step computes; a resume with other numerics is refused,
  naming the setting. The AMP loss scaler's state is restored, never dropped.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import torch

from .errors import CheckpointError, NonFiniteLossError

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


def resolve_device(name: str) -> torch.device:
    """"auto": cuda when available, else cpu; otherwise ``torch.device(name)``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ----------------------------------------------------------------------------- resume
def restore_run(state: Mapping[str, Any], path: Path, *, stop: int, numerics_now: dict, saved_config: Mapping,
                scaler, fresh: str, ask: str, losses_csv: Path, cuda: bool,
                generator: Optional[torch.Generator] = None) -> Tuple[int, List[Dict[str, float]]]:
    """Continue a run from checkpoint ``state`` (read from ``path``): refuse other numerics and a
    checkpoint beyond ``stop`` steps (``ask``: what to ask for instead; ``fresh``: how to start
    afresh), restore the loss scaler and the RNG states (global torch, CUDA, ``generator`` from
    ``state["rng"]["train"]``); returns (step, the rows of ``losses_csv`` up to that step)."""
    check_numerics(saved_numerics(state, saved_config), numerics_now, path, fresh)
    step = int(state["step"])
    if step > stop:
        raise CheckpointError(
            f"{path} is at step {step}, beyond the {stop} steps asked for: using it would give a model "
            f"trained longer than its settings say. Ask for at least {step} steps ({ask}), {fresh}.")
    restore_scaler(scaler, state["scaler"], path)
    torch.set_rng_state(state["rng"]["torch"])
    if generator is not None:
        generator.set_state(state["rng"]["train"])
    if cuda and state["rng"]["cuda"]:
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    rows: List[Dict[str, float]] = []
    if Path(losses_csv).is_file():
        from .io import read_csv

        rows = [{k: (int(v) if k in ("step", "epoch") else float(v)) for k, v in r.items()}
                for r in read_csv(losses_csv)]
        rows = [r for r in rows if r["step"] <= step]
    return step, rows


def rng_state(cuda: bool, generator: Optional[torch.Generator] = None) -> dict:
    """The RNG states a checkpoint stores (see :func:`restore_run`)."""
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if cuda else [],
            **({"train": generator.get_state()} if generator is not None else {})}


# ----------------------------------------------------------------------------- the loop
class LossLog:
    """Loss terms of the steps since the last sync (0-dim tensors, possibly on the GPU), moved to
    ``rows`` ({step, epoch, lr, term...}) in one transfer by :meth:`flush`, which raises
    :class:`NonFiniteLossError` (``message(term, value, step, epoch)``) on a NaN/inf value."""

    def __init__(self, rows: List[Dict[str, float]], message: Callable[[str, float, int, int], str],
                 bar=None, shown: Optional[Iterable[str]] = None):
        self.rows, self.message, self.bar = rows, message, bar
        self.shown = None if shown is None else list(shown)
        self.pending: List[tuple] = []

    def add(self, step: int, epoch: int, lr: float, terms: Mapping[str, torch.Tensor]) -> None:
        self.pending.append((step, epoch, lr, dict(terms)))

    def flush(self) -> None:
        if not self.pending:
            return
        names = list(self.pending[0][3])
        values = torch.stack([torch.stack([t[k].detach().float() for k in names])
                              for *_, t in self.pending]).cpu().tolist()
        for (s, e, lr, _), vals in zip(self.pending, values):
            for k, v in zip(names, vals):
                if not math.isfinite(v):
                    self.pending.clear()
                    raise NonFiniteLossError(self.message(k, v, s, e))
            self.rows.append({"step": s, "epoch": e, "lr": lr, **dict(zip(names, vals))})
        self.pending.clear()
        if self.bar is not None:
            last = self.rows[-1]
            self.bar.set_postfix({k: f"{last[k]:.4g}" for k in (self.shown or names)}, refresh=False)


def timed_first_step(train_step: Callable, estimate, device: torch.device) -> Callable:
    """``train_step`` whose first call is timed (CUDA synchronised) for ``estimate``
    (:class:`skinlib.eta.FirstUnitEstimate`, which then prints the expected time of the run)."""
    def step(batch, step: int, epoch: int):
        out = train_step(batch, step, epoch)
        if estimate.expected is None:
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize(device)
            estimate.measured(1)
        return out
    return step


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> List[List[int]]:
    """The batches (index lists) of ``epoch``: a seeded permutation of 0..n-1, whole batches only."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))
    perm = torch.randperm(n, generator=g)
    return [perm[i * batch_size:(i + 1) * batch_size].tolist() for i in range(n // batch_size)]


def run_steps(step: int, stop: int, *, n: int, batch_size: int, seed: int,
              source: Callable[[int, List[List[int]]], Iterable[Any]],
              train_step: Callable[[Any, int, int], Tuple[Mapping[str, torch.Tensor], float]],
              losses: LossLog, log_every: int, checkpoint_every: int, save_checkpoint: Callable[[int], None],
              end_of_epoch: Callable[[int, int], None], bar=None) -> Tuple[int, int]:
    """Train from ``step`` to ``stop``: ``source(epoch, batches)`` yields what ``train_step(batch,
    step, epoch)`` takes for the epoch's remaining batches; it returns (loss terms, lr). After each
    step: log, ``end_of_epoch(epoch, step)`` at an epoch's end (1-based epoch), then
    ``save_checkpoint(step)`` every ``checkpoint_every`` steps and at ``stop``. Returns (step,
    steps done now)."""
    per_epoch = n // batch_size
    done = 0
    while step < stop:
        epoch, first = divmod(step, per_epoch)
        for batch in source(epoch, epoch_batches(n, batch_size, seed, epoch)[first:]):
            terms, lr = train_step(batch, step, epoch)
            step += 1
            done += 1
            if bar is not None:
                bar.update(1)
            losses.add(step, epoch + 1, lr, terms)
            end = step % per_epoch == 0
            if len(losses.pending) >= log_every or end or step == stop:
                losses.flush()
            if end:
                end_of_epoch(epoch + 1, step)
            if step % checkpoint_every == 0 or step == stop:
                save_checkpoint(step)
            if step >= stop:
                break
    return step, done
