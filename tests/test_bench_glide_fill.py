"""benchmarks/bench_glide_fill.py scores, by default, train-patient crops the model was not trained
on (design choices are made on train patients, never on test patients: issue 17 item 8)."""
from __future__ import annotations

import json

import pytest

from skinlib.data.dataset import list_crop_rows
from skinlib.glide.finetune import select_rows

from _eval_data import make_split_crops
from _scripts import load_script


def _bench():
    return load_script("benchmarks/bench_glide_fill.py")


def test_validation_split_is_the_unseen_train_crops(tmp_path):
    crops = make_split_crops(tmp_path / "crops", n_patients=8, per_patient=4)
    weights = tmp_path / "w"
    weights.mkdir()
    models = {"base": {"trained_on_split": "train", "data_selection": {"max_images": 5, "seed": 3}},
              "upsample": {"trained_on_split": "train", "data_selection": {"max_images": 4, "seed": 7}}}
    (weights / "glide_options.json").write_text(json.dumps({"format": 1, "models": models}))
    bench = _bench()
    rows = bench.scored_rows(crops, weights, "validation")
    seen = {r["image"] for r in select_rows(crops, "train", 5, 3)} | {r["image"] for r in select_rows(crops, "train", 4, 7)}
    train = {r["image"] for r in list_crop_rows(crops, "train")}
    assert {r["image"] for r in rows} == train - seen and len(rows) >= len(train) - 9
    assert not {r["image"] for r in rows} & {r["image"] for r in list_crop_rows(crops, "test")}
    assert [r["image"] for r in bench.scored_rows(crops, weights, "test")] == [r["image"] for r in list_crop_rows(crops, "test")]
    (weights / "glide_options.json").write_text(json.dumps({"format": 1, "models": {"base": {"trained_on_split": "train"}}}))
    with pytest.raises(SystemExit, match="data_selection"):
        bench.scored_rows(crops, weights, "validation")
