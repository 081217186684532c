"""Figures of a baseline training run (notebooks 02 and 03): image grids, epoch grids, their browser.

The loss curves (:func:`skinlib.viz.plot_losses`) are in :mod:`skinlib.viz`, shared with GLIDE's
fine-tuning.

All functions draw with matplotlib and return the figure (the caller calls ``plt.show()``).
Images are float tensors [N, 3, H, W] in [-1, 1].
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..io import read_losses  # noqa: F401  (re-exported: skinlib.viz_train had it; one release)
from ..viz import plot_losses  # noqa: F401  (re-exported: moved to skinlib.viz; one release)
from ..viz import title
from .train import GRIDS


def show_images(images: torch.Tensor, nrow: int = 8, text: str = "", row_labels=None,
                scale: float = 1.2, synthetic: bool = False):
    """Show images [N, 3, H, W] in [-1, 1] as one grid titled ``text`` (prefixed "SYNTHETIC demo
    data" when ``synthetic``); ``row_labels`` names each row."""
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    images = images.detach().float().cpu().clamp(-1, 1)
    grid = make_grid((images + 1) / 2, nrow=nrow, padding=2, pad_value=1.0)
    rows = int(np.ceil(len(images) / nrow))
    fig, ax = plt.subplots(figsize=(scale * nrow + (1.5 if row_labels else 0), scale * rows + 0.4))
    ax.imshow(grid.permute(1, 2, 0).numpy())
    ax.set_title(title(text, synthetic))
    ax.set_xticks([])
    if row_labels:
        h = images.shape[2] + 2
        ax.set_yticks([2 + h * i + h / 2 for i in range(len(row_labels))], list(row_labels))
    else:
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def epoch_grids(run_dir) -> list:
    """Paths of the per-epoch fixed-noise grids of a run, in epoch order."""
    return sorted((Path(run_dir) / GRIDS).glob("epoch_*.png"))


def show_epoch_grids(run_dir, n: int = 3, synthetic: bool = False):
    """The fixed-noise grids of the first, middle and last epochs side by side (``n`` of them)."""
    import matplotlib.pyplot as plt
    from PIL import Image

    paths = epoch_grids(run_dir)
    if not paths:
        raise FileNotFoundError(f"No epoch grids in {Path(run_dir) / GRIDS}: no epoch has finished.")
    pick = sorted({paths[int(round(i))] for i in np.linspace(0, len(paths) - 1, min(n, len(paths)))})
    fig, axes = plt.subplots(1, len(pick), figsize=(5 * len(pick), 5), squeeze=False)
    for ax, path in zip(axes[0], pick):
        with Image.open(path) as im:
            ax.imshow(np.asarray(im.convert("RGB")))
        ax.set_title(path.stem.replace("_", " "))
        ax.axis("off")
    fig.suptitle(title("samples from fixed noise", synthetic))
    fig.tight_layout()
    return fig


def epoch_grid_browser(run_dir):
    """An ipywidgets slider over the per-epoch fixed-noise grids (returns the widget)."""
    import ipywidgets as widgets

    paths = epoch_grids(run_dir)
    if not paths:
        raise FileNotFoundError(f"No epoch grids in {Path(run_dir) / GRIDS}: no epoch has finished.")
    image = widgets.Image(value=paths[-1].read_bytes(), format="png", width=512)
    label = widgets.Label(paths[-1].stem.replace("_", " "))
    slider = widgets.IntSlider(value=len(paths), min=1, max=len(paths), description="grid")

    def on_change(change):
        image.value = paths[change["new"] - 1].read_bytes()
        label.value = paths[change["new"] - 1].stem.replace("_", " ")

    slider.observe(on_change, names="value")
    return widgets.VBox([widgets.HBox([slider, label]), image])
