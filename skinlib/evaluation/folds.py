"""Patient-level cross-validation: pool the evaluations of K folds into one.

With ``python -m skinlib run --folds K`` notebook 01 deals every patient to one of K folds
(:func:`skinlib.data.split.write_fold_views`) and notebooks 02-05 run once per fold on the
fold's crops folder view, whose test patients are that fold's patients only: the generators
and detectors of fold f never saw them. Each fold's notebook 05 saves its test predictions
(``eval/predictions.npz``, :func:`skinlib.evaluation.downstream.save_predictions`).
:func:`pool_folds` concatenates the test examples of all folds (each patient once) and, per
(arm, share of train patients, repetition r), the probabilities of repetition r of every fold,
then summarises them exactly as a single split is summarised
(:func:`skinlib.evaluation.downstream._summaries`): the bootstrap resamples patients across all
folds and repetitions within. It writes ``results.json`` (the structure of a single split's,
plus ``folds``) and ``comparison.md``. An arm that is not ok in some fold is not pooled; its
reason names the fold. Image metrics, memorisation and label checks stay per fold (each fold's
own ``eval/``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from . import downstream as D
from . import power as P
from ..io import atomic_write_text, load_json, save_json


def _config(settings: dict) -> D.DownstreamConfig:
    """The DownstreamConfig a fold's results.json recorded (lists back to tuples)."""
    return D.DownstreamConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()})


def _not_ok(arm: str, entries: Sequence[dict]) -> dict | None:
    """The entry of an arm that is not ok in some fold (status and reason of the first such fold), else None."""
    bad = [(f, e) for f, e in enumerate(entries) if e.get("status") != "ok"]
    if not bad:
        return None
    f, e = bad[0]
    more = f" (also folds {', '.join(str(g) for g, _ in bad[1:])})" if len(bad) > 1 else ""
    return {"status": e.get("status", "absent"), "reason": f"fold {f}: {e.get('reason', '')}{more}",
            "generator": e.get("generator", ""), "metrics": {}, "gain": {}, "per_class": {}, "per_skin_type": {},
            "by_fraction": {}}


def pool_folds(fold_dirs: Sequence, out_dir) -> dict:
    """Pool the evaluations in ``fold_dirs`` (each fold's ``eval/`` folder, fold order) into
    ``out_dir`` (``results.json``, ``comparison.md``, ``data_efficiency.png``, ``gains.png``) and
    return the pooled results. Raises ValueError when the folds disagree on the protocol (task,
    classes, shares, repetitions) or share a test patient; EvaluationFailed when no arm pooled."""
    from . import evaluate as E

    fold_dirs, out_dir = [Path(d) for d in fold_dirs], Path(out_dir)
    if len(fold_dirs) < 2:
        raise ValueError(f"pooling needs the evaluations of 2 or more folds, got {len(fold_dirs)}")
    results = []
    for d in fold_dirs:
        if not (d / "results.json").is_file():
            raise FileNotFoundError(f"{d / 'results.json'} not found: notebook 05 did not finish for this fold. "
                                    f"Fix: re-run it (`python -m skinlib run --folds {len(fold_dirs)} --only 05`).")
        results.append(load_json(d / "results.json"))
    preds = [D.load_predictions(d / D.PREDICTIONS_FILE) for d in fold_dirs]
    first = results[0]
    for f, r in enumerate(results):
        for key in ("task", "classes", "fractions", "repetitions"):
            if r[key] != first[key]:
                raise ValueError(f"{fold_dirs[f] / 'results.json'}: {key} {r[key]!r} differs from fold 0's {first[key]!r}; "
                                 f"every fold must be evaluated with the same settings. Fix: re-run notebook 05 of every fold.")
    tested: dict[str, int] = {}
    for f, p in enumerate(preds):
        for pid in sorted(set(p["patient"].tolist())):
            if pid in tested:
                raise ValueError(f"patient {pid} is a test patient of fold {tested[pid]} and of fold {f}: the folds "
                                 f"overlap ({fold_dirs[tested[pid]]}, {fold_dirs[f]}). Fix: re-run notebook 01 with folds.")
            tested[pid] = f
    cfg = _config(first["settings"]["downstream"])
    classes = list(first["classes"])
    y = np.concatenate([p["y"] for p in preds])
    patients = np.concatenate([p["patient"] for p in preds])
    groups = np.concatenate([p["group"] for p in preds])
    plan = D.BootstrapPlan.make(patients.tolist(), cfg.repetitions, cfg.n_boot, cfg.seed)

    def pooled(arm: str, fraction: float) -> list[np.ndarray] | str:
        """Repetition r of every fold, concatenated in fold order; or why not."""
        parts = []
        for f, p in enumerate(preds):
            a = p["probas"].get((arm, fraction))
            if a is None or len(a) != cfg.repetitions:
                return f"fold {f}: no saved test predictions of {arm} at {fraction:.0%} ({fold_dirs[f]})"
            parts.append(a)
        return [np.concatenate([a[r] for a in parts]) for r in range(cfg.repetitions)]

    names = list(dict.fromkeys(a for r in results for a in r["arms"]))
    arms: dict[str, dict] = {}
    full = str(max(cfg.fractions))
    for arm in names:
        entries = [r["arms"].get(arm, {"status": "absent", "reason": "not in this fold's evaluation"}) for r in results]
        entry = _not_ok(arm, entries)
        if entry is None:
            by_fraction, why = {}, ""
            for key in entries[0]["by_fraction"]:
                pr = pooled(arm, float(key))
                base = pooled(D.REAL_ONLY, float(key)) if arm != D.REAL_ONLY else None
                why = pr if isinstance(pr, str) else base if isinstance(base, str) else ""
                if why:
                    break
                by_fraction[key] = D._summaries(plan, y, groups, pr, base, classes, cfg)
            if why:
                entry = {"status": "failed", "reason": why, "generator": entries[0].get("generator", ""),
                         "metrics": {}, "gain": {}, "by_fraction": {}}
            else:
                head = by_fraction.get(full, {})
                entry = {"status": "ok", "reason": "", "generator": entries[0].get("generator", ""),
                         "metrics": head.get("metrics", {}), "gain": head.get("gain", {}),
                         "per_class": head.get("per_class", {}), "per_skin_type": head.get("per_skin_type", {}),
                         "by_fraction": {k: D.share_view(s) for k, s in by_fraction.items()}}
                if any(e.get("provenance") == "unverified" for e in entries):
                    entry["provenance"] = "unverified"
        arms[arm] = entry
    generators = {}
    for name in dict.fromkeys(g for r in results for g in r["generators"]):
        entries = [r["generators"].get(name, {"status": "not available", "reason": "not in this fold"}) for r in results]
        bad = _not_ok(name, entries)
        generators[name] = ({k: bad[k] for k in ("status", "reason")} if bad else
                            {**entries[0], "folders": [e.get("folder", "") for e in entries]})
    n_train = [int(r["n_train_patients"]) for r in results]
    k = len(fold_dirs)
    out = {
        "task": first["task"], "classes": classes, "folds": k,
        "n_train_patients": int(round(float(np.mean(n_train)))), "n_train_patients_per_fold": n_train,
        "n_test_patients": len(tested), "n_test_examples": {c: int((y == i).sum()) for i, c in enumerate(classes)},
        "fractions": first["fractions"], "repetitions": first["repetitions"],
        "interval": f"95 %: two-level bootstrap over the test patients of all {k} folds (each tested once) and "
                    f"repetitions (repetition r of every fold pooled), mean ± t(P-1) x sd "
                    f"(skinlib.evaluation.intervals); gains paired by repetition and patient draw",
        "arms": arms, "generators": generators,
        "image_metrics": [], "image_metric_labels": first["image_metric_labels"], "diversity_ms_ssim": {},
        "inpainting_change": {}, "memorisation": {}, "label_check": {},
        "per_fold": [{"fold": f, "eval": str(d), "n_test_patients": r["n_test_patients"],
                      "n_train_patients": r["n_train_patients"]} for f, (d, r) in enumerate(zip(fold_dirs, results))],
        "per_fold_only": "image metrics, memorisation, label checks, the out-of-distribution column and the "
                         "augmentation cost: see each fold's eval/results.json",
        "ood": {"sites": first.get("ood", {}).get("sites", []),
                "note": "not pooled across folds (every fold tests the same held-out site's patients): each fold's "
                        "eval/results.json has its own out-of-distribution column"},
        "settings": {**first["settings"], "folds": k, "fold_evaluations": [str(d) for d in fold_dirs]},
        "synthetic_data": first.get("synthetic_data"), "detector": first.get("detector"),
    }
    out["primary"] = E.primary_endpoint(out, cfg)
    out["verdict"] = P.verdict(out["primary"], {"positive": D.ORACLE_ILL, "negative": D.COPIES})
    out_dir.mkdir(parents=True, exist_ok=True)
    save_json(out_dir / "results.json", E._jsonable(out))
    head = (f"**Patient-level cross-validation, folds: {k}.** Every patient is tested once, by detectors of its fold, "
            f"which (like that fold's generators) never saw it; the rows pool the test predictions of all folds. "
            f"Image metrics and memorisation: per fold (`fold<f>/eval/`).\n\n")
    atomic_write_text(out_dir / "comparison.md", head + E.comparison_markdown(out))
    _save_figures(out, out_dir)
    if not any(e["status"] == "ok" for e in arms.values()):
        raise E.EvaluationFailed(f"no arm could be pooled over the {k} folds: "
                                 + "; ".join(f"{a}: {e['reason']}" for a, e in arms.items()))
    return out


def _save_figures(results: dict, out_dir: Path) -> None:
    import matplotlib.pyplot as plt

    from . import evaluate as E
    from ..viz import title

    syn = bool(results.get("synthetic_data"))
    k = results["folds"]
    for name, fig in {"data_efficiency.png": E.plot_data_efficiency(results, title=title(
                          f"Data efficiency over {k} patient folds (each patient tested once)", syn)),
                      "gains.png": E.plot_gains(results, title=title(
                          f"Paired gains vs real only, {k} folds pooled (95 % intervals)", syn))}.items():
        fig.savefig(out_dir / name, dpi=120)
        plt.close(fig)


__all__ = ["pool_folds"]
