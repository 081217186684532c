"""Leak checks: may a generated folder be used against the current test patients?

A generated image leaks when its generator was trained on, or the image was derived from, a crop
of a **test** patient of notebook 01's split: such an image can show a "gain" that is only
memory of the test set. :func:`check_generated_folder` reads the folder's manifest and refuses it
(:class:`LeakError`, naming the files and the fix) when

* a row names a source crop (``source_crop`` column, GLIDE variants) but no ``source_sha256``:
  sources are identified by content, not by file name (crop names repeat across folders);
* a ``source_sha256`` is the content of a test-patient crop (a leak), or of no current crop (the
  folder was made from other crops than the current ones);
* DCGAN/CVAE-style samples: a row says its generator was trained on ``trained_on_split`` other
  than ``train`` (e.g. ``all``), or on train crops whose content hash ``train_data_sha256``
  differs from the current train split's (trained on other crops);
* GLIDE variants: the weights' own training record (the manifest's ``model`` column, i.e. each
  model's entry of the weights folder's ``glide_options.json`` written by
  :mod:`skinlib.glide.finetune`) says a model was trained on a split other than ``train``, or on
  crops whose ``data_sha256`` differs from the current train split's, recomputed with the
  recorded crop selection (``data_selection``: subset size and seed) exactly as finetune does;
  the error names that ``glide_options.json``. OpenAI's released files (their download URL and
  sha256 recorded, no training record) and the tiny-random smoke models (``model_is_random``,
  weights "tiny-random") are accepted by that recorded identity: never trained on this data;
* any image is a pixel-exact copy of a test-patient crop (whatever its manifest says).

A folder whose generator's training is **unknown** (no provenance columns, e.g. images of an
outside model; a training record without split or data hash; GLIDE weights without a record)
gets the status ``unverified``: :func:`skinlib.evaluation.evaluate.run_evaluation` refuses it
unless the user opts in (``allow_unverified``, ``--allow-unverified NAME``), and then marks its
rows ``unverified`` in results.json and the table. The memorisation check still compares it
with the train and test crops.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..data.dataset import HELD_OUT, MANIFEST, crops_content_sha256, list_crop_rows
from ..io import inside, load_json, read_csv, sha256_file
from ..data.split import SUBFOLDERS

GLIDE_GENERATOR = "glide-iterative-inpaint"      # skinlib.augment.generate.GENERATOR
OPTIONS_FILE = "glide_options.json"              # skinlib.glide.checkpoints.OPTIONS_FILE: the weights' record

class LeakError(ValueError):
    """A generated folder must not be evaluated against the current test patients."""


@dataclass
class Provenance:
    status: str            # "verified" | "unverified" (unknown training: evaluated only with an opt-in)
    trained_on_split: str  # "train" | "none" (weights never trained on this data) | "" (unknown)
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
            if info["split"] in HELD_OUT:
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
    patients (see the module docstring); otherwise return its provenance (``status``
    "unverified" when what its generator was trained on is unknown: the evaluation then needs
    an explicit opt-in)."""
    folder, real_dir = Path(folder), Path(real_dir)
    rows = list_crop_rows(folder)
    hashes = crop_hashes(real_dir) if hashes is None else hashes
    fix = "Fix: re-run the generator's notebook on the current crops (it uses train-split crops only by default)."
    details = []
    sources_ok = None          # None: the images name no source crop
    if any(r.get("source_crop") for r in rows):
        if not all(r.get("source_sha256") for r in rows):
            raise LeakError(f"{folder / MANIFEST}: variants name their source crops by file name only (no "
                            f"source_sha256 column), so they cannot be matched to the current crops by content. {fix}")
        test_rows, unknown = [], []
        for r in rows:
            hit = hashes.get(r["source_sha256"])
            if hit is None:
                unknown.append(r)
            elif hit["split"] in HELD_OUT:
                test_rows.append((r, hit))
        if test_rows:
            r, hit = test_rows[0]
            raise LeakError(f"{folder}: {len(test_rows)} of {len(rows)} images were made from crops of TEST patients "
                            f"(e.g. {r['image']} from {hit['file']}, patient {hit['patient']}, split {hit['split']}): they would leak the "
                            f"test set into training. {fix}")
        if unknown:
            raise LeakError(f"{folder}: {len(unknown)} of {len(rows)} images were made from crops that are not among the "
                            f"current crops of {real_dir} (e.g. {unknown[0]['image']} from {unknown[0]['source_crop']}): "
                            f"the folder belongs to another crop run. {fix}")
        sources_ok = True
        details.append("every source crop is a current train-patient crop (by content)")
    identities = _model_identities(folder, rows)
    if identities is not None:              # GLIDE variants: the weights' own training record
        weights, known = _check_glide_weights(folder, identities, rows, real_dir, fix)
    else:
        weights, known = _check_trained_on(folder, rows, real_dir, fix)
    details.append(weights)
    test_pixels = {info["pixel_hash"] for info in hashes.values() if "pixel_hash" in info}
    copies = [r["image"] for r in rows if _pixel_hash(folder / r["image"]) in test_pixels]
    if copies:
        raise LeakError(f"{folder}: {len(copies)} image(s) are pixel-exact copies of TEST-patient crops "
                        f"(e.g. {copies[0]}): they would leak the test set into training. Remove them.")
    status = "verified" if known and sources_ok is not False else "unverified"
    return Provenance(status, "train" if known == "train" else ("none" if known else ""), "; ".join(details))


def _check_trained_on(folder: Path, rows: list[dict], real_dir: Path, fix: str) -> tuple[str, str]:
    """DCGAN / CVAE-style samples: the manifest's ``trained_on_split`` + ``train_data_sha256``.
    Returns (description, "train" when verified, "" when unknown)."""
    splits = {r.get("trained_on_split", "") for r in rows}
    if not splits - {""}:
        return "no training record in the manifest: what its generator was trained on is unknown", ""
    if splits == {"none"}:      # a claim without an identity that could back it
        return ("the manifest says trained_on_split 'none' but records no weights identity to check it: "
                "what its generator was trained on is unknown"), ""
    if splits != {"train"}:
        raise LeakError(f"{folder / MANIFEST}: its generator was trained on split(s) {sorted(splits)} — not the "
                        f"train patients only (or not recorded for every row), so it may have seen the test "
                        f"patients. {fix}")
    recorded = {r.get("train_data_sha256", "") for r in rows}
    if "" in recorded:
        return ("trained on a 'train' split, but no train_data_sha256 says which crops: unknown whether they "
                "are the current train patients"), ""
    current = train_data_sha256(real_dir)
    if recorded != {current}:
        raise LeakError(f"{folder / MANIFEST}: its generator was trained on other crops (train_data_sha256 "
                        f"{sorted(recorded)}) than the current train split of {real_dir} ({current}). {fix}")
    return "trained on the current train-split crops (by content)", "train"


def _model_identities(folder: Path, rows: list[dict]) -> list[dict] | None:
    """The engine identities of GLIDE variants (manifest ``model`` column, else the folder's
    ``generation.json``); None when the folder holds no GLIDE variants."""
    if not any(r.get("generator") == GLIDE_GENERATOR or r.get("weights_kind") for r in rows):
        return None
    out = []
    for text in sorted({r.get("model", "") for r in rows}):
        try:
            ident = json.loads(text) if text else None
        except ValueError:
            ident = None
        out.append(ident if isinstance(ident, dict) else None)
    if out == [None] and (folder / "generation.json").is_file():
        model = load_json(folder / "generation.json").get("model")
        out = [model if isinstance(model, dict) else None]
    return out


def _check_glide_weights(folder: Path, identities: list, rows: list[dict], real_dir: Path,
                         fix: str) -> tuple[str, str]:
    """GLIDE variants: accept OpenAI's released weights and the tiny-random models by their
    recorded identity, trained weights by their training record (split and data hash,
    recomputed on the current train split as :func:`skinlib.glide.finetune.data_sha256` does).
    Returns (description, "train" / "none" when verified, "" when unknown)."""
    from ..augment.generate import is_official_entry

    found = []
    for ident in identities:
        if ident is None:
            return f"{folder / MANIFEST}: no record of the weights (model column) that made the variants", ""
        if ident.get("weights") == "tiny-random" and all(str(r.get("model_is_random")) == "True" for r in rows):
            found.append(("none", "tiny RANDOM weights (never trained on any data)"))
            continue
        entries = {k: ident.get(k) for k in ("base", "upsampler")}
        if not all(isinstance(e, dict) for e in entries.values()):
            return f"{folder / MANIFEST}: the weights' record names no base and upsampler model", ""
        record = Path(str(ident.get("weights", "?"))) / OPTIONS_FILE
        for key, e in entries.items():
            if is_official_entry(e):
                found.append(("none", f"{key}: OpenAI's released {e['file']} (sha256 {e['sha256'][:12]}, "
                                      f"never trained on this data)"))
                continue
            split, digest = e.get("trained_on_split"), e.get("data_sha256")
            if not split or not digest:
                return (f"{record}: the {key} model's training record has no "
                        f"{'trained_on_split' if not split else 'data_sha256'}: what it was trained on is unknown"), ""
            if split != "train":
                raise LeakError(f"{record}: the {key} model that made {folder} was trained on split {split!r} — "
                                f"not the train patients only, so it has seen the test patients. Fix: train it "
                                f"with split='train' (python -m skinlib.glide.finetune --split train) and "
                                f"re-make the variants.")
            current = _current_glide_data_sha256(real_dir, e)
            if current is None:
                return (f"{record}: the {key} model was trained on a subset of {e.get('n_images')} crops without "
                        f"a recorded selection (data_selection): unknown whether they are current train crops"), ""
            if digest != current:
                raise LeakError(f"{record}: the {key} model that made {folder} was trained on other crops "
                                f"(data_sha256 {str(digest)[:16]}) than the current train split of {real_dir} "
                                f"({current[:16]}), e.g. another split or all crops. Fix: re-train it on the "
                                f"current crops (notebook 04) and re-make the variants.")
            found.append(("train", f"{key}: trained on the current train-split crops (data_sha256 {digest[:12]})"))
    return "; ".join(t for _, t in found), "train" if any(k == "train" for k, _ in found) else "none"


def _current_glide_data_sha256(real_dir: Path, entry: dict) -> str | None:
    """``data_sha256`` of the current train split with the entry's crop selection; None when a
    subset was used and its selection is not recorded."""
    from ..glide.finetune import data_sha256

    sel = entry.get("data_selection")
    if isinstance(sel, dict):
        return data_sha256(real_dir, "train", sel.get("max_images"), int(sel.get("seed", 0)))
    n_train = len(list_crop_rows(real_dir, split="train"))
    return data_sha256(real_dir, "train", None, 0) if entry.get("n_images") == n_train else None


__all__ = ["LeakError", "Provenance", "check_generated_folder", "crop_hashes", "train_data_sha256"]
