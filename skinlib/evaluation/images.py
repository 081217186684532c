"""Loading folders of crops for the image metrics: uint8 tensors at one common size.

Every folder is in the crop format (``NNNNNN.png`` + optional ``manifest.csv``, see
:mod:`skinlib.data.dataset`). Images are loaded as uint8 tensors ``[N, 3, S, S]`` (RGB, 0..255)
at one common size ``S``; anything else (grey, RGBA, 16-bit, palette; other sizes) is converted
with a printed message, never silently. Too few images for stable FID/KID give a
:class:`SmallSampleWarning`. (Part of the former ``skinlib/metrics.py``.)
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..data.dataset import list_crop_rows


RECOMMENDED_IMAGES = 2048   # fewer images than feature dimensions: FID is biased and unstable
MIN_IMAGES = 50             # below this, FID/KID are close to meaningless


class SmallSampleWarning(UserWarning):
    """A folder holds too few images for stable FID/KID values."""


def _say(msg: str, verbose: bool = True) -> None:
    if verbose:
        print(f"[metrics] {msg}")


# ----------------------------------------------------------------------------------------
# loading folders
# ----------------------------------------------------------------------------------------
@dataclass
class FolderImages:
    """Images of one folder. ``images``: uint8 [N, 3, S, S] (RGB); ``rows``: the manifest rows
    of those images (same order); ``notes``: messages about conversions; ``skipped``: (file,
    reason) of unreadable files (not in ``images``)."""

    name: str
    folder: Path
    images: torch.Tensor
    rows: list[dict]
    notes: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _to_rgb_uint8(im) -> tuple[np.ndarray, str | None]:
    """PIL image -> HxWx3 uint8 array; second value: the original mode when it was converted."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8), None
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im).astype(np.float64)
        top = 65535.0 if (mode.startswith("I;16") or arr.max() > 255) else 255.0
        arr = np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8)
        return np.stack([arr] * 3, axis=-1), mode
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info):
        # composite on white would invent colour; drop alpha (documented in the message)
        return np.asarray(im.convert("RGBA").convert("RGB"), dtype=np.uint8), mode
    return np.asarray(im.convert("RGB"), dtype=np.uint8), mode


def _image_rows(folder: Path, split: str | None = None) -> list[dict]:
    rows = list_crop_rows(folder, split=split)
    # without a manifest list_crop_rows lists every non-mask PNG: drop edited-area masks too
    return [r for r in rows if not Path(r["image"]).stem.endswith("_edit")]


def load_folder_images(folder, *, image_size: int | None = None, max_images: int | None = None,
                       seed: int = 0, name: str | None = None, split: str | None = None,
                       verbose: bool = True) -> FolderImages:
    """Load (a seeded random subset of at most ``max_images``) images of a crop folder;
    ``split`` ("train" / "test"): only that side of notebook 01's patient split (manifest
    column ``split``; error naming the fix when the column is missing).

    Returns uint8 ``[N, 3, S, S]`` with ``S = image_size`` or, when None, the most common side
    in the folder. Other modes are converted to RGB and other sizes resized (bicubic), each
    with a message; unreadable files are skipped and listed (message names each file).
    Raises FileNotFoundError / ValueError (from :func:`skinlib.data.list_crop_rows`) for a
    missing or empty folder and ValueError when no image could be read.
    """
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    name = name or folder.name
    rows = _image_rows(folder, split)
    if max_images is not None and len(rows) > max_images:
        pick = np.sort(np.random.default_rng(seed).choice(len(rows), size=max_images, replace=False))
        rows = [rows[i] for i in pick]
    arrays, kept, skipped = [], [], []
    modes: Counter = Counter()
    for row in rows:
        path = folder / row["image"]
        try:
            with Image.open(path) as im:
                im.load()
                arr, mode = _to_rgb_uint8(im)
        except FileNotFoundError:
            skipped.append((str(path), "file listed in the manifest does not exist"))
            continue
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            skipped.append((str(path), f"unreadable image ({type(e).__name__}: {e})"))
            continue
        if mode is not None:
            modes[mode] += 1
        arrays.append(arr)
        kept.append(row)
    notes: list[str] = []
    for path, why in skipped:
        notes.append(f"{name}: skipped {path}: {why}. Re-export or delete the file.")
    if not arrays:
        raise ValueError(f"Folder {folder} ({name}): none of its {len(rows)} images could be read; "
                         f"see the messages above, re-export the folder.")
    if modes:
        notes.append(f"{name}: converted {sum(modes.values())} of {len(arrays)} images to RGB "
                     f"(modes: {dict(sorted(modes.items()))}; alpha channels dropped, 16-bit scaled to 8-bit).")
    sizes = Counter((a.shape[1], a.shape[0]) for a in arrays)   # (w, h)
    if image_size is None:
        (w, h), _ = sizes.most_common(1)[0]
        if w != h:
            raise ValueError(f"Folder {folder} ({name}): images are {w}x{h}, not square; pass "
                             f"image_size=... to resize them to a square size.")
        image_size = w
    target = (int(image_size), int(image_size))
    off = {s: c for s, c in sizes.items() if s != target}
    if off:
        n_off = sum(off.values())
        notes.append(f"{name}: resized {n_off} of {len(arrays)} images from "
                     f"{', '.join(f'{w}x{h} (x{c})' for (w, h), c in sorted(off.items()))} "
                     f"to {target[0]}x{target[1]} (bicubic).")
        for i, a in enumerate(arrays):
            if (a.shape[1], a.shape[0]) != target:
                arrays[i] = np.asarray(Image.fromarray(a).resize(target, Image.BICUBIC), dtype=np.uint8)
    for n in notes:
        _say(n, verbose)
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return FolderImages(name, folder, images, kept, notes, skipped)


def warn_sample_size(n: int, name: str, *, what: str = "FID/KID") -> str | None:
    """Warn (SmallSampleWarning, message with the number) when ``n`` is too small for stable
    ``what``; returns the message or None."""
    if n >= RECOMMENDED_IMAGES:
        return None
    if n < MIN_IMAGES:
        msg = (f"{name}: only {n} images: {what} from fewer than {MIN_IMAGES} images is close to "
               f"meaningless (dominated by sample-size bias); use at least {RECOMMENDED_IMAGES}.")
    else:
        msg = (f"{name}: {n} images: {what} is biased and unstable below {RECOMMENDED_IMAGES} "
               f"images; compare only values computed with the same number of images.")
    warnings.warn(msg, SmallSampleWarning, stacklevel=2)
    return msg


# ----------------------------------------------------------------------------------------
# examples of the downstream detector
# ----------------------------------------------------------------------------------------
def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, s, s] -> float32 in [-1, 1]."""
    return x.float() / 127.5 - 1.0


def load_images(paths: Sequence[Path], size: int, *, desc: str = "", progress: bool = False,
                log: list | None = None, native: int = 256) -> torch.Tensor:
    """uint8 [N, 3, size, size] of RGB images (bilinear resize); a missing or unreadable file
    is an error naming it. ``log``, when given, receives ``(file, what was done)`` for every image
    that was converted to RGB, or resized from a size other than the crop format's ``native`` x
    ``native`` (the planned resize of every crop to a classifier's input is not news)."""
    from PIL import Image, UnidentifiedImageError
    from tqdm.auto import tqdm

    out = torch.empty(len(paths), 3, size, size, dtype=torch.uint8)
    for i, p in enumerate(tqdm(paths, desc=desc or "loading images", disable=not progress, leave=False)):
        try:
            with Image.open(p) as im:
                if im.mode != "RGB":
                    if log is not None:
                        log.append((str(p), f"converted from {im.mode} to RGB"))
                    im = im.convert("RGB")
                if im.size != (size, size):
                    if log is not None and im.size != (native, native):
                        log.append((str(p), f"resized from {im.size[0]}x{im.size[1]} to {size}x{size}"))
                    im = im.resize((size, size), Image.BILINEAR)
                out[i] = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)
        except (OSError, UnidentifiedImageError) as e:
            raise ValueError(f"cannot read image {p}: {e}. Fix: re-create it (re-run the notebook that made "
                             f"it) or remove its row from the manifest beside it.") from e
    return out


def standard_augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The standard-augmentation control: random horizontal/vertical flips, a random multiple of
    90 degrees, and colour jitter (brightness, contrast, saturation x U(0.8, 1.2)) of a uint8
    batch [N, 3, s, s]; returns uint8."""
    n = len(x)
    flips = torch.rand(n, 2, generator=g) < 0.5
    x = torch.where(flips[:, 0, None, None, None], x.flip(3), x)
    x = torch.where(flips[:, 1, None, None, None], x.flip(2), x)
    k = torch.randint(0, 4, (n,), generator=g)
    x = torch.stack([torch.rot90(xi, int(ki), dims=(1, 2)) for xi, ki in zip(x, k)])
    f = x.float()
    b, c, s = (0.8 + 0.4 * torch.rand(3, n, 1, 1, 1, generator=g))
    f = f * b
    mean = f.mean(dim=(1, 2, 3), keepdim=True)
    f = mean + (f - mean) * c
    grey = (0.299 * f[:, :1] + 0.587 * f[:, 1:2] + 0.114 * f[:, 2:3])
    f = grey + (f - grey) * s
    return f.clamp(0, 255).round().to(torch.uint8)
