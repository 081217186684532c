"""Guided inpaint sampling and upsampler sampling against the fixtures (recorded noise)."""
from __future__ import annotations


import pytest
import torch

from skinlib.glide import GaussianDiffusion, RecordedNoise, build_model, configs
from skinlib.glide.pipeline import GuidedModel, quantize_8bit, sample_base_inpaint, sample_upsample_inpaint
from _shared import PARITY


STEP_KEYS = ("mean", "log_variance", "pred_xstart", "sample")


def _load(name):
    from safetensors.torch import load_file

    return load_file(str(PARITY / name))


def _model(name, options):
    model = build_model(options)
    model.load_state_dict(_load(f"{name}.state_dict.safetensors"), strict=True)
    return model


@pytest.fixture(scope="module")
def base():
    return _model("tiny_base_inpaint", configs.FIXTURE_TINY_BASE), _load("tiny_base_inpaint.sampling.safetensors")


@pytest.fixture(scope="module")
def upsampler():
    return (_model("tiny_upsample_inpaint", configs.FIXTURE_TINY_UPSAMPLE),
            _load("tiny_upsample_inpaint.sampling.safetensors"))


def _run_base(model, f, record):
    diffusion = GaussianDiffusion.create("squaredcos_cap_v2", 1000, "4")
    with torch.no_grad():
        text = model.encode_text(f["tokens"], f["mask"])  # [prompt, empty]
        return sample_base_inpaint(
            model, diffusion, text, f["inpaint_image"][:1], f["inpaint_mask"][:1], guidance_scale=5.0,
            initial_noise=f["initial_noise"][:1], noise=RecordedNoise([z[:1] for z in f["step_noise"]]),
            callback=lambda k, d: record.append(d),
        )


def test_base_inputs_follow_the_notebook_recipe(base):
    _, f = base
    src, m = f["source_image"], f["source_mask"]
    assert torch.equal(f["inpaint_image"], (src * m).repeat(2, 1, 1, 1))
    assert torch.equal(f["inpaint_mask"], m.repeat(2, 1, 1, 1))


@pytest.mark.parametrize("channels_last", [False, True])
def test_guided_base_sampling_free_running(base, channels_last):
    model, f = base
    model.set_channels_last(channels_last)
    record: list = []
    final = _run_base(model, f, record)
    assert [int(d["model_timesteps"][0]) for d in record] == [999, 666, 333, 0]
    for k, d in enumerate(record):
        torch.testing.assert_close(d["x_t"], f["step.x_t"][k][:1], atol=1e-3, rtol=0)
        torch.testing.assert_close(d["model_out_raw"], f["step.model_out_raw"][k], atol=1e-3, rtol=0)
        torch.testing.assert_close(d["model_out"], f["step.model_out"][k][:1], atol=1e-3, rtol=0)
        for key in STEP_KEYS:
            torch.testing.assert_close(d[key], f[f"step.{key}"][k][:1], atol=1e-3, rtol=0, msg=f"{k} {key}")
    torch.testing.assert_close(final, f["final_sample"], atol=1e-3, rtol=0)
    torch.testing.assert_close(final, f["final_sample_full_batch"][:1], atol=1e-3, rtol=0)


def test_guided_base_one_step_teacher_forced(base):
    model, f = base
    model.set_channels_last(False)
    diffusion = GaussianDiffusion.create("squaredcos_cap_v2", 1000, "4")
    text = model.encode_text(f["tokens"], f["mask"])
    image, mask = f["inpaint_image"][:1], f["inpaint_mask"][:1]
    guided = GuidedModel(model, text, 5.0, image, mask)
    for k in range(4):
        j = 3 - k
        x = f["step.x_t"][k][:1]
        with torch.no_grad():
            out = guided(x, f["step.model_timesteps"][k][:1])
        torch.testing.assert_close(guided.last_raw, f["step.model_out_raw"][k], atol=1e-4, rtol=0)
        torch.testing.assert_close(out, f["step.model_out"][k][:1], atol=1e-4, rtol=0)
        res = diffusion.p_sample_step(out, x, j, f["step_noise"][k][:1],
                                      denoised_fn=lambda x0: x0 * (1 - mask) + image * mask)
        for key in STEP_KEYS:
            torch.testing.assert_close(res[key], f[f"step.{key}"][k][:1], atol=1e-3, rtol=0, msg=f"{k} {key}")


def test_upsampler_inputs_chain_on_the_base_result(base, upsampler):
    _, fb = base
    _, f = upsampler
    torch.testing.assert_close(f["low_res_unquantized"], fb["final_sample"], atol=0, rtol=0)
    torch.testing.assert_close(quantize_8bit(f["low_res_unquantized"]), f["low_res"], atol=0, rtol=0)
    torch.testing.assert_close(f["initial_noise"], f["initial_noise_unscaled"] * 0.997, atol=0, rtol=0)


@pytest.mark.parametrize("chained", [False, True])
def test_upsampler_sampling_free_running(base, upsampler, chained):
    """chained=True feeds our own base result (quantised) instead of the stored low_res."""
    model, f = upsampler
    low_res = f["low_res"]
    if chained:
        low_res = quantize_8bit(_run_base(base[0].set_channels_last(False), base[1], []))
    diffusion = GaussianDiffusion.create("linear", 1000, "5")
    record: list = []
    with torch.no_grad():
        text = model.encode_text(f["tokens"], f["mask"])
        final = sample_upsample_inpaint(
            model, diffusion, text, f["inpaint_image"], f["inpaint_mask"], low_res,
            initial_noise=f["initial_noise_unscaled"] * 0.997, noise=RecordedNoise(f["step_noise"]),
            callback=lambda k, d: record.append(d),
        )
    assert [int(d["model_timesteps"][0]) for d in record] == [999, 749, 500, 250, 0]
    for k, d in enumerate(record):
        torch.testing.assert_close(d["model_out"], f["step.model_out"][k], atol=1e-3, rtol=0)
        for key in ("x_t",) + STEP_KEYS:
            torch.testing.assert_close(d[key], f[f"step.{key}"][k], atol=1e-3, rtol=0, msg=f"{k} {key}")
    torch.testing.assert_close(final, f["final_sample"], atol=1e-3, rtol=0)
