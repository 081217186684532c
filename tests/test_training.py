"""The training core both loops share (skinlib/training.py): batches, the step loop's order of
work, resuming inside an epoch, the loss log's NaN stop. The loops themselves are tested in
tests/baselines/test_train.py and tests/glide/test_finetune.py (exact resume, byte for byte)."""
from __future__ import annotations

import pytest
import torch

from skinlib.errors import NonFiniteLossError
from skinlib.training import LossLog, epoch_batches, run_steps


def test_epoch_batches_are_whole_seeded_permutations():
    batches = epoch_batches(10, 3, seed=4, epoch=2)
    assert [len(b) for b in batches] == [3, 3, 3]
    flat = sum(batches, [])
    assert len(set(flat)) == 9 and set(flat) <= set(range(10))
    assert epoch_batches(10, 3, 4, 2) == batches
    assert epoch_batches(10, 3, 4, 3) != batches and epoch_batches(10, 3, 5, 2) != batches


def _run(step, stop, events, rows, log_every=2):
    def train_step(batch, s, epoch):
        events.append(("step", s + 1, tuple(batch)))
        return {"loss": torch.tensor(float(s))}, 0.1

    losses = LossLog(rows, lambda k, v, s, e: f"{k} {v} at {s}")
    return run_steps(step, stop, n=9, batch_size=3, seed=1, source=lambda e, b: b, train_step=train_step,
                     losses=losses, log_every=log_every, checkpoint_every=2,
                     save_checkpoint=lambda s: events.append(("checkpoint", s)),
                     end_of_epoch=lambda e, s: events.append(("epoch end", e, s)))


def test_steps_hooks_and_a_resume_inside_an_epoch():
    events, rows = [], []
    assert _run(0, 7, events, rows) == (7, 7)
    steps = [e for e in events if e[0] == "step"]
    assert [e[2] for e in steps] == [tuple(b) for epoch in range(3) for b in epoch_batches(9, 3, 1, epoch)][:7]
    # the epoch-end hook (e.g. an lr scheduler) runs before that step's checkpoint; a checkpoint at the stop
    i = events.index(("epoch end", 2, 6))
    assert events[i + 1] == ("checkpoint", 6) and events[-1] == ("checkpoint", 7)
    assert [r["step"] for r in rows] == list(range(1, 8)) and rows[3] == {"step": 4, "epoch": 2, "lr": 0.1, "loss": 3.0}
    # resumed at step 4 (inside epoch 2): the same batches from there on, nothing repeated
    resumed = []
    assert _run(4, 7, resumed, []) == (7, 3)
    assert [e for e in resumed if e[0] == "step"] == steps[4:]


def test_loss_log_stops_on_a_non_finite_loss_with_the_callers_message():
    rows = []
    log = LossLog(rows, lambda k, v, s, e: f"{k} became {v} at step {s} (epoch {e})")
    log.add(1, 1, 0.1, {"loss": torch.tensor(1.0)})
    log.add(2, 1, 0.1, {"loss": torch.tensor(float("inf"))})
    with pytest.raises(NonFiniteLossError, match=r"loss became inf at step 2 \(epoch 1\)"):
        log.flush()
    assert rows == [{"step": 1, "epoch": 1, "lr": 0.1, "loss": 1.0}] and log.pending == []
