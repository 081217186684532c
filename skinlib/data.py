"""Finding photo/mask pairs, loading images safely, and the torch Dataset over crops.

Crop folder format (written by :mod:`skinlib.crops`, also used by every generator's export):

    <crops>/NNNNNN.png          RGB crop, uint8
    <crops>/NNNNNN_mask.png     ill-skin mask, L mode, 255 = ill skin, 0 = healthy (optional for
                                generated images)
    <crops>/NNNNNN_mask2.png    two-colour mask (optional)
    <crops>/manifest.csv        one row per crop; columns include at least ``image`` (file name
                                relative to the folder) and, where known, ``mask``, ``disease``,
                                ``patient``
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .io import read_csv

MANIFEST = "manifest.csv"


def list_crop_rows(crops_dir) -> list[dict[str, str]]:
    """Rows describing the crops of a folder: its ``manifest.csv`` or, without one, every
    ``*.png`` that is not a ``*_mask*.png`` (with empty metadata).

    Raises FileNotFoundError / ValueError with the folder name and the fix when the folder is
    missing or holds no crops.
    """
    crops_dir = Path(crops_dir)
    if not crops_dir.is_dir():
        raise FileNotFoundError(
            f"Crops folder {crops_dir} does not exist: run notebook 01 (or `python -m skinlib run "
            f"--only 01`) first, or pass the folder that holds NNNNNN.png crops.")
    manifest = crops_dir / MANIFEST
    if manifest.is_file():
        rows = read_csv(manifest)
    else:
        rows = [{"image": p.name} for p in sorted(crops_dir.glob("*.png")) if "_mask" not in p.stem]
    if not rows:
        raise ValueError(
            f"Crops folder {crops_dir} holds no crops (no rows in {MANIFEST} and no *.png): "
            f"check the path or re-run the cropping notebook.")
    return rows


class CropDataset(Dataset):
    """Crops of a folder in the crop format above.

    Item ``i`` is ``(image, mask, label)``: ``image`` float32 [3, S, S] in [-1, 1];
    ``mask`` float32 [1, S, S] in {0, 1} (1 = ill skin; all zeros when the folder has no masks);
    ``label`` int64 index of the row's disease in ``self.classes`` (0 when unknown).
    ``image_size`` resizes (bilinear, antialiased; nearest for masks), e.g. 64 or 128;
    ``None`` keeps the stored size. ``classes`` fixes the label order (default: sorted
    diseases found in the manifest).
    """

    def __init__(self, crops_dir, image_size: int | None = None, classes: Sequence[str] | None = None):
        self.root = Path(crops_dir)
        self.rows = list_crop_rows(self.root)
        found = sorted({r.get("disease", "") or "unknown" for r in self.rows})
        self.classes = list(classes) if classes is not None else found
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.rows)

    def label(self, i: int) -> int:
        name = self.rows[i].get("disease", "") or "unknown"
        return self.classes.index(name) if name in self.classes else 0

    def __getitem__(self, i: int):
        from PIL import Image

        row = self.rows[i]
        path = self.root / row["image"]
        with Image.open(path) as im:
            im = im.convert("RGB")
            if self.image_size is not None and im.size != (self.image_size, self.image_size):
                im = im.resize((self.image_size, self.image_size), Image.BICUBIC)
            arr = np.asarray(im, dtype=np.float32)
        image = torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0
        mask_name = row.get("mask") or f"{Path(row['image']).stem}_mask.png"
        mask_path = self.root / mask_name
        h, w = image.shape[1:]
        if mask_path.is_file():
            with Image.open(mask_path) as m:
                m = m.convert("L")
                if m.size != (w, h):
                    m = m.resize((w, h), Image.NEAREST)
                mask = torch.from_numpy((np.asarray(m) > 127).astype(np.float32))[None]
        else:
            mask = torch.zeros(1, h, w)
        return image.clamp(-1, 1), mask, torch.tensor(self.label(i), dtype=torch.long)
