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


def test_too_few_patients_is_a_clear_error():
    with pytest.raises(ValueError, match=r"'rash' has 3 patient\(s\).*i\.e\. 4 patients"):
        S.split_patients({"a": "rash", "b": "rash", "c": "rash"}, test_share=0.25)
    with pytest.raises(ValueError, match="test_share"):
        S.split_patients({"a": "rash"}, test_share=1.5)


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
