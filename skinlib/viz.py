"""Plotting helpers shared by the notebooks: image grids, mask overlays, figure titles,
simple count plots, an ipywidgets browser, PNG sample grids and training-loss curves.

Images may be given as file paths, PIL images, uint8 arrays [H, W, 3] / [H, W], or float
tensors/arrays [3, H, W] (or a batch [N, 3, H, W]) in [-1, 1] (the package convention).
Masks are bool/float [H, W] or [1, H, W] with 1 = ill skin. Figures made from demo data carry
"SYNTHETIC demo data" in their title (:func:`title`).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Optional, Sequence

import numpy as np

from .io import read_losses, save_png

if TYPE_CHECKING:
    import torch

SYNTHETIC_LABEL = "SYNTHETIC demo data"
OVERLAY_COLOUR = (0, 255, 140)   # mask contour colour (bright green, visible on every skin tone)
_NOT_PLOTTED = ("step", "epoch", "lr")    # losses.csv columns that are not loss curves


def title(text: str, synthetic: bool = False) -> str:
    """Figure title; prefixed with "SYNTHETIC demo data - " when ``synthetic``."""
    return f"{SYNTHETIC_LABEL} - {text}" if synthetic else text


def to_uint8(image) -> np.ndarray:
    """Any supported image (see module doc) as uint8 [H, W, 3] (grey is replicated)."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        with Image.open(image) as im:
            return np.asarray(im.convert("RGB")).copy()
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB")).copy()
    try:
        import torch

        if isinstance(image, torch.Tensor):
            image = image.detach().cpu().float().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    arr = np.asarray(image)
    if arr.dtype != np.uint8:   # float in [-1, 1], channels first
        if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
            arr = arr.transpose(1, 2, 0)
        arr = np.clip(np.rint((arr.astype(np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3])


def to_mask(mask) -> np.ndarray:
    """A mask (path to an L PNG, array or tensor, [H,W] or [1,H,W]) as bool [H, W]
    (True = ill: value > half of full scale)."""
    from PIL import Image

    if isinstance(mask, (str, Path)):
        with Image.open(mask) as im:
            return np.asarray(im.convert("L")) > 127
    try:
        import torch

        if isinstance(mask, torch.Tensor):
            mask = mask.detach().cpu().float().numpy()
    except ImportError:  # pragma: no cover
        pass
    arr = np.asarray(mask)
    if arr.ndim == 3:
        arr = arr[0] if arr.shape[0] == 1 else arr[..., 0]
    if arr.dtype == bool:
        return arr
    return arr > (127 if arr.dtype == np.uint8 else 0.5)


def mask_outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Boundary pixels (bool [H, W]) of a bool mask: ill pixels with a healthy neighbour."""
    from scipy.ndimage import binary_erosion

    inner = binary_erosion(mask, iterations=width, border_value=1)
    return mask & ~inner


def overlay_mask(image, mask, *, colour: Sequence[int] = OVERLAY_COLOUR, alpha: float = 0.0,
                 contour: bool = True, width: int = 1) -> np.ndarray:
    """uint8 [H, W, 3]: ``image`` with ill pixels tinted by ``alpha`` and the mask's boundary
    drawn in ``colour``."""
    img = to_uint8(image).astype(np.float32)
    m = to_mask(mask)
    col = np.asarray(colour, np.float32)
    if alpha > 0:
        img[m] = img[m] * (1 - alpha) + col * alpha
    if contour:
        img[mask_outline(m, width)] = col
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def image_grid(images: Iterable, *, nrow: int = 8, pad: int = 2, pad_value: int = 0) -> np.ndarray:
    """Tile same-size images (any supported form) into one uint8 [H, W, 3] grid, ``nrow``
    images per row, ``pad`` px borders (torchvision's ``make_grid``)."""
    import torch
    from torchvision.utils import make_grid

    arrs = [to_uint8(im) for im in images]
    if not arrs:
        raise ValueError("image_grid: no images given")
    batch = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)
    grid = make_grid(batch, nrow=nrow, padding=pad, pad_value=pad_value)
    return grid.permute(1, 2, 0).numpy()


def show_grid(images: Sequence, masks: Sequence | None = None, *, nrow: int = 8, text: str = "",
              synthetic: bool = False, overlay_alpha: float = 0.0, pad: int = 2, figsize=None, ax=None):
    """Show images as a grid (like the study's ``real_imgs.png``), optionally with each mask's
    outline drawn on its image. Returns the matplotlib Figure."""
    import matplotlib.pyplot as plt

    if masks is not None:
        images = [overlay_mask(im, m, alpha=overlay_alpha) for im, m in zip(images, masks)]
    grid = image_grid(images, nrow=nrow, pad=pad)
    if ax is None:
        side = 10 if figsize is None else None
        fig, ax = plt.subplots(figsize=figsize or (side, side * grid.shape[0] / grid.shape[1] + 0.4))
    else:
        fig = ax.figure
    ax.imshow(grid)
    ax.set_axis_off()
    ax.set_title(title(text, synthetic))
    fig.tight_layout()
    return fig


def show_rows(rows: Sequence[Sequence], *, col_titles: Sequence[str] = (), text: str = "",
              synthetic: bool = False, size: float = 2.2, titles: Sequence[Sequence[str]] | None = None):
    """A table of images: ``rows[i][j]`` any supported image; ``col_titles`` over the first
    row, or ``titles[i][j]`` over every image."""
    import matplotlib.pyplot as plt

    n, m = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n, m, figsize=(m * size, n * size + 0.5), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(m):
            ax = axes[i][j]
            ax.set_axis_off()
            if j < len(row) and row[j] is not None:
                ax.imshow(to_uint8(row[j]))
            if titles is not None and j < len(titles[i]):
                ax.set_title(titles[i][j], fontsize=9)
            elif i == 0 and j < len(col_titles):
                ax.set_title(col_titles[j], fontsize=9)
    fig.suptitle(title(text, synthetic))
    fig.tight_layout()
    return fig


def histogram(values: Sequence[float], *, text: str, xlabel: str, synthetic: bool = False,
              bins: int | Sequence[float] = 20, ax=None):
    """Histogram of ``values`` with a title; returns the Figure."""
    import matplotlib.pyplot as plt

    fig, ax = (plt.subplots(figsize=(6, 3.5)) if ax is None else (ax.figure, ax))
    ax.hist(np.asarray(values, dtype=float), bins=bins, color="#c0504d", edgecolor="white")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title(text, synthetic))
    fig.tight_layout()
    return fig


def bar_counts(counts: Mapping[str, float], *, text: str, xlabel: str = "", ylabel: str = "count",
               synthetic: bool = False, colours: Sequence | None = None, ax=None):
    """Bar chart of ``{label: value}`` (in the given order); returns the Figure."""
    import matplotlib.pyplot as plt

    labels = list(counts)
    fig, ax = (plt.subplots(figsize=(max(5, 0.35 * len(labels) + 2), 3.5)) if ax is None else (ax.figure, ax))
    ax.bar(range(len(labels)), [counts[k] for k in labels], color=colours or "#4f81bd")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title(text, synthetic))
    fig.tight_layout()
    return fig


def crop_browser(crops_dir, rows: Sequence[Mapping[str, str]] | None = None, *, synthetic: bool = False,
                 fields: Sequence[str] = ("source", "disease", "patient", "x0", "y0", "coverage", "contrast")):
    """ipywidgets browser over a crop folder: a slider picks a crop, shown with its mask
    outline and its two-colour mask, plus its manifest fields. Returns the widget."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    from .data.dataset import list_crop_rows
    from .io import check_manifest_paths

    root = Path(crops_dir)
    rows = list(rows) if rows is not None else list_crop_rows(root)
    if not rows:
        raise ValueError(f"crop_browser: no crops in {root}")
    check_manifest_paths(root, rows)
    out = widgets.Output()
    slider = widgets.IntSlider(value=0, min=0, max=len(rows) - 1, description="crop", continuous_update=False)

    def render(change=None):
        row = rows[slider.value]
        panels = [to_uint8(root / row["image"])]
        names = [row["image"]]
        if row.get("mask") and (root / row["mask"]).is_file():
            panels.append(overlay_mask(panels[0], root / row["mask"], alpha=0.25))
            names.append("ill skin (mask)")
        if row.get("mask2") and (root / row["mask2"]).is_file():
            panels.append(to_uint8(root / row["mask2"]))
            names.append("two-colour mask")
        with out:
            out.clear_output(wait=True)
            fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
            for ax, im, name in zip(axes[0], panels, names):
                ax.imshow(im)
                ax.set_title(name, fontsize=9)
                ax.set_axis_off()
            info = ", ".join(f"{k}={row[k]}" for k in fields if row.get(k, "") != "")
            fig.suptitle(title(info, synthetic), fontsize=9)
            fig.tight_layout()
            plt.show()

    slider.observe(render, names="value")
    render()
    return widgets.VBox([slider, out])


def thumbnail(image, max_side: int = 512) -> np.ndarray:
    """uint8 [h, w, 3] copy of an image scaled down (antialiased) so its longer side is at
    most ``max_side``."""
    from PIL import Image

    im = Image.fromarray(to_uint8(image))
    im.thumbnail((max_side, max_side), Image.LANCZOS)
    return np.asarray(im)


def save_grid(path, images: torch.Tensor, nrow: int = 8, padding: int = 2) -> None:
    """Save images [N, 3, H, W] in [-1, 1] as one PNG grid (``nrow`` per row, white padding)."""
    import torch
    from torchvision.utils import make_grid

    grid = make_grid((images.detach().float().cpu().clamp(-1, 1) + 1) / 2, nrow=nrow,
                     padding=padding, pad_value=1.0)
    save_png(path, (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())


def plot_losses(run_dir, columns: Optional[Sequence[str]] = None, smooth: int = 20,
                synthetic: bool = False):
    """One panel per logged quantity of ``run_dir/losses.csv`` against the step: the raw values
    (faint) and a moving average over ``smooth`` steps; a log y-axis for a positive quantity
    whose maximum exceeds 100 x its median (a transient spike). ``synthetic``: the crops are the
    SYNTHETIC demo data, and the figure title says so."""
    import matplotlib.pyplot as plt

    rows = read_losses(run_dir)
    if not rows:
        raise ValueError(f"{Path(run_dir) / 'losses.csv'} has no rows yet: train first.")
    columns = list(columns or [k for k in rows[0] if k not in _NOT_PLOTTED])
    steps = np.array([r["step"] for r in rows])
    fig, axes = plt.subplots(1, len(columns), figsize=(4 * len(columns), 3), squeeze=False)
    for ax, name in zip(axes[0], columns):
        values = np.array([r[name] for r in rows])
        ax.plot(steps, values, alpha=0.3, lw=0.8)
        k = max(1, min(smooth, len(values) // 5 or 1))
        if k > 1:
            avg = np.convolve(values, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1:], avg, lw=1.5, label=f"mean of {k} steps")
            ax.legend(fontsize=8)
        positive = values[np.isfinite(values)]
        if positive.size and positive.min() > 0 and positive.max() > 100 * np.median(positive):
            ax.set_yscale("log")  # a transient spike would flatten the rest of the curve
            name += " (log scale)"
        ax.set_title(name)
        ax.set_xlabel("step")
    fig.suptitle(title(f"training losses ({Path(run_dir).name})", synthetic))
    fig.tight_layout()
    return fig
