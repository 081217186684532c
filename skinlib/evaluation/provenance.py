"""Leak checks: may a generated folder be used against the current test patients?

A generated image leaks when its generator was trained on, or the image was derived from, a crop
of a **test** patient of notebook 01's split: such an image can show a "gain" that is only
memory of the test set. :func:`check_generated_folder` reads the folder's manifest and refuses it
(:class:`LeakError`, naming the files and the fix) when

* a row names a source crop (``source_crop`` column, GLIDE variants) but no ``source_sha256``:
  sources are identified by content, not by file name (crop names repeat across folders);
* a ``source_sha256`` is the content of a test-patient crop (a leak), or of no current crop (the
  folder was made from other crops than the current ones);
* a row says its generator was trained on ``trained_on_split`` other than ``train`` (e.g.
  ``all``; ``none`` = weights never trained on this data, e.g. OpenAI's, is accepted), or on train crops whose content hash ``train_data_sha256`` differs from the current
  train split's (trained on other crops);
* any image is a pixel-exact copy of a test-patient crop (whatever its manifest says).

A folder without provenance columns (images of an outside model in the crop format) passes with
the status ``unverified``: its manifest cannot tell what it was trained on; the memorisation
check of the evaluation still compares it with the train and test crops.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..data.dataset import MANIFEST, crops_content_sha256, list_crop_rows
from ..io import inside, read_csv, sha256_file
from ..data.split import SUBFOLDERS


class LeakError(ValueError):
    """A generated folder must not be evaluated against the current test patients."""


@dataclass
class Provenance:
    status: str            # "verified" | "unverified"
    trained_on_split: str  # "train" | "" (unknown)
    detail: str


def crop_hashes(real_dir) -> dict[str, dict[str, str]]:
    """sha256 of every crop PNG of a crops folder (ill-skin crops, the healthy and low-contrast
    buckets); test-patient crops also carry the hash of their decoded pixels (``pixel_hash``,
    for the pixel-copy check, computed once per evaluation) ->
    ``{"file", "patient", "split"}``."""
    real_dir = Path(real_dir)
    out = {}
    for folder in (real_dir, *(real_dir / sub for sub in SUBFOLDERS)):
        if not (folder / MANIFEST).is_file():
            continue
        for i, r in enumerate(read_csv(folder / MANIFEST), start=1):
            path = inside(folder, r["image"], what=f"row {i} of {folder / MANIFEST}, column image")
            info = {"file": str(path), "patient": r.get("patient", ""), "split": r.get("split", "")}
            if info["split"] == "test":
                info["pixel_hash"] = _pixel_hash(path)
            out[sha256_file(path)] = info
    return out


def train_data_sha256(real_dir) -> str:
    """The content hash (16 hex) of the current train-split crops, as the DCGAN/CVAE training
    loop records it (``skinlib.data.crops_content_sha256`` of ``list_crop_rows(split="train")``)."""
    return crops_content_sha256(real_dir, list_crop_rows(real_dir, split="train"))[:16]


def _pixel_hash(path) -> str:
    from PIL import Image
    import numpy as np

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    return hashlib.sha256(arr.tobytes() + str(arr.shape).encode()).hexdigest()


def check_generated_folder(folder, real_dir, *, hashes: dict | None = None) -> Provenance:
    """Raise :class:`LeakError` when ``folder`` may not be evaluated against ``real_dir``'s test
    patients (see the module docstring); otherwise return its provenance."""
    folder, real_dir = Path(folder), Path(real_dir)
    rows = list_crop_rows(folder)
    hashes = crop_hashes(real_dir) if hashes is None else hashes
    fix = "Fix: re-run the generator's notebook on the current crops (it uses train-split crops only by default)."
    details = []
    status = "unverified"
    trained = ""
    if any(r.get("source_crop") for r in rows):
        if not all(r.get("source_sha256") for r in rows):
            raise LeakError(f"{folder / MANIFEST}: variants name their source crops by file name only (no "
                            f"source_sha256 column), so they cannot be matched to the current crops by content. {fix}")
        test_rows, unknown = [], []
        for r in rows:
            hit = hashes.get(r["source_sha256"])
            if hit is None:
                unknown.append(r)
            elif hit["split"] == "test":
                test_rows.append((r, hit))
        if test_rows:
            r, hit = test_rows[0]
            raise LeakError(f"{folder}: {len(test_rows)} of {len(rows)} images were made from crops of TEST patients "
                            f"(e.g. {r['image']} from {hit['file']}, patient {hit['patient']}): they would leak the "
                            f"test set into training. {fix}")
        if unknown:
            raise LeakError(f"{folder}: {len(unknown)} of {len(rows)} images were made from crops that are not among the "
                            f"current crops of {real_dir} (e.g. {unknown[0]['image']} from {unknown[0]['source_crop']}): "
                            f"the folder belongs to another crop run. {fix}")
        status, trained = "verified", "train"
        details.append("every source crop is a current train-patient crop (by content)")
    splits = {r.get("trained_on_split", "") for r in rows}
    if splits - {"", "none"}:              # "none": weights never trained on this data (OpenAI's, tiny-random)
        if splits - {"none"} != {"train"}:
            raise LeakError(f"{folder / MANIFEST}: its generator was trained on split(s) {sorted(splits)} — not the "
                            f"train patients only, so it has seen the test patients. {fix}")
        recorded = {r.get("train_data_sha256", "") for r in rows} - {""}
        if recorded:
            current = train_data_sha256(real_dir)
            if recorded != {current}:
                raise LeakError(f"{folder / MANIFEST}: its generator was trained on other crops (train_data_sha256 "
                                f"{sorted(recorded)}) than the current train split of {real_dir} ({current}). {fix}")
            status = "verified"
            details.append("trained on the current train-split crops (by content)")
        trained = "train"
    test_pixels = {info["pixel_hash"] for info in hashes.values() if "pixel_hash" in info}
    copies = [r["image"] for r in rows if _pixel_hash(folder / r["image"]) in test_pixels]
    if copies:
        raise LeakError(f"{folder}: {len(copies)} image(s) are pixel-exact copies of TEST-patient crops "
                        f"(e.g. {copies[0]}): they would leak the test set into training. Remove them.")
    if status == "unverified":
        details.append("no provenance columns in the manifest: what its generator was trained on is unknown")
    return Provenance(status, trained, "; ".join(details))


__all__ = ["LeakError", "Provenance", "check_generated_folder", "crop_hashes", "train_data_sha256"]
