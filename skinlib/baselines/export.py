"""Turning generated image tensors into files: sample grids and exported folders in the crop format.

An export folder (read by the evaluation notebook like any crops folder) holds

    <out>/NNNNNN.png      RGB uint8, the model's image size
    <out>/manifest.csv    one row per image: image, generator, checkpoint, checkpoint_step,
                          checkpoint_sha256, seed, index, disease, image_size

Image ``index`` i is ``model.generate(noise[i], label[i])`` where ``noise`` is
``model.sample_noise(n, torch.Generator().manual_seed(seed))`` drawn once for all n images, and
the label cycles over the checkpoint's classes (``i % num_classes``) unless one disease is asked
for, so every file can be regenerated from its row.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from ..io import check_manifest_paths, read_csv, save_png, sha256_file, write_csv
from ..viz import save_grid  # noqa: F401  (re-exported: moved to skinlib.viz; one release)

MANIFEST_COLUMNS = ["image", "generator", "checkpoint", "checkpoint_step", "checkpoint_sha256",
                    "seed", "index", "disease", "image_size", "trained_on_split", "train_data_sha256"]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """images [N, 3, H, W] float in [-1, 1] -> uint8 array [N, H, W, 3] (values clamped)."""
    x = ((images.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def _labels(model, classes: List[str], n: int, disease: Optional[str]) -> torch.Tensor:
    if disease is not None:
        if model.num_classes <= 1:
            if classes != [disease]:
                raise ValueError(f"disease={disease!r}: this {model.name} is not "
                                 f"label-conditioned (trained on {classes}); leave disease=None.")
            return torch.zeros(n, dtype=torch.long)
        if disease not in classes:
            raise ValueError(f"disease={disease!r} is not one of the model's classes {classes}.")
        return torch.full((n,), classes.index(disease), dtype=torch.long)
    return torch.arange(n) % max(model.num_classes, 1)


def _remove_stale(out_dir: Path, keep: set) -> None:
    """Delete files of an earlier export into ``out_dir`` that this export does not rewrite.

    Refuses a folder whose manifest is not a generated-images manifest (e.g. real crops)."""
    manifest = out_dir / "manifest.csv"
    if not manifest.is_file():
        return
    rows = read_csv(manifest)
    if rows and not all(r.get("generator") for r in rows):
        raise ValueError(f"{out_dir} holds crops that are not generated images (its manifest "
                         f"has no 'generator' column): export into another folder, e.g. "
                         f"run_dir/samples.")
    check_manifest_paths(out_dir, rows)    # before deleting anything: only files of this folder
    for r in rows:
        if r["image"] not in keep:
            (out_dir / r["image"]).unlink(missing_ok=True)


@torch.no_grad()
def export_samples(checkpoint, out_dir, n: int, seed: int = 0, *, disease: Optional[str] = None,
                   batch_size: int = 64, device="cpu", progress: bool = True) -> List[Dict[str, str]]:
    """Generate ``n`` images from a training checkpoint into ``out_dir`` in the crop format.

    Returns the manifest rows (also written to ``out_dir/manifest.csv``). Files of an earlier
    export into the same folder that are not rewritten are removed, so the folder always
    matches its manifest.
    """
    from tqdm.auto import tqdm

    from .train import load_checkpoint, load_model

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r}: the number of images to export must be an integer >= 1.")
    checkpoint = Path(checkpoint)
    model = load_model(checkpoint, device=device)
    state = load_checkpoint(checkpoint)
    classes = list(state.get("classes", []))
    data = state.get("data", {})
    trained_on = data.get("split") or "all"     # checkpoints from before the patient split: all crops
    labels = _labels(model, classes, n, disease)
    noise = model.sample_noise(n, torch.Generator().manual_seed(seed))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [f"{i:06d}.png" for i in range(n)]
    _remove_stale(out_dir, set(names))
    # Withdraw the old manifest before any image changes: an interrupted export must not look
    # like a finished one, nor describe images of another checkpoint.
    (out_dir / "manifest.csv").unlink(missing_ok=True)
    digest = sha256_file(checkpoint)
    rows = []
    for start in tqdm(range(0, n, batch_size), desc=f"export {model.name}", disable=not progress):
        stop = min(start + batch_size, n)
        images = model.generate(noise[start:stop].to(device), labels[start:stop].to(device))
        for j, arr in enumerate(to_uint8(images)):
            i = start + j
            save_png(out_dir / names[i], arr)
            if model.num_classes > 1:
                name = classes[int(labels[i])]
            else:
                name = classes[0] if len(classes) == 1 else ""
            rows.append({"image": names[i], "generator": model.name,
                         "checkpoint": str(checkpoint), "checkpoint_step": model.checkpoint_step,
                         "checkpoint_sha256": digest, "seed": seed, "index": i,
                         "disease": name, "image_size": model.image_size,
                         "trained_on_split": trained_on, "train_data_sha256": data.get("images_sha", "")})
    write_csv(out_dir / "manifest.csv", rows, MANIFEST_COLUMNS)
    return [{k: str(v) for k, v in r.items()} for r in rows]
