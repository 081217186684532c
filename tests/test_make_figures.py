"""other/make_figures.py: an input that lacks what a figure needs fails the script (exit 1, the
input named) and leaves no stale figure of an earlier run behind."""
from __future__ import annotations

import json

from _eval_data import make_split_crops
from _scripts import load_script


def _make_figures():
    return load_script("other/make_figures.py")


def test_incomplete_input_fails_and_leaves_no_stale_figure(tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "figures"
    make_split_crops(run / "crops")
    (run / "eval").mkdir()
    (run / "eval" / "results.json").write_text(json.dumps({"task": "rash-vs-healthy"}))   # no arms, fractions...
    out.mkdir()
    for stale in ("data_efficiency.png", "glide_examples.png"):
        (out / stale).write_bytes(b"an earlier run's figure")
    rc = _make_figures().main([str(run), "--out", str(out), "--n-crops", "4"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "data_efficiency.png" in err and "eval/results.json" in err and "missing key" in err
    assert not (out / "data_efficiency.png").exists()        # failed: the old copy is gone
    assert not (out / "glide_examples.png").exists()         # not made (no GLIDE run): the old copy is gone
    assert (out / "crops_grid.png").is_file()
    figures = (out / "FIGURES.md").read_text()
    assert "## Failed" in figures and "## Not made" in figures
