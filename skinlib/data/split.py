"""The patient-level train/test split, decided once by notebook 01 and honoured by every stage.

Every patient is assigned to ``train`` or ``test`` (stratified by disease and, where the
dataset's metadata knows skin types, by Fitzpatrick group; seeded); the
assignment is written as a ``split`` column into every manifest of the crops folder
(``manifest.csv``, ``healthy/manifest.csv``, ``low_contrast/manifest.csv``) and as
``split.csv`` (one row per patient). Generators (notebooks 02-04) train on / augment the
``train`` crops only; the evaluation (notebook 05) tests on the ``test`` patients only and
refuses generated images whose training data or source crop comes from a test patient.

A patient is identified by the manifest's ``patient`` column (the patient folder of
``data_README.md``); a patient listed under several diseases is one person and is stratified
with the disease that has most of its crops.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .dataset import MANIFEST, SPLITS
from .metadata import skin_group, skin_types
from .photos import natural_key
from ..io import load_json, read_csv, save_json, write_csv

SPLIT_FILE = "split.csv"
MIN_TEST_PATIENTS = 2     # per disease: fewer gives no usable test interval
MIN_TRAIN_PATIENTS = 2    # per disease: the data-efficiency curve subsamples train patients
SUBFOLDERS = ("healthy", "low_contrast")   # buckets of a crops folder that share its patients


def n_test_patients(n: int, test_share: float) -> int:
    """Test patients of a disease with ``n`` patients: ``max(2, round(test_share * n))``."""
    return max(MIN_TEST_PATIENTS, int(math.floor(test_share * n + 0.5)))


def _allocate(total: int, sizes: Mapping[str, int]) -> dict[str, int]:
    """Split ``total`` over groups of ``sizes`` proportionally (largest remainder, ties by name)."""
    n = sum(sizes.values())
    exact = {g: total * k / n for g, k in sizes.items()}
    out = {g: min(sizes[g], int(math.floor(v))) for g, v in exact.items()}
    for g in sorted(sizes, key=lambda g: (-(exact[g] - out[g]), g)):
        if sum(out.values()) >= total:
            break
        if out[g] < sizes[g]:
            out[g] += 1
    return out


def split_patients(patients: Mapping[str, str], test_share: float = 0.3, seed: int = 0,
                   strata: Mapping[str, str] | None = None) -> dict[str, str]:
    """Assign each patient to ``"train"`` or ``"test"``.

    ``patients`` maps patient id -> disease. Per disease ``max(2, round(test_share * n))``
    patients are ``test``, the rest ``train``, drawn by a seeded shuffle; with ``strata``
    (patient -> e.g. Fitzpatrick group, "" when unknown) the test patients of a disease are
    shared out over its strata in proportion to their sizes, so every skin group gets its share
    of test patients. Raises
    ValueError naming the disease and the number of patients needed when a disease has fewer
    than ``MIN_TEST_PATIENTS + MIN_TRAIN_PATIENTS`` patients.
    """
    if not 0 < test_share < 1:
        raise ValueError(f"test_share must be in (0, 1), got {test_share}")
    by_disease: dict[str, list[str]] = {}
    for patient, disease in patients.items():
        by_disease.setdefault(disease, []).append(patient)
    if not by_disease:
        raise ValueError("no patient to split: the crops folder holds no crop")
    out: dict[str, str] = {}
    for d, (disease, ids) in enumerate(sorted(by_disease.items())):
        n = len(ids)
        n_test = n_test_patients(n, test_share)
        if n - n_test < MIN_TRAIN_PATIENTS:
            needed = next(m for m in range(n + 1, 10 * n + 100) if m - n_test_patients(m, test_share) >= MIN_TRAIN_PATIENTS)
            raise ValueError(
                f"disease {disease!r} has {n} patient(s) with crops; a patient-level split needs at least "
                f"{MIN_TEST_PATIENTS} test and {MIN_TRAIN_PATIENTS} train patients per disease, i.e. {needed} "
                f"patients at test_share={test_share}. Fix: add patients of this disease, lower test_share, "
                f"or remove the disease folder.")
        order = sorted(ids)
        perm = np.random.default_rng([seed, d]).permutation(n)
        if not strata:
            for rank, i in enumerate(perm):
                out[order[i]] = "test" if rank < n_test else "train"
            continue
        cells: dict[str, list[str]] = {}
        for i in perm:                                  # seeded order within each stratum
            cells.setdefault(strata.get(order[i], ""), []).append(order[i])
        quota = _allocate(n_test, {g: len(m) for g, m in cells.items()})
        for g, members in cells.items():
            for rank, pid in enumerate(members):
                out[pid] = "test" if rank < quota[g] else "train"
    return out


def _manifest_paths(crops_dir: Path) -> list[Path]:
    paths = [crops_dir / MANIFEST]
    paths += [crops_dir / sub / MANIFEST for sub in SUBFOLDERS if (crops_dir / sub / MANIFEST).is_file()]
    return paths


def write_split(crops_dir, test_share: float = 0.3, seed: int = 0) -> dict[str, str]:
    """Split the patients of a finished crops folder and write the ``split`` column into its
    manifests plus ``split.csv``; record the settings in ``summary.json``. Idempotent: the
    same crops and settings give the same files. Returns patient -> split."""
    crops_dir = Path(crops_dir)
    main = crops_dir / MANIFEST
    if not main.is_file():
        raise FileNotFoundError(f"{main} not found: crop the photos first (notebook 01), then split.")
    tables = {p: read_csv(p) for p in _manifest_paths(crops_dir)}
    counts: dict[str, dict[str, int]] = {}
    for path, rows in tables.items():
        for r in rows:
            counts.setdefault(r["patient"], {}).setdefault(r["disease"], 0)
            counts[r["patient"]][r["disease"]] += path == main   # stratify by the kept ill-skin crops
    patients = {p: max(sorted(c), key=lambda d: c[d]) for p, c in counts.items()}
    types = skin_types(crops_dir)
    groups = {p: skin_group(p, types) for p in patients} if types else None
    assignment = split_patients(patients, test_share, seed, strata=groups)
    for path, rows in tables.items():
        for r in rows:
            r["split"] = assignment[r["patient"]]
        fields = [k for k in (rows[0] if rows else {"split": ""}) if k != "split"] + ["split"]
        if rows or path != main:
            write_csv(path, rows, fields if rows else None)
    per_patient = []
    for p in sorted(assignment, key=natural_key):
        row = {"patient": p, "disease": patients[p], "split": assignment[p]}
        if groups:
            row["skin_group"] = groups[p] or "unknown"
        for path, rows in tables.items():
            name = "crops" if path == main else path.parent.name
            row[name] = sum(r["patient"] == p for r in rows)
        per_patient.append(row)
    write_csv(crops_dir / SPLIT_FILE, per_patient)
    summary_path = crops_dir / "summary.json"
    if summary_path.is_file():
        summary = load_json(summary_path)
        summary["split"] = {"test_share": test_share, "seed": seed,
                            "stratified_by": ["disease"] + (["Fitzpatrick group"] if groups else []),
                            "train_patients": sum(v == "train" for v in assignment.values()),
                            "test_patients": sum(v == "test" for v in assignment.values())}
        save_json(summary_path, summary)
    return assignment


def read_split(crops_dir) -> dict[str, str]:
    """patient -> "train" / "test" from a crops folder's ``split.csv`` (clear error without one)."""
    path = Path(crops_dir) / SPLIT_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the crops in {crops_dir} have no patient split. Fix: re-run notebook 01 "
            f"(`python -m skinlib run --only 01`), which assigns every patient to train or test.")
    out = {r["patient"]: r["split"] for r in read_csv(path)}
    bad = sorted({v for v in out.values() if v not in SPLITS})
    if bad:
        raise ValueError(f"{path}: unknown split value(s) {bad}; expected {SPLITS}")
    return out


def patients_of(rows: Sequence[Mapping[str, str]], split: str | None = None) -> list[str]:
    """Sorted patient ids of manifest ``rows`` (only those of ``split`` when given)."""
    return sorted({r["patient"] for r in rows if split is None or r.get("split") == split}, key=natural_key)


__all__ = ["split_patients", "write_split", "read_split", "patients_of", "SPLIT_FILE"]
