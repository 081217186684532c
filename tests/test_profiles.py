"""Profiles (issue 19 item 1): "auto" resolves by device, explicit values win, smoke stays cpu-demo,
the notebooks' profile-controlled parameters default to None, and the doc lists every value."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from skinlib.profiles import PROFILES, profile_name, resolve_profile

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = {"02": "02_dcgan_training", "03": "03_cvae_training", "04": "04_glide_inpainting", "05": "05_evaluation"}


@pytest.mark.parametrize("device, expected", [("cuda", "study"), ("cuda:1", "study"), ("cpu", "cpu-demo"),
                                              ("mps", "cpu-demo")])
def test_auto_resolves_by_device_type(device, expected):
    assert profile_name("auto", device) == expected
    r = resolve_profile("auto", "04", device, {})
    assert r.name == expected and r.asked == "auto" and r.values == PROFILES[expected]["04"]
    assert set(r.set_by_profile) == set(PROFILES[expected]["04"])


def test_study_on_cuda_is_the_studys_settings():
    v = resolve_profile("auto", "04", "cuda:0", {}).values
    assert v == {"weights": "official", "runs": 5, "steps": 12, "max_sources": 0,
                 "base_respacing": "100", "upsample_respacing": "fast27"}


def test_explicit_values_win_over_the_profile_none_does_not():
    explicit = {"steps": 3, "max_sources": None, "unrelated": 1}
    for device in ("cuda", "cpu"):
        r = resolve_profile("auto", "04", device, explicit)
        assert r.values["steps"] == 3 and "steps" not in r.set_by_profile
        assert r.values["max_sources"] == PROFILES[r.name]["04"]["max_sources"] and "max_sources" in r.set_by_profile
        assert "unrelated" not in r.values
    # an explicit profile wins over the device
    assert resolve_profile("study", "02", "cpu", {}).values == {"image_size": 256, "epochs": 100}
    assert resolve_profile("cpu-demo", "02", "cuda", {}).values == {"image_size": 64, "epochs": 10}


def test_smoke_auto_is_cpu_demo_even_on_cuda_but_an_asked_profile_is_kept():
    assert resolve_profile("auto", "04", "cuda", {}, smoke=True).name == "cpu-demo"
    assert resolve_profile("study", "04", "cuda", {}, smoke=True).name == "study"


def test_record_and_description_name_every_value():
    r = resolve_profile("auto", "02", "cpu", {"epochs": 3})
    assert r.record() == {"asked": "auto", "name": "cpu-demo", "device": "cpu",
                          "values": {"image_size": 64, "epochs": 3}, "set_by_profile": ["image_size"]}
    text = r.describe()
    assert "'auto' -> 'cpu-demo'" in text and "image_size = 64   (profile)" in text
    assert "epochs = 3   (set explicitly)" in text


@pytest.mark.parametrize("args, match", [(("fast", "04", "cpu"), "profile='fast'"),
                                         (("auto", "01", "cpu"), "stage='01'"),
                                         (("auto", "04", "gpu"), "device='gpu'")])
def test_bad_input_names_the_parameter(args, match):
    with pytest.raises(ValueError, match=match):
        resolve_profile(*args, explicit={})


def test_both_profiles_set_the_same_parameters():
    assert PROFILES["study"].keys() == PROFILES["cpu-demo"].keys()
    for stage in PROFILES["study"]:
        assert PROFILES["study"][stage].keys() == PROFILES["cpu-demo"][stage].keys()


@pytest.mark.parametrize("stage", sorted(NOTEBOOKS))
def test_notebook_leaves_profile_parameters_none_and_resolves_after_the_smoke_cell(stage):
    nb = nbformat.read(REPO / "notebooks" / f"{NOTEBOOKS[stage]}.ipynb", 4)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    params = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
    ns: dict = {}
    exec(cells[params].source, ns)
    assert ns["profile"] == "auto"
    assert all(ns[k] is None for k in PROFILES["study"][stage]), "profile-controlled defaults must be None"
    smoke = next(i for i, c in enumerate(cells) if "smoke_mode(" in c.source)
    resolve = next(i for i, c in enumerate(cells) if "resolve_profile(" in c.source)
    assert params < smoke < resolve and f'"{stage}"' in cells[resolve].source


def test_doc_lists_every_value_of_both_profiles():
    doc = (REPO / "other" / "docs" / "profiles.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].split()[0] + "/" + line.split("|")[2].strip().strip("`"): line
            for line in doc.splitlines() if line.startswith("| 0")}
    for stage in PROFILES["study"]:
        for key in PROFILES["study"][stage]:
            row = rows[f"{stage}/{key}"]
            for name in ("cpu-demo", "study"):
                assert f"`{PROFILES[name][stage][key]!r}`" in row, (stage, key, name)
