"""The features detector (skinlib.evaluation.linear_probe), the per-patient cap, the primary
endpoint's statistics (skinlib.evaluation.power) and the controls of run_downstream with it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from skinlib.evaluation import downstream as D
from skinlib.evaluation import linear_probe as LP
from skinlib.evaluation import power as P
from skinlib.evaluation.features import RandomConvFeatures

from _eval_data import make_samples, make_split_crops

PROBE = dict(repetitions=3, fractions=(0.5, 1.0), n_boot=200, detector="features", probe_dim=8,
             probe_c_grid=(0.1, 1.0), feature_image_size=32, max_pairs_per_patient=None)


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    return make_split_crops(tmp_path_factory.mktemp("crops") / "crops", n_patients=10, per_patient=4, test_share=0.3)


def _with_features(real, pools, cfg):
    ext = RandomConvFeatures(seed=0, input_size=32)
    cache: dict = {}
    ex = real.examples
    ex.feats = LP.attach_features(ex.file, ext, cache=cache, image_size=cfg.feature_image_size)
    ex.feats_aug = LP.attach_features(ex.file, ext, cache=cache, image_size=cfg.feature_image_size, augment_seed=0)
    for p in pools:
        p.feats = LP.attach_features(p.file, ext, cache=cache, image_size=cfg.feature_image_size)
    return cache


def test_balanced_weights_give_each_class_and_the_synthetic_share_their_weight():
    y = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    syn = np.array([0, 0, 0, 0, 0, 1, 1, 1], bool)
    w = LP.balanced_weights(y, syn, 2, 0.5)
    assert w.mean() == pytest.approx(1.0)
    assert w[y == 0].sum() == pytest.approx(w[y == 1].sum())
    assert w[(y == 1) & syn].sum() == pytest.approx(w[(y == 1) & ~syn].sum())
    w = LP.balanced_weights(y, syn, 2, 0.25)
    assert w[(y == 1) & syn].sum() == pytest.approx(w[y == 1].sum() * 0.25)


def test_attach_features_embeds_each_file_once_and_augmented_views_differ(crops):
    cfg = D.DownstreamConfig(**PROBE)
    real = D.real_examples(crops, cfg)
    ext = RandomConvFeatures(seed=0, input_size=32)
    calls = []
    orig = ext.forward
    ext.forward = lambda x: calls.append(len(x)) or orig(x)
    cache: dict = {}
    f1 = LP.attach_features(real.examples.file[:10], ext, cache=cache, image_size=32)
    f2 = LP.attach_features(real.examples.file[:10], ext, cache=cache, image_size=32)
    assert sum(calls) == 10 and torch.equal(f1, f2) and f1.shape[0] == 10
    aug = LP.attach_features(real.examples.file[:10], ext, cache=cache, image_size=32, augment_seed=0)
    assert not torch.allclose(aug, f1)


def test_cap_per_patient_keeps_at_most_cap_of_each_label_per_patient():
    items = [(None, {"patient": f"p{i % 3}"}, i % 2) for i in range(60)]
    out = D.cap_per_patient(items, 4, seed=0)
    counts: dict = {}
    for _, r, y in out:
        counts[(r["patient"], y)] = counts.get((r["patient"], y), 0) + 1
    assert set(counts.values()) == {4} and len(counts) == 6
    assert out == D.cap_per_patient(items, 4, seed=0) and D.cap_per_patient(items, None) == items


def test_probe_learns_the_task_chooses_c_on_train_patients_and_runs_every_control(crops, tmp_path):
    cfg = D.DownstreamConfig(**PROBE)
    real = D.real_examples(crops, cfg)
    gen, _ = D.synthetic_examples(make_samples(tmp_path / "gen", n=20, size=32), real, cfg, name="gen")
    oracle, _ = D.synthetic_examples(make_samples(tmp_path / "orc", n=12, size=32, seed=5), real, cfg, name="orc")
    oracle.patient = [""] * len(oracle)
    _with_features(real, [gen, oracle], cfg)
    res = D.run_downstream(crops, {"gen": gen}, cfg, real, oracle=oracle, progress=False)
    assert res.notes["probe"]["penalty"] in PROBE["probe_c_grid"]
    assert set(res.arms) == {D.REAL_ONLY, D.AUGMENT, D.COPIES, D.OVERSAMPLE, D.ORACLE, D.ORACLE_ILL, "real + gen",
                             "real + standard aug + gen", "synthetic only: gen", "synthetic only: oracle"}
    assert all(e["status"] == "ok" for e in res.arms.values()), res.arms
    base = res.arms[D.REAL_ONLY]["fractions"]["1.0"]["metrics"]["auroc"]
    assert base["mean"] > 0.9
    g = res.arms[D.COPIES]["fractions"]["0.5"]["gain"]["auroc"]
    assert {"se", "se_patients", "sd_repetitions", "df"} <= set(g) and g["low"] <= 0 <= g["high"]
    assert res.notes["label_check"]["gen"]["called_ill"] > 0.5


def test_probe_refuses_examples_without_features(crops):
    cfg = D.DownstreamConfig(**PROBE)
    real = D.real_examples(crops, cfg)
    with pytest.raises(ValueError, match="attach_features"):
        D.run_downstream(crops, {}, cfg, real, progress=False)


def test_label_check_reports_the_share_called_ill():
    ex = D.Examples(torch.zeros(4, 3, 2, 2, dtype=torch.uint8), torch.tensor([1, 1, 1, 1]), [""] * 4, ["f"] * 4)
    score = lambda e: np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    out = D.label_check(score, {"g": ex}, "rash-vs-healthy", ["healthy", "ill"])
    assert out == {"g": {"n": 4, "called_ill": 0.5}}


def test_holm_matches_a_hand_computed_example():
    out = P.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": float("nan")})
    assert out["a"]["p_holm"] == pytest.approx(0.03) and out["a"]["reject"]
    assert out["c"]["p_holm"] == pytest.approx(0.06) and not out["c"]["reject"]
    assert out["b"]["p_holm"] == pytest.approx(0.06) and not out["b"]["reject"]
    assert not out["d"]["reject"]


def test_minimum_detectable_gain_and_t_test():
    from scipy.stats import t

    assert P.minimum_detectable_gain(0.01, 19) == pytest.approx((t.ppf(0.975, 19) + t.ppf(0.8, 19)) * 0.01)
    assert P.t_test({"mean": 0.05, "se": 0.02, "df": 19})["p"] == pytest.approx(2 * t.sf(2.5, 19))
    assert np.isnan(P.minimum_detectable_gain(float("nan"), 19))


def test_verdict_is_generated_from_the_numbers():
    def arm(g, lo, hi, p, status="ok"):
        return {"status": status, "by_fraction": {"0.25": {"gain": {"auroc": {
            "mean": g, "low": lo, "high": hi, "se": (hi - lo) / 4, "df": 19, "se_patients": 0.01, "sd_repetitions": 0.0}}}}}
    arms = {D.ORACLE_ILL: arm(0.08, 0.03, 0.13, 0.0), D.COPIES: arm(0.0, -0.01, 0.01, 1.0),
            "real + gen": arm(0.06, 0.02, 0.10, 0.0), "real + bad": arm(-0.001, -0.02, 0.02, 1.0)}
    prim = P.primary_analysis(arms, "0.25", ["real + gen", "real + bad"])
    text = P.verdict(prim, {"positive": D.ORACLE_ILL, "negative": D.COPIES})
    assert "sees a real gain" in text and "contains 0" in text and "better than real only: real + gen" in text
    arms[D.ORACLE_ILL] = arm(0.02, -0.01, 0.05, 0.2)
    text = P.verdict(P.primary_analysis(arms, "0.25", ["real + gen"]), {"positive": D.ORACLE_ILL, "negative": D.COPIES})
    assert "did NOT see a real gain" in text
