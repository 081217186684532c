"""skinlib.io: atomic writes leave either the old file or the new one, never a partial file."""
from __future__ import annotations

import numpy as np
import pytest

from skinlib import io


def test_atomic_open_keeps_old_file_on_error(tmp_path):
    path = tmp_path / "a.txt"
    io.atomic_write_text(path, "old")
    with pytest.raises(RuntimeError):
        with io.atomic_open(path, "w") as f:
            f.write("half-written")
            raise RuntimeError("interrupted")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]  # no temporary file left behind


def test_csv_round_trip_and_png_bytes_are_deterministic(tmp_path):
    rows = [{"image": "000000.png", "coverage": 0.5}, {"image": "000001.png", "coverage": 0.25}]
    io.write_csv(tmp_path / "m.csv", rows)
    assert io.read_csv(tmp_path / "m.csv") == [{"image": "000000.png", "coverage": "0.5"},
                                               {"image": "000001.png", "coverage": "0.25"}]
    img = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    io.save_png(tmp_path / "x.png", img)
    io.save_png(tmp_path / "y.png", img)
    assert (tmp_path / "x.png").read_bytes() == (tmp_path / "y.png").read_bytes()
    assert io.sha256_file(tmp_path / "x.png") == io.sha256_file(tmp_path / "y.png")


def test_save_torch_is_loadable_with_weights_only(tmp_path):
    import torch

    io.save_torch(tmp_path / "c.pt", {"w": torch.ones(2), "step": 3})
    obj = torch.load(tmp_path / "c.pt", weights_only=True)
    assert obj["step"] == 3 and torch.equal(obj["w"], torch.ones(2))


def test_atomic_files_get_the_usual_permissions_not_mkstemps_0600(tmp_path):
    import os

    umask = os.umask(0)
    os.umask(umask)
    io.atomic_write_text(tmp_path / "p.txt", "x")
    assert (tmp_path / "p.txt").stat().st_mode & 0o777 == 0o666 & ~umask
