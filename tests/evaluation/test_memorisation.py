"""Memorisation check (skinlib.evaluation.memorisation): copies of train crops are flagged, real test crops are
not, and the closest-pairs figure shows the right pairs. Tiny 32 px crops, random-conv features
(fixed seed; the rule does not depend on which features)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from skinlib.evaluation import memorisation as MM
from skinlib.evaluation import metrics as M
from test_metrics import make_crops, make_generated


@pytest.fixture(scope="module")
def split_crops(tmp_path_factory):
    """Train and test crops of different patients (two folders, like the manifest's split)."""
    tmp = tmp_path_factory.mktemp("mem")
    train = M.load_folder_images(make_crops(tmp / "train", n_patients=10, per_patient=8, size=32, seed=0),
                                 name="train", verbose=False)
    test = M.load_folder_images(make_crops(tmp / "test", n_patients=10, per_patient=8, size=32, seed=1),
                                name="test", verbose=False)
    noise = M.load_folder_images(make_generated(tmp / "noise", n=30, size=32), name="noise", verbose=False)
    return train, test, noise


def _copies(train, idx, name, jitter=0):
    imgs = train.images[idx].clone()
    if jitter:
        g = torch.Generator().manual_seed(0)
        imgs = (imgs.int() + torch.randint(-jitter, jitter + 1, imgs.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    return M.FolderImages(name, train.folder, imgs, [{} for _ in idx])


def test_copies_are_flagged_and_real_test_crops_are_not(split_crops):
    train, test, noise = split_crops
    idx = np.arange(0, 80, 3)
    gens = {"copies": _copies(train, idx, "copies"),
            "noisy copies": _copies(train, idx, "noisy copies", jitter=3),   # +-3 grey levels: still copies
            "noise": noise}
    rep = MM.memorisation_check(train, test, gens, extractor=M.RandomConvFeatures(), progress=False)
    rows = rep.rows
    assert set(rows) == {MM.REAL_TEST_ROW, "copies", "noisy copies", "noise"}
    for r in rows.values():
        assert {"near_copy_fraction", "median_nn_distance_feature", "median_nn_distance_pixel", "n"} <= set(r)
    assert rows["copies"]["near_copy_fraction"] == 1.0 and rows["copies"]["n"] == len(idx)
    assert rows["copies"]["median_nn_distance_pixel"] == pytest.approx(0.0, abs=1e-6)
    assert rows["noisy copies"]["near_copy_fraction"] >= 0.95
    # real test crops: at most ~2 x percentile % by construction (here 1 % of 80 per space)
    assert rows[MM.REAL_TEST_ROW]["near_copy_fraction"] <= 0.05 and rows[MM.REAL_TEST_ROW]["n"] == 80
    assert rows["noise"]["near_copy_fraction"] == 0.0
    assert rows["noise"]["median_nn_distance_pixel"] > rows[MM.REAL_TEST_ROW]["median_nn_distance_pixel"]
    assert 0.2 < rows["noise"]["median_nn_distance_pixel"] < 0.6       # RMS in [0, 1] units, not a sum
    # every copy's nearest train crop is the crop it copies, in both spaces
    assert (rep.pairs["copies"]["train_index_pixel"] == idx).all()
    assert (rep.pairs["copies"]["train_index_feature"] == idx).all()
    t = rep.thresholds
    assert t["percentile"] == 1.0 and t["feature"] > 0 and t["pixel"] > 0 and t["n_test"] == 80
    assert rep.as_dict()["per_generator"]["copies"]["near_copy_fraction"] == 1.0
    assert rows["copies"]["test_copy_fraction"] <= 0.1 and rows[MM.REAL_TEST_ROW]["test_copy_fraction"] is None


def test_copies_of_test_crops_are_flagged_as_a_leak(split_crops):
    """A planted leak (generated images that are copies of TEST-patient crops) shows as
    test_copy_fraction ~1, while it is no memorisation of train crops."""
    train, test, noise = split_crops
    leak = M.FolderImages("leak", test.folder, test.images[::2].clone(), [{} for _ in test.images[::2]])
    rows = MM.memorisation_check(train, test, {"leak": leak, "noise": noise}, extractor=M.RandomConvFeatures(),
                                 progress=False).rows
    assert rows["leak"]["test_copy_fraction"] == 1.0 and rows["leak"]["near_copy_fraction"] <= 0.1
    assert rows["noise"]["test_copy_fraction"] == 0.0


def test_threshold_flags_the_nominal_share_of_real_test_crops_in_both_spaces_together(split_crops):
    """The two spaces together flag the nominal share of the real test crops (not each space:
    the old rule flagged ~2 x percentile %), and each space's threshold is a test-to-train distance."""
    train, test, _ = split_crops
    rep = MM.memorisation_check(train, test, {}, extractor=M.RandomConvFeatures(), percentile=20, progress=False)
    row = rep.rows[MM.REAL_TEST_ROW]
    assert 0.15 <= row["near_copy_fraction"] <= 0.20
    assert rep.thresholds["reference_flagged"] == pytest.approx(row["near_copy_fraction"])
    assert row["near_copy_fraction_pixel"] <= 0.20 and row["near_copy_fraction_feature"] <= 0.20
    d_pix = rep.pairs[MM.REAL_TEST_ROW]["d_pixel"]
    assert rep.thresholds["pixel"] in d_pix and rep.thresholds["pixel"] <= np.percentile(d_pix, 20)
    small = MM.memorisation_check(train, test, {}, extractor=M.RandomConvFeatures(), percentile=1, progress=False)
    assert 0 < small.thresholds["reference_flagged"] <= 2 / 80       # 80 crops: the closest one(s), reported
    with pytest.raises(ValueError, match="percentile"):
        MM.memorisation_check(train, test, {}, extractor=M.RandomConvFeatures(), percentile=0, progress=False)


def test_reencoded_copies_of_test_healthy_windows_are_found_as_a_leak(split_crops, tmp_path):
    """The leak check compares with every test-patient crop: copies of test patients' healthy
    windows, saved as JPEG (quality 90) or shifted by one pixel, are test copies."""
    import io

    from PIL import Image

    train, test, noise = split_crops
    g = torch.Generator().manual_seed(3)            # smooth 256 px skin-like windows, as notebook 01 cuts them
    smooth = torch.nn.functional.interpolate(torch.rand(40, 3, 6, 6, generator=g) * 120 + 90, size=256, mode="bicubic",
                                             align_corners=False).clamp(0, 255).round().to(torch.uint8)
    healthy = M.FolderImages("test healthy", test.folder, smooth, [{} for _ in smooth])

    def jpeg(img):
        buf = io.BytesIO()
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, "JPEG", quality=90)
        return torch.from_numpy(np.asarray(Image.open(buf).convert("RGB")).copy()).permute(2, 0, 1)

    planted = {"jpeg": torch.stack([jpeg(x) for x in healthy.images[:12]]),
               "shifted": torch.roll(healthy.images[:12], 1, dims=3)}
    gens = {k: M.FolderImages(k, test.folder, v, [{} for _ in v]) for k, v in planted.items()}
    without = MM.memorisation_check(train, test, {**gens, "noise": noise}, extractor=M.RandomConvFeatures(),
                                    progress=False).rows
    rows = MM.memorisation_check(train, test, {**gens, "noise": noise}, extractor=M.RandomConvFeatures(),
                                 progress=False, test_extra={"healthy": healthy}).rows
    for k in planted:
        assert rows[k]["test_copy_fraction"] >= 0.9, (k, rows[k])
        assert without[k]["test_copy_fraction"] < 0.5           # not found against the ill crops alone
    assert rows["noise"]["test_copy_fraction"] == 0.0


def test_pixel_distance_is_rms_at_the_given_size():
    a = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    b = torch.full((2, 3, 64, 64), 255, dtype=torch.uint8)
    b[1, :, :32] = 0                                   # half black, half white
    d, i = MM.nearest_neighbours(MM.pixel_vectors(a, 64), MM.pixel_vectors(b, 64))
    assert i.tolist() == [1] and d.item() / np.sqrt(3 * 64 * 64) == pytest.approx(np.sqrt(0.5), rel=1e-6)
    v = MM.pixel_vectors(b, 16)                        # resized: constant stays constant, range [0, 1]
    assert v.shape == (2, 3 * 16 * 16) and v[0].min() == 1.0 and 0.45 < v[1].mean() < 0.55


def test_closest_pairs_figure_shows_each_copy_with_its_source(split_crops):
    import matplotlib

    matplotlib.use("Agg")
    train, test, noise = split_crops
    idx = np.array([5, 17, 40])
    gens = {"copies": _copies(train, idx, "copies"), "noise": noise}
    rep = MM.memorisation_check(train, test, gens, extractor=M.RandomConvFeatures(), progress=False)
    fig = MM.closest_pairs_figure(rep, train, gens, k=2)
    axes = fig.axes
    assert len(axes) == 2 * 2 * 2                                   # 2 generators x 2 pairs x 2 images
    titles = [ax.get_title() for ax in axes]
    assert titles[0].endswith("COPY") and titles[1].startswith(f"train #{idx[rep.pairs['copies']['copy_score'].argmin()]}")
    assert all(t.endswith("ok") for t in titles[4::2])              # noise row: no copy
    shown = axes[1].get_images()[0].get_array()
    assert np.array_equal(np.asarray(shown), train.images[int(titles[1].split("#")[1].split()[0])].permute(1, 2, 0).numpy())
