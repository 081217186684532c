"""The study's constants, pinned in one place: in the code's defaults and in the notebooks'
parameters cells (01 cropping, 04 GLIDE). Changing one of them must be a decision: change it here
too, and say why in the commit."""
from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path

import numpy as np

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

# cropping (notebook 01, skinlib.data.crops / skinlib.data)
WINDOW, STRIDE, MIN_COVERAGE, NMS_IOU, KMEANS_K, MASK_THRESHOLD = 256, 32, 0.1, 0.4, 5, 0.3
# GLIDE iterative inpainting (notebook 04, skinlib.augment.inpaint / skinlib.augment.generate / skinlib.glide)
BASE_RESPACING, UPSAMPLE_RESPACING = "100", "fast27"
GUIDANCE, UPSAMPLE_TEMP = 5.0, 0.997
SQUARE_SIDE = 15 / 64          # of the image side, on the base model's 64 px grid: 60 px at 256 px
STEPS, RUNS = 12, 5
PROMPT = "an image of measles on dark skin"


def defaults(func) -> dict:
    return {k: p.default for k, p in inspect.signature(func).parameters.items()
            if p.default is not inspect.Parameter.empty}


def parameters_cell(name: str) -> dict:
    """The literal assignments of a notebook's cell tagged "parameters" (what papermill overrides)."""
    nb = json.loads((NOTEBOOKS / name).read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{name}: expected one cell tagged 'parameters', found {len(cells)}"
    values = {}
    for node in ast.parse("".join(cells[0]["source"])).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            values[node.targets[0].id] = ast.literal_eval(node.value)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):   # typed (papermill --help-notebook)
            values[node.target.id] = ast.literal_eval(node.value)
    return values


# --------------------------------------------------------------------------- cropping

def test_cropping_constants_in_the_code():
    from skinlib import data
    from skinlib.data import crops

    p = crops.CropParams()
    assert (p.window, p.stride, p.min_coverage, p.nms_iou, p.kmeans_k, p.mask_threshold) == (
        WINDOW, STRIDE, MIN_COVERAGE, NMS_IOU, KMEANS_K, MASK_THRESHOLD)
    assert data.MASK_THRESHOLD == MASK_THRESHOLD
    assert {k: defaults(crops.extract_crops)[k] for k in
            ("window", "stride", "min_coverage", "nms_iou", "kmeans_k", "mask_threshold")} == dict(
        window=WINDOW, stride=STRIDE, min_coverage=MIN_COVERAGE, nms_iou=NMS_IOU, kmeans_k=KMEANS_K,
        mask_threshold=MASK_THRESHOLD)
    assert {k: defaults(crops.select_windows)[k] for k in ("window", "stride", "min_coverage", "nms_iou")} == dict(
        window=WINDOW, stride=STRIDE, min_coverage=MIN_COVERAGE, nms_iou=NMS_IOU)
    assert defaults(crops.two_colour_mask)["k"] == defaults(crops.dominant_colour)["k"] == KMEANS_K
    assert defaults(data.load_mask)["threshold"] == MASK_THRESHOLD


def test_cropping_constants_in_notebook_01():
    p = parameters_cell("01_data_cropping.ipynb")
    assert {k: p[k] for k in ("window", "stride", "min_coverage", "nms_iou", "kmeans_k", "mask_threshold")} == dict(
        window=WINDOW, stride=STRIDE, min_coverage=MIN_COVERAGE, nms_iou=NMS_IOU, kmeans_k=KMEANS_K,
        mask_threshold=MASK_THRESHOLD)


# --------------------------------------------------------------------------- GLIDE

def test_glide_constants_in_the_code():
    from skinlib.augment import generate, inpaint
    from skinlib.glide.pipeline import GlideInpainter

    # from_pretrained passes its keyword arguments on to _load, where their defaults live
    for func in (GlideInpainter.__init__, getattr(GlideInpainter, "_load", GlideInpainter.from_pretrained)):
        d = defaults(func)
        assert (d["base_respacing"], d["upsample_respacing"]) == (BASE_RESPACING, UPSAMPLE_RESPACING)
    assert inpaint.DEFAULT_PROMPT == PROMPT
    d = defaults(inpaint.IterativeInpainting)
    assert (d["steps"], d["prompt"], d["guidance_scale"], d["upsample_temp"]) == (STEPS, PROMPT, GUIDANCE, UPSAMPLE_TEMP)
    assert isinstance(inpaint.IterativeInpainting(object()).sampler, inpaint.RandomSquares)
    assert defaults(inpaint.RandomSquares)["side"] == defaults(inpaint.make_sampler)["side"] == SQUARE_SIDE
    squares = inpaint.RandomSquares()
    assert (squares.grid, squares.image_size, squares.cells, squares.where, squares.count) == (64, 256, 15, "any", 1)
    y0, x0, y1, x1 = squares.sample(np.random.default_rng(0), np.zeros((256, 256), bool), 0).box
    assert (y1 - y0, x1 - x0) == (60, 60)
    d = defaults(generate.generate_variants)
    assert (d["runs"], d["steps"], d["prompt"], d["guidance"], d["upsample_temp"], d["sampler"]) == (
        RUNS, STEPS, PROMPT, GUIDANCE, UPSAMPLE_TEMP, "squares")


def test_glide_constants_of_the_command_line(monkeypatch, tmp_path, capsys):
    from skinlib.augment import generate, inpaint
    from skinlib.glide import pipeline

    seen = {}

    def fake_engine(cls, weights, **kw):     # records the engine settings, loads nothing
        seen["engine"] = kw
        return "engine"

    def fake_job(crops, out, **kw):         # records the job settings, runs nothing
        seen["job"] = kw
        return {}

    monkeypatch.setattr(pipeline.GlideInpainter, "from_pretrained", classmethod(fake_engine))
    monkeypatch.setattr(generate, "generate_variants", fake_job)
    for k in ("WORLD_SIZE", "RANK", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"):
        monkeypatch.delenv(k, raising=False)
    assert generate.main(["--crops", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    engine, job = seen["engine"], seen["job"]
    assert (engine["base_respacing"], engine["upsample_respacing"]) == (BASE_RESPACING, UPSAMPLE_RESPACING)
    assert (job["runs"], job["steps"], job["prompt"], job["guidance"], job["upsample_temp"]) == (
        RUNS, STEPS, PROMPT, GUIDANCE, UPSAMPLE_TEMP)
    assert isinstance(job["sampler"], inpaint.RandomSquares) and job["sampler"].side == SQUARE_SIDE
    assert job["zoom"] is None
    # the study's sampler unless asked: no SDEdit starts, ancestral steps, the whole image
    assert [engine[k] for k in ("base_start", "upsample_start", "ddim_eta", "upsample_window")] == [None] * 4
    # the small model's sampler (notebook 04's) reaches the engine from the command line
    assert generate.main(["--crops", str(tmp_path), "--out", str(tmp_path / "out"), "--base-start", "250",
                          "--upsample-start", "5", "--ddim-eta", "0", "--upsample-window", "128"]) == 0
    assert [seen["engine"][k] for k in ("base_start", "upsample_start", "ddim_eta", "upsample_window")] == [
        250, 5, 0.0, 128]


NOTEBOOK_04_RUNS = RUNS  # the study's 5 variants per crop (of 11 crops of 11 patients on the CPU)
NOTEBOOK_04_STEPS = 6    # decided for issue 17: 55 variants inside the CPU main job's budget (study: 12, the library default)


def test_glide_constants_in_notebook_04():
    """Its literals, the profile-controlled ones (None) taken from the cpu-demo profile; the study
    profile is the study's settings (issue 19)."""
    from skinlib.profiles import PROFILES

    p = parameters_cell("04_glide_inpainting.ipynb")
    assert all(p[k] is None for k in PROFILES["cpu-demo"]["04"])
    study = PROFILES["study"]["04"]
    assert (study["runs"], study["steps"], study["max_sources"], study["weights"]) == (RUNS, STEPS, 0, "official")
    assert (study["base_respacing"], study["upsample_respacing"]) == (BASE_RESPACING, UPSAMPLE_RESPACING)
    p.update(PROFILES["cpu-demo"]["04"])
    assert {k: p[k] for k in ("prompt", "runs", "steps", "guidance", "upsample_temp", "sampler",
                              "base_respacing", "upsample_respacing")} == dict(
        prompt=PROMPT, runs=NOTEBOOK_04_RUNS, steps=NOTEBOOK_04_STEPS, guidance=GUIDANCE, upsample_temp=UPSAMPLE_TEMP,
        sampler="squares", base_respacing=BASE_RESPACING, upsample_respacing=UPSAMPLE_RESPACING)
    assert not p["zoom"]                  # the study inpainted the squares without zooming
