"""The expected-time message (skinlib.eta): arithmetic with a fake clock, never a timed assertion."""
from __future__ import annotations

import pytest

from skinlib.eta import FirstUnitEstimate, format_duration


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_expected_time_is_measured_time_scaled_to_the_whole_job():
    clock, lines = FakeClock(), []
    est = FirstUnitEstimate(360, what="55 variants", device="cuda", hint="lower max_sources / runs to shorten",
                            unit="engine call", clock=clock, log=lines.append)
    clock.now += 2.5
    assert est.measured(1) == pytest.approx(900.0)
    assert lines == ["Expected about 15m00s for 55 variants on cuda (measured on the first engine call: "
                     "2.50 s of 360); lower max_sources / runs to shorten."]
    clock.now += 100
    assert est.measured(2) is None and len(lines) == 1       # said once


def test_several_units_measured_together():
    clock, lines = FakeClock(), []
    est = FirstUnitEstimate(1000, what="x", device="cpu", hint="h", clock=clock, log=lines.append)
    clock.now += 10.0
    assert est.measured(4) == pytest.approx(2500.0)
    assert "the first 4 steps: 10.00 s of 1000" in lines[0] and "about 41m40s" in lines[0]


def test_format_duration():
    assert format_duration(42) == "0m42s"
    assert format_duration(7800) == "2h10m"


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="total=0"):
        FirstUnitEstimate(0, what="x", device="cpu", hint="h")
    with pytest.raises(ValueError, match="done=0"):
        FirstUnitEstimate(3, what="x", device="cpu", hint="h", log=lambda s: None).measured(0)


def test_training_loops_time_only_their_first_step():
    import torch

    from skinlib.training import timed_first_step

    clock, lines = FakeClock(), []
    est = FirstUnitEstimate(50, what="50 steps of DCGAN at 64 px", device="cpu", hint="lower epochs", clock=clock,
                            log=lines.append)
    calls = []

    def train_step(batch, step, epoch):
        clock.now += 0.2 if step == 0 else 5.0      # later steps do not change the estimate
        calls.append(step)
        return {"loss": torch.tensor(1.0)}, 1e-3

    step = timed_first_step(train_step, est, torch.device("cpu"))
    for i in range(3):
        assert step(None, i, 0)[1] == 1e-3
    assert calls == [0, 1, 2] and len(lines) == 1
    assert lines[0].startswith("Expected about 0m10s for 50 steps of DCGAN at 64 px on cpu")
