"""Tiny crops folders for the evaluation tests: ill crops (a red lesion covering a quarter of the
crop) and a healthy bucket (plain skin) of the same patients, split by skinlib.data.split, plus
generated folders of each provenance kind."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from skinlib.io import save_json, save_png, write_csv
from skinlib.data.split import write_split

SKIN = np.array([190, 140, 115])
LESION = np.array([200, 60, 70])


def skin(rng, size: int) -> np.ndarray:
    tone = SKIN * rng.uniform(0.55, 1.1)
    img = tone + rng.normal(0, 10, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def ill(rng, size: int, lesion=LESION) -> tuple[np.ndarray, np.ndarray]:
    img = skin(rng, size).astype(float)
    mask = np.zeros((size, size), np.uint8)
    y0, x0 = rng.integers(0, size // 2, 2)
    mask[y0:y0 + size // 2, x0:x0 + size // 2] = 255
    img[mask > 0] = 0.3 * img[mask > 0] + 0.7 * np.asarray(lesion)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def make_split_crops(folder, *, n_patients: int = 8, per_patient: int = 4, size: int = 32, seed: int = 0,
                     test_share: float = 0.25, disease: str = "maculopapular_rash",
                     diseases: tuple[str, ...] = (), ood_patients: int = 0) -> Path:
    """A crops folder as notebook 01 writes it: NNNNNN.png + _mask.png + manifest.csv, healthy/
    with the same columns, summary.json, and the patient split (split column + split.csv).
    ``diseases``: patients cycle through them (lesion colour by disease) instead of ``disease``.
    ``ood_patients``: the last N patients are of site "B" (metadata.csv with site and Fitzpatrick
    type, darker skin), held out as split "ood"; the others are of site "A"."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    rows, healthy = [], []
    for p in range(n_patients):
        if diseases:
            disease = diseases[p % len(diseases)]
        lesion = [LESION, (90, 40, 160), (230, 200, 60)][(diseases.index(disease) if diseases else 0) % 3]
        for j in range(per_patient):
            k = len(rows)
            img, mask = ill(rng, size, lesion)
            save_png(folder / f"{k:06d}.png", img)
            save_png(folder / f"{k:06d}_mask.png", mask)
            rows.append({"image": f"{k:06d}.png", "mask": f"{k:06d}_mask.png", "disease": disease,
                         "patient": f"persona{p + 1}", "source": f"{disease}/persona{p + 1}/e1/e1_{j}.png"})
            h = len(healthy)
            save_png(folder / "healthy" / f"{h:06d}.png", skin(rng, size))
            save_png(folder / "healthy" / f"{h:06d}_mask.png", np.zeros((size, size), np.uint8))
            healthy.append({"image": f"{h:06d}.png", "mask": f"{h:06d}_mask.png", "disease": disease,
                            "patient": f"persona{p + 1}", "source": f"{disease}/persona{p + 1}/e1/e1_{j}.png"})
    write_csv(folder / "manifest.csv", rows)
    write_csv(folder / "healthy" / "manifest.csv", healthy)
    data_dir = folder / "nowhere"
    if ood_patients:
        data_dir = folder.parent / f"{folder.name}_data"
        write_csv(data_dir / "metadata.csv", [
            {"patient": f"persona{p + 1}", "site": "B" if p >= n_patients - ood_patients else "A",
             "fitzpatrick": 5 + p % 2 if p >= n_patients - ood_patients else 1 + p % 6} for p in range(n_patients)])
    save_json(folder / "summary.json", {"data_dir": str(data_dir), "synthetic": False})
    write_split(folder, test_share=test_share, seed=0, ood_sites="B" if ood_patients else "")
    return folder


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def trained_identity(crops, split: str = "train") -> dict:
    """The engine identity (manifest ``model`` column) of GLIDE weights trained by
    skinlib.glide.finetune on the ``split`` crops of ``crops`` (all of them, seed 0)."""
    import json

    from skinlib.data.dataset import list_crop_rows
    from skinlib.glide.finetune import data_sha256

    entry = {"init": "scratch", "steps": 1, "trained_on_split": split, "n_images": len(list_crop_rows(crops, split)),
             "data_sha256": data_sha256(crops, split, None, 0), "data_selection": {"max_images": None, "seed": 0}}
    return json.loads(json.dumps({"weights": str(Path(crops).parent / "weights"), "weights_kind": "small-from-scratch",
                                  "weights_label": "small", "base": entry, "upsampler": entry}))


OFFICIAL = {"weights": "official", "weights_kind": "official", "weights_label": "OpenAI's GLIDE (official weights)",
            **{k: {"name": n, "file": f, "url": f"https://openaipublic.blob.core.windows.net/diffusion/dec-2021/{f}",
                   "path": f"/cache/{f}", "sha256": c * 64}
               for k, n, f, c in (("base", "base-inpaint", "base_inpaint.pt", "a"),
                                  ("upsampler", "upsample-inpaint", "upsample_inpaint.pt", "b"))}}


def make_variants(folder, crops, rows, *, seed: int = 1, model: dict | None | str = "trained") -> Path:
    """GLIDE-like variants of the given crop rows (a small square repainted), with the
    provenance columns skinlib.augment.generate writes (source_crop, source_sha256, source_patient,
    model = the engine identity: by default weights trained on the current train split; None: none)."""
    import json

    from PIL import Image

    folder, crops = Path(folder), Path(crops)
    model = trained_identity(crops) if model == "trained" else model
    rng = np.random.default_rng(seed)
    out = []
    for i, r in enumerate(rows):
        img = np.asarray(Image.open(crops / r["image"]).convert("RGB")).copy()
        img[:4, :4] = rng.integers(0, 255, 3)
        save_png(folder / f"{i:06d}.png", img)
        out.append({"image": f"{i:06d}.png", "generator": "glide-iterative-inpaint", "source_crop": r["image"],
                    "source_sha256": sha(crops / r["image"]), "source_patient": r["patient"],
                    "patient": r["patient"], "disease": r["disease"], "trained_on_split": "train",
                    "model": json.dumps(model, sort_keys=True) if model is not None else ""})
    write_csv(folder / "manifest.csv", out)
    return folder


def make_samples(folder, *, n: int = 24, size: int = 32, seed: int = 2, trained_on_split: str = "train",
                 train_data_sha256: str = "") -> Path:
    """DCGAN/CVAE-like samples (ill-looking images) with their training provenance."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        save_png(folder / f"{i:06d}.png", ill(rng, size)[0])
        rows.append({"image": f"{i:06d}.png", "generator": "dcgan", "checkpoint": "x.pt", "seed": seed, "index": i,
                     "disease": "maculopapular_rash", "trained_on_split": trained_on_split,
                     "train_data_sha256": train_data_sha256})
    write_csv(folder / "manifest.csv", rows)
    return folder
