"""The evaluation of notebook 05, also a command line for images of any generator:

    python -m skinlib.evaluate --real CROPS --generated NAME=DIR [NAME=DIR ...] --out DIR
                               [--task rash-vs-healthy|disease] [--repetitions 4] [--features auto]

``CROPS`` is notebook 01's crops folder (with its patient split and healthy bucket); each ``DIR``
holds generated images in the crop format (``NNNNNN.png`` + ``manifest.csv``). Writes into
``--out``:

    results.json          machine-readable: per arm each metric as {"mean", "low", "high"} and
                          the paired gain vs "real only" the same way, per fraction of train
                          patients; image metrics; memorisation per generator; settings
    comparison.csv / .md  the table (one row per arm)
    downstream_runs.csv   one row per trained classifier (arm, fraction, repetition, metrics)
    predictions.npz       the test predictions of every (arm, fraction, repetition), with the test
                          examples' patients, labels and skin groups (cross-validation pools them)
    data_efficiency.png   the headline figure: AUROC vs share of train patients, every arm
    gains.png             paired gains vs real only with intervals, per fraction
    memorisation.png      each generator's closest pairs to train crops
    settings.json         features (file, sha256, resize, versions), protocol settings

Steps: (1) every generated folder is checked for leaks (:mod:`skinlib.evaluation.provenance`): a refused
folder's arms are reported as ``refused`` with the reason and never trained; (2) downstream
protocol (:mod:`skinlib.evaluation.downstream`); (3) image metrics against the test patients
(:func:`skinlib.evaluation.metrics.image_metrics`); (4) memorisation (:mod:`skinlib.evaluation.memorisation`). A
failure in one arm marks that arm ``failed`` with its reason; when no arm ran at all,
:class:`EvaluationFailed` is raised (the main job then reports stage 05 as failed).
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from . import downstream as D
from . import power as P
from .intervals import METRICS
from ..data.crops import LOW_CONTRAST_DIR
from ..data.dataset import crops_are_synthetic, list_crop_rows
from ..io import atomic_write_text, check_manifest_paths, read_csv, save_json, write_csv
from .provenance import LeakError, check_generated_folder, crop_hashes

METRIC_NAMES = {"auroc": "AUROC", "balanced_accuracy": "balanced accuracy", "sens_at_spec": "sensitivity"}


class EvaluationFailed(RuntimeError):
    """No arm of the evaluation could run."""


def _fmt(v: Mapping | None, digits: int = 3, signed: bool = False) -> str:
    if not v or v.get("mean") is None or not np.isfinite(v["mean"]):
        return ""
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    if v.get("low") is None or not np.isfinite(v["low"]):
        return f.format(v["mean"])
    return f"{f.format(v['mean'])} [{f.format(v['low'])}, {f.format(v['high'])}]"


def _arm_entry(arm: str, res: D.DownstreamResult) -> dict:
    e = res.arms[arm]
    fr = e["fractions"]
    full = str(max(res.config["fractions"]))
    head = fr.get(full, {})
    return {"status": e["status"], "reason": e["reason"], "generator": e.get("generator", ""),
            "metrics": head.get("metrics", {}), "gain": head.get("gain", {}),
            "per_class": head.get("per_class", {}), "per_skin_type": head.get("per_skin_type", {}),
            "by_fraction": {f: D.share_view(s) for f, s in fr.items()}}


def _has_test_rows(folder: Path) -> bool:
    """True when ``folder`` has a manifest with at least one test-patient row."""
    manifest = folder / "manifest.csv"
    return manifest.is_file() and any(r.get("split") == "test" for r in read_csv(manifest))


def loading_record(logs: Mapping[str, list], folder_sets: Mapping[str, "M.FolderImages"], first: int = 5) -> dict:
    """What happened while loading, per set: images converted / resized (count and the first few
    with what was done) and images skipped as unreadable (count and the first few with why)."""
    out = {}
    for name, entries in logs.items():
        if entries:
            out[name] = {"converted_or_resized": len(entries), "first": [f"{f}: {why}" for f, why in entries[:first]]}
    for name, g in folder_sets.items():
        if g.skipped or g.notes:
            out[f"image metrics: {name}"] = {"skipped": len(g.skipped),
                                             "first_skipped": [f"{f}: {why}" for f, why in g.skipped[:first]],
                                             "notes": list(g.notes[:first])}
    return out


def oracle_examples(oracle_crops, real: D.RealData, cfg: D.DownstreamConfig, progress: bool = False,
                    log: list | None = None) -> D.Examples:
    """The crops of the oracle folder (ill-skin crops and healthy bucket, at most
    ``cfg.max_pairs_per_patient`` of each per patient; it has no patient split: all of it is
    training data) as examples."""
    oracle_crops = Path(oracle_crops)
    rows = list_crop_rows(oracle_crops)
    files = [oracle_crops / r["image"] for r in rows]
    labels = [real.classes.index(r["disease"]) if real.task == "disease" else 1 for r in rows]
    patients = [r["patient"] for r in rows]
    if real.task == "rash-vs-healthy":
        healthy = read_csv(oracle_crops / D.HEALTHY_DIR / "manifest.csv")
        check_manifest_paths(oracle_crops / D.HEALTHY_DIR, healthy)
        files += [oracle_crops / D.HEALTHY_DIR / r["image"] for r in healthy]
        labels += [0] * len(healthy)
        patients += [r["patient"] for r in healthy]
    # the same per-patient cap as the real crops: every new patient weighs about the same
    kept = D.cap_per_patient([(i, {"patient": p}, y) for i, (p, y) in enumerate(zip(patients, labels))],
                             cfg.max_pairs_per_patient, cfg.seed)
    files, labels = [files[i] for i, _, _ in kept], [labels[i] for i, _, _ in kept]
    x = D.load_images(files, cfg.image_size, desc="oracle crops", progress=progress, log=log)
    return D.Examples(x, torch.as_tensor(labels, dtype=torch.long), [""] * len(files), [str(f) for f in files],
                      [""] * len(files))


def _attach_detector_features(extractor, cache: dict, loaded: Mapping[str, "M.FolderImages"], real: D.RealData,
                              syn: Mapping[str, D.Examples], oracle: D.Examples | None, cfg: D.DownstreamConfig,
                              progress: bool, logs: dict | None = None) -> dict:
    """Frozen features of every example of the detector (:mod:`skinlib.evaluation.linear_probe`),
    each file embedded once by :func:`skinlib.evaluation.features.detector_extractor` (rows that
    the image metrics already embedded with the same extractor are reused); the real train
    examples also get one standard-augmented view (test rows of ``feats_aug`` are NaN: never
    used). Returns what to record about the detector's features."""
    from . import metrics as M
    from .features import detector_extractor
    from .image_metrics import folder_features
    from .linear_probe import attach_features

    det = detector_extractor(extractor)
    by_path: dict = {}
    if det is extractor:
        for images in loaded.values():
            if images.images.shape[-1] == cfg.feature_image_size:
                for row, f in zip(images.rows, folder_features(extractor, images, cache=cache, progress=False)):
                    by_path[str(images.folder / row["image"])] = f.float()
    logs = {} if logs is None else logs
    kw = dict(cache=by_path, image_size=cfg.feature_image_size, progress=progress)
    ex = real.examples
    ex.feats = attach_features(ex.file, det, desc="detector features: real",
                               log=logs.setdefault("detector features: real", []), **kw)
    train_idx = np.flatnonzero(real.split == "train")
    aug = torch.full_like(ex.feats, float("nan"))
    aug[torch.as_tensor(train_idx, dtype=torch.long)] = attach_features(
        [ex.file[i] for i in train_idx], det, augment_seed=cfg.seed, desc="detector features: augmented", **kw)
    ex.feats_aug = aug
    for name, e in {**syn, **({"oracle": oracle} if oracle is not None else {})}.items():
        e.feats = attach_features(e.file, det, desc=f"detector features: {name}",
                                  log=logs.setdefault(f"detector features: {name}", []), **kw)
    return M.feature_settings(det, cfg.feature_image_size)


def run_evaluation(real_crops, generated: Mapping[str, str | Path], out_dir, *,
                   config: D.DownstreamConfig | None = None, oracle_crops=None, features: str = "auto",
                   inception_weights: str | None = None, n_samples: int = 1000, min_images: int = 50, n_pairs: int = 100,
                   max_test_copies: float = 0.1, allow_unverified: Sequence[str] = (),
                   metric_seeds: Sequence[int] = (0,),
                   n_boot_images: int = 200, image_size: int = 256, smoke: bool = False,
                   profile: dict | None = None, progress: bool = True) -> dict:
    """Run the whole evaluation (see the module docstring) and write its files into ``out_dir``;
    return the ``results.json`` dict. Sets with fewer than ``min_images`` images are left out of
    KID/FID (every row shares one N; their memorisation is still checked). A generator with more than
    ``max_test_copies`` of its images near-copies of test-patient crops (memorisation check; real
    crops of new patients give ~2 %) is refused as a leak. ``generated``: name -> folder (a missing folder is listed
    as not available). ``oracle_crops``: the demo renderer's new-patient crops (positive control;
    None on real data, the table then says why the arm is absent). ``allow_unverified``: names of
    generated folders to evaluate although what their generator was trained on is unknown
    (provenance ``unverified``; refused otherwise); their rows say ``unverified``. ``profile``: the
    notebook's resolved profile (:meth:`skinlib.profiles.Resolved.record`), kept in ``settings``."""
    from . import memorisation as MEM
    from . import metrics as M

    cfg = config or D.DownstreamConfig()
    real_crops, out_dir = Path(real_crops), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    generators: dict[str, dict] = {}
    allowed = set([allow_unverified] if isinstance(allow_unverified, str) else allow_unverified)
    unknown_names = sorted(allowed - set(generated))
    if unknown_names:
        raise ValueError(f"allow_unverified names {unknown_names}, which are not generated folders "
                         f"({sorted(generated)})")
    hashes = crop_hashes(real_crops)
    usable: dict[str, Path] = {}
    for name, folder in generated.items():
        folder = Path(folder) if folder else None
        if folder is None or not folder.is_dir() or not any(folder.glob("*.png")):
            generators[name] = {"folder": str(folder or ""), "status": "not available",
                                "reason": f"no images in {folder or '(no folder given)'}"}
            continue
        try:
            prov = check_generated_folder(folder, real_crops, hashes=hashes)
        except LeakError as e:
            generators[name] = {"folder": str(folder), "status": "refused", "reason": str(e)}
            continue
        if prov.status == "unverified" and name not in allowed:
            generators[name] = {"folder": str(folder), "status": "refused", "provenance": prov.status, "reason": (
                f"what its generator was trained on is unknown ({prov.detail}), so it may have seen the test "
                f"patients. Fix: re-make it with this repository's generators, or evaluate it anyway, marked "
                f"unverified: allow_unverified=[{name!r}] (command line: --allow-unverified {name}).")}
            continue
        generators[name] = {"folder": str(folder), "status": "ok", "provenance": prov.status,
                            "trained_on_split": prov.trained_on_split, "reason": prov.detail}
        usable[name] = folder

    # ---- features and memorisation first: a generator copying test crops is refused before training
    extractor = M.make_feature_extractor(features, inception_weights=inception_weights)
    train_imgs = M.load_folder_images(real_crops, image_size=image_size, split="train", name="real train patients",
                                      verbose=False)
    test_imgs = M.load_folder_images(real_crops, image_size=image_size, split="test", name="real test patients",
                                     verbose=False)
    img_sets = {name: M.load_folder_images(f, image_size=image_size, max_images=n_samples, seed=cfg.seed,
                                           name=name, verbose=False) for name, f in usable.items()
                if generators[name]["status"] == "ok"}
    copies_idx = np.random.default_rng(cfg.seed).permutation(len(train_imgs))[:min(n_samples, len(train_imgs))]
    img_sets["copies"] = M.FolderImages("copies", train_imgs.folder, train_imgs.images[torch.as_tensor(copies_idx)],
                                        [train_imgs.rows[i] for i in copies_idx])
    if oracle_crops is not None:
        img_sets["oracle"] = M.load_folder_images(oracle_crops, image_size=image_size, max_images=n_samples,
                                                  seed=cfg.seed, name="oracle", verbose=False)
    cache: dict = {}
    train_feats = M.folder_features(extractor, train_imgs, cache=cache, progress=progress)
    kind = getattr(extractor, "kind", type(extractor).__name__)
    cache[("copies", len(copies_idx), kind)] = train_feats[torch.as_tensor(copies_idx)]   # same images: same features
    test_extra = {sub: M.load_folder_images(real_crops / sub, image_size=image_size, split="test",
                                            name=f"real test patients ({sub})", verbose=False)
                  for sub in (D.HEALTHY_DIR, LOW_CONTRAST_DIR) if _has_test_rows(real_crops / sub)}
    mem = MEM.memorisation_check(train_imgs, test_imgs, img_sets, extractor=extractor, feature_cache=cache,
                                 progress=progress, test_extra=test_extra)
    for name, row in mem.rows.items():          # near-copies of TEST crops: a leak the manifest did not show
        leak = row.get("test_copy_fraction")
        if name in generators and generators[name]["status"] == "ok" and leak is not None and leak > max_test_copies:
            generators[name].update(status="refused", reason=(
                f"{leak:.0%} of its images are near-copies of TEST-patient crops (memorisation check, > "
                f"{max_test_copies:.0%}): a leak of the test set. Fix: re-make it from train-patient crops only."))
            usable.pop(name)

    # ---- downstream
    logs: dict[str, list] = {}
    real = D.real_examples(real_crops, cfg, progress=progress, log=logs.setdefault("detector: real crops", []))
    syn: dict[str, D.Examples] = {}
    notes: dict[str, str] = {}
    refused = {n: g["reason"] for n, g in generators.items() if g["status"] == "refused"}
    failed: dict[str, str] = {}
    for name, folder in usable.items():
        try:
            syn[name], notes[name] = D.synthetic_examples(folder, real, cfg, name=name, progress=progress,
                                                          log=logs.setdefault(f"detector: {name}", []))
        except ValueError as e:
            failed[name] = f"not usable for the {real.task} task: {e}"
            generators[name].update(status="failed", reason=failed[name])
    oracle = None
    oracle_note = ""
    if oracle_crops is not None:
        oracle = oracle_examples(oracle_crops, real, cfg, progress=progress, log=logs.setdefault("detector: oracle", []))
        n_ill = int((oracle.y == len(real.classes) - 1).sum()) if real.task == "rash-vs-healthy" else len(oracle)
        oracle_note = (f"{len(oracle)} crops of new patients rendered by the demo renderer ({oracle_crops}); "
                       f"the ill-only arm uses its {n_ill} ill-skin crops, as a generator adds them")
    else:
        oracle_note = "absent: an oracle (new patients from the true distribution) exists only for the demo data"
    detector_features = None
    if cfg.detector == "features":
        detector_features = _attach_detector_features(extractor, cache, {"real train": train_imgs, "real test": test_imgs, **img_sets},
                                  real, syn, oracle, cfg, progress, logs)
    res = D.run_downstream(real_crops, syn, cfg, real, oracle=oracle, refused=refused, failed=failed,
                           progress=progress)

    img_sets = {k: v for k, v in img_sets.items() if k not in generators or generators[k]["status"] == "ok"}
    too_few = {name: len(g) for name, g in img_sets.items() if len(g) < min_images}
    for name, count in too_few.items():
        if name in generators:
            generators[name]["image_metrics"] = (f"not computed: {count} images < min_images={min_images} (KID/FID "
                                                 f"of so few images says nothing; all rows share one N)")
    image_rows = M.image_metrics(train_imgs, test_imgs, {k: v for k, v in img_sets.items() if k not in too_few},
                                 extractor=extractor, n=n_samples,
                                 seeds=metric_seeds, n_boot=n_boot_images, feature_cache=cache, progress=progress)
    diversity = {name: M.ms_ssim_diversity(g.images, n_pairs=n_pairs, seed=cfg.seed)
                 for name, g in {M.REAL_TRAIN_ROW: train_imgs, **img_sets}.items() if len(g) >= 2}
    inpainting = {name: M.inpainting_change(f, real_crops=real_crops, max_images=n_samples, seed=cfg.seed, verbose=False)
                  for name, f in usable.items() if generators[name]["status"] == "ok" and M.is_inpainting_folder(f)}

    # ---- results
    arms = {a: _arm_entry(a, res) for a in res.arms}
    for a, e in arms.items():
        gen = e["generator"]
        if gen in generators and generators[gen].get("provenance"):
            e["provenance"] = generators[gen]["provenance"]       # "unverified": opted in, training unknown
        if gen in notes:
            e["images"] = notes[gen]
    if D.ORACLE not in arms:
        arms[D.ORACLE] = {"status": "absent", "reason": oracle_note, "metrics": {}, "gain": {}, "by_fraction": {}}
    else:
        arms[D.ORACLE]["images"] = oracle_note
    ran = [a for a, e in arms.items() if e["status"] == "ok" and e["by_fraction"]]
    feats = M.feature_settings(extractor, image_size)
    settings = {"real_crops": str(real_crops), "generated": {n: str(f) for n, f in generated.items()},
                "oracle_crops": str(oracle_crops) if oracle_crops else None, "downstream": asdict(cfg),
                "features": feats, "detector_features": detector_features, "n_samples": n_samples,
                "metric_seeds": list(metric_seeds), "image_size": image_size, "smoke": smoke, "torch": torch.__version__,
                "allow_unverified": sorted(allowed), "profile": profile}
    results = {
        "task": res.task, "classes": res.classes,
        "n_train_patients": res.n_train_patients, "n_test_patients": res.n_test_patients,
        "n_test_examples": res.n_test, "fractions": list(cfg.fractions), "repetitions": cfg.repetitions,
        "interval": "95 %: two-level bootstrap over test patients and repetitions, mean ± t(P-1) x sd "
                    "(skinlib.evaluation.intervals); gains paired by repetition and patient draw",
        "arms": arms, "generators": generators,
        "image_metrics": image_rows, "image_metric_labels": M.metric_labels(extractor),
        "diversity_ms_ssim": diversity, "inpainting_change": inpainting, "memorisation": mem.rows, "memorisation_thresholds": mem.thresholds,
        "settings": settings, "synthetic_data": crops_are_synthetic(real_crops),
        "detector": res.notes.get("detector"), "probe": res.notes.get("probe"),
        "label_check": res.notes.get("label_check", {}),
        "memorisation_calibration": {
            "nominal_percent": mem.thresholds["percentile"], "reference": "real test-patient crops vs train crops",
            "reference_flagged": mem.thresholds["reference_flagged"],
            "fresh_patients_flagged": mem.rows.get("oracle", {}).get("near_copy_fraction"),
            "fresh_patients": "the oracle's new demo patients" if "oracle" in mem.rows else None},
        "image_loading": loading_record(logs, {"real train patients": train_imgs, "real test patients": test_imgs,
                                               **test_extra, **img_sets}),
    }
    results["ood"] = ood_record(res, real_crops)
    results["primary"] = primary_endpoint(results, cfg)
    results["augmentation_cost"] = augmentation_cost(results, usable)
    results["verdict"] = P.verdict(results["primary"], {"positive": D.ORACLE_ILL, "negative": D.COPIES})
    save_json(out_dir / "results.json", _jsonable(results))
    save_json(out_dir / "settings.json", _jsonable(settings))
    write_csv(out_dir / "downstream_runs.csv", res.per_run, _columns(res.per_run))
    D.save_predictions(out_dir / D.PREDICTIONS_FILE, res)    # pooled over folds by skinlib.evaluation.folds
    table = comparison_rows(results)
    write_csv(out_dir / "comparison.csv", table, _columns(table))
    atomic_write_text(out_dir / "comparison.md", comparison_markdown(results))
    _save_figures(results, out_dir, mem, train_imgs, img_sets)
    if not ran:
        reasons = "; ".join(f"{a}: {e['status']} ({e['reason']})" for a, e in arms.items())
        raise EvaluationFailed(f"no arm of the evaluation ran ({reasons}); results written to {out_dir}")
    return results


def ood_record(res: D.DownstreamResult, real_crops) -> dict:
    """``results.json["ood"]``: the held-out site's patients (notebook 01's ``ood_sites``), every
    arm per share as in-distribution (``by_fraction``: metrics, paired gains, per class and per
    Fitzpatrick group), or a note saying why there is no out-of-distribution column."""
    from ..io import load_json

    summary = Path(real_crops) / "summary.json"
    split = load_json(summary).get("split", {}) if summary.is_file() else {}
    sites = split.get("ood_sites", [])
    if res.ood is None:
        return {"sites": sites, "note": "no held-out site (notebook 01's ood_sites): no out-of-distribution test"}
    if "note" in res.ood:
        return {"sites": sites, "note": res.ood["note"]}
    return {"sites": sites, "n_test_patients": res.ood["n_test_patients"], "n_test_examples": res.ood["n_test"],
            "arms": {a: {"generator": e["generator"], "by_fraction": {f: D.share_view(v) for f, v in e["fractions"].items()}}
                     for a, e in res.ood["arms"].items()}}


def augmentation_cost(results: dict, folders: Mapping[str, Path]) -> dict:
    """Per generated folder that records a measured generation speed (notebook 04's arm views,
    ``view.json``): variants, seconds (variants x the measured seconds per variant on its device)
    and, at the primary share, the paired AUROC gain in and out of distribution with the seconds per
    AUROC point gained where the gain's interval is above 0 ("no gain shown" otherwise)."""
    from ..io import load_json

    share = results["primary"]["fraction"] if results.get("primary") else str(min(results["fractions"]))
    out = {}
    for name, folder in folders.items():
        view = Path(folder) / "view.json"
        record = load_json(view) if view.is_file() else {}
        timing = record.get("timing")
        if not timing:
            continue
        n = record["variants"]
        seconds = n * float(timing["seconds_per_variant"])
        entry = {"variants": n, "seconds_per_variant": timing["seconds_per_variant"], "seconds": seconds,
                 "device": timing.get("device", ""), "cpu": timing.get("cpu", {}).get("model", ""), "share": share}
        for where, arms in (("in_distribution", results["arms"]), ("out_of_distribution", results["ood"].get("arms", {}))):
            g = arms.get(f"real + {name}", {}).get("by_fraction", {}).get(share, {}).get("gain", {}).get("auroc")
            if not g:
                continue
            entry[where] = {"gain": g, "seconds_per_auroc_point": seconds / (100 * g["mean"])
                            if g.get("low") is not None and g["low"] > 0 else None}
        out[name] = entry
    return out


def primary_endpoint(results: dict, cfg: D.DownstreamConfig) -> dict:
    """The primary analysis (:func:`skinlib.evaluation.power.primary_analysis`) at the declared
    share (``cfg.primary_fraction``, default the smallest): the hypotheses are the generator arms
    (with and without standard augmentation), not the controls."""
    fraction = str(cfg.primary_fraction if cfg.primary_fraction is not None else min(cfg.fractions))
    controls = {D.REAL_ONLY, D.AUGMENT, D.COPIES, D.ORACLE, D.ORACLE_ILL, D.OVERSAMPLE}
    hypotheses = [a for a, e in results["arms"].items() if a not in controls and not a.startswith("synthetic only")
                  and e.get("status") == "ok"]
    return P.primary_analysis(results["arms"], fraction, hypotheses)


def _columns(rows: Sequence[Mapping]) -> list[str]:
    """Union of the rows' keys in first-seen order (CSV header)."""
    return list(dict.fromkeys(k for r in rows for k in r))


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ----------------------------------------------------------------------------------------
# tables and figures
# ----------------------------------------------------------------------------------------
def _image_row(results: dict, name: str) -> dict:
    for r in results["image_metrics"]:
        if r.get("name") == name:
            return r
    return {}


def comparison_rows(results: dict) -> list[dict]:
    """One row per arm: status, metrics at 100 % and the smallest fraction with intervals, the
    generator's image metrics and near-copy share."""
    from .image_metrics import REAL_TRAIN_ROW

    small = str(min(results["fractions"]))
    full = str(max(results["fractions"]))
    rows = []
    for arm, e in results["arms"].items():
        gen = e.get("generator", "")
        img = _arm_image_row(results, arm, gen)
        mem = results["memorisation"].get(gen, {}) if gen else {}
        row = {"arm": arm, "status": e["status"], "provenance": e.get("provenance", ""), "reason": e.get("reason", "")}
        for f in (full, small):
            s = e.get("by_fraction", {}).get(f, {})
            for m in METRICS:
                v = s.get("metrics", {}).get(m, {})
                g = s.get("gain", {}).get(m, {})
                row[f"{m} @{f}"] = v.get("mean")
                row[f"{m} @{f} low"] = v.get("low")
                row[f"{m} @{f} high"] = v.get("high")
                row[f"{m} gain @{f}"] = g.get("mean")
                row[f"{m} gain @{f} low"] = g.get("low")
                row[f"{m} gain @{f} high"] = g.get("high")
        labels = results["image_metric_labels"]
        for k in (labels["kd"], labels["fd"], "N"):
            if k in img:
                row[k] = img[k]["mean"] if isinstance(img[k], dict) else img[k]
        if mem:
            row["near_copy_fraction"] = mem.get("near_copy_fraction")
        div = results["diversity_ms_ssim"].get(gen or ("" if arm != D.REAL_ONLY else REAL_TRAIN_ROW))
        if div and not arm.startswith("synthetic only"):
            row["MS-SSIM within set (high = collapse)"] = div["mean"]
        for k, v in results["inpainting_change"].get(gen, {}).items() if not arm.startswith("synthetic only") else ():
            row[f"inpainting {k}"] = v
        rows.append(row)
    return rows


def _arm_image_row(results: dict, arm: str, gen: str) -> dict:
    from .image_metrics import REAL_TRAIN_ROW

    if arm.startswith("synthetic only"):
        return {}
    return _image_row(results, gen) if gen else (_image_row(results, REAL_TRAIN_ROW) if arm == D.REAL_ONLY else {})


def _kid(img: Mapping, label: str) -> str:
    k = img.get(label)
    if not isinstance(k, dict):
        return ""
    return f"{1000 * k['mean']:.1f} [{1000 * k['low']:.1f}, {1000 * k['high']:.1f}]"


def comparison_markdown(results: dict) -> str:
    """The table of ``comparison.md``: arms with AUROC and paired gains (intervals) at 100 % and
    at the smallest share of train patients, KID x 1000 with N, near-copy share."""
    small = str(min(results["fractions"]))
    full = str(max(results["fractions"]))
    feats = results["settings"]["features"]
    lines = [
        f"Task: **{results['task']}** ({', '.join(results['classes'])}); test: {results['n_test_patients']} held-out "
        f"patients ({', '.join(f'{c}: {n}' for c, n in results['n_test_examples'].items())} crops); train: "
        f"{results['n_train_patients']} patients; {results['repetitions']} repetitions per arm and share; "
        f"intervals: {results['interval']}. Image features: {feats.get('name')}."
        + (" **SYNTHETIC demo data.**" if results.get("synthetic_data") else "")
        + (" **SMOKE run: numbers check the pipeline only.**" if results["settings"].get("smoke") else ""),
        "",
        f"| arm | status | AUROC (100 %) | gain | AUROC ({float(small):.0%}) | gain | sens. @ spec {results['settings']['downstream']['specificity']} (100 %) "
        f"| {results['image_metric_labels']['kd']} x1000 vs test patients (N) | near-copies of train |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, e in results["arms"].items():
        if e["status"] != "ok":
            reason = e.get("reason", "").replace("|", "/").replace("\n", " ")
            lines.append(f"| {arm} | **{e['status']}**: {reason[:300]} | | | | | | | |")
            continue
        f100 = e["by_fraction"].get(full, {})
        fs = e["by_fraction"].get(small, {})
        gen = e.get("generator", "")
        img = _arm_image_row(results, arm, gen)
        kid = _kid(img, results["image_metric_labels"]["kd"]) + (f" (N={img['N']})" if img.get("N") else "")
        mem = results["memorisation"].get(gen, {}) if not arm.startswith("synthetic only") else {}
        nc = f"{mem['near_copy_fraction']:.0%}" if mem else ""
        if mem and mem.get("near_copy_fraction", 0) > 0.5:
            nc = f"**{nc} (memorised)**"
        status = "ok, **unverified** (opted in: training unknown)" if e.get("provenance") == "unverified" else "ok"
        lines.append(
            f"| {arm} | {status} | {_fmt(f100.get('metrics', {}).get('auroc'))} | {_fmt(f100.get('gain', {}).get('auroc'), signed=True)} "
            f"| {_fmt(fs.get('metrics', {}).get('auroc'))} | {_fmt(fs.get('gain', {}).get('auroc'), signed=True)} "
            f"| {_fmt(f100.get('metrics', {}).get('sens_at_spec'))} | {kid} | {nc} |")
    prim = results.get("primary")
    if prim:
        lines += ["", f"**Primary endpoint** (declared in the settings before the run): {prim['endpoint']}. "
                      f"Minimum detectable gain at 80 % power: **{prim['design_mdg']:.3f}** ({prim['method']}).", "",
                  "| arm | gain | 95 % interval | se (patients / one repetition's sd) | p | p (Holm) | MDG |",
                  "|---|---|---|---|---|---|---|"]
        for arm, r in prim["arms"].items():
            holm = (f"{r['p_holm']:.3f}" + (" *" if r.get("significant_holm") else "")) if "p_holm" in r else "control"
            lines.append(f"| {arm} | {r['gain']:+.3f} | [{r['low']:+.3f}, {r['high']:+.3f}] | {r['se']:.3f} "
                         f"({r['se_patients']:.3f} / {r['sd_repetitions']:.3f}) | {r['p']:.3f} | {holm} | {r['mdg']:.3f} |")
        lines += ["", f"**Verdict** (generated from these numbers): {results.get('verdict', '')}"]
    checks = results.get("label_check") or {}
    if checks:
        lines += ["", "**Labels of the added images** (detector trained on all real train patients, real only): "
                  + "; ".join(f"{n}: " + ", ".join(f"{k.replace('called_', 'called ')} {v:.0%}" for k, v in c.items() if k != "n")
                              + f" of {c['n']}" for n, c in checks.items())]
    ood = results.get("ood") or {}
    if ood.get("arms"):
        lines += ["", f"### Out of distribution: held-out site {', '.join(ood['sites'])} ({ood['n_test_patients']} patients, "
                      + ", ".join(f"{c}: {n}" for c, n in ood["n_test_examples"].items()) + " crops)",
                  "(trained on the other site's train patients as above; AUROC and paired gain over real only, "
                  "95 % intervals over the held-out site's patients)", "", ood_markdown(results)]
    elif ood.get("note"):
        lines += ["", f"Out of distribution: {ood['note']}."]
    cost = results.get("augmentation_cost") or {}
    if cost:
        lines += ["", "**Cost of the augmentation** (measured seconds per variant on the run's device x variants; "
                      f"gain at {float(next(iter(cost.values()))['share']):.0%} of the train patients): "
                  + "; ".join(cost_text(n, c) for n, c in cost.items())]
    groups = per_group_markdown(results)
    if groups:
        lines += ["", "### Per Fitzpatrick group and per class, at every train share",
                  "(AUROC and paired gain over real only within each group, 95 % intervals; "
                  "recall per class at threshold 0.5)", "", groups]
    refused = {n: g for n, g in results["generators"].items() if g["status"] != "ok"}
    if refused:
        lines += ["", "Generators not evaluated:"]
        lines += [f"- {n}: {g['status']} — {g['reason']}" for n, g in refused.items()]
    return "\n".join(lines) + "\n"


def cost_text(name: str, c: Mapping) -> str:
    """One generator's cost line: variants, seconds, and seconds per AUROC point gained."""
    parts = []
    for where, label in (("in_distribution", "in distribution"), ("out_of_distribution", "out of distribution")):
        e = c.get(where)
        if e:
            per = e["seconds_per_auroc_point"]
            parts.append(f"{label} {_fmt(e['gain'], signed=True)}: "
                         + (f"{per:.0f} s per AUROC point" if per is not None else "no gain shown, no cost per point"))
    return (f"{name}: {c['variants']} variants, {c['seconds']:.0f} s ({c['seconds_per_variant']:.2f} s/variant on "
            f"{c['device'] or '?'}{', ' + c['cpu'] if c.get('cpu') and 'cpu' in str(c['device']) else ''}); "
            + "; ".join(parts))


def ood_markdown(results: dict) -> str:
    """The out-of-distribution table: per arm, AUROC and paired gain at every share, and per
    Fitzpatrick group at the primary share."""
    ood = results.get("ood") or {}
    if not ood.get("arms"):
        return ""
    shares = sorted(results["fractions"])
    cols = ["arm"] + [h for f in shares for h in (f"AUROC ({f:.0%})", f"gain ({f:.0%})")]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for arm, e in ood["arms"].items():
        cells = [arm]
        for f in shares:
            v = e["by_fraction"].get(str(f), {})
            cells += [_fmt(v.get("metrics", {}).get("auroc")), _fmt(v.get("gain", {}).get("auroc"), signed=True)]
        lines.append("| " + " | ".join(cells) + " |")
    share = (results.get("primary") or {}).get("fraction") or str(min(shares))
    groups = per_group_markdown({"arms": {a: {"status": "ok", **e} for a, e in ood["arms"].items()}}, [share])
    return "\n".join(lines) + ("\n\nPer Fitzpatrick group, out of distribution:\n\n" + groups if groups else "")


def per_group_markdown(results: dict, fractions=None) -> str:
    """Per Fitzpatrick group (AUROC and its paired gain over real only) and per class (recall:
    sensitivity / specificity at 0.5) of every arm that ran, one table per train share
    (``fractions``: all by default), with 95 % intervals. A group with too few test patients for
    an interval shows its note instead."""
    shares = sorted({f for e in results["arms"].values() for f in e.get("by_fraction", {})}, key=float)
    if fractions is not None:
        shares = [f for f in shares if any(abs(float(f) - float(x)) < 1e-9 for x in fractions)]
    parts = []
    for share in shares:
        rows = []
        for arm, e in results["arms"].items():
            view = e.get("by_fraction", {}).get(share)
            if e["status"] != "ok" or not view:
                continue
            row = {"arm": arm}
            for g, v in view.get("per_skin_type", {}).items():
                head = f"{g} ({v['n_patients']} test pat.)"
                if "auroc" not in v:
                    row[f"AUROC {head}"] = "no interval (too few patients)" if "too few" in v.get("note", "") else v.get("note", "")
                    continue
                row[f"AUROC {head}"] = _fmt(v["auroc"])
                if "gain_auroc" in v:
                    row[f"gain {g}"] = _fmt(v["gain_auroc"], signed=True)
            row.update({f"recall {c}": _fmt(v) for c, v in view.get("per_class", {}).items()})
            rows.append(row)
        if not rows:
            continue
        cols = list(dict.fromkeys(k for r in rows for k in r))
        parts += [f"**{float(share):.0%} of the train patients**", "",
                  "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols),
                  *["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows], ""]
    return "\n".join(parts)


ARM_COLOURS = {D.REAL_ONLY: "black", "standard aug": "tab:gray", "copies": "tab:brown", "oracle": "tab:cyan"}


def arm_colour(arm: str) -> str:
    """One colour per generator or control, the same for its "real + X" and "synthetic only: X"
    arms (generators: :func:`skinlib.evaluation.metrics.generator_colour`)."""
    from .report import generator_colour

    if arm in ARM_COLOURS:
        return ARM_COLOURS[arm]
    name = arm.split("real + ", 1)[-1].split("synthetic only: ", 1)[-1]
    return ARM_COLOURS.get(name) or generator_colour(name)


def plot_data_efficiency(results: dict, metric: str = "auroc", *, title: str = ""):
    """The headline figure: ``metric`` vs share of train patients, mean and 95 % interval per arm
    (synthetic-only arms, trained at 100 % only, as single points)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.0, 4.4))
    fr = sorted(results["fractions"])
    shown = [a for a, e in results["arms"].items() if e["status"] == "ok" and e["by_fraction"]]
    for k, arm in enumerate(shown):
        e = results["arms"][arm]
        xs = [f for f in fr if str(f) in e["by_fraction"]]
        m = [e["by_fraction"][str(f)]["metrics"][metric] for f in xs]
        mean = np.array([v["mean"] for v in m], float)
        low = np.array([v["low"] for v in m], float)
        high = np.array([v["high"] for v in m], float)
        style = dict(color=arm_colour(arm), lw=2.2 if arm == D.REAL_ONLY else 1.4,
                     ls=":" if arm.startswith("synthetic only") else "--" if arm.startswith("real + standard aug + ")
                     else "-", marker="s" if arm.startswith("real + standard aug + ") else "o", ms=4)
        off = (k - (len(shown) - 1) / 2) * 0.006       # side by side, so the intervals stay readable
        ax.errorbar(np.array(xs) + off, mean, yerr=np.nan_to_num(np.vstack([mean - low, high - mean])),
                    capsize=3, label=arm, **style)
    n = results["n_train_patients"]
    ax.set_xticks(fr, [f"{f:.0%}\n({max(2, int(np.floor(f * n + 0.5)))} pat.)" for f in fr])
    ax.set_xlabel("share of train patients used (real images)")
    ax.set_ylabel(f"test {METRIC_NAMES.get(metric, metric)} ({results['n_test_patients']} held-out patients)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(alpha=0.3)
    ax.set_title(title or f"Data efficiency: {results['task']} classifier, mean and 95 % interval", fontsize=10)
    fig.tight_layout()
    return fig


def plot_gains(results: dict, metric: str = "auroc", *, title: str = ""):
    """Paired gain vs real only (mean and 95 % interval) of every arm at every share."""
    import matplotlib.pyplot as plt

    fr = sorted(results["fractions"])
    arms = [a for a, e in results["arms"].items() if e["status"] == "ok" and a != D.REAL_ONLY and e["by_fraction"]]
    fig, ax = plt.subplots(figsize=(7.2, 0.5 + 0.32 * max(1, len(arms)) * len(fr)))
    y, labels = 0, []
    for f in fr:
        for a in arms:
            g = results["arms"][a]["by_fraction"].get(str(f), {}).get("gain", {}).get(metric)
            if not g:
                continue
            ax.errorbar([g["mean"]], [y], xerr=[[g["mean"] - g["low"]], [g["high"] - g["mean"]]], fmt="o",
                        color=arm_colour(a), capsize=3)
            labels.append(f"{a} @ {f:.0%}")
            y += 1
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"gain in test {METRIC_NAMES.get(metric, metric)} vs real only (paired)")
    ax.set_title(title or "Paired gains with 95 % intervals", fontsize=10)
    fig.tight_layout()
    return fig


def group_gain_arms(results: dict) -> list[str]:
    """The arms of the per-group figure: standard augmentation, oversampling, the ill-only oracle
    and every "real + generator" arm (uniform and balanced), those that ran."""
    skip = (D.REAL_ONLY, D.COPIES, D.ORACLE)
    shown = [a for a, e in results["arms"].items() if e["status"] == "ok" and a not in skip
             and not a.startswith(("synthetic only", "real + standard aug + "))]
    first = [a for a in (D.AUGMENT, D.OVERSAMPLE, D.ORACLE_ILL) if a in shown]
    return first + sorted(a for a in shown if a not in first)


def plot_group_gains(results: dict, share: str | None = None, *, title: str = ""):
    """Paired AUROC gain over real only (mean, 95 % interval) per Fitzpatrick group and overall, in
    distribution (test patients of the training site) and out of distribution (held-out site), at
    ``share`` of the train patients (default the primary share), for standard augmentation,
    oversampling, the ill-only oracle and every generator, uniform and balanced; the augmentation
    cost (variants, seconds, seconds per AUROC point) under the panels."""
    import matplotlib.pyplot as plt

    share = share or (results.get("primary") or {}).get("fraction") or str(min(results["fractions"]))
    ood = results.get("ood") or {}
    panels = [("in distribution", results["arms"], results["n_test_patients"])]
    if ood.get("arms"):
        panels.append((f"out of distribution (site {', '.join(ood['sites'])})", ood["arms"], ood["n_test_patients"]))
    arms = group_gain_arms(results)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6), sharey=True, squeeze=False)
    for ax, (label, entries, n_pat) in zip(axes[0], panels):
        groups = sorted({g for a in arms for g in entries.get(a, {}).get("by_fraction", {}).get(share, {})
                         .get("per_skin_type", {})})
        cols = ["all"] + groups
        for k, arm in enumerate(arms):
            view = entries.get(arm, {}).get("by_fraction", {}).get(share, {})
            xs, m, lo, hi = [], [], [], []
            for j, g in enumerate(cols):
                v = view.get("gain", {}).get("auroc") if g == "all" else view.get("per_skin_type", {}).get(g, {}).get("gain_auroc")
                if v and v.get("low") is not None:
                    xs.append(j + (k - (len(arms) - 1) / 2) * 0.8 / max(1, len(arms)))
                    m.append(v["mean"]), lo.append(v["low"]), hi.append(v["high"])
            if xs:
                m, lo, hi = map(np.asarray, (m, lo, hi))
                ax.errorbar(xs, m, yerr=np.vstack([m - lo, hi - m]), fmt="s" if "balanced" in arm else "o", ms=5,
                            capsize=2, color=arm_colour(arm.replace(" (balanced)", "")),
                            mfc="white" if "balanced" in arm else None,
                            label=arm.replace("real + ", "+ "))
        npat = [f"all ({n_pat} pat.)"] + [
            f"{g} ({next((entries[a]['by_fraction'][share]['per_skin_type'][g]['n_patients'] for a in arms if g in entries.get(a, {}).get('by_fraction', {}).get(share, {}).get('per_skin_type', {})), '?')} pat.)"
            for g in groups]
        ax.set_xticks(range(len(cols)), npat, fontsize=8)
        ax.axhline(0, color="k", lw=0.8)
        ax.grid(alpha=0.3, axis="y")
        ax.set_title(label, fontsize=9)
    axes[0][0].set_ylabel(f"AUROC gain vs real only ({float(share):.0%} of train pat.)")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    cost = results.get("augmentation_cost") or {}
    if cost:
        fig.text(0.01, 0.01, "\n".join(textwrap.wrap("Cost: " + "; ".join(cost_text(n, c) for n, c in cost.items()), 170)),
                 fontsize=7, va="bottom")
    fig.suptitle(title or "Gain per Fitzpatrick group, in and out of distribution", fontsize=10)
    fig.tight_layout(rect=(0, 0.08 if cost else 0, 1, 1))
    return fig


def _save_figures(results, out_dir: Path, mem, train_imgs, img_sets) -> None:
    import matplotlib

    from . import memorisation as MEM
    from ..viz import title

    syn = bool(results.get("synthetic_data"))
    backend_is_agg = matplotlib.get_backend().lower() == "agg"
    import matplotlib.pyplot as plt

    figs = {"data_efficiency.png": plot_data_efficiency(results, title=title(
                f"Data efficiency: {results['task']} classifier on held-out patients", syn)),
            "gains.png": plot_gains(results, title=title("Paired gains vs real only (95 % intervals)", syn)),
            "group_gains.png": plot_group_gains(results, title=title(
                "Gain per Fitzpatrick group, in and out of distribution (95 % intervals)", syn)),
            "memorisation.png": MEM.closest_pairs_figure(mem, train_imgs, img_sets, title=title(
                "Closest generated / train pairs (memorisation check)", syn)),
            "memorisation_calibration.png": MEM.calibration_figure(mem, title=title(
                f"Memorisation check: thresholds flag {mem.thresholds['percentile']:g} % of real test crops; "
                f"fresh patients (oracle) flagged {mem.rows.get('oracle', {}).get('near_copy_fraction', float('nan')):.1%}", syn))}
    for name, fig in figs.items():
        fig.savefig(out_dir / name, dpi=120)
        if backend_is_agg:
            plt.close(fig)


# ----------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------
def _pairs(values: Sequence[str]) -> dict[str, str]:
    out = {}
    for v in values:
        if "=" not in v:
            raise SystemExit(f"--generated takes NAME=DIR, got {v!r}")
        k, d = v.split("=", 1)
        out[k] = d
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m skinlib.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--real", required=True, help="crops folder of notebook 01 (with split.csv and healthy/)")
    p.add_argument("--generated", nargs="*", default=[], metavar="NAME=DIR", help="generated images in the crop format")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--task", default="auto", choices=D.TASKS)
    p.add_argument("--oracle", default=None, help="oracle crops (demo data only; see skinlib.data.crops.make_oracle_crops)")
    p.add_argument("--repetitions", type=int, default=D.DownstreamConfig.repetitions)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--detector", default=D.DownstreamConfig.detector, choices=D.DETECTORS,
                   help="features: ridge probe on frozen Inception features (default); cnn: small CNN from scratch")
    p.add_argument("--primary-fraction", type=float, default=None,
                   help="share of train patients of the primary endpoint (default: the smallest of --fractions)")
    p.add_argument("--max-pairs-per-patient", type=int, default=D.DownstreamConfig.max_pairs_per_patient)
    p.add_argument("--steps", type=int, default=D.DownstreamConfig.steps)
    p.add_argument("--fractions", type=float, nargs="+", default=list(D.DownstreamConfig.fractions))
    p.add_argument("--features", default="auto",
                   help="auto | inception | inception-torchmetrics | inception-fid-helper | local-random (NOT FID)")
    p.add_argument("--inception-weights", default=None)
    p.add_argument("--n-samples", type=int, default=1000)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--allow-unverified", action="append", default=[], metavar="NAME",
                   help="evaluate generated folder NAME although what its generator was trained on is unknown "
                        "(no provenance record); its rows are marked unverified. Repeat for several.")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = D.DownstreamConfig(task=a.task, detector=a.detector, repetitions=a.repetitions, seed=a.seed, steps=a.steps,
                             fractions=tuple(a.fractions), primary_fraction=a.primary_fraction,
                             max_pairs_per_patient=a.max_pairs_per_patient)
    try:
        results = run_evaluation(a.real, _pairs(a.generated), a.out, config=cfg, oracle_crops=a.oracle,
                                 features=a.features, inception_weights=a.inception_weights, n_samples=a.n_samples,
                                 allow_unverified=a.allow_unverified)
    except EvaluationFailed as e:
        print(f"EVALUATION FAILED: {e}", file=sys.stderr)
        return 1
    print((Path(a.out) / "comparison.md").read_text())
    print(json.dumps({"n_test_patients": results["n_test_patients"], "written": str(a.out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
