"""skinlib.viz: image conversions, mask overlays, grids, titles, the crop browser."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import torch

from skinlib import viz
from skinlib.io import save_png, write_csv


def test_to_uint8_accepts_every_image_form(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    save_png(tmp_path / "a.png", arr)
    tensor = torch.from_numpy(arr).permute(2, 0, 1).float() / 127.5 - 1       # [3,H,W] in [-1, 1]
    for form in (arr, tmp_path / "a.png", str(tmp_path / "a.png"), tensor, tensor.numpy()):
        assert np.array_equal(viz.to_uint8(form), arr)
    grey = viz.to_uint8(arr[..., 0])
    assert grey.shape == (6, 5, 3) and np.array_equal(grey[..., 2], arr[..., 0])


def test_overlay_marks_only_the_mask_outline_and_tint():
    img = np.full((9, 9, 3), 100, np.uint8)
    mask = np.zeros((9, 9), bool)
    mask[2:7, 2:7] = True
    out = viz.overlay_mask(img, mask)
    changed = (out != img).any(-1)
    assert changed.sum() == 16 and changed[2, 2] and not changed[4, 4] and not changed[0, 0]   # 5x5 ring
    tinted = viz.overlay_mask(img, torch.from_numpy(mask).float()[None], alpha=0.5, contour=False)
    assert (tinted[mask] != 100).any(-1).all() and (tinted[~mask] == 100).all()


def test_grid_layout_and_titles():
    imgs = [np.full((4, 4, 3), i * 20, np.uint8) for i in range(10)]
    grid = viz.image_grid(imgs, nrow=4, pad=2)
    assert grid.shape == (2 + 3 * 6, 2 + 4 * 6, 3)
    assert (grid[2:6, 2:6] == 0).all() and (grid[2:6, 8:12] == 20).all()
    assert viz.title("crops", synthetic=True).startswith("SYNTHETIC demo data")
    assert viz.title("crops") == "crops"
    fig = viz.show_grid(imgs, [np.ones((4, 4), bool)] * 10, nrow=4, text="x", synthetic=True)
    assert fig.axes[0].get_title() == "SYNTHETIC demo data - x"
    assert viz.thumbnail(np.zeros((100, 40, 3), np.uint8), 50).shape == (50, 20, 3)


def test_crop_browser_builds_a_widget(tmp_path):
    rows = []
    for i in range(2):
        save_png(tmp_path / f"{i:06d}.png", np.full((8, 8, 3), 50 * i, np.uint8))
        save_png(tmp_path / f"{i:06d}_mask.png", np.eye(8, dtype=np.uint8) * 255)
        rows.append({"image": f"{i:06d}.png", "mask": f"{i:06d}_mask.png", "disease": "d", "patient": "p"})
    write_csv(tmp_path / "manifest.csv", rows)
    import matplotlib.pyplot as plt

    plt.close("all")
    box = viz.crop_browser(tmp_path, synthetic=True)
    slider = box.children[0]
    assert slider.max == 1

    def shown():
        fig = plt.figure(plt.get_fignums()[-1])                  # the browser's latest figure
        return fig, [ax.get_title() for ax in fig.axes], fig.axes[0].images[0].get_array()

    fig, titles, pixels = shown()
    assert titles == ["000000.png", "ill skin (mask)"] and (np.asarray(pixels) == 0).all()
    slider.value = 1                                              # re-renders with crop 1
    fig, titles, pixels = shown()
    assert titles == ["000001.png", "ill skin (mask)"] and (np.asarray(pixels) == 50).all()
    assert fig._suptitle.get_text().startswith("SYNTHETIC demo data") and "patient=p" in fig._suptitle.get_text()
    plt.close("all")
