"""Expected time of a long job, from a short measurement on the device in use (issue 19).

Before long work (generation, training) runs to its end, the first unit (an engine call, a
training step) is timed and :class:`FirstUnitEstimate` prints "expected about N min for M
<things> on DEVICE", so that a user on a small GPU can shorten the job before waiting hours.
The first unit includes warm-up (kernel selection, caches), so the estimate errs long.
"""
from __future__ import annotations

import time
from typing import Callable


def format_duration(seconds: float) -> str:
    """42 -> "0m42s", 7800 -> "2h10m"."""
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class FirstUnitEstimate:
    """Start the clock at construction; the first :meth:`measured` call (``done`` units finished
    of ``total``) logs and returns the expected total time, ``total / done`` times the measured time.

    ``what``: the job in words ("55 variants"); ``device``: where it runs; ``hint``: how to shorten it;
    ``clock``: seconds (tests pass a fake one)."""

    def __init__(self, total: int, *, what: str, device: str, hint: str, unit: str = "step",
                 clock: Callable[[], float] = time.perf_counter, log: Callable[[str], None] = print):
        if total < 1:
            raise ValueError(f"total={total}: an estimate needs at least one {unit} to do")
        self.total, self.what, self.device, self.hint, self.unit = total, what, device, hint, unit
        self.clock, self.log = clock, log
        self.t0 = clock()
        self.expected: float | None = None

    def measured(self, done: int = 1) -> float | None:
        """On the first call: log "expected about ..." and return the expected seconds; later: None."""
        if self.expected is not None:
            return None
        if done < 1:
            raise ValueError(f"done={done}: measure after at least one {self.unit}")
        seconds = self.clock() - self.t0
        self.expected = seconds * self.total / done
        first = f"the first {self.unit}" if done == 1 else f"the first {done} {self.unit}s"
        self.log(f"Expected about {format_duration(self.expected)} for {self.what} on {self.device} "
                 f"(measured on {first}: {seconds:.2f} s of {self.total}); {self.hint}.")
        return self.expected
