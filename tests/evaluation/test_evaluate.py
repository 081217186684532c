"""The evaluation command (skinlib.evaluation.evaluate, skinlib.evaluation.provenance): leaks are refused — a planted
leak can never show a gain —, unverifiable folders pass as such, results.json has the promised
shape, and a run where no arm can run fails loudly."""
from __future__ import annotations

import json
import shutil

import pytest

from skinlib.evaluation import downstream as D
from skinlib.evaluation import evaluate as E
from skinlib.io import read_csv, write_csv
from skinlib.evaluation.provenance import LeakError, check_generated_folder, train_data_sha256

from _eval_data import make_samples, make_split_crops, make_variants

TINY = dict(image_size=16, steps=30, batch_size=16, width=8, repetitions=2, fractions=(0.5, 1.0), n_boot=200)


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    return make_split_crops(tmp_path_factory.mktemp("ev") / "crops")


def _rows(crops, split):
    return [r for r in read_csv(crops / "manifest.csv") if r["split"] == split]


def test_variants_of_train_crops_pass_and_of_test_crops_are_refused(crops, tmp_path):
    ok = make_variants(tmp_path / "ok", crops, _rows(crops, "train")[:6])
    assert check_generated_folder(ok, crops).status == "verified"
    leak = make_variants(tmp_path / "leak", crops, _rows(crops, "train")[:3] + _rows(crops, "test")[:2])
    with pytest.raises(LeakError, match="2 of 5 images were made from crops of TEST patients"):
        check_generated_folder(leak, crops)


def test_variants_identified_by_content_not_by_name(crops, tmp_path):
    other = make_split_crops(tmp_path / "other", seed=7)      # same file names, other pixels
    foreign = make_variants(tmp_path / "foreign", other, _rows(other, "train")[:4])
    with pytest.raises(LeakError, match="not among the current crops"):
        check_generated_folder(foreign, crops)
    noname = make_variants(tmp_path / "nohash", crops, _rows(crops, "train")[:4])
    rows = read_csv(noname / "manifest.csv")
    write_csv(noname / "manifest.csv", [{k: v for k, v in r.items() if k != "source_sha256"} for r in rows])
    with pytest.raises(LeakError, match="no source_sha256"):
        check_generated_folder(noname, crops)


def test_generators_trained_on_all_or_on_other_crops_are_refused(crops, tmp_path):
    good = make_samples(tmp_path / "good", train_data_sha256=train_data_sha256(crops))
    assert check_generated_folder(good, crops).status == "verified"
    with pytest.raises(LeakError, match="not the train patients only"):
        check_generated_folder(make_samples(tmp_path / "all", trained_on_split="all"), crops)
    with pytest.raises(LeakError, match="trained on other crops"):
        check_generated_folder(make_samples(tmp_path / "stale", train_data_sha256="0" * 16), crops)


def test_copies_of_test_crops_without_provenance_are_refused(crops, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    for i, r in enumerate(_rows(crops, "test")[:3]):
        shutil.copy(crops / r["image"], plain / f"{i:06d}.png")
    with pytest.raises(LeakError, match="pixel-exact copies of TEST-patient crops"):
        check_generated_folder(plain, crops)
    outside = make_samples(tmp_path / "outside", trained_on_split="")
    assert check_generated_folder(outside, crops).status == "unverified"
    official = make_samples(tmp_path / "official", trained_on_split="none")     # e.g. OpenAI's weights, never trained here
    assert check_generated_folder(official, crops).status == "unverified"


def _noisy_copies(folder, crops, rows):
    """Near (not pixel-exact) copies of crops, without any provenance: only the memorisation check sees them."""
    import numpy as np
    from PIL import Image

    from skinlib.io import save_png

    rng = np.random.default_rng(0)
    for i, r in enumerate(rows):
        img = np.asarray(Image.open(crops / r["image"]).convert("RGB")).astype(int)
        save_png(folder / f"{i:06d}.png", np.clip(img + rng.integers(-3, 4, img.shape), 0, 255).astype(np.uint8))
    return folder


def test_evaluate_command_writes_results_and_refuses_the_planted_leak(crops, tmp_path, capsys):
    leak = make_variants(tmp_path / "leak", crops, _rows(crops, "test"))
    noisy = _noisy_copies(tmp_path / "noisy", crops, _rows(crops, "test"))
    gen = make_samples(tmp_path / "gen", train_data_sha256=train_data_sha256(crops))
    unknown = make_samples(tmp_path / "unknown", trained_on_split="", seed=5)       # training unknown
    optin = make_samples(tmp_path / "optin", trained_on_split="", seed=6)
    out = tmp_path / "eval"
    rc = E.main(["--real", str(crops), "--generated", f"leak={leak}", f"gen={gen}", f"noisy={noisy}", "missing=/nonexistent",
                 f"unknown={unknown}", f"optin={optin}", "--allow-unverified", "optin",
                 "--allow-unverified", "noisy",    # opted in: still refused by the memorisation check
                 "--out", str(out), "--features", "local-random", "--repetitions", "2", "--steps", "20",
                 "--fractions", "0.5", "1.0", "--n-samples", "20", "--threads", "1"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    # unknown training: refused unless opted in, and then marked unverified in the row itself
    assert res["arms"]["real + unknown"]["status"] == "refused"
    assert "--allow-unverified unknown" in res["arms"]["real + unknown"]["reason"]
    assert res["arms"]["real + optin"]["status"] == "ok" and res["arms"]["real + optin"]["provenance"] == "unverified"
    assert res["arms"]["real + gen"]["provenance"] == "verified" and res["settings"]["allow_unverified"] == ["noisy", "optin"]
    table = {r["arm"]: r for r in read_csv(out / "comparison.csv")}
    assert table["real + optin"]["provenance"] == "unverified" and table["synthetic only: optin"]["provenance"] == "unverified"
    assert "| real + optin | ok, **unverified**" in (out / "comparison.md").read_text()
    assert res["arms"]["real + leak"]["status"] == "refused" and "TEST patients" in res["arms"]["real + leak"]["reason"]
    runs = read_csv(out / "downstream_runs.csv")
    assert not any(r["arm"] in ("real + leak", "real + noisy") for r in runs)   # never trained: never shows a gain
    assert res["arms"]["real + noisy"]["status"] == "refused"
    assert "near-copies of TEST-patient crops" in res["arms"]["real + noisy"]["reason"]
    assert res["memorisation"]["noisy"]["test_copy_fraction"] > 0.9
    assert res["generators"]["missing"]["status"] == "not available"
    assert res["arms"][D.ORACLE]["status"] == "absent" and "demo data" in res["arms"][D.ORACLE]["reason"]
    for arm in (D.REAL_ONLY, D.AUGMENT, D.COPIES, "real + gen", "synthetic only: gen"):
        assert res["arms"][arm]["status"] == "ok", res["arms"][arm]
        assert {"mean", "low", "high"} <= set(res["arms"][arm]["metrics"]["auroc"])
    assert {"mean", "low", "high", "se", "se_patients", "sd_repetitions"} <= set(res["arms"]["real + gen"]["gain"]["auroc"])
    assert res["detector"] == "features" and res["arms"]["real + standard aug + gen"]["status"] == "ok"
    prim = res["primary"]
    assert prim["fraction"] == "0.5" and "real + gen" in prim["hypotheses"] and D.COPIES not in prim["hypotheses"]
    assert prim["design_mdg"] >= 0 and "p_holm" in prim["arms"]["real + gen"]   # a perfect tiny task: se 0
    assert "Negative control" in res["verdict"] and res["verdict"] in (out / "comparison.md").read_text()
    assert set(res["label_check"]) >= {"gen", "copies"} and 0 <= res["label_check"]["gen"]["called_ill"] <= 1
    assert res["memorisation_calibration"]["nominal_percent"] == 1.0
    assert "real + gen" in (out / "comparison.md").read_text()
    assert set(res["arms"]["real + gen"]["by_fraction"]) == {"0.5", "1.0"}
    assert res["n_test_patients"] == 2 and res["n_train_patients"] == 6
    assert {"near_copy_fraction"} <= set(res["memorisation"]["gen"])
    assert res["memorisation"]["copies"]["near_copy_fraction"] > 0.9          # the copies control is flagged
    assert res["settings"]["features"]["name"]
    md = (out / "comparison.md").read_text()
    assert "| real + leak | **refused**" in md and "(memorised)" in md
    for f in ("comparison.csv", "downstream_runs.csv", "data_efficiency.png", "gains.png", "memorisation.png"):
        assert (out / f).is_file(), f


def test_no_arm_ran_is_a_failure_not_ok(crops, tmp_path, monkeypatch):
    from skinlib.errors import ArmDataError

    def broken(*a, **k):
        raise ArmDataError("planted")

    monkeypatch.setattr(D, "_probe_job", broken)
    with pytest.raises(E.EvaluationFailed, match="no arm of the evaluation ran"):
        E.run_evaluation(crops, {}, tmp_path / "ev", config=D.DownstreamConfig(**TINY), features="local-random",
                         n_samples=20, image_size=32, progress=False)
    arms = json.loads((tmp_path / "ev" / "results.json").read_text())["arms"]
    assert {a: e["status"] for a, e in arms.items() if a != D.ORACLE} == {
        a: "failed" for a in (D.REAL_ONLY, D.AUGMENT, D.COPIES, D.OVERSAMPLE)}


@pytest.mark.parametrize("bucket", ["healthy", "low_contrast"])
def test_pixel_copies_of_test_patients_healthy_and_low_contrast_windows_are_refused(crops, tmp_path, bucket):
    """The pixel-copy check hashes every bucket of the test patients, not only the ill-skin crops:
    a re-saved (other bytes, same pixels) copy of a test patient's healthy or low-contrast window is
    refused. (Checked by removing the buckets from provenance.crop_hashes: this test then fails.)"""
    import numpy as np
    from PIL import Image

    src = crops
    if bucket == "low_contrast":          # the tiny fixture has no low-contrast bucket: plant one
        src = tmp_path / "crops"
        shutil.copytree(crops, src)
        (src / "low_contrast").mkdir(exist_ok=True)
        rows = [dict(r) for r in read_csv(src / "healthy" / "manifest.csv") if r["split"] == "test"][:2]
        for r in rows:
            shutil.copy(src / "healthy" / r["image"], src / "low_contrast" / r["image"])
        write_csv(src / "low_contrast" / "manifest.csv", rows)
    rows = [r for r in read_csv(src / bucket / "manifest.csv") if r["split"] == "test"][:2]
    plain = tmp_path / "plain"
    plain.mkdir()
    for i, r in enumerate(rows):
        pixels = np.asarray(Image.open(src / bucket / r["image"]).convert("RGB"))
        Image.fromarray(pixels).save(plain / f"{i:06d}.png", compress_level=1, pnginfo=None)   # other bytes, same pixels
    assert (plain / "000000.png").read_bytes() != (src / bucket / rows[0]["image"]).read_bytes()
    with pytest.raises(LeakError, match="pixel-exact copies of TEST-patient crops"):
        check_generated_folder(plain, src)
