"""The downstream protocol (skinlib.evaluation.downstream): real examples from the split crops folder, the
train-patient subsets of the data-efficiency curve, class-balanced same-budget training, the
standard augmentation, and the arms of run_downstream on a tiny learnable task."""
from __future__ import annotations

import pytest
import torch

from skinlib.evaluation import downstream as D
from skinlib.io import read_csv, write_csv

from _eval_data import make_samples, make_split_crops

TINY = dict(image_size=16, steps=40, batch_size=16, width=8, repetitions=2, fractions=(0.5, 1.0), n_boot=200,
            detector="cnn", max_pairs_per_patient=None, augmented_generator_arms=False)


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    return make_split_crops(tmp_path_factory.mktemp("crops") / "crops")


def test_real_examples_are_ill_crops_and_healthy_windows_with_their_split(crops):
    real = D.real_examples(crops, D.DownstreamConfig(**TINY))
    assert real.task == "rash-vs-healthy" and real.classes == ["healthy", "ill"]
    rows = read_csv(crops / "manifest.csv")
    healthy = read_csv(crops / "healthy" / "manifest.csv")
    assert len(real.examples) == len(rows) + len(healthy)
    assert int(real.examples.y.sum()) == len(rows)
    split = {r["patient"]: r["split"] for r in read_csv(crops / "split.csv")}
    assert [split[p] for p in real.examples.patient] == real.split.tolist()
    test_pats = set(real.side("test").patient)
    assert test_pats == {p for p, s in split.items() if s == "test"} and len(test_pats) == 2
    assert not test_pats & set(real.side("train").patient)


def test_real_examples_refuse_crops_without_split_or_healthy_bucket(crops, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(crops, bare)
    rows = read_csv(bare / "manifest.csv")
    write_csv(bare / "manifest.csv", [{k: v for k, v in r.items() if k != "split"} for r in rows])
    with pytest.raises(ValueError, match="re-run notebook 01"):
        D.real_examples(bare, D.DownstreamConfig(**TINY))
    nohealthy = tmp_path / "nohealthy"
    shutil.copytree(crops, nohealthy)
    (nohealthy / "healthy" / "manifest.csv").unlink()
    with pytest.raises(FileNotFoundError, match="healthy-skin windows"):
        D.real_examples(nohealthy, D.DownstreamConfig(**TINY))


def test_train_subsets_sizes_determinism_and_variety():
    pats = [f"p{i}" for i in range(12)]
    s = D.train_subsets(pats, (0.25, 0.5, 1.0), 4, seed=0)
    assert all(len(s[(0.25, r)]) == 3 and len(s[(0.5, r)]) == 6 and s[(1.0, r)] == sorted(pats, key=lambda p: int(p[1:]))
               for r in range(4))
    assert s == D.train_subsets(pats, (0.25, 0.5, 1.0), 4, seed=0)
    assert len({tuple(s[(0.25, r)]) for r in range(4)}) > 1          # a new subset per repetition
    assert len(D.train_subsets(["a", "b", "c"], (0.1,), 1, seed=0)[(0.1, 0)]) == 2   # never below 2 patients


def test_standard_augment_keeps_pixels_for_flips_and_rotations():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    y = D.standard_augment(x, g)
    assert y.dtype == torch.uint8 and y.shape == x.shape
    assert not torch.equal(x, y)
    # jitter changes colours, but flips/rotations alone are pixel permutations: the grey level
    # ordering of a constant image survives and a constant image stays constant
    flat = torch.full((4, 3, 8, 8), 100, dtype=torch.uint8)
    out = D.standard_augment(flat, g)
    assert all(len(torch.unique(o)) <= 3 for o in out)


def test_class_balanced_batches_draw_synthetic_at_the_configured_share(crops, monkeypatch):
    """With synthetic_share 1 every ill image must come from the synthetic pool, with 0 none."""
    real = D.real_examples(crops, D.DownstreamConfig(**TINY)).side("train")
    syn = D.Examples(torch.zeros(5, 3, 16, 16, dtype=torch.uint8), torch.ones(5, dtype=torch.long),
                     [""] * 5, ["s"] * 5, [""] * 5)
    seen = []
    orig = D.to_float

    def spy(x):
        seen.append(x.clone())
        return orig(x)

    monkeypatch.setattr(D, "to_float", spy)
    for share in (1.0, 0.0):
        seen.clear()
        cfg = D.DownstreamConfig(**{**TINY, "steps": 5, "synthetic_share": share})
        D.train_classifier(real, 2, cfg, seed=0, synthetic=syn)
        batches = torch.cat(seen)
        zero = (batches.flatten(1) == 0).all(1)      # the synthetic images are all black
        assert zero.any() == (share == 1.0)
        assert 0.3 < zero.float().mean() < 0.7 if share == 1.0 else not zero.any()


def test_protocol_learns_the_task_and_reports_every_arm(crops, tmp_path):
    cfg = D.DownstreamConfig(**TINY)
    real = D.real_examples(crops, cfg)
    copies_like = make_samples(tmp_path / "gen", n=20, size=16)
    syn, note = D.synthetic_examples(copies_like, real, cfg, name="gen")
    assert "20 images used" in note and int(syn.y.sum()) == 20
    res = D.run_downstream(crops, {"gen": syn}, cfg, real, progress=False)
    assert set(res.arms) == {D.REAL_ONLY, D.AUGMENT, D.COPIES, D.OVERSAMPLE, "real + gen", "synthetic only: gen"}
    assert all(e["status"] == "ok" for e in res.arms.values()), res.arms
    base = res.arms[D.REAL_ONLY]["fractions"]["1.0"]["metrics"]["auroc"]
    assert base["mean"] > 0.9 and base["low"] <= base["mean"] <= base["high"]
    assert "gain" in res.arms[D.COPIES]["fractions"]["0.5"] and not res.arms[D.REAL_ONLY]["fractions"]["1.0"]["gain"]
    assert set(res.arms["synthetic only: gen"]["fractions"]) == {"1.0"}
    assert len(res.per_run) == cfg.repetitions * (5 * 2 + 1)   # 5 arms (oversampling included) x 2 shares + synthetic only
    assert res.n_test_patients == 2 and res.n_train_patients == 6


def test_a_data_problem_fails_one_arm_and_a_programming_error_stops_the_evaluation(crops, monkeypatch):
    from skinlib.errors import ArmDataError

    cfg = D.DownstreamConfig(**TINY)
    real = D.real_examples(crops, cfg)
    orig = D.train_classifier
    planted = {"error": ArmDataError("planted data problem")}

    def broken(real_ex, num_classes, cfg, *, seed, synthetic=None, augment=False, real_classes=None):
        if augment:
            raise planted["error"]
        return orig(real_ex, num_classes, cfg, seed=seed, synthetic=synthetic, augment=augment, real_classes=real_classes)

    monkeypatch.setattr(D, "train_classifier", broken)
    res = D.run_downstream(crops, {}, cfg, real, progress=False)
    assert res.arms[D.AUGMENT]["status"] == "failed" and "planted data problem" in res.arms[D.AUGMENT]["reason"]
    assert res.arms[D.AUGMENT]["fractions"] == {}
    assert res.arms[D.REAL_ONLY]["status"] == "ok" and res.arms[D.REAL_ONLY]["fractions"]
    for bug in (TypeError("planted bug"), AttributeError("planted bug"), RuntimeError("shape mismatch")):
        planted["error"] = bug
        with pytest.raises(type(bug), match="planted bug|shape mismatch"):
            D.run_downstream(crops, {}, cfg, real, progress=False)


def test_refused_generators_are_never_trained(crops):
    cfg = D.DownstreamConfig(**TINY)
    real = D.real_examples(crops, cfg)
    res = D.run_downstream(crops, {}, cfg, real, refused={"leaky": "made from test crops"}, progress=False)
    assert res.arms["real + leaky"] == {"status": "refused", "reason": "made from test crops", "generator": "leaky",
                                        "fractions": {}}
    assert not any(r["arm"] == "real + leaky" for r in res.per_run)


def test_disease_task_when_the_data_has_several_diseases(tmp_path):
    crops = make_split_crops(tmp_path / "two", n_patients=8, diseases=("measles", "rubella"))
    cfg = D.DownstreamConfig(**{**TINY, "task": "disease"})
    real = D.real_examples(crops, cfg)
    assert real.task == "disease" and real.classes == ["measles", "rubella"]
    assert len(real.examples) == len(read_csv(crops / "manifest.csv"))          # ill crops only, no healthy bucket
    res = D.run_downstream(crops, {}, cfg, real, progress=False)
    assert res.arms[D.REAL_ONLY]["fractions"]["1.0"]["metrics"]["auroc"]["mean"] > 0.9
    with pytest.raises(ValueError, match="two or more diseases"):
        D.real_examples(make_split_crops(tmp_path / "one"), cfg)
