"""Procedural SYNTHETIC demo dataset: stand-ins for amateur clinical photos of skin disease.

:func:`make_demo_dataset` writes the layout of ``data_README.md``::

    <root>/<disease>/personaN/exampleM/exampleM_K.png        RGB photo (synthetic)
    <root>/<disease>/personaN/exampleM/exampleM_K_mask.png   L mask, 255 = ill skin (exact)
    <root>/README_SYNTHETIC.txt, demo_manifest.csv, demo_metadata.json

Two SYNTHETIC sites (``site`` column of ``demo_manifest.csv``): site ``A``, the training site
(skin types cycling evenly over I-VI), and site ``B`` (``n_ood_patients`` patients of the main
disease), another clinic with another camera and light: an on-camera flash (bright centre, fast
fall-off), a cool fluorescent cast, a cheaper sensor (lifted blacks, more noise, stronger JPEG
compression) and mostly Fitzpatrick V-VI patients (6 of every 8; the rest III-IV). Notebook 01
holds site B out as the out-of-distribution test (split ``ood``). Adding site B leaves every
site-A photo byte-identical.

Every photo carries the PNG text chunks ``Source: skinlib synthetic demo`` and
``Comment: SYNTHETIC image ...``. Nothing here comes from a real patient.

Each photo is rendered with vectorised NumPy/SciPy (close-ups at reduced scale, then upsampled;
smooth fields always at low resolution): skin of a Fitzpatrick type I-VI tone with
low-frequency pigment and redness mottling, pores, dermatoglyphic crossing lines (a rhomboid
relief, shaded and glossy between the grooves), occasional fine light or short hairs; uneven
lighting (gradient, body curvature, an occasional skin fold, specular sheen, room-light
colour cast); the disease, always soft-edged: maculopapular rash (clusters of small pink-red
macules with diffuse halos, slightly raised papules, blotchy confluent patches whose borders
fade out; darker violaceous-brown on dark skin), urticaria-like wheals (pale oedematous
centre, fading red flare), psoriasis-like salmon plaques with fine silvery scale; then camera
effects: defocus varying across the frame, sensor noise and a JPEG round trip. Every lesion's
opacity profile crosses 1/2 on its nominal outline; the mask is exactly the pixels where the
lesion profile is >= 1/2, so soft borders are thresholded consistently. Output bytes depend
only on the arguments and :data:`RENDERER_VERSION` (and the library versions: zlib, libjpeg).
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from .photos import encode_png
from ..io import atomic_write_bytes, atomic_write_text, load_json, save_json, write_csv

DISEASES = ("maculopapular_rash", "urticaria", "psoriasis")
SOURCE_TAG = "skinlib synthetic demo"
METADATA = "demo_metadata.json"
README = "README_SYNTHETIC.txt"
MANIFEST = "demo_manifest.csv"
# Bump when the rendering changes: a dataset made by another renderer version is regenerated.
RENDERER_VERSION = "demo-v2"

# Sizes used by notebook 01 and by skinlib.data.crops.make_demo_crops (the main job's default data).
# One disease (maculopapular rash), as the study's data; enough patients that a patient-level
# split holds about 20 test patients (at least 3 per Fitzpatrick group: skin types cycle I..VI over
# the patients) and a data-efficiency curve down to a quarter of the ~45 train patients.
# Plus 16 patients of a second site (B), the out-of-distribution test.
DEMO_DEFAULTS = dict(n_diseases=1, n_patients=64, n_examples=1, n_photos=1, min_side=600, max_side=1000,
                     n_ood_patients=16)  # 64 + 16 photos
# Smoke mode: eight small photos of four patients (2 train, 2 test) and four of two site-B patients,
# made in a few seconds; large enough that every side of the split has healthy-skin windows.
DEMO_SMOKE = dict(n_diseases=1, n_patients=4, n_examples=1, n_photos=2, min_side=640, max_side=800,
                  n_ood_patients=2)  # 8 + 4 photos
SITES = ("A", "B")          # the training site, the held-out (out-of-distribution) site
OOD_SITE = "B"

# Fitzpatrick I..VI base skin colours (sRGB, 0..1), as photographed under mixed indoor light.
FITZPATRICK_RGB = np.array([
    [0.93, 0.79, 0.74],
    [0.88, 0.71, 0.60],
    [0.80, 0.58, 0.44],
    [0.66, 0.43, 0.30],
    [0.45, 0.28, 0.19],
    [0.33, 0.21, 0.15],
], dtype=np.float32)


def is_synthetic_dataset(root) -> bool:
    """True when ``root`` holds a dataset written by :func:`make_demo_dataset`."""
    meta = Path(root) / METADATA
    if not meta.is_file():
        return False
    try:
        return bool(load_json(meta).get("synthetic"))
    except (ValueError, OSError):
        return False


def make_demo_dataset(root, *, n_diseases: int = DEMO_DEFAULTS["n_diseases"],
                      n_patients: int = DEMO_DEFAULTS["n_patients"],
                      n_examples: int = DEMO_DEFAULTS["n_examples"],
                      n_photos: int = DEMO_DEFAULTS["n_photos"],
                      min_side: int = DEMO_DEFAULTS["min_side"], max_side: int = DEMO_DEFAULTS["max_side"],
                      n_ood_patients: int = 0, seed: int = 0, progress: bool = True) -> Path:
    """Write the SYNTHETIC demo dataset into ``root`` and return ``root``.

    ``n_diseases`` (1..3) of :data:`DISEASES` (the first is the main one, maculopapular rash);
    ``n_patients`` patients of the main disease and half as many (at least 1) of each other
    disease, numbered globally (persona1, persona2, ... across diseases); ``n_examples``
    examples per patient and ``n_photos`` photos per example; then ``n_ood_patients`` patients
    of the main disease at site B (see the module docstring). Both sides of each photo lie in
    ``[min_side, max_side]`` px (the short side 0.6-1.0 of the long one where that range
    allows). Byte-identical for identical arguments. When ``root`` already holds a finished
    dataset made with the same arguments (and :data:`RENDERER_VERSION`) it is returned
    untouched; one made with other arguments or another renderer version is replaced (only
    the files it lists are removed).
    """
    from tqdm.auto import tqdm

    if not 1 <= n_diseases <= len(DISEASES):
        raise ValueError(f"n_diseases must be 1..{len(DISEASES)}, got {n_diseases}")
    if min(n_patients, n_examples, n_photos) < 1:
        raise ValueError("n_patients, n_examples and n_photos must be >= 1")
    if n_ood_patients < 0:
        raise ValueError(f"n_ood_patients must be >= 0, got {n_ood_patients}")
    if not 64 <= min_side <= max_side:
        raise ValueError(f"need 64 <= min_side <= max_side, got {min_side}, {max_side}")
    root = Path(root)
    params = dict(n_diseases=n_diseases, n_patients=n_patients, n_examples=n_examples, n_photos=n_photos,
                  min_side=min_side, max_side=max_side, n_ood_patients=n_ood_patients, seed=seed,
                  renderer=RENDERER_VERSION)
    meta_path = root / METADATA
    if root.is_dir() and not meta_path.is_file() and any(root.iterdir()):
        raise ValueError(f"{root} is not empty and holds no demo dataset ({METADATA} missing): refusing to "
                         "write demo files into it. Fix: pass an empty or new folder.")
    jobs = []
    person = 0
    patients = [(d, "A") for d in range(n_diseases) for _ in range(n_patients if d == 0 else max(1, n_patients // 2))]
    patients += [(0, OOD_SITE)] * n_ood_patients
    for d, site in patients:
        person += 1
        for e in range(n_examples):
            for k in range(n_photos):
                stem = f"{DISEASES[d]}/persona{person}/example{e + 1}/example{e + 1}_{k + 1}"
                jobs.append((d, site, person, e + 1, k + 1, stem))
    first_b = 1 + sum(site == "A" for _, site in patients)   # site B's first patient number
    files = [f"{stem}{suffix}" for *_, stem in jobs for suffix in (".png", "_mask.png")] + [MANIFEST, README]
    if meta_path.is_file():
        old = load_json(meta_path)
        if (old.get("complete") and old.get("params") == params and old.get("files") == files
                and all((root / f).is_file() for f in files)):
            return root
        _remove_listed(root, old.get("files", []))
    # written first, listing every file to come: an interrupted run is recognised and cleaned
    save_json(meta_path, {"synthetic": True, "source": SOURCE_TAG, "complete": False, "params": params, "files": files})
    rows = []
    for d, site, person, ex, k, stem in tqdm(jobs, desc="demo photos", disable=not progress):
        disease = DISEASES[d]
        photo, mask, info = render_photo(disease, seed=seed, patient=person, example=ex, photo=k,
                                         min_side=min_side, max_side=max_side, site=site,
                                         site_index=person - first_b if site == OOD_SITE else None)
        meta = {"Source": SOURCE_TAG, "Comment": "SYNTHETIC image, not a real patient",
                "Disease": disease, "Seed": f"{seed}/{person}/{ex}/{k}"}
        if site != "A":
            meta["Site"] = f"{site} (SYNTHETIC clinic)"
        atomic_write_bytes(root / f"{stem}.png", encode_png(photo, text=meta))
        atomic_write_bytes(root / f"{stem}_mask.png", encode_png(mask.astype(np.uint8) * 255, text=meta))
        rows.append({"photo": f"{stem}.png", "mask": f"{stem}_mask.png", "disease": disease,
                     "patient": f"persona{person}", "example": f"example{ex}", "width": photo.shape[1],
                     "height": photo.shape[0], "fitzpatrick": info["fitzpatrick"], "lesions": info["lesions"],
                     "mask_fraction": f"{mask.mean():.4f}", "seed": seed, "site": site})
    write_csv(root / MANIFEST, rows)
    atomic_write_text(root / README, (
        "SYNTHETIC demo dataset made by skinlib.demo.make_demo_dataset - NOT real patients.\n"
        "Procedurally rendered stand-ins for amateur clinical photos (skin tones Fitzpatrick I-VI,\n"
        "maculopapular rash, urticaria-like wheals, psoriasis-like plaques) with exact masks.\n"
        "Two SYNTHETIC sites (column 'site' of demo_manifest.csv): A, the training site, and B, another\n"
        "camera and light with mostly Fitzpatrick V-VI patients (the out-of-distribution test).\n"
        f"Parameters: {json.dumps(params, sort_keys=True)}\n"
        "Every PNG carries the text chunk 'Source: skinlib synthetic demo'.\n"))
    save_json(meta_path, {"synthetic": True, "source": SOURCE_TAG, "complete": True, "params": params, "files": files})
    return root


def _remove_listed(root: Path, files) -> None:
    for f in files:
        p = root / f
        if p.is_file():
            p.unlink()
    for d in sorted({(root / f).parent for f in files}, key=lambda p: -len(p.parts)):
        while d != root and d.is_dir() and not any(d.iterdir()):
            d.rmdir()
            d = d.parent


# --------------------------------------------------------------------------- rendering

def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def _resize(field: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bicubic resize of a float32 [h0, w0] field to [h, w]."""
    from PIL import Image

    return np.asarray(Image.fromarray(field.astype(np.float32), mode="F").resize((w, h), Image.BICUBIC))


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Zero-mean, unit-std smooth noise [h, w] with features about ``cell`` px across."""
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    f = _resize(rng.standard_normal((gh, gw)).astype(np.float32), h, w)
    return (f - f.mean()) / (f.std() + 1e-6)


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _photo_size(rng, min_side: int, max_side: int) -> tuple[int, int]:
    long = int(rng.integers(min_side, max_side + 1))
    short = max(int(round(long * rng.uniform(0.6, 1.0))), min_side)
    return (long, short) if rng.random() < 0.5 else (short, long)


def _crease_lines(rng, h: int, w: int, period: float, angle: float) -> np.ndarray:
    """Thin wavy line segments in [0, 1] (1 on a line) at ``angle`` degrees, ``period`` px
    apart, fading in and out. The smooth field is made at reduced scale and rotated there;
    the thin-line nonlinearity is applied at full resolution."""
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    f = max(1.0, period / 4.0)                     # reduction factor: ~4 samples per period
    side = int(np.ceil(np.hypot(h, w) / f)) + 4
    noise = rng.standard_normal((side, side)).astype(np.float32)
    field = gaussian_filter(noise, sigma=(period / 5.0 / f, period * 1.6 / f), mode="wrap")
    field /= field.std() + 1e-6
    im = Image.fromarray(field, mode="F").rotate(angle, Image.BILINEAR)
    hs, ws = int(np.ceil(h / f)) + 1, int(np.ceil(w / f)) + 1
    y0, x0 = (side - hs) // 2, (side - ws) // 2
    small = np.asarray(im)[y0:y0 + hs, x0:x0 + ws]
    full = _resize(np.ascontiguousarray(small), h, w)
    lines = np.exp(-(full * (1 / 0.25)) ** 2)
    fade = _smoothstep(-0.6, 0.8, _smooth_noise(rng, h, w, 4 * period))
    return lines * fade


def _render_blobs(h: int, w: int, blobs: list[tuple], rng, sharpness: float = 2.0, gamma: float = 0.6,
                  reach: float = 2.3):
    """Paint soft irregular elliptical blobs. Each blob is ``(cy, cx, r, aspect, angle, strength,
    height)``. A blob's profile is ``p = 2 ** -(rho ** sharpness)`` (``rho`` = distance / radius),
    so ``p = 0.5`` exactly on its nominal outline and it fades out beyond (a diffuse halo;
    larger ``sharpness`` = better demarcated). Returns ``(cover, alpha, height)`` float32
    [h, w]: ``cover`` the max profile in [0, 1] (the exact mask is ``cover >= 0.5``), ``alpha``
    the max of ``p ** gamma * strength`` (the visible colour change), ``height`` the max dome
    height (raised lesions)."""
    cover = np.zeros((h, w), np.float32)
    alpha = np.zeros((h, w), np.float32)
    height = np.zeros((h, w), np.float32)
    ln2 = float(np.log(2.0))
    for cy, cx, r, aspect, angle, strength, bump in blobs:
        ext = r * max(aspect, 1.0 / aspect) * reach * 1.2 + 2
        y0, y1 = max(0, int(cy - ext)), min(h, int(cy + ext) + 2)
        x0, x1 = max(0, int(cx - ext)), min(w, int(cx + ext) + 2)
        if y0 >= y1 or x0 >= x1:
            continue
        yy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
        xx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
        ca, sa = float(np.cos(angle)), float(np.sin(angle))
        u = (xx * ca + yy * sa) / aspect
        v = (-xx * sa + yy * ca) * aspect
        theta = np.arctan2(v, u)
        p1, p2 = rng.uniform(0, 2 * np.pi, 2)
        a1, a2 = rng.uniform(0.0, 0.18), rng.uniform(0.0, 0.1)
        rr = r * (1 + a1 * np.sin(3 * theta + p1) + a2 * np.sin(5 * theta + p2))
        rho = np.sqrt(u * u + v * v) / rr
        shape = np.exp(-ln2 * rho ** sharpness).astype(np.float32)
        sl = (slice(y0, y1), slice(x0, x1))
        np.maximum(cover[sl], shape, out=cover[sl])
        np.maximum(alpha[sl], shape ** gamma * strength, out=alpha[sl])
        if bump > 0:
            dome = (bump * np.exp(-1.4 * rho * rho)).astype(np.float32)
            np.maximum(height[sl], dome, out=height[sl])
    return cover, alpha, height


def _sample_points(rng, density: np.ndarray, n: int, h: int, w: int) -> np.ndarray:
    """``n`` points [n, 2] (y, x) drawn from a non-negative low-res ``density`` map over [h, w]."""
    gh, gw = density.shape
    p = density.ravel().astype(np.float64)
    if p.sum() <= 0 or n <= 0:
        return np.zeros((0, 2))
    idx = rng.choice(p.size, size=n, p=p / p.sum())
    gy, gx = np.divmod(idx, gw)
    y = (gy + rng.random(n)) * (h / gh)
    x = (gx + rng.random(n)) * (w / gw)
    return np.stack([y, x], 1)


def _cluster_density(rng, gh: int, gw: int, n_clusters: int, spread: tuple[float, float]) -> np.ndarray:
    """Low-res density [gh, gw] in [0, 1]: Gaussian clusters modulated by smooth noise."""
    yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float32)
    dens = np.zeros((gh, gw), np.float32)
    side = min(gh, gw)
    for _ in range(n_clusters):
        cy, cx = rng.uniform(-0.1, 1.1) * gh, rng.uniform(-0.1, 1.1) * gw
        sy, sx = rng.uniform(*spread, 2) * side
        dens += rng.uniform(0.5, 1.0) * np.exp(-0.5 * (((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2))
    mod = _smooth_noise(rng, gh, gw, max(2.0, side / 6))
    dens *= np.clip(1 + 0.45 * mod, 0.1, None)
    return dens / (dens.max() + 1e-6)


# Patients cycle through the skin types in this order (so any 3 consecutive patients span
# light to dark, and 6 consecutive ones cover all of I-VI).
_TONE_ORDER = (0, 4, 2, 5, 1, 3)


# Site B's patients cycle through this order: types V, VI, V, IV, VI, V, VI, III (6 of 8 V-VI).
_TONE_ORDER_B = (4, 5, 4, 3, 5, 4, 5, 2)


def skin_type(seed: int, patient: int, site_index: int | None = None) -> int:
    """Fitzpatrick type (1..6) of demo patient ``patient`` (1-based) for ``seed``; a site-B patient
    (``site_index``: its 0-based rank among site B's patients) follows site B's mix."""
    if site_index is not None:
        return _TONE_ORDER_B[(site_index + seed) % len(_TONE_ORDER_B)] + 1
    return _TONE_ORDER[(patient - 1 + seed) % 6] + 1


def _tone_params(rng, tone: int):
    """Base colour and darkness in [0, 1] for Fitzpatrick type ``tone + 1``, jittered."""
    base = FITZPATRICK_RGB[tone] * (1 + rng.normal(0, 0.035, 3)).astype(np.float32)
    base[0] *= 1 + rng.uniform(-0.01, 0.05)             # baseline redness
    darkness = float(np.clip(tone / 5.0 + rng.normal(0, 0.05), 0, 1))
    return np.clip(base, 0.05, 0.98).astype(np.float32), darkness




def _lesion_tint(darkness: float, rng, kind: str) -> np.ndarray:
    """Per-channel multiplier turning skin into lesion colour: pink-red on light skin (salmon
    for plaques), darker violaceous / brown on dark skin."""
    light = {"rash": [0.98, 0.66, 0.70], "wheal": [1.0, 0.78, 0.80], "plaque": [1.0, 0.72, 0.66]}[kind]
    dark = {"rash": [0.80, 0.66, 0.74], "wheal": [0.88, 0.76, 0.84], "plaque": [0.84, 0.68, 0.70]}[kind]
    t = np.clip((darkness - 0.25) / 0.6, 0, 1)
    tint = (1 - t) * np.array(light) + t * np.array(dark)
    return (tint * (1 + rng.normal(0, 0.03, 3))).astype(np.float32)


def render_photo(disease: str, *, seed: int, patient: int, example: int, photo: int,
                 min_side: int = 400, max_side: int = 1600, site: str = "A", site_index: int | None = None):
    """Render one synthetic photo. Returns ``(image uint8 [H,W,3], mask bool [H,W] (True = ill
    skin), info dict)``; deterministic in its arguments. ``site`` "A" or "B" (site B's camera
    and light, see the module docstring; ``site_index``: the patient's rank among site B's)."""
    from scipy.ndimage import gaussian_filter

    d_idx = DISEASES.index(disease)
    prng = _rng(seed, 1, patient)                      # patient: skin tone, hair
    if site not in SITES:
        raise ValueError(f"unknown demo site {site!r}; choose from {SITES}")
    tone = skin_type(seed, patient, site_index if site == OOD_SITE else None) - 1
    base, darkness = _tone_params(prng, tone)
    hair_density = float(prng.choice([0.0, 0.02, 0.05, 0.1], p=[0.5, 0.25, 0.15, 0.1]))
    hair_dark = prng.random() < 0.3 or tone >= 3
    erng = _rng(seed, 2, patient, example)             # example: body site, severity
    severity = erng.uniform(0.35, 1.0)
    crease_angle = erng.uniform(0, 180)
    rng = _rng(seed, 3, d_idx, patient, example, photo)  # this photo
    h, w = _photo_size(rng, min_side, max_side)
    zoom = rng.uniform(0.9, 1.9) * min(h, w) / 560.0    # px per "skin unit": bigger for closer shots
    zoom = float(np.clip(zoom, 0.6, 3.2))
    # Render the scene at reduced scale where features are large (close-ups): about one
    # internal pixel per skin unit; upsample before the camera's noise and JPEG.
    H, W = h, w
    q = min(1.0, 1.0 / zoom)
    h, w = max(16, int(round(H * q))), max(16, int(round(W * q)))
    zoom = zoom * h / H

    # --- skin colour field: pigment + redness variation (low frequency)
    pig = _smooth_noise(rng, h, w, 120 * zoom)
    red = _smooth_noise(rng, h, w, 60 * zoom)
    blot = _smooth_noise(rng, h, w, 25 * zoom)
    melanin = np.array([0.8, 1.0, 1.15], np.float32)      # darker spots are browner
    img = base[None, None, :] * (1 + (0.06 * pig + 0.025 * blot)[..., None] * melanin)
    flush = _smoothstep(-0.5, 1.5, red)[..., None] * rng.uniform(0.02, 0.08)  # patchy redness
    img *= 1 + flush * np.array([0.3, -0.6, -0.5], np.float32)
    # --- micro texture: grain, pores, and relief (dermatoglyphic crossing lines, folds)
    grain = gaussian_filter(rng.standard_normal((h, w), dtype=np.float32), 0.8 * zoom, truncate=3.0)
    grain /= grain.std() + 1e-6
    tex = 1 + 0.015 * grain
    n_pores = int(h * w / (60 * zoom * zoom) * rng.uniform(0.3, 1.0))
    pores = np.zeros((h, w), np.float32)
    pores.ravel()[rng.integers(0, h * w, n_pores)] = rng.uniform(0.5, 1.0, n_pores)
    pores = gaussian_filter(pores, max(0.6, 0.6 * zoom), truncate=3.0)
    pores /= pores.max() + 1e-6
    tex *= 1 - rng.uniform(0.08, 0.22) * pores
    crease_strength = rng.uniform(0.03, 0.09)
    relief = np.zeros((h, w), np.float32)
    period0 = rng.uniform(8, 16) * zoom
    for ang, period in ((crease_angle, period0), (crease_angle + rng.uniform(50, 80), period0 * rng.uniform(1.1, 1.6))):
        lines = _crease_lines(rng, h, w, max(3.0, period), ang)
        tex *= 1 - crease_strength * lines
        relief -= lines
    img *= tex[..., None]

    # --- disease
    lesion_rng = _rng(seed, 4, d_idx, patient, example, photo)
    cover, alpha, height, tint, n_lesions = _disease_layer(disease, lesion_rng, h, w, zoom, severity, darkness)
    img *= 1 + alpha[..., None] * (tint[None, None, :] - 1)
    if disease == "psoriasis":   # fine silvery scale on the plaques, flaking in patches
        flakes = 0.6 * _smooth_noise(lesion_rng, h, w, 3 * zoom) + _smooth_noise(lesion_rng, h, w, 16 * zoom)
        inner = _smoothstep(0.55, 0.95, gaussian_filter_fast(cover, 5 * zoom))
        cracks = _crease_lines(lesion_rng, h, w, max(3.0, 7 * zoom), lesion_rng.uniform(0, 180))
        scale = _smoothstep(-0.5, 2.5, flakes) * (1 - 0.6 * cracks) * inner * lesion_rng.uniform(0.2, 0.45) * (1 - 0.5 * darkness)
        scale = gaussian_filter(scale, 0.9, truncate=3.0)
        silver = np.array([0.90, 0.88, 0.88], np.float32)
        scale_col = (1 - darkness) * silver + darkness * (0.35 * silver + 0.9 * base)
        img = img * (1 - scale[..., None]) + scale_col * scale[..., None]
        height = height + 0.25 * scale
    # relief shading: lesions (domes) and skin lines, lit from one side, plus specular glints
    light = rng.uniform(0, 2 * np.pi)
    hs = gaussian_filter(height + rng.uniform(0.05, 0.15) * relief, max(0.8, 0.8 * zoom), truncate=3.0)
    gy, gx = np.gradient(hs)
    shade = -(gx * float(np.cos(light)) + gy * float(np.sin(light)))
    img *= np.clip(1 + shade, 0.8, 1.2)[..., None]
    glint = np.clip(shade - 0.03, 0, None)

    # --- hair: occasional fine, light or short hairs
    n_hairs = int(rng.poisson(hair_density * h * w / (100 * zoom) ** 2))
    if n_hairs:
        img = _draw_hair(rng, img, n_hairs, zoom, hair_dark, darkness, base)

    # --- lighting: gradient, body curvature (limb), skin fold, sheen, vignette
    yy = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    xx = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    a = rng.uniform(0, 2 * np.pi)
    ca, sa = float(np.cos(a)), float(np.sin(a))
    along = xx * ca + yy * sa
    across = -xx * sa + yy * ca
    curv = rng.uniform(0.0, 0.6)
    off = rng.uniform(-0.6, 0.6)
    lum = (rng.uniform(0.85, 1.1) + rng.uniform(0.05, 0.2) * along
           - curv * np.clip(np.abs(across - off) - 0.3, 0, 0.9) ** 2
           - rng.uniform(0.0, 0.1) * (xx ** 2 + yy ** 2))
    lum += 0.06 * _smooth_noise(rng, h, w, 200 * zoom)
    if rng.random() < 0.2:   # a skin fold: dark crease with a lit ridge beside it
        fa = rng.uniform(0, np.pi)
        d = (-xx * float(np.sin(fa)) + yy * float(np.cos(fa)) - rng.uniform(-0.7, 0.7)
             + 0.15 * np.sin(3 * (xx * float(np.cos(fa)) + yy * float(np.sin(fa))) + rng.uniform(0, 6)))
        fw = rng.uniform(0.05, 0.12)
        lum -= rng.uniform(0.1, 0.25) * np.exp(-(d / fw) ** 2) - 0.08 * np.exp(-((d - 2.5 * fw) / (2 * fw)) ** 2)
    lum = np.clip(lum, 0.35, 1.15)
    gloss = rng.uniform(0.0, 0.12) * (1 - 0.5 * darkness)
    sheen = _smoothstep(0.3, 2.2, _smooth_noise(rng, h, w, 80 * zoom)) * gloss
    sheen = sheen * (0.4 + 0.6 * _smoothstep(-0.3, 1.0, 1 + 0.5 * relief)) + glint * (0.5 + 4 * gloss)
    img = img * lum[..., None] + sheen[..., None] * (0.55 + 0.45 * base)
    cast = rng.normal(0, 0.025, 3) + rng.choice([np.array([0.02, 0.0, -0.03]), np.array([-0.01, 0.0, 0.015]),
                                                  np.array([0.01, -0.01, 0.0])])
    img *= (1 + cast).astype(np.float32)     # white balance / room-light colour cast
    grey = img.mean(-1, keepdims=True)
    img = grey + (img - grey) * rng.uniform(0.78, 1.0)   # camera saturation

    # --- camera: defocus (varying across the frame), noise, JPEG round trip
    sigma = rng.uniform(0.7, 1.8) * (max(1.0, zoom) if (h, w) == (H, W) else 0.8)
    blurred = gaussian_filter(img, (sigma, sigma, 0), truncate=3.0)
    focus = _smoothstep(-0.5, 1.0, _smooth_noise(rng, h, w, 300 * zoom))[..., None]
    img = blurred + (img - blurred) * (0.4 * focus)
    if (h, w) != (H, W):
        img = np.stack([_resize(img[..., c], H, W) for c in range(3)], -1)
        cover = _resize(cover, H, W)
    noise_lvl = rng.uniform(0.005, 0.018)
    img += noise_lvl * rng.standard_normal((H, W, 1), dtype=np.float32)
    chroma = _resize(rng.standard_normal((H // 2 + 1, W // 2 + 1), dtype=np.float32), H, W)
    img[..., 0] += 0.4 * noise_lvl * chroma
    img[..., 2] -= 0.4 * noise_lvl * chroma
    quality = int(rng.integers(60, 93))
    if site == OOD_SITE:
        img, quality = _site_b_camera(img, _rng(seed, 5, patient, example, photo))
    img *= 255
    img += 0.5
    out = np.clip(img, 0, 255, out=img).astype(np.uint8)
    out = _jpeg_roundtrip(out, quality)
    mask = cover >= 0.5
    return out, mask, {"fitzpatrick": tone + 1, "lesions": n_lesions, "site": site}


def _site_b_camera(img: np.ndarray, rng) -> tuple[np.ndarray, int]:
    """Site B's light and camera on a float [H, W, 3] image in ~[0, 1]: on-camera flash (bright
    centre, fast radial fall-off), cool fluorescent cast, lifted blacks and lower contrast, more
    sensor noise; returns the image and its (lower) JPEG quality."""
    h, w = img.shape[:2]
    yy = np.linspace(-1, 1, h, dtype=np.float32)[:, None] + rng.uniform(-0.2, 0.2)
    xx = np.linspace(-1, 1, w, dtype=np.float32)[None, :] + rng.uniform(-0.2, 0.2)
    flash = 1.15 - rng.uniform(0.3, 0.45) * (xx * xx + yy * yy)
    img = img * flash[..., None]
    img = img * (np.array([0.92, 0.99, 1.08]) * (1 + rng.normal(0, 0.015, 3))).astype(np.float32)
    img = 0.07 + 0.88 * img
    img = img + rng.uniform(0.02, 0.035) * rng.standard_normal((h, w, 1), dtype=np.float32)
    return img.astype(np.float32), int(rng.integers(35, 60))


def _disease_layer(disease, rng, h, w, zoom, severity, darkness):
    """Lesions of one disease: ``(cover, alpha, height, tint, n_lesions)``; the exact mask is
    ``cover >= 0.5`` (every lesion's profile crosses 0.5 on its nominal outline)."""
    gh, gw = max(4, h // 16), max(4, w // 16)
    blobs = []
    if disease not in DISEASES:
        raise ValueError(f"unknown demo disease {disease!r}; choose from {DISEASES}")
    if disease == "maculopapular_rash":
        tint = _lesion_tint(darkness, rng, "rash")
        dens = _cluster_density(rng, gh, gw, int(rng.integers(1, 5)), (0.12, 0.45))
        mean_r = rng.uniform(3.0, 7.0) * zoom
        n = int(severity * h * w / (mean_r ** 2) * rng.uniform(0.012, 0.04))
        pts = _sample_points(rng, dens ** 1.5, n, h, w)
        papule_p = rng.uniform(0.2, 0.6)
        for y, x in pts:
            r = float(np.clip(rng.lognormal(np.log(mean_r), 0.35), 1.5, 6 * mean_r))
            bump = rng.uniform(0.2, 0.6) * r / 6 if rng.random() < papule_p else 0.0
            blobs.append((y, x, r, rng.uniform(0.75, 1.3), rng.uniform(0, np.pi), rng.uniform(0.4, 0.85), bump))
        cover, alpha, height = _render_blobs(h, w, blobs, rng, sharpness=2.0, gamma=0.7)
        # diffuse erythema around the macules (mostly below the mask threshold)
        alpha = np.maximum(alpha, 0.6 * gaussian_filter_fast(alpha, 1.5 * mean_r))
        # blotchy confluent patches where clusters are dense, their borders fading out
        dens_full = _resize(dens, h, w)
        conf = dens_full * (1 + 0.5 * _smooth_noise(rng, h, w, 30 * zoom))
        thr = rng.uniform(0.75, 1.1) - 0.25 * severity
        patch = _smoothstep(thr - 0.3, thr + 0.3, conf)
        mottle = np.clip(0.75 + 0.25 * _smooth_noise(rng, h, w, 8 * zoom), 0.4, 1.0)
        cover = np.maximum(cover, patch)
        alpha = np.maximum(alpha, patch * mottle * rng.uniform(0.4, 0.7))
        alpha = np.maximum(alpha, 0.18 * _smoothstep(0.2, 0.8, dens_full))   # faint background flush
    elif disease == "urticaria":
        tint = _lesion_tint(darkness, rng, "wheal")
        dens = _cluster_density(rng, gh, gw, int(rng.integers(1, 4)), (0.2, 0.5))
        n = int(rng.integers(4, 14) * (0.5 + severity))
        for y, x in _sample_points(rng, dens, n, h, w):
            r0 = rng.uniform(14, 45) * zoom
            for _ in range(int(rng.integers(1, 4))):   # polycyclic: a few overlapping lobes
                jy, jx = rng.normal(0, 0.6 * r0, 2)
                blobs.append((y + jy, x + jx, r0 * rng.uniform(0.6, 1.0), rng.uniform(0.7, 1.4),
                              rng.uniform(0, np.pi), rng.uniform(0.5, 0.85), 0.1 * r0 / 6))
        cover, alpha, height = _render_blobs(h, w, blobs, rng, sharpness=4.0, gamma=0.5)
        # oedematous pale centre, red flare fading out around the wheal
        centre = _smoothstep(0.75, 1.0, gaussian_filter_fast(cover, 6 * zoom))
        alpha = alpha * (1 - 0.4 * centre)
        alpha = np.maximum(alpha, 0.45 * gaussian_filter_fast(alpha, 8 * zoom))
    else:  # psoriasis
        tint = _lesion_tint(darkness, rng, "plaque")
        dens = _cluster_density(rng, gh, gw, int(rng.integers(1, 3)), (0.25, 0.5))
        n = int(rng.integers(2, 5) * (0.5 + severity))
        for y, x in _sample_points(rng, dens, n, h, w):
            r0 = rng.uniform(25, 70) * zoom
            for _ in range(int(rng.integers(2, 5))):
                jy, jx = rng.normal(0, 0.45 * r0, 2)
                blobs.append((y + jy, x + jx, r0 * rng.uniform(0.5, 0.9), rng.uniform(0.7, 1.5),
                              rng.uniform(0, np.pi), rng.uniform(0.6, 0.9), 0.05 * r0 / 6))
        # satellite small papules
        for y, x in _sample_points(rng, dens, int(rng.integers(5, 30)), h, w):
            r = rng.uniform(3, 8) * zoom
            blobs.append((y, x, r, 1.0, 0.0, rng.uniform(0.55, 0.85), 0.3 * r / 6))
        cover, alpha, height = _render_blobs(h, w, blobs, rng, sharpness=5.0, gamma=0.5, reach=1.8)
        alpha = np.maximum(alpha, 0.35 * gaussian_filter_fast(alpha, 4 * zoom))   # inflamed rim
    return cover, alpha, height, tint, len(blobs)


def gaussian_filter_fast(field: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a float32 [H, W] field, computed at reduced scale for large sigma."""
    from scipy.ndimage import gaussian_filter

    h, w = field.shape
    f = max(1, int(sigma // 3))
    if f == 1:
        return gaussian_filter(field, sigma)
    small = _resize(field, max(2, h // f), max(2, w // f))
    return _resize(gaussian_filter(small, sigma / f), h, w)


def _draw_hair(rng, img: np.ndarray, n: int, zoom: float, dark: bool, darkness: float,
               base: np.ndarray) -> np.ndarray:
    """Draw ``n`` fine, mostly short hairs onto a float [H,W,3] image (alpha-blended, blurred):
    light vellus hairs on light skin, darker ones on dark skin or for some patients."""
    from PIL import Image, ImageDraw
    from scipy.ndimage import gaussian_filter

    h, w = img.shape[:2]
    layer = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(layer)
    main_dir = rng.uniform(0, np.pi)
    for _ in range(n):
        y, x = rng.uniform(0, h), rng.uniform(0, w)
        length = rng.uniform(8, 70) * zoom
        ang = main_dir + rng.normal(0, 0.35)
        bend = rng.normal(0, 0.012) / max(zoom, 0.3)
        steps = max(4, int(length / 4))
        pts = []
        for _s in range(steps):
            pts.append((x, y))
            x += np.cos(ang) * length / steps
            y += np.sin(ang) * length / steps
            ang += bend * length / steps
        draw.line(pts, fill=int(rng.uniform(90, 220)), width=1)
    a = gaussian_filter(np.asarray(layer, np.float32) / 255.0, 0.5) * (0.45 if dark else 0.35)
    colour = base * (0.35 if dark else 1.25) + (0.0 if dark else 0.08)
    return img * (1 - a[..., None]) + colour * a[..., None]


def _jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB")).copy()
