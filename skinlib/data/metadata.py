"""Per-patient metadata of a dataset: the Fitzpatrick skin type (and its group) and the site.

Read from the dataset root: the demo dataset's ``demo_manifest.csv`` or an optional
``metadata.csv`` (columns ``patient``, ``fitzpatrick`` 1-6, ``site`` any text: hospital, camera
or period; see data_README.md). A crops folder finds its dataset through its ``summary.json``
(``data_dir``).
"""
from __future__ import annotations

from pathlib import Path

from ..io import load_json, read_csv

SKIN_GROUPS = {1: "I-II", 2: "I-II", 3: "III-IV", 4: "III-IV", 5: "V-VI", 6: "V-VI"}
METADATA_FILES = ("metadata.csv", "demo_manifest.csv")


def _metadata_values(data_dir, column: str):
    """``(file, patient, value)`` for every row of ``data_dir``'s metadata files with a patient and
    a non-empty ``column`` (value stripped)."""
    root = Path(data_dir)
    for name in METADATA_FILES:
        path = root / name
        if not path.is_file():
            continue
        for r in read_csv(path):
            value = (r.get(column) or "").strip()
            if r.get("patient") and value:
                yield path, r["patient"], value


def _dataset_of(crops_dir) -> str:
    """The dataset folder a crops folder was cut from (its ``summary.json``'s ``data_dir``; "" when unknown)."""
    summary = Path(crops_dir) / "summary.json"
    return load_json(summary).get("data_dir", "") if summary.is_file() else ""


def dataset_skin_types(data_dir) -> dict[str, int]:
    """patient -> Fitzpatrick type (1-6) from ``data_dir``'s metadata files; empty when unknown.
    A value that is not 1-6 is an error naming the file, the patient and the fix."""
    out: dict[str, int] = {}
    for path, patient, value in _metadata_values(data_dir, "fitzpatrick"):
        try:
            t = int(float(value))
        except ValueError as e:
            raise ValueError(f"{path}: fitzpatrick {value!r} of patient {patient} is not 1-6. "
                             f"Fix the value or leave it empty.") from e
        if not 1 <= t <= 6:
            raise ValueError(f"{path}: fitzpatrick {t} of patient {patient} is not 1-6.")
        out[patient] = t
    return out


def skin_types(crops_dir) -> dict[str, int]:
    """patient -> Fitzpatrick type for the dataset a crops folder was cut from (through its
    ``summary.json``); empty when the folder or its dataset says nothing."""
    data_dir = _dataset_of(crops_dir)
    return dataset_skin_types(data_dir) if data_dir else {}


def dataset_sites(data_dir) -> dict[str, str]:
    """patient -> site (the ``site`` column of ``data_dir``'s metadata files); empty when none.
    A patient listed with two different sites is an error naming the file and the fix."""
    out: dict[str, str] = {}
    for path, patient, site in _metadata_values(data_dir, "site"):
        if out.get(patient, site) != site:
            raise ValueError(f"{path}: patient {patient} is listed at two sites ({out[patient]!r} and {site!r}). "
                             f"Fix: give every patient one site.")
        out[patient] = site
    return out


def sites(crops_dir) -> dict[str, str]:
    """patient -> site for the dataset a crops folder was cut from (empty when unknown)."""
    data_dir = _dataset_of(crops_dir)
    return dataset_sites(data_dir) if data_dir else {}


def skin_group(patient: str, types: dict[str, int]) -> str:
    """"I-II" / "III-IV" / "V-VI", or "" when the patient's type is unknown."""
    return SKIN_GROUPS.get(types.get(patient, 0), "")


__all__ = ["SKIN_GROUPS", "dataset_skin_types", "skin_types", "skin_group", "dataset_sites", "sites"]
