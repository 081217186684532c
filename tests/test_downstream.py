"""Downstream utility (skinlib.downstream): labelling of synthetic images, patient-level splits,
same-budget training, intervals and the comparison table. Tiny folders written by the builders of
test_metrics.py; tiny CNNs for a few dozen steps."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from skinlib import downstream as D
from skinlib import metrics as M
from skinlib.io import read_csv, write_csv

_spec = importlib.util.spec_from_file_location("_skinlib_eval_builders", Path(__file__).with_name("test_metrics.py"))
_b = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_b)
make_crops, make_generated, make_inpainted = _b.make_crops, _b.make_generated, _b.make_inpainted

TINY = dict(image_size=32, steps=30, batch_size=16, val_every=10, width=8)


# ----------------------------------------------------------------------------------------
# splits
# ----------------------------------------------------------------------------------------
def test_patient_split_keeps_patients_apart_and_covers_classes():
    patients = [f"p{i // 3}" for i in range(30)]           # 10 patients x 3 examples
    labels = [(i // 3) % 2 for i in range(30)]             # each patient one class
    s = D.patient_split(patients, labels, seed=0)
    for a in D.SPLITS:
        for b in D.SPLITS:
            if a < b:
                assert not {p for p, x in zip(patients, s) if x == a} & {p for p, x in zip(patients, s) if x == b}
        assert set(np.asarray(labels)[s == a]) == {0, 1}
    assert (s == D.patient_split(patients, labels, seed=0)).all()
    assert any((D.patient_split(patients, labels, seed=k) != s).any() for k in range(1, 5))
    assert 12 <= (s == "train").sum() <= 24


def test_patient_split_errors_say_what_to_do():
    with pytest.raises(ValueError, match="at least 3 patients"):
        D.patient_split(["a", "a", "b"], [0, 1, 0], seed=0)
    # class 1 only in one patient: it cannot be in both train and test
    with pytest.raises(ValueError, match="add patients"):
        D.patient_split(["a", "b", "c", "d"], [0, 0, 0, 1], seed=0, tries=20)


# ----------------------------------------------------------------------------------------
# examples and labelling rules
# ----------------------------------------------------------------------------------------
def test_task_choice_and_classes(tmp_path):
    two = read_csv(make_crops(tmp_path / "two", n_patients=3, per_patient=2, size=16) / "manifest.csv")
    one = [{**r, "disease": "measles"} for r in two]
    assert D.choose_task(two) == "disease" and D.choose_task(one) == "ill-vs-healthy"
    # two diseases but one of them seen in only 2 patients: no split can test it -> patch task
    few = [r for r in two if not (r["disease"] == "rubella" and r["patient"].endswith("2"))]
    assert D.choose_task(few) == "ill-vs-healthy" and D.choose_task(few, "disease") == "disease"
    assert D.class_names("disease", two) == ["measles", "rubella"]
    with pytest.raises(ValueError, match="at least two diseases"):
        D.class_names("disease", one)
    with pytest.raises(ValueError, match="task must be"):
        D.choose_task(two, "segmentation")


def test_ill_vs_healthy_patches_follow_the_mask(tmp_path):
    real = make_crops(tmp_path / "real", n_patients=3, per_patient=2, size=32)
    cfg = D.DownstreamConfig(task="ill-vs-healthy", image_size=8, patch_fraction=0.25)
    ex = D.real_examples(real, "ill-vs-healthy", ["healthy", "ill"], cfg)
    from PIL import Image

    # recount from the masks: 4x4 tiles of 8 px, ill >= 0.3, healthy <= 0.02
    want = []
    for row in read_csv(real / "manifest.csv"):
        m = np.asarray(Image.open(real / row["mask"])) > 127
        for y in range(0, 32, 8):
            for x in range(0, 32, 8):
                c = m[y:y + 8, x:x + 8].mean()
                if c >= 0.3:
                    want.append(1)
                elif c <= 0.02:
                    want.append(0)
    assert ex.y.tolist() == want and ex.x.shape == (len(want), 3, 8, 8)
    assert set(ex.patient) == {r["patient"] for r in read_csv(real / "manifest.csv")}
    # the pixels come with their labels: lesion colours have low green, skin is grey
    assert ex.x.dtype == torch.uint8
    green = ex.x[:, 1].float().mean(dim=(1, 2))
    for crop in set(ex.crop):
        mine = torch.tensor([c == crop for c in ex.crop])
        assert green[mine & (ex.y == 1)].max() < green[mine & (ex.y == 0)].min()


def test_synthetic_labelling_rules(tmp_path):
    real = make_crops(tmp_path / "real", n_patients=4, per_patient=2, size=32)
    rows = read_csv(real / "manifest.csv")
    classes = ["measles", "rubella"]
    cfg = D.DownstreamConfig(**TINY)
    # CVAE-like: labelled by its own disease column
    cvae = make_generated(tmp_path / "cvae", n=6, size=32, disease="rubella")
    ex, note = D.synthetic_examples(cvae, "disease", classes, cfg, real_crops=real, real_rows=rows, verbose=False)
    assert ex.y.tolist() == [1] * 6 and ex.patient == [""] * 6 and "6 labelled images" in note
    # unconditional DCGAN-like: no label -> not applicable, never guessed
    dcgan = make_generated(tmp_path / "dcgan", n=6, size=32)
    ex, note = D.synthetic_examples(dcgan, "disease", classes, cfg, real_crops=real, real_rows=rows, verbose=False)
    assert ex is None and note.startswith("not applicable")
    ex, note = D.synthetic_examples(dcgan, "ill-vs-healthy", ["healthy", "ill"], cfg, real_crops=real,
                                    real_rows=rows, verbose=False)
    assert ex is None and "mask" in note
    # GLIDE-like: inherits the source crop's disease and patient even without its own columns
    glide = make_inpainted(tmp_path / "glide", real)
    man = read_csv(glide / "manifest.csv")
    write_csv(glide / "manifest.csv", [{k: v for k, v in r.items() if k not in ("disease", "patient")} for r in man])
    ex, _ = D.synthetic_examples(glide, "disease", classes, cfg, real_crops=real, real_rows=rows, verbose=False)
    assert [classes[i] for i in ex.y.tolist()] == [r["disease"] for r in rows]
    assert ex.patient == [r["patient"] for r in rows] and ex.crop == [r["image"] for r in rows]
    # a source crop that cannot be found: its patient is unknown, so it can never pass the leakage filter
    write_csv(glide / "manifest.csv", [{**r, "source_crop": "gone.png", "disease": "measles"} for r in man])
    ex, _ = D.synthetic_examples(glide, "disease", classes, cfg, real_crops=real, real_rows=rows, verbose=False)
    assert set(ex.patient) <= {D.UNKNOWN_PATIENT} | {r["patient"] for r in rows}
    write_csv(glide / "manifest.csv", [{**r, "source_crop": "gone.png", "disease": "measles", "patient": ""}
                                       for r in man])
    ex, _ = D.synthetic_examples(glide, "disease", classes, cfg, real_crops=real, real_rows=rows, verbose=False)
    assert set(ex.patient) == {D.UNKNOWN_PATIENT}


def test_ill_vs_healthy_uses_carried_masks_and_edit_limit(tmp_path):
    real = make_crops(tmp_path / "real", n_patients=3, per_patient=2, size=32)
    rows = read_csv(real / "manifest.csv")
    glide = make_inpainted(tmp_path / "glide", real)           # top-left quarter edited
    names = ["healthy", "ill"]
    cfg = D.DownstreamConfig(task="ill-vs-healthy", image_size=8)
    ex_all, _ = D.synthetic_examples(glide, "ill-vs-healthy", names, cfg, real_crops=real, real_rows=rows, verbose=False)
    real_ex = D.real_examples(real, "ill-vs-healthy", names, cfg)
    assert ex_all.y.tolist() == real_ex.y.tolist()              # labels inherited from the carried mask
    cfg.max_edited_fraction = 0.5
    ex_kept, _ = D.synthetic_examples(glide, "ill-vs-healthy", names, cfg, real_crops=real, real_rows=rows,
                                      verbose=False)
    assert len(ex_kept) < len(ex_all)                           # patches of the edited quarter dropped


# ----------------------------------------------------------------------------------------
# metrics, intervals
# ----------------------------------------------------------------------------------------
def test_classification_metrics():
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]])
    m = D.classification_metrics(y, p)
    assert m["accuracy"] == 0.75 and m["f1"] == pytest.approx(0.8) and m["auc"] == 1.0
    m3 = D.classification_metrics(np.array([0, 1, 2]), np.eye(3))
    assert m3 == {"accuracy": 1.0, "f1": 1.0, "auc": 1.0}
    assert math.isnan(D.classification_metrics(np.array([0, 0]), p[:2])["auc"])


def test_t_interval_and_paired_gain():
    mean, lo, hi = D.t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)
    assert mean == 2.0 and lo == pytest.approx(2 - half) and hi == pytest.approx(2 + half)
    assert math.isnan(D.t_interval([0.5])[1])
    assert D.t_interval([0.9, 1.0], bounds=(0.0, 1.0))[2] == 1.0 and D.t_interval([0.9, 1.0])[2] > 1.0
    per_seed = []
    for seed, (base, mixed) in enumerate([(0.60, 0.70), (0.80, 0.90), (0.70, 0.80)]):
        common = {"seed": seed, "f1": 0.5, "auc": 0.5, "n_train_real": 10}
        per_seed += [{"arm": D.REAL_ONLY, "generator": "", "accuracy": base, "n_train_synthetic": 0, **common},
                     {"arm": "real + g", "generator": "g", "accuracy": mixed, "n_train_synthetic": 5, **common}]
    s = {r["arm"]: r for r in D.summarize(per_seed)}
    # paired: every seed gains exactly 0.1 -> zero-width interval, although the arms' own intervals overlap
    assert s["real + g"]["accuracy gain"] == pytest.approx(0.1)
    assert s["real + g"]["accuracy gain high"] - s["real + g"]["accuracy gain low"] == pytest.approx(0, abs=1e-9)
    assert s[D.REAL_ONLY]["accuracy high"] > s["real + g"]["accuracy low"]
    assert "accuracy gain" not in s[D.REAL_ONLY]


# ----------------------------------------------------------------------------------------
# training and the whole experiment
# ----------------------------------------------------------------------------------------
def test_train_classifier_is_seeded_and_learns(tmp_path):
    real = make_crops(tmp_path / "real", n_patients=6, per_patient=4, size=32)
    cfg = D.DownstreamConfig(**TINY)
    ex = D.real_examples(real, "disease", ["measles", "rubella"], cfg)
    s = D.patient_split(ex.patient, ex.y.numpy(), seed=0)
    tr, va, te = (ex.subset(np.nonzero(s == k)[0]) for k in D.SPLITS)
    m1, info = D.train_classifier(tr, va, 2, cfg, seed=3)
    m2, _ = D.train_classifier(tr, va, 2, cfg, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert 1 <= info["best_step"] <= cfg.steps
    acc = D.classification_metrics(te.y.numpy(), D.predict_proba(m1, te.x))["accuracy"]
    assert acc >= 0.8, acc                                  # colour tells the disease: easy to learn


def test_run_downstream_same_budget_no_leakage_and_table(tmp_path):
    real = make_crops(tmp_path / "real", n_patients=6, per_patient=4, size=32)
    glide = make_inpainted(tmp_path / "glide", real)
    cvae = make_generated(tmp_path / "cvae", n=8, size=32, disease="measles")
    dcgan = make_generated(tmp_path / "dcgan", n=8, size=32)
    gens = {"dcgan": dcgan, "cvae": cvae, "glide": glide, "missing": None}
    res = D.run_downstream(real, gens, seeds=(0, 1), config=D.DownstreamConfig(**TINY), progress=False, verbose=False)
    assert res.task == "disease" and res.classes == ["measles", "rubella"]
    assert res.notes["dcgan"].startswith("not applicable") and res.notes["missing"].startswith("not available")
    arms = [s["arm"] for s in res.summary]
    assert arms == [D.REAL_ONLY, "real + cvae", "real + glide"]
    assert {r["steps"] for r in res.per_seed} == {TINY["steps"]}         # same budget everywhere
    ex = D.real_examples(real, "disease", res.classes, D.DownstreamConfig(**TINY))
    for seed in (0, 1):
        split = D.patient_split(ex.patient, ex.y.numpy(), seed)
        train_patients = {p for p, s in zip(ex.patient, split) if s == "train"}
        n_glide = sum(r["patient"] in train_patients for r in read_csv(glide / "manifest.csv"))
        row = next(r for r in res.per_seed if r["arm"] == "real + glide" and r["seed"] == seed)
        assert row["n_train_synthetic"] == n_glide < 24                  # test patients' variants left out
        assert next(r for r in res.per_seed if r["arm"] == "real + cvae" and r["seed"] == seed)["n_train_synthetic"] == 8
    for s in res.summary:
        for m in D.METRICS:
            assert 0.0 <= s[m] <= 1.0
    assert "accuracy gain" in res.summary[1] and "accuracy gain" not in res.summary[0]

    image_rows = [{"name": M.REAL_SPLIT_ROW, "n_eval": 5}, {"name": "cvae", "n_eval": 5}, {"name": "glide", "n_eval": 5}]
    table = D.comparison_table(image_rows, res, generators=["dcgan", "cvae", "glide", "extra"],
                               status={"extra": "not available: run notebook 09"},
                               inpainting={"glide": {"mad_inside": 0.4}}, labels={"glide": "glide [RANDOM weights]"})
    assert [r["name"] for r in table] == [M.REAL_SPLIT_ROW, "dcgan", "cvae", "glide [RANDOM weights]", "extra"]
    real_row, dcgan_row, cvae_row, glide_row, extra = table
    assert real_row["accuracy"] == res.summary[0]["accuracy"] and "accuracy gain" not in real_row
    assert cvae_row["accuracy gain"] == res.summary[1]["accuracy gain"] and glide_row["inpaint mad_inside"] == 0.4
    assert "accuracy" not in dcgan_row and dcgan_row["downstream note"].startswith("not applicable")
    assert extra["status"].startswith("not available")
    cols = D.table_columns(table)
    assert cols[:2] == ["name", "status"] and "accuracy gain high" in cols
