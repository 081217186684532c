"""Choosing GLIDE's arithmetic by the CPU (issue 21): the engine's dtype and training's autocast.
Native bf16 is passed in (or the CPU record replaced), so no particular CPU is needed. The
defaults never pick bf16 on a CPU; "auto" picks it only where bf16 is native."""
from __future__ import annotations

import json

import pytest
import torch

from skinlib import cpu
from skinlib.glide import finetune, pipeline
from skinlib.glide.pipeline import GlideInpainter, choose_dtype
from _toy_crops import make_crops

BF16, FP32, FP16 = torch.bfloat16, torch.float32, torch.float16
SLOW = {"model": "Old CPU", "machine": "x86_64", "torch_capability": "AVX2", "bf16_flags": [],
        "onednn_bf16": False, "native_bf16": False, "env": {}}
FAST = {**SLOW, "model": "New CPU", "torch_capability": "AVX512", "bf16_flags": ["avx512_bf16"],
        "onednn_bf16": True, "native_bf16": True}


@pytest.mark.parametrize("native", [False, True])
def test_engine_dtype_choice(native):
    assert choose_dtype(None, "cpu", native) == FP32               # the default: never bf16 on a CPU
    assert choose_dtype("auto", "cpu", native) == (BF16 if native else FP32)
    assert choose_dtype(None, "cuda", native) == choose_dtype("auto", "cuda", native) == FP16
    assert choose_dtype("auto", "mps", native) == FP32
    assert choose_dtype("bf16", "cpu", native) == choose_dtype(BF16, "cpu", native) == BF16  # asked: kept
    assert choose_dtype("float32", "cuda", native) == FP32
    with pytest.raises(ValueError, match=r"dtype='half16'.*'auto'.*'bf16'"):
        choose_dtype("half16", "cpu", native)


@pytest.mark.parametrize("native", [False, True])
@pytest.mark.parametrize("cuda_bf16", [False, True])
def test_training_autocast_choice(native, cuda_bf16):
    choose = finetune.choose_autocast
    assert choose(True, "cpu", native, cuda_bf16) is None           # the default: float32 on a CPU
    assert choose("auto", "cpu", native, cuda_bf16) == (BF16 if native else None)
    assert choose("bf16", "cpu", native, cuda_bf16) == BF16
    assert choose(False, "cpu", native, cuda_bf16) is choose(False, "cuda", native, cuda_bf16) is None
    assert choose(True, "cuda", native, cuda_bf16) == choose("auto", "cuda", native, cuda_bf16) == \
        (BF16 if cuda_bf16 else FP16)
    assert choose("auto", "mps", native, cuda_bf16) is None
    if cuda_bf16:
        assert choose("bf16", "cuda", native, cuda_bf16) == BF16
    else:
        with pytest.raises(ValueError, match="does not support bfloat16"):
            choose("bf16", "cuda", native, cuda_bf16)


@pytest.mark.parametrize("info, expected", [(SLOW, FP32), (FAST, BF16)])
def test_engine_auto_follows_the_cpu_record(monkeypatch, info, expected):
    monkeypatch.setattr(cpu, "cpu_info", lambda: info)
    default = GlideInpainter.from_pretrained("tiny-random", device="cpu")
    auto = GlideInpainter.from_pretrained("tiny-random", device="cpu", dtype="auto")
    assert default.dtype == FP32 and default.identity["dtype"] == "float32"
    assert auto.dtype == expected and auto.identity["dtype"] == str(expected).replace("torch.", "")
    assert auto.base.input_blocks[0][0].weight.dtype == expected


def test_explicit_bf16_on_a_slow_cpu_runs_and_warns_once(monkeypatch):
    monkeypatch.setattr(cpu, "cpu_info", lambda: SLOW)
    monkeypatch.setattr(cpu, "_warned", set())
    with pytest.warns(RuntimeWarning, match=r"GLIDE engine: bfloat16 on a CPU without native bf16.*6-8x"):
        engine = GlideInpainter.from_pretrained("tiny-random", device="cpu", dtype="bf16")
    assert engine.dtype == BF16
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GlideInpainter.from_pretrained("tiny-random", device="cpu", dtype=BF16)    # once per process
    monkeypatch.setattr(cpu, "cpu_info", lambda: FAST)
    monkeypatch.setattr(cpu, "_warned", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GlideInpainter.from_pretrained("tiny-random", device="cpu", dtype="bf16")  # native: no warning


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    return make_crops(tmp_path_factory.mktemp("dtype") / "crops", n=4)


@pytest.mark.parametrize("amp, info, autocast", [(True, FAST, None), ("auto", SLOW, None), ("auto", FAST, "bfloat16")])
def test_training_records_its_arithmetic_and_cpu(crops, tmp_path, monkeypatch, amp, info, autocast):
    """config.json of the training run says which autocast ran and on which CPU; "auto" trains in
    bf16 only on a CPU with native bf16 (the autocast region really computes in bf16)."""
    monkeypatch.setattr(cpu, "cpu_info", lambda: info)
    seen = []
    original = finetune.encode_prompts

    def spy(*args, **kw):  # called inside the training step's autocast region
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return original(*args, **kw)

    monkeypatch.setattr(finetune, "encode_prompts", spy)
    finetune.train("base", crops, tmp_path / "w", model="fixture-tiny", batch_size=2, epochs=1, split=None,
                   progress=False, sample_every=0, amp=amp, log=lambda *_: None)
    record = json.loads((tmp_path / "w" / "train_base" / "config.json").read_text())
    assert record["cpu"] == info and record["autocast"] == autocast and record["device"] == "cpu"
    assert record["config"]["amp"] == amp
    assert seen == [None if autocast is None else torch.bfloat16] * 2


def test_training_amp_is_checked(crops, tmp_path):
    with pytest.raises(ValueError, match=r"amp='fast' must be one of \(True, False, 'auto', 'bf16'\)"):
        finetune.train("base", crops, tmp_path / "w", model="fixture-tiny", amp="fast", progress=False)
