"""skinlib.data: pairing photos with masks, safe loading (EXIF, modes, bit depths, corrupt and
huge files), the crop Dataset."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from _images import blob_mask, bomb_png, jpeg_with_orientation, png_raw, save, skin_photo, truncated
from skinlib.data.dataset import CropDataset
from skinlib.data.photos import (BadInputError, PhotoPair, find_pairs, load_mask, load_pair,
                                 load_photo)


def _reasons(skipped):
    return {s.file: s.reason for s in skipped}


# --------------------------------------------------------------------------- pairing

def test_find_pairs_layout_and_every_unpaired_entry_is_reported(tmp_path):
    root = tmp_path / "data"
    ex = root / "rash" / "persona1" / "example1"
    photo = skin_photo(40, 50)
    mask = blob_mask(40, 50, 20, 25, 8).astype(np.uint8) * 255
    save(ex / "example1_1.png", photo)
    save(ex / "example1_1_mask.png", mask)
    save(ex / "example1_2.JPG", photo, fmt="JPEG")            # upper-case suffix is accepted
    save(ex / "example1_2_mask.png", mask)
    save(ex / "example1_3.png", photo)                         # photo without mask
    save(ex / "example1_4_mask.png", mask)                     # mask without photo
    save(ex / "example1_5.png", photo)                         # two photos with one name
    save(ex / "example1_5.tif", photo)
    save(ex / "example1_5_mask.png", mask)
    (ex / "notes.txt").write_text("not an image")
    (ex / ".DS_Store").write_bytes(b"hidden: ignored")
    save(root / "rash" / "persona10" / "example2" / "example2_1.png", photo)   # natural order
    save(root / "rash" / "persona10" / "example2" / "example2_1_mask.png", mask)
    save(root / "rash" / "persona2" / "example1" / "example1_1.tiff", photo, fmt="TIFF")
    save(root / "rash" / "persona2" / "example1" / "example1_1_mask.tiff", mask, fmt="TIFF")
    save(root / "rash" / "persona1" / "stray.png", photo)       # image at the wrong depth
    (root / "urticaria").mkdir()                                 # empty disease folder
    (root / "rash" / "persona3").mkdir()                         # empty patient folder
    (root / "rash" / "persona4" / "example1").mkdir(parents=True)  # empty example folder
    (root / "README.txt").write_text("root-level metadata is ignored")

    pairs, skipped = find_pairs(root)
    assert [p.source for p in pairs] == [
        "rash/persona1/example1/example1_1.png", "rash/persona1/example1/example1_2.JPG",
        "rash/persona2/example1/example1_1.tiff", "rash/persona10/example2/example2_1.png"]
    p = pairs[0]
    assert (p.disease, p.patient, p.example, p.mask_source) == (
        "rash", "persona1", "example1", "rash/persona1/example1/example1_1_mask.png")
    assert p.photo.is_file() and p.mask.is_file()
    r = _reasons(skipped)
    assert "without mask" in r["rash/persona1/example1/example1_3.png"]
    assert "without photo" in r["rash/persona1/example1/example1_4_mask.png"]
    assert "several photos" in r["rash/persona1/example1/example1_5.png"]
    assert "several photos" in r["rash/persona1/example1/example1_5.tif"]
    assert "ambiguous" in r["rash/persona1/example1/example1_5_mask.png"]
    assert "not a PNG/JPEG/TIFF" in r["rash/persona1/example1/notes.txt"]
    assert "not inside" in r["rash/persona1/stray.png"]
    assert "empty disease folder" in r["urticaria/"]
    assert "empty patient folder" in r["rash/persona3/"]
    assert "empty example folder" in r["rash/persona4/example1/"]
    assert not any(".DS_Store" in f or "README" in f for f in r)


def test_find_pairs_missing_or_not_a_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*data_README"):
        find_pairs(tmp_path / "nope")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match="file.png"):
        find_pairs(tmp_path / "file.png")
    pairs, skipped = find_pairs(tmp_path)           # an image directly in the root is reported
    assert pairs == [] and "not inside" in _reasons(skipped)["file.png"]


# --------------------------------------------------------------------------- photos

def test_load_photo_formats_and_exif_orientation(tmp_path):
    arr = skin_photo(30, 40)
    for fmt, name in (("PNG", "a.png"), ("TIFF", "a.tif")):
        img, notes = load_photo(save(tmp_path / name, arr, fmt=fmt))
        assert img.dtype == np.uint8 and img.shape == (30, 40, 3) and np.array_equal(img, arr) and notes == []
    img, _ = load_photo(save(tmp_path / "a.jpg", arr, fmt="JPEG", quality=95))
    assert img.shape == (30, 40, 3) and np.abs(img.astype(int) - arr).mean() < 8
    # EXIF orientation 6 = "rotate 90 degrees clockwise to display": 30x40 stored -> 40x30 shown
    img, _ = load_photo(jpeg_with_orientation(tmp_path / "rot.jpg", arr, 6))
    assert img.shape == (40, 30, 3)
    ref = np.rot90(arr, k=-1)
    assert np.abs(img.astype(int) - ref).mean() < 8


def test_load_photo_modes_are_converted_with_a_note(tmp_path):
    arr = skin_photo(20, 24)
    grey = arr[..., 0]
    img, notes = load_photo(save(tmp_path / "g.png", grey))
    assert img.shape == (20, 24, 3) and np.array_equal(img[..., 1], grey) and "greyscale" in notes[0]
    img, notes = load_photo(save(tmp_path / "la.png", Image.fromarray(grey).convert("LA")))
    assert img.shape == (20, 24, 3) and "greyscale" in notes[0]
    rgba = np.dstack([arr, np.full((20, 24), 255, np.uint8)])
    rgba[0, 0, 3] = 0
    img, notes = load_photo(save(tmp_path / "rgba.png", rgba))
    assert np.array_equal(img, arr) and any("alpha channel dropped (1 of 480" in n for n in notes)
    img, notes = load_photo(save(tmp_path / "p.png", Image.fromarray(arr).quantize(16)))
    assert img.shape == (20, 24, 3) and "P photo converted" in notes[0]
    g16 = (np.arange(20 * 24).reshape(20, 24) * 130).astype(np.uint16)
    (tmp_path / "g16.png").write_bytes(png_raw(g16, 16, 0))
    img, notes = load_photo(tmp_path / "g16.png")
    assert np.array_equal(img[..., 0], np.rint(g16 / 65535 * 255).astype(np.uint8)) and "16-bit" in notes[0]
    save(tmp_path / "g16.tif", Image.fromarray(g16), fmt="TIFF")
    img2, notes = load_photo(tmp_path / "g16.tif")
    assert np.array_equal(img2, img) and "16-bit" in notes[0]
    rgb16 = arr.astype(np.uint16) * 257
    (tmp_path / "rgb16.png").write_bytes(png_raw(rgb16, 16, 2))
    img, notes = load_photo(tmp_path / "rgb16.png")
    assert np.array_equal(img, arr) and "16-bit per channel" in notes[0]
    save(tmp_path / "f.tif", Image.fromarray(grey.astype(np.float32) / 255), fmt="TIFF")
    with pytest.raises(BadInputError, match="f.tif.*floating-point"):
        load_photo(tmp_path / "f.tif")


@pytest.mark.parametrize("case", ["truncated_png", "truncated_jpeg", "corrupt", "empty", "missing"])
def test_unreadable_files_raise_bad_input_naming_the_file(tmp_path, case):
    arr = skin_photo(64, 64)
    path = tmp_path / f"{case}.png"
    if case == "truncated_png":
        truncated(path, arr, "PNG", 0.5)
    elif case == "truncated_jpeg":
        path = truncated(tmp_path / "t.jpg", arr, "JPEG", 0.4)
    elif case == "corrupt":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    elif case == "empty":
        path.write_bytes(b"")
    with pytest.raises(BadInputError) as err:
        load_photo(path)
    assert str(path) in str(err.value) and "Fix:" in str(err.value)
    if case.startswith("truncated"):
        assert "truncated or corrupt" in err.value.reason


def test_decompression_bombs_are_refused_before_decoding(tmp_path):
    with pytest.raises(BadInputError, match="bomb.png.*(absurdly large|above the limit)"):
        load_photo(bomb_png(tmp_path / "bomb.png", 100_000))
    # a genuine image above a user-set limit
    path = save(tmp_path / "big.png", skin_photo(60, 60))
    with pytest.raises(BadInputError, match="3,600 pixels, above the limit of 1,000"):
        load_photo(path, max_pixels=1000)
    with pytest.raises(BadInputError, match="above the limit"):
        load_mask(path, max_pixels=1000)


# --------------------------------------------------------------------------- masks

def test_binary_masks_load_exactly_without_notes(tmp_path):
    m = blob_mask(30, 30, 15, 15, 6)
    got, notes = load_mask(save(tmp_path / "m.png", m.astype(np.uint8) * 255))
    assert got.dtype == bool and np.array_equal(got, m) and notes == []
    got, notes = load_mask(save(tmp_path / "m1.png", Image.fromarray(m)))   # mode "1"
    assert np.array_equal(got, m) and notes == []


def test_non_binary_masks_are_thresholded_at_0_3_of_full_scale_with_a_note(tmp_path):
    ramp = np.tile(np.arange(256, dtype=np.uint8), (4, 1))          # anti-aliased edge values
    got, notes = load_mask(save(tmp_path / "aa.png", ramp))
    assert np.array_equal(got[0], np.arange(256) > 76.5) and "not binary" in notes[-1]
    m = blob_mask(40, 40, 20, 20, 10)
    got, notes = load_mask(save(tmp_path / "j.jpg", m.astype(np.uint8) * 255, fmt="JPEG", quality=70))
    assert (got != m).mean() < 0.02 and any("not binary" in n for n in notes)
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, 0] = 255                    # white: ill
    rgb[0, 1] = (255, 0, 0)            # pure red: luma 76.2 < 76.5 -> healthy
    rgb[0, 2] = (0, 255, 0)            # green: luma 149.7 -> ill
    got, notes = load_mask(save(tmp_path / "rgb.png", rgb))
    assert got[0].tolist() == [True, False, True, False] and "RGB mask reduced" in notes[0]
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 255, 255, 255)
    rgba[0, 1] = (255, 255, 255, 0)    # transparent white: healthy
    got, _ = load_mask(save(tmp_path / "rgba.png", rgba))
    assert got.tolist() == [[True, False], [False, False]]
    pal = Image.fromarray((m * 255).astype(np.uint8)).convert("P")
    got, notes = load_mask(save(tmp_path / "pal.png", pal))
    assert np.array_equal(got, m) and "P mask reduced" in notes[0]
    m16 = np.array([[0, 19000, 20000, 65535]], np.uint16)          # 0.29 and 0.305 of 65535
    (tmp_path / "m16.png").write_bytes(png_raw(m16, 16, 0))
    got, notes = load_mask(tmp_path / "m16.png")
    assert got.tolist() == [[False, False, True, True]] and "16-bit" in notes[0]


def test_load_pair_size_mismatch_names_the_mask_and_both_sizes(tmp_path):
    ex = tmp_path / "d" / "p" / "e"
    save(ex / "x.png", skin_photo(30, 40))
    save(ex / "x_mask.png", np.zeros((40, 30), np.uint8))
    pair = PhotoPair(tmp_path, "d/p/e/x.png", "d/p/e/x_mask.png", "d", "p", "e")
    with pytest.raises(BadInputError, match=r"x_mask.png: mask is 30x40 but its photo d/p/e/x.png is 40x30.*rotated"):
        load_pair(pair)
    save(ex / "x_mask.png", np.full((30, 40), 255, np.uint8))
    photo, mask, notes = load_pair(pair)
    assert photo.shape == (30, 40, 3) and mask.all() and notes == []


# --------------------------------------------------------------------------- crop dataset

def test_crop_dataset_items_labels_and_resize(tmp_path):
    from skinlib.io import save_png, write_csv

    rows = []
    for i, disease in enumerate(["urticaria", "maculopapular_rash", "urticaria"]):
        save_png(tmp_path / f"{i:06d}.png", skin_photo(32, 32, seed=i))
        save_png(tmp_path / f"{i:06d}_mask.png", blob_mask(32, 32, 16, 16, 5 + i).astype(np.uint8) * 255)
        rows.append({"image": f"{i:06d}.png", "mask": f"{i:06d}_mask.png", "disease": disease, "patient": "p"})
    write_csv(tmp_path / "manifest.csv", rows)
    ds = CropDataset(tmp_path)
    assert ds.classes == ["maculopapular_rash", "urticaria"] and len(ds) == 3
    image, mask, label = ds[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert -1 <= image.min() and image.max() <= 1
    assert mask.shape == (1, 32, 32) and set(mask.unique().tolist()) == {0.0, 1.0}
    assert mask.sum() == blob_mask(32, 32, 16, 16, 5).sum()
    assert [int(ds[i][2]) for i in range(3)] == [1, 0, 1]
    small = CropDataset(tmp_path, image_size=16)
    assert small[1][0].shape == (3, 16, 16) and small[1][1].shape == (1, 16, 16)


def test_folder_without_manifest_lists_only_images_not_their_companion_masks(tmp_path):
    from skinlib.data.dataset import list_crop_rows
    from skinlib.io import save_png

    import numpy as np

    img = np.zeros((8, 8, 3), np.uint8)
    for name in ("000000.png", "000000_mask.png", "000000_mask2.png", "000000_edit.png", "000001.png"):
        save_png(tmp_path / name, img)
    assert [r["image"] for r in list_crop_rows(tmp_path)] == ["000000.png", "000001.png"]


def test_load_crop_mask_named_by_the_manifest_must_exist_and_be_readable(tmp_path):
    from skinlib.data.dataset import load_crop
    from skinlib.io import save_png

    save_png(tmp_path / "000000.png", skin_photo(32, 32))
    mask = blob_mask(32, 32, 16, 16, 6)
    save_png(tmp_path / "000000_mask.png", mask.astype(np.uint8) * 255)
    row = {"image": "000000.png", "mask": "000000_mask.png"}
    image, m, has_mask = load_crop(tmp_path, row)
    assert has_mask and image.shape == (3, 32, 32) and torch.equal(m[0].bool(), torch.from_numpy(mask))
    # the manifest names a mask that is not there: an error naming it, never an empty mask
    (tmp_path / "000000_mask.png").unlink()
    with pytest.raises(BadInputError, match=r"000000_mask\.png.*does not exist.*Fix:"):
        load_crop(tmp_path, row)
    # ... or that cannot be read
    (tmp_path / "000000_mask.png").write_bytes(b"not a png")
    with pytest.raises(BadInputError, match=r"000000_mask\.png.*not a readable image"):
        load_crop(tmp_path, row)
    # ... or whose size is not the crop's (it was resized silently before)
    save_png(tmp_path / "000000_mask.png", np.zeros((16, 16), np.uint8))
    with pytest.raises(BadInputError, match=r"000000_mask\.png: mask is 16x16 px but its crop 000000\.png is 32x32"):
        load_crop(tmp_path, row)
    # no mask expected (empty field, no companion file, e.g. generated folders): all zeros
    (tmp_path / "000000_mask.png").unlink()
    for no_mask in ({"image": "000000.png", "mask": ""}, {"image": "000000.png"}):
        _, m, has_mask = load_crop(tmp_path, no_mask)
        assert not has_mask and m.shape == (1, 32, 32) and m.sum() == 0
    with pytest.raises(BadInputError, match=r"000001\.png.*file not found"):
        load_crop(tmp_path, {"image": "000001.png"})


def test_load_crop_resizes_only_when_asked(tmp_path):
    from PIL import Image as PILImage

    from skinlib.data.dataset import load_crop
    from skinlib.io import save_png

    photo = skin_photo(40, 40)
    save_png(tmp_path / "a.png", photo)
    save_png(tmp_path / "a_mask.png", blob_mask(40, 40, 20, 20, 8).astype(np.uint8) * 255)
    row = {"image": "a.png", "mask": "a_mask.png"}
    # GLIDE generation needs the exact pixels: a crop of another size is refused, with the fix
    with pytest.raises(BadInputError, match=r"a\.png: crop is 40x40 px, expected 32x32.*Fix: re-make the crops"):
        load_crop(tmp_path, row, 32, resize=False)
    image, _, _ = load_crop(tmp_path, row, 40, resize=False)            # right size: exact pixels
    assert torch.equal(torch.round((image + 1) * 127.5).to(torch.uint8).permute(1, 2, 0), torch.from_numpy(photo))
    # training at another size asks for the resize
    image, mask, _ = load_crop(tmp_path, row, 32)
    assert image.shape == (3, 32, 32) and mask.shape == (1, 32, 32)
    expected = np.asarray(PILImage.fromarray(photo).resize((32, 32), PILImage.BICUBIC), dtype=np.float32) / 127.5 - 1
    torch.testing.assert_close(image, torch.from_numpy(expected).permute(2, 0, 1), atol=1e-6, rtol=0)


def test_unreadable_crops_summary_is_an_error_not_real_data(tmp_path):
    """A damaged summary.json must not drop the SYNTHETIC label (it used to read as "not synthetic")."""
    from skinlib.data.dataset import crops_are_synthetic

    assert crops_are_synthetic(tmp_path) is False                   # no summary: crops made elsewhere
    (tmp_path / "summary.json").write_text('{"synthetic": true}')
    assert crops_are_synthetic(tmp_path) is True
    (tmp_path / "summary.json").write_text('{"synthetic": tru')     # truncated
    with pytest.raises(ValueError, match=r"summary\.json cannot be read.*SYNTHETIC"):
        crops_are_synthetic(tmp_path)
    (tmp_path / "summary.json").write_text('["synthetic"]')
    with pytest.raises(ValueError, match=r"summary\.json is not a crops summary"):
        crops_are_synthetic(tmp_path)
