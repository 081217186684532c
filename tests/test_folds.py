"""Patient-level cross-validation (`python -m skinlib run --folds K`): the folds of notebook 01
(skinlib.data.split.assign_folds / write_fold_views), the pooled evaluation
(skinlib.evaluation.folds.pool_folds), and a smoke main job with 3 folds in which every patient
is tested once and no generator of a fold saw that fold's test patients."""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from skinlib import __main__ as main_job
from skinlib.data import split as S
from skinlib.io import load_json, read_csv, save_json

from _eval_data import make_split_crops


# ---------------------------------------------------------------------------------------- folds
def test_assign_folds_puts_every_patient_in_one_fold_balanced_by_disease_and_skin_group():
    patients = {f"a{i}": "rash" for i in range(20)} | {f"b{i}": "psoriasis" for i in range(9)} | {"c0": "rare", "c1": "rare"}
    strata = {p: ("I-II" if i % 3 else "V-VI") for i, p in enumerate(sorted(patients))}
    folds = S.assign_folds(patients, 3, seed=0, strata=strata)
    assert set(folds) == set(patients)
    assert folds["c0"] is None and folds["c1"] is None            # too few patients: train in every fold
    assert {f for p, f in folds.items() if not p.startswith("c")} == {0, 1, 2}
    for disease in ("rash", "psoriasis"):
        for group in ("I-II", "V-VI"):
            n = Counter(folds[p] for p, d in patients.items() if d == disease and strata[p] == group)
            assert max(n.values()) - min(n.get(f, 0) for f in range(3)) <= 1, (disease, group, n)
    sizes = Counter(f for f in folds.values() if f is not None)
    assert max(sizes.values()) - min(sizes.values()) <= 1
    assert S.assign_folds(patients, 3, seed=0, strata=strata) == folds                # deterministic
    assert any(S.assign_folds(patients, 3, seed=s, strata=strata) != folds for s in range(1, 4))
    with pytest.raises(ValueError, match="folds must be an integer >= 2"):
        S.assign_folds(patients, 1)


def test_fold_views_are_hard_linked_crops_folders_with_one_fold_as_test(tmp_path, capsys):
    crops = make_split_crops(tmp_path / "run" / "crops", n_patients=7, per_patient=2)
    folds = S.write_fold_views(crops, 3, seed=0)
    assert "3 patient folds" in capsys.readouterr().out
    table = {r["patient"]: r for r in read_csv(crops / "split.csv")}
    assert {p: int(r["fold"]) for p, r in table.items()} == folds
    tested: Counter = Counter()
    for f, view in enumerate(S.fold_views(tmp_path / "run", 3)):
        assert view == tmp_path / "run" / f"fold{f}" / "crops"
        mine = {p for p, g in folds.items() if g == f}
        for manifest in ("manifest.csv", "healthy/manifest.csv"):
            rows = read_csv(view / manifest)
            assert len(rows) == len(read_csv(crops / manifest))
            assert {r["patient"] for r in rows if r["split"] == "test"} == mine
            assert all(r["split"] == "train" for r in rows if r["patient"] not in mine)
        assert S.read_split(view) == {p: "test" if p in mine else "train" for p in folds}
        tested.update(p for p, s in S.read_split(view).items() if s == "test")
        for png in list(view.glob("*.png")) + list((view / "healthy").glob("*.png")):
            src = crops / png.relative_to(view)
            assert os.path.samefile(png, src), png                   # a hard link, not a copy
        summary = load_json(view / "summary.json")
        assert summary["split"]["fold"] == f and summary["split"]["folds"] == 3
        assert summary["data_dir"] == load_json(crops / "summary.json")["data_dir"]   # skin types, synthetic: as the main folder
    assert tested == Counter(list(folds))                             # every patient tested exactly once
    assert {r["split"] for r in read_csv(crops / "manifest.csv")} == {"train", "test"}  # main folder: its split kept
    with pytest.raises(FileNotFoundError, match="not fold 0 of 4 folds.*--folds 4"):
        S.fold_views(tmp_path / "run", 4)


def test_fold_views_copy_and_say_so_where_hard_links_are_impossible(tmp_path, monkeypatch):
    crops = make_split_crops(tmp_path / "crops", n_patients=4, per_patient=1)

    def refuse(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", refuse)
    said = []
    S.write_fold_views(crops, 2, root=tmp_path, log=said.append)
    assert any("HARD LINKS IMPOSSIBLE" in s and "COPIED" in s for s in said)
    png = tmp_path / "fold0" / "crops" / "000000.png"
    assert png.read_bytes() == (crops / "000000.png").read_bytes() and not os.path.samefile(png, crops / "000000.png")


def test_main_job_gives_each_fold_its_view_and_refuses_fold_inputs_in_the_yaml(tmp_path):
    from skinlib.stages import STAGES

    st = {s.key: s for s in STAGES}
    assert main_job.fold_parameters(st["02"], {"out_dir": "o"}, tmp_path, None, 1) == {"out_dir": "o"}   # K = 1: as before
    assert main_job.fold_parameters(st["01"], {}, tmp_path, None, 3) == {"folds": 3}
    assert main_job.fold_parameters(st["04"], {}, tmp_path, 2, 3) == {"crops_dir": str(tmp_path / "fold2" / "crops")}
    assert main_job.fold_parameters(st["05"], {}, tmp_path, 1, 3) == {"real_crops": str(tmp_path / "fold1" / "crops")}
    with pytest.raises(SystemExit, match="crops_dir"):
        main_job.check_fold_params({"02": {"crops_dir": "x"}}, 3)
    with pytest.raises(SystemExit, match="--folds K"):
        main_job.check_fold_params({"01": {"folds": 3}}, 1)
    main_job.check_fold_params({"02": {"crops_dir": "x"}}, 1)        # the single split: allowed as before
    with pytest.raises(SystemExit, match="not fold 0 of 3 folds.*--folds 3"):   # later stages need 01's views
        main_job.main(["run", "--folds", "3", "--only", "02", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="--folds must be >= 1"):
        main_job.main(["run", "--folds", "0", "--out", str(tmp_path / "o")])


# ---------------------------------------------------------------------------------------- pooling
def _fake_fold(folder: Path, patients: list[str], rng, offset: float, reps: int = 3, fail_arm: bool = False) -> dict:
    """An eval folder as notebook 05 writes it (results.json + predictions.npz) with made-up
    predictions: 2 examples (healthy, ill) per patient; ``offset`` shifts this fold's scores."""
    from skinlib.evaluation import downstream as D

    cfg = D.DownstreamConfig(fractions=(0.5, 1.0), repetitions=reps, n_boot=200)
    y = np.tile([0, 1], len(patients))
    pats = [p for p in patients for _ in range(2)]
    probas = {}
    for arm, shift in ((D.REAL_ONLY, 0.0), ("real + gen", 0.3)):
        for f in cfg.fractions:
            reps_p = []
            for _ in range(reps):
                s = np.clip(offset + 0.25 * y + shift * y + rng.normal(0, 0.2, len(y)), 0, 1)
                reps_p.append(np.stack([1 - s, s], 1))
            probas[(arm, f)] = reps_p
    arms = {D.REAL_ONLY: {"status": "ok", "reason": "", "generator": "", "by_fraction": {"0.5": {}, "1.0": {}}},
            "real + gen": {"status": "failed" if fail_arm else "ok", "reason": "boom" if fail_arm else "",
                           "generator": "gen", "by_fraction": {} if fail_arm else {"0.5": {}, "1.0": {}}}}
    if fail_arm:
        probas = {k: v for k, v in probas.items() if k[0] != "real + gen"}
    res = D.DownstreamResult("rash-vs-healthy", ["healthy", "ill"], {}, 5, len(patients), {}, {}, [], {},
                             {"patient": pats, "file": pats, "group": [""] * len(y), "y": y, "probas": probas})
    folder.mkdir(parents=True)
    D.save_predictions(folder / D.PREDICTIONS_FILE, res)
    from dataclasses import asdict
    save_json(folder / "results.json", {
        "task": "rash-vs-healthy", "classes": ["healthy", "ill"], "fractions": [0.5, 1.0], "repetitions": reps,
        "n_train_patients": 5, "n_test_patients": len(patients), "arms": arms,
        "generators": {"gen": {"status": "ok", "folder": str(folder), "reason": ""}},
        "image_metric_labels": {"kd": "KID", "fd": "FID"}, "synthetic_data": True, "detector": "features",
        "settings": {"downstream": asdict(cfg), "features": {"name": "local-random"}, "smoke": True}})
    return probas


def test_pooling_concatenates_the_folds_test_predictions_repetition_by_repetition(tmp_path):
    from sklearn.metrics import roc_auc_score

    from skinlib.evaluation import downstream as D
    from skinlib.evaluation.folds import pool_folds

    rng = np.random.default_rng(0)
    groups = [[f"p{i}" for i in range(f * 4, f * 4 + 4)] for f in range(3)]
    folds = [_fake_fold(tmp_path / f"fold{f}", groups[f], rng, offset=0.2 * f) for f in range(3)]
    res = pool_folds([tmp_path / f"fold{f}" for f in range(3)], tmp_path / "eval")
    assert res["folds"] == 3 and res["n_test_patients"] == 12
    y = np.tile([0, 1], 12)
    for arm in (D.REAL_ONLY, "real + gen"):
        expected = np.mean([roc_auc_score(y, np.concatenate([p[(arm, 1.0)][r] for p in folds])[:, 1]) for r in range(3)])
        assert res["arms"][arm]["status"] == "ok"
        assert res["arms"][arm]["by_fraction"]["1.0"]["metrics"]["auroc"]["mean"] == pytest.approx(expected)
    per_fold_mean = np.mean([roc_auc_score(np.tile([0, 1], 4), p[(D.REAL_ONLY, 1.0)][0][:, 1]) for p in folds])
    assert res["arms"][D.REAL_ONLY]["by_fraction"]["1.0"]["metrics"]["auroc"]["mean"] != pytest.approx(per_fold_mean)
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["folds"] == 3 and saved["arms"]["real + gen"]["gain"]["auroc"]["mean"] > 0
    assert "folds: 3" in (tmp_path / "eval" / "comparison.md").read_text()
    assert saved["primary"]["arms"]["real + gen"]["gain"] == pytest.approx(
        saved["arms"]["real + gen"]["by_fraction"]["0.5"]["gain"]["auroc"]["mean"])


def test_pooling_refuses_overlapping_folds_and_leaves_out_an_arm_that_failed_in_one_fold(tmp_path):
    from skinlib.evaluation.folds import pool_folds

    rng = np.random.default_rng(1)
    _fake_fold(tmp_path / "a0", ["p1", "p2"], rng, 0.0)
    _fake_fold(tmp_path / "a1", ["p3", "p4"], rng, 0.0, fail_arm=True)
    res = pool_folds([tmp_path / "a0", tmp_path / "a1"], tmp_path / "eval")
    assert res["arms"]["real only"]["status"] == "ok"
    assert res["arms"]["real + gen"]["status"] == "failed" and res["arms"]["real + gen"]["reason"].startswith("fold 1: boom")
    _fake_fold(tmp_path / "b1", ["p2", "p5"], rng, 0.0)
    with pytest.raises(ValueError, match="patient p2 is a test patient of fold 0 and of fold 1"):
        pool_folds([tmp_path / "a0", tmp_path / "b1"], tmp_path / "eval2")


# ---------------------------------------------------------------------------------------- main job
@pytest.fixture(scope="module")
def folds_run(tmp_path_factory):
    """`python -m skinlib run --smoke --folds 3` on a smoke demo of 6 patients (2 test patients per fold)."""
    from test_main import run_cli

    root = tmp_path_factory.mktemp("folds")
    params = root / "p.yaml"
    params.write_text('"01": {demo_n_patients: 6}\n')
    out = root / "run"
    r = run_cli("--smoke", "--folds", "3", "--params", str(params), "--out", str(out), cwd=root)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return out


def test_folds_run_tests_every_patient_once_with_generators_that_never_saw_it(folds_run):
    from skinlib.evaluation.provenance import train_data_sha256

    out = folds_run
    run = json.loads((out / "run.json").read_text())
    assert run["folds"] == 3
    recs = {(s["stage"], s.get("fold")): s for s in run["stages"]}
    assert all(recs[(k, f)]["status"] == "ok" for k in ("02", "03", "04", "05") for f in range(3)), run["stages"]
    assert recs[("05", "pooled")]["status"] == "ok" and recs[("01", None)]["parameters"]["folds"] == 3
    rows = read_csv(out / "crops" / "split.csv")
    fold_of = {r["patient"]: r["fold"] for r in rows if r["split"] != "ood"}
    held = {r["patient"] for r in rows if r["split"] == "ood"}      # the demo's site B: in no fold
    assert len(fold_of) == 6 and set(fold_of.values()) == {"0", "1", "2"}
    assert len(held) == 2 and all(r["fold"] == "" for r in rows if r["patient"] in held)
    tested, pooled_n = Counter(), 0
    for f in range(3):
        view = out / f"fold{f}" / "crops"
        split = S.read_split(view)
        test = {p for p, s in split.items() if s == "test"}
        assert test == {p for p, g in fold_of.items() if g == str(f)}
        assert {p for p, s in split.items() if s == "ood"} == held
        assert json.loads((view / "summary.json").read_text())["split"]["ood_sites"] == ["B"]
        tested.update(test)
        for gen in ("dcgan", "cvae"):
            rows = read_csv(out / f"fold{f}" / gen / "samples" / "manifest.csv")
            assert {r["trained_on_split"] for r in rows} == {"train"}
            assert {r["train_data_sha256"] for r in rows} == {train_data_sha256(view)}   # this fold's train crops
        glide = read_csv(out / f"fold{f}" / "glide" / "samples" / "manifest.csv")
        assert glide and not {r["source_patient"] for r in glide} & test
        res = json.loads((out / f"fold{f}" / "eval" / "results.json").read_text())
        assert all(g["status"] == "ok" for g in res["generators"].values()), res["generators"]
        scored = set(np.load(out / f"fold{f}" / "eval" / "predictions.npz")["patient"].tolist())
        assert scored <= test and len(scored) == res["n_test_patients"]   # (a patient without healthy windows has no pair)
        pooled_n += len(scored)
    assert tested == Counter(list(fold_of))                           # each patient tested in exactly one fold
    pooled = json.loads((out / "eval" / "results.json").read_text())
    assert pooled["folds"] == 3 and pooled["n_test_patients"] == pooled_n >= 5
    assert pooled["arms"]["real only"]["status"] == "ok" and pooled["arms"]["real + glide"]["status"] == "ok"
    summary = (out / "summary.md").read_text()
    assert "| stage | fold |" in summary and "| 05 | pooled |" in summary and "folds: 3" in summary


def test_a_generator_of_another_fold_is_refused(folds_run, tmp_path):
    """Planted cross-fold leak: fold 0's generators trained on fold 1's test patients."""
    from skinlib.evaluation import downstream as D
    from skinlib.evaluation.evaluate import run_evaluation
    from skinlib.evaluation.provenance import LeakError, check_generated_folder

    out = folds_run
    view1 = out / "fold1" / "crops"
    fold1_test = {p for p, s in S.read_split(view1).items() if s == "test"}
    assert fold1_test <= {p for p, s in S.read_split(out / "fold0" / "crops").items() if s == "train"}
    for g in ("dcgan", "cvae", "glide"):
        check_generated_folder(out / "fold0" / g / "samples", out / "fold0" / "crops")     # its own fold: accepted
        with pytest.raises(LeakError):                                                    # another fold's: refused
            check_generated_folder(out / "fold0" / g / "samples", view1)
    cfg = D.DownstreamConfig(fractions=(1.0,), repetitions=2, steps=2, image_size=16, n_boot=50)
    res = run_evaluation(view1, {g: out / "fold0" / g / "samples" for g in ("dcgan", "cvae", "glide")},
                         tmp_path / "eval", config=cfg, features="local-random", n_samples=16, min_images=2,
                         image_size=32, smoke=True, progress=False)
    for g in ("dcgan", "cvae", "glide"):
        assert res["generators"][g]["status"] == "refused", (g, res["generators"][g])
        assert res["arms"][f"real + {g}"]["status"] == "refused"
    assert res["arms"]["real only"]["status"] == "ok"
