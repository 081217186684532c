"""The crop folder format: listing its rows, loading a crop, the torch Dataset, its identity.

Crop folder format (written by :mod:`skinlib.data.crops`, also used by every generator's export):

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

from ..io import check_manifest_paths, inside, read_csv
from .photos import BadInputError, open_image

MANIFEST = "manifest.csv"

SPLITS = ("train", "test", "ood")   # the patient-level split of notebook 01 (manifest column ``split``):
# "ood" = a patient of a held-out site, tested out of distribution (never trained on)
HELD_OUT = ("test", "ood")   # the sides no generator or detector may train on
TRAIN_ONLY = "train-only"    # start of split.csv's note on the patients of a disease too small to split


def list_crop_rows(crops_dir, split: str | None = None) -> list[dict[str, str]]:
    """Rows describing the crops of a folder: its ``manifest.csv`` or, without one, every
    ``*.png`` that is not a ``*_mask.png`` / ``*_mask2.png`` / ``*_edit.png`` (with empty metadata).

    ``split`` ("train" / "test" / "ood"): only the crops of that side of notebook 01's patient split
    (the manifest's ``split`` column). Raises FileNotFoundError / ValueError with the folder name
    and the fix when the folder is missing, holds no crops, or has no split column when one is asked.
    """
    crops_dir = Path(crops_dir)
    if not crops_dir.is_dir():
        raise FileNotFoundError(
            f"Crops folder {crops_dir} does not exist: run notebook 01 (or `python -m skinlib run "
            f"--only 01`) first, or pass the folder that holds NNNNNN.png crops.")
    manifest = crops_dir / MANIFEST
    if manifest.is_file():
        rows = read_csv(manifest)
        check_manifest_paths(crops_dir, rows)        # no row may name a file outside the folder
    else:
        companions = ("_mask", "_mask2", "_edit")  # files that describe a crop, not crops
        rows = [{"image": p.name} for p in sorted(crops_dir.glob("*.png")) if not p.stem.endswith(companions)]
    if not rows:
        raise ValueError(
            f"Crops folder {crops_dir} holds no crops (no rows in {MANIFEST} and no *.png): "
            f"check the path or re-run the cropping notebook.")
    if split is not None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
        if "split" not in rows[0]:
            raise ValueError(
                f"{crops_dir / MANIFEST} has no 'split' column (crops made before the patient split existed, "
                f"or a folder without a manifest). Fix: re-run notebook 01 (`python -m skinlib run --only 01`) "
                f"so every patient is assigned to train or test, or pass split=None to use every crop.")
        rows = [r for r in rows if r["split"] == split]
        if not rows:
            notes = train_only_text(crops_dir.parent if crops_dir.name in ("healthy", "low_contrast") else crops_dir)
            raise ValueError(f"Crops folder {crops_dir} holds no crop of the {split!r} split"
                             + (f": every disease is too small for a patient split ({notes}); add patients"
                                if notes else ": re-run notebook 01 with another test share / split seed") + ".")
    return rows


def train_only_text(crops_dir) -> str:
    """The train-only notes of a crops folder's ``split.csv`` (written by
    :func:`skinlib.data.split.write_split`; "" when none or no file), for error messages."""
    path = Path(crops_dir) / "split.csv"
    if not path.is_file():
        return ""
    notes = sorted({r.get("note", "") for r in read_csv(path) if r.get("note", "").startswith(TRAIN_ONLY)})
    return "; ".join(notes)


def load_crop(crops_dir, row: dict, image_size: int | None = None, *,
              resize: bool = True) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """One crop of a folder in the crop format, by its manifest ``row``.

    Returns ``(image, mask, has_mask)``: image float32 [3, S, S] in [-1, 1]; mask float32
    [1, S, S] in {0, 1}, 1 = ill skin. The mask is the file the row's ``mask`` column names;
    when the row names none (no column, or empty), the companion ``<stem>_mask.png`` if it
    exists, else no mask is expected: all zeros and ``has_mask`` False (e.g. generated folders).

    ``image_size``: when the crop is not ``image_size`` x ``image_size``, ``resize=True`` resizes
    it (bicubic; mask nearest), e.g. to train at 64 px; ``resize=False`` refuses it, for callers
    that need the crop's exact pixels (GLIDE generation keeps them byte-identical outside its
    edits). Raises :class:`BadInputError` naming the file and the fix when the crop or a mask it
    names is missing or unreadable, when the mask's size differs from the crop's, or when a crop
    has the wrong size and ``resize`` is False.
    """
    from PIL import Image

    crops_dir = Path(crops_dir)
    image_path = inside(crops_dir, row["image"], what=f"crop row {row.get('image')!r}, column image")
    im = open_image(image_path)
    try:
        if image_size is not None and im.size != (image_size, image_size) and not resize:
            raise BadInputError(
                image_path, f"crop is {im.size[0]}x{im.size[1]} px, expected {image_size}x{image_size} "
                            f"(it is not resized, so that its pixels are kept exactly).",
                f"re-make the crops at {image_size} px (notebook 01, window={image_size}), or resize "
                f"the crop and its mask yourself")
        rgb = im.convert("RGB")
    finally:
        im.close()
    w, h = rgb.size
    named = (row.get("mask") or "").strip()
    mask_path = inside(crops_dir, named or f"{Path(row['image']).stem}_mask.png",
                       what=f"crop row {row['image']!r}, column mask")
    has_mask = bool(named) or mask_path.is_file()
    if has_mask:
        if named and not mask_path.is_file():
            raise BadInputError(
                mask_path, f"the manifest names this mask for crop {row['image']}, but the file does not exist.",
                f"restore the mask, or re-make the crops (notebook 01); if the crop has no mask, "
                f"empty its 'mask' field in {crops_dir / MANIFEST}")
        m = open_image(mask_path)
        try:
            if m.size != (w, h):
                raise BadInputError(
                    mask_path, f"mask is {m.size[0]}x{m.size[1]} px but its crop {row['image']} is {w}x{h}.",
                    "re-make the crops (notebook 01) so that every mask has its crop's size")
            grey = m.convert("L")
        finally:
            m.close()
    if image_size is not None and (w, h) != (image_size, image_size):
        rgb = rgb.resize((image_size, image_size), Image.BICUBIC)
        if has_mask:
            grey = grey.resize((image_size, image_size), Image.NEAREST)
    image = torch.from_numpy(np.asarray(rgb, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0
    if has_mask:
        mask = torch.from_numpy((np.asarray(grey) > 127).astype(np.float32))[None]
    else:
        mask = torch.zeros(1, *image.shape[1:])
    return image.clamp(-1, 1).contiguous(), mask, has_mask


class CropDataset(Dataset):
    """Crops of a folder in the crop format above.

    Item ``i`` is ``(image, mask, label)``: ``image`` float32 [3, S, S] in [-1, 1];
    ``mask`` float32 [1, S, S] in {0, 1} (1 = ill skin; all zeros when the folder has no masks);
    ``label`` int64 index of the row's disease in ``self.classes`` (0 when unknown).
    ``image_size`` resizes (bicubic, antialiased; nearest for masks), e.g. 64 or 128;
    ``None`` keeps the stored size. ``classes`` fixes the label order (default: sorted
    diseases found in the manifest). ``split`` ("train" / "test" / None): only the crops of that
    side of notebook 01's patient split (see :func:`list_crop_rows`).
    """

    def __init__(self, crops_dir, image_size: int | None = None, classes: Sequence[str] | None = None,
                 split: str | None = None):
        self.root = Path(crops_dir)
        self.split = split
        self.rows = list_crop_rows(self.root, split)
        found = sorted({r.get("disease", "") or "unknown" for r in self.rows})
        self.classes = list(classes) if classes is not None else found
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.rows)

    def label(self, i: int) -> int:
        name = self.rows[i].get("disease", "") or "unknown"
        return self.classes.index(name) if name in self.classes else 0

    def __getitem__(self, i: int):
        image, mask, _ = load_crop(self.root, self.rows[i], self.image_size)
        return image, mask, torch.tensor(self.label(i), dtype=torch.long)


def crops_are_synthetic(crops_dir) -> bool:
    """True when a crops folder was cut from the SYNTHETIC demo dataset (its ``summary.json``,
    written by :mod:`skinlib.data.crops`, says so); figures then say "SYNTHETIC demo data".
    False without a ``summary.json`` (crops made elsewhere); an unreadable one raises ValueError
    naming the file, since guessing would drop the SYNTHETIC label."""
    from ..io import load_json

    path = Path(crops_dir) / "summary.json"
    if not path.is_file():
        return False
    try:
        summary = load_json(path)
    except (ValueError, OSError) as e:
        raise ValueError(f"{path} cannot be read ({type(e).__name__}: {e}); it says whether the crops are "
                         f"SYNTHETIC demo data. Fix: re-run notebook 01 (`python -m skinlib run --only 01`), "
                         f"or restore the file.") from e
    if not isinstance(summary, dict) or not isinstance(summary.get("synthetic", False), bool):
        raise ValueError(f"{path} is not a crops summary (a JSON object whose 'synthetic' is true/false): "
                         f"re-run notebook 01 (`python -m skinlib run --only 01`), or restore the file.")
    return summary.get("synthetic", False)


def crops_content_sha256(crops_dir, rows) -> str:
    """SHA-256 over the names and bytes of the crops ``rows`` of ``crops_dir``: identifies the
    crops themselves (crop names repeat across folders, their content does not)."""
    import hashlib

    h = hashlib.sha256()
    for row in rows:
        h.update(row["image"].encode() + b"\0")
        h.update(hashlib.sha256(inside(crops_dir, row["image"], what="column image").read_bytes()).digest())
    return h.hexdigest()
