"""Refresh the executed notebooks in ``other/executed/`` from one run of the main job.

    python -m skinlib run --out runs/figures          # the default main job
    python other/make_executed.py runs/figures        # -> other/executed/NN_*.ipynb

Each copy is the notebook exactly as ``python -m skinlib run`` executed it (code cells identical
to ``notebooks/``: ``tests/test_executed_notebooks.py`` fails when they drift), made small
enough to commit and to open on GitHub:

* images are downscaled to at most ``--max-width`` px and re-encoded (PNG, or JPEG where that
  is smaller); the GIF animation keeps every frame, downscaled;
* progress-bar widgets (tqdm inside Jupyter) are replaced by their text, since GitHub shows no
  widget state, and the notebook's widget state is dropped;
* a first markdown cell says which run, commit and parameters produced it.

The run's commit, parameters and CPU also go into each copy's metadata (``skinlib_executed``).
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import sys
from pathlib import Path

import nbformat
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WIDGET = "application/vnd.jupyter.widget-view+json"
MARKER = "skinlib-executed-header"


def _shrink_still(data: str, max_width: int) -> tuple[str, str]:
    """base64 PNG -> (mime, base64) of the image at most ``max_width`` px wide, PNG or JPEG,
    whichever is smaller."""
    img = Image.open(io.BytesIO(base64.b64decode(data)))
    img.load()
    if img.width > max_width:
        img = img.resize((max_width, round(img.height * max_width / img.width)), Image.LANCZOS)
    png = io.BytesIO()
    img.save(png, format="PNG", optimize=True)
    jpg = io.BytesIO()
    img.convert("RGB").save(jpg, format="JPEG", quality=82, optimize=True)
    if img.mode in ("RGBA", "LA", "P") and "transparency" in img.info or len(png.getvalue()) <= len(jpg.getvalue()):
        return "image/png", base64.b64encode(png.getvalue()).decode()
    return "image/jpeg", base64.b64encode(jpg.getvalue()).decode()


def _shrink_gif(data: str, max_width: int) -> str:
    """base64 GIF -> base64 GIF with every frame at most ``max_width`` px wide (durations kept)."""
    img = Image.open(io.BytesIO(base64.b64decode(data)))
    frames, durations = [], []
    for i in range(getattr(img, "n_frames", 1)):
        img.seek(i)
        frame = img.convert("RGB")
        if frame.width > max_width:
            frame = frame.resize((max_width, round(frame.height * max_width / frame.width)), Image.LANCZOS)
        frames.append(frame)
        durations.append(img.info.get("duration", 500))
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=durations,
                   loop=img.info.get("loop", 0), optimize=True)
    return base64.b64encode(out.getvalue()).decode()


def slim_output(output: dict, max_width: int) -> dict:
    """One cell output made small: images downscaled, widgets replaced by their text."""
    data = output.get("data")
    if not data:
        return output
    if WIDGET in data:
        text = data.get("text/plain", "")
        return nbformat.v4.new_output("stream", name="stderr", text=text if text.endswith("\n") else text + "\n")
    data = dict(data)
    if "image/png" in data:
        mime, b64 = _shrink_still(data.pop("image/png"), max_width)
        data[mime] = b64
    if "image/gif" in data:
        data["image/gif"] = _shrink_gif(data["image/gif"], max_width // 2)
    output = dict(output, data=data)
    output.pop("metadata", None)
    output["metadata"] = {}
    return nbformat.from_dict(output)


def header_cell(nb, run: dict, commit: str, name: str):
    params = nb.metadata.get("papermill", {}).get("parameters", {})
    shown = ", ".join(f"`{k} = {v!r}`" for k, v in params.items()) or "the notebook's defaults"
    return nbformat.v4.new_markdown_cell(
        f"> **Executed copy** of [`notebooks/{name}`](../../notebooks/{name}), with its outputs, as "
        f"`python -m skinlib run` ran it (commit `{commit}`, finished {run.get('finished', '?')}, "
        f"CPU: {run.get('cpu', {}).get('model', '?') if isinstance(run.get('cpu'), dict) else run.get('cpu', '?')}; "
        f"parameters {shown}). Images are downscaled; progress bars show as text. "
        f"The demo data are **SYNTHETIC**. Refresh with `python other/make_executed.py RUN`.",
        metadata={"tags": [MARKER]})


def make_copy(src: Path, run: dict, commit: str, max_width: int):
    """The executed notebook ``src`` (written by the main job) made small, with a header cell."""
    nb = nbformat.read(src, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [slim_output(o, max_width) for o in cell.outputs]
    nb.metadata.pop("widgets", None)
    paper = nb.metadata.get("papermill", {})
    paper.pop("environment_variables", None)
    nb.metadata["skinlib_executed"] = {"commit": commit, "run_finished": run.get("finished"),
                                       "parameters": paper.get("parameters", {}), "cpu": run.get("cpu")}
    nb.cells = [c for c in nb.cells if MARKER not in c.metadata.get("tags", [])]
    nb.cells.insert(0, header_cell(nb, run, commit, src.name))
    return nb


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="run folder of `python -m skinlib run --out RUN` (single split)")
    p.add_argument("--out", default=str(HERE / "executed"), help="where the copies go (default: other/executed/)")
    p.add_argument("--max-width", type=int, default=720, help="images wider than this are downscaled, px")
    p.add_argument("--allow-smoke", action="store_true", help="accept a --smoke run (tests only: not for committing)")
    a = p.parse_args(argv)
    run_dir = Path(a.run)
    run_json = run_dir / "run.json"
    if not run_json.is_file():
        raise SystemExit(f"{run_json} not found: pass the run folder of `python -m skinlib run --out RUN`")
    run = json.loads(run_json.read_text())
    if run.get("smoke") and not a.allow_smoke:
        raise SystemExit(f"{run_dir} is a --smoke run (tiny settings): the committed copies come from the default "
                         f"main job; pass --allow-smoke only to try this script")
    if (run.get("folds") or 1) > 1:
        raise SystemExit(f"{run_dir} is a --folds run: make the copies from a single-split run")
    commit = str(run.get("git_commit") or run.get("commit") or "unknown")[:7]
    notebooks = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    for source in notebooks:
        executed = run_dir / "notebooks" / source.name
        if not executed.is_file():
            raise SystemExit(f"{executed} not found: the run did not execute {source.name} "
                             f"(run the whole main job, without --only or --folds)")
        nb = make_copy(executed, run, commit, a.max_width)
        target = out / source.name
        tmp = target.with_suffix(".tmp")
        nbformat.write(nb, tmp)
        tmp.replace(target)
        size = target.stat().st_size
        total += size
        print(f"{target}: {size / 1e6:.2f} MB")
    print(f"{len(notebooks)} executed notebooks, {total / 1e6:.1f} MB in all (commit {commit})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
