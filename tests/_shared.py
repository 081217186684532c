"""Helpers the tests share: where the GLIDE parity fixtures are, a simulated interruption."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: numeric fixtures made with the original GLIDE implementation (tiny random-weight models); a copy
#: of ../shared/glide-parity without spec.md and vocab/ (see its README.md); MANIFEST.sha256 pins them
PARITY = REPO / "tests" / "fixtures" / "glide-parity"
#: the GPT-2 vocabulary of the fixtures is the one the package ships (MANIFEST.sha256 pins it there)
PARITY_VOCAB = REPO / "skinlib" / "glide" / "vocab"


def parity_file(name: str) -> Path:
    """The file of a MANIFEST.sha256 entry: ``vocab/*`` in the package, the rest in PARITY."""
    return PARITY_VOCAB / name[len("vocab/"):] if name.startswith("vocab/") else PARITY / name


def interrupted_on_call(func, n: int):
    """``func`` wrapped so that its ``n``-th call raises KeyboardInterrupt (a simulated Ctrl-C)."""
    calls = 0

    def wrapper(*args, **kw):
        nonlocal calls
        calls += 1
        if calls == n:
            raise KeyboardInterrupt("simulated interruption")
        return func(*args, **kw)

    return wrapper
