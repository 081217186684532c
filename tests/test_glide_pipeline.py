"""GlideInpainter: tiny-random weights, per-item seeds, known pixels, identity, errors."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from skinlib.glide import GlideInpainter, configs, load_tokenizer, random_model
from skinlib.glide.pipeline import encode_prompts


@pytest.fixture(scope="module")
def small_pipe():
    """Fixture-sized random models (16 px base, 32 px upsampler): fast pipeline logic tests."""
    tok = load_tokenizer()  # the packaged vocabulary
    return GlideInpainter(random_model(configs.FIXTURE_TINY_BASE, 5), random_model(configs.FIXTURE_TINY_UPSAMPLE, 6),
                          tok, base_respacing="3", upsample_respacing="2", is_random=True,
                          identity={"weights": "test-random"})


def _inputs(n: int, size: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    keep = torch.ones(n, 1, size, size)
    keep[:, :, size // 3:, size // 4:] = 0
    return images, keep


def test_tiny_random_full_resolution(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="skinlib.glide"):
        pipe = GlideInpainter.from_pretrained("tiny-random", device="cpu", cache_dir=tmp_path, download=False,
                                              base_respacing="2", upsample_respacing="2", seed=3)
    assert pipe.is_random and "RANDOM" in pipe.name
    assert any("RANDOM" in r.getMessage() and "tiny-random" in r.getMessage() for r in caplog.records)
    ident = json.loads(json.dumps(pipe.identity))  # JSON-able
    assert ident["weights"] == "tiny-random" and ident["base"] == "tiny-random seed 3"
    assert ident["base_respacing"] == "2" and ident["dtype"] == "float32" and ident["is_random"] is True
    assert (pipe.base_image_size, pipe.image_size) == (64, 256)
    images, keep = _inputs(1, 256)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="skinlib.glide"):
        out = pipe.inpaint(images, keep, ["maculopapular rash"], [0])
    assert any("RANDOM" in r.getMessage() for r in caplog.records)
    assert out.shape == (1, 3, 256, 256) and torch.isfinite(out).all()
    assert float(out.min()) >= -1 and float(out.max()) <= 1
    assert torch.equal(out[keep.expand_as(out) == 1], images[keep.expand_as(images) == 1])


def test_known_pixels_kept_exactly_and_hole_filled(small_pipe):
    images, keep = _inputs(2)
    out = small_pipe.inpaint(images, keep, ["a red rash", "eczema on the arm"], [1, 2])
    known = keep.expand_as(images) == 1
    assert torch.equal(out[known], images[known])
    assert float((out - images)[~known].abs().mean()) > 0.05  # the hole is really resynthesised
    everything = small_pipe.inpaint(images, torch.ones_like(keep), "x", [1, 2])
    assert torch.equal(everything, images)


def test_same_seed_same_result_different_seed_different(small_pipe):
    images, keep = _inputs(2)
    a = small_pipe.inpaint(images, keep, "a red rash", [11, 12])
    b = small_pipe.inpaint(images, keep, "a red rash", [11, 12])
    c = small_pipe.inpaint(images, keep, "a red rash", [11, 99])
    assert torch.equal(a, b)
    assert torch.equal(a[0], c[0]) or float((a[0] - c[0]).abs().max()) < 1e-4
    assert float((a[1] - c[1]).abs().max()) > 0.1


def test_item_result_does_not_depend_on_batch_mates(small_pipe):
    images, keep = _inputs(3)
    batch = small_pipe.inpaint(images, keep, ["rash", "patch", "plaque"], [5, 6, 7])
    alone = small_pipe.inpaint(images[1:2], keep[1:2], ["patch"], [6])
    # same noise and text; only float rounding of batched convolutions may differ
    assert float((batch[1] - alone[0]).abs().max()) < 1e-3


def test_guidance_scale_and_prompt_matter(small_pipe):
    images, keep = _inputs(1)
    a = small_pipe.inpaint(images, keep, "a red rash", [4], guidance_scale=5.0)
    b = small_pipe.inpaint(images, keep, "a red rash", [4], guidance_scale=1.0)
    c = small_pipe.inpaint(images, keep, "a blue lake", [4], guidance_scale=5.0)
    assert float((a - b).abs().max()) > 1e-3 and float((a - c).abs().max()) > 1e-3


def test_text_encoded_once_per_distinct_prompt(small_pipe):
    calls = []
    model = small_pipe.base
    original = model.transformer.forward

    def counting(x):
        calls.append(x.shape[0])
        return original(x)

    model.transformer.forward = counting
    try:
        cond = encode_prompts(model, small_pipe.tokenizer, ["a", "b", "a", "", ""])
        images, keep = _inputs(2)
        calls.clear()
        small_pipe.inpaint(images, keep, ["same", "same"], [1, 2])
    finally:
        del model.transformer.forward
    assert calls == [2]  # one text pass for the whole 3-step base stage: "same" and ""
    assert len(cond) == 5 and torch.equal(cond.xf_out[0], cond.xf_out[2])


def test_callbacks_see_every_step(small_pipe):
    images, keep = _inputs(1)
    base_steps, up_steps = [], []
    small_pipe.inpaint(images, keep, "rash", [0], base_callback=lambda k, d: base_steps.append(d),
                       upsample_callback=lambda k, d: up_steps.append(d))
    assert len(base_steps) == 3 and len(up_steps) == 2
    assert base_steps[0]["x_t"].shape == (1, 3, 16, 16) and up_steps[0]["x_t"].shape == (1, 3, 32, 32)
    assert base_steps[0]["model_out_raw"].shape == (2, 6, 16, 16)  # guidance pair in one forward


def test_bad_inputs_raise_clear_errors(small_pipe):
    images, keep = _inputs(2)
    with pytest.raises(ValueError, match=r"\[N, 3, 32, 32\]"):
        small_pipe.inpaint(images[..., :16, :16], keep, "x", [1, 2])
    with pytest.raises(ValueError, match="keep_mask"):
        small_pipe.inpaint(images, keep[:1], "x", [1, 2])
    with pytest.raises(ValueError, match="seeds"):
        small_pipe.inpaint(images, keep, "x", [1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        small_pipe.inpaint(images, keep * 2, "x", [1, 2])
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        small_pipe.inpaint(images * 3, keep, "x", [1, 2])
