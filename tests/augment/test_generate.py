"""Folder generation: outputs in the crop format, exact sharding, resume, skips, tiny-random."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from skinlib.data.dataset import CropDataset
from skinlib.augment.generate import (MANIFEST_FIELDS, RANDOM_LABEL, generate_variants,
                                      merge_manifests, output_stem, plan_batches, shard_batches,
                                      shard_from_env)
from skinlib.io import read_csv, write_csv
from test_inpaint import FakeInpainter


def make_crops(root: Path, n: int = 5, *, masks: bool = True) -> Path:
    """n random 256 px crops (+ ill-skin masks: a disc) and a manifest, like notebook 01's."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:256, :256]
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(root / f"{i:06d}.png")
        row = {"image": f"{i:06d}.png", "mask": "", "disease": "demo-rash", "patient": f"p{i % 2}",
               "source": f"photo{i}.jpg", "split": "train"}
        if masks:
            disc = (yy - 60 - 25 * i) ** 2 + (xx - 128) ** 2 < 50 ** 2
            Image.fromarray(disc.astype(np.uint8) * 255).save(root / f"{i:06d}_mask.png")
            row["mask"] = f"{i:06d}_mask.png"
        rows.append(row)
    write_csv(root / "manifest.csv", rows)
    return root


def folder_bytes(root: Path) -> dict[str, bytes]:
    """Every file under root except per-shard manifests (their names depend on the sharding)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".shard-" not in p.name}


SETTINGS = dict(runs=3, steps=2, seed=5, progress=False, log=lambda *_: None)


def test_outputs_in_crop_format_with_manifest(tmp_path):
    crops = make_crops(tmp_path / "crops", n=3)
    out = tmp_path / "out"
    summary = generate_variants(crops, out, inpainter=FakeInpainter(), batch_size=4, **SETTINGS)
    assert summary["made"] == 9 and summary["manifest"] == str(out / "manifest.csv")
    rows = read_csv(out / "manifest.csv")
    assert list(rows[0]) == MANIFEST_FIELDS and len(rows) == 9
    assert [r["image"] for r in rows] == [f"{k:06d}.png" for k in range(9)]
    for r in rows:
        assert r["source_crop"] == f"{int(r['source_index']):06d}.png"
        assert r["model_is_random"] == "True" and r["checkpoint"] == RANDOM_LABEL
        assert r["steps"] == "2" and r["guidance"] == "5.0" and r["disease"] == "demo-rash"
        assert json.loads(r["model"])["weights"] == "fake-test-inpainter"
        src = np.asarray(Image.open(crops / r["source_crop"]).convert("RGB"))
        img = np.asarray(Image.open(out / r["image"]))
        edit = np.asarray(Image.open(out / r["edit"])) > 127
        steps_map = np.asarray(Image.open(out / r["steps_map"]))
        assert img.shape == (256, 256, 3) and edit.dtype == bool
        np.testing.assert_array_equal(img[~edit], src[~edit])        # exact outside the edits
        np.testing.assert_array_equal(edit, steps_map > 0)
        assert float(r["edited_fraction"]) == pytest.approx(edit.mean(), abs=1e-6)
        # the carried ill-skin mask is the source's; edited ill pixels are recorded
        carried = np.asarray(Image.open(out / r["mask"])) > 127
        np.testing.assert_array_equal(carried, np.asarray(Image.open(crops / f"{r['source_crop'][:6]}_mask.png")) > 127)
        assert float(r["ill_edited_fraction"]) == pytest.approx((carried & edit).mean(), abs=1e-6)
        history = json.loads(r["history"])
        assert [h["step"] for h in history] == [1, 2]
        assert (r["gif"] != "") == (r["run"] == "0")
    # the output folder is itself a crops folder for the other stages
    ds = CropDataset(out)
    image, mask, label = ds[0]
    assert len(ds) == 9 and image.shape == (3, 256, 256) and mask.sum() > 0


def test_two_shards_equal_one_shard_exactly(tmp_path):
    crops = make_crops(tmp_path / "crops", n=5)
    one, two = tmp_path / "one", tmp_path / "two"
    generate_variants(crops, one, inpainter=FakeInpainter(), batch_size=4, **SETTINGS)
    s0 = generate_variants(crops, two, inpainter=FakeInpainter(), batch_size=4,
                           shard_index=0, num_shards=2, **SETTINGS)
    assert s0["manifest"] is None                 # shard 1 not done yet: no merged manifest
    assert not (two / "manifest.csv").exists()
    s1 = generate_variants(crops, two, inpainter=FakeInpainter(), batch_size=4,
                           shard_index=1, num_shards=2, **SETTINGS)
    assert s1["manifest"] is not None
    a, b = folder_bytes(one), folder_bytes(two)
    assert sorted(a) == sorted(b) and len(a) > 40
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]
    assert len(read_csv(two / "manifest.shard-0-of-2.csv")) == 9      # sources 0, 2, 4
    assert len(read_csv(two / "manifest.shard-1-of-2.csv")) == 6


def test_resume_after_interruption(tmp_path):
    crops = make_crops(tmp_path / "crops", n=3)
    ref, out = tmp_path / "ref", tmp_path / "out"
    generate_variants(crops, ref, inpainter=FakeInpainter(), batch_size=2, **SETTINGS)
    # interrupted during the second batch (engine calls 0, 1 = first batch's two steps)
    with pytest.raises(KeyboardInterrupt):
        generate_variants(crops, out, inpainter=FakeInpainter(fail_after=3), batch_size=2, **SETTINGS)
    done = sorted(p.name for p in (out / "history").glob("[0-9]*.json"))
    assert done == ["000000.json", "000001.json"] and not (out / "manifest.csv").exists()
    assert not list(out.rglob("*.tmp"))           # atomic writes leave no partial files
    engine = FakeInpainter()
    summary = generate_variants(crops, out, inpainter=engine, batch_size=2, **SETTINGS)
    assert summary["made"] == 7                   # only the unfinished variants were made
    assert sum(c["n"] for c in engine.calls) == 7 * 2
    assert folder_bytes(out) == folder_bytes(ref)
    again = FakeInpainter()
    assert generate_variants(crops, out, inpainter=again, batch_size=2, **SETTINGS)["made"] == 0
    assert again.calls == []
    # interrupted while writing a batch: 000003 (source 1, run 0) written, 000004 not
    (out / "history" / "000004.json").unlink()
    (out / "000004.png").unlink()
    partial = FakeInpainter()
    assert generate_variants(crops, out, inpainter=partial, batch_size=2, **SETTINGS)["made"] == 1
    assert [c["n"] for c in partial.calls] == [2, 2]      # its batch was recomputed whole
    assert folder_bytes(out) == folder_bytes(ref)


def test_resume_with_other_settings_is_refused(tmp_path):
    crops = make_crops(tmp_path / "crops", n=1)
    generate_variants(crops, tmp_path / "out", inpainter=FakeInpainter(), **SETTINGS)
    with pytest.raises(ValueError, match="other settings.*prompt"):
        generate_variants(crops, tmp_path / "out", inpainter=FakeInpainter(),
                          **{**SETTINGS, "log": print}, prompt="psoriasis")
    (tmp_path / "out" / "notes.txt").write_text("not ours")
    summary = generate_variants(crops, tmp_path / "out", inpainter=FakeInpainter(), prompt="psoriasis",
                                restart_if_changed=True, **{**SETTINGS, "runs": 1})
    assert summary["made"] == 1 and (tmp_path / "out" / "notes.txt").is_file()
    assert sorted(p.name for p in (tmp_path / "out").glob("0*.png")) == [
        "000000.png", "000000_edit.png", "000000_mask.png"]
    assert read_csv(tmp_path / "out" / "manifest.csv")[0]["prompt"] == "psoriasis"


def test_resume_with_other_user_masks_is_refused(tmp_path):
    from skinlib.augment.inpaint import UserMask

    crops = make_crops(tmp_path / "crops", n=1)
    m = np.zeros((256, 256), np.uint8)
    m[64:128, 64:128] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    generate_variants(crops, tmp_path / "out", inpainter=FakeInpainter(),
                      sampler=UserMask(tmp_path / "m.png"), **{**SETTINGS, "runs": 1})
    Image.fromarray(np.roll(m, 64, axis=0)).save(tmp_path / "m.png")     # same file, other mask
    with pytest.raises(ValueError, match="other settings.*sampler"):
        generate_variants(crops, tmp_path / "out", inpainter=FakeInpainter(),
                          sampler=UserMask(tmp_path / "m.png"), **{**SETTINGS, "runs": 1})


def test_bad_source_is_a_recorded_skip(tmp_path):
    crops = make_crops(tmp_path / "crops", n=3)
    (crops / "000001.png").write_bytes(b"not a png")
    # crop 2's mask is empty: the ill-skin sampler cannot use it
    Image.fromarray(np.zeros((256, 256), np.uint8)).save(crops / "000002_mask.png")
    out = tmp_path / "out"
    logs = []
    summary = generate_variants(crops, out, inpainter=FakeInpainter(), sampler="squares-ill",
                                **{**SETTINGS, "log": logs.append})
    assert summary["made"] == 3 and summary["skipped_sources"] == 2
    skipped = read_csv(out / "skipped.csv")
    assert [s["source_crop"] for s in skipped] == ["000001.png", "000002.png"]
    assert "000001.png" in skipped[0]["reason"] and "no ill skin" in skipped[1]["reason"]
    assert any("Skipping source 1" in line for line in logs)
    assert len(read_csv(out / "manifest.csv")) == 3


def test_missing_mask_or_wrong_size_crop_is_a_recorded_skip_not_a_maskless_source(tmp_path):
    crops = make_crops(tmp_path / "crops", n=3)
    (crops / "000000_mask.png").unlink()           # the manifest still names it
    Image.fromarray(np.zeros((200, 200, 3), np.uint8)).save(crops / "000002.png")   # not 256 px
    out = tmp_path / "out"
    summary = generate_variants(crops, out, inpainter=FakeInpainter(), sampler="squares",
                                **{**SETTINGS, "runs": 1})
    assert summary["made"] == 1 and summary["skipped_sources"] == 2
    reasons = {s["source_crop"]: s["reason"] for s in read_csv(out / "skipped.csv")}
    assert "000000_mask.png" in reasons["000000.png"] and "does not exist" in reasons["000000.png"]
    assert "200x200 px, expected 256x256" in reasons["000002.png"]
    assert [r["image"] for r in read_csv(out / "manifest.csv")] == ["000001.png"]


@pytest.mark.parametrize("sampler", ["squares-ill", "squares-healthy"])
def test_crops_without_masks_are_skipped_by_mask_samplers(tmp_path, sampler):
    # without a mask the crop is neither "all healthy" nor "no ill skin": the sampler cannot use it
    crops = make_crops(tmp_path / "crops", n=2, masks=False)
    summary = generate_variants(crops, tmp_path / "out", inpainter=FakeInpainter(), sampler=sampler,
                                **{**SETTINGS, "runs": 1})
    assert summary["made"] == 0 and summary["skipped_sources"] == 2
    reasons = [s["reason"] for s in read_csv(tmp_path / "out" / "skipped.csv")]
    assert all("has no ill-skin mask" in r and sampler in r for r in reasons)


def test_crops_without_masks_and_partial_merge(tmp_path):
    crops = make_crops(tmp_path / "crops", n=2, masks=False)
    out = tmp_path / "out"
    generate_variants(crops, out, inpainter=FakeInpainter(), shard_index=1, num_shards=2,
                      gifs="none", batch_size=3, **SETTINGS)
    assert merge_manifests(out, log=lambda *_: None) is None
    rows = read_csv(merge_manifests(out, allow_partial=True))
    assert [r["image"] for r in rows] == ["000003.png", "000004.png", "000005.png"]
    assert all(r["mask"] == "" and r["gif"] == "" for r in rows)
    assert not list(out.glob("*_mask.png"))


def test_shard_helpers(monkeypatch):
    # runs <= batch_size: all runs of batch_size // runs sources per batch
    b = plan_batches(5, 2, 5)
    assert b == [[(0, 0), (0, 1), (1, 0), (1, 1)], [(2, 0), (2, 1), (3, 0), (3, 1)], [(4, 0), (4, 1)]]
    assert shard_batches(b, 1, 2) == [b[1]]
    # runs > batch_size: a source's runs are cut, and stay on one shard
    b = plan_batches(3, 5, 2)
    assert b[:3] == [[(0, 0), (0, 1)], [(0, 2), (0, 3)], [(0, 4)]] and len(b) == 9
    assert {i for bt in shard_batches(b, 1, 2) for i, _ in bt} == {1}
    for n_shards in (1, 2, 3, 4):
        items = sorted(it for k in range(n_shards) for bt in shard_batches(b, k, n_shards) for it in bt)
        assert items == [(i, r) for i in range(3) for r in range(5)]
    # the documented rule (module docstring): shard K takes the sources with
    # (source_index // max(1, batch_size // runs)) % num_shards == K
    b = plan_batches(6, 5, 10)
    assert sorted({i for bt in shard_batches(b, 0, 2) for i, _ in bt}) == [0, 1, 4, 5]
    for n_src, runs, bs, n_shards in [(6, 5, 10, 2), (7, 2, 5, 3), (5, 3, 3, 2), (9, 1, 4, 4), (4, 5, 2, 3),
                                      (11, 2, 9, 2), (3, 4, 4, 5)]:
        batches = plan_batches(n_src, runs, bs)
        per = max(1, bs // runs)
        for k in range(n_shards):
            got = {i for bt in shard_batches(batches, k, n_shards) for i, _ in bt}
            assert got == {i for i in range(n_src) if (i // per) % n_shards == k}, (n_src, runs, bs, n_shards, k)
    with pytest.raises(ValueError):
        shard_batches(b, 2, 2)
    with pytest.raises(ValueError):
        plan_batches(3, 0, 2)
    assert output_stem(3, 2, 5) == "000017"
    for k in ("WORLD_SIZE", "RANK", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"):
        monkeypatch.delenv(k, raising=False)
    assert shard_from_env() == (0, 1)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "2")
    assert shard_from_env() == (3, 4)
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "6")
    assert shard_from_env() == (6, 8)


# ---------------------------------------------------------------- the real engine, tiny random
@pytest.fixture(scope="module")
def tiny_engine():
    pipeline = pytest.importorskip("skinlib.glide.pipeline")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # tiny convolutions on a shared CPU: threads only add overhead
    # one diffusion step per stage: these tests are about the bookkeeping around the engine
    yield pipeline.GlideInpainter.from_pretrained("tiny-random", device="cpu", base_respacing="1",
                                                  upsample_respacing="1")
    torch.set_num_threads(threads)


def test_tiny_random_engine_two_shards_equal_one_shard_batched(tmp_path, tiny_engine):
    """The real engine (tiny random weights), batches of 4 mixing two sources, 2 runs, 2 steps:
    shard 0 + shard 1 give the one-shard run's bytes."""
    assert tiny_engine.is_random
    crops = make_crops(tmp_path / "crops", n=3)
    one, two = tmp_path / "one", tmp_path / "two"
    s = dict(runs=2, steps=2, seed=3, batch_size=4, progress=False, log=lambda *_: None)
    calls = []
    original = tiny_engine.inpaint

    def counting(images, *args, **kw):
        calls.append(images.shape[0])
        return original(images, *args, **kw)

    tiny_engine.inpaint = counting
    try:
        generate_variants(crops, one, inpainter=tiny_engine, **s)
        generate_variants(crops, two, inpainter=tiny_engine, shard_index=1, num_shards=2, **s)
        shard1 = folder_bytes(two)
        generate_variants(crops, two, inpainter=tiny_engine, shard_index=0, num_shards=2, **s)
    finally:
        del tiny_engine.inpaint
    assert calls == [4, 4, 2, 2] + [2, 2] + [4, 4]     # batches: sources {0, 1} and {2}, per step
    rows = read_csv(one / "manifest.csv")
    assert len(rows) == 6 and all(r["checkpoint"] == RANDOM_LABEL for r in rows)
    model = json.loads(rows[0]["model"])
    assert model["base_respacing"] == "1" and model["upsample_respacing"] == "1"
    for r in rows:
        src = np.asarray(Image.open(crops / r["source_crop"]).convert("RGB"))
        img = np.asarray(Image.open(one / r["image"]))
        edit = np.asarray(Image.open(one / r["edit"])) > 127
        np.testing.assert_array_equal(img[~edit], src[~edit])
        assert (img[edit] != src[edit]).mean() > 0.5
    # shard 1 alone: exactly the one-shard run's files for source 2 (runs 0, 1 = 000004, 000005)
    a = folder_bytes(one)
    assert sorted(k for k in shard1 if k.endswith(".png") and "/" not in k) == [
        "000004.png", "000004_edit.png", "000004_mask.png", "000005.png", "000005_edit.png", "000005_mask.png"]
    assert [k for k in shard1 if k not in ("generation.json", "manifest.csv") and a[k] != shard1[k]] == []
    # both shards: the whole folder, byte for byte
    b = folder_bytes(two)
    assert sorted(a) == sorted(b) and len(a) > 30
    assert [k for k in a if a[k] != b[k]] == []


def test_resume_with_another_cpu_thread_count_is_refused(tmp_path):
    crops = make_crops(tmp_path / "crops", n=1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        generate_variants(crops, tmp_path / "out", inpainter=FakeInpainter(), **{**SETTINGS, "runs": 1})
        assert json.loads((tmp_path / "out" / "generation.json").read_text())["cpu_threads"] == 1
        torch.set_num_threads(2)
        with pytest.raises(ValueError, match=r"cpu_threads.*this run uses 2.*made with 1 \(pass --threads 1"):
            generate_variants(crops, tmp_path / "out", inpainter=FakeInpainter(), **{**SETTINGS, "runs": 2})
    finally:
        torch.set_num_threads(threads)


def test_command_line_takes_its_shard_from_torchrun(tmp_path, monkeypatch, tiny_engine):
    from skinlib.augment.generate import main

    crops = make_crops(tmp_path / "crops", n=2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    threads = torch.get_num_threads()
    try:
        assert main(["--crops", str(crops), "--out", str(tmp_path / "out"), "--weights", "tiny-random",
                     "--runs", "1", "--steps", "1", "--batch-size", "1", "--base-respacing", "2",
                     "--upsample-respacing", "2", "--device", "cpu", "--threads", "1",
                     "--no-progress"]) == 0
    finally:
        torch.set_num_threads(threads)
    done = sorted(p.name for p in (tmp_path / "out" / "history").glob("[0-9]*.json"))
    assert done == ["000001.json"]                      # rank 1 of 2: the second source only
    assert len(read_csv(tmp_path / "out" / "manifest.shard-1-of-2.csv")) == 1


def test_command_line_user_masks(tmp_path, tiny_engine, capsys):
    from skinlib.augment.generate import main

    crops = make_crops(tmp_path / "crops", n=1)
    m = np.zeros((256, 256), np.uint8)
    m[64:124, 132:192] = 255                       # a 60 px square on the 4 px grid
    Image.fromarray(m).save(tmp_path / "m.png")
    args = ["--crops", str(crops), "--out", str(tmp_path / "out"), "--weights", "tiny-random",
            "--runs", "1", "--steps", "2", "--batch-size", "1", "--base-respacing", "2",
            "--upsample-respacing", "2", "--device", "cpu", "--threads", "1", "--no-progress",
            "--shard-index", "0", "--num-shards", "1"]
    threads = torch.get_num_threads()
    try:
        assert main(args + ["--sampler", "user", "--user-masks", str(tmp_path / "m.png")]) == 0
    finally:
        torch.set_num_threads(threads)
    row = read_csv(tmp_path / "out" / "manifest.csv")[0]
    assert row["sampler"].startswith("user-mask(1 mask, sha256 ")
    assert [h["box"] for h in json.loads(row["history"])] == [[64, 132, 124, 192]] * 2
    edit = np.asarray(Image.open(tmp_path / "out" / row["edit"])) > 127
    np.testing.assert_array_equal(edit, m > 0)
    for bad, match in ((["--sampler", "user"], "--user-masks"),
                       (["--user-masks", str(tmp_path / "m.png")], "only used with --sampler user"),
                       (["--sampler", "user", "--user-masks", str(tmp_path / "nope.png")], "nope.png"),
                       (["--sampler", "user", "--user-masks"] + [str(tmp_path / "m.png")] * 3, "one per step")):
        capsys.readouterr()
        with pytest.raises(SystemExit):
            main(args + bad)
        assert match in capsys.readouterr().err


def test_folder_from_before_new_sampler_options_still_resumes(tmp_path):
    """Engine options that default to None (e.g. base_start, ddim_eta, added later) neither block
    resuming a folder written without them nor hide a real change, which the error names."""
    crops = make_crops(tmp_path / "crops", n=1)
    out = tmp_path / "out"
    generate_variants(crops, out, inpainter=FakeInpainter(), **SETTINGS)
    settings = json.loads((out / "generation.json").read_text())
    assert "base_start" not in settings["model"]
    settings["model"]["base_start"] = None          # as written by the previous version
    (out / "generation.json").write_text(json.dumps(settings))
    newer = FakeInpainter()
    newer.identity = {**newer.identity, "base_start": None, "ddim_eta": None}
    assert generate_variants(crops, out, inpainter=newer, **SETTINGS)["made"] == 0
    changed = FakeInpainter()
    changed.identity = {**changed.identity, "base_start": 250}
    with pytest.raises(ValueError, match=r"model\.base_start: folder .*, now 250"):
        generate_variants(crops, out, inpainter=changed, **SETTINGS)


def test_max_sources_are_spread_over_patients():
    from skinlib.augment.generate import spread_over_patients

    rows = [{"image": f"{i:06d}.png", "patient": f"persona{1 + i // 5}"} for i in range(40)]   # 8 patients x 5 crops
    pick = spread_over_patients(rows, 12)
    patients = [r["patient"] for r in pick]
    assert len(pick) == 12 and len(set(patients)) == 8 and max(patients.count(p) for p in set(patients)) == 2
    assert pick == sorted(pick, key=lambda r: r["image"])                 # manifest order kept
    assert spread_over_patients(rows, 100) == rows
    for i, r in enumerate(rows):                                          # the most ill crop of each patient first
        r["coverage"] = f"{0.1 + (i % 5 == 3) * 0.5:.2f}"
    assert {r["image"] for r in spread_over_patients(rows, 8)} == {f"{i:06d}.png" for i in range(3, 40, 5)}


def test_lowered_overlap_steps_are_counted_for_the_job_log():
    from skinlib.augment.generate import lowered_overlap_steps

    rows = [{"history": [{"step": 1, "min_overlap": 0.03, "min_overlap_lowered_from": 0.5},
                         {"step": 2, "min_overlap": 0.5}]}, {"history": [{"step": 1}]}, {}]
    assert lowered_overlap_steps(rows) == 1


def test_generation_json_records_the_cpu_without_refusing_another(tmp_path, tiny_engine, monkeypatch):
    """generation.json of a tiny-random smoke generation names the CPU (model, torch capability,
    native bf16: issue 21); it is a record, not a setting: resuming on another CPU goes on."""
    from skinlib import cpu
    from skinlib.augment import generate as gen

    crops = make_crops(tmp_path / "crops", n=1)
    s = dict(runs=1, steps=1, seed=1, batch_size=1, progress=False, log=lambda *_: None)
    generate_variants(crops, tmp_path / "out", inpainter=tiny_engine, **s)
    record = json.loads((tmp_path / "out" / "generation.json").read_text())["cpu"]
    assert record == cpu.cpu_info() and {"model", "torch_capability", "native_bf16"} <= set(record)
    assert record["model"] and isinstance(record["native_bf16"], bool)
    other = {**record, "model": "Another CPU", "torch_capability": "AVX2", "native_bf16": False}
    monkeypatch.setattr(gen, "cpu_info", lambda: other)
    summary = generate_variants(crops, tmp_path / "out", inpainter=tiny_engine, **s)
    assert summary["made"] == 0 and summary["shard_variants"] == 1


def test_generation_json_records_the_profile_and_a_resume_updates_it(tmp_path):
    """The notebook's resolved profile (issue 19) is a record in generation.json, not a setting: a
    resume under another profile record with the same settings goes on and records the new one;
    the estimate of the whole job is logged after the first engine call."""
    crops = make_crops(tmp_path / "crops", n=1)
    first = {"asked": "auto", "name": "cpu-demo", "device": "cpu", "values": {"runs": 3}, "set_by_profile": []}
    lines: list[str] = []
    generate_variants(crops, tmp_path / "out", inpainter=FakeInpainter(), profile=first,
                      **{**SETTINGS, "log": lines.append})
    assert json.loads((tmp_path / "out" / "generation.json").read_text())["profile"] == first
    assert any(ln.startswith("Expected about ") and "3 variants (6 inpaints)" in ln for ln in lines)
    second = {**first, "asked": "cpu-demo"}
    summary = generate_variants(crops, tmp_path / "out", inpainter=FakeInpainter(), profile=second, **SETTINGS)
    assert summary["made"] == 0
    assert json.loads((tmp_path / "out" / "generation.json").read_text())["profile"] == second
