"""skinlib.evaluation.intervals: weighted metrics equal their direct definitions; the two-level bootstrap
intervals cover the true value at about their nominal rate on simulated data."""
import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from skinlib.evaluation.intervals import BootstrapPlan, metric_draws, summarize_metric


def _probas(scores):
    p = 1 / (1 + np.exp(-scores))
    return np.stack([1 - p, p], 1)


def test_weighted_metrics_equal_sklearn_on_expanded_data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    s = rng.normal(size=40) + y
    s[:5] = s[5:10]                                    # ties
    w = rng.integers(0, 3, size=(3, 40)).astype(float)
    p = _probas(s)
    for b in range(3):
        idx = np.repeat(np.arange(40), w[b].astype(int))
        assert metric_draws("auroc", w[b:b + 1], y, p)[0] == pytest.approx(roc_auc_score(y[idx], s[idx]))
        assert metric_draws("balanced_accuracy", w[b:b + 1], y, p)[0] == pytest.approx(
            balanced_accuracy_score(y[idx], (s[idx] > 0).astype(int)))


def test_sensitivity_at_specificity_direct():
    y = np.array([0] * 10 + [1] * 4)
    s = np.array(list(range(10)) + [8.5, 9.5, 3.0, 10.0], dtype=float)
    # 90 % specificity: threshold = 9th smallest negative (8); positives above 8: 8.5, 9.5, 10 -> 3/4
    assert metric_draws("sens_at_spec", np.ones((1, 14)), y, _probas(s), specificity=0.9)[0] == pytest.approx(0.75)


def test_multiclass_auroc_is_one_vs_rest_macro():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 10)
    p = rng.dirichlet([1, 1, 1], size=30)
    p[np.arange(30), y] += 0.3
    p /= p.sum(1, keepdims=True)
    assert metric_draws("auroc", np.ones((1, 30)), y, p)[0] == pytest.approx(
        roc_auc_score(y, p, multi_class="ovr", average="macro"))


def _simulate(seed, n_patients=6, reps=4, gain=0.3, n_pos=8, n_neg=6, n_boot=200):
    """Scores of two arms on a test set of ``n_patients`` (patients differ in how visible their
    rash is; repetitions differ in how well training went). Returns the paired-gain interval and
    the true difference of population AUROCs (closed form)."""
    rng = np.random.default_rng(seed)
    pats = np.repeat(np.arange(n_patients), n_pos + n_neg)
    y = np.tile([1] * n_pos + [0] * n_neg, n_patients)
    sd_v, sd_r, sd_e, sd_d = 0.5, 0.3, 1.0, 0.5
    v = rng.normal(0, sd_v, n_patients)[pats] * (y == 1)
    eps = rng.normal(0, sd_e, len(y))
    probas = {0.0: [], gain: []}
    for _ in range(reps):
        shared = rng.normal(0, sd_r)
        for d in probas:
            eta = shared + rng.normal(0, sd_r)
            probas[d].append(_probas((1 + d + eta + v) * (y == 1) + eps + rng.normal(0, sd_d, len(y))))
    plan = BootstrapPlan.make(pats.astype(str), reps, n_boot, seed)
    est = summarize_metric(plan, y, probas[gain], lambda w, yy, p: metric_draws("auroc", w, yy, p),
                           baseline=probas[0.0])
    sd = np.sqrt(2 * sd_r ** 2 + sd_v ** 2 + 2 * (sd_e ** 2 + sd_d ** 2))
    return est, norm.cdf((1 + gain) / sd) - norm.cdf(1 / sd)


@pytest.mark.slow
def test_paired_gain_intervals_cover_the_true_difference():
    """Coverage over test-patient sampling and independent repetitions; the intervals are
    conditional on the one train/test split (generators are trained once on its train side)."""
    hits = []
    for seed in range(200):
        est, true = _simulate(seed)
        hits.append(est["low"] <= true <= est["high"])
    coverage = np.mean(hits)
    assert 0.90 <= coverage <= 0.99, coverage


def test_interval_is_wider_with_fewer_test_patients():
    few = np.mean([np.subtract(*[_simulate(s, n_patients=4)[0][k] for k in ("high", "low")]) for s in range(10)])
    many = np.mean([np.subtract(*[_simulate(s, n_patients=16)[0][k] for k in ("high", "low")]) for s in range(10)])
    assert few > 1.5 * many


def test_group_summaries_at_every_share_gain_and_too_few_patients():
    """Per Fitzpatrick group: AUROC and the paired gain over real only, with intervals, when the
    group has enough test patients; a note instead of an interval when it has too few, or one class."""
    from skinlib.evaluation import downstream as D

    rng = np.random.default_rng(1)
    patients = [f"p{i}" for i in range(10) for _ in range(6)]
    y = np.tile([0, 1, 0, 1, 0, 1], 10)
    groups = np.array(["I-II"] * 36 + ["V-VI"] * 12 + ["III-IV"] * 12)
    groups[48:] = "III-IV"
    y[48:] = 1                                     # III-IV: ill crops only
    plan = BootstrapPlan.make(patients, n_reps=3, n_boot=200, seed=0)
    base = [_probas(rng.normal(size=60) + 0.5 * y) for _ in range(3)]
    better = [_probas(np.log(b[:, 1] / b[:, 0]) + 2.0 * (y - 0.5)) for b in base]   # same noise, more signal
    out = D._summaries(plan, y, groups, better, base, ["healthy", "ill"], D.DownstreamConfig())
    big = out["per_skin_type"]["I-II"]
    assert big["n_patients"] == 6 and big["gain_auroc"]["low"] > 0 and big["auroc"]["mean"] > big["gain_auroc"]["mean"] - 1
    assert "sens_at_spec" in big and "gain_sens_at_spec" in big
    small = out["per_skin_type"]["V-VI"]
    assert small["n_patients"] == 2 and "auroc" not in small and "too few" in small["note"]
    assert "one class" in out["per_skin_type"]["III-IV"]["note"]
    assert set(out["per_class_gain"]) == {"healthy", "ill"}
    view = D.share_view(out)
    assert view["per_skin_type"] is out["per_skin_type"] and "per_class_gain" in view
