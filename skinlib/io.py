"""Bottom layer: atomic writes, CSV manifests, JSON, run folders (and their losses.csv), seeding.

Everything in skinlib may import this module; it imports nothing of ours.
A file is always written to a temporary name in the same folder and renamed into
place (``os.replace``), so an interrupted run never leaves a half-written file
under the final name: resuming can trust every file that exists.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Sequence

import numpy as np

LOSSES = "losses.csv"      # a training run's per-step log (baselines/train.py, glide/finetune.py)

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_open(path, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside ``path``; on success rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_png(path, image) -> None:
    """Atomically save a PIL image or a HxW / HxWxC uint8 array as PNG (deterministic bytes)."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    atomic_write_bytes(path, buf.getvalue())


def save_json(path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def load_json(path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_csv(path, rows: Iterable[Mapping[str, Any]], fieldnames: Sequence[str] | None = None) -> None:
    """Atomically write dict rows as CSV; columns are ``fieldnames`` or the first row's keys."""
    rows = list(rows)
    if fieldnames is None:
        fieldnames = list(rows[0].keys()) if rows else []
    with atomic_open(path, "w") as f:
        w = csv.DictWriter(f, fieldnames=list(fieldnames), extrasaction="raise")
        w.writeheader()
        w.writerows(rows)


def read_csv(path) -> list[dict[str, str]]:
    """Read a CSV written by :func:`write_csv` into a list of dicts (all values are strings)."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def save_torch(path, obj: Any) -> None:
    """Atomically ``torch.save`` plain tensors/dicts (loadable with ``weights_only=True``)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


class UnsafePathError(ValueError):
    """A path read from a manifest or record points outside the folder it belongs to."""


def inside(folder, relative, what: str = "") -> Path:
    """``folder / relative``, refused (:class:`UnsafePathError` naming ``what``, e.g.
    "row 3 of X/manifest.csv, column image") when ``relative`` is empty, absolute (also a
    Windows drive or UNC path) or leads out of ``folder`` through ``..``: a manifest value never
    reaches, and never deletes, a file outside its folder. The check is on the name (links
    inside the folder are the user's own choice)."""
    folder = Path(folder)
    rel = str(relative)
    where = f" ({what})" if what else ""
    if not rel.strip():
        raise UnsafePathError(f"empty file name{where} in {folder}")
    norm = os.path.normpath(rel.replace("\\", "/"))
    if (Path(rel).is_absolute() or rel.startswith(("/", "\\")) or (len(rel) > 1 and rel[1] == ":")
            or norm == ".." or norm.startswith("../") or norm == "."):
        raise UnsafePathError(f"{rel!r}{where} points outside its folder {folder}: manifests name files "
                              f"inside their own folder only. Fix the row (or re-make the folder).")
    return folder / rel


#: manifest columns that name a file of the manifest's folder (crops, generated images, exports)
PATH_COLUMNS = ("image", "mask", "mask2", "edit", "steps_map", "gif")


def check_manifest_paths(folder, rows: Sequence[Mapping[str, Any]], manifest="manifest.csv") -> None:
    """Refuse (:class:`UnsafePathError`, naming the row and column) any non-empty value of a
    :data:`PATH_COLUMNS` column of ``rows`` that points outside ``folder``."""
    for i, r in enumerate(rows, start=1):
        for col in PATH_COLUMNS:
            value = r.get(col)
            if value:
                inside(folder, value, what=f"row {i} of {Path(folder) / manifest}, column {col}")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) global generators."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def remove_files(paths: Iterable, message: str, log=print) -> None:
    """Delete those of ``paths`` that exist, after logging "``message`` (N files)." (a fresh run
    clearing an earlier run's files); nothing is logged when none exist."""
    old = [Path(p) for p in paths if Path(p).is_file()]
    if old:
        log(f"{message} ({len(old)} files).")
        for path in old:
            path.unlink()


def make_run_dir(root, name: str | None = None) -> Path:
    """Create (or reuse) ``root/name``; ``name`` defaults to a timestamp ``YYYYmmdd-HHMMSS``."""
    import time

    root = Path(root)
    path = root / (name or time.strftime("%Y%m%d-%H%M%S"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def env_flag(name: str, default: bool = False) -> bool:
    """True when environment variable ``name`` is set to 1/true/yes (case-insensitive)."""
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def read_losses(run_dir) -> List[Dict[str, float]]:
    """The rows of ``run_dir/losses.csv`` as dicts of numbers (step, epoch, lr, loss terms)."""
    path = Path(run_dir) / LOSSES
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: train first (skinlib.baselines.train.train).")
    return [{k: (int(v) if k in ("step", "epoch") else float(v)) for k, v in r.items()}
            for r in read_csv(path)]
