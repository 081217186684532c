"""Folder-level GLIDE augmentation: batched, seeded, resumable, sharded.

    generate_variants(crops_dir, out_dir, inpainter=GlideInpainter.from_pretrained(...))

turns every crop of a crops folder into ``runs`` variants with
:class:`skinlib.augment.inpaint.IterativeInpainting` and writes them in the crop format::

    <out>/NNNNNN.png            variant, RGB uint8 256x256
    <out>/NNNNNN_mask.png       the source crop's ill-skin mask, carried along (255 = ill skin;
                                only when the source has one)
    <out>/NNNNNN_edit.png       union of the edited areas (255 = pixel was re-synthesised)
    <out>/history/NNNNNN_steps.png  step-index map: k = last step that edited the pixel, 0 = never
    <out>/history/NNNNNN.gif    animation of the steps (first run of every source by default)
    <out>/history/NNNNNN.json   the variant's manifest row + per-step boxes; written last, so it
                                marks the variant as finished (resuming skips it)
    <out>/manifest.csv          all rows, written once every variant of every shard exists
    <out>/manifest.shard-K-of-N.csv  the rows of shard K
    <out>/generation.json       the job's settings; a resumed or parallel shard must match them
                                (and, as a record only, the CPU of the run that wrote it)
    <out>/skipped.csv           sources that could not be used, with the reason (if any)

``NNNNNN = source_index * runs + run`` (source_index = row of the crops manifest); with a plan
(``plan=``, :mod:`skinlib.augment.plan`) each source has its own number of runs and the variants
are numbered in source order (NNNNNN = the variants of the earlier sources + run). The variant's
randomness comes only from ``item_seed(seed, source file name, run)``, so the same settings give
the same bytes whatever the sharding or interruptions. Sharding follows the engine calls'
batches (see :func:`plan_batches`), so that a variant is always computed in the same batch: the
sources are cut into consecutive groups of ``per = max(1, batch_size // runs)`` sources, and shard K
of N takes the sources of groups ``g`` with ``g % N == K``, i.e. the sources with
``(source_index // per) % N == K`` (6 sources, runs 5, batch size 10: groups {0, 1}, {2, 3}, {4, 5};
shard 0 of 2 takes sources 0, 1, 4, 5). With a plan, the sources are packed whole, in order,
into batches of up to ``batch_size`` variants (a source with more gets batches of its own), and
the g-th group of batches (those that start with the same source) goes to shard ``g % N``.
Each shard can run on its own machine / GPU (SLURM job array, ``torchrun``), all writing into the
same folder: see :func:`main` and ``other/docs/cluster.md``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .inpaint import (DEFAULT_PROMPT, IMAGE_SIZE, InpaintResult, IterativeInpainting, MaskSampler,
                      item_seed, make_sampler, save_steps_gif)
from .plan import UNKNOWN_GROUP, crop_group, plan_sha256, read_plan
from .prompts import render_prompt, template_fields
from ..cpu import cpu_info
from ..data.dataset import crops_are_synthetic, crops_content_sha256, list_crop_rows, load_crop
from ..data.metadata import skin_types
from ..data.photos import BadInputError
from ..eta import FirstUnitEstimate, format_duration
from ..io import check_manifest_paths, inside, load_json, read_csv, save_json, save_png, write_csv

GENERATOR = "glide-iterative-inpaint"
RANDOM_LABEL = "tiny RANDOM weights — not real GLIDE"
MANIFEST_FIELDS = [
    "image", "mask", "edit", "steps_map", "gif", "generator", "checkpoint", "model_is_random",
    "source_crop", "source_index", "run", "seed", "job_seed", "steps", "prompt", "guidance",
    "upsample_temp", "sampler", "zoom", "edited_fraction", "ill_fraction", "ill_edited_fraction",
    "disease", "patient", "source", "history", "model",
    "weights_kind", "weights_label", "trained_on_split", "source_split", "source_sha256", "source_patient",
    "prompt_template", "skin_group", "fitzpatrick", "plan_sha256", "plan_cell",
]


# ----------------------------------------------------------------------------------------
# plan helpers
# ----------------------------------------------------------------------------------------
def output_stem(source_index: int, run: int, runs: int) -> str:
    return f"{source_index * runs + run:06d}"


def plan_batches(n_sources: int, runs: int | Sequence[int], batch_size: int) -> list[list[tuple[int, int]]]:
    """The job's fixed batches of (source_index, run) items, in order.

    ``runs``: variants per source, one int for all (the study) or one per source (a plan,
    :mod:`skinlib.augment.plan`; 0 = none). Sources are packed whole, in order, into batches of
    up to ``batch_size`` items; a source with more runs than ``batch_size`` gets batches of its
    own, cut into ``batch_size`` runs. With one ``runs <= batch_size`` a batch thus holds all
    runs of ``batch_size // runs`` consecutive sources. The batches depend only on these
    numbers, never on sharding or on what is already finished, so every variant is always
    computed in the same batch (batched floating-point arithmetic can differ in the last bits
    between batch compositions; this keeps outputs byte-identical).
    """
    if isinstance(runs, (int, np.integer)):
        if runs < 1:
            raise ValueError(f"runs must be >= 1 (got runs={runs})")
        counts = [int(runs)] * n_sources
    else:
        counts = [int(c) for c in runs]
        if len(counts) != n_sources or any(c < 0 for c in counts):
            raise ValueError(f"runs per source must be {n_sources} counts >= 0, got {counts[:10]}...")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    batches: list[list[tuple[int, int]]] = []
    current: list[tuple[int, int]] = []
    for i, c in enumerate(counts):
        if c > batch_size:
            batches += [current] if current else []
            current = []
            batches += [[(i, r) for r in range(k, min(k + batch_size, c))] for k in range(0, c, batch_size)]
            continue
        if len(current) + c > batch_size:
            batches.append(current)
            current = []
        current += [(i, r) for r in range(c)]
    return batches + ([current] if current else [])


def shard_batches(batches: list[list[tuple[int, int]]], shard_index: int = 0,
                  num_shards: int = 1) -> list[list[tuple[int, int]]]:
    """Batches of shard ``shard_index`` of ``num_shards``: the g-th group of consecutive sources
    that share batches (``batch_size // runs`` sources, or one source when its runs fill several
    batches) goes to shard ``g % num_shards``; all runs of a source stay together. Equivalently,
    shard K takes the sources with ``(source_index // max(1, batch_size // runs)) % num_shards == K``."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, num_shards); got {shard_index} of {num_shards}")
    group_of = {}
    for b in batches:
        group_of.setdefault(b[0][0], len(group_of))
    return [b for b in batches if group_of[b[0][0]] % num_shards == shard_index]


def shard_from_env() -> tuple[int, int]:
    """(shard_index, num_shards) from ``torchrun`` (RANK / WORLD_SIZE) or a SLURM job array
    (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN / SLURM_ARRAY_TASK_COUNT); (0, 1) otherwise."""
    env = os.environ
    if "WORLD_SIZE" in env and "RANK" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"])
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        return int(env["SLURM_ARRAY_TASK_ID"]) - first, int(env["SLURM_ARRAY_TASK_COUNT"])
    return 0, 1


def respacing_steps(spec: str) -> int | None:
    """Number of diffusion steps a GLIDE respacing string keeps ("100" -> 100, "fast27" -> 27,
    "10,10,3,2,2" -> 27, "ddim50" -> 50); None when unknown."""
    spec = str(spec)
    if spec == "fast27":
        return 27
    if spec.startswith("ddim") and spec[4:].isdigit():
        return int(spec[4:])
    try:
        return sum(int(p) for p in spec.split(","))
    except ValueError:
        return None


def _identity(inpainter) -> dict:
    ident = getattr(inpainter, "identity", None)
    return dict(ident) if isinstance(ident, dict) else {"engine": type(inpainter).__name__}


def _on_cpu(inpainter) -> bool:
    """Whether the engine computes on the CPU (engines without a ``device`` are taken as CPU)."""
    return str(getattr(inpainter, "device", "cpu")).startswith("cpu")


def _comparable(identity: dict) -> dict:
    """The identity without where it runs (a CPU shard and a GPU shard may share a folder) and
    without sampler options left at None (their default), so folders written before an option
    existed still resume. Applied to the new identity and to the one a folder recorded."""
    return {k: v for k, v in identity.items() if "device" not in k.lower() and v is not None}


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``key: folder X, now Y`` for each differing (nested) setting."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: folder {json.dumps(a, default=str)[:80]}, now {json.dumps(b, default=str)[:80]}")
    return out


def _checkpoint_label(identity: dict, is_random: bool) -> str:
    """Short traceable name of the weights, e.g. "base_inpaint.pt@1a2b3c4d5e6f +
    upsample_inpaint.pt@..." (file names + sha256 prefixes when the engine reports them)."""
    if is_random:
        return RANDOM_LABEL
    files = [identity[k] for k in ("base", "upsampler") if isinstance(identity.get(k), dict)]
    if files and all("file" in f and "sha256" in f for f in files):
        return " + ".join(f"{f['file']}@{str(f['sha256'])[:12]}" for f in files)
    for key in ("weights", "source", "name"):
        if key in identity:
            return str(identity[key])
    return json.dumps(identity, sort_keys=True)[:200]


class _Progress:
    """One tqdm bar over the whole job; the first engine call (its result is kept) is timed and
    gives the expected time of all ``calls`` (:class:`skinlib.eta.FirstUnitEstimate`)."""

    def __init__(self, total: int, calls: int, enabled: bool, log: Callable, *, what: str = "the job",
                 device: str = "this device"):
        self.total, self.calls, self.enabled, self.log = total, calls, enabled, log
        self.bar = None
        self.estimate = FirstUnitEstimate(max(calls, 1), what=what, device=device, unit="engine call",
                                          hint="lower max_sources / runs (or steps) to shorten", log=log)

    def __call__(self, n: int) -> None:
        from tqdm.auto import tqdm

        if self.bar is None:
            self.estimate.measured(1)
            self.bar = tqdm(total=self.total, initial=n, unit="inpaint", desc="GLIDE variants",
                            disable=not self.enabled, dynamic_ncols=True)
        else:
            self.bar.update(n)

    def skip(self, n: int) -> None:
        """Remove ``n`` inpaints of skipped sources from the job."""
        if n:
            self.total -= n
            if self.bar is not None:
                self.bar.total = self.total
                self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------------------
# sources
# ----------------------------------------------------------------------------------------
def spread_over_patients(rows: list[dict], n: int) -> list[dict]:
    """``n`` rows taken in turn from each patient (first the most ill crop of every patient, by the
    manifest's ``coverage``, then the second, ...; patients in natural order), returned in manifest
    order: a budget of a few sources covers as many patients as it can instead of the first
    patient's overlapping crops, and its variants stay ill after their squares are repainted."""
    from ..data.photos import natural_key

    by_patient: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_patient.setdefault(r.get("patient", ""), []).append(i)
    cov = [float(r.get("coverage") or 0) for r in rows]
    for idx in by_patient.values():
        idx.sort(key=lambda i: (-cov[i], i))
    order = sorted(by_patient, key=natural_key)
    chosen: list[int] = []
    depth = 0
    while len(chosen) < min(n, len(rows)):
        for p in order:
            if depth < len(by_patient[p]) and len(chosen) < n:
                chosen.append(by_patient[p][depth])
        depth += 1
    return [rows[i] for i in sorted(chosen)]


def write_arm_plans(crops_dir, plans_dir, max_sources: int, runs: int, *, seed: int = 0) -> dict[str, Path]:
    """Notebook 04's uniform and balanced arms (:func:`skinlib.augment.plan.plan_pair`) on the
    ``max_sources`` train crops :func:`spread_over_patients` picks (0: every train crop), written
    as ``plans_dir/{uniform,balanced,union}.csv``; returns name -> path."""
    from .plan import plan_pair, write_plan

    crops_dir, plans_dir = Path(crops_dir), Path(plans_dir)
    rows = list_crop_rows(crops_dir, "train")
    sources = [r["image"] for r in (spread_over_patients(rows, max_sources) if max_sources else rows)]
    plans = plan_pair(rows, sources, runs, skin_types(crops_dir), seed=seed)
    return {name: write_plan(plans_dir / f"{name}.csv", plan) for name, plan in plans.items()}


def _source_rows(crops_dir: Path, max_sources: int | None, split: str | None = "train") -> list[dict]:
    from ..data.dataset import list_crop_rows

    rows = list_crop_rows(crops_dir, split)
    return spread_over_patients(rows, max_sources) if max_sources else rows


def _planned_counts(crops_dir: Path, rows: list[dict], plan, runs: int, max_sources: int | None,
                    split: str | None) -> tuple[list[int], dict | None, list[str] | None]:
    """Variants per source (``runs`` each, or the plan's), the plan's record for generation.json
    ({"file", "sha256", "variants"}) and each source's plan cell "disease|group" (None without a plan)."""
    if plan is None:
        return [runs] * len(rows), None, None
    if max_sources:
        raise ValueError(f"max_sources={max_sources} and plan={plan}: the plan decides how many variants "
                         f"each source gets; drop max_sources (or write a plan with fewer crops)")
    planned = read_plan(plan, list_crop_rows(crops_dir, None), split, skin_types(crops_dir))
    if [p["crop"] for p in planned] != [r["image"] for r in rows]:      # both in manifest order
        raise ValueError(f"plan {plan} does not list the crops of {crops_dir}'s {split or 'whole'} split")
    info = {"file": Path(plan).name, "sha256": plan_sha256(plan), "variants": sum(p["variants"] for p in planned)}
    return [p["variants"] for p in planned], info, [f"{p['disease']}|{p['group']}" for p in planned]


def _source_prompts(template: str, rows: list[dict], counts: list[int], types: dict, unknown: str) -> list[str]:
    """The prompt of each source (the template rendered with its disease and Fitzpatrick type;
    "" for sources without variants). Raises ValueError before any work when one cannot be made."""
    return [render_prompt(template, r, types.get(r.get("patient", "")), unknown=unknown) if c else ""
            for r, c in zip(rows, counts)]


def _prompt_and_plan_columns(src: dict, template: str, prompt: str, types: dict, plan_info: dict | None,
                             cell: str) -> dict:
    group, fitz = crop_group(src.get("patient", ""), types)
    return {"prompt": prompt, "prompt_template": template, "skin_group": group, "fitzpatrick": fitz,
            "plan_sha256": plan_info["sha256"] if plan_info else "", "plan_cell": cell}


def weights_provenance(identity: dict, is_random: bool) -> dict:
    """Which weights made a variant: ``weights_kind`` (official / fine-tuned-from-official /
    small-from-scratch / tiny-random ...), ``weights_label`` (the words every title uses) and
    ``trained_on_split`` (the crops split the weights were trained on, from their training
    record; "none" only for weights recorded as never trained on this data: the tiny-random
    models and OpenAI's released files (``weights_kind`` "official", each with its sha256);
    "" (unknown) when a trained model's record does not say, which the evaluation does not
    accept without an explicit opt-in). The full identity is the manifest's ``model`` column."""
    if is_random:
        return {"weights_kind": "tiny-random", "weights_label": RANDOM_LABEL, "trained_on_split": "none"}
    out = {"weights_kind": identity.get("weights_kind", "unknown"),
           "weights_label": identity.get("weights_label", "GLIDE weights of unknown training")}
    models = [identity.get(k) for k in ("base", "upsampler")]
    if not all(isinstance(m, dict) for m in models):
        return {**out, "trained_on_split": ""}
    splits = {str(m.get("trained_on_split") or "") for m in models if not is_official_entry(m)}
    return {**out, "trained_on_split": "" if "" in splits else "+".join(sorted(splits)) or "none"}


def is_official_entry(info: dict) -> bool:
    """Whether a model entry of an engine identity is OpenAI's released file, as loaded by
    :mod:`skinlib.glide.checkpoints` (its URL and sha256, no training record of ours)."""
    from ..glide.configs import CHECKPOINT_BASE_URL

    return (str(info.get("url", "")).startswith(CHECKPOINT_BASE_URL) and len(str(info.get("sha256", ""))) == 64
            and not any(k in info for k in ("init", "trained_on_split", "data_sha256", "steps")))


# ----------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------
def _write_variant(out_dir: Path, stem: str, res: InpaintResult, row: dict, *, has_mask: bool,
                   gif: bool, gif_label: str | None) -> None:
    save_png(out_dir / f"{stem}.png", res.image)
    if has_mask:
        save_png(out_dir / f"{stem}_mask.png", res.ill_mask.astype(np.uint8) * 255)
    save_png(out_dir / f"{stem}_edit.png", res.edited.astype(np.uint8) * 255)
    save_png(out_dir / "history" / f"{stem}_steps.png", res.step_map)
    if gif:
        save_steps_gif(out_dir / "history" / f"{stem}.gif", res.frames, label=gif_label)
    save_json(out_dir / "history" / f"{stem}.json", row)     # last: marks the variant done


def _clear_outputs(out_dir: Path) -> None:
    """Delete the files :func:`generate_variants` writes (and nothing else) from ``out_dir``."""
    import re
    import shutil

    ours = re.compile(r"^\d{6}(_mask|_edit)?\.png$|^manifest(\.shard-\d+-of-\d+)?\.csv$|"
                      r"^skipped\.csv$|^generation\.json$")
    for p in out_dir.iterdir():
        if p.is_file() and ours.match(p.name):
            p.unlink()
    if (out_dir / "history").is_dir():
        shutil.rmtree(out_dir / "history")


def _done(out_dir: Path, stem: str) -> bool:
    return (out_dir / "history" / f"{stem}.json").is_file()


def merge_manifests(out_dir, *, allow_partial: bool = False, log: Callable = print) -> Path | None:
    """Write ``out_dir/manifest.csv`` (and ``skipped.csv``) from every finished variant.

    Returns the manifest path, or None while variants are still missing (other shards still
    running or interrupted) unless ``allow_partial``. Safe to call from several shards at once.
    """
    out_dir = Path(out_dir)
    settings = load_json(out_dir / "generation.json")
    hist = out_dir / "history"
    rows = [load_json(p) for p in sorted(hist.glob("[0-9]*.json"))] if hist.is_dir() else []
    skips = [load_json(p) for p in sorted(hist.glob("skip_*.json"))] if hist.is_dir() else []
    if "variants_per_source" in settings:        # a plan: each source's own count
        skipped = {int(k["source_index"]) for k in skips}
        expected = sum(c for i, c in enumerate(settings["variants_per_source"]) if i not in skipped)
    else:
        expected = (settings["n_sources"] - len(skips)) * settings["runs"]
    if len(rows) < expected and not allow_partial:
        log(f"{len(rows)} of {expected} variants finished in {out_dir}: manifest.csv is written "
            f"when every shard has finished (or call merge_manifests(out_dir, allow_partial=True)).")
        return None
    rows.sort(key=lambda r: r["image"])
    write_csv(out_dir / "manifest.csv", [{k: _csv_value(r.get(k, "")) for k in MANIFEST_FIELDS}
                                          for r in rows], MANIFEST_FIELDS)
    if skips:
        write_csv(out_dir / "skipped.csv", skips, ["source_index", "source_crop", "reason"])
    return out_dir / "manifest.csv"


VIEW_FILE = "view.json"


def write_plan_view(samples_dir, plan_path, view_dir, *, timing: dict | None = None, log: Callable = print) -> Path:
    """A folder of the variants of ``samples_dir`` that plan ``plan_path`` asks for: variant
    ``run`` of source crop c is kept when ``run`` < the plan's count for c. The files are hard
    links (copies where the file system refuses links) and the view carries its own
    ``manifest.csv``, ``history/*.json``, ``generation.json`` and ``view.json`` (what it was made
    from, and ``timing``: the measured seconds per variant, for the evaluation's cost line), so it
    is an ordinary generated folder for notebook 05 and the leak checks. Raises
    ValueError when the plan asks for a variant ``samples_dir`` does not hold, or when
    ``view_dir`` exists and is not a view (it is never overwritten then)."""
    import shutil

    samples_dir, view_dir = Path(samples_dir), Path(view_dir)
    if view_dir.exists() and any(view_dir.iterdir()) and not (view_dir / VIEW_FILE).is_file():
        raise ValueError(f"{view_dir} holds files that are not a plan view of {samples_dir} (no {VIEW_FILE}): "
                         f"it is not replaced. Fix: move it away, or pass another out_dir.")
    want = {r["crop"]: int(r["variants"]) for r in read_csv(plan_path)}
    rows = load_variant_rows(samples_dir)
    keep = [r for r in rows if int(r["run"]) < want.get(r["source_crop"], 0)]
    have: dict[str, int] = {}
    for r in keep:
        have[r["source_crop"]] = have.get(r["source_crop"], 0) + 1
    short = [c for c, n in want.items() if n and have.get(c, 0) < n]
    if short:
        raise ValueError(f"plan {plan_path} asks for {want[short[0]]} variants of {short[0]}, but {samples_dir} holds "
                         f"{have.get(short[0], 0)} ({len(short)} crops short): generate the union plan first.")
    if view_dir.exists():
        shutil.rmtree(view_dir)
    (view_dir / "history").mkdir(parents=True)
    copied = 0
    for r in keep:
        stem = Path(r["image"]).stem
        names = [r["image"], r.get("mask") or "", r.get("edit") or "", r.get("steps_map") or "", r.get("gif") or "",
                 f"history/{stem}.json"]
        for name in filter(None, names):
            try:
                os.link(samples_dir / name, view_dir / name)
            except OSError:
                shutil.copy2(samples_dir / name, view_dir / name)
                copied += 1
    write_csv(view_dir / "manifest.csv", [{k: _csv_value(r.get(k, "")) for k in MANIFEST_FIELDS} for r in keep],
              MANIFEST_FIELDS)
    shutil.copy2(samples_dir / "generation.json", view_dir / "generation.json")
    save_json(view_dir / VIEW_FILE, {"view_of": str(samples_dir), "plan": str(plan_path),
                                     "plan_sha256": plan_sha256(plan_path), "variants": len(keep),
                                     "sources": len(have), "timing": timing})
    if copied:
        log(f"{view_dir}: hard links impossible, {copied} files copied")
    return view_dir


def _csv_value(v: Any) -> Any:
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v


# ----------------------------------------------------------------------------------------
# the job
# ----------------------------------------------------------------------------------------
def generate_variants(crops_dir, out_dir, *, inpainter, runs: int = 5, steps: int = 12,
                      prompt: str = DEFAULT_PROMPT, guidance: float = 5.0,
                      upsample_temp: float = 0.997, sampler: str | MaskSampler = "squares",
                      zoom: float | None = None, seed: int = 0, shard_index: int = 0,
                      num_shards: int = 1, batch_size: int = 10, max_sources: int | None = None,
                      gifs: str = "first-run", restart_if_changed: bool = False,
                      split: str | None = "train", profile: dict | None = None,
                      plan: str | Path | None = None, unknown_skin: str = "",
                      progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Make ``runs`` variants of every crop of ``crops_dir`` in ``out_dir`` (this shard's part).

    ``inpainter``: a :class:`skinlib.glide.pipeline.GlideInpainter`; ``steps``, ``prompt``,
    ``guidance``, ``upsample_temp``, ``sampler`` (name for :func:`skinlib.augment.inpaint.make_sampler`
    or a :class:`~skinlib.augment.inpaint.MaskSampler`), ``zoom``: the algorithm's settings (see
    :class:`~skinlib.augment.inpaint.IterativeInpainting`); ``seed``: job seed; ``batch_size``: variants
    per engine call (runs of a source and several sources share a batch); ``max_sources``: use
    only this many sources, spread over the patients (:func:`spread_over_patients`); ``gifs``: "first-run" (one animation per source), "all" or "none";
    ``restart_if_changed``: when ``out_dir`` holds variants made with other settings (or other
    crops), delete them and start over instead of raising ValueError (for smoke runs);
    ``split``: augment only the crops of this side of notebook 01's patient split ("train",
    the default; None: every crop, recorded in generation.json and each row's ``source_split``);
    ``profile``: the notebook's resolved profile (:meth:`skinlib.profiles.Resolved.record`), a record
    in generation.json (like ``cpu``, not compared when resuming: the settings it chose are).
    ``plan``: a plan CSV (:mod:`skinlib.augment.plan`, ``python -m skinlib.plan``) giving each
    source crop its number of variants instead of ``runs`` (which is then not used;
    ``max_sources`` is refused); its sha256 is a setting (resume / shards need the same plan) and
    each manifest row records it and the variant's ``plan_cell`` ("disease|group").
    ``prompt`` may be a template with ``{disease}``, ``{skin}``, ``{fitzpatrick}``
    (:mod:`skinlib.augment.prompts`; the Fitzpatrick types come from the crops' dataset,
    :func:`skinlib.data.metadata.skin_types`), rendered per source; where the type is unknown
    the skin fields render as ``unknown_skin`` (default "": left out). Each row records the
    rendered ``prompt``, the ``prompt_template``, ``skin_group`` and ``fitzpatrick``.

    Finished variants are skipped, so re-running after an interruption resumes. Returns a
    summary dict (counts, seconds, manifest path or None while other shards are unfinished).
    """
    crops_dir, out_dir = Path(crops_dir), Path(out_dir)
    if gifs not in ("first-run", "all", "none"):
        raise ValueError(f"gifs must be 'first-run', 'all' or 'none', got {gifs!r}")
    if isinstance(sampler, str):
        sampler = make_sampler(sampler)
    algo = IterativeInpainting(inpainter, steps=steps, sampler=sampler, prompt=prompt,
                               guidance_scale=guidance, upsample_temp=upsample_temp, zoom=zoom)
    is_random = bool(getattr(inpainter, "is_random", False))
    identity = _identity(inpainter)
    provenance = weights_provenance(identity, is_random)
    tag = f"[{provenance['weights_label']}] " if provenance["weights_kind"] != "official" else ""
    rows = _source_rows(crops_dir, max_sources if plan is None else None, split)
    counts, plan_info, cells = _planned_counts(crops_dir, rows, plan, runs, max_sources, split)
    types = skin_types(crops_dir)
    prompts = _source_prompts(prompt, rows, counts, types, unknown_skin)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(int).tolist()

    def stem_of(i: int, r: int) -> str:
        """Output stem of run ``r`` of source ``i``: the variants numbered in source order
        (``source_index * runs + run`` without a plan)."""
        return f"{offsets[i] + r:06d}"

    mine = shard_batches(plan_batches(len(rows), counts if plan is not None else runs, batch_size),
                         shard_index, num_shards)
    settings = {"generator": GENERATOR, "crops_dir": str(crops_dir), "runs": runs if plan is None else "plan",
                "seed": seed,
                "n_sources": len(rows), "max_sources": max_sources, "split": split or "all",
                "n_source_patients": len({r.get("patient", "") for r in rows}),
                "image_size": IMAGE_SIZE,
                "sources_sha256": crops_content_sha256(crops_dir, rows),
                "gifs": gifs, "batch_size": batch_size, "model_is_random": is_random,
                "model": _comparable(identity), **algo.settings(),
                # on CPU torch's thread count changes the engine's last bits, which 8-bit rounding
                # and the following steps can turn into different pixels (see other/docs/cluster.md)
                "cpu_threads": torch.get_num_threads() if _on_cpu(inpainter) else None,
                # the CPU of the run that wrote this file (bf16 speed depends on it; issue 21):
                # a record, not a setting, so a resume or shard on another CPU is not refused
                "cpu": cpu_info(), "profile": profile}
    if plan is not None:          # only with a plan / a template, so older folders still resume
        settings.update(plan=plan_info, variants_per_source=counts)
    if template_fields(prompt):
        settings.update(prompts_sha256=hashlib.sha256("\n".join(map(str, prompts)).encode()).hexdigest(),
                        unknown_skin=unknown_skin)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings_path = out_dir / "generation.json"
    if settings_path.is_file():
        old = json.loads(json.dumps(load_json(settings_path), default=str))
        if isinstance(old.get("model"), dict):  # may have been written before None options were dropped
            old["model"] = _comparable(old["model"])
        new = json.loads(json.dumps(settings, default=str))
        diff = sorted(k for k in set(old) | set(new) if k not in ("crops_dir", "cpu", "profile") and old.get(k) != new.get(k)
                      # threads matter between CPU runs; a CPU and a GPU shard may share a folder
                      and not (k == "cpu_threads" and None in (old.get(k), new.get(k))))
        if diff and restart_if_changed:
            log(f"{out_dir} holds variants made with other settings ({', '.join(diff)}): "
                f"deleting them and starting over (restart_if_changed=True).")
            _clear_outputs(out_dir)
            save_json(settings_path, settings)
        elif diff:
            raise ValueError(
                f"{out_dir} already holds variants made with other settings (differing: "
                f"{'; '.join(_differences({k: old.get(k) for k in diff}, {k: new.get(k) for k in diff}))}; "
                f"see {settings_path}). Use a new out_dir, or delete the folder "
                f"to start over. Resuming and sharding need exactly the same settings, batch_size "
                f"included (it fixes which variants share an engine call, and batched arithmetic "
                f"can differ in the last bits)"
                + (f", and on CPU the same number of torch threads: this run uses {new.get('cpu_threads')}, "
                   f"the folder's variants were made with {old.get('cpu_threads')} (pass --threads "
                   f"{old.get('cpu_threads')}; notebook 04: threads = {old.get('cpu_threads')})"
                   if "cpu_threads" in diff else "") + ".")
        elif old.get("profile") != new.get("profile"):    # same settings: record this session's profile
            save_json(settings_path, {**load_json(settings_path), "profile": profile})
    else:
        save_json(settings_path, settings)

    my_items = [it for bt in mine for it in bt]

    def unfinished(i: int, r: int) -> bool:
        return not (_done(out_dir, stem_of(i, r))
                    or (out_dir / "history" / f"skip_{i:06d}.json").is_file())

    # a batch with any unfinished variant is recomputed whole (same batch = same bytes);
    # its finished variants are not written again
    todo = [bt for bt in mine if any(unfinished(i, r) for i, r in bt)]
    n_todo = sum(unfinished(i, r) for bt in todo for i, r in bt)
    n_images = sum(len(bt) for bt in todo)
    n_diff = [respacing_steps(identity.get(k, "")) for k in ("base_respacing", "upsample_respacing")]
    calls = len(todo) * steps
    per_source = (f"x {runs} runs" if plan is None else
                  f"with {len(my_items)} variants of plan {Path(plan).name} (sha256 {plan_info['sha256'][:12]}; "
                  f"runs={runs} not used)")
    n_unknown = sum(c > 0 and crop_group(r.get("patient", ""), types)[0] == UNKNOWN_GROUP
                    for r, c in zip(rows, counts))
    log(f"{tag}Plan (shard {shard_index + 1} of {num_shards}): "
        f"{len(dict.fromkeys(i for i, _ in my_items))} of {len(rows)} sources {per_source} x "
        f"{steps} steps; {len(my_items) - n_todo} variants already done, {n_todo} to make = "
        f"{n_images * steps} inpaints in {calls} engine calls of up to {batch_size} images; each "
        f"inpaint = base {n_diff[0] or '?'} diffusion steps (guided pair batched) + upsampler "
        f"{n_diff[1] or '?'} steps; sampler {sampler.describe()}{f', zoom {zoom}' if zoom else ''}; "
        f"prompt {prompt!r}, guidance {guidance}."
        + (f" Prompt template: {len(set(p for p in prompts if p))} distinct prompt(s), e.g. "
           f"{next(p for p in prompts if p)!r}; {n_unknown} source(s) of unknown Fitzpatrick type render "
           f"{{skin}} / {{fitzpatrick}} as {unknown_skin!r}." if template_fields(prompt) else ""))

    t_start = time.perf_counter()
    bar = _Progress(n_images * steps, calls, progress, log, what=f"{n_todo} variants ({n_images * steps} inpaints)",
                    device=str(getattr(inpainter, "device", "this device")))
    made = 0
    try:
        for batch in todo:
            sources = {i: _prepare_source(crops_dir, rows[i], i, sampler, out_dir, log)
                       for i in dict.fromkeys(i for i, _ in batch)}
            items = [(i, r) for i, r in batch if sources[i] is not None]
            bar.skip((len(batch) - len(items)) * steps)     # unusable sources: recorded skips
            if not items:
                continue
            seeds = [item_seed(seed, rows[i]["image"], r) for i, r in items]
            keep = [gifs == "all" or (gifs == "first-run" and r == 0) for _, r in items]
            results = algo.run(torch.stack([sources[i][0] for i, _ in items]),
                               torch.stack([sources[i][1] for i, _ in items]), seeds,
                               keep_frames=keep, on_step=bar,
                               engine_progress_first=progress and bar.bar is None,
                               prompts=[prompts[i] for i, _ in items] if template_fields(prompt) else None)
            for (i, r), res, gif in zip(items, results, keep):
                stem = stem_of(i, r)
                if _done(out_dir, stem):
                    continue
                has_mask = sources[i][2]
                row = _manifest_row(stem, rows[i], i, r, res, has_mask=has_mask, gif=gif,
                                    seed=seed, algo=algo, identity=identity, is_random=is_random,
                                    crops_dir=crops_dir, split=split,
                                    extra=_prompt_and_plan_columns(rows[i], prompt, prompts[i], types,
                                                                   plan_info, cells[i] if cells else ""))
                _write_variant(out_dir, stem, res, row, has_mask=has_mask, gif=gif,
                               gif_label=None if provenance["weights_kind"] == "official"
                               else textwrap.fill(provenance["weights_label"].replace("—", "-"), 42))
                made += 1
    finally:
        bar.close()

    # this shard's manifest (all its finished variants, including earlier sessions')
    shard_rows = [load_json(out_dir / "history" / f"{stem_of(i, r)}.json")
                  for i, r in my_items if _done(out_dir, stem_of(i, r))]
    write_csv(out_dir / f"manifest.shard-{shard_index}-of-{num_shards}.csv",
              [{k: _csv_value(x.get(k, "")) for k in MANIFEST_FIELDS} for x in shard_rows],
              MANIFEST_FIELDS)
    manifest = merge_manifests(out_dir, log=log)
    seconds = time.perf_counter() - t_start
    n_skipped_sources = len(list((out_dir / "history").glob("skip_*.json"))) if (out_dir / "history").is_dir() else 0
    lowered = lowered_overlap_steps(shard_rows)
    log(f"{tag}Shard {shard_index + 1}/{num_shards}: made {made} variants in {format_duration(seconds)}, "
        f"{len(shard_rows)} of this shard's variants finished"
        f"{f', {n_skipped_sources} source(s) skipped (see skipped.csv)' if n_skipped_sources else ''}"
        + (f"; in {lowered} step(s) no square reached the sampler's min_overlap "
           f"{getattr(sampler, 'min_overlap', '?')}, so its best overlap was used (history: min_overlap)"
           if lowered else "") + ".")
    return {"out_dir": str(out_dir), "made": made, "shard_variants": len(shard_rows),
            "skipped_sources": n_skipped_sources, "seconds": seconds, "lowered_overlap_steps": lowered,
            "manifest": str(manifest) if manifest else None, "model_is_random": is_random}


ARM_FOLDERS = {"uniform": "samples", "balanced": "samples_balanced"}
UNION_FOLDER = "samples_all"
TIMING_FILE = "timing.json"


def generate_uniform_and_balanced(crops_dir, glide_dir, *, inpainter, runs: int, max_sources: int | None,
                                  seed: int = 0, log: Callable = print, **kwargs) -> dict:
    """Notebook 04's two GLIDE arms in one job: the uniform plan (the study's ``runs`` variants of
    each of the ``max_sources`` sources) and the balanced plan (the same sources and number of
    variants, given first to the (disease, Fitzpatrick group) cells with the fewest real crops),
    see :func:`write_arm_plans`. Their union is generated once into ``glide_dir/samples_all``
    (every other argument as :func:`generate_variants`; resumable and sharded the same way); when
    it is complete, ``glide_dir/samples`` (uniform) and ``glide_dir/samples_balanced`` are written
    as views of it (:func:`write_plan_view`) carrying the measured seconds per variant of this
    device (of the last run or shard that made variants: a resumed run that made a few sets it
    from those few). Returns the generation summary plus ``plans`` and ``views`` (name -> folder;
    empty while other shards are unfinished; with shards, run the notebook once more after all
    have finished, or call this again, so that one process writes the views)."""
    glide_dir = Path(glide_dir)
    plans = write_arm_plans(crops_dir, glide_dir / "plans", max_sources or 0, runs, seed=seed)
    union_dir = glide_dir / UNION_FOLDER
    summary = generate_variants(crops_dir, union_dir, inpainter=inpainter, runs=runs, plan=plans["union"],
                                seed=seed, log=log, **kwargs)
    if summary["made"]:
        save_json(union_dir / TIMING_FILE, {
            "seconds_per_variant": summary["seconds"] / summary["made"], "variants_timed": summary["made"],
            "device": str(getattr(inpainter, "device", "")), "cpu": cpu_info(),
            "what": "wall seconds of this run's generation (engine calls, file writing) / variants it made"})
    timing = load_json(union_dir / TIMING_FILE) if (union_dir / TIMING_FILE).is_file() else None
    views = {}
    if summary["manifest"]:
        for name, folder in ARM_FOLDERS.items():
            views[name] = write_plan_view(union_dir, plans[name], glide_dir / folder, timing=timing, log=log)
        n = {k: sum(int(r["variants"]) for r in read_csv(plans[k])) for k in ("uniform", "balanced", "union")}
        log(f"arms: uniform {n['uniform']} variants -> {views['uniform']}, balanced {n['balanced']} -> "
            f"{views['balanced']}; {n['union']} generated in {union_dir} (their union: variant r of a crop is "
            f"the same image in both)")
    return {**summary, "plans": {k: str(v) for k, v in plans.items()}, "views": {k: str(v) for k, v in views.items()}}


def lowered_overlap_steps(rows: Sequence[dict]) -> int:
    """Steps of the variants ``rows`` whose squares sampler lowered its ``min_overlap`` (no square
    reached it on that crop; recorded per step in the history, see ``RandomSquares``)."""
    return sum("min_overlap_lowered_from" in e for r in rows for e in (r.get("history") or []))


def _prepare_source(crops_dir: Path, row: dict, index: int, sampler: MaskSampler, out_dir: Path,
                    log: Callable):
    """Load one source; on bad input record a skip (history/skip_NNNNNN.json) and return None."""
    reason = None
    try:
        image, mask, has_mask = load_crop(crops_dir, row, IMAGE_SIZE, resize=False)
        if sampler.needs_mask and not has_mask:
            reason = (f"{crops_dir / row['image']} has no ill-skin mask (no mask named in the manifest, no "
                      f"{Path(row['image']).stem}_mask.png), and sampler '{sampler.name}' draws its squares "
                      f"from the mask")
        else:
            reason = sampler.unusable_reason(mask[0].numpy() > 0.5)
    except BadInputError as e:          # names the file and the fix
        reason = str(e)
    except (OSError, ValueError, KeyError) as e:
        reason = f"cannot read {crops_dir / row.get('image', '?')} or its mask: {e}"
    if reason:
        log(f"Skipping source {index} ({row.get('image')}): {reason}. Fix or remove the crop, "
            f"delete {out_dir / 'history' / f'skip_{index:06d}.json'} and re-run to include it.")
        save_json(out_dir / "history" / f"skip_{index:06d}.json",
                  {"source_index": index, "source_crop": row.get("image", ""), "reason": reason})
        return None
    return image, mask, has_mask


def _manifest_row(stem, src: dict, index: int, run: int, res: InpaintResult, *, has_mask: bool,
                  gif: bool, seed: int, algo: IterativeInpainting, identity: dict,
                  is_random: bool, crops_dir: Path, split: str | None = "train",
                  extra: dict | None = None) -> dict:
    import hashlib

    ill = res.ill_mask
    source_sha = hashlib.sha256(inside(crops_dir, src["image"], what="source crop").read_bytes()).hexdigest()
    return {
        "image": f"{stem}.png", "mask": f"{stem}_mask.png" if has_mask else "",
        "edit": f"{stem}_edit.png", "steps_map": f"history/{stem}_steps.png",
        "gif": f"history/{stem}.gif" if gif else "", "generator": GENERATOR,
        "checkpoint": _checkpoint_label(identity, is_random), "model_is_random": is_random,
        "source_crop": src["image"], "source_index": index, "run": run, "seed": res.seed,
        "job_seed": seed, "steps": algo.steps, "prompt": algo.prompt,
        "guidance": algo.guidance_scale, "upsample_temp": algo.upsample_temp,
        "sampler": algo.sampler.describe(), "zoom": algo.zoom if algo.zoom else "",
        "edited_fraction": round(res.edited_fraction, 6),
        "ill_fraction": round(float(ill.mean()), 6) if has_mask else "",
        "ill_edited_fraction": round(float(res.ill_edited.mean()), 6) if has_mask else "",
        "disease": src.get("disease", ""), "patient": src.get("patient", ""),
        "source": src.get("source", ""), "history": res.history, "model": identity,
        **weights_provenance(identity, is_random),
        "source_split": src.get("split", "") or (split or "all"), "source_sha256": source_sha,
        "source_patient": src.get("patient", ""), **(extra or {}),
    }


# ----------------------------------------------------------------------------------------
# reading results and figures
# ----------------------------------------------------------------------------------------
def load_variant_rows(out_dir) -> list[dict]:
    """Rows of every finished variant of ``out_dir`` (from the per-variant JSON records, so
    it also works while shards are unfinished), sorted by file name."""
    hist = Path(out_dir) / "history"
    rows = [load_json(p) for p in sorted(hist.glob("[0-9]*.json"))] if hist.is_dir() else []
    check_manifest_paths(out_dir, rows, manifest="history/*.json")   # files of out_dir only
    return rows


def _source_path(crops_dir, row: dict) -> Path:
    """The variant's source crop in ``crops_dir`` (refused when its name leads out of it)."""
    return inside(crops_dir, row["source_crop"], what=f"variant {row.get('image')}, column source_crop")


def _read_rgb(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _read_l(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def _figure_title(text: str, rows: Sequence[dict], crops_dir) -> str:
    from ..viz import title

    suffix = title_suffix(rows)
    return title(text, crops_are_synthetic(crops_dir)) + (f"\n{suffix[3:]}" if suffix else "")


def title_suffix(rows: Sequence[dict]) -> str:
    """' — tiny RANDOM weights — not real GLIDE' when the variants come from the random model,
    ' — small GLIDE-architecture model trained on this run's crops — not OpenAI's GLIDE' (the
    row's ``weights_label``) when they come from weights trained here; '' for OpenAI's weights."""
    if any(str(r.get("model_is_random")) == "True" for r in rows):
        return f" — {RANDOM_LABEL}"
    labels = sorted({str(r["weights_label"]) for r in rows
                     if r.get("weights_label") and r.get("weights_kind") != "official"})
    return "".join(f" — {label}" for label in labels)


def plot_variants_grid(out_dir, crops_dir, *, n_sources: int = 5, max_runs: int = 5,
                       title: str | None = None):
    """Figure like the study's: each row a source crop, an arrow, then Gen 1..R.

    Returns the matplotlib figure (None when the folder has no variants)."""
    import matplotlib.pyplot as plt
    from matplotlib import patheffects

    out_dir, crops_dir = Path(out_dir), Path(crops_dir)
    rows = load_variant_rows(out_dir)
    if not rows:
        return None
    by_source: dict[int, list[dict]] = {}
    for r in rows:
        by_source.setdefault(int(r["source_index"]), []).append(r)
    sources = sorted(by_source)[:n_sources]
    runs = min(max_runs, max(len(v) for v in by_source.values()))
    outline = [patheffects.withStroke(linewidth=2, foreground="black")]
    fig, axes = plt.subplots(len(sources), runs + 2, figsize=(1.9 * (runs + 1.5), 1.9 * len(sources) + 0.4),
                             squeeze=False, gridspec_kw={"width_ratios": [1, 0.5] + [1] * runs})
    for row_axes, s in zip(axes, sources):
        variants = sorted(by_source[s], key=lambda r: int(r["run"]))[:runs]
        for ax in row_axes:
            ax.set_axis_off()
        row_axes[0].imshow(_read_rgb(_source_path(crops_dir, variants[0])))
        row_axes[0].text(4, 18, "source", color="white", fontsize=8, path_effects=outline)
        row_axes[1].annotate("", xy=(0.95, 0.5), xytext=(0.05, 0.5), xycoords="axes fraction",
                             arrowprops=dict(arrowstyle="simple,head_width=1.6,head_length=0.9,tail_width=0.6",
                                             fc="white", ec="black", lw=1.5))
        for k, v in enumerate(variants):
            row_axes[k + 2].imshow(_read_rgb(out_dir / v["image"]))
            row_axes[k + 2].text(4, 22, f"Gen {k + 1}", color="white", fontsize=10, path_effects=outline)
    fig.suptitle(_figure_title(title or f"GLIDE iterative inpainting: source -> Gen 1..{runs}",
                               rows, crops_dir), fontsize=10)
    fig.tight_layout()
    return fig


def plot_edit_overlays(out_dir, crops_dir, *, n: int = 4, title: str | None = None):
    """For ``n`` variants: source with its ill-skin mask outlined, the variant with the edited
    area tinted, and the step-index map (which step last edited each pixel)."""
    import matplotlib.pyplot as plt

    out_dir, crops_dir = Path(out_dir), Path(crops_dir)
    rows = load_variant_rows(out_dir)[:n]
    if not rows:
        return None
    fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.5 * len(rows)), squeeze=False)
    for ax_row, r in zip(axes, rows):
        src = _read_rgb(_source_path(crops_dir, r))
        img = _read_rgb(out_dir / r["image"]).astype(np.float32)
        edit = _read_l(out_dir / r["edit"]) > 127
        steps_map = _read_l(out_dir / r["steps_map"])
        ax_row[0].imshow(src)
        if r.get("mask"):
            ax_row[0].contour(_read_l(out_dir / r["mask"]) > 127, levels=[0.5], colors="cyan",
                              linewidths=0.8)
        ax_row[0].set_title(f"source {r['source_crop']}\n(cyan: ill skin)", fontsize=7)
        tint = img.copy()
        tint[edit] = 0.55 * tint[edit] + 0.45 * np.array([255, 220, 0])
        ax_row[1].imshow(tint.astype(np.uint8))
        ax_row[1].contour(edit, levels=[0.5], colors="yellow", linewidths=0.8)
        ax_row[1].set_title(f"{r['image']} run {r['run']}: edited "
                            f"{100 * float(r['edited_fraction']):.0f}%", fontsize=7)
        n_steps = max(1, int(r["steps"]))
        ax_row[2].imshow(src.mean(axis=2), cmap="gray", vmin=-255, vmax=400)    # dimmed source
        im = ax_row[2].imshow(np.ma.masked_equal(steps_map, 0), cmap="viridis",
                              vmin=0.5, vmax=n_steps + 0.5)
        ax_row[2].set_title("step that last edited each pixel", fontsize=7)
        bar = fig.colorbar(im, ax=ax_row[2], fraction=0.046)
        bar.set_ticks(np.unique(np.linspace(1, n_steps, min(n_steps, 6)).round()))
        for ax in ax_row:
            ax.set_axis_off()
    fig.suptitle(_figure_title(title or "Edited areas", rows, crops_dir), fontsize=9)
    fig.tight_layout()
    return fig


def gif_frames(path) -> list[np.ndarray]:
    """The frames of a steps GIF as uint8 [H,W,3] arrays."""
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        return [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]


def step_slider(out_dir, stem: str | None = None):
    """ipywidgets slider over the steps of one variant's animation (the first GIF by default):
    frame 0 is the source, frame k the image after step k. Returns the widget."""
    import io as _io

    import ipywidgets as widgets
    from PIL import Image

    rows = [r for r in load_variant_rows(out_dir) if r.get("gif")]
    if stem is not None:
        rows = [r for r in rows if r["image"] == f"{stem}.png"]
    if not rows:
        raise FileNotFoundError(f"no step animation in {Path(out_dir) / 'history'} "
                                f"(generate with gifs='first-run' or 'all')")
    r = rows[0]
    pngs = []
    for f in gif_frames(Path(out_dir) / r["gif"]):
        buf = _io.BytesIO()
        Image.fromarray(f).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    head = f"{r['image']} (from {r['source_crop']}){title_suffix([r])}: "
    image = widgets.Image(value=pngs[0], format="png", width=320)
    label = widgets.Label(head + "source")
    slider = widgets.IntSlider(value=0, min=0, max=len(pngs) - 1, description="step")

    def on_change(change):
        image.value = pngs[change["new"]]
        label.value = head + ("source" if change["new"] == 0 else f"after step {change['new']}")

    slider.observe(on_change, names="value")
    return widgets.VBox([widgets.HBox([slider, label]), image])


# ----------------------------------------------------------------------------------------
# command line: one shard per process (SLURM job array / torchrun / plain)
# ----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``python -m skinlib.generate --crops DIR --out DIR [...]``; the shard defaults to the
    torchrun rank / SLURM array task (see :func:`shard_from_env`)."""
    env_shard, env_shards = shard_from_env()
    p = argparse.ArgumentParser(prog="python -m skinlib.generate", description=main.__doc__)
    p.add_argument("--crops", required=True, help="crops folder (crop format)")
    p.add_argument("--out", required=True, help="output folder (shared by all shards)")
    p.add_argument("--weights", default="official",
                   help='"official" (download/cache), a folder with base_inpaint.pt and '
                        'upsample_inpaint.pt (OpenAI\'s, or trained by python -m skinlib.glide.finetune), '
                        'or "tiny-random" (pipeline checks only)')
    p.add_argument("--split", default="train",
                   help='augment the crops of this patient-split side: "train" (default) or "all"')
    p.add_argument("--cache-dir", default=None, help="checkpoint cache folder")
    p.add_argument("--runs", type=int, default=None, help="variants per source crop (default 5; not with --plan)")
    p.add_argument("--plan", default=None, metavar="PLAN.csv",
                   help="variants per source crop from a plan (python -m skinlib.plan) instead of --runs")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--prompt", default=DEFAULT_PROMPT,
                   help="prompt, or a template with {disease}, {skin} (light / medium / dark from the "
                        "Fitzpatrick group), {fitzpatrick} (I..VI), e.g. 'an image of {disease} on {skin} skin'")
    p.add_argument("--unknown-skin", default="",
                   help="what {skin} / {fitzpatrick} render as for a patient of unknown Fitzpatrick type "
                        "(default: nothing, the word is left out)")
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--upsample-temp", type=float, default=0.997)
    p.add_argument("--sampler", default="squares",
                   help="squares | squares-ill | squares-healthy | user (with --user-masks)")
    p.add_argument("--user-masks", nargs="+", default=None, metavar="PNG",
                   help="--sampler user: one L-mode PNG (255 = re-synthesise) used at every step, "
                        "or one PNG per step")
    p.add_argument("--zoom", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--max-sources", type=int, default=None,
                   help="use only this many source crops, taken in turn from each train patient")
    p.add_argument("--gifs", default="first-run", choices=["first-run", "all", "none"])
    p.add_argument("--base-respacing", default="100")
    p.add_argument("--upsample-respacing", default="fast27")
    p.add_argument("--base-start", type=int, default=None,
                   help="SDEdit start of the base model (GlideInpainter.set_base_start; default: pure noise)")
    p.add_argument("--upsample-start", type=int, default=None,
                   help="SDEdit start of the upsampler (set_upsample_start; default: pure noise)")
    p.add_argument("--ddim-eta", type=float, default=None,
                   help="DDIM steps with this eta (set_ddim; default: the original's ancestral steps)")
    p.add_argument("--upsample-window", type=int, default=None,
                   help="upsampler window around each square, px (set_upsample_window; default: whole image)")
    p.add_argument("--shard-index", type=int, default=env_shard)
    p.add_argument("--num-shards", type=int, default=env_shards)
    p.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK when CUDA is available, else cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default); every CPU shard and resume "
                        "of one output folder needs the same number (it changes the bytes)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.plan and a.runs is not None:
        p.error("--runs and --plan: the plan gives each crop its number of variants; drop --runs")
    if a.user_masks and a.sampler not in ("user", "user-mask"):
        p.error(f"--user-masks is only used with --sampler user (got --sampler {a.sampler})")
    try:
        sampler = make_sampler(a.sampler, user_masks=a.user_masks)
        sampler.check_steps(a.steps)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    if a.threads:
        torch.set_num_threads(a.threads)
    from ..glide.pipeline import GlideInpainter

    device = a.device
    if device is None:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    inpainter = GlideInpainter.from_pretrained(a.weights, device=device, cache_dir=a.cache_dir,
                                               base_respacing=a.base_respacing,
                                               upsample_respacing=a.upsample_respacing,
                                               base_start=a.base_start, upsample_start=a.upsample_start,
                                               ddim_eta=a.ddim_eta, upsample_window=a.upsample_window)
    summary = generate_variants(
        a.crops, a.out, inpainter=inpainter, runs=5 if a.runs is None else a.runs, steps=a.steps,
        prompt=a.prompt, plan=a.plan, unknown_skin=a.unknown_skin,
        guidance=a.guidance, upsample_temp=a.upsample_temp, sampler=sampler, zoom=a.zoom,
        seed=a.seed, shard_index=a.shard_index, num_shards=a.num_shards,
        batch_size=a.batch_size, max_sources=a.max_sources, gifs=a.gifs,
        split=None if a.split == "all" else a.split,
        progress=not a.no_progress)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
