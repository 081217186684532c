"""The patient-level train/test split, decided once by notebook 01 and honoured by every stage.

Every patient is assigned to ``train`` or ``test`` (stratified by disease and, where the
dataset's metadata knows skin types, by Fitzpatrick group; seeded); the
assignment is written as a ``split`` column into every manifest of the crops folder
(``manifest.csv``, ``healthy/manifest.csv``, ``low_contrast/manifest.csv``) and as
``split.csv`` (one row per patient). Generators (notebooks 02-04) train on / augment the
``train`` crops only; the evaluation (notebook 05) tests on the ``test`` patients only and
refuses generated images whose training data or source crop comes from a test patient.

**Held-out sites** (``ood_sites``): where the dataset's metadata has a ``site`` column, the
patients of the named sites get ``split = ood``: nobody trains on them, and the evaluation tests
on them as an out-of-distribution set beside the in-distribution ``test`` patients (the
remaining sites' patients are split into train / test exactly as if the held-out ones were
absent). ``"auto"`` holds out site B of the SYNTHETIC demo dataset and nothing on other data.

A patient is identified by the manifest's ``patient`` column (the patient folder of
``data_README.md``); a patient listed under several diseases is one person and is stratified
with the disease that has most of its crops.

A disease with too few patients for a split (fewer than ``MIN_TEST_PATIENTS + MIN_TRAIN_PATIENTS``
at the test share) is **train-only**: its patients get ``split = train`` (generators may use them;
nothing is ever tested on them) and ``split.csv``'s ``note`` column says so with the number of
patients a split would need (also in ``summary.json`` and in notebook 01's output). Only the
evaluation refuses what needs their test patients: the disease task (see
:func:`require_test_patients`), or any task when no disease could be split at all.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .dataset import MANIFEST, SPLITS, TRAIN_ONLY, train_only_text
from .metadata import sites as patient_sites, skin_group, skin_types
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
    of test patients. A disease with too few patients for a split (see
    :func:`train_only_diseases`) is train-only: all its patients are ``train``.
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
        if n - n_test < MIN_TRAIN_PATIENTS:     # too few to split: train-only (train_only_diseases)
            out.update({p: "train" for p in ids})
            continue
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


def patients_needed(n: int, test_share: float) -> int:
    """Patients a disease with ``n`` needs for a split (``n`` when it has enough)."""
    return next(m for m in range(n, 10 * n + 100) if m - n_test_patients(m, test_share) >= MIN_TRAIN_PATIENTS)


def train_only_diseases(patients: Mapping[str, str], test_share: float = 0.3) -> dict[str, dict]:
    """Diseases too small for a split -> ``{"patients": n, "needed": m}`` (``patients``: id ->
    disease): :func:`split_patients` puts all their patients in ``train``."""
    counts: dict[str, int] = {}
    for disease in patients.values():
        counts[disease] = counts.get(disease, 0) + 1
    return {d: {"patients": n, "needed": patients_needed(n, test_share)}
            for d, n in sorted(counts.items()) if patients_needed(n, test_share) > n}


def train_only_note(disease: str, info: Mapping, test_share: float) -> str:
    return (f"{TRAIN_ONLY}: {disease} has {info['patients']} patient(s); a split needs {info['needed']} "
            f"({MIN_TEST_PATIENTS} test + {MIN_TRAIN_PATIENTS} train at test_share={test_share})")


def _manifest_paths(crops_dir: Path) -> list[Path]:
    paths = [crops_dir / MANIFEST]
    paths += [crops_dir / sub / MANIFEST for sub in SUBFOLDERS if (crops_dir / sub / MANIFEST).is_file()]
    return paths


def _patient_diseases(tables: Mapping[Path, list], main: Path) -> dict[str, str]:
    """patient -> the disease with most of its ill-skin crops (``main`` manifest), over ``tables``
    (manifest path -> rows)."""
    counts: dict[str, dict[str, int]] = {}
    for path, rows in tables.items():
        for r in rows:
            counts.setdefault(r["patient"], {}).setdefault(r["disease"], 0)
            counts[r["patient"]][r["disease"]] += path == main   # stratify by the kept ill-skin crops
    return {p: max(sorted(c), key=lambda d: c[d]) for p, c in counts.items()}


def held_out_sites(crops_dir, ood_sites="auto") -> tuple[str, ...]:
    """The sites whose patients are held out (``split = ood``) for a crops folder: ``ood_sites``
    a comma-separated string or a sequence of site names; ``"auto"``: the SYNTHETIC demo's site B
    when the crops come from the demo dataset and it has such patients, else none; ``""`` / None:
    none. A named site that no patient has is an error listing the sites found."""
    from .demo import OOD_SITE, is_synthetic_dataset

    site_of = patient_sites(crops_dir)
    found = sorted(set(site_of.values()))
    if ood_sites == "auto":
        summary = Path(crops_dir) / "summary.json"
        data_dir = load_json(summary).get("data_dir", "") if summary.is_file() else ""
        return (OOD_SITE,) if data_dir and is_synthetic_dataset(data_dir) and OOD_SITE in found else ()
    names = ood_sites.split(",") if isinstance(ood_sites, str) else list(ood_sites or ())
    names = tuple(n.strip() for n in names if n.strip())
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"ood_sites {list(names)}: no patient of site(s) {missing} in the metadata of {crops_dir}'s "
                         f"dataset (sites found: {found or 'none: add a site column to metadata.csv'}). "
                         f"Fix: name sites of the site column, or ood_sites='' for no held-out site.")
    if names and len(names) == len(found):
        raise ValueError(f"ood_sites {list(names)} holds out every site of the dataset: nothing is left to train on.")
    return names


def write_split(crops_dir, test_share: float = 0.3, seed: int = 0, *, ood_sites="auto", log=print) -> dict[str, str]:
    """Split the patients of a finished crops folder and write the ``split`` column into its
    manifests plus ``split.csv`` (with a ``note`` for train-only patients, which ``log`` also
    reports); record the settings in ``summary.json``. The patients of ``ood_sites``
    (:func:`held_out_sites`) get ``ood``. Idempotent: the same crops and settings give the same
    files. Returns patient -> split."""
    crops_dir = Path(crops_dir)
    main = crops_dir / MANIFEST
    if not main.is_file():
        raise FileNotFoundError(f"{main} not found: crop the photos first (notebook 01), then split.")
    tables = {p: read_csv(p) for p in _manifest_paths(crops_dir)}
    patients = _patient_diseases(tables, main)
    types = skin_types(crops_dir)
    held = held_out_sites(crops_dir, ood_sites)
    site_of = patient_sites(crops_dir)
    ood = {p for p in patients if site_of.get(p) in held}
    in_site = {p: d for p, d in patients.items() if p not in ood}
    groups = {p: skin_group(p, types) for p in in_site} if types else None
    assignment = split_patients(in_site, test_share, seed, strata=groups)
    assignment.update({p: "ood" for p in ood})
    if groups is not None:
        groups.update({p: skin_group(p, types) for p in ood})
    patients = {**in_site, **{p: patients[p] for p in ood}}
    small = train_only_diseases(in_site, test_share)
    for path, rows in tables.items():
        for r in rows:
            r["split"] = assignment[r["patient"]]
        fields = [k for k in (rows[0] if rows else {"split": ""}) if k != "split"] + ["split"]
        if rows or path != main:
            write_csv(path, rows, fields if rows else None)
    per_patient = []
    for p in sorted(assignment, key=natural_key):
        note = (train_only_note(patients[p], small[patients[p]], test_share)
                if patients[p] in small and p not in ood else "")
        row = {"patient": p, "disease": patients[p], "split": assignment[p], "note": note}
        if groups:
            row["skin_group"] = groups[p] or "unknown"
        if site_of:
            row["site"] = site_of.get(p, "")
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
                            "test_patients": sum(v == "test" for v in assignment.values()),
                            "ood_sites": list(held), "ood_patients": len(ood),
                            "train_only": small}
        save_json(summary_path, summary)
    for disease, info in small.items():
        log(f"{train_only_note(disease, info, test_share)}: its patients are marked train (split.csv, note) — "
            f"generators may use them, the evaluation never tests on them, and the disease task refuses "
            f"to run. Add patients of this disease for a test split.")
    if small and not any(v == "test" for v in assignment.values()):
        log(f"NO TEST PATIENTS: no disease has enough patients for a split, so notebook 05's evaluation "
            f"will refuse to run on {crops_dir}. Add patients, or use the crops for generation only.")
    return assignment


# ----------------------------------------------------------------------------------------
# patient-level cross-validation: K folds, each a crops folder of its own
# ----------------------------------------------------------------------------------------
FOLD_DIR = "fold{}"          # <run>/fold<f>/crops: the crops folder view of fold f


def assign_folds(patients: Mapping[str, str], k: int, seed: int = 0, strata: Mapping[str, str] | None = None,
                 test_share: float = 0.3) -> dict[str, int | None]:
    """Assign each patient to one of ``k`` >= 2 test folds (``patients``: id -> disease).

    Per disease (and, with ``strata`` such as patient -> Fitzpatrick group, per stratum of it)
    the patients, in a seeded order, are dealt to folds 0, 1, ..., k-1 in turn, the deal going on
    across strata and diseases: every fold gets its share of each disease and skin group (counts
    differ by at most one) and the folds differ in size by at most one. Returns patient -> fold,
    ``None`` for the patients of a disease too small to test (:func:`train_only_diseases` at
    ``test_share``, or fewer patients than folds): they train in every fold."""
    if int(k) != k or k < 2:
        raise ValueError(f"folds must be an integer >= 2 (1 is the single train/test split), got {k}")
    small = set(train_only_diseases(patients, test_share))
    by_disease: dict[str, list[str]] = {}
    for patient, disease in patients.items():
        by_disease.setdefault(disease, []).append(patient)
    out: dict[str, int | None] = {}
    turn = 0
    for d, (disease, ids) in enumerate(sorted(by_disease.items())):
        if disease in small or len(ids) < k:
            out.update({p: None for p in ids})
            continue
        order = sorted(ids)
        cells: dict[str, list[str]] = {}
        for i in np.random.default_rng([seed, d, 1]).permutation(len(order)):
            cells.setdefault((strata or {}).get(order[i], ""), []).append(order[i])
        for g in sorted(cells):
            for pid in cells[g]:
                out[pid] = turn % k
                turn += 1
    return out


def write_fold_views(crops_dir, k: int, seed: int = 0, *, root=None, test_share: float = 0.3,
                     log=print) -> dict[str, int | None]:
    """Cross-validation over ``k`` >= 2 patient folds of a split crops folder (:func:`write_split`
    first): write the ``fold`` column of its ``split.csv`` (empty for train-only patients) and,
    for each fold f, the crops folder view ``root/fold<f>/crops`` (``root``: the run folder, by
    default the crops folder's parent), an ordinary crops folder whose manifests, ``split.csv``
    and ``summary.json`` say ``split = test`` for fold f's patients and ``train`` for all others.
    Its PNGs are hard links to ``crops_dir``'s (a copy only where the file system refuses hard
    links, which ``log`` reports); other small files are copied. An existing view is replaced.
    Returns patient -> fold (:func:`assign_folds`)."""
    import os
    import shutil

    crops_dir = Path(crops_dir)
    root = Path(root) if root is not None else crops_dir.parent
    main = crops_dir / MANIFEST
    if not (crops_dir / SPLIT_FILE).is_file() or not main.is_file():
        raise FileNotFoundError(f"{crops_dir} has no {MANIFEST} / {SPLIT_FILE}: crop and split the photos first "
                                f"(notebook 01), then make the folds.")
    tables = {p: read_csv(p) for p in _manifest_paths(crops_dir)}
    patients = _patient_diseases(tables, main)
    split_rows = read_csv(crops_dir / SPLIT_FILE)
    held = {r["patient"] for r in split_rows if r["split"] == "ood"}   # held-out site
    types = skin_types(crops_dir)
    groups = {p: skin_group(p, types) for p in patients} if types else None
    folds = assign_folds({p: d for p, d in patients.items() if p not in held}, k, seed, strata=groups,
                         test_share=test_share)
    if not any(f is not None for f in folds.values()):
        raise ValueError(f"{crops_dir}: no disease has enough patients for {k} folds ({len(patients)} patients); "
                         f"add patients or use fewer folds.")
    for r in split_rows:
        r["fold"] = "" if folds.get(r["patient"]) is None else str(folds[r["patient"]])
    write_csv(crops_dir / SPLIT_FILE, split_rows)
    summary_path = crops_dir / "summary.json"
    summary = load_json(summary_path) if summary_path.is_file() else None
    ood_sites = (summary or {}).get("split", {}).get("ood_sites", [])
    record = {"folds": k, "seed": seed, "test_share": test_share,
              "stratified_by": ["disease"] + (["Fitzpatrick group"] if groups else []),
              "test_patients_per_fold": [sum(v == f for v in folds.values()) for f in range(k)],
              "train_only_patients": sorted((p for p, f in folds.items() if f is None), key=natural_key)}
    if summary is not None:
        save_json(summary_path, {**summary, "folds": record})
    rewritten = {main, *tables, crops_dir / SPLIT_FILE, summary_path}
    copied: list[str] = []
    why = ""
    for f in range(k):
        view = root / FOLD_DIR.format(f) / "crops"
        if view.resolve() == crops_dir.resolve():
            raise ValueError(f"fold view {view} would replace the crops folder itself: pass another root")
        if view.exists():
            shutil.rmtree(view)
        side = {p: "ood" if p in held else "test" if folds.get(p) == f else "train" for p in patients}
        for src in sorted(crops_dir.rglob("*")):
            dst = view / src.relative_to(crops_dir)
            if src.is_dir() or src in rewritten:
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.suffix.lower() in (".csv", ".json", ".txt", ".md"):
                shutil.copy2(src, dst)               # small text: a copy, never shared with the main folder
                continue
            try:
                os.link(src, dst)
            except OSError as e:                     # another file system, or links not allowed
                shutil.copy2(src, dst)
                copied.append(str(dst))
                why = f"{type(e).__name__}: {e}"
        for path, rows in tables.items():
            out_rows = [{**r, "split": side[r["patient"]]} for r in rows]
            out_path = view / path.relative_to(crops_dir)
            out_path.parent.mkdir(parents=True, exist_ok=True)
            write_csv(out_path, out_rows, list(rows[0]) if rows else list(read_csv_header(path)))
        write_csv(view / SPLIT_FILE, [{**r, "split": side[r["patient"]]} for r in split_rows])
        save_json(view / "summary.json", {**(summary or {}), "split": {
            **record, "fold": f, "made_from": str(crops_dir),
            "ood_sites": ood_sites,
            "train_patients": sum(v == "train" for v in side.values()),
            "test_patients": sum(v == "test" for v in side.values())}})
    if copied:
        log(f"HARD LINKS IMPOSSIBLE ({why}): {len(copied)} crop files were COPIED into the fold views instead "
            f"(e.g. {copied[0]}); the views then take as much disk as {crops_dir} each.")
    per_fold = ", ".join(f"fold {f}: {n}" for f, n in enumerate(record["test_patients_per_fold"]))
    log(f"{k} patient folds (test patients {per_fold}; train in every fold: "
        f"{len(record['train_only_patients'])}); views in {root / FOLD_DIR.format('<f>')}/crops")
    return folds


def read_csv_header(path) -> list[str]:
    """The column names of a CSV file (also of one without rows)."""
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        return next(csv.reader(fh), [])


def fold_views(root, k: int) -> list[Path]:
    """``[root/fold0/crops, ...]`` of a ``k``-fold run, checked: each must be a crops folder view made by
    :func:`write_fold_views` for ``k`` folds (clear error naming the fix otherwise)."""
    views = [Path(root) / FOLD_DIR.format(f) / "crops" for f in range(k)]
    for f, v in enumerate(views):
        summary = v / "summary.json"
        made = load_json(summary).get("split", {}) if summary.is_file() else {}
        if not (v / MANIFEST).is_file() or made.get("folds") != k or made.get("fold") != f:
            raise FileNotFoundError(
                f"{v} is not fold {f} of {k} folds (found: {made.get('fold')!r} of {made.get('folds')!r}). "
                f"Fix: run notebook 01 with folds={k} (`python -m skinlib run --folds {k}`, stage 01 included).")
    return views


def read_split(crops_dir) -> dict[str, str]:
    """patient -> "train" / "test" / "ood" from a crops folder's ``split.csv`` (clear error without one)."""
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


def require_test_patients(crops_dir, rows: Sequence[Mapping[str, str]], classes: Sequence[str]) -> None:
    """Raise ValueError when a disease of the disease task (``classes``) has no test patient among
    the crops manifest ``rows`` (a train-only disease, see the module docstring), naming it and
    the patients it would need."""
    tested = {r.get("disease", "") for r in rows if r.get("split") == "test"}
    missing = [c for c in classes if c not in tested]
    if missing:
        notes = train_only_text(crops_dir)
        raise ValueError(
            f"the disease task needs test patients of every disease, but {missing} have none in "
            f"{Path(crops_dir) / SPLIT_FILE}" + (f" ({notes})" if notes else "") + ". Fix: use task="
            f"'rash-vs-healthy' (train-only patients then only train), or add patients of "
            f"{'this disease' if len(missing) == 1 else 'these diseases'} and re-run notebook 01.")


def patients_of(rows: Sequence[Mapping[str, str]], split: str | None = None) -> list[str]:
    """Sorted patient ids of manifest ``rows`` (only those of ``split`` when given)."""
    return sorted({r["patient"] for r in rows if split is None or r.get("split") == split}, key=natural_key)


__all__ = ["split_patients", "write_split", "held_out_sites", "assign_folds", "write_fold_views", "fold_views", "read_split", "patients_of", "SPLIT_FILE", "train_only_diseases",
           "require_test_patients", "train_only_text"]
