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


def test_engine_itself_keeps_known_pixels_without_the_final_where(caplog):
    """The guarantee the algorithm relies on, without any safety net: the upsampler's last
    sample (seen by the callback, before ``inpaint`` re-imposes the known pixels with
    ``torch.where``) already equals the input at every known pixel, exactly: known pixels are
    imposed on every x0 prediction, and the last step's posterior mean is 1.0 * x0 + 0.0 * x_t.
    Tiny random weights at the real sizes (64 px base, 256 px upsampler), two diffusion steps each."""
    pipe = GlideInpainter.from_pretrained("tiny-random", device="cpu", base_respacing="2",
                                          upsample_respacing="2", seed=1)
    g = torch.Generator().manual_seed(3)
    images = torch.round(torch.rand(2, 3, 256, 256, generator=g) * 255) / 127.5 - 1     # 8-bit levels
    keep = torch.ones(2, 1, 256, 256)
    keep[0, :, 64:124, 100:160] = 0                 # a study square on the 4 px grid
    keep[1, :, 10:31, 3:250] = 0                    # a band not on the grid
    last = {}
    with caplog.at_level(logging.ERROR):
        out = pipe.inpaint(images, keep, "an image of measles on dark skin", [7, 8],
                           upsample_callback=lambda k, d: last.update(d))
    raw = last["sample"]
    known = keep.expand_as(images) == 1
    assert torch.equal(raw[known], images[known])
    assert torch.equal(out[~known], raw.clamp(-1, 1)[~known])      # raw is what inpaint returns
    assert float((raw - images)[~known].abs().mean()) > 0.1          # the hole is re-synthesised


def test_same_seed_same_result_different_seed_different(small_pipe):
    images, keep = _inputs(2)
    a = small_pipe.inpaint(images, keep, "a red rash", [11, 12])
    b = small_pipe.inpaint(images, keep, "a red rash", [11, 12])
    c = small_pipe.inpaint(images, keep, "a red rash", [11, 99])
    assert torch.equal(a, b)
    # item 0 keeps its seed and its place in a batch of the same size: batch rows are computed
    # independently (per-row convolutions, norms, attention, noise), so exactly the same result
    assert torch.equal(a[0], c[0])
    assert _changed_8bit_fraction(a[1:], c[1:], keep[1:]) > 0.5


def test_item_result_does_not_depend_on_batch_mates(small_pipe):
    images, keep = _inputs(3)
    batch = small_pipe.inpaint(images, keep, ["rash", "patch", "plaque"], [5, 6, 7])
    alone = small_pipe.inpaint(images[1:2], keep[1:2], ["patch"], [6])
    # same noise and text; only float rounding of batched convolutions may differ
    assert float((batch[1] - alone[0]).abs().max()) < 1e-3


def _changed_8bit_fraction(a: torch.Tensor, b: torch.Tensor, keep: torch.Tensor) -> float:
    """Fraction of the hole's channel values whose 8-bit level differs between a and b."""
    def level(x):
        return torch.round((x.clamp(-1, 1) + 1) * 127.5)

    hole = keep.expand_as(a) == 0
    return float((level(a) != level(b))[hole].float().mean())


def test_guidance_scale_and_prompt_matter(small_pipe):
    images, keep = _inputs(1)
    a = small_pipe.inpaint(images, keep, "a red rash", [4], guidance_scale=5.0)
    b = small_pipe.inpaint(images, keep, "a red rash", [4], guidance_scale=1.0)
    c = small_pipe.inpaint(images, keep, "a blue lake", [4], guidance_scale=5.0)
    # each setting changes the saved (8-bit) image over a good part of the hole, not in the last bits
    assert _changed_8bit_fraction(a, b, keep) > 0.1 and _changed_8bit_fraction(a, c, keep) > 0.1


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


def test_upsample_window_keeps_known_pixels_and_only_sees_a_window(tmp_path):
    pipe = GlideInpainter.from_pretrained("tiny-random", device="cpu", base_respacing="2", upsample_respacing="2",
                                          seed=3, upsample_window=128)
    assert pipe.identity["upsample_window"] == 128
    images, _ = _inputs(2, 256)
    keep = torch.ones(2, 1, 256, 256)
    keep[0, :, 64:124, 100:160] = 0          # one square of the study's size
    keep[1, :, 196:256, 0:60] = 0            # in a corner: the window is clamped to the image
    assert pipe._window_boxes(keep < 0.5) == [(28, 64, 128), (128, 0, 128)]
    out = pipe.inpaint(images, keep, "rash", [1, 2])
    known = keep.expand_as(images) == 1
    assert torch.equal(out[known], images[known]) and float((out - images)[~known].abs().mean()) > 0.05
    full = pipe.set_upsample_window(None).inpaint(images, keep, "rash", [1, 2])
    assert float((full - out).abs().max()) > 1e-3   # the upsampler really saw less
    wide = torch.ones(1, 1, 256, 256)
    wide[..., 10:240, 10:20] = 0
    assert pipe.set_upsample_window(128)._window_boxes(wide < 0.5) is None  # too tall: whole image
    with pytest.raises(ValueError, match="multiple of 32"):
        pipe.set_upsample_window(100)


def test_smooth_fill_keeps_known_pixels_and_fills_a_flat_image_exactly():
    from skinlib.glide.pipeline import smooth_fill

    images, keep = _inputs(2, 16)
    filled = smooth_fill(images, keep, sigma=2.0)
    known = keep.expand_as(images) == 1
    assert torch.equal(filled[known], images[known])
    flat = torch.full((1, 3, 16, 16), -0.3)
    flat[:, :, 8:12, 8:12] = 0.9                      # hole content is ignored
    assert torch.allclose(smooth_fill(flat, keep[:1], sigma=2.0), torch.full_like(flat, -0.3), atol=1e-6)


def test_small_model_sampling_starts_from_noised_fills_and_is_recorded():
    """base_start / upsample_start: the first x_t of each stage is the seeded noise mixed with the
    smooth fill (base) or the upsampled base result (upsampler) at the start's noise level; DDIM
    steps; everything in identity; the known pixels are still kept exactly."""
    from skinlib.glide.diffusion import PerItemNoise
    from skinlib.glide.pipeline import smooth_fill

    pipe = GlideInpainter(random_model(configs.FIXTURE_TINY_BASE, 5), random_model(configs.FIXTURE_TINY_UPSAMPLE, 6),
                          load_tokenizer(), base_respacing="3", upsample_respacing="2", is_random=True,
                          identity={"weights": "test-random"})
    pipe.set_base_start(300).set_upsample_start(60).set_ddim(0.0)
    assert (pipe.identity["base_start"], pipe.identity["upsample_start"], pipe.identity["ddim_eta"]) == (300, 60, 0.0)
    assert int(pipe.base_diffusion.timestep_map[-1]) == 300 and int(pipe.upsample_diffusion.timestep_map[-1]) == 60
    images, keep = _inputs(1)
    base_steps, up_steps = [], []
    out = pipe.inpaint(images, keep, "rash", [7], base_callback=lambda k, d: base_steps.append(d),
                       upsample_callback=lambda k, d: up_steps.append(d))
    assert int(base_steps[0]["model_timesteps"][0]) == 300 and int(up_steps[0]["model_timesteps"][0]) == 60
    noise = PerItemNoise.from_seeds([7])
    image_base = torch.nn.functional.interpolate(images, size=(16, 16), mode="bicubic", antialias=True,
                                                 align_corners=False).clamp(-1, 1)
    keep_base = 1 - torch.nn.functional.max_pool2d(1 - keep, 2)
    abar = float(pipe.base_diffusion.alphas_cumprod[-1])
    expected = abar ** 0.5 * smooth_fill(image_base, keep_base, sigma=1.0) + (1 - abar) ** 0.5 * noise.draw((3, 16, 16))
    torch.testing.assert_close(base_steps[0]["x_t"], expected, rtol=1e-6, atol=1e-6)
    # the upsampler starts from its guess (known pixels; elsewhere the bilinear upsample of the 8-bit
    # base result) noised to t = 60 with the seed's next draw (after the base stage's 1 + one per step)
    from skinlib.glide.pipeline import quantize_8bit, upsample_guess

    for _ in range(len(base_steps)):
        noise.draw((3, 16, 16))
    abar_up = float(pipe.upsample_diffusion.alphas_cumprod[-1])
    guess = upsample_guess(images, keep, quantize_8bit(base_steps[-1]["sample"]))
    expected_up = abar_up ** 0.5 * guess + (1 - abar_up) ** 0.5 * 0.997 * noise.draw((3, 32, 32))
    torch.testing.assert_close(up_steps[0]["x_t"], expected_up, rtol=1e-5, atol=1e-5)
    known = keep.expand_as(images) == 1
    assert torch.equal(out[known], images[known])
    # DDIM with eta 0: no step adds fresh noise; ancestral steps do and give another result
    assert all(torch.equal(d["sample"], d["mean"]) for d in base_steps + up_steps)
    ancestral = pipe.set_ddim(None).inpaint(images, keep, "rash", [7])
    assert float((ancestral - out).abs().max()) > 1e-3
    pipe.set_ddim(0.0)
    with pytest.raises(ValueError, match="base_start"):
        pipe.set_base_start(1000)
    with pytest.raises(ValueError, match="base_start=1 does not fit the base respacing '3'"):
        pipe.set_base_start(1)
    with pytest.raises(ValueError, match="eta"):
        pipe.set_ddim(2.0)
    pipe.set_base_start(None).set_upsample_start(None).set_ddim(None)
    assert int(pipe.base_diffusion.timestep_map[-1]) == 999 and pipe.identity["base_start"] is None
