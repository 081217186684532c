"""Notebook 04's two GLIDE arms (issue 20): uniform and balanced plans on the same sources and
budget, their union generated once, and each arm as a view of it."""
from __future__ import annotations

import pytest

from skinlib.augment.generate import generate_uniform_and_balanced, write_plan_view
from skinlib.augment.plan import plan_pair
from skinlib.data.metadata import skin_types
from skinlib.io import load_json, read_csv, write_csv
from test_generate import folder_bytes, make_crops  # noqa: F401
from test_generate_plan import crops_with_types
from test_inpaint import FakeInpainter

SETTINGS = dict(steps=2, seed=5, progress=False, log=lambda *_: None, batch_size=4)


def test_plan_pair_same_sources_same_budget_balanced_towards_the_small_cell(tmp_path):
    crops = crops_with_types(tmp_path, n=7, types={"p0": 5, "p1": 1})   # p0 (V-VI): 4 crops, p1 (I-II): 3
    rows = read_csv(crops / "manifest.csv")
    sources = ["000000.png", "000001.png", "000002.png"]                  # p0, p1, p0
    plans = plan_pair(rows, sources, 2, skin_types(crops))
    u, b, n = ({p["crop"]: p["variants"] for p in plans[k]} for k in ("uniform", "balanced", "union"))
    assert u == {r["image"]: 2 if r["image"] in sources else 0 for r in rows}
    assert sum(b.values()) == 6 and set(c for c, v in b.items() if v) <= set(sources)
    # I-II (3 real crops) is filled before V-VI (4): totals 3 + 4 = 7 vs 4 + 2 = 6 as far as possible
    assert b["000001.png"] == 4 and b["000000.png"] + b["000002.png"] == 2
    assert n == {c: max(u[c], b[c]) for c in u}


def test_union_is_generated_once_and_each_arm_is_a_view_of_it(tmp_path):
    crops = crops_with_types(tmp_path, n=7, types={"p0": 5, "p1": 1})
    glide = tmp_path / "glide"
    s = generate_uniform_and_balanced(crops, glide, inpainter=FakeInpainter(), runs=2, max_sources=3, **SETTINGS)
    union = read_csv(glide / "samples_all" / "manifest.csv")
    assert s["made"] == len(union) == sum(int(r["variants"]) for r in read_csv(s["plans"]["union"]))
    for arm, folder in (("uniform", "samples"), ("balanced", "samples_balanced")):
        want = {r["crop"]: int(r["variants"]) for r in read_csv(s["plans"][arm])}
        rows = read_csv(glide / folder / "manifest.csv")
        got: dict[str, list[int]] = {}
        for r in rows:
            got.setdefault(r["source_crop"], []).append(int(r["run"]))
            assert (glide / folder / r["image"]).read_bytes() == (glide / "samples_all" / r["image"]).read_bytes()
        assert got == {c: list(range(k)) for c, k in want.items() if k}
        view = load_json(glide / folder / "view.json")
        assert view["variants"] == len(rows) and view["timing"]["seconds_per_variant"] > 0
    # a re-run resumes: nothing made, the same views
    before = folder_bytes(glide / "samples_balanced")
    again = generate_uniform_and_balanced(crops, glide, inpainter=FakeInpainter(), runs=2, max_sources=3, **SETTINGS)
    assert again["made"] == 0 and folder_bytes(glide / "samples_balanced") == before


def test_a_view_never_replaces_other_files_and_needs_every_planned_variant(tmp_path):
    crops = make_crops(tmp_path / "crops", n=3)
    glide = tmp_path / "glide"
    generate_uniform_and_balanced(crops, glide, inpainter=FakeInpainter(), runs=1, max_sources=2, **SETTINGS)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a plan view.*not replaced"):
        write_plan_view(glide / "samples_all", glide / "plans" / "uniform.csv", other)
    assert (other / "notes.txt").read_text() == "keep me"
    greedy = tmp_path / "greedy.csv"
    write_csv(greedy, [{**r, "variants": 5} for r in read_csv(glide / "plans" / "uniform.csv")])
    with pytest.raises(ValueError, match="asks for 5 variants"):
        write_plan_view(glide / "samples_all", greedy, tmp_path / "v")
