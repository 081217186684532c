"""Inpainting change: how much an inpainted variant differs from its source crop inside vs
outside the edited area (the ``_edit.png`` masks written by :mod:`skinlib.augment.generate`).

(Part of the former ``skinlib/metrics.py``.)
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from .images import _image_rows, _say


SOURCE_COLUMNS = ("source_crop", "source_image", "source")
EDIT_MASK_COLUMNS = ("edit", "edit_mask", "edited_mask")


def _resolve_source(value: str, folder: Path, real_crops: Path | None, *, column: str) -> Path | None:
    """The source crop file named by a manifest value: a file of ``real_crops`` (a bare name, as
    :mod:`skinlib.augment.generate` writes), an absolute path, or a relative path with a folder part
    (``../crops/000001.png``) from ``folder``. A bare name is never looked up in ``folder``
    itself (that is where the variants live). ``source`` is not accepted as an absolute path
    (in real-crop manifests it names the PHOTO)."""
    if not value:
        return None
    p = Path(value)
    candidates = []
    if real_crops is not None:
        candidates += [real_crops / p, real_crops / p.name]
    if p.is_absolute():
        if column != "source":
            candidates.append(p)
    elif len(p.parts) > 1:
        candidates.append(folder / p)
    return next((c for c in candidates if c.is_file()), None)


def source_crop_of(row: Mapping[str, str], folder, real_crops=None) -> Path | None:
    """Path of the source crop of a generated image's manifest row (None when not given/found)."""
    for c in SOURCE_COLUMNS:
        if row.get(c):
            found = _resolve_source(row[c], Path(folder), Path(real_crops) if real_crops else None, column=c)
            if found is not None:
                return found
    return None


def inpainting_change(folder, *, real_crops=None, max_images: int | None = None, seed: int = 0,
                      verbose: bool = True) -> dict:
    """How much each inpainted variant differs from its source crop inside vs outside the
    edited area.

    Needs, per manifest row, the source crop (column ``source_crop`` as written by
    :mod:`skinlib.augment.generate`, or ``source_image``/``source``: a path relative to ``folder``, a
    file name in ``real_crops``) and the edited-area mask (column ``edit``/``edit_mask`` or
    ``NNNNNN_edit.png`` beside the image; L mode, 255 = re-synthesised pixel). Differences are mean |variant - source| over RGB in [0, 1].
    Returns n, edited_fraction, mad_inside, mad_outside (means over images), and n_missing
    (rows without source or edit mask, named in a message).
    """
    from PIL import Image

    folder = Path(folder)
    real_crops = Path(real_crops) if real_crops else None
    rows = _image_rows(folder)
    if max_images is not None and len(rows) > max_images:
        pick = np.sort(np.random.default_rng(seed).choice(len(rows), size=max_images, replace=False))
        rows = [rows[i] for i in pick]
    inside, outside, frac, missing = [], [], [], []
    for row in rows:
        img_path = folder / row["image"]
        src = source_crop_of(row, folder, real_crops)
        edit_name = next((row[c] for c in EDIT_MASK_COLUMNS if row.get(c)), f"{img_path.stem}_edit.png")
        edit_path = folder / edit_name
        if src is None or not edit_path.is_file() or not img_path.is_file():
            missing.append(row["image"])
            continue
        with Image.open(img_path) as a, Image.open(src) as b, Image.open(edit_path) as m:
            va = np.asarray(a.convert("RGB"), dtype=np.float64) / 255.0
            vb = np.asarray(b.convert("RGB"), dtype=np.float64) / 255.0
            me = np.asarray(m.convert("L")) > 127
        if va.shape != vb.shape or me.shape != va.shape[:2]:
            missing.append(f"{row['image']} (size differs from its source or edit mask)")
            continue
        diff = np.abs(va - vb).mean(axis=2)
        frac.append(me.mean())
        inside.append(diff[me].mean() if me.any() else np.nan)
        outside.append(diff[~me].mean() if (~me).any() else np.nan)
    if missing:
        _say(f"{folder}: {len(missing)} of {len(rows)} images lack a source crop or an edit mask "
             f"(e.g. {missing[:3]}); they are left out of the inpainting metrics.", verbose)
    if not inside:
        declared = sum(any(r.get(c) for c in SOURCE_COLUMNS) for r in rows)
        if declared:
            raise ValueError(f"{folder}: {declared} images name a source crop, but none was found together with "
                             f"its edited-area mask; pass real_crops= the crops folder they were made from "
                             f"(and check that it still holds those crops).")
        raise ValueError(f"{folder}: no image has both a source crop and an edited-area mask: the folder is "
                         f"not inpainting output (manifest column source_crop and NNNNNN_edit.png needed).")
    return {"n": len(inside), "n_missing": len(missing), "edited_fraction": float(np.mean(frac)),
            "mad_inside": float(np.nanmean(inside)), "mad_outside": float(np.nanmean(outside))}


def is_inpainting_folder(folder) -> bool:
    """True when the folder's manifest links images to source crops and edit masks exist."""
    folder = Path(folder)
    try:
        rows = _image_rows(folder)
    except (FileNotFoundError, ValueError):
        return False
    row = rows[0]
    has_source = any(row.get(c) for c in SOURCE_COLUMNS)
    edit = next((row[c] for c in EDIT_MASK_COLUMNS if row.get(c)), f"{Path(row['image']).stem}_edit.png")
    return has_source and (folder / edit).is_file()
