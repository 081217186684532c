"""Photos and masks: finding photo/mask pairs, loading images safely, encoding PNGs.

Photo dataset layout (see ``data_README.md``)::

    <root>/<disease>/<patient>/<example>/<name>.png|jpg|jpeg|tif|tiff   photo
    <root>/<disease>/<patient>/<example>/<name>_mask.<any of those>     its mask, ill skin white

A mask pixel is ill where its value is > 0.3 of full scale (``MASK_THRESHOLD``); RGB(A) and
palette masks are reduced to grey (ITU-R 601 luma, times alpha), 16-bit masks use 65535 as
full scale. Photos are turned into RGB uint8 (EXIF orientation applied, grey replicated,
alpha dropped, 16-bit scaled); every such conversion is reported as a note. A file that
cannot be used raises :class:`BadInputError` naming the file, the reason and the fix.

The crop folder format and the Dataset over it are in :mod:`skinlib.data.dataset`.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MASK_SUFFIX = "_mask"
MASK_THRESHOLD = 0.3          # ill where value > 0.3 of full scale
MAX_PIXELS = 100_000_000      # decompression-bomb guard: larger images are refused
LAYOUT = "<root>/<disease>/<patient>/<example>/<name>.png with <name>_mask.png beside it"


class BadInputError(ValueError):
    """An input file that cannot be used. ``str(err)`` names the file, the reason and the fix."""

    def __init__(self, path, reason: str, fix: str = ""):
        self.path = str(path)
        self.reason = reason
        self.fix = fix
        super().__init__(f"{self.path}: {reason}" + (f" Fix: {fix}" if fix else ""))


@dataclass(frozen=True)
class PhotoPair:
    """A photo and its mask. ``source``/``mask_source`` are paths relative to the dataset root
    (POSIX style); ``disease``, ``patient``, ``example`` are the folder names."""

    root: Path
    source: str
    mask_source: str
    disease: str
    patient: str
    example: str

    @property
    def photo(self) -> Path:
        return self.root / self.source

    @property
    def mask(self) -> Path:
        return self.root / self.mask_source


@dataclass(frozen=True)
class Skip:
    """A file or folder of the dataset that was not used: ``file`` relative to the root."""

    file: str
    reason: str

    def as_row(self) -> dict[str, str]:
        return {"file": self.file, "reason": self.reason}


def natural_key(text: str) -> list:
    """Sort key that orders ``persona2`` before ``persona10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _sorted_children(folder: Path) -> list[Path]:
    # hidden entries (.DS_Store, .ipynb_checkpoints, ...) are not data
    return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: natural_key(p.name))


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def find_pairs(data_dir) -> tuple[list[PhotoPair], list[Skip]]:
    """Walk a dataset in the layout above; return ``(pairs, skipped)``.

    ``pairs`` are sorted naturally by path. ``skipped`` lists every file or folder below the
    root that was not paired, with the reason (photo without mask, mask without photo, image
    outside the layout, non-image file, empty folder, ambiguous names). Non-image files and
    hidden files directly in the root (README, metadata) are ignored. Raises
    FileNotFoundError / NotADirectoryError when ``data_dir`` is missing or not a folder.
    """
    root = Path(data_dir)
    if not root.exists():
        raise FileNotFoundError(
            f"Dataset folder {root} does not exist. Fix: pass the folder laid out as {LAYOUT} "
            f"(see data_README.md), or leave data_dir empty to use the SYNTHETIC demo dataset.")
    if not root.is_dir():
        raise NotADirectoryError(f"Dataset path {root} is a file, not a folder. Fix: pass the folder laid out as {LAYOUT}.")

    def rel(p: Path) -> str:
        return p.relative_to(root).as_posix()

    pairs: list[PhotoPair] = []
    skipped: list[Skip] = []
    wrong_depth = "image is not inside a <disease>/<patient>/<example>/ folder; move it there (see data_README.md)"
    stray_file = "file outside the photo folders (not used)"

    for disease_dir in _sorted_children(root):
        if disease_dir.is_file():
            if _is_image(disease_dir):
                skipped.append(Skip(rel(disease_dir), wrong_depth))
            continue
        patients = _sorted_children(disease_dir)
        if not patients:
            skipped.append(Skip(rel(disease_dir) + "/", "empty disease folder (no patient folders)"))
        for patient_dir in patients:
            if patient_dir.is_file():
                skipped.append(Skip(rel(patient_dir), wrong_depth if _is_image(patient_dir) else stray_file))
                continue
            examples = _sorted_children(patient_dir)
            if not examples:
                skipped.append(Skip(rel(patient_dir) + "/", "empty patient folder (no example folders)"))
            for example_dir in examples:
                if example_dir.is_file():
                    skipped.append(Skip(rel(example_dir), wrong_depth if _is_image(example_dir) else stray_file))
                    continue
                _pair_example(root, example_dir, disease_dir.name, patient_dir.name, pairs, skipped, rel)
    pairs.sort(key=lambda p: natural_key(p.source))
    return pairs, skipped


def _pair_example(root, example_dir, disease, patient, pairs, skipped, rel) -> None:
    entries = _sorted_children(example_dir)
    if not entries:
        skipped.append(Skip(rel(example_dir) + "/", "empty example folder (no photos)"))
        return
    photos: dict[str, list[Path]] = {}
    masks: dict[str, list[Path]] = {}
    for p in entries:
        if p.is_dir():
            skipped.append(Skip(rel(p) + "/", "unexpected folder inside an example folder (the layout has photos only there)"))
        elif not _is_image(p):
            skipped.append(Skip(rel(p), f"not a PNG/JPEG/TIFF image (suffix {p.suffix or 'none'!r})"))
        elif p.stem.endswith(MASK_SUFFIX):
            masks.setdefault(p.stem[: -len(MASK_SUFFIX)], []).append(p)
        else:
            photos.setdefault(p.stem, []).append(p)
    for stem, found in photos.items():
        if len(found) > 1:
            for p in found:
                skipped.append(Skip(rel(p), f"several photos named {stem}.* ({', '.join(q.name for q in found)}); keep one"))
            continue
        photo = found[0]
        cands = masks.get(stem, [])
        if not cands:
            skipped.append(Skip(rel(photo), f"photo without mask: expected {stem}{MASK_SUFFIX}.png beside it"))
        elif len(cands) > 1:
            skipped.append(Skip(rel(photo), f"several masks for this photo ({', '.join(q.name for q in cands)}); keep one"))
        else:
            pairs.append(PhotoPair(root, rel(photo), rel(cands[0]), disease, patient, example_dir.name))
    for stem, found in masks.items():
        if stem not in photos:
            for m in found:
                skipped.append(Skip(rel(m), f"mask without photo: expected a photo named {stem}.png/.jpg/.tif beside it"))
        elif len(photos[stem]) > 1:
            for m in found:
                skipped.append(Skip(rel(m), f"its photo name {stem} is ambiguous (several photos)"))


# --------------------------------------------------------------------------- image loading

def open_image(path, *, max_pixels: int = MAX_PIXELS):
    """Open and fully decode an image with EXIF orientation applied; return a PIL image.

    Raises :class:`BadInputError` for a missing, corrupt, truncated or unreadable file and for
    an image above ``max_pixels`` (checked from the header, before decoding).
    """
    return _open_decoded(path, max_pixels)[0]


def _open_decoded(path, max_pixels: int):
    """``(image, sixteen_bit)``: the decoded, EXIF-oriented PIL image and whether its file held
    16 bit per channel data (Pillow reads 16-bit RGB as 8 bit)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except FileNotFoundError:
        raise BadInputError(path, "file not found.", "check the path") from None
    except Image.DecompressionBombError as e:
        raise BadInputError(path, f"image is absurdly large (decompression-bomb guard: {e}).",
                            "downscale the image, or check that the file is a genuine photo") from None
    except UnidentifiedImageError:
        raise BadInputError(path, "not a readable image (corrupt, or not really PNG/JPEG/TIFF).",
                            "re-export the file from the original source") from None
    except OSError as e:
        raise BadInputError(path, f"cannot open the image: truncated or corrupt ({e}).",
                            "re-export or re-copy the file from the original source") from None
    try:
        w, h = im.size
        if w * h > max_pixels:
            raise BadInputError(path, f"image is {w}x{h} = {w * h:,} pixels, above the limit of {max_pixels:,} "
                                      "(decompression-bomb guard).",
                                "downscale it, or raise max_pixels if the photo is genuine")
        if w == 0 or h == 0:
            raise BadInputError(path, "image has zero size.", "re-export the file")
        sixteen = any(";16" in str(t[3]) for t in (im.tile or []) if len(t) > 3)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im.load()
                oriented = ImageOps.exif_transpose(im)
        except Exception as e:  # truncated data, broken compression stream, bad EXIF ...
            raise BadInputError(path, f"cannot decode the image: truncated or corrupt ({type(e).__name__}: {e}).",
                                "re-export or re-copy the file") from None
    except BaseException:
        im.close()
        raise
    if oriented is not im:
        im.close()
    return oriented, sixteen


def load_photo(path, *, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, list[str]]:
    """Load a photo as ``uint8 [H, W, 3]`` RGB, EXIF orientation applied.

    Returns ``(image, notes)``; ``notes`` describe conversions (grey to RGB, alpha dropped,
    16-bit scaled to 8-bit, ...). Raises :class:`BadInputError` when unusable.
    """
    path = Path(path)
    im, sixteen = _open_decoded(path, max_pixels)
    notes: list[str] = []
    mode = im.mode
    if mode == "RGB":
        arr = np.asarray(im)
    elif mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im).astype(np.float64)
        full = 65535.0
        arr8 = np.clip(np.rint(a / full * 255.0), 0, 255).astype(np.uint8)
        arr = np.repeat(arr8[..., None], 3, axis=2)
        notes.append(f"16-bit greyscale photo (mode {mode}) scaled to 8 bit and converted to RGB")
    elif mode == "F":
        raise BadInputError(path, "32-bit floating-point photo: no defined full scale.",
                            "save the photo as 8- or 16-bit PNG/TIFF")
    elif mode in ("L", "1", "LA", "La"):
        arr = np.asarray(im.convert("RGB"))
        notes.append(f"greyscale photo (mode {mode}) converted to RGB"
                     + ("; alpha channel ignored" if "A" in mode or "a" in mode else ""))
    elif mode in ("RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        rgba = im.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3]
        arr = np.asarray(rgba.convert("RGB"))
        if mode not in ("RGBA", "RGBa", "RGBX"):
            notes.append(f"{mode} photo converted to RGB")
        if mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in im.info):
            n_transparent = int((alpha < 255).sum())
            notes.append(f"alpha channel dropped ({n_transparent} of {alpha.size} pixels not opaque; their stored colour is used)")
    else:
        try:
            arr = np.asarray(im.convert("RGB"))
            notes.append(f"photo of mode {mode} converted to RGB")
        except Exception as e:
            raise BadInputError(path, f"unsupported image mode {mode} ({e}).", "save the photo as 8-bit RGB PNG/JPEG/TIFF") from None
    if sixteen and mode == "RGB":
        notes.append("16-bit per channel photo read as 8 bit (high byte)")
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    assert arr.ndim == 3 and arr.shape[2] == 3
    return arr, notes


def load_mask(path, *, threshold: float = MASK_THRESHOLD, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, list[str]]:
    """Load a mask as ``bool [H, W]`` (True = ill skin: value > ``threshold`` of full scale).

    Grey masks are used directly, 16-bit ones with full scale 65535, RGB(A)/palette ones via
    ITU-R 601 luma times alpha. Returns ``(mask, notes)``; a note records every conversion and
    a non-binary mask (anti-aliased or JPEG-compressed edges) being thresholded.
    """
    path = Path(path)
    im = open_image(path, max_pixels=max_pixels)
    notes: list[str] = []
    mode = im.mode
    if mode == "1":
        grey = np.asarray(im, dtype=np.float64)
        full = 1.0
    elif mode == "L":
        grey = np.asarray(im, dtype=np.float64)
        full = 255.0
    elif mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        grey = np.asarray(im).astype(np.float64)
        full = 65535.0
        notes.append(f"16-bit mask (mode {mode}): full scale 65535")
    elif mode == "F":
        grey = np.asarray(im, dtype=np.float64)
        full = 1.0 if np.nanmax(grey) <= 1.0 else 255.0
        notes.append(f"floating-point mask: full scale taken as {full:g}")
    else:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float64)
        luma = rgba[..., 0] * 0.299 + rgba[..., 1] * 0.587 + rgba[..., 2] * 0.114
        grey = luma * (rgba[..., 3] / 255.0)
        full = 255.0
        notes.append(f"{mode} mask reduced to grey (luma x alpha)")
    if not np.isfinite(grey).all():
        raise BadInputError(path, "mask holds NaN or infinite values.", "re-export the mask as 8-bit PNG")
    mask = grey > threshold * full
    levels = np.unique(grey)
    if not (len(levels) <= 2 and set(levels.tolist()) <= {0.0, full}):
        notes.append(f"mask is not binary ({len(levels)} grey levels, e.g. anti-aliased or JPEG edges): "
                     f"thresholded at {threshold:g} of full scale")
    return mask, notes


def load_pair(pair: PhotoPair, *, threshold: float = MASK_THRESHOLD,
              max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Load ``(photo uint8 [H,W,3], mask bool [H,W] (True = ill), notes)`` for a pair.

    Raises :class:`BadInputError` (naming the file) when either file is unusable or the mask's
    size differs from the photo's (after EXIF orientation of both).
    """
    photo, notes = load_photo(pair.photo, max_pixels=max_pixels)
    mask, mask_notes = load_mask(pair.mask, threshold=threshold, max_pixels=max_pixels)
    if mask.shape != photo.shape[:2]:
        ph, pw = photo.shape[:2]
        mh, mw = mask.shape
        hint = " (it matches the photo rotated by 90 degrees: check EXIF orientation)" if (mh, mw) == (pw, ph) else ""
        raise BadInputError(pair.mask, f"mask is {mw}x{mh} but its photo {pair.source} is {pw}x{ph}{hint}.",
                            "export the mask at the photo's size (masks are never resized, to keep them exact)")
    notes = [f"photo: {n}" for n in notes] + [f"mask: {n}" for n in mask_notes]
    return photo, mask, notes


def encode_png(array: np.ndarray, *, compress_level: int = 1, text: dict[str, str] | None = None) -> bytes:
    """PNG bytes of a uint8 [H, W] (grey) or [H, W, 3] (RGB) array, with optional text chunks.

    Deterministic for given inputs and zlib version; level 1 compresses noisy photos almost as
    well as level 6 at a fraction of the time. Write with ``skinlib.io.atomic_write_bytes``.
    """
    import io as _io

    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    buf = _io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", pnginfo=info, compress_level=compress_level)
    return buf.getvalue()
