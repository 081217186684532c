"""skinlib.data.demo: the SYNTHETIC demo dataset has the real layout, exact masks, is marked
synthetic, is deterministic, and its lesions look like lesions (redder, on every skin type)."""
from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from _shared import interrupted_on_call
from skinlib.data import demo
from skinlib.data.photos import find_pairs, load_pair
from skinlib.io import load_json, read_csv, sha256_file

TINY = dict(n_diseases=3, n_patients=2, n_examples=1, n_photos=2, min_side=96, max_side=160)


def _digest(root):
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "data"
    return demo.make_demo_dataset(root, **TINY, progress=False)


def test_layout_counts_and_pairing(tiny):
    pairs, skipped = find_pairs(tiny)
    assert skipped == []
    # main disease: n_patients patients, the others half as many (at least 1)
    assert len(pairs) == (2 + 1 + 1) * 1 * 2
    assert sorted({p.disease for p in pairs}) == sorted(demo.DISEASES)
    for p in pairs:
        assert re.fullmatch(r"[a-z_]+/persona\d+/example(\d+)/example\1_\d+\.png", p.source), p.source
        assert p.mask_source == p.source[:-4] + "_mask.png"
    patients = {p.patient for p in pairs}
    assert patients == {"persona1", "persona2", "persona3", "persona4"}   # unique across diseases


def test_photos_masks_and_synthetic_marking(tiny):
    pairs, _ = find_pairs(tiny)
    for p in pairs:
        photo, mask, notes = load_pair(p)
        assert notes == []                                  # RGB photo, binary mask
        h, w = mask.shape
        assert 96 <= h <= 160 and 96 <= w <= 160
        with Image.open(p.photo) as im:
            assert im.mode == "RGB" and im.text["Source"] == demo.SOURCE_TAG
            assert "SYNTHETIC" in im.text["Comment"]
        with Image.open(p.mask) as m:
            assert m.mode == "L" and set(np.unique(np.asarray(m)).tolist()) <= {0, 255}
    readme = (tiny / demo.README).read_text()
    assert "SYNTHETIC" in readme and "NOT real patients" in readme
    meta = load_json(tiny / demo.METADATA)
    assert meta["synthetic"] is True and meta["params"]["seed"] == 0
    assert demo.is_synthetic_dataset(tiny)
    rows = read_csv(tiny / demo.MANIFEST)
    assert len(rows) == len(pairs) and {r["fitzpatrick"] for r in rows} == {"1", "5", "3", "6"}


def test_byte_identical_for_same_seed_and_different_for_another(tiny, tmp_path):
    again = demo.make_demo_dataset(tmp_path / "again", **TINY, progress=False)
    assert _digest(again) == _digest(tiny)
    other = demo.make_demo_dataset(tmp_path / "other", **{**TINY, "seed": 1}, progress=False)
    a, b = _digest(tiny), _digest(other)
    photos = [k for k in a if k.endswith("_1.png")]
    assert all(a[k] != b[k] for k in photos)


def test_existing_dataset_is_reused_or_replaced(tmp_path):
    small = dict(n_diseases=1, n_patients=2, n_examples=1, n_photos=1, min_side=80, max_side=96)
    root = demo.make_demo_dataset(tmp_path / "d", **small, progress=False)
    photo = root / "maculopapular_rash/persona2/example1/example1_1.png"
    mtime = photo.stat().st_mtime_ns
    demo.make_demo_dataset(root, **small, progress=False)
    assert photo.stat().st_mtime_ns == mtime                  # finished with same params: untouched
    demo.make_demo_dataset(root, **{**small, "n_patients": 1}, progress=False)
    assert not photo.exists() and not photo.parent.exists()   # other params: old files removed
    assert len(find_pairs(root)[0]) == 1


def test_dataset_of_another_renderer_version_is_regenerated(tmp_path, monkeypatch):
    small = dict(n_diseases=1, n_patients=1, n_examples=1, n_photos=1, min_side=80, max_side=96)
    root = demo.make_demo_dataset(tmp_path / "d", **small, progress=False)
    photo = root / "maculopapular_rash/persona1/example1/example1_1.png"
    mtime = photo.stat().st_mtime_ns
    monkeypatch.setattr(demo, "RENDERER_VERSION", "demo-older")
    demo.make_demo_dataset(root, **small, progress=False)
    assert photo.stat().st_mtime_ns != mtime
    assert load_json(root / demo.METADATA)["params"]["renderer"] == "demo-older"


def test_interrupted_generation_is_redone(tmp_path, monkeypatch):
    small = dict(n_diseases=1, n_patients=2, n_examples=1, n_photos=1, min_side=80, max_side=96)
    real = demo.render_photo
    monkeypatch.setattr(demo, "render_photo", interrupted_on_call(real, 2))
    with pytest.raises(KeyboardInterrupt):
        demo.make_demo_dataset(tmp_path / "d", **small, progress=False)
    assert load_json(tmp_path / "d" / demo.METADATA)["complete"] is False
    monkeypatch.setattr(demo, "render_photo", real)
    root = demo.make_demo_dataset(tmp_path / "d", **{**small, "n_patients": 1}, progress=False)
    assert load_json(root / demo.METADATA)["complete"] is True and len(find_pairs(root)[0]) == 1
    fresh = demo.make_demo_dataset(tmp_path / "fresh", **{**small, "n_patients": 1}, progress=False)
    assert _digest(root) == _digest(fresh)


def test_lesions_are_redder_than_skin_on_every_skin_type():
    """Inside the mask the colour shifts towards red/violet (higher R/G) on every Fitzpatrick
    type, for every disease: the masks mark what the photos show."""
    seen = set()
    for disease in demo.DISEASES:
        for patient in range(1, 7):
            img, mask, info = demo.render_photo(disease, seed=0, patient=patient, example=1, photo=1,
                                                min_side=200, max_side=260)
            seen.add(info["fitzpatrick"])
            assert mask.dtype == bool and mask.shape == img.shape[:2]
            assert 0.005 < mask.mean() < 0.8, (disease, patient, mask.mean())
            rg = img[..., 0].astype(float) / (img[..., 1].astype(float) + 1)
            assert rg[mask].mean() > rg[~mask].mean() * 1.03, (disease, patient)
    assert seen == {1, 2, 3, 4, 5, 6}
    assert [demo.skin_type(0, p) for p in range(1, 7)] == [1, 5, 3, 6, 2, 4]


def test_lesion_edges_are_soft_and_the_mask_is_their_consistent_threshold():
    """No hard-edged stickers: the colour change fades out across the mask border (a thin ring
    just outside the mask is redder than skin far away, but less red than the lesions), on
    every skin type and disease."""
    from scipy.ndimage import binary_dilation

    for disease in demo.DISEASES:
        for patient in range(1, 7):
            img, mask, _ = demo.render_photo(disease, seed=0, patient=patient, example=1, photo=1,
                                             min_side=200, max_side=260)
            rg = img[..., 0].astype(float) / (img[..., 1].astype(float) + 1)
            near = binary_dilation(mask, iterations=3) & ~mask
            far = ~binary_dilation(mask, iterations=12)
            assert near.sum() > 100 and far.sum() > 1000, (disease, patient)
            inside, ring, skin = rg[mask].mean(), rg[near].mean(), rg[far].mean()
            assert inside > ring > skin * 1.01, (disease, patient, inside, ring, skin)


def test_refuses_to_write_into_a_folder_that_is_not_a_demo_dataset(tmp_path):
    (tmp_path / "real" / "rash").mkdir(parents=True)
    with pytest.raises(ValueError, match="not empty and holds no demo dataset"):
        demo.make_demo_dataset(tmp_path / "real", n_diseases=1, n_patients=1, n_examples=1, n_photos=1,
                               min_side=80, max_side=90, progress=False)


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_diseases"):
        demo.make_demo_dataset("unused", n_diseases=4)
    with pytest.raises(ValueError, match="min_side"):
        demo.make_demo_dataset("unused", min_side=10)
    with pytest.raises(ValueError, match="unknown demo disease"):
        demo._disease_layer("eczema", np.random.default_rng(0), 10, 10, 1.0, 0.5, 0.5)
