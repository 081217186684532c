"""The package layout (issue 12): the import graph of skinlib, read from the source with ``ast``,
has no cycle and points one way (the table ALLOWED below, which each folder's ``__init__``
docstring states in words); no module of skinlib imports an old flat path; importing every
module in a fresh interpreter raises no DeprecationWarning of ours; old paths and the command
lines still work."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "skinlib"

# What each part of skinlib (a folder or a top-level module) may import besides itself.
# Lowest first: io/errors < data < viz < glide, baselines < augment < evaluation < entry points.
ALLOWED = {
    "io": set(),
    "errors": set(),
    "training": {"io", "errors"},      # the core both training loops share (skinlib/training.py)
    "cpu": set(),                      # the CPU's model and native bf16 (issue 21)
    "eta": set(),                      # expected time from the first timed step (issue 19)
    "profiles": set(),                 # cpu-demo / study defaults of notebooks 02-05 (issue 19)
    "stage_progress": set(),           # the main job's stage bar and kernel-log filter (issue 19)
    "_moved": set(),                   # old flat import paths -> new ones (one release)
    "__init__": {"_moved"},            # skinlib/__init__.py installs the old paths
    "data": {"io", "errors"},
    "viz": {"io", "data"},
    "glide": {"io", "errors", "cpu", "eta", "training", "data", "viz"},     # only glide.finetune reads crops / plots losses (MODULE_ONLY)
    "baselines": {"io", "errors", "eta", "training", "data", "viz"},
    "augment": {"io", "errors", "cpu", "eta", "data", "viz", "glide"},
    "evaluation": {"io", "errors", "data", "viz", "glide", "baselines", "augment"},
    "stages": {"io", "data"},
    "__main__": {"io", "cpu", "stages", "profiles", "stage_progress", "data", "evaluation"},   # --folds: fold views (data), pooling (evaluation)
    "generate": {"augment", "_moved"},  # `python -m skinlib.generate`; importing it warns (_moved)
    "plan": {"augment"},               # `python -m skinlib.plan` (issue 20)
    "evaluate": {"evaluation", "_moved"},  # `python -m skinlib.evaluate`; importing it warns (_moved)
}
FOLDERS = sorted(p.name for p in PKG.iterdir() if (p / "__init__.py").is_file())
ENTRY_SHIMS = {"skinlib.generate", "skinlib.evaluate"}   # warn when imported (by design)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def part_of(module: str) -> str:
    """skinlib -> "__init__"; skinlib.data.crops -> "data"; skinlib.io -> "io"."""
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def import_graph(mods: dict[str, Path] | None = None) -> tuple[dict[str, set], list[str]]:
    """{module: {modules it imports}} over every import statement (also those inside functions),
    relative imports resolved; second value: imports of skinlib names that are no module here."""
    mods = modules() if mods is None else mods
    graph, unresolved = {}, []

    def target(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        edges = graph.setdefault(mod, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[:len(base) - node.level + 1]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for name in names:
                if name != "skinlib" and not name.startswith("skinlib."):
                    continue
                found = target(name)
                if found is None or (found != name and name not in mods and found == "skinlib"):
                    unresolved.append(f"{mod}:{node.lineno} imports {name}")
                elif found != mod:
                    edges.add(found)
    return graph, unresolved


def find_cycles(graph: dict[str, set]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


# parts that only one module of a folder may import
MODULE_ONLY = {("glide", "data"): "skinlib.glide.finetune", ("glide", "viz"): "skinlib.glide.finetune",
               ("glide", "training"): "skinlib.glide.finetune", ("glide", "eta"): "skinlib.glide.finetune"}


def layer_violations(graph: dict[str, set]) -> list[str]:
    bad = []
    for mod, targets in sorted(graph.items()):
        here = part_of(mod)
        if here not in ALLOWED:
            bad.append(f"{mod}: part {here!r} is not in the layer table (tests/test_layout.py ALLOWED)")
            continue
        for t in sorted(targets):
            there = part_of(t)
            if there != here and there not in ALLOWED[here]:
                bad.append(f"{mod} imports {t}: {here} may import only {sorted(ALLOWED[here])}")
            elif MODULE_ONLY.get((here, there), mod) != mod:
                bad.append(f"{mod} imports {t}: in {here}, only {MODULE_ONLY[(here, there)]} may import {there}")
    return bad


def dependency_order(graph: dict[str, set]) -> list[str]:
    order, seen = [], set()

    def visit(v):
        if v in seen:
            return
        seen.add(v)
        for w in sorted(graph[v]):
            visit(w)
        order.append(v)

    for v in sorted(graph):
        visit(v)
    return order


def test_import_graph_has_no_cycle_and_points_one_way():
    graph, unresolved = import_graph()
    assert not unresolved, "imports of skinlib paths that do not exist (old flat paths?):\n" + "\n".join(unresolved)
    assert not find_cycles(graph), f"import cycles inside skinlib: {find_cycles(graph)}"
    assert not layer_violations(graph), "\n".join(layer_violations(graph))
    # the circle this layout broke: train <-> export
    assert "skinlib.baselines.train" not in graph["skinlib.baselines.export"] or \
        "skinlib.baselines.export" not in graph["skinlib.baselines.train"]


def test_the_checks_catch_a_forbidden_import_and_a_cycle(tmp_path):
    """The graph reader on a copy of the real graph with one bad edge each (glide -> baselines,
    data -> evaluation -> data)."""
    graph, _ = import_graph()
    bad = {k: set(v) for k, v in graph.items()}
    bad["skinlib.glide.finetune"].add("skinlib.baselines.train")
    assert any("skinlib.glide.finetune imports skinlib.baselines.train" in v for v in layer_violations(bad))
    bad["skinlib.glide.pipeline"].add("skinlib.data.dataset")
    assert any("only skinlib.glide.finetune may import data" in v for v in layer_violations(bad))
    bad["skinlib.data.crops"].add("skinlib.evaluation.downstream")   # downstream imports data.crops
    assert any("skinlib.data.crops" in c and "skinlib.evaluation.downstream" in c for c in find_cycles(bad))
    # and a source file that imports an old flat path is reported
    fake = {**modules(), "skinlib.data.fake": tmp_path / "fake.py"}
    (tmp_path / "fake.py").write_text("from ..crops import extract_crops\n")
    assert any("skinlib.crops" in u for u in import_graph(fake)[1])


def test_every_folder_says_what_it_holds_and_may_import():
    for folder in FOLDERS:
        doc = ast.get_docstring(ast.parse((PKG / folder / "__init__.py").read_text(encoding="utf-8")))
        assert doc and "may import" in doc.lower(), f"skinlib/{folder}/__init__.py: docstring must say what it may import"
        for allowed in ALLOWED[folder]:
            assert f"skinlib.{allowed}" in doc, f"skinlib/{folder}/__init__.py docstring does not name skinlib.{allowed}"
    assert set(FOLDERS) <= set(ALLOWED)


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def test_every_module_imports_in_a_fresh_interpreter_without_our_deprecation_warnings():
    graph, _ = import_graph()
    order = [m for m in dependency_order(graph) if m not in ENTRY_SHIMS]
    code = f"""
import importlib, json, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    for name in {order!r}:
        importlib.import_module(name)
print(json.dumps([str(w.message) for w in seen if issubclass(w.category, DeprecationWarning)
                  and "skinlib" in str(w.message)]))
"""
    r = _python(code)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []


def test_old_import_paths_still_work_with_a_deprecation_warning():
    code = """
import json, warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    from skinlib.data import load_crop, CropDataset, find_pairs       # a package now: no warning
    n_data = len(seen)
    import skinlib.crops, skinlib.data.crops
    import skinlib.models.dcgan, skinlib.baselines.models.dcgan
    from skinlib.train import train, CheckpointError
    from skinlib.metrics import image_metrics, load_folder_images
    import skinlib.generate, skinlib.augment.generate
    import skinlib.baselines.train, skinlib.errors, skinlib.evaluation.image_metrics
    from skinlib.viz_train import plot_losses, read_losses
    from skinlib.export import save_grid
    import skinlib.viz, skinlib.io
out = {
    "data_warnings": n_data,
    "same_crops": skinlib.crops is skinlib.data.crops,
    "spec": skinlib.data.crops.__spec__.name,
    "same_dcgan": skinlib.models.dcgan is skinlib.baselines.models.dcgan,
    "train": train is skinlib.baselines.train.train and CheckpointError is skinlib.errors.CheckpointError,
    "metrics": image_metrics is skinlib.evaluation.image_metrics.image_metrics,
    "generate": skinlib.generate is skinlib.augment.generate,
    "load_crop": load_crop.__module__,
    "moved_names": plot_losses is skinlib.viz.plot_losses and read_losses is skinlib.io.read_losses
                   and save_grid is skinlib.viz.save_grid,
    "warned": sorted({str(w.message).split(" ")[0] for w in seen if issubclass(w.category, DeprecationWarning)
                      and "moved to" in str(w.message)}),
}
print(json.dumps(out))
"""
    r = _python(code)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == {
        "data_warnings": 0, "same_crops": True, "spec": "skinlib.data.crops", "same_dcgan": True,
        "train": True, "metrics": True, "generate": True, "load_crop": "skinlib.data.dataset",
        "moved_names": True,
        "warned": ["skinlib.crops", "skinlib.export", "skinlib.generate", "skinlib.metrics",
                   "skinlib.models", "skinlib.models.dcgan", "skinlib.train", "skinlib.viz_train"],
    }


@pytest.mark.parametrize("command", ["skinlib.generate", "skinlib.evaluate"])
def test_command_lines_keep_their_module_paths(command):
    r = subprocess.run([sys.executable, "-W", "always::DeprecationWarning", "-m", command, "--help"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "usage:" in r.stdout and "moved to" not in r.stderr
