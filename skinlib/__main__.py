"""The main job: ``python -m skinlib run`` executes the numbered notebooks with papermill.

    python -m skinlib run [--data DIR] [--out DIR] [--params FILE.yaml] [--smoke]
                          [--only 01 02 ...] [--notebooks DIR]

With no arguments it runs every stage on the SYNTHETIC demo dataset into a fresh folder
``runs/<timestamp>``. Executed notebooks go to ``<out>/notebooks/``, crops to ``<out>/crops/``,
every later artefact below ``<out>``; ``<out>/summary.md`` and ``<out>/run.json`` say what ran:
each stage ``ok``, ``failed`` (the error), ``skipped`` (a stage it needs failed) or ``not run``
(only: OpenAI's GLIDE weights were asked for, are not in the cache and the machine is offline;
the summary says how to supply them). The exit code is 1 unless every stage asked for is ``ok``.

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
                     data: str | None, smoke: bool) -> dict[str, Any]:
    """Parameters for one notebook: common ones it declares, then its own section of the YAML."""
    import papermill

    declared = papermill.inspect_notebook(str(nb_path))
    chosen: dict[str, Any] = {"out_dir": str(out), "smoke": smoke}
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
    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    print(f"Run folder: {out}")
    print(f"Data: {Path(args.data).resolve() if args.data else 'SYNTHETIC demo dataset (generated)'}"
          f"{'   [SMOKE mode]' if args.smoke else ''}")

    results: list[dict[str, Any]] = []
    status: dict[str, str] = {}
    bar = tqdm(stages, desc="main job", unit="notebook")
    try:
        _run_stages(bar, nb_dir, out, args, params, status, results)
    finally:   # also on Ctrl-C: the summary says what ran
        write_summary(out, args, results)
    # non-zero whenever a stage asked for did not produce its outputs ("not run" included)
    return 1 if any(r["status"] != "ok" for r in results) else 0


def _run_stages(bar, nb_dir: Path, out: Path, args: argparse.Namespace, params: dict[str, Any],
                status: dict[str, str], results: list[dict[str, Any]]) -> None:
    import papermill
    from papermill.exceptions import PapermillExecutionError
    from tqdm.auto import tqdm

    for stage in bar:
        bar.set_postfix_str(f"{stage.key} {stage.title}")
        record: dict[str, Any] = {"stage": stage.key, "notebook": stage.notebook, "title": stage.title}
        failed_needs = [n for n in stage.needs if status.get(n) == "failed"]
        if failed_needs:
            record.update(status="skipped", reason=f"needs stage {', '.join(failed_needs)}, which failed")
        else:
            nb_params = stage_parameters(stage, nb_dir / stage.notebook, params, out=out,
                                         data=args.data, smoke=args.smoke)
            record["parameters"] = nb_params
            output_nb = out / "notebooks" / stage.notebook
            t0 = time.time()
            try:
                papermill.execute_notebook(str(nb_dir / stage.notebook), str(output_nb),
                                           parameters=nb_params, cwd=str(out), progress_bar=False,
                                           kernel_name=args.kernel)
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
        status[stage.key] = record["status"]
        results.append(record)
        tqdm.write(f"[{stage.key}] {stage.title}: {record['status']}"
                   + (f" - {record['reason']}" if record.get("reason") else ""))


def merge_earlier_stages(out: Path, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stage records of this call plus, for stages it did not run, those of an earlier call into
    the same run folder (``--only`` re-runs), marked with the time that call finished."""
    from .io import load_json

    earlier_path = out / "run.json"
    try:
        earlier = load_json(earlier_path) if earlier_path.is_file() else {}
    except ValueError:
        earlier = {}
    mine = {r["stage"]: r for r in results}
    merged = []
    for stage in STAGES:
        if stage.key in mine:
            merged.append(mine[stage.key])
            continue
        old = next((r for r in earlier.get("stages", []) if r.get("stage") == stage.key), None)
        if old is not None:
            merged.append({**old, "earlier_run": old.get("earlier_run") or earlier.get("finished", "earlier")})
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


def write_summary(out: Path, args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    import torch

    from .cpu import cpu_info

    results = merge_earlier_stages(out, results)
    save_json(out / "run.json", {
        "command": sys.argv, "data": args.data or "synthetic demo dataset", "smoke": args.smoke,
        "params_file": args.params, "git_commit": _git_commit(), "python": platform.python_version(),
        "torch": torch.__version__, "platform": platform.platform(),
        "cpu": cpu_info(), "stages": results,
        "packages": package_versions(),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    })
    lines = [f"# Run summary: {out}", "",
             f"Data: {args.data or 'SYNTHETIC demo dataset'}{' (SMOKE mode)' if args.smoke else ''}", "",
             "| stage | notebook | status | seconds | note |", "|---|---|---|---|---|"]
    for r in results:
        note = (r.get("reason") or "").replace("|", "/").replace("\n", " ")
        if r.get("earlier_run"):
            note = f"(from the run that finished {r['earlier_run']}) {note}".strip()
        lines.append(f"| {r['stage']} | {r['notebook']} | {r['status']} | {r.get('seconds', '')} | {note} |")
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
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
