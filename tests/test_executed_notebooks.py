"""The executed copies in other/executed/ (made by other/make_executed.py from one main-job run)
are the notebooks as they are now, with outputs a reader can see, and small enough to commit."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import nbformat
import pytest
from PIL import Image

from _scripts import load_script

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
EXECUTED = REPO / "other" / "executed"


def code_cells(nb) -> list[str]:
    """The code a notebook runs, without papermill's injected-parameters cell."""
    return [c.source for c in nb.cells
            if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])]


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_executed_copy_is_current(source):
    copy = EXECUTED / source.name
    assert copy.is_file(), f"{copy} missing: run the main job and `python other/make_executed.py RUN`"
    executed = nbformat.read(copy, as_version=4)
    assert code_cells(executed) == code_cells(nbformat.read(source, as_version=4)), (
        f"{copy} is stale: its code differs from {source}. Refresh it from a default main-job run: "
        f"`python -m skinlib run --out RUN && python other/make_executed.py RUN`")
    meta = executed.metadata["skinlib_executed"]
    assert meta["commit"] and meta["commit"] != "unknown" and meta["parameters"]["out_dir"]
    assert not meta["parameters"].get("smoke"), "executed copies come from the default main job, not --smoke"
    images = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs
              if any(k.startswith("image/") for k in o.get("data", {}))]
    assert images, f"{copy} shows no figure"
    assert not [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]


def test_executed_copies_are_small():
    total = sum((EXECUTED / s.name).stat().st_size for s in SOURCES if (EXECUTED / s.name).is_file())
    assert total < 8e6, f"other/executed/ holds {total / 1e6:.1f} MB: lower make_executed.py --max-width"


def _png(width: int, height: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 120, 90)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_make_executed_slims_a_run(tmp_path):
    """A fake single-split run: images are downscaled, widgets become text, code is untouched,
    and a --smoke run is refused unless asked for."""
    make_executed = load_script("other/make_executed.py")
    run = tmp_path / "run"
    (run / "notebooks").mkdir(parents=True)
    out = tmp_path / "executed"
    for source in SOURCES:
        nb = nbformat.read(source, as_version=4)
        nb.metadata["papermill"] = {"parameters": {"out_dir": str(run)}, "environment_variables": {"X": "1"}}
        nb.metadata["widgets"] = {"state": "large"}
        first = next(c for c in nb.cells if c.cell_type == "code")
        first.outputs = [
            nbformat.v4.new_output("display_data", data={"image/png": _png(1600, 400), "text/plain": "<Figure>"}),
            nbformat.v4.new_output("display_data", data={make_executed.WIDGET: {"model_id": "x"},
                                                         "text/plain": "100%|##########| 3/3"})]
        nbformat.write(nb, run / "notebooks" / source.name)
    (run / "run.json").write_text(json.dumps({"git_commit": "abcdef0123", "finished": "today", "smoke": True,
                                              "cpu": {"model": "Test CPU"}}))
    with pytest.raises(SystemExit, match="--smoke run"):
        make_executed.main([str(run), "--out", str(out)])
    assert make_executed.main([str(run), "--out", str(out), "--allow-smoke", "--max-width", "500"]) == 0
    for source in SOURCES:
        copy = nbformat.read(out / source.name, as_version=4)
        assert code_cells(copy) == code_cells(nbformat.read(source, as_version=4))
        assert copy.cells[0].cell_type == "markdown" and "abcdef0" in copy.cells[0].source
        assert "widgets" not in copy.metadata and "environment_variables" not in copy.metadata["papermill"]
        outputs = next(c for c in copy.cells if c.cell_type == "code").outputs
        image = outputs[0]["data"]
        mime = next(k for k in image if k.startswith("image/"))
        assert Image.open(io.BytesIO(base64.b64decode(image[mime]))).size == (500, 125)
        assert outputs[1].output_type == "stream" and "3/3" in outputs[1].text
    # run twice: the header is replaced, not stacked
    make_executed.main([str(run), "--out", str(out), "--allow-smoke"])
    copy = nbformat.read(out / SOURCES[0].name, as_version=4)
    assert sum(make_executed.MARKER in c.metadata.get("tags", []) for c in copy.cells) == 1
