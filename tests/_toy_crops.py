"""A learnable toy crops folder shared by tests/baselines/test_train.py and
tests/glide/test_finetune.py."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from skinlib.io import save_png, write_csv


def make_crops(folder: Path, n: int = 16, size: int = 64, classes=("measles", "rubella"),
               seed: int = 0) -> Path:
    """A learnable toy crops folder: per class a flat colour plus a dark disc at a random place."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    colours = {"measles": (200, 120, 110), "rubella": (90, 160, 200)}
    rows = []
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        disease = classes[i % len(classes)]
        image = np.empty((size, size, 3), np.uint8)
        image[:] = colours.get(disease, (128, 128, 128))
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < (size // 6) ** 2
        image[disc] = (60, 20, 30)
        save_png(folder / f"{i:06d}.png", image)
        save_png(folder / f"{i:06d}_mask.png", (disc * 255).astype(np.uint8))
        rows.append({"image": f"{i:06d}.png", "mask": f"{i:06d}_mask.png", "disease": disease,
                     "patient": f"p{i % 4}"})
    write_csv(folder / "manifest.csv", rows)
    return folder
