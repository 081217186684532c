"""benchmarks/gpu_check.py in its CPU mode with tiny sizes: every section runs and reports."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from _scripts import load_script


def _load_script():
    return load_script("benchmarks/gpu_check.py")


def test_gpu_check_cpu_tiny(tmp_path, capsys):
    gpu_check = _load_script()
    plan = dataclasses.replace(gpu_check.Plan.quick(), base_respacing="1", upsample_respacing="1",
                               warmup=False, batches=(2,), fp32_inpaint=True, train_models=("dcgan", "cvae"),
                               train_batch=4, train_steps=2, train_epochs=1, shard_sources=2, shard_runs=2,
                               shard_steps=1, shard_batch=2, shard_respacing="1", resume_steps=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = gpu_check.run_check(tmp_path, "cpu", plan=plan, quick=True)
    finally:
        torch.set_num_threads(threads)
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["device"] == "cpu" and saved["quick"] is True
    assert saved["glide"] == json.loads(json.dumps(report["glide"]))

    g = saved["glide"]
    assert g["configs"] == "tiny" and g["dtype"] == "bfloat16"
    for kind in ("base", "upsampler"):
        p = g["precision"][kind]
        # the reduced dtype was really used (bf16 rounding changes the output) and the two outputs
        # are the same computation: random tiny weights amplify rounding (here up to ~8 % of the
        # output's scale on average, the guided base ~1 %), unrelated outputs would differ by about
        # their own size. The size of bf16's error itself is derived in tests/glide/test_model.py
        # (test_bfloat16_error_is_the_rounding_error_of_its_precision).
        assert 0 < p["forward_max_abs_diff"] <= 2 * p["output_max_abs"], p
        assert p["forward_mean_abs_diff"] <= 0.25 * p["output_max_abs"], p
        assert p["forward_mean_abs_diff"] <= p["forward_max_abs_diff"]
    levels = g["precision"]["inpaint_batch1_8bit_levels"]
    # the whole inpaint (known pixels kept, 8-bit output): bf16 moves its pixels by < 1 level on average
    assert 0 <= levels["mean_abs_diff"] < 1.0 and levels["mean_abs_diff"] <= levels["max_abs_diff"] <= 255, levels
    assert [r["batch"] for r in [g["latency"]] + g["throughput"]] == [1, 2]
    timed = [g["latency"]] + g["throughput"]
    for r in timed:
        assert r["seconds"] > 0 and r["inpaints_per_s"] == pytest.approx(r["batch"] / r["seconds"])
        assert r["peak_memory_gib"] is None          # not measured on a CPU
    # the timings are parts of their section, the sections parts of the whole check
    sections = saved["section_seconds"]
    assert sum(r["seconds"] for r in timed) <= sections["glide"]
    assert sum(sections.values()) <= saved["seconds"]

    assert [(r["model"], r["image_size"]) for r in saved["training"]] == [("dcgan", 64), ("cvae", 64)]
    # each trained 2 steps x 4 images inside the training section
    assert sum(8 / r["images_per_s"] for r in saved["training"]) <= sections["training"]
    assert saved["shards"]["identical"] is True and saved["shards"]["files"] > 10
    assert saved["resume"]["generation"]["identical_after_resume"] is True
    assert saved["resume"]["training"]["exact"] is True          # exact resume on the CPU
    assert saved["resume"]["training"]["max_abs_weight_diff"] == 0.0

    table = capsys.readouterr().out
    assert "two shards == one shard: True" in table and "inpaints/s" in table
