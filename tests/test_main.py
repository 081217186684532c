"""The main job (`python -m skinlib run`): argument handling and a full smoke run.

The smoke run executes every notebook headlessly with papermill (smoke parameters) and
the tests below assert on what each stage wrote.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from skinlib import __main__ as main_job
from skinlib.io import read_csv
from skinlib.stages import STAGES, notebooks_dir, smoke_mode

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path, smoke_env: bool = True, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """Run the main job; ``smoke_env=False`` removes SKINLIB_SMOKE (set for the test session)."""
    env = {**os.environ, **(env_extra or {})}
    if not smoke_env:
        env.pop("SKINLIB_SMOKE", None)
    return subprocess.run([sys.executable, "-m", "skinlib", "run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def test_every_stage_has_its_notebook_with_a_parameters_cell():
    """Every assignment of the literal parameters cell is one papermill can read (--help-notebook)."""
    import re

    import nbformat
    import papermill

    for stage in STAGES:
        nb_path = notebooks_dir() / stage.notebook
        nb = nbformat.read(nb_path, as_version=4)
        cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(cells) == 1, f"{stage.notebook}: exactly one cell tagged 'parameters'"
        assigned = re.findall(r"^(\w+)\s*(?::[^=]*)?=", cells[0].source, flags=re.M)   # annotated or not
        params = papermill.inspect_notebook(str(nb_path))
        assert {"out_dir", "smoke"} <= set(params), (stage.notebook, sorted(params))
        assert sorted(params) == sorted(assigned), f"{stage.notebook}: papermill cannot parse some lines"
        assert any(c.source.startswith("# NBVAL_CHECK_OUTPUT") and c.get("outputs")
                   for c in nb.cells if c.cell_type == "code"), f"{stage.notebook}: no checked output"


def test_smoke_mode_honours_parameter_and_environment(monkeypatch):
    monkeypatch.delenv("SKINLIB_SMOKE", raising=False)
    assert smoke_mode(False) is False
    assert smoke_mode(True) is True
    monkeypatch.setenv("SKINLIB_SMOKE", "1")
    assert smoke_mode(False) is True


def test_bad_arguments_give_clear_errors(tmp_path):
    r = run_cli("--only", "07", "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode != 0 and "unknown stage" in r.stderr
    r = run_cli("--data", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert r.returncode != 0 and "not found" in r.stderr
    bad = tmp_path / "p.yaml"
    bad.write_text('"02": {no_such_parameter: 3}\n')
    r = run_cli("--params", str(bad), "--only", "02", "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode != 0 and "no_such_parameter" in r.stderr and "accepts" in r.stderr
    bad.write_text("sed: 3\n")   # a typo of `seed` at the top level
    r = run_cli("--params", str(bad), "--only", "02", "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode != 0 and "'sed'" in r.stderr and "accept" in r.stderr
    bad.write_text("a: [unclosed\n")
    r = run_cli("--params", str(bad), "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode != 0 and "not valid YAML" in r.stderr


def test_yaml_params_reach_the_right_notebook(tmp_path):
    stage = STAGES[1]
    nb = notebooks_dir() / stage.notebook
    chosen = main_job.stage_parameters(stage, nb, {"seed": 7, "02": {"epochs": 3}, "unrelated": 1},
                                       out=tmp_path, data=None, smoke=True)
    assert chosen["epochs"] == 3 and chosen["seed"] == 7 and chosen["smoke"] is True
    assert chosen["out_dir"] == str(tmp_path) and "unrelated" not in chosen


def test_profile_reaches_notebooks_02_to_05_and_the_yaml_wins(tmp_path):
    for stage in STAGES:
        chosen = main_job.stage_parameters(stage, notebooks_dir() / stage.notebook, {"02": {"profile": "cpu-demo"}},
                                           out=tmp_path, data=None, smoke=False, profile="study")
        expected = {"01": None, "02": "cpu-demo"}.get(stage.key, "study")    # 01 has no profile
        assert chosen.get("profile") == expected, stage.key
    r = run_cli("--profile", "fast", "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode == 2 and "--profile" in r.stderr and "cpu-demo" in r.stderr


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """`python -m skinlib run --smoke` once: every notebook executed headlessly by papermill."""
    out = tmp_path_factory.mktemp("main") / "run"
    r = run_cli("--smoke", "--out", str(out), cwd=out.parent)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, r


def test_main_job_runs_every_stage_and_summarises(smoke_run):
    out, r = smoke_run
    run = json.loads((out / "run.json").read_text())
    assert [s["stage"] for s in run["stages"]] == [s.key for s in STAGES]
    assert all(s["status"] == "ok" for s in run["stages"]), run["stages"]
    for stage in STAGES:
        executed = out / "notebooks" / stage.notebook
        assert executed.is_file()
        assert "papermill" in json.loads(executed.read_text())["metadata"]
    summary = (out / "summary.md").read_text()
    assert "SYNTHETIC demo dataset" in summary and "Generator comparison" in summary


def test_stage_01_wrote_crops_with_manifest(smoke_run):
    out, _ = smoke_run
    rows = read_csv(out / "crops" / "manifest.csv")
    assert rows, "no crops"
    for row in rows:
        for key in ("image", "mask", "mask2"):
            assert (out / "crops" / row[key]).is_file()
        assert row["patient"] and row["disease"] and float(row["coverage"]) > 0.1
    assert (out / "demo_data" / "README_SYNTHETIC.txt").is_file()
    executed = (out / "notebooks" / "01_data_cropping.ipynb").read_text()
    assert "skipped in this headless run" in executed      # the main job builds no ipywidgets (nbclient#312)


@pytest.mark.parametrize("generator", ["dcgan", "cvae", "glide"])
def test_generator_stages_exported_samples_their_manifest_describes(smoke_run, generator):
    out, _ = smoke_run
    folder = out / generator / "samples"
    rows = read_csv(folder / "manifest.csv")
    assert rows
    for row in rows:
        assert (folder / row["image"]).is_file()
        assert row["generator"] and row["seed"] != ""
    if generator == "glide":  # the smoke run trains a tiny model for 2 steps and must say so
        assert all(row["weights_kind"] == "tiny-from-scratch" and "not OpenAI's GLIDE" in row["weights_label"]
                   and row["trained_on_split"] == "train" and row["source_split"] == "train"
                   and len(row["source_sha256"]) == 64 and row["source_patient"] for row in rows)


def test_stage_05_compares_every_generator(smoke_run):
    out, _ = smoke_run
    res = json.loads((out / "eval" / "results.json").read_text())
    for arm in ("real only", "real + standard aug", "real + copies", "real + oracle",
                "real + dcgan", "real + cvae", "real + glide"):
        assert res["arms"][arm]["status"] == "ok", (arm, res["arms"][arm])
    assert all(g["status"] == "ok" and g["trained_on_split"] == "train" for g in res["generators"].values())
    assert {r["name"] for r in res["image_metrics"]} >= {"dcgan", "cvae", "glide"}
    header = (out / "eval" / "comparison.csv").read_text().splitlines()[0]
    assert "FID" not in header.replace("not FID", "")  # smoke features are never called FID
    assert "Generator comparison" in (out / "summary.md").read_text()


@pytest.fixture(scope="module")
def split_crops(tmp_path_factory):
    from _toy_crops import make_crops
    from skinlib.io import write_csv

    folder = make_crops(tmp_path_factory.mktemp("main") / "crops", n=8)
    rows = read_csv(folder / "manifest.csv")
    write_csv(folder / "manifest.csv", [{**r, "split": "train"} for r in rows])
    return folder


def _run_04(tmp_path, crops, weights: str, **env_extra) -> tuple[subprocess.CompletedProcess, dict]:
    params = tmp_path / "P.yaml"
    params.write_text(f'"04": {{weights: "{weights}", crops_dir: "{crops}", cache_dir: "{tmp_path / "cache"}"}}\n')
    r = run_cli("--smoke", "--only", "04", "--params", str(params), "--out", str(tmp_path / "o"), cwd=tmp_path,
                env_extra=env_extra)
    return r, json.loads((tmp_path / "o" / "run.json").read_text())["stages"][0]


def test_mistyped_weights_folder_fails_stage_04_and_the_exit_code(split_crops, tmp_path):
    """A weights folder that does not exist is an error (not 'not run'): non-zero exit, the folder named."""
    typo = tmp_path / "glide_weigths"
    r, stage = _run_04(tmp_path, split_crops, str(typo))
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert stage["status"] == "failed" and "how_to_fix" not in stage
    assert f"weights folder {typo} does not exist" in stage["reason"]
    assert f"| 04 | 04_glide_inpainting.ipynb | failed |" in (tmp_path / "o" / "summary.md").read_text()
    assert str(typo) in r.stdout


def test_official_weights_offline_are_not_run_with_the_fix_and_a_nonzero_exit(split_crops, tmp_path):
    """The one 'not run' case: OpenAI's weights asked for, not in the cache, no connection (a proxy
    that refuses stands in for being offline). The summary says how to supply them; exit code 1."""
    r, stage = _run_04(tmp_path, split_crops, "official", https_proxy="http://127.0.0.1:9",
                       HTTPS_PROXY="http://127.0.0.1:9", no_proxy="", NO_PROXY="")
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert stage["status"] == "not run" and "unavailable offline" in stage["reason"], stage
    summary = (tmp_path / "o" / "summary.md").read_text()
    assert "| 04 | 04_glide_inpainting.ipynb | not run |" in summary
    assert "base_inpaint.pt" in summary and "upsample_inpaint.pt" in summary and "--smoke" in summary
    assert str(tmp_path / "cache" / "base_inpaint.pt") in stage["reason"]


def test_rerunning_some_stages_keeps_the_record_of_the_others(smoke_run):
    out, _ = smoke_run
    r = run_cli("--smoke", "--only", "05", "--out", str(out), cwd=out.parent)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    stages = json.loads((out / "run.json").read_text())["stages"]
    assert [s["stage"] for s in stages] == [s.key for s in STAGES]
    assert "earlier_run" not in stages[-1] and all("earlier_run" in s for s in stages[:-1])
    assert "(from the run that finished" in (out / "summary.md").read_text()


def test_a_failing_stage_is_reported_and_its_dependants_skipped(tmp_path):
    empty = tmp_path / "empty_dataset"
    empty.mkdir()
    r = run_cli("--smoke", "--data", str(empty), "--only", "01", "02", "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode == 1
    stages = {s["stage"]: s for s in json.loads((tmp_path / "o" / "run.json").read_text())["stages"]}
    assert stages["01"]["status"] == "failed" and "No usable photo/mask pair" in stages["01"]["reason"]
    assert stages["02"]["status"] == "skipped" and "01" in stages["02"]["reason"]


def test_run_json_records_the_cpu(tmp_path):
    """run.json names the CPU the job ran on (model, torch capability, native bf16: issue 21)."""
    import argparse

    from skinlib.cpu import cpu_info

    main_job.write_summary(tmp_path, argparse.Namespace(data=None, smoke=True, params=None), [])
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["cpu"] == cpu_info() and isinstance(run["cpu"]["native_bf16"], bool)


def test_run_json_and_every_manifest_record_the_resolved_profile(smoke_run):
    """Issue 19: the smoke run (auto on this machine, smoke: cpu-demo) records the profile each notebook
    resolved in its manifest, run.json copies it, and the kernel's TCP notice is not in the log."""
    out, r = smoke_run
    run = json.loads((out / "run.json").read_text())
    assert run["profile"] == {"asked": "auto", "resolved": {k: "cpu-demo" for k in ("02", "03", "04", "05")}}
    manifests = {"02": ("dcgan/config.json", None), "03": ("cvae/config.json", None),
                 "04": ("glide/samples/generation.json", None), "05": ("eval/results.json", "settings")}
    for record in run["stages"]:
        if record["stage"] == "01":
            assert "profile" not in record
            continue
        path, key = manifests[record["stage"]]
        data = json.loads((out / path).read_text())
        assert record["profile"] == (data[key] if key else data)["profile"]
        assert record["profile"]["name"] == "cpu-demo" and record["profile"]["asked"] == "auto"
    assert run["stages"][1]["profile"]["values"] == {"image_size": 64, "epochs": 2}   # the smoke cell's values win
    assert "TCP without encryption" not in r.stdout + r.stderr
    assert "cell " in r.stderr          # the stage bar showed the running cells
