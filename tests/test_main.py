"""The main job (`python -m skinlib run`): argument handling and a full smoke run.

The smoke run executes every notebook headlessly with papermill (smoke parameters) and
the tests below assert on what each stage wrote.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from skinlib import __main__ as main_job
from skinlib.io import read_csv
from skinlib.stages import STAGES, notebooks_dir, smoke_mode

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "skinlib", "run", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=900)


def test_every_stage_has_its_notebook_with_a_parameters_cell():
    import papermill

    for stage in STAGES:
        nb = notebooks_dir() / stage.notebook
        assert nb.is_file(), nb
        params = papermill.inspect_notebook(str(nb))
        assert {"out_dir", "smoke"} <= set(params), (stage.notebook, sorted(params))
        for name, p in params.items():  # literal defaults only, so --help-notebook lists them
            assert p["default"] not in (None, ""), (stage.notebook, name)


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
