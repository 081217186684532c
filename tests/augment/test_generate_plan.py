"""Generation from an augmentation plan and with prompt templates (issue 20, items 1-2):
per-source counts, resume and shards exactly as without a plan, prompts per skin group."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from skinlib.augment.generate import generate_variants, main as generate_main, plan_batches, shard_batches
from skinlib.augment.inpaint import item_seed
from skinlib.augment.plan import main as plan_main, plan_sha256, plan_uniform, read_plan, write_plan
from skinlib.data.metadata import skin_types
from skinlib.augment.prompts import render_prompt, template_fields
from skinlib.io import read_csv, save_json, write_csv
from test_generate import folder_bytes, make_crops, tiny_engine  # noqa: F401 (fixture)
from test_inpaint import FakeInpainter

SETTINGS = dict(steps=2, seed=5, progress=False, log=lambda *_: None)
COUNTS = [3, 0, 1, 4, 2]          # variants of sources 0..4


def crops_with_types(root: Path, n: int = 5, types: dict | None = None) -> Path:
    """make_crops + a dataset folder whose metadata.csv gives the patients' Fitzpatrick types
    (p0: type 5; p1 unknown unless ``types`` says otherwise), linked by summary.json."""
    crops = make_crops(root / "crops", n=n)
    data = root / "data"
    data.mkdir()
    write_csv(data / "metadata.csv", [{"patient": p, "fitzpatrick": t} for p, t in (types or {"p0": 5}).items()])
    save_json(crops / "summary.json", {"data_dir": str(data), "synthetic": True})
    return crops


def write_counts(crops: Path, path: Path, counts) -> Path:
    """A plan file giving the crops of ``crops`` the variants ``counts`` (manifest order)."""
    plan = plan_uniform(read_csv(crops / "manifest.csv"), 0, skin_types(crops))
    for p, c in zip(plan, counts):
        p["variants"] = c
    return write_plan(path, plan)


def test_plan_batches_pack_whole_sources_and_match_the_uniform_rule():
    b = plan_batches(5, COUNTS, 4)
    assert b == [[(0, 0), (0, 1), (0, 2), (2, 0)], [(3, 0), (3, 1), (3, 2), (3, 3)], [(4, 0), (4, 1)]]
    assert plan_batches(7, [2] * 7, 5) == plan_batches(7, 2, 5)     # a uniform plan = runs
    assert plan_batches(3, [0, 7, 1], 3) == [[(1, 0), (1, 1), (1, 2)], [(1, 3), (1, 4), (1, 5)], [(1, 6)], [(2, 0)]]
    for k in (2, 3):
        items = sorted(it for s in range(k) for bt in shard_batches(b, s, k) for it in bt)
        assert items == sorted(it for bt in b for it in bt)
    with pytest.raises(ValueError, match="counts >= 0"):
        plan_batches(2, [1, -1], 4)


def test_generation_follows_the_plan_and_records_it(tmp_path):
    crops = crops_with_types(tmp_path)
    plan = write_counts(crops, tmp_path / "plan.csv", COUNTS)
    out = tmp_path / "out"
    summary = generate_variants(crops, out, inpainter=FakeInpainter(), batch_size=4, plan=plan, **SETTINGS)
    rows = read_csv(out / "manifest.csv")
    assert summary["made"] == sum(COUNTS) == len(rows)
    assert [r["image"] for r in rows] == [f"{k:06d}.png" for k in range(sum(COUNTS))]
    per_source = [sum(r["source_index"] == str(i) for r in rows) for i in range(5)]
    assert per_source == COUNTS
    sha = plan_sha256(plan)
    for r in rows:
        assert int(r["seed"]) == item_seed(5, r["source_crop"], int(r["run"]))   # as without a plan
        assert r["plan_sha256"] == sha and r["plan_cell"] == f"demo-rash|{'V-VI' if r['patient'] == 'p0' else 'unknown'}"
        assert r["skin_group"] == ("V-VI" if r["patient"] == "p0" else "unknown")
        assert r["prompt"] == r["prompt_template"] == "an image of measles on dark skin"
    settings = json.loads((out / "generation.json").read_text())
    assert settings["plan"]["sha256"] == sha and settings["variants_per_source"] == COUNTS
    # another plan in the same folder is refused, naming the plan
    other = write_counts(crops, tmp_path / "other.csv", [1, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="other settings.*plan"):
        generate_variants(crops, out, inpainter=FakeInpainter(), batch_size=4, plan=other, **SETTINGS)
    with pytest.raises(ValueError, match="max_sources=2 and plan"):
        generate_variants(crops, tmp_path / "o2", inpainter=FakeInpainter(), plan=plan, max_sources=2, **SETTINGS)


def test_plan_two_shards_equal_one_and_resume_after_interruption(tmp_path):
    crops = crops_with_types(tmp_path)
    plan = write_counts(crops, tmp_path / "plan.csv", COUNTS)
    ref, two, out = tmp_path / "ref", tmp_path / "two", tmp_path / "out"
    s = dict(batch_size=4, plan=plan, **SETTINGS)
    generate_variants(crops, ref, inpainter=FakeInpainter(), **s)
    assert generate_variants(crops, two, inpainter=FakeInpainter(), shard_index=1, num_shards=2, **s)["manifest"] is None
    generate_variants(crops, two, inpainter=FakeInpainter(), shard_index=0, num_shards=2, **s)
    a, b = folder_bytes(ref), folder_bytes(two)
    assert sorted(a) == sorted(b) and len(a) > 40
    assert [k for k in a if a[k] != b[k]] == []
    # interrupted in the second batch (engine calls 0, 1 = the first batch's two steps)
    with pytest.raises(KeyboardInterrupt):
        generate_variants(crops, out, inpainter=FakeInpainter(fail_after=3), **s)
    assert sorted(p.name for p in (out / "history").glob("[0-9]*.json")) == [f"{k:06d}.json" for k in range(4)]
    engine = FakeInpainter()
    assert generate_variants(crops, out, inpainter=engine, **s)["made"] == sum(COUNTS) - 4
    assert sum(c["n"] for c in engine.calls) == (sum(COUNTS) - 4) * 2
    assert folder_bytes(out) == a


def test_prompt_templates_render_per_skin_group():
    assert template_fields("an image of measles on dark skin") == set()
    t = "an image of {disease} on {skin} skin"
    row = {"image": "000001.png", "disease": "maculopapular_rash"}
    assert render_prompt(t, row, 6) == "an image of maculopapular rash on dark skin"
    assert render_prompt(t, row, 3) == "an image of maculopapular rash on medium skin"
    assert render_prompt(t, row, 1) == "an image of maculopapular rash on light skin"
    assert render_prompt(t, row, None) == "an image of maculopapular rash on skin"
    assert render_prompt(t, row, None, unknown="human") == "an image of maculopapular rash on human skin"
    assert render_prompt("{disease}, Fitzpatrick type {fitzpatrick}", row, 4) == "maculopapular rash, Fitzpatrick type IV"
    with pytest.raises(ValueError, match=r"field\(s\) \['tone'\]"):
        render_prompt("on {tone} skin", row, 5)
    with pytest.raises(ValueError, match="crop '000001.png' has no disease"):
        render_prompt(t, {"image": "000001.png", "disease": ""}, 5)


def test_generation_with_a_template_sends_each_source_its_prompt(tmp_path):
    crops = crops_with_types(tmp_path, n=3)
    engine = FakeInpainter()
    t = "an image of {disease} on {skin} skin"
    generate_variants(crops, tmp_path / "out", inpainter=engine, runs=2, batch_size=4, prompt=t, **SETTINGS)
    # sources 0, 2: patient p0 (type V); source 1: p1 (unknown); batches {0, 1} and {2}
    assert engine.calls[0]["prompts"] == ["an image of demo-rash on dark skin"] * 2 + ["an image of demo-rash on skin"] * 2
    rows = read_csv(tmp_path / "out" / "manifest.csv")
    assert [r["prompt"] for r in rows] == [f"an image of demo-rash on {w}skin" for w in ("dark ", "dark ", "", "", "dark ", "dark ")]
    assert {r["prompt_template"] for r in rows} == {t}
    assert [r["fitzpatrick"] for r in rows] == ["5", "5", "", "", "5", "5"]
    settings = json.loads((tmp_path / "out" / "generation.json").read_text())
    assert settings["prompt"] == t and settings["unknown_skin"] == ""
    # the metadata changed: the rendered prompts differ, so resuming is refused
    write_csv(Path(settings["crops_dir"]).parent / "data" / "metadata.csv", [{"patient": "p0", "fitzpatrick": 1}])
    with pytest.raises(ValueError, match="other settings.*prompts_sha256"):
        generate_variants(crops, tmp_path / "out", inpainter=FakeInpainter(), runs=2, batch_size=4, prompt=t, **SETTINGS)


def test_tiny_random_engine_plan_and_template_two_shards_equal_one(tmp_path, tiny_engine):
    """The real engine (tiny random weights): a plan and a template, batches mixing prompts of
    two skin groups; two shards give the one-shard run's bytes."""
    crops = crops_with_types(tmp_path, n=4)
    plan = write_counts(crops, tmp_path / "plan.csv", [2, 1, 0, 3])
    s = dict(steps=2, seed=3, batch_size=3, plan=plan, prompt="an image of {disease} on {skin} skin",
             progress=False, log=lambda *_: None)
    one, two = tmp_path / "one", tmp_path / "two"
    calls = []
    original = tiny_engine.inpaint

    def counting(images, keep, prompts, *args, **kw):
        calls.append(list(prompts))
        return original(images, keep, prompts, *args, **kw)

    tiny_engine.inpaint = counting
    try:
        generate_variants(crops, one, inpainter=tiny_engine, **s)
        generate_variants(crops, two, inpainter=tiny_engine, shard_index=1, num_shards=2, **s)
        generate_variants(crops, two, inpainter=tiny_engine, shard_index=0, num_shards=2, **s)
    finally:
        del tiny_engine.inpaint
    # batches {source 0 x 2, source 1} and {source 3 x 3}, per step; the same in both shardings
    dark, unknown = "an image of demo-rash on dark skin", "an image of demo-rash on skin"
    first, second = [dark, dark, unknown], [unknown] * 3
    assert calls == [first, first, second, second] + [second, second] + [first, first]
    a, b = folder_bytes(one), folder_bytes(two)
    assert len(read_csv(one / "manifest.csv")) == 6 and sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []


def test_command_lines_plan_then_generate(tmp_path, capsys, tiny_engine):
    crops = crops_with_types(tmp_path, n=5, types={"p0": 5})   # p0: 3 crops V-VI, p1: 2 crops unknown
    plan = tmp_path / "plan.csv"
    threads = torch.get_num_threads()
    try:
        assert plan_main(["--crops", str(crops), "--target", "balanced", "--variants-per-crop", "1",
                          "--out", str(plan), "--calibrate", "2", "--weights", "tiny-random", "--device", "cpu",
                          "--steps", "1", "--base-respacing", "1", "--upsample-respacing", "1",
                          "--timing-out", str(tmp_path / "timing.json")]) == 0
    finally:
        torch.set_num_threads(threads)
    text = capsys.readouterr().out
    assert "demo-rash  V-VI" in text and "demo-rash  unknown" in text
    assert "5 variants: expected" in text and "calibration of 2 variant(s)" in text and "GPU not measured" in text
    assert "2 crop(s) have no recorded Fitzpatrick type" in text
    got = {p["crop"]: p["variants"] for p in read_plan(plan, read_csv(crops / "manifest.csv"))}
    assert sum(got.values()) == 5   # budget 1 x 5 crops; water-filling: V-VI 3 + 2 = 5, unknown 2 + 3 = 5
    assert sum(got[f"{i:06d}.png"] for i in (1, 3)) == 3 and sum(got[f"{i:06d}.png"] for i in (0, 2, 4)) == 2
    # a time budget from the written timing: never more variants than it pays for
    spv = json.loads((tmp_path / "timing.json").read_text())["seconds_per_variant"]
    assert plan_main(["--crops", str(crops), "--target", "balanced", "--budget", f"{3.5 * spv:.6f}s",
                      "--seconds-per-variant-file", str(tmp_path / "timing.json"), "--out", str(tmp_path / "p2.csv")]) == 0
    assert sum(p["variants"] for p in read_plan(tmp_path / "p2.csv", read_csv(crops / "manifest.csv"))) == 3
    with pytest.raises(SystemExit):
        plan_main(["--crops", str(crops), "--target", "balanced", "--budget", "1gpu-h",
                   "--seconds-per-variant-file", str(tmp_path / "timing.json"), "--out", str(tmp_path / "p3.csv")])
    assert "GPU not measured" in capsys.readouterr().err and not (tmp_path / "p3.csv").exists()
    with pytest.raises(SystemExit):
        generate_main(["--crops", str(crops), "--out", str(tmp_path / "out"), "--plan", str(plan), "--runs", "2"])
    assert "drop --runs" in capsys.readouterr().err
    try:
        assert generate_main(["--crops", str(crops), "--out", str(tmp_path / "out"), "--weights", "tiny-random",
                              "--plan", str(plan), "--steps", "1", "--batch-size", "4", "--base-respacing", "1",
                              "--upsample-respacing", "1", "--device", "cpu", "--threads", "1", "--no-progress",
                              "--prompt", "an image of {disease} on {skin} skin", "--unknown-skin", "human"]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = read_csv(tmp_path / "out" / "manifest.csv")
    assert len(rows) == 5 and {r["prompt"] for r in rows} == {"an image of demo-rash on dark skin",
                                                              "an image of demo-rash on human skin"}
