"""Out-of-distribution evaluation, oversampling and the cost line (issue 20): the held-out site's
patients are tested by every arm like the in-distribution test patients, never trained on."""
from __future__ import annotations

import json

import numpy as np
import pytest

from skinlib.evaluation import downstream as D
from skinlib.evaluation import evaluate as E
from skinlib.evaluation.provenance import train_data_sha256
from skinlib.io import save_json

from _eval_data import make_samples, make_split_crops


def test_balanced_draw_gives_every_group_the_same_share():
    groups = ["I-II"] * 90 + ["V-VI"] * 10 + [""] * 20
    usable = np.arange(120)
    draw = D.balanced_draw(groups, usable, seed=3)
    counts = {g: sum(groups[i] == g for i in draw) for g in ("I-II", "V-VI", "")}
    assert len(draw) == 120 and counts == {"I-II": 40, "V-VI": 40, "": 40}
    assert np.array_equal(draw, D.balanced_draw(groups, usable, seed=3))
    sub = D.balanced_draw(groups, np.arange(85, 100), seed=0)           # only indices it was given
    assert set(sub.tolist()) <= set(range(85, 100)) and len(sub) == 15


@pytest.fixture(scope="module")
def ood_eval(tmp_path_factory):
    root = tmp_path_factory.mktemp("ood")
    crops = make_split_crops(root / "crops", n_patients=12, ood_patients=4)
    gen = make_samples(root / "gen", train_data_sha256=train_data_sha256(crops))
    save_json(gen / "view.json", {"variants": 40, "timing": {"seconds_per_variant": 2.5, "device": "cpu"}})
    out = root / "eval"
    rc = E.main(["--real", str(crops), "--generated", f"gen={gen}", "--out", str(out), "--features", "local-random",
                 "--repetitions", "3", "--fractions", "0.5", "1.0", "--n-samples", "20", "--threads", "1"])
    assert rc == 0
    return crops, out, json.loads((out / "results.json").read_text())


def test_held_out_site_gets_its_own_column_for_every_arm_and_is_never_trained_on(ood_eval):
    crops, out, res = ood_eval
    ood = res["ood"]
    assert ood["sites"] == ["B"] and ood["n_test_patients"] == 4 and res["n_test_patients"] == 2
    ok = {a for a, e in res["arms"].items() if e["status"] == "ok"}
    assert set(ood["arms"]) == ok and D.OVERSAMPLE in ok
    g = ood["arms"]["real + gen"]["by_fraction"]["0.5"]
    assert {"mean", "low", "high"} <= set(g["metrics"]["auroc"]) and "auroc" in g["gain"]
    assert set(g["per_skin_type"]) == {"V-VI"} and g["per_skin_type"]["V-VI"]["n_patients"] == 4
    assert "gain_auroc" in g["per_skin_type"]["V-VI"]
    assert ood["arms"][D.REAL_ONLY]["by_fraction"]["1.0"]["gain"] == {}
    # the OOD patients never enter training: every classifier saw the site-A train patients only
    assert {int(r["train_patients"]) for r in __import__("skinlib.io", fromlist=["read_csv"]).read_csv(
        out / "downstream_runs.csv") if r["fraction"] == "1.0"} == {res["n_train_patients"]} == {6}
    md = (out / "comparison.md").read_text()
    assert "### Out of distribution: held-out site B (4 patients" in md and "| real + oversampling |" in md
    assert (out / "group_gains.png").is_file()


def test_cost_line_uses_the_measured_seconds_and_gives_a_cost_per_point_only_for_a_shown_gain(ood_eval):
    _, out, res = ood_eval
    cost = res["augmentation_cost"]["gen"]
    assert cost["variants"] == 40 and cost["seconds"] == pytest.approx(100.0) and cost["share"] == "0.5"
    for where in ("in_distribution", "out_of_distribution"):
        e = cost[where]
        shown = e["gain"]["low"] is not None and e["gain"]["low"] > 0
        assert (e["seconds_per_auroc_point"] is not None) == shown
        if shown:
            assert e["seconds_per_auroc_point"] == pytest.approx(100.0 / (100 * e["gain"]["mean"]))
    assert "gen: 40 variants, 100 s (2.50 s/variant on cpu)" in (out / "comparison.md").read_text()


def test_no_held_out_site_says_so_and_a_one_class_site_gets_a_note(tmp_path):
    crops = make_split_crops(tmp_path / "crops", n_patients=8)
    cfg = D.DownstreamConfig(detector="cnn", image_size=16, steps=5, repetitions=2, fractions=(1.0,), n_boot=50,
                             synthetic_only=False, augmented_generator_arms=False)
    real = D.real_examples(crops, cfg)
    assert D.run_downstream(crops, {}, cfg, real, progress=False).ood is None
    first = real.examples.patient[int(np.flatnonzero(real.split == "train")[0])]
    real.split[np.flatnonzero((np.asarray(real.examples.patient) == first) & (real.examples.y.numpy() == 1))] = "ood"
    res = D.run_downstream(crops, {}, cfg, real, progress=False)        # the held-out set: ill crops only
    assert "no example of class(es) ['healthy']" in res.ood["note"]
    assert "no held-out site" in E.ood_record(D.run_downstream(crops, {}, cfg, D.real_examples(crops, cfg),
                                                               progress=False), crops)["note"]
