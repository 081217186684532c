"""papermill knows every notebook parameter's type and help (issue 19 item 5)."""
from __future__ import annotations

from pathlib import Path

import nbformat
import papermill
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_all_five_notebooks_are_checked():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_every_parameter_has_a_type_and_help(path):
    nb = nbformat.read(path, 4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assigned: dict = {}
    exec(cell.source, assigned)          # the annotated cell runs as plain Python
    declared = {k for k in assigned if not k.startswith("__")}
    inferred = papermill.inspect_notebook(str(path))
    assert set(inferred) == declared, "papermill must see every parameter (an annotation it cannot parse hides one)"
    for name, p in inferred.items():
        assert p["inferred_type_name"] not in ("", "None"), f"{path.name}: {name} has no type annotation"
        assert p["help"].strip(), f"{path.name}: {name} has no help comment"
