"""Where the tests find ``../shared`` (read in place, never copied into the repository)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


def shared_dir() -> Path:
    """``$SKINLIB_SHARED_DIR`` or the ``shared/`` folder beside the repository checkout."""
    root = os.environ.get("SKINLIB_SHARED_DIR")
    return Path(root) if root else Path(__file__).resolve().parents[1].parent / "shared"


PARITY = shared_dir() / "glide-parity"
needs_parity = pytest.mark.skipif(
    not (PARITY / "spec.md").is_file(),
    reason=f"GLIDE parity fixtures not found at {PARITY} (CI provides ../shared; "
    "set SKINLIB_SHARED_DIR to the folder that holds glide-parity/)",
)


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
