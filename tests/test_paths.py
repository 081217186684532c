"""Manifest values become paths only inside their own folder (skinlib.io.inside): a row
``../victim.txt`` is refused, with the row named, by every reader and by the export's clean-up,
which must never delete a file outside its folder."""
from __future__ import annotations

import numpy as np
import pytest

from skinlib import io
from skinlib.io import UnsafePathError, inside, save_png, write_csv


@pytest.mark.parametrize("name", ["../victim.txt", "a/../../victim.txt", "/etc/passwd", "..", "C:\\x.png",
                                  "\\\\server\\share\\x.png", ""])
def test_inside_refuses_names_leading_out_of_the_folder(tmp_path, name):
    with pytest.raises(UnsafePathError, match="row 3"):
        inside(tmp_path, name, what="row 3")


def test_inside_accepts_names_in_the_folder(tmp_path):
    assert inside(tmp_path, "a/b.png") == tmp_path / "a" / "b.png"
    assert inside(tmp_path, "history/000000.gif") == tmp_path / "history" / "000000.gif"
    assert inside(tmp_path, "a/../b.png") == tmp_path / "a/../b.png"


@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "victim.txt"
    path.write_text("keep me")
    return path


def test_export_clean_up_never_deletes_outside_its_folder(tmp_path, victim):
    from skinlib.baselines.export import _remove_stale

    out = tmp_path / "samples"
    save_png(out / "000000.png", np.zeros((4, 4, 3), np.uint8))
    write_csv(out / "manifest.csv", [{"image": "000000.png", "generator": "dcgan"},
                                     {"image": "../victim.txt", "generator": "dcgan"}])
    with pytest.raises(UnsafePathError, match=r"row 2 of .*manifest.csv, column image"):
        _remove_stale(out, keep=set())
    assert victim.read_text() == "keep me"
    assert (out / "000000.png").is_file()          # refused before deleting anything


def test_crop_readers_refuse_rows_outside_the_folder(tmp_path, victim):
    from skinlib.data.dataset import list_crop_rows, load_crop

    crops = tmp_path / "crops"
    save_png(crops / "000000.png", np.zeros((4, 4, 3), np.uint8))
    write_csv(crops / "manifest.csv", [{"image": "000000.png", "mask": "../victim.txt"}])
    with pytest.raises(UnsafePathError, match="row 1 of .*manifest.csv, column mask"):
        list_crop_rows(crops)
    with pytest.raises(UnsafePathError, match="column mask"):
        load_crop(crops, {"image": "000000.png", "mask": "../victim.txt"})
    with pytest.raises(UnsafePathError, match="column image"):
        load_crop(crops, {"image": "../victim.txt"})


def test_variant_records_and_crop_hashes_refuse_rows_outside_the_folder(tmp_path, victim):
    from skinlib.augment.generate import load_variant_rows, plot_variants_grid
    from skinlib.evaluation.provenance import crop_hashes

    out = tmp_path / "variants"
    io.save_json(out / "history" / "000000.json", {"image": "000000.png", "edit": "../victim.txt",
                                                   "source_crop": "000000.png", "source_index": 0, "run": 0})
    with pytest.raises(UnsafePathError, match="column edit"):
        load_variant_rows(out)
    io.save_json(out / "history" / "000000.json", {"image": "000000.png", "source_crop": "../victim.txt",
                                                   "source_index": 0, "run": 0})
    save_png(out / "000000.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(UnsafePathError, match="column source_crop"):
        plot_variants_grid(out, tmp_path / "crops")
    crops = tmp_path / "crops"
    write_csv(crops / "manifest.csv", [{"image": "../victim.txt", "split": "test"}])
    with pytest.raises(UnsafePathError, match="row 1 of .*manifest.csv, column image"):
        crop_hashes(crops)


def test_weights_record_naming_a_file_outside_its_folder_is_refused(tmp_path):
    from skinlib.glide import checkpoints

    with pytest.raises(checkpoints.CheckpointInvalidError, match="points outside its folder"):
        checkpoints.load_folder_model(tmp_path, "base", {"options": {}, "file": "../base_inpaint.pt",
                                                         "sha256": "0" * 64})
