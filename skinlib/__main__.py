"""The main job: ``python -m skinlib run`` executes the numbered notebooks with papermill.

    python -m skinlib run [--data DIR] [--out DIR] [--params FILE.yaml] [--smoke]
                          [--only 01 02 ...] [--notebooks DIR] [--folds K] [--profile P]

With no arguments it runs every stage on the SYNTHETIC demo dataset into a fresh folder
``runs/<timestamp>``. Executed notebooks go to ``<out>/notebooks/``, crops to ``<out>/crops/``,
every later artefact below ``<out>``; ``<out>/summary.md`` and ``<out>/run.json`` say what ran:
each stage ``ok``, ``failed`` (the error), ``skipped`` (a stage it needs failed) or ``not run``
(only: OpenAI's GLIDE weights were asked for, are not in the cache and the machine is offline;
the summary says how to supply them). The exit code is 1 unless every stage asked for is ``ok``.

``--folds K`` (K >= 2; default 1: the single train/test split) is patient-level cross-validation:
notebook 01 (parameter ``folds``) deals the patients to K folds and writes one crops folder view
per fold, ``<out>/fold<f>/crops`` (fold f's patients test, all others train); notebooks 02-05
then run once per fold with ``out_dir = <out>/fold<f>`` (generators and detectors of fold f
never see its test patients), and ``<out>/eval`` pools the test predictions of all folds, every
patient tested once (:mod:`skinlib.evaluation.folds`). The summary has one row per (stage, fold).

``--profile`` ("auto", the default; "study"; "cpu-demo") is passed to every notebook that has the
parameter (02-05): "auto" is "study" on a CUDA device, "cpu-demo" otherwise (other/docs/profiles.md).
Each stage's record in run.json holds the profile its notebook resolved (read from the stage's
manifest: dcgan/cvae ``config.json``, ``glide/samples/generation.json``, ``eval/results.json``).
While a notebook runs, the stage bar shows its running cell and last printed line.

The params YAML maps parameter names to values for every notebook that declares them, and
stage keys ("01" ... "05") to per-notebook overrides::

    seed: 1
    "02": {epochs: 20, image_size: 128}
    "04": {weights: /data/glide, runs: 3}
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .io import atomic_write_text, save_json
from .profiles import CHOICES
from .stages import HEADLESS_ENV, STAGES, Stage, notebooks_dir

GLIDE_HELP = (
    "Supply OpenAI's GLIDE weights: on a machine with internet the notebook downloads "
    "base_inpaint.pt and upsample_inpaint.pt by itself; offline, download them from "
    "https://openaipublic.blob.core.windows.net/diffusion/dec-2021/base_inpaint.pt and "
    "https://openaipublic.blob.core.windows.net/diffusion/dec-2021/upsample_inpaint.pt, put both in "
    "one folder and re-run with `--only 04 05 --params p.yaml` where p.yaml says "
    "`\"04\": {weights: /that/folder}` (or place them in the cache folder the error names). "
    "With `weights: auto` (the default) and no cached weights, notebook 04 trains the small "
    "GLIDE-architecture model on the run's crops instead; `--smoke` trains a tiny one for two steps "
    "(pipeline check only). The GPT-2 vocabulary ships with the package.")


def load_params(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    import yaml

    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"--params: file {p} not found.")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise SystemExit(f"--params: {p} is not valid YAML: {e}")
    if not isinstance(data, dict):
        raise SystemExit(f"--params: {p} must hold a mapping (name: value), not {type(data).__name__}.")
    return data


def is_stage_section(name: Any) -> bool:
    """True for a params-YAML key naming a stage ("02", or 2 as YAML reads an unquoted 02)."""
    key = f"{name:02d}" if isinstance(name, int) else str(name)
    return key in {s.key for s in STAGES}


def check_common_params(params: dict[str, Any], notebooks: list[Path]) -> None:
    """Top-level YAML keys must be a parameter of at least one notebook that will run (typos)."""
    import papermill

    declared = set().union(*(papermill.inspect_notebook(str(nb)) for nb in notebooks))
    unknown = sorted(str(k) for k in params if not is_stage_section(k) and k not in declared)
    if unknown:
        raise SystemExit(f"--params: no notebook of this run has parameter(s) {unknown}; "
                         f"they accept: {sorted(declared)}.")


def stage_parameters(stage: Stage, nb_path: Path, params: dict[str, Any], *, out: Path,
                     data: str | None, smoke: bool, profile: str = "auto") -> dict[str, Any]:
    """Parameters for one notebook: out_dir, smoke, profile (when declared), common ones it
    declares, then its own section of the YAML."""
    import papermill

    declared = papermill.inspect_notebook(str(nb_path))
    chosen: dict[str, Any] = {"out_dir": str(out), "smoke": smoke, "profile": profile}
    if data and "data_dir" in declared:
        chosen["data_dir"] = str(Path(data).resolve())
    for name, value in params.items():
        if not is_stage_section(name) and name in declared:
            chosen[name] = value
    section = params.get(stage.key, params.get(int(stage.key), {})) or {}
    if not isinstance(section, dict):
        raise SystemExit(f"--params: section \"{stage.key}\" must be a mapping of parameter: value.")
    unknown = sorted(set(section) - set(declared))
    if unknown:
        raise SystemExit(
            f"--params: notebook {stage.notebook} has no parameter(s) {unknown}; "
            f"it accepts: {sorted(declared)}.")
    chosen.update(section)
    return {k: v for k, v in chosen.items() if k in declared}


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parents[1],
                              capture_output=True, text=True, timeout=10).stdout.strip() or "unknown"
    except Exception:  # noqa: BLE001 - provenance only
        return "unknown"


FOLD_INPUTS = ("crops_dir", "real_crops", "dcgan_dir", "cvae_dir", "glide_dir", "run_dir")   # set per fold


def check_fold_params(params: dict[str, Any], folds: int) -> None:
    """With ``--folds`` K >= 2 the main job sets each fold's input folders itself; the YAML must not."""
    if any(k == "folds" or (isinstance(v, dict) and "folds" in v) for k, v in params.items()):
        raise SystemExit("--params: set the number of folds with --folds K on the main job, not as a notebook parameter.")
    if folds < 2:
        return
    clash = sorted({k for k in params if k in FOLD_INPUTS} | {k for v in params.values() if isinstance(v, dict)
                                                             for k in v if k in FOLD_INPUTS})
    if clash:
        raise SystemExit(f"--params: with --folds {folds} every fold reads its own crops view and writes its own "
                         f"folders (<out>/fold<f>/...), so {clash} cannot be set; remove them.")


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    nb_dir = Path(args.notebooks) if args.notebooks else notebooks_dir()
    os.environ.setdefault(HEADLESS_ENV, "1")   # kernels inherit it: no ipywidgets in headless runs
    out = Path(args.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S")).resolve()
    if args.data and not Path(args.data).is_dir():
        raise SystemExit(f"--data: folder {args.data} not found (expected the layout of data_README.md).")
    params = load_params(args.params)
    wanted = [f"{int(k):02d}" if k.isdigit() else k for k in (args.only or [s.key for s in STAGES])]
    unknown = sorted(set(wanted) - {s.key for s in STAGES})
    if unknown:
        raise SystemExit(f"--only: unknown stage(s) {unknown}; stages are {[s.key for s in STAGES]}.")
    stages = [s for s in STAGES if s.key in wanted]
    for s in stages:
        if not (nb_dir / s.notebook).is_file():
            raise SystemExit(f"Notebook {nb_dir / s.notebook} is missing; check --notebooks.")
    check_common_params(params, [nb_dir / s.notebook for s in stages])
    folds = getattr(args, "folds", 1)
    if folds < 1:
        raise SystemExit(f"--folds must be >= 1 (1: the single train/test split), got {folds}.")
    check_fold_params(params, folds)
    if folds > 1 and "01" not in wanted:
        from .data.split import fold_views

        try:
            fold_views(out, folds)
        except FileNotFoundError as e:
            raise SystemExit(f"--folds {folds}: {e}")
    jobs = [(s, None) for s in stages] if folds == 1 else (
        [(s, None) for s in stages if s.key == "01"] + [(s, f) for f in range(folds) for s in stages if s.key != "01"])
    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    print(f"Run folder: {out}")
    print(f"Data: {Path(args.data).resolve() if args.data else 'SYNTHETIC demo dataset (generated)'}"
          f"{'   [SMOKE mode]' if args.smoke else ''}")

    results: list[dict[str, Any]] = []
    status: dict[str, str] = {}
    bar = tqdm(jobs, desc="main job", unit="notebook", dynamic_ncols=True)   # the postfix is cut to the terminal
    try:
        _run_stages(bar, nb_dir, out, args, params, status, results)
        if folds > 1 and "05" in wanted:
            results.append(_pool(out, folds, status))
    finally:   # also on Ctrl-C: the summary says what ran
        write_summary(out, args, results)
    # non-zero whenever a stage asked for did not produce its outputs ("not run" included)
    return 1 if any(r["status"] != "ok" for r in results) else 0


def fold_parameters(stage: Stage, nb_params: dict[str, Any], out: Path, fold: int | None,
                    folds: int) -> dict[str, Any]:
    """Parameters of one notebook run of a ``folds``-fold job: stage 01 gets ``folds``; a later stage
    of fold f reads the crops view ``out/fold<f>/crops`` (its out_dir is ``out/fold<f>``)."""
    if folds < 2:
        return nb_params
    if fold is None:
        return {**nb_params, "folds": folds}
    from .data.split import FOLD_DIR

    view = str(out / FOLD_DIR.format(fold) / "crops")
    return {**nb_params, **({"real_crops": view} if stage.key == "05" else {"crops_dir": view})}


def _pool(out: Path, folds: int, status: dict) -> dict[str, Any]:
    """Pool the evaluations of every fold into ``out/eval`` (a summary record)."""
    from .data.split import FOLD_DIR
    from .evaluation.folds import pool_folds

    record: dict[str, Any] = {"stage": "05", "fold": "pooled", "notebook": "(skinlib.evaluation.folds.pool_folds)",
                              "title": f"Evaluation pooled over {folds} folds"}
    not_ok = [f for f in range(folds) if status.get(("05", f)) != "ok"]
    if not_ok:
        record.update(status="skipped", reason=f"needs stage 05 of every fold; fold(s) {not_ok} not ok")
        return record
    t0 = time.time()
    try:
        pool_folds([out / FOLD_DIR.format(f) / "eval" for f in range(folds)], out / "eval")
        record.update(status="ok")
    except Exception as e:  # noqa: BLE001 - recorded in the summary, like a failing notebook
        record.update(status="failed", reason=f"{type(e).__name__}: {e}")
    record["seconds"] = round(time.time() - t0, 1)
    return record


def _run_stages(bar, nb_dir: Path, out: Path, args: argparse.Namespace, params: dict[str, Any],
                status: dict[tuple, str], results: list[dict[str, Any]]) -> None:
    from papermill.exceptions import PapermillExecutionError
    from tqdm.auto import tqdm

    from .data.split import FOLD_DIR

    folds = getattr(args, "folds", 1)
    for stage, fold in bar:
        label = stage.key if fold is None else f"{stage.key} fold {fold}"
        bar.set_postfix_str(f"{label} {stage.title}")
        record: dict[str, Any] = {"stage": stage.key, "notebook": stage.notebook, "title": stage.title}
        if fold is not None:
            record["fold"] = fold
        failed_needs = [n for n in stage.needs if "failed" in (status.get((n, None)), status.get((n, fold)))]
        if failed_needs:
            record.update(status="skipped", reason=f"needs stage {', '.join(failed_needs)}, which failed")
        else:
            run_out = out if fold is None else out / FOLD_DIR.format(fold)
            nb_params = fold_parameters(stage, stage_parameters(stage, nb_dir / stage.notebook, params, out=run_out,
                                                                data=args.data, smoke=args.smoke,
                                                                profile=getattr(args, "profile", "auto")),
                                        out, fold, folds)
            record["parameters"] = nb_params
            output_nb = run_out / "notebooks" / stage.notebook
            output_nb.parent.mkdir(parents=True, exist_ok=True)
            t0 = time.time()
            try:
                _execute(bar, f"{label} {stage.title}", nb_dir / stage.notebook, output_nb, nb_params, run_out,
                         args.kernel)
                manifest = stage_manifest(stage.key, run_out, nb_params)
                if manifest is not None:     # the profile the notebook resolved, as its manifest records it
                    record["profile"] = recorded_profile(manifest)
                record.update(status="ok")
            except PapermillExecutionError as e:
                if e.ename == "WeightsOfflineError":  # asked for OpenAI's weights, none cached, offline
                    record.update(status="not run", reason=f"OpenAI's GLIDE weights unavailable offline: "
                                                          f"{e.evalue}", how_to_fix=GLIDE_HELP)
                else:
                    record.update(status="failed", reason=f"{e.ename}: {e.evalue}")
            except Exception as e:  # noqa: BLE001 - e.g. the kernel died (out of memory): record, go on
                record.update(status="failed", reason=f"{type(e).__name__}: {e}")
            record["seconds"] = round(time.time() - t0, 1)
            record["executed_notebook"] = str(output_nb)
        status[(stage.key, fold)] = record["status"]
        results.append(record)
        tqdm.write(f"[{label}] {stage.title}: {record['status']}"
                   + (f" - {record['reason']}" if record.get("reason") else ""))


def _execute(bar, label: str, notebook: Path, output_nb: Path, parameters: dict[str, Any], cwd: Path,
             kernel: str) -> None:
    """papermill.execute_notebook, the stage bar showing the running cell and its last printed line
    (:mod:`skinlib.stage_progress`), the kernel's meaningless start-up warning filtered out."""
    import logging

    import papermill
    from tqdm.auto import tqdm

    from .stage_progress import QuietKernelManager, StageProgress, executed_cells

    logger = logging.getLogger("papermill")
    handler = StageProgress(label, executed_cells(str(notebook), parameters, kernel),
                            set_postfix=lambda text: bar.set_postfix_str(text, refresh=True),
                            echo=lambda text: tqdm.write(text, file=sys.stderr))
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False      # the cells' output stays in the executed notebook, as before
    try:
        papermill.execute_notebook(str(notebook), str(output_nb), parameters=parameters, cwd=str(cwd),
                                   progress_bar=False, log_output=True, kernel_name=kernel,
                                   kernel_manager_class=QuietKernelManager)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
        bar.set_postfix_str(label)


def stage_manifest(key: str, run_out: Path, parameters: dict[str, Any]) -> Path | None:
    """The file where stage ``key``'s notebook records its resolved profile (None: stage 01, no profile)."""
    if key in ("02", "03"):      # a relative run_dir is relative to the notebook's cwd, run_out
        return run_out / (parameters.get("run_dir") or ("dcgan" if key == "02" else "cvae")) / "config.json"
    if key == "04":
        return run_out / "glide" / "samples" / "generation.json"
    if key == "05":
        return run_out / "eval" / "results.json"
    return None


def recorded_profile(manifest: Path) -> dict[str, Any]:
    """The profile record a finished stage's manifest holds (results.json: under settings)."""
    from .io import load_json

    data = load_json(manifest)
    record = data.get("profile") or data.get("settings", {}).get("profile")
    if not record:
        raise ValueError(f"{manifest} records no profile: the notebook must pass its resolved profile "
                         f"(profile=resolved.record()) to the call that writes it.")
    return record


def merge_earlier_stages(out: Path, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stage records of this call plus, for stages it did not run, those of an earlier call into
    the same run folder (``--only`` re-runs), marked with the time that call finished."""
    from .io import load_json

    earlier_path = out / "run.json"
    try:
        earlier = load_json(earlier_path) if earlier_path.is_file() else {}
    except ValueError:
        earlier = {}
    merged = []
    for stage in STAGES:          # every record of a stage (one per fold with --folds) of this call, else the earlier
        mine = [r for r in results if r["stage"] == stage.key]
        if mine:
            merged += mine
            continue
        merged += [{**old, "earlier_run": old.get("earlier_run") or earlier.get("finished", "earlier")}
                   for old in earlier.get("stages", []) if old.get("stage") == stage.key]
    return merged


def package_versions() -> dict[str, str]:
    """name -> version of every installed distribution (what ``pip freeze`` would list), so a
    run's numbers can be traced to the exact library versions that made them."""
    from importlib.metadata import distributions

    out = {}
    for d in distributions():
        name = d.metadata.get("Name")
        if name:
            out[name] = d.version
    return dict(sorted(out.items(), key=lambda kv: kv[0].lower()))


def _profile_summary(args: argparse.Namespace, results: list[dict[str, Any]]) -> dict[str, Any]:
    """run.json's profile: what was asked (--profile) and what each stage's notebook resolved."""
    return {"asked": getattr(args, "profile", "auto"),
            "resolved": {(r["stage"] if "fold" not in r else f"{r['stage']} fold {r['fold']}"): r["profile"]["name"]
                         for r in results if r.get("profile")}}


def write_summary(out: Path, args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    import torch

    from .cpu import cpu_info

    results = merge_earlier_stages(out, results)
    save_json(out / "run.json", {
        "command": sys.argv, "data": args.data or "synthetic demo dataset", "smoke": args.smoke,
        "params_file": args.params, "folds": getattr(args, "folds", 1),
        "profile": _profile_summary(args, results), "git_commit": _git_commit(), "python": platform.python_version(),
        "torch": torch.__version__, "platform": platform.platform(),
        "cpu": cpu_info(), "stages": results,
        "packages": package_versions(),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    })
    lines = [f"# Run summary: {out}", "",
             f"Data: {args.data or 'SYNTHETIC demo dataset'}{' (SMOKE mode)' if args.smoke else ''}", "",
             "| stage | notebook | status | seconds | note |", "|---|---|---|---|---|"]
    by_fold = any("fold" in r for r in results)
    if by_fold:       # --folds: one row per (stage, fold)
        lines[-2:] = ["| stage | fold | notebook | status | seconds | note |", "|---|---|---|---|---|---|"]
    for r in results:
        note = (r.get("reason") or "").replace("|", "/").replace("\n", " ")
        if r.get("earlier_run"):
            note = f"(from the run that finished {r['earlier_run']}) {note}".strip()
        fold = f" {r.get('fold', '')} |" if by_fold else ""
        lines.append(f"| {r['stage']} |{fold} {r['notebook']} | {r['status']} | {r.get('seconds', '')} | {note} |")
    for r in results:
        if r.get("how_to_fix"):
            lines += ["", f"Stage {r['stage']} ({r['title']}) was not run. {r['how_to_fix']}"]
    eval_table = out / "eval" / "comparison.md"
    if eval_table.is_file():
        lines += ["", "## Generator comparison (notebook 05)", "", eval_table.read_text(encoding="utf-8")]
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "summary.md", text)
    print("\n" + text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skinlib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="execute the numbered notebooks in order with papermill")
    p.add_argument("--data", help="dataset folder in the layout of data_README.md (default: demo dataset)")
    p.add_argument("--out", help="run folder (default: runs/<timestamp>)")
    p.add_argument("--params", help="YAML file of notebook parameters")
    p.add_argument("--smoke", action="store_true", help="tiny settings: every notebook finishes in seconds")
    p.add_argument("--only", nargs="+", metavar="NN", help="run only these stages, e.g. --only 01 02")
    p.add_argument("--notebooks", help="folder holding the notebooks (default: the repository's)")
    p.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: python3)")
    p.add_argument("--folds", type=int, default=1, metavar="K",
                   help="patient-level cross-validation: K >= 2 patient folds, stages 02-05 once per fold, "
                        "evaluation pooled (every patient tested once); 1 (default): the single split")
    p.add_argument("--profile", default="auto", choices=CHOICES,
                   help='defaults of notebooks 02-05: "auto" (default) = "study" on a CUDA device, else "cpu-demo"; '
                        'a value in --params always wins (other/docs/profiles.md)')
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
