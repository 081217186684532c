"""The patient split of notebook 01 (skinlib.data.split): stratified, seeded, at least two test
patients per disease, written into every manifest, and the same split seen by every stage."""
from __future__ import annotations

import pytest

from skinlib.data import split as S
from skinlib.data.dataset import CropDataset, list_crop_rows
from skinlib.io import read_csv

from _eval_data import make_split_crops


def test_split_is_stratified_seeded_and_disjoint():
    patients = {f"a{i}": "rash" for i in range(10)} | {f"b{i}": "psoriasis" for i in range(5)}
    s = S.split_patients(patients, test_share=0.25, seed=0)
    assert set(s) == set(patients)
    assert sum(v == "test" for k, v in s.items() if k.startswith("a")) == 3   # round half up: 2.5 -> 3
    assert sum(v == "test" for k, v in s.items() if k.startswith("b")) == 2   # max(2, round(1.25))
    assert s == S.split_patients(patients, test_share=0.25, seed=0)
    assert any(S.split_patients(patients, test_share=0.25, seed=k) != s for k in range(1, 5))


def test_too_few_patients_is_train_only_not_an_error():
    s = S.split_patients({"a": "rash", "b": "rash", "c": "rash"} | {f"p{i}": "psoriasis" for i in range(6)},
                         test_share=0.25)
    assert [s[p] for p in "abc"] == ["train"] * 3                      # train-only: never tested on
    assert sum(v == "test" for k, v in s.items() if k.startswith("p")) == 2
    assert S.train_only_diseases({"a": "rash", "b": "rash", "c": "rash", "d": "x"}, 0.25) == {
        "rash": {"patients": 3, "needed": 4}, "x": {"patients": 1, "needed": 4}}
    assert S.train_only_diseases({f"p{i}": "psoriasis" for i in range(4)}, 0.25) == {}
    with pytest.raises(ValueError, match="test_share"):
        S.split_patients({"a": "rash"}, test_share=1.5)


def test_rare_disease_is_listed_train_only_and_only_the_disease_task_refuses_it(tmp_path, capsys):
    """One disease of 3 patients: notebook 01 goes on (listing it with the patients it would
    need), the rash-vs-healthy evaluation uses its crops for training only, the disease task refuses."""
    from skinlib.evaluation import downstream as D
    from skinlib.io import load_json

    crops = make_split_crops(tmp_path / "crops", n_patients=9, per_patient=1, diseases=("common", "common", "rare"))
    out = capsys.readouterr().out
    assert "train-only: rare has 3 patient(s); a split needs 4" in out
    table = read_csv(crops / "split.csv")
    rare = [r for r in table if r["disease"] == "rare"]
    assert len(rare) == 3 and all(r["split"] == "train" and r["note"].startswith("train-only: rare") for r in rare)
    assert all(r["note"] == "" for r in table if r["disease"] == "common")
    assert load_json(crops / "summary.json")["split"]["train_only"] == {"rare": {"patients": 3, "needed": 4}}
    assert {r["disease"] for r in list_crop_rows(crops, split="test")} == {"common"}
    cfg = D.DownstreamConfig(image_size=8)
    real = D.real_examples(crops, cfg)                                   # rash-vs-healthy: fine
    assert set(real.split) == {"train", "test"}
    with pytest.raises(ValueError, match=r"disease task needs test patients.*\['rare'\].*rare has 3 patient"):
        D.real_examples(crops, D.DownstreamConfig(image_size=8, task="disease"))


def test_no_disease_can_be_split_fails_only_the_evaluation(tmp_path, capsys):
    crops = make_split_crops(tmp_path / "crops", n_patients=3, per_patient=1)
    assert "NO TEST PATIENTS" in capsys.readouterr().out
    assert set(S.read_split(crops).values()) == {"train"}
    assert len(list_crop_rows(crops, split="train")) == 3                # generators can still train
    with pytest.raises(ValueError, match="no crop of the 'test' split: every disease is too small.*has 3 patient"):
        list_crop_rows(crops, split="test")


def test_write_split_marks_every_manifest_and_every_stage_sees_the_same_split(tmp_path):
    crops = make_split_crops(tmp_path / "crops", n_patients=8)
    table = {r["patient"]: r["split"] for r in read_csv(crops / "split.csv")}
    for manifest in (crops / "manifest.csv", crops / "healthy" / "manifest.csv"):
        for r in read_csv(manifest):
            assert r["split"] == table[r["patient"]]
    assert S.read_split(crops) == table
    train_pats = {r["patient"] for r in CropDataset(crops, split="train").rows}      # DCGAN / CVAE / GLIDE input
    test_pats = {r["patient"] for r in list_crop_rows(crops, split="test")}          # evaluation's test set
    assert train_pats == {p for p, s in table.items() if s == "train"}
    assert test_pats == {p for p, s in table.items() if s == "test"} and not train_pats & test_pats
    before = (crops / "manifest.csv").read_bytes()
    S.write_split(crops, test_share=0.25, seed=0)                   # idempotent
    assert (crops / "manifest.csv").read_bytes() == before
    S.write_split(crops, test_share=0.5, seed=0)
    assert sum(v == "test" for v in S.read_split(crops).values()) == 4


def test_split_shares_test_patients_over_skin_groups():
    """With strata (Fitzpatrick groups), every group gets its proportional share of test patients;
    a plain seeded draw can leave a group with one or none."""
    patients = {f"p{i}": "rash" for i in range(60)}
    groups = {f"p{i}": ("I-II", "III-IV", "V-VI")[i % 3] for i in range(60)}
    for seed in range(5):
        s = S.split_patients(patients, test_share=0.3, seed=seed, strata=groups)
        per = {g: sum(s[p] == "test" for p in patients if groups[p] == g) for g in ("I-II", "III-IV", "V-VI")}
        assert per == {"I-II": 6, "III-IV": 6, "V-VI": 6}, per
    assert S.split_patients(patients, 0.3, 0, strata=groups) == S.split_patients(patients, 0.3, 0, strata=groups)
    uneven = {p: ("V-VI" if i < 10 else "I-II") for i, p in enumerate(patients)}
    s = S.split_patients(patients, test_share=0.3, seed=0, strata=uneven)
    assert sum(s[p] == "test" for p in patients if uneven[p] == "V-VI") == 3      # 18 x 10 / 60
