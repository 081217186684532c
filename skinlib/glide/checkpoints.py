"""Finding, downloading, validating and loading the released GLIDE inpainting checkpoints.

Files (``base_inpaint.pt``, ``upsample_inpaint.pt``) live in a cache folder:
``cache_dir`` argument > ``$SKINLIB_GLIDE_CACHE`` > the user cache dir
(``$XDG_CACHE_HOME`` or ``~/.cache`` + ``/skinlib/glide``; ``~/Library/Caches`` on macOS,
``%LOCALAPPDATA%`` on Windows). A missing file is downloaded from OpenAI's public URL with
a progress bar into a ``.part`` file, validated (readable with ``torch.load(weights_only=True)``,
exact key set and shapes), and only then renamed into place, so a truncated or wrong
download is never used and never left under the final name. Offline with no cached file:
:class:`CheckpointUnavailableError` says which file to put where.

The first time a file of the cache folder is used (downloaded or found there), its sha256 is
recorded in ``pinned_sha256.json`` beside it; later a file with another sha256 (or a download that
differs from the pinned one) is refused with :class:`CheckpointInvalidError`. Deleting that record
(or its entry) accepts a file replaced on purpose.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch

from .. import io as skio
from .configs import CHECKPOINTS, CheckpointInfo
from .unet import GlideUNet, build_model

log = logging.getLogger(__name__)

ENV_CACHE = "SKINLIB_GLIDE_CACHE"
PINS_FILE = "pinned_sha256.json"
PINS_FORMAT = "skinlib-glide-pins-v1"


class CheckpointUnavailableError(RuntimeError):
    """Weights are neither cached nor downloadable (offline). The message names the file(s),
    the URL(s) and the exact folder to put them in (and how to change that folder)."""


class WeightsOfflineError(CheckpointUnavailableError):
    """OpenAI's weights are not in the cache folder and the machine cannot reach the download
    server (offline): the one case the main job reports as "not run" (with how to supply them)."""


class CheckpointInvalidError(ValueError):
    """A checkpoint file is truncated, unreadable or not the expected model."""


# ----------------------------------------------------------------------------- cache folder
def default_cache_dir() -> Path:
    """``$SKINLIB_GLIDE_CACHE`` if set, else the per-user cache folder + ``skinlib/glide``."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "skinlib" / "glide"


def resolve_cache_dir(cache_dir=None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


# ----------------------------------------------------------------------------- download
def _urlopen(url: str, timeout: float = 60.0):
    """Open ``url`` (http(s) or file://); tests replace this to simulate the network."""
    return urllib.request.urlopen(url, timeout=timeout)


def download_file(url: str, dest, *, expected_sha256: Optional[str] = None, what: str = "file",
                  progress: bool = True,
                  validate: Optional[Callable[[Path], Any]] = None) -> tuple[Path, str, Any]:
    """Download ``url`` to ``dest`` atomically: write ``<dest>.*.part``, check the length
    (and ``expected_sha256``), run ``validate(part_path)``, then rename. On any failure the
    part file is deleted and ``dest`` is untouched. Returns (dest, sha256, validate result).

    No connection -> :class:`WeightsOfflineError`; an HTTP error or a download that breaks
    off -> :class:`CheckpointUnavailableError`; bad content ->
    :class:`CheckpointInvalidError` (or whatever ``validate`` raises)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, part_name = tempfile.mkstemp(prefix=f"{dest.name}.", suffix=".part", dir=dest.parent)
    part = Path(part_name)
    ok = False
    try:
        with os.fdopen(fd, "wb") as f:
            digest = _stream_to(f, url, dest, what, progress)
        if expected_sha256 and digest != expected_sha256:
            raise CheckpointInvalidError(
                f"{what} downloaded from {url} has sha256 {digest}, expected {expected_sha256}; "
                "nothing was saved"
            )
        result = validate(part) if validate is not None else None
        os.replace(part, dest)
        _write_sha_sidecar(dest, digest)
        ok = True
        return dest, digest, result
    finally:
        if not ok:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()


def _stream_to(f, url: str, dest: Path, what: str, progress: bool) -> str:
    """Copy the body of ``url`` into the open file ``f``; return its sha256."""
    from tqdm.auto import tqdm

    try:
        response = _urlopen(url)
    except (urllib.error.HTTPError, ValueError) as e:  # the server answered with an error / a bad URL
        raise CheckpointUnavailableError(
            f"could not download {what} {dest.name} from {url} ({e}). Download it yourself "
            f"and put it at {dest} (folder set by cache_dir=... or ${ENV_CACHE})."
        ) from e
    except (urllib.error.URLError, OSError) as e:  # no connection: offline
        raise WeightsOfflineError(
            f"could not download {what} {dest.name} from {url} ({e}). Download it yourself "
            f"and put it at {dest} (folder set by cache_dir=... or ${ENV_CACHE})."
        ) from e
    sha = hashlib.sha256()
    received = 0
    with response:
        headers = getattr(response, "headers", None)
        length = headers.get("Content-Length") if headers is not None else None
        total = int(length) if length else None
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                  desc=f"downloading {dest.name}", disable=not progress) as bar:
            while True:
                try:
                    chunk = response.read(1 << 20)
                except (OSError, urllib.error.URLError) as e:
                    raise CheckpointUnavailableError(
                        f"download of {dest.name} from {url} broke off after {received} bytes ({e}); "
                        f"nothing was saved: run again, or put the file at {dest} yourself"
                    ) from e
                if not chunk:
                    break
                f.write(chunk)
                sha.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    f.flush()
    os.fsync(f.fileno())
    if total is not None and received != total:
        raise CheckpointInvalidError(
            f"download of {dest.name} from {url} is truncated: got {received} of {total} bytes; "
            "nothing was saved, run again"
        )
    return sha.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256.json")


def _write_sha_sidecar(path: Path, digest: str) -> None:
    st = path.stat()
    with contextlib.suppress(OSError):
        skio.save_json(_sidecar(path), {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns})


def file_sha256(path, remember: bool = True) -> str:
    """sha256 of ``path``; with ``remember`` (our cache folder) it is kept in
    ``<path>.sha256.json``, keyed on size and mtime, so 1.5 GB files are hashed once."""
    path = Path(path)
    st = path.stat()
    with contextlib.suppress(Exception):
        meta = skio.load_json(_sidecar(path))
        if meta["size"] == st.st_size and meta["mtime_ns"] == st.st_mtime_ns:
            return str(meta["sha256"])
    digest = skio.sha256_file(path)
    if remember:
        _write_sha_sidecar(path, digest)
    return digest


# ----------------------------------------------------------------------------- pins
def read_pins(cache: Path) -> dict[str, str]:
    """File name -> sha256 recorded in ``cache/pinned_sha256.json`` ({} when absent)."""
    path = Path(cache) / PINS_FILE
    if not path.is_file():
        return {}
    try:
        meta = skio.load_json(path)
        files = meta["files"] if meta.get("format") == PINS_FORMAT else None
    except (ValueError, OSError, KeyError, AttributeError, TypeError) as e:
        raise CheckpointInvalidError(f"{path} is not a readable record of pinned checkpoint hashes ({e}): "
                                     f"delete it (the files are pinned again when next used)") from e
    if not isinstance(files, dict):
        raise CheckpointInvalidError(f"{path} is not a record of pinned checkpoint hashes ({PINS_FORMAT!r}): "
                                     f"delete it (the files are pinned again when next used)")
    return {str(k): str(v) for k, v in files.items()}


def check_pin(path: Path, digest: str, url: str) -> None:
    """Refuse ``path`` (a file of the cache folder) when its sha256 ``digest`` differs from the one
    pinned when it was first used."""
    path = Path(path)
    pinned = read_pins(path.parent).get(path.name)
    if pinned is not None and pinned != digest:
        record = path.parent / PINS_FILE
        raise CheckpointInvalidError(
            f"{path} has sha256 {digest}, but {pinned} was recorded when it was first used ({record}): the "
            f"file was changed or replaced since. If you replaced it on purpose, delete {record} (or its "
            f"{path.name!r} entry) and run again; otherwise delete {path} and run again to download it "
            f"from {url}.")


def pin(path: Path, digest: str) -> None:
    """Record ``digest`` as the sha256 of ``path`` (a validated file of the cache folder) unless
    it has an entry already."""
    path = Path(path)
    pins = read_pins(path.parent)
    if path.name in pins:
        return
    pins[path.name] = digest
    record = path.parent / PINS_FILE
    try:
        skio.save_json(record, {"format": PINS_FORMAT, "files": pins})
    except OSError as e:
        log.warning("could not record the sha256 of %s in %s (%s): it is not pinned", path, record, e)


# ----------------------------------------------------------------------------- validation
def expected_shapes(options: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """State-dict key -> shape of the model for ``options`` (built on the meta device)."""
    return {k: tuple(v.shape) for k, v in build_model(options, device="meta").state_dict().items()}


def validate_state_dict(state: Any, options: Mapping[str, Any], source: str, fix: str = "") -> None:
    """Raise :class:`CheckpointInvalidError` unless ``state`` maps exactly the expected keys
    to floating-point tensors of the expected shapes."""
    if not isinstance(state, Mapping):
        raise CheckpointInvalidError(f"{source} holds a {type(state).__name__}, not a state dict. {fix}")
    expected = expected_shapes(options)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: {tuple(state[k].shape) if isinstance(state[k], torch.Tensor) else type(state[k]).__name__}"
        f" (expected {expected[k]})"
        for k in expected
        if k in state and (not isinstance(state[k], torch.Tensor) or tuple(state[k].shape) != expected[k])
    ]
    bad_dtype = [k for k in expected if k in state and isinstance(state[k], torch.Tensor)
                 and not state[k].is_floating_point()]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches (e.g. {wrong[:3]})")
    if bad_dtype:
        problems.append(f"non-float tensors (e.g. {bad_dtype[:3]})")
    if problems:
        raise CheckpointInvalidError(f"{source} does not match the model: " + "; ".join(problems) + f". {fix}")


def read_state_dict(path, options: Mapping[str, Any], fix: str = "") -> dict[str, torch.Tensor]:
    """``torch.load(path, weights_only=True)`` on CPU, then :func:`validate_state_dict`."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle with code, garbage...
        raise CheckpointInvalidError(f"{path} is not a readable PyTorch checkpoint ({e}). {fix}") from e
    validate_state_dict(state, options, str(path), fix)
    return dict(state)


# ----------------------------------------------------------------------------- resolution
def checkpoint_info(name: str) -> CheckpointInfo:
    try:
        return CHECKPOINTS[name]
    except KeyError:
        raise ValueError(f"unknown checkpoint {name!r}; known: {sorted(CHECKPOINTS)}") from None


def fetch_state_dict(name: str, *, folder=None, cache_dir=None, download: bool = True,
                     progress: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Validated state dict of checkpoint ``name`` ("base-inpaint" / "upsample-inpaint").

    ``folder``: a folder holding the file (never downloads into it). Otherwise the cache
    folder (see :func:`default_cache_dir`), downloading when missing and ``download``.
    Returns (state_dict, info) with info = name, file, url, path, sha256."""
    info = checkpoint_info(name)
    if folder is not None:
        path = Path(folder).expanduser() / info.file
        if not path.is_file():
            raise CheckpointUnavailableError(
                f"{info.file} not found in {path.parent}: download {info.url} and put it there "
                f"(or pass weights='official' to use the cache folder)"
            )
        fix = f"Replace it with the file from {info.url}."
    else:
        path = resolve_cache_dir(cache_dir) / info.file
        fix = f"Delete it and run again to download it from {info.url}."
        if not path.is_file():
            if not download:
                raise CheckpointUnavailableError(
                    f"{info.file} is not in the cache folder {path.parent} and downloading is off: "
                    f"download {info.url} and put it at {path} (folder set by cache_dir=... or ${ENV_CACHE})"
                )
            log.info("downloading %s from %s to %s", info.file, info.url, path)
            pinned = read_pins(path.parent).get(info.file)
            try:
                _, digest, state = download_file(
                    info.url, path, what=f"GLIDE checkpoint {info.name}", progress=progress,
                    expected_sha256=pinned,
                    validate=lambda p: read_state_dict(
                        p, info.options, f"The download from {info.url} was not saved; run again."
                    ),
                )
            except CheckpointInvalidError as e:
                if pinned is None or "expected" not in str(e):
                    raise
                raise CheckpointInvalidError(
                    f"{e}: {pinned} is the sha256 recorded when {info.file} was first used "
                    f"({path.parent / PINS_FILE}). If the file at {info.url} changed and you accept it, delete "
                    f"that record (or its {info.file!r} entry) and run again.") from e
            pin(path, digest)
            return state, _info(info, path, digest)
    digest = file_sha256(path, remember=folder is None)
    if folder is None:  # our cache folder: pinned (a user's folder gets no files of ours)
        check_pin(path, digest, info.url)
    state = read_state_dict(path, info.options, fix)
    if folder is None:
        pin(path, digest)
    return state, _info(info, path, digest)


def _info(info: CheckpointInfo, path: Path, digest: str) -> dict[str, Any]:
    return {"name": info.name, "file": info.file, "url": info.url, "path": str(path), "sha256": digest}


def model_from_state_dict(options: Mapping[str, Any], state: Mapping[str, torch.Tensor], *,
                          device=None, dtype: torch.dtype = torch.float32) -> GlideUNet:
    """Build the model on the meta device and load ``state`` (fp16/bf16/fp32; cast to
    float32 first) with a strict key match; move to ``device``; set the compute dtype."""
    model = build_model(options, device="meta")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    model = model.to(device or "cpu")
    return model.set_compute_dtype(dtype).eval()


def load_model(name: str, *, folder=None, cache_dir=None, download: bool = True, device=None,
               dtype: torch.dtype = torch.float32, progress: bool = True) -> tuple[GlideUNet, dict[str, Any]]:
    """The released model ``name`` with its weights, and the info dict of :func:`fetch_state_dict`."""
    state, info = fetch_state_dict(name, folder=folder, cache_dir=cache_dir, download=download,
                                   progress=progress)
    return model_from_state_dict(checkpoint_info(name).options, state, device=device, dtype=dtype), info


# ----------------------------------------------------------------------------- trained weights folders
WEIGHTS_FORMAT = "skinlib-glide-weights-v1"
OPTIONS_FILE = "glide_options.json"
SMALL_LABEL = "small GLIDE-architecture model trained on this run's crops — not OpenAI's GLIDE"
FOLDER_KEYS = {"base": "base-inpaint", "upsampler": "upsample-inpaint"}


def read_weights_json(folder) -> dict:
    """``folder/glide_options.json`` (models' options and provenance); {} when absent."""
    path = Path(folder) / OPTIONS_FILE
    if not path.is_file():
        return {}
    try:
        meta = skio.load_json(path)
    except (ValueError, OSError) as exc:
        raise CheckpointInvalidError(f"{path} is not readable JSON ({exc}): re-run the training "
                                                 f"export, or delete the folder.") from exc
    if not isinstance(meta, dict) or meta.get("format") != WEIGHTS_FORMAT or not isinstance(meta.get("models"), dict):
        raise CheckpointInvalidError(f"{path} is not a skinlib GLIDE weights description "
                                                 f"({WEIGHTS_FORMAT!r} with a 'models' table).")
    return meta


def weights_label(entries: dict) -> tuple[str, str]:
    """(kind, human label) of a weights folder's model entries: "small-from-scratch",
    "fine-tuned-from-official", "official" or "mixed"."""
    kinds = set()
    for e in entries.values():
        if e.get("official"):
            kinds.add("official")
        elif e.get("init") == "official":
            kinds.add("fine-tuned-from-official")
        else:
            kinds.add(f"{e.get('config', '?')}-from-scratch")
    if kinds == {"small-from-scratch"}:
        return "small-from-scratch", SMALL_LABEL
    if len(kinds) == 1:
        kind = kinds.pop()
    else:
        kind = "mixed"
    parts = []
    for name, e in sorted(entries.items()):
        if e.get("official"):
            parts.append((name, "OpenAI's official weights"))
        elif e.get("init") == "official":
            parts.append((name, f"OpenAI's GLIDE fine-tuned on this run's crops {str(e.get('data_sha256'))[:12]} "
                                f"(split {e.get('trained_on_split')}), {e.get('steps')} steps"))
        else:
            parts.append((name, f"{e.get('config')} GLIDE-architecture model trained from scratch on this run's "
                                f"crops — not OpenAI's GLIDE, {e.get('steps')} steps"))
    texts = {t.rsplit(", ", 1)[0] for _, t in parts}
    if len(texts) == 1:  # one description: give the steps per network once
        return kind, f"{texts.pop()} ({', '.join(n + ' ' + t.rsplit(', ', 1)[1] for n, t in parts)})"
    return kind, "; ".join(f"{n}: {t}" for n, t in parts)


def load_folder_model(folder, key: str, entry: Mapping[str, Any], *, cache_dir=None, download: bool = True,
                      device=None, dtype: torch.dtype = torch.float32,
                      progress: bool = True) -> tuple[GlideUNet, dict[str, Any]]:
    """Model ``key`` ("base" / "upsampler") of a weights folder written by
    :mod:`skinlib.glide.finetune`: ``entry`` is its row of ``glide_options.json``. The file is
    checked against the recorded sha256 and strictly against the recorded options (same
    validation as the released checkpoints); ``{"official": true}`` loads OpenAI's model."""
    from .configs import complete_options

    folder = Path(folder)
    name = FOLDER_KEYS[key]
    if entry.get("official"):
        return load_model(name, cache_dir=cache_dir, download=download, device=device, dtype=dtype,
                          progress=progress)
    fix = (f"Re-run the training (python -m skinlib.glide.finetune --out {folder} ...) or restore the "
           f"folder's files together: {OPTIONS_FILE} describes them.")
    try:
        options = complete_options(entry["options"])
        path = skio.inside(folder, entry["file"], what=f"{folder / OPTIONS_FILE}, {key} entry, field file")
        expected = str(entry["sha256"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointInvalidError(f"{folder / OPTIONS_FILE}: the {key} entry is incomplete or has "
                                     f"unknown options ({e}). {fix}") from e
    if not path.is_file():
        raise CheckpointUnavailableError(f"{path} is missing ({folder / OPTIONS_FILE} lists it). {fix}")
    digest = skio.sha256_file(path)
    if digest != expected:
        raise CheckpointInvalidError(f"{path} has sha256 {digest[:12]}..., but {OPTIONS_FILE} recorded "
                                     f"{expected[:12]}...: the file was changed or damaged. {fix}")
    state = read_state_dict(path, options, fix)
    model = model_from_state_dict(options, state, device=device, dtype=dtype)
    info = {"name": name, "file": entry["file"], "path": str(path), "sha256": digest,
            **{k: v for k, v in entry.items() if k not in ("options", "file", "sha256")}}
    return model, info
