"""Crop extraction, the original study's method with every number a parameter.

For each photo/mask pair (see :mod:`skinlib.data`):

1. slide a ``window`` x ``window`` box every ``stride`` px (boxes lie fully inside the photo);
   a box's *coverage* is the fraction of its pixels that are ill skin (integral image);
2. keep boxes with coverage > ``min_coverage``;
3. non-maximum suppression: highest coverage first (ties: top-most, then left-most), drop
   every box whose IoU with a kept box is > ``nms_iou``;
4. the *contrast* of a crop is scikit-image's ``is_low_contrast`` measure (1st-99th
   percentile range of its grey levels over the dtype's range); crops with contrast <
   ``low_contrast_fraction`` go to the separate ``low_contrast/`` bucket, reported;
5. the two-colour mask: k-means (k = ``kmeans_k``) on the ill pixels and, separately, on the
   healthy pixels of the crop; each region is painted with the centre of its largest cluster
   (its dominant colour). The original ran k-means on every pixel; here a fixed-seed sample
   of ``kmeans_samples`` pixels per region is clustered (``kmeans_samples=None``: all pixels).
6. (ours, for the evaluation's rash-vs-healthy task) the **healthy bucket**: windows of the
   same photos with coverage <= ``healthy_max_coverage``, thinned by the same NMS (lowest
   coverage first), of which a seeded random ``healthy_per_photo`` are kept (default: as many
   as the photo's kept ill-skin crops, at least one); low-contrast ones are counted, not kept.
   Same patients as the ill-skin crops, so a classifier cannot tell the classes by patient.

Output folder (the crop format of :mod:`skinlib.data`)::

    NNNNNN.png  NNNNNN_mask.png  NNNNNN_mask2.png  manifest.csv   kept crops
    healthy/NNNNNN*.png + manifest.csv                              healthy-skin windows (step 6)
    low_contrast/NNNNNN*.png + manifest.csv                         the low-contrast bucket
    sources.csv    every photo found: status, counts, notes
    skipped.csv    every file or folder not used, with the reason
    notes.csv      inputs used after a conversion (grey/RGBA/16-bit photo, non-binary mask ...)
    summary.json   counts and parameters
    .progress/     one marker per finished photo: an interrupted run resumes from them

Files are written atomically; crop numbers follow the sorted photo order, so re-runs and
resumed runs give byte-identical folders.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .dataset import MANIFEST
from .metadata import skin_group
from .photos import (MASK_THRESHOLD, MAX_PIXELS, BadInputError, PhotoPair, encode_png, find_pairs,
                     load_pair)
from ..io import atomic_write_bytes, load_json, save_json, write_csv

METHOD_VERSION = "crops-v3"   # bump when the method changes: invalidates resume markers
LOW_CONTRAST_DIR = "low_contrast"
HEALTHY_DIR = "healthy"
PROGRESS_DIR = ".progress"
_CROP_FILE = re.compile(r"^\d{6}(_mask|_mask2)?\.png$")

CONTRAST_METHODS = ("relative", "study")
MANIFEST_FIELDS = ["image", "mask", "mask2", "source", "mask_source", "disease", "patient", "example",
                   "x0", "y0", "x1", "y1", "coverage", "contrast", "ill_colour", "healthy_colour",
                   "photo_width", "photo_height"]
SOURCE_FIELDS = ["source", "mask_source", "disease", "patient", "example", "status", "width", "height",
                 "windows", "candidates", "crops", "low_contrast", "healthy", "healthy_low_contrast",
                 "first_crop", "reason"]


@dataclass(frozen=True)
class CropParams:
    """Every number of the method (defaults: the original study's)."""

    window: int = 256                     # crop side, px
    stride: int = 32                      # window step, px
    min_coverage: float = 0.1             # keep windows with ill fraction > this
    nms_iou: float = 0.4                  # suppress windows with IoU > this vs a kept one
    low_contrast_fraction: float = 0.05   # skimage is_low_contrast fraction_threshold
    low_contrast_method: str = "relative"  # "relative": measured after scaling the crop to mid-grey brightness
                                           # (fair to skin tone); "study": skimage's absolute measure
    low_contrast_lower_percentile: float = 1.0
    low_contrast_upper_percentile: float = 99.0
    kmeans_k: int = 5                     # clusters for the dominant colours
    kmeans_samples: int | None = 4096     # pixels sampled per region (None: all)
    kmeans_n_init: int = 1                # k-means restarts
    seed: int = 0                         # sampling and k-means seed
    mask_threshold: float = MASK_THRESHOLD  # ill where mask > this of full scale
    max_pixels: int = MAX_PIXELS          # refuse larger images (decompression bombs)
    healthy_max_coverage: float | None = 0.01   # healthy bucket: windows with ill fraction <= this (None: no bucket)
    healthy_per_photo: int | None = None  # healthy windows kept per photo (None: as many as its ill-skin crops, >= 1)

    def __post_init__(self):
        if self.window < 1 or self.stride < 1:
            raise ValueError(f"window and stride must be >= 1, got {self.window}, {self.stride}")
        if not 0 <= self.min_coverage < 1:
            raise ValueError(f"min_coverage must be in [0, 1), got {self.min_coverage}")
        if not 0 <= self.nms_iou <= 1:
            raise ValueError(f"nms_iou must be in [0, 1], got {self.nms_iou}")
        if self.low_contrast_method not in CONTRAST_METHODS:
            raise ValueError(f"low_contrast_method must be one of {CONTRAST_METHODS}, got {self.low_contrast_method!r}")
        if self.kmeans_k < 1:
            raise ValueError(f"kmeans_k must be >= 1, got {self.kmeans_k}")
        if self.healthy_max_coverage is not None and not 0 <= self.healthy_max_coverage < self.min_coverage:
            raise ValueError(f"healthy_max_coverage must be in [0, min_coverage={self.min_coverage}), "
                             f"got {self.healthy_max_coverage}")
        if self.healthy_per_photo is not None and self.healthy_per_photo < 0:
            raise ValueError(f"healthy_per_photo must be >= 0 or None, got {self.healthy_per_photo}")

    def key(self) -> str:
        """Hash of the parameters and method version (resume markers are valid only for it)."""
        text = json.dumps({"method": METHOD_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Crop:
    """One crop of a photo. ``box`` = (x0, y0, x1, y1) px; ``image`` uint8 [S,S,3];
    ``mask`` bool [S,S] (True = ill); ``mask2`` uint8 [S,S,3] two-colour mask."""

    box: tuple[int, int, int, int]
    coverage: float
    contrast: float
    low_contrast: bool
    image: np.ndarray
    mask: np.ndarray
    mask2: np.ndarray
    ill_colour: tuple[int, int, int] | None
    healthy_colour: tuple[int, int, int] | None
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- the method

def window_boxes(height: int, width: int, window: int, stride: int) -> np.ndarray:
    """All windows inside a ``height`` x ``width`` image, row-major (top row first):
    int64 [N, 4] of (x0, y0, x1, y1). Empty when the image is smaller than the window."""
    ys = np.arange(0, height - window + 1, stride, dtype=np.int64)
    xs = np.arange(0, width - window + 1, stride, dtype=np.int64)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    x0, y0 = xx.ravel(), yy.ravel()
    return np.stack([x0, y0, x0 + window, y0 + window], 1)


def window_coverage(mask: np.ndarray, window: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """``(boxes [N,4], coverage float64 [N])``: fraction of ill pixels (``mask`` bool [H,W],
    True = ill) in every window, from one integral image."""
    h, w = mask.shape
    boxes = window_boxes(h, w, window, stride)
    ii = np.zeros((h + 1, w + 1), np.int64)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1, out=ii[1:, 1:])
    x0, y0, x1, y1 = boxes.T
    sums = ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]
    return boxes, sums / float(window * window)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU (float64 [N]) of one (x0, y0, x1, y1) box with each of ``boxes`` [N, 4]."""
    iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = (iw * ih).astype(np.float64)
    area = float((box[2] - box[0]) * (box[3] - box[1]))
    areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).astype(np.float64)
    return inter / (area + areas - inter)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression: indices of kept boxes, in selection order (highest
    score first; equal scores keep their input order). A box is dropped when its IoU with an
    already kept box is > ``iou_threshold``."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    boxes = np.asarray(boxes)[order]
    alive = np.ones(len(order), bool)
    keep = []
    for i in range(len(order)):
        if not alive[i]:
            continue
        keep.append(order[i])
        rest = np.nonzero(alive[i + 1:])[0] + i + 1
        if len(rest):
            alive[rest[box_iou(boxes[i], boxes[rest]) > iou_threshold]] = False
    return np.asarray(keep, dtype=np.int64)


def select_windows(mask: np.ndarray, *, window: int = 256, stride: int = 32, min_coverage: float = 0.1,
                   nms_iou: float = 0.4) -> tuple[np.ndarray, np.ndarray, dict]:
    """Steps 1-3 for one mask (bool [H,W], True = ill): ``(boxes [K,4], coverage [K], counts)``,
    kept boxes sorted top-to-bottom, left-to-right; ``counts`` has ``windows``, ``candidates``."""
    boxes, cov = window_coverage(mask, window, stride)
    cand = np.nonzero(cov > min_coverage)[0]
    keep = cand[nms(boxes[cand], cov[cand], nms_iou)] if len(cand) else cand
    keep = keep[np.lexsort((boxes[keep, 0], boxes[keep, 1]))]
    return boxes[keep], cov[keep], {"windows": len(boxes), "candidates": len(cand)}


def select_healthy_windows(mask: np.ndarray, n: int, *, window: int = 256, stride: int = 32,
                           max_coverage: float = 0.01, nms_iou: float = 0.4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Step 6 for one mask (bool [H,W], True = ill): up to ``n`` windows with coverage <=
    ``max_coverage`` after NMS (lowest coverage first, ties top-left first), a seeded random
    choice among them; ``(boxes [K,4], coverage [K])`` sorted top-to-bottom, left-to-right."""
    boxes, cov = window_coverage(mask, window, stride)
    cand = np.nonzero(cov <= max_coverage)[0]
    if not len(cand) or n <= 0:
        return boxes[:0], cov[:0]
    kept = cand[nms(boxes[cand], -cov[cand], nms_iou)]
    if len(kept) > n:
        kept = kept[np.sort(np.random.default_rng(seed).choice(len(kept), size=n, replace=False))]
    kept = kept[np.lexsort((boxes[kept, 0], boxes[kept, 1]))]
    return boxes[kept], cov[kept]


def contrast_ratio(crop: np.ndarray, lower_percentile: float = 1.0, upper_percentile: float = 99.0,
                   method: str = "study") -> float:
    """Contrast of an RGB uint8 crop; low contrast when below ``low_contrast_fraction``.

    ``"study"``: scikit-image's ``is_low_contrast`` measure, the spread between the given
    percentiles of the grey levels divided by the dtype's range (``rgb2gray`` gives floats, whose
    range scikit-image takes as [-1, 1]). Skin texture and lighting modulate reflected light
    multiplicatively, so this absolute spread scales with the skin's brightness: it calls most
    crops of dark skin (Fitzpatrick V-VI) low-contrast. ``"relative"``: the same measure after
    scaling the grey levels to a mean of 0.5 (mid-grey), i.e. the spread relative to the crop's own
    brightness, equal to ``"study"`` for a crop of mean grey 0.5 and independent of skin tone."""
    from skimage.color import rgb2gray
    from skimage.util.dtype import dtype_limits

    if method not in CONTRAST_METHODS:
        raise ValueError(f"method must be one of {CONTRAST_METHODS}, got {method!r}")
    gray = rgb2gray(crop)
    lo, hi = dtype_limits(gray, clip_negative=False)
    p = np.percentile(gray, [lower_percentile, upper_percentile])
    spread = float(p[1] - p[0])
    if method == "relative":
        spread *= 0.5 / max(float(gray.mean()), 1e-3)
    return spread / (hi - lo)


def region_pixels(crop: np.ndarray, mask: np.ndarray, samples: int | None = 4096, seed: int = 0) -> np.ndarray:
    """The pixels ``crop[mask]`` (uint8 [n, 3]) or, when there are more than ``samples``, the
    fixed-seed sample ``crop[mask][default_rng(seed).choice(n, samples, replace=False)]``
    (gathered without copying the whole region)."""
    where = np.flatnonzero(mask)
    if samples and len(where) > samples:
        where = where[np.random.default_rng(seed).choice(len(where), size=samples, replace=False)]
    return crop.reshape(-1, 3)[where]


def dominant_colour(pixels: np.ndarray, *, k: int = 5, n_init: int = 1, seed: int = 0) -> tuple[int, int, int] | None:
    """Centre (rounded RGB) of the largest k-means cluster of ``pixels`` uint8 [n, 3]
    (scikit-learn KMeans, ``k`` clusters or fewer when n < k, ``n_init`` restarts, ``seed``);
    None when ``n == 0``. Ties between cluster sizes go to the lowest cluster label."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    if len(pixels) == 0:
        return None
    x = np.asarray(pixels, dtype=np.float64)
    kk = min(k, len(x))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)   # fewer distinct colours than k
        km = KMeans(n_clusters=kk, n_init=n_init, random_state=seed).fit(x)
    counts = np.bincount(km.labels_, minlength=kk)
    centre = km.cluster_centers_[int(np.argmax(counts))]
    return tuple(int(v) for v in np.clip(np.rint(centre), 0, 255))


def two_colour_mask(crop: np.ndarray, mask: np.ndarray, *, k: int = 5, samples: int | None = 4096,
                    n_init: int = 1, seed: int = 0):
    """``(mask2 uint8 [h,w,3], ill_colour, healthy_colour)``: the crop's mask painted with the
    dominant colour of its ill pixels (``mask`` True) and of its healthy pixels, each found by
    k-means on (a sample of ``samples`` of) that region's pixels."""
    ill = dominant_colour(region_pixels(crop, mask, samples, seed), k=k, n_init=n_init, seed=seed)
    healthy = dominant_colour(region_pixels(crop, ~mask, samples, seed), k=k, n_init=n_init, seed=seed)
    out = np.empty(crop.shape, np.uint8)
    out[mask] = ill if ill is not None else 0
    out[~mask] = healthy if healthy is not None else 0
    return out, ill, healthy


def crops_of_photo(photo: np.ndarray, mask: np.ndarray, params: CropParams = CropParams()) -> tuple[list[Crop], dict]:
    """All crops of one photo (uint8 [H,W,3]) with its mask (bool [H,W], True = ill):
    ``(crops, counts)``; low-contrast crops are included with ``low_contrast=True``."""
    from threadpoolctl import threadpool_limits

    p = params
    boxes, cov, counts = select_windows(mask, window=p.window, stride=p.stride, min_coverage=p.min_coverage,
                                        nms_iou=p.nms_iou)
    crops = []
    with threadpool_limits(limits=1):   # k-means on a few thousand pixels: threads only add overhead
        for box, c in zip(boxes.tolist(), cov.tolist()):
            crops.append(_crop(photo, mask, box, c, p))
    return crops, counts


def _crop(photo: np.ndarray, mask: np.ndarray, box, coverage: float, p: CropParams) -> Crop:
    """Steps 4-5 for one kept box."""
    x0, y0, x1, y1 = box
    img = np.ascontiguousarray(photo[y0:y1, x0:x1])
    m = np.ascontiguousarray(mask[y0:y1, x0:x1])
    contrast = contrast_ratio(img, p.low_contrast_lower_percentile, p.low_contrast_upper_percentile,
                              p.low_contrast_method)
    mask2, ill, healthy = two_colour_mask(img, m, k=p.kmeans_k, samples=p.kmeans_samples,
                                          n_init=p.kmeans_n_init, seed=p.seed)
    return Crop((x0, y0, x1, y1), coverage, contrast, contrast < p.low_contrast_fraction, img, m, mask2, ill, healthy)


# --------------------------------------------------------------------------- folder level

def _hex(colour) -> str:
    return "" if colour is None else "#%02x%02x%02x" % tuple(colour)


def _fingerprint(pair: PhotoPair) -> list:
    out = []
    for path in (pair.photo, pair.mask):
        st = path.stat()
        out += [st.st_size, st.st_mtime_ns]
    return out


def _marker_path(out_dir: Path, source: str) -> Path:
    return out_dir / PROGRESS_DIR / (hashlib.sha256(source.encode()).hexdigest()[:24] + ".json")


def write_crop_files(folder: Path, index: int, image: np.ndarray, mask: np.ndarray, mask2: np.ndarray) -> dict[str, str]:
    """Write ``NNNNNN.png`` (RGB), ``NNNNNN_mask.png`` (L, 255 = ill) and ``NNNNNN_mask2.png``
    atomically into ``folder``; return their names (manifest columns image, mask, mask2)."""
    name = f"{index:06d}"
    atomic_write_bytes(folder / f"{name}.png", encode_png(image))
    atomic_write_bytes(folder / f"{name}_mask.png", encode_png(mask.astype(np.uint8) * 255))
    atomic_write_bytes(folder / f"{name}_mask2.png", encode_png(mask2))
    return {"image": f"{name}.png", "mask": f"{name}_mask.png", "mask2": f"{name}_mask2.png"}


def _process_source(pair: PhotoPair, params: CropParams, out_dir: Path, first: int, low_first: int,
                    healthy_first: int = 0) -> dict:
    """Crop one photo into ``out_dir`` starting at crop numbers ``first`` / ``low_first`` /
    ``healthy_first``; return its marker (rows written, counts, notes, or the skip reason)."""
    base = {"source": pair.source, "mask_source": pair.mask_source, "disease": pair.disease,
            "patient": pair.patient, "example": pair.example}
    try:
        photo, mask, notes = load_pair(pair, threshold=params.mask_threshold, max_pixels=params.max_pixels)
    except BadInputError as e:
        return {**base, "status": "skipped", "skip_file": _relative(e.path, pair.root),
                "reason": e.reason + (f" Fix: {e.fix}" if e.fix else ""), "rows": [], "low_rows": [], "healthy_rows": [], "notes": []}
    except MemoryError:
        return {**base, "status": "skipped", "skip_file": pair.source,
                "reason": "not enough memory to load this photo. Fix: downscale it", "rows": [], "low_rows": [], "healthy_rows": [], "notes": []}
    h, w = mask.shape
    if h < params.window or w < params.window:
        return {**base, "status": "skipped", "skip_file": pair.source, "width": w, "height": h,
                "reason": f"photo is {w}x{h}, smaller than the {params.window}-px window: no crop possible. "
                          f"Fix: use a larger photo or a smaller window",
                "rows": [], "low_rows": [], "healthy_rows": [], "notes": notes}
    crops, counts = crops_of_photo(photo, mask, params)
    rows, low_rows = [], []
    for crop in crops:
        if crop.low_contrast:
            files = write_crop_files(out_dir / LOW_CONTRAST_DIR, low_first + len(low_rows), crop.image, crop.mask, crop.mask2)
            target = low_rows
        else:
            files = write_crop_files(out_dir, first + len(rows), crop.image, crop.mask, crop.mask2)
            target = rows
        x0, y0, x1, y1 = crop.box
        target.append({**files, **base, "x0": x0, "y0": y0, "x1": x1, "y1": y1,
                       "coverage": f"{crop.coverage:.6f}", "contrast": f"{crop.contrast:.6f}",
                       "ill_colour": _hex(crop.ill_colour), "healthy_colour": _hex(crop.healthy_colour),
                       "photo_width": w, "photo_height": h})
    healthy_rows, healthy_low = [], 0
    if params.healthy_max_coverage is not None:
        n = params.healthy_per_photo if params.healthy_per_photo is not None else max(1, len(rows))
        seed = [params.seed, int(hashlib.sha256(pair.source.encode()).hexdigest()[:8], 16)]
        boxes, cov = select_healthy_windows(mask, n, window=params.window, stride=params.stride,
                                            max_coverage=params.healthy_max_coverage, nms_iou=params.nms_iou,
                                            seed=seed)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):
            for box, c in zip(boxes.tolist(), cov.tolist()):
                crop = _crop(photo, mask, box, c, params)
                if crop.low_contrast:
                    healthy_low += 1
                    continue
                files = write_crop_files(out_dir / HEALTHY_DIR, healthy_first + len(healthy_rows), crop.image,
                                         crop.mask, crop.mask2)
                x0, y0, x1, y1 = crop.box
                healthy_rows.append({**files, **base, "x0": x0, "y0": y0, "x1": x1, "y1": y1,
                                     "coverage": f"{crop.coverage:.6f}", "contrast": f"{crop.contrast:.6f}",
                                     "ill_colour": _hex(crop.ill_colour), "healthy_colour": _hex(crop.healthy_colour),
                                     "photo_width": w, "photo_height": h})
    return {**base, "status": "ok", "width": w, "height": h, **counts, "rows": rows, "low_rows": low_rows,
            "healthy_rows": healthy_rows, "healthy_low_contrast": healthy_low, "notes": notes, "reason": ""}


def _relative(path: str, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def extract_crops(data_dir, out_dir, *, window: int = 256, stride: int = 32, min_coverage: float = 0.1,
                  nms_iou: float = 0.4, low_contrast_fraction: float = 0.05, low_contrast_method: str = "relative",
                  kmeans_k: int = 5,
                  kmeans_samples: int | None = 4096, kmeans_n_init: int = 1, seed: int = 0,
                  mask_threshold: float = MASK_THRESHOLD, max_pixels: int = MAX_PIXELS,
                  healthy_max_coverage: float | None = 0.01, healthy_per_photo: int | None = None,
                  progress: bool = True) -> dict:
    """Crop every photo of ``data_dir`` (layout of ``data_README.md``) into ``out_dir``.

    Returns the summary (also written to ``summary.json``): counts of photos found / used /
    skipped, crops, low-contrast crops, per-disease crops, the parameters and the output files.
    Resumable: photos finished by an earlier run with the same parameters and unchanged files
    are not redone. Raises FileNotFoundError / ValueError (naming the folder and the fix) when
    ``data_dir`` is missing or holds no usable photo/mask pair at all; every other problem is
    recorded in ``skipped.csv`` and the run goes on.
    """
    from tqdm.auto import tqdm

    params = CropParams(window=window, stride=stride, min_coverage=min_coverage, nms_iou=nms_iou,
                        low_contrast_fraction=low_contrast_fraction, low_contrast_method=low_contrast_method,
                        kmeans_k=kmeans_k,
                        kmeans_samples=kmeans_samples, kmeans_n_init=kmeans_n_init, seed=seed,
                        mask_threshold=mask_threshold, max_pixels=max_pixels,
                        healthy_max_coverage=healthy_max_coverage, healthy_per_photo=healthy_per_photo)
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if data_dir.resolve() in out_dir.resolve().parents or data_dir.resolve() == out_dir.resolve():
        raise ValueError(f"Output folder {out_dir} is inside the dataset folder {data_dir}: its crops would be "
                         "read as photos on the next run. Fix: choose an output folder outside the dataset.")
    pairs, skipped = find_pairs(data_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    skip_rows = [s.as_row() for s in skipped]
    if not pairs:
        write_csv(out_dir / "skipped.csv", skip_rows, ["file", "reason"])
        listed = "; ".join(f"{s.file}: {s.reason}" for s in skipped[:5]) or "the folder is empty"
        raise ValueError(f"No usable photo/mask pair in {data_dir} ({listed}). Fix: lay the data out as "
                         f"<disease>/<patient>/<example>/<name>.png with <name>_mask.png beside it "
                         f"(see data_README.md); the full list is in {out_dir / 'skipped.csv'}.")
    (out_dir / LOW_CONTRAST_DIR).mkdir(exist_ok=True)
    (out_dir / HEALTHY_DIR).mkdir(exist_ok=True)
    key = params.key()
    markers, first, low_first, healthy_first = [], 0, 0, 0
    resumed, changed = 0, False
    for pair in tqdm(pairs, desc="cropping photos", unit="photo", disable=not progress):
        marker_path = _marker_path(out_dir, pair.source)
        fp = _fingerprint(pair)
        marker = load_json(marker_path) if marker_path.is_file() else None
        if (marker and marker.get("key") == key and marker.get("fingerprint") == fp
                and marker.get("first") == first and marker.get("low_first") == low_first
                and marker.get("healthy_first") == healthy_first and _files_present(out_dir, marker)):
            resumed += 1
        else:
            if not changed:   # the folder is being changed: it is no longer a finished crop folder
                changed = True
                for name in (MANIFEST, "summary.json", f"{LOW_CONTRAST_DIR}/{MANIFEST}", f"{HEALTHY_DIR}/{MANIFEST}"):
                    (out_dir / name).unlink(missing_ok=True)
            marker = _process_source(pair, params, out_dir, first, low_first, healthy_first)
            marker.update(key=key, fingerprint=fp, first=first, low_first=low_first, healthy_first=healthy_first)
            save_json(marker_path, marker)
        markers.append(marker)
        first += len(marker["rows"])
        low_first += len(marker["low_rows"])
        healthy_first += len(marker["healthy_rows"])
    return _finish(data_dir, out_dir, params, pairs, markers, skip_rows, resumed)


def _files_present(out_dir: Path, marker: dict) -> bool:
    for folder, rows in ((out_dir, marker["rows"]), (out_dir / LOW_CONTRAST_DIR, marker["low_rows"]),
                         (out_dir / HEALTHY_DIR, marker["healthy_rows"])):
        for r in rows:
            if not all((folder / r[k]).is_file() for k in ("image", "mask", "mask2")):
                return False
    return True


def _finish(data_dir, out_dir, params, pairs, markers, skip_rows, resumed) -> dict:
    from .demo import is_synthetic_dataset
    from .metadata import dataset_skin_types

    rows = [r for m in markers for r in m["rows"]]
    low_rows = [r for m in markers for r in m["low_rows"]]
    healthy_rows = [r for m in markers for r in m["healthy_rows"]]
    source_rows, note_rows = [], []
    for m in markers:
        if m["status"] == "skipped":
            skip_rows.append({"file": m["skip_file"], "reason": m["reason"]})
        for n in m["notes"]:
            note_rows.append({"file": m["source"], "note": n})
        source_rows.append({"source": m["source"], "mask_source": m["mask_source"], "disease": m["disease"],
                            "patient": m["patient"], "example": m["example"], "status": m["status"],
                            "width": m.get("width", ""), "height": m.get("height", ""),
                            "windows": m.get("windows", 0), "candidates": m.get("candidates", 0),
                            "crops": len(m["rows"]), "low_contrast": len(m["low_rows"]),
                            "healthy": len(m["healthy_rows"]), "healthy_low_contrast": m.get("healthy_low_contrast", 0),
                            "first_crop": m["first"] if m["rows"] else "", "reason": m.get("reason", "")})
    write_csv(out_dir / LOW_CONTRAST_DIR / MANIFEST, low_rows, MANIFEST_FIELDS)
    write_csv(out_dir / HEALTHY_DIR / MANIFEST, healthy_rows, MANIFEST_FIELDS)
    write_csv(out_dir / "sources.csv", source_rows, SOURCE_FIELDS)
    write_csv(out_dir / "skipped.csv", skip_rows, ["file", "reason"])
    write_csv(out_dir / "notes.csv", note_rows, ["file", "note"])
    # remove crop files and markers left by earlier runs that the manifests no longer list
    for folder, listed in ((out_dir, rows), (out_dir / LOW_CONTRAST_DIR, low_rows), (out_dir / HEALTHY_DIR, healthy_rows)):
        keep = {r[k] for r in listed for k in ("image", "mask", "mask2")}
        for p in folder.iterdir():
            if _CROP_FILE.match(p.name) and p.name not in keep:
                p.unlink()
    live = {_marker_path(out_dir, m["source"]).name for m in markers}
    for p in (out_dir / PROGRESS_DIR).glob("*.json"):
        if p.name not in live:
            p.unlink()
    per_disease: dict[str, int] = {}
    for r in rows:
        per_disease[r["disease"]] = per_disease.get(r["disease"], 0) + 1
    summary = {
        "data_dir": str(data_dir), "synthetic": is_synthetic_dataset(data_dir),
        "photos_found": len(pairs), "photos_used": sum(m["status"] == "ok" for m in markers),
        "photos_skipped": sum(m["status"] == "skipped" for m in markers),
        "photos_without_crops": sum(m["status"] == "ok" and not m["rows"] and not m["low_rows"] for m in markers),
        "skipped_entries": len(skip_rows), "notes": len(note_rows),
        "crops": len(rows), "low_contrast": len(low_rows), "healthy": len(healthy_rows),
        "healthy_low_contrast": sum(m.get("healthy_low_contrast", 0) for m in markers), "crops_per_disease": dict(sorted(per_disease.items())),
        "patients": len({(r["disease"], r["patient"]) for r in rows}),
        "params": asdict(params), "method": METHOD_VERSION,
        "per_skin_group": per_skin_group(markers, dataset_skin_types(data_dir)),
    }
    save_json(out_dir / "summary.json", summary)
    write_csv(out_dir / MANIFEST, rows, MANIFEST_FIELDS)   # last: its presence marks a finished folder
    summary["resumed_photos"] = resumed       # not saved: differs between a fresh and a resumed run
    summary["out_dir"] = str(out_dir)
    return summary


def per_skin_group(markers: list[dict], types: dict[str, int]) -> dict:
    """What the crop filters kept per Fitzpatrick group (empty when skin types are unknown):
    patients, ill-skin crops kept, low-contrast crops set aside, healthy windows kept and set
    aside, and the patients left with no crop / no healthy window. A filter that drops one group
    shows here at once."""
    if not types:
        return {}
    per_patient: dict[str, dict[str, int]] = {}
    for m in markers:
        if m["status"] != "ok":
            continue
        c = per_patient.setdefault(m["patient"], {"crops": 0, "low_contrast": 0, "healthy": 0, "healthy_low_contrast": 0})
        c["crops"] += len(m["rows"])
        c["low_contrast"] += len(m["low_rows"])
        c["healthy"] += len(m["healthy_rows"])
        c["healthy_low_contrast"] += m.get("healthy_low_contrast", 0)
    out: dict[str, dict[str, int]] = {}
    for patient, c in sorted(per_patient.items()):
        g = skin_group(patient, types) or "unknown"
        o = out.setdefault(g, {"patients": 0, "crops": 0, "low_contrast": 0, "healthy": 0, "healthy_low_contrast": 0,
                               "patients_without_crops": 0, "patients_without_healthy": 0})
        o["patients"] += 1
        for k, v in c.items():
            o[k] += v
        o["patients_without_crops"] += c["crops"] == 0
        o["patients_without_healthy"] += c["healthy"] == 0
    return dict(sorted(out.items()))


def make_demo_crops(out_dir, smoke: bool = False, *, progress: bool = True) -> Path:
    """Return ``out_dir/crops``, first making it when it holds no finished crops: generate the
    SYNTHETIC demo dataset into ``out_dir/demo_data`` (sizes :data:`skinlib.data.demo.DEMO_DEFAULTS`,
    or :data:`~skinlib.data.demo.DEMO_SMOKE` when ``smoke``), crop it and split its patients with the
    default parameters (notebook 01's defaults). Finished crops are never overwritten, except demo
    crops made with the other demo size (smoke vs full), by another demo renderer version or
    another cropping method version, which are redone."""
    from .demo import DEMO_DEFAULTS, DEMO_SMOKE, METADATA, RENDERER_VERSION, make_demo_dataset
    from .split import SPLIT_FILE, write_split

    out_dir = Path(out_dir)
    crops_dir, demo_dir = out_dir / "crops", out_dir / "demo_data"
    sizes = DEMO_SMOKE if smoke else DEMO_DEFAULTS
    if (crops_dir / MANIFEST).is_file() and (crops_dir / "summary.json").is_file():
        made_from = Path(load_json(crops_dir / "summary.json").get("data_dir", ""))
        if made_from.resolve() != demo_dir.resolve():
            return crops_dir                      # crops of the user's own data: keep them
        meta = demo_dir / METADATA
        made = load_json(meta) if meta.is_file() else {}
        wanted = {**sizes, "renderer": RENDERER_VERSION}   # another renderer's demo crops are redone
        same_method = load_json(crops_dir / "summary.json").get("method") == METHOD_VERSION
        if (made.get("complete") and same_method
                and all(made.get("params", {}).get(k) == v for k, v in wanted.items())):
            if not (crops_dir / SPLIT_FILE).is_file():
                write_split(crops_dir)
            return crops_dir
    unfinished = crops_dir.is_dir() and any(crops_dir.glob("[0-9]*.png"))
    if unfinished and not (demo_dir / METADATA).is_file():
        raise ValueError(
            f"{crops_dir} holds unfinished crops of other data (no manifest.csv, no demo dataset "
            f"beside it): they are not replaced by demo crops. Fix: finish them by re-running "
            f"notebook 01 with the same data_dir, or pass crops_dir / another out_dir.")
    data = make_demo_dataset(demo_dir, **sizes, progress=progress)
    extract_crops(data, crops_dir, progress=progress)
    write_split(crops_dir)
    return crops_dir


def make_oracle_crops(real_crops, out_dir, n_patients: int | None = None, *, progress: bool = True) -> Path:
    """The evaluation's positive control: crops of NEW patients rendered by the demo renderer
    itself (the true distribution of the SYNTHETIC demo data), in ``out_dir/crops``.

    Only for crops cut from the demo dataset (their ``summary.json`` names a demo dataset);
    otherwise ValueError (on real data no oracle exists). The new patients use the demo's
    sizes with another seed (``seed + 1``), ``n_patients`` of them (default: as many as the
    demo had), cropped with the real crops' parameters (ill-skin crops + healthy bucket)."""
    from .demo import METADATA, is_synthetic_dataset, make_demo_dataset

    real_crops, out_dir = Path(real_crops), Path(out_dir)
    summary_path = real_crops / "summary.json"
    summary = load_json(summary_path) if summary_path.is_file() else {}
    data_dir = Path(summary.get("data_dir", ""))
    if not summary.get("data_dir") or not is_synthetic_dataset(data_dir):
        raise ValueError(f"{real_crops} was not cut from the demo dataset: an oracle (new patients from the true "
                         f"distribution) exists only for the SYNTHETIC demo data.")
    demo = load_json(data_dir / METADATA)["params"]
    sizes = {k: demo[k] for k in ("n_diseases", "n_patients", "n_examples", "n_photos", "min_side", "max_side")}
    sizes["n_ood_patients"] = 0          # new patients of the training site only
    if n_patients is not None:
        sizes["n_patients"] = n_patients
    data = make_demo_dataset(out_dir / "demo_data", **sizes, seed=int(demo["seed"]) + 1, progress=progress)
    accepted = inspect.signature(extract_crops).parameters       # the real crops' method parameters
    params = {k: v for k, v in summary.get("params", {}).items() if k in accepted}
    extract_crops(data, out_dir / "crops", progress=progress, **params)
    return out_dir / "crops"


def format_report(out_dir, max_rows: int = 20) -> str:
    """Human-readable report of a crops folder: skipped inputs, converted inputs (notes), the
    low-contrast bucket and photos that gave no crop; at most ``max_rows`` lines per part."""
    out_dir = Path(out_dir)
    parts = []
    for name, head, cols in (("skipped", "Skipped inputs", ("file", "reason")),
                             ("notes", "Inputs used after a conversion", ("file", "note"))):
        rows = read_report(out_dir, name)
        parts.append(f"{head}: {len(rows)}" + ("" if rows else " (none)"))
        parts += [f"  {r[cols[0]]}: {r[cols[1]]}" for r in rows[:max_rows]]
        if len(rows) > max_rows:
            parts.append(f"  ... {len(rows) - max_rows} more in {out_dir / (name + '.csv')}")
    low = read_report(out_dir / LOW_CONTRAST_DIR, "manifest")
    parts.append(f"Low-contrast crops (in {LOW_CONTRAST_DIR}/, not used for training): {len(low)}")
    parts += [f"  {r['image']} from {r['source']} at ({r['x0']}, {r['y0']}), contrast {float(r['contrast']):.3f}"
              for r in low[:max_rows]]
    healthy = read_report(out_dir / HEALTHY_DIR, "manifest")
    n_low_healthy = sum(int(r.get("healthy_low_contrast") or 0) for r in read_report(out_dir, "sources"))
    parts.append(f"Healthy-skin windows (in {HEALTHY_DIR}/, negatives of the evaluation): {len(healthy)}"
                 + (f"; {n_low_healthy} low-contrast healthy windows not kept" if n_low_healthy else ""))
    empty = [r for r in read_report(out_dir, "sources") if r["status"] == "ok" and r["crops"] == "0"
             and r["low_contrast"] == "0"]
    parts.append(f"Photos with no window above the coverage threshold: {len(empty)}")
    parts += [f"  {r['source']}" for r in empty[:max_rows]]
    summary_path = out_dir / "summary.json"
    groups = load_json(summary_path).get("per_skin_group", {}) if summary_path.is_file() else {}
    if groups:
        parts.append("Kept per Fitzpatrick group (patients: crops kept / low-contrast set aside; healthy windows kept / "
                     "set aside; patients left without a crop / without a healthy window):")
        parts += [f"  {g}: {c['patients']} patients: {c['crops']} / {c['low_contrast']}; {c['healthy']} / "
                  f"{c['healthy_low_contrast']}; {c['patients_without_crops']} / {c['patients_without_healthy']}"
                  for g, c in groups.items()]
    return "\n".join(parts)


def read_report(out_dir, name: str) -> list[dict[str, str]]:
    """Rows of one of the reports of a crops folder: ``"skipped"``, ``"notes"``, ``"sources"``."""
    from ..io import read_csv

    path = Path(out_dir) / f"{name}.csv"
    return read_csv(path) if path.is_file() else []


__all__ = ["CropParams", "Crop", "window_boxes", "window_coverage", "box_iou", "nms", "select_windows",
           "contrast_ratio", "region_pixels", "dominant_colour", "two_colour_mask", "crops_of_photo", "extract_crops",
           "make_demo_crops", "make_oracle_crops", "read_report", "format_report"]
