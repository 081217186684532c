"""Random keep-masks for training the inpainting models (1 = known pixel, 0 = to generate).

Each example gets one mask of a randomly chosen kind, drawn on the base model's grid
(``grid`` px, 64 for the released models) and nearest-upsampled for the upsampler:

* ``"square"``: one square of ``square_side`` (15/64) of the side at a random grid position:
  the regions of the study's iterative inpainting;
* ``"box"``: one axis-aligned box with sides uniform in [1/8, 3/4] of the side;
* ``"stroke"``: free-form brush strokes (2-4 connected segments, width 1/16-1/6 of the side),
  as in free-form inpainting work.

All randomness comes from the ``torch.Generator`` passed in (CPU), so a training run that saves
the generator's state resumes with the same masks.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

KINDS = ("square", "box", "stroke")
DEFAULT_PROBS = (0.5, 0.25, 0.25)


def _uniform(g: torch.Generator) -> float:
    return float(torch.rand((), generator=g))


def _randint(g: torch.Generator, low: int, high: int) -> int:
    """Integer in [low, high] inclusive."""
    return int(torch.randint(low, high + 1, (), generator=g))


def square_mask(g: torch.Generator, grid: int, side: float = 15 / 64) -> torch.Tensor:
    """[grid, grid] float keep-mask with one square hole of round(side * grid) cells."""
    s = max(1, round(side * grid))
    y, x = _randint(g, 0, grid - s), _randint(g, 0, grid - s)
    m = torch.ones(grid, grid)
    m[y:y + s, x:x + s] = 0
    return m


def box_mask(g: torch.Generator, grid: int) -> torch.Tensor:
    lo, hi = max(1, grid // 8), max(1, 3 * grid // 4)
    h, w = _randint(g, lo, hi), _randint(g, lo, hi)
    y, x = _randint(g, 0, grid - h), _randint(g, 0, grid - w)
    m = torch.ones(grid, grid)
    m[y:y + h, x:x + w] = 0
    return m


def stroke_mask(g: torch.Generator, grid: int) -> torch.Tensor:
    """Brush strokes: a random walk of 2-4 segments painted with a round brush."""
    yy, xx = torch.meshgrid(torch.arange(grid, dtype=torch.float32),
                            torch.arange(grid, dtype=torch.float32), indexing="ij")
    hole = torch.zeros(grid, grid, dtype=torch.bool)
    radius = max(0.75, (grid / 16 + _uniform(g) * (grid / 6 - grid / 16)) / 2)
    y, x = _uniform(g) * grid, _uniform(g) * grid
    for _ in range(_randint(g, 2, 4)):
        angle = _uniform(g) * 2 * math.pi
        length = grid * (0.15 + 0.35 * _uniform(g))
        y2 = min(max(y + length * math.sin(angle), 0.0), grid - 1.0)
        x2 = min(max(x + length * math.cos(angle), 0.0), grid - 1.0)
        # distance of every cell centre to the segment (y, x) -> (y2, x2)
        dy, dx = y2 - y, x2 - x
        denom = dy * dy + dx * dx or 1.0
        u = (((yy - y) * dy + (xx - x) * dx) / denom).clamp(0, 1)
        hole |= (yy - (y + u * dy)) ** 2 + (xx - (x + u * dx)) ** 2 <= radius ** 2
        y, x = y2, x2
    return (~hole).float()


def random_keep_masks(n: int, grid: int, g: torch.Generator, *, probs: Sequence[float] = DEFAULT_PROBS,
                      square_side: float = 15 / 64) -> torch.Tensor:
    """n keep-masks float [n, 1, grid, grid] in {0, 1} (1 = keep), kinds drawn with ``probs``
    (square, box, stroke). Every mask has at least one hole pixel."""
    if len(probs) != len(KINDS) or min(probs) < 0 or sum(probs) <= 0:
        raise ValueError(f"probs must be {len(KINDS)} non-negative weights for {KINDS}, got {probs}")
    p = torch.tensor(probs, dtype=torch.float64)
    kinds = torch.multinomial(p / p.sum(), n, replacement=True, generator=g).tolist()
    out = []
    for k in kinds:
        m = (square_mask(g, grid, square_side) if k == 0 else box_mask(g, grid) if k == 1
             else stroke_mask(g, grid))
        out.append(m)
    return torch.stack(out)[:, None]
