"""skinlib.data.crops: the study's method (coverage, NMS, contrast bucket, two-colour masks) against
plain reference implementations, and the folder-level run: format, manifest, every bad input
recorded, byte-identical re-runs, resuming after an interruption."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _images import blob_mask, bomb_png, png_raw, save, skin_photo, truncated
from _shared import interrupted_on_call
from skinlib.data import crops
from skinlib.data.dataset import CropDataset
from skinlib.io import read_csv, sha256_file

SMALL = dict(window=64, stride=16, kmeans_samples=256)   # fast settings for folder-level tests


# --------------------------------------------------------------------------- the method

def test_window_boxes_and_coverage_match_brute_force():
    rng = np.random.default_rng(0)
    mask = rng.random((70, 95)) < 0.3
    boxes, cov = crops.window_coverage(mask, 32, 12)
    expect = []
    for y in range(0, 70 - 32 + 1, 12):
        for x in range(0, 95 - 32 + 1, 12):
            expect.append(((x, y, x + 32, y + 32), mask[y:y + 32, x:x + 32].mean()))
    assert [tuple(b) for b in boxes.tolist()] == [e[0] for e in expect]
    assert np.array_equal(cov, np.array([e[1] for e in expect]))
    assert crops.window_boxes(20, 300, 32, 8).shape == (0, 4)      # photo smaller than the window


def _nms_reference(boxes, scores, thr):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep = []
    for i in order:
        ok = True
        for j in keep:
            a, b = boxes[i], boxes[j]
            iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
            ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
            inter = iw * ih
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            if inter / union > thr:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_matches_plain_greedy_loop_including_ties(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((12, 12)) < 0.5
    mask = np.kron(mask, np.ones((16, 16), bool))                      # blocky: many equal coverages
    boxes, cov = crops.window_coverage(mask, 64, 16)
    keep = crops.nms(boxes, cov, 0.4)
    assert keep.tolist() == _nms_reference(boxes.tolist(), cov.tolist(), 0.4)
    assert len(set(cov[keep].tolist())) < len(keep)                    # ties really occurred
    kept = boxes[keep]
    for i in range(len(kept)):                                         # no overlap above the threshold
        assert (crops.box_iou(kept[i], np.delete(kept, i, 0)) <= 0.4).all()


def test_select_windows_keeps_coverage_strictly_above_threshold():
    mask = np.zeros((64, 128), bool)
    mask[:, :64] = True                        # window at x=0: coverage 1.0
    mask[:16, 100:104] = True                  # mostly-empty right half
    boxes, cov, counts = crops.select_windows(mask, window=64, stride=64, min_coverage=0.0)
    assert counts == {"windows": 2, "candidates": 2} and cov.tolist() == [1.0, 64 / 4096]
    boxes, cov, counts = crops.select_windows(mask, window=64, stride=64, min_coverage=64 / 4096)
    assert boxes.tolist() == [[0, 0, 64, 64]] and counts["candidates"] == 1   # "> min", not ">="


def test_contrast_is_scikit_image_low_contrast_measure():
    from skimage.exposure import is_low_contrast

    rng = np.random.default_rng(0)
    for spread in (0, 3, 10, 20, 30, 60, 200):
        crop = np.clip(120 + rng.normal(0, spread / 4 + 1e-9, (32, 32, 3)), 0, 255).astype(np.uint8)
        ratio = crops.contrast_ratio(crop)
        assert (ratio < 0.05) == is_low_contrast(crop, fraction_threshold=0.05)
        assert (ratio < 0.2) == is_low_contrast(crop, fraction_threshold=0.2)
    assert crops.contrast_ratio(np.full((8, 8, 3), 7, np.uint8)) == 0.0


def test_dominant_colour_and_two_colour_mask():
    a, b = np.array([200, 60, 70], np.uint8), np.array([230, 190, 170], np.uint8)
    pixels = np.concatenate([np.repeat(a[None], 700, 0), np.repeat(b[None], 300, 0)])
    pixels = np.random.default_rng(0).permutation(pixels)
    assert crops.dominant_colour(pixels, k=5) == tuple(a.tolist())
    assert crops.dominant_colour(pixels[:0]) is None
    # fewer pixels than k: k shrinks to n; the repeated colour is the largest cluster, and with
    # n distinct pixels every one is its own cluster, so the answer is one of them exactly
    for few in ([a, a, b], [b, a, a], [a, b, a]):
        assert crops.dominant_colour(np.array(few), k=5) == tuple(a.tolist())
    c = np.array([1, 2, 3], np.uint8)
    assert crops.dominant_colour(np.array([a, b, c]), k=5) in {tuple(p.tolist()) for p in (a, b, c)}
    img = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    m = np.random.default_rng(2).random((40, 50)) < 0.6
    n = int(m.sum())
    assert np.array_equal(crops.region_pixels(img, m, None), img[m])
    assert np.array_equal(crops.region_pixels(img, m, 300, seed=3),
                          img[m][np.random.default_rng(3).choice(n, size=300, replace=False)])
    crop = np.zeros((16, 16, 3), np.uint8)
    mask = np.zeros((16, 16), bool)
    mask[:, :6] = True
    crop[mask] = a
    crop[~mask] = b
    mask2, ill, healthy = crops.two_colour_mask(crop, mask)
    assert ill == tuple(a.tolist()) and healthy == tuple(b.tolist()) and np.array_equal(mask2, crop)
    mask2, ill, healthy = crops.two_colour_mask(crop, np.ones((16, 16), bool))
    assert healthy is None and len(np.unique(mask2.reshape(-1, 3), axis=0)) == 1


# --------------------------------------------------------------------------- folder level

def _dataset(root: Path, n: int = 3, size=(150, 190)) -> Path:
    for i in range(n):
        ex = root / ("rash" if i % 2 == 0 else "hives") / f"persona{i + 1}" / "example1"
        h, w = size
        save(ex / "example1_1.png", skin_photo(h, w, seed=i))
        m = blob_mask(h, w, h / 2, w / 2 + 10 * i, 45) | blob_mask(h, w, 20, 30, 15)
        save(ex / "example1_1_mask.png", m.astype(np.uint8) * 255)
    return root


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and ".progress" not in p.parts}


def test_extract_crops_format_manifest_and_content(tmp_path):
    data = _dataset(tmp_path / "data")
    summary = crops.extract_crops(data, tmp_path / "out", **SMALL, progress=False)
    out = tmp_path / "out"
    rows = read_csv(out / "manifest.csv")
    assert summary["crops"] == len(rows) > 3 and summary["photos_used"] == 3 and summary["synthetic"] is False
    assert list(rows[0]) == crops.MANIFEST_FIELDS
    assert [r["image"] for r in rows] == [f"{i:06d}.png" for i in range(len(rows))]
    for r in rows:
        x0, y0, x1, y1 = (int(r[k]) for k in ("x0", "y0", "x1", "y1"))
        assert (x1 - x0, y1 - y0) == (64, 64) and float(r["coverage"]) > 0.1
        photo = np.asarray(Image.open(data / r["source"]))
        mask = np.asarray(Image.open(data / r["mask_source"])) > 0
        assert np.array_equal(np.asarray(Image.open(out / r["image"])), photo[y0:y1, x0:x1])
        crop_mask = np.asarray(Image.open(out / r["mask"]))
        assert Image.open(out / r["mask"]).mode == "L" and np.array_equal(crop_mask > 0, mask[y0:y1, x0:x1])
        assert abs(float(r["coverage"]) - mask[y0:y1, x0:x1].mean()) < 1e-6
        m2 = np.asarray(Image.open(out / r["mask2"]))
        assert m2.shape == (64, 64, 3) and len(np.unique(m2.reshape(-1, 3), axis=0)) <= 2
        assert "#%02x%02x%02x" % tuple(m2[crop_mask > 0][0]) == r["ill_colour"]
    sources = read_csv(out / "sources.csv")
    assert [s["status"] for s in sources] == ["ok"] * 3 and sum(int(s["crops"]) for s in sources) == len(rows)
    ds = CropDataset(out, image_size=32)
    assert ds.classes == ["hives", "rash"] and ds[0][0].shape == (3, 32, 32)


def test_low_contrast_crops_go_to_their_own_reported_bucket(tmp_path):
    data = _dataset(tmp_path / "data", n=1)
    ex = data / "rash" / "persona9" / "example1"
    save(ex / "flat.png", np.full((100, 100, 3), (180, 140, 120), np.uint8))
    save(ex / "flat_mask.png", np.full((100, 100), 255, np.uint8))
    summary = crops.extract_crops(data, tmp_path / "out", **SMALL, progress=False)
    low = read_csv(tmp_path / "out" / "low_contrast" / "manifest.csv")
    assert summary["low_contrast"] == len(low) >= 1
    assert {r["source"] for r in low} == {"rash/persona9/example1/flat.png"}
    assert all(float(r["contrast"]) < 0.05 for r in low)
    assert all((tmp_path / "out" / "low_contrast" / r["image"]).is_file() for r in low)
    main = read_csv(tmp_path / "out" / "manifest.csv")
    assert all(r["source"] != "rash/persona9/example1/flat.png" for r in main)


def test_every_bad_input_is_reported_and_the_run_goes_on(tmp_path):
    data = _dataset(tmp_path / "data", n=1)
    ex = data / "rash" / "persona5" / "example1"
    photo = skin_photo(120, 120, seed=5)
    m = blob_mask(120, 120, 60, 60, 40)
    m8 = m.astype(np.uint8) * 255

    def pair(name, photo_arr=photo, mask_arr=m8, **kw):
        save(ex / f"{name}.png", photo_arr, **kw.get("p", {}))
        save(ex / f"{name}_mask.png", mask_arr, **kw.get("m", {}))

    truncated(ex / "trunc.png", photo)                       # truncated photo
    save(ex / "trunc_mask.png", m8)
    (ex / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")   # corrupt photo
    save(ex / "corrupt_mask.png", m8)
    save(ex / "nomask.png", photo)                           # photo without mask
    save(ex / "orphan_mask.png", m8)                         # mask without photo
    pair("size", mask_arr=m8[:100])                          # mask size differs
    pair("small", photo_arr=photo[:50, :50], mask_arr=m8[:50, :50])   # smaller than the window
    bomb_png(ex / "bomb.png")                                # decompression bomb
    save(ex / "bomb_mask.png", m8)
    (data / "empty_disease").mkdir()                         # empty folder
    # usable after conversion (recorded in notes.csv): non-binary / odd-mode masks and photos
    aa = (np.clip((40 - np.hypot(*np.mgrid[-60:60, -60:60])) * 60 + 128, 0, 255)).astype(np.uint8)
    pair("antialiased", mask_arr=aa)
    save(ex / "jpegmask.png", photo)
    save(ex / "jpegmask_mask.jpg", m8, fmt="JPEG", quality=60)
    pair("rgbmask", mask_arr=np.dstack([m8] * 3))
    pair("rgbamask", mask_arr=np.dstack([m8] * 3 + [np.full_like(m8, 255)]))
    pair("palmask", mask_arr=Image.fromarray(m8).convert("P"))
    save(ex / "m16.png", photo)
    (ex / "m16_mask.png").write_bytes(png_raw(m.astype(np.uint16) * 65535, 16, 0))
    pair("grey", photo_arr=photo[..., 0])
    pair("rgba", photo_arr=np.dstack([photo, np.full((120, 120), 255, np.uint8)]))
    (ex / "p16.png").write_bytes(png_raw(photo.astype(np.uint16) * 257, 16, 2))
    save(ex / "p16_mask.png", m8)

    summary = crops.extract_crops(data, tmp_path / "out", **SMALL, progress=False)
    out = tmp_path / "out"
    skipped = {r["file"]: r["reason"] for r in read_csv(out / "skipped.csv")}
    e = "rash/persona5/example1/"
    assert "truncated or corrupt" in skipped[e + "trunc.png"]
    assert "corrupt" in skipped[e + "corrupt.png"]
    assert "without mask" in skipped[e + "nomask.png"]
    assert "without photo" in skipped[e + "orphan_mask.png"]
    assert "mask is 120x100 but its photo" in skipped[e + "size_mask.png"]
    assert "smaller than the 64-px window" in skipped[e + "small.png"]
    assert "absurdly large" in skipped[e + "bomb.png"] or "above the limit" in skipped[e + "bomb.png"]
    assert "empty disease folder" in skipped["empty_disease/"]
    assert all("Fix:" in skipped[e + f] for f in ("trunc.png", "size_mask.png", "small.png", "bomb.png"))
    notes = {}
    for r in read_csv(out / "notes.csv"):
        notes.setdefault(r["file"], []).append(r["note"])
    for name, text in [("antialiased", "not binary"), ("jpegmask", "not binary"), ("rgbmask", "RGB mask"),
                       ("rgbamask", "RGBA mask"), ("palmask", "P mask"), ("m16", "16-bit mask"),
                       ("grey", "greyscale photo"), ("rgba", "alpha channel dropped"),
                       ("p16", "16-bit per channel")]:
        assert any(text in n for n in notes[e + f"{name}.png"]), (name, notes.get(e + f"{name}.png"))
    sources = {r["source"]: r for r in read_csv(out / "sources.csv")}
    used = [n for n in ("antialiased", "jpegmask", "rgbmask", "rgbamask", "palmask", "m16", "grey", "rgba", "p16")]
    assert all(sources[e + f"{n}.png"]["status"] == "ok" and int(sources[e + f"{n}.png"]["crops"]) > 0 for n in used)
    assert summary["photos_skipped"] == 5 and summary["photos_used"] == 1 + len(used)
    # nothing silently dropped: every file below the root is a pair member, skipped, or hidden
    listed = set(skipped) | {r["source"] for r in sources.values()} | {r["mask_source"] for r in sources.values()}
    for p in data.rglob("*"):
        if p.is_file():
            assert p.relative_to(data).as_posix() in listed, p


def test_missing_or_empty_data_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="inside the dataset folder"):
        crops.extract_crops(tmp_path, tmp_path / "crops", progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        crops.extract_crops(tmp_path / "missing", tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No usable photo/mask pair.*empty.*data_README"):
        crops.extract_crops(tmp_path / "empty", tmp_path / "out", progress=False)
    (tmp_path / "onlybad" / "d" / "p" / "e").mkdir(parents=True)
    save(tmp_path / "onlybad" / "d" / "p" / "e" / "x.png", skin_photo(10, 10))
    with pytest.raises(ValueError, match="photo without mask"):
        crops.extract_crops(tmp_path / "onlybad", tmp_path / "out2", progress=False)
    assert read_csv(tmp_path / "out2" / "skipped.csv")[0]["file"] == "d/p/e/x.png"


def test_rerun_is_byte_identical_and_resume_after_interruption(tmp_path, monkeypatch):
    data = _dataset(tmp_path / "data", n=4)
    crops.extract_crops(data, tmp_path / "a", **SMALL, progress=False)
    reference = _tree(tmp_path / "a")
    again = crops.extract_crops(data, tmp_path / "a", **SMALL, progress=False)
    assert again["resumed_photos"] == 4 and _tree(tmp_path / "a") == reference
    crops.extract_crops(data, tmp_path / "b", **SMALL, progress=False)
    assert _tree(tmp_path / "b") == reference                       # fresh run elsewhere: same bytes

    real = crops._process_source
    monkeypatch.setattr(crops, "_process_source", interrupted_on_call(real, 3))
    with pytest.raises(KeyboardInterrupt):
        crops.extract_crops(data, tmp_path / "c", **SMALL, progress=False)
    assert not (tmp_path / "c" / "manifest.csv").exists()
    # interrupting a re-run that changes a finished folder also withdraws its manifest
    monkeypatch.setattr(crops, "_process_source", interrupted_on_call(real, 3))
    with pytest.raises(KeyboardInterrupt):
        crops.extract_crops(data, tmp_path / "b", **{**SMALL, "stride": 32}, progress=False)
    assert not (tmp_path / "b" / "manifest.csv").exists()
    assert not list((tmp_path / "c").rglob("*.tmp"))                # no half-written file
    monkeypatch.setattr(crops, "_process_source", real)
    resumed = crops.extract_crops(data, tmp_path / "c", **SMALL, progress=False)
    assert resumed["resumed_photos"] == 2
    assert _tree(tmp_path / "c") == reference


def test_changed_parameters_or_inputs_are_redone_and_stale_files_removed(tmp_path):
    data = _dataset(tmp_path / "data", n=3)
    first = crops.extract_crops(data, tmp_path / "o", **SMALL, progress=False)
    second = crops.extract_crops(data, tmp_path / "o", **{**SMALL, "min_coverage": 0.5}, progress=False)
    assert second["resumed_photos"] == 0 and second["crops"] < first["crops"]
    names = {p.name for p in (tmp_path / "o").glob("*.png")}
    assert len(names) == 3 * second["crops"]                        # stale crops removed
    params = {**SMALL, "min_coverage": 0.5}
    # a changed photo (first in sorted order) is redone; same crop count: the others are reused
    ex = data / "hives" / "persona2" / "example1"
    save(ex / "example1_1.png", skin_photo(150, 190, seed=42))
    third = crops.extract_crops(data, tmp_path / "o", **params, progress=False)
    assert third["resumed_photos"] == 2
    crops.extract_crops(data, tmp_path / "fresh", **params, progress=False)
    assert _tree(tmp_path / "o") == _tree(tmp_path / "fresh")
    # a changed mask with another crop count renumbers every later photo: all redone
    save(ex / "example1_1_mask.png", np.full((150, 190), 255, np.uint8))
    fourth = crops.extract_crops(data, tmp_path / "o", **params, progress=False)
    assert fourth["resumed_photos"] == 0 and fourth["crops"] != third["crops"]
    crops.extract_crops(data, tmp_path / "fresh2", **params, progress=False)
    assert _tree(tmp_path / "o") == _tree(tmp_path / "fresh2")


def test_make_demo_crops_smoke(tmp_path):
    path = crops.make_demo_crops(tmp_path, smoke=True, progress=False)
    summary = json.loads((path / "summary.json").read_text())
    assert path == tmp_path / "crops" and summary["synthetic"] is True and summary["crops"] >= 5
    assert (tmp_path / "demo_data" / "README_SYNTHETIC.txt").is_file()
    rows = read_csv(path / "manifest.csv")
    assert len({r["patient"] for r in rows}) >= 2 and len(CropDataset(path)) == summary["crops"]
    stamp = (path / "manifest.csv").stat().st_mtime_ns
    assert crops.make_demo_crops(tmp_path, smoke=True, progress=False) == path   # finished: reused
    assert (path / "manifest.csv").stat().st_mtime_ns == stamp
    # finished crops of the user's own data in OUT/crops are never replaced by demo crops
    other = tmp_path / "other"
    data = _dataset(tmp_path / "mydata", n=1)
    crops.extract_crops(data, other / "crops", **SMALL, progress=False)
    stamp = (other / "crops" / "manifest.csv").stat().st_mtime_ns
    assert crops.make_demo_crops(other, smoke=True, progress=False) == other / "crops"
    assert (other / "crops" / "manifest.csv").stat().st_mtime_ns == stamp and not (other / "demo_data").exists()


def test_notebook_parameters_are_the_library_defaults():
    """Notebook 01's literal parameters equal extract_crops' defaults and the demo sizes."""
    nb = Path(__file__).resolve().parents[2] / "notebooks" / "01_data_cropping.ipynb"
    if not nb.is_file():
        pytest.skip("notebooks/01_data_cropping.ipynb not present")
    cells = json.loads(nb.read_text())["cells"]
    cell = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    params = {}
    for node in ast.parse("".join(cell["source"])).body:
        assert isinstance(node, (ast.Assign, ast.AnnAssign)), "parameters cell must hold only assignments"
        target = node.target if isinstance(node, ast.AnnAssign) else node.targets[0]
        params[target.id] = ast.literal_eval(node.value)
    import inspect

    defaults = {k: v.default for k, v in inspect.signature(crops.extract_crops).parameters.items()
                if v.default is not inspect.Parameter.empty and k != "progress"}
    for k, v in defaults.items():
        assert params[k] == v, k
    assert params["data_dir"] == "" and params["out_dir"] == "runs/demo" and params["smoke"] is False


def test_demo_crops_never_replace_unfinished_crops_of_other_data(tmp_path):
    """An interrupted crop run of the user's data (crops, no manifest yet) is not overwritten."""
    from skinlib.data.crops import make_demo_crops
    from skinlib.io import save_png

    crops = tmp_path / "crops"
    save_png(crops / "000000.png", np.zeros((256, 256, 3), np.uint8))
    with pytest.raises(ValueError, match="unfinished crops of other data"):
        make_demo_crops(tmp_path, smoke=True, progress=False)
    assert (crops / "000000.png").is_file()


def test_relative_contrast_is_blind_to_skin_tone_and_study_measure_is_not():
    """The same skin texture on light and on dark skin (a multiplicative change of brightness):
    the study's absolute measure calls the dark one low-contrast, the relative one does not."""
    rng = np.random.default_rng(0)
    texture = 1 + 0.06 * rng.standard_normal((64, 64, 1))
    light = np.clip(np.array([235, 200, 185]) * texture, 0, 255).astype(np.uint8)
    dark = np.clip(np.array([85, 55, 40]) * texture, 0, 255).astype(np.uint8)
    study = [crops.contrast_ratio(c, method="study") for c in (light, dark)]
    rel = [crops.contrast_ratio(c, method="relative") for c in (light, dark)]
    assert study[1] < 0.05 <= study[0]                     # the study's filter drops the dark crop only
    assert rel[0] == pytest.approx(rel[1], rel=0.1) and min(rel) >= 0.05
    mid = np.clip(np.full(3, 127.5) * texture, 0, 255).astype(np.uint8)   # mid-grey: both measures agree
    assert crops.contrast_ratio(mid, method="relative") == pytest.approx(crops.contrast_ratio(mid, method="study"), rel=0.02)
    with pytest.raises(ValueError, match="method"):
        crops.contrast_ratio(mid, method="absolute")
    with pytest.raises(ValueError, match="low_contrast_method"):
        crops.CropParams(low_contrast_method="absolute")


def test_summary_reports_what_each_skin_group_keeps():
    markers = [{"status": "ok", "patient": p, "rows": [{}] * n, "low_rows": [{}] * low, "healthy_rows": [{}] * h,
                "healthy_low_contrast": hl}
               for p, n, low, h, hl in (("a", 3, 0, 2, 0), ("b", 0, 4, 0, 3), ("c", 2, 1, 1, 0))]
    out = crops.per_skin_group(markers, {"a": 1, "b": 6, "c": 5})
    assert out["I-II"] == {"patients": 1, "crops": 3, "low_contrast": 0, "healthy": 2, "healthy_low_contrast": 0,
                           "patients_without_crops": 0, "patients_without_healthy": 0}
    assert out["V-VI"] == {"patients": 2, "crops": 2, "low_contrast": 5, "healthy": 1, "healthy_low_contrast": 3,
                           "patients_without_crops": 1, "patients_without_healthy": 1}
    assert crops.per_skin_group(markers, {}) == {}
