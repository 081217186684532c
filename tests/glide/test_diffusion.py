"""GLIDE diffusion: schedules, respacing and the one-step math against the fixtures."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from skinlib.glide.diffusion import (
    GaussianDiffusion, PerItemNoise, RecordedNoise, betas_for_schedule, space_timesteps,
)
from _shared import PARITY


SCHEDULES = {"cosine": "squaredcos_cap_v2", "linear": "linear"}
ARRAYS = ["betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_recip_alphas_cumprod",
          "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
          "posterior_mean_coef1", "posterior_mean_coef2"]


@pytest.fixture(scope="module")
def schedules():
    from safetensors.numpy import load_file

    return load_file(str(PARITY / "diffusion.safetensors"))


@pytest.mark.parametrize("short", sorted(SCHEDULES))
def test_base_betas(schedules, short):
    np.testing.assert_allclose(betas_for_schedule(SCHEDULES[short]), schedules[f"{short}.base_betas_1000"],
                               rtol=1e-12, atol=0)


@pytest.mark.parametrize("short", sorted(SCHEDULES))
@pytest.mark.parametrize("respacing", ["1000", "100", "fast27", "4", "5"])
def test_respaced_schedules_and_derived_arrays(schedules, short, respacing):
    diffusion = GaussianDiffusion.create(SCHEDULES[short], 1000, respacing)
    prefix = f"{short}.{respacing}."
    np.testing.assert_array_equal(diffusion.timestep_map, schedules[prefix + "timestep_map"])
    for name in ARRAYS:
        np.testing.assert_allclose(getattr(diffusion, name), schedules[prefix + name], rtol=1e-12, atol=0,
                                   err_msg=prefix + name)


def test_empty_respacing_means_all_steps():
    a, b = GaussianDiffusion.create("linear", 1000, ""), GaussianDiffusion.create("linear", 1000, "1000")
    np.testing.assert_array_equal(a.betas, b.betas)
    assert a.num_timesteps == 1000


def test_respacing_lists_and_errors():
    data = json.loads((PARITY / "respacing.json").read_text())
    assert len(data["timesteps"]) == 16
    for spec, expected in data["timesteps"].items():
        assert sorted(space_timesteps(1000, spec)) == expected, spec
    for spec, message in data["errors"].items():
        with pytest.raises(ValueError) as info:
            space_timesteps(1000, spec)
        if spec != "ddim999":  # our ddim message names the requested count instead of T
            assert str(info.value) == message.split("ValueError: ", 1)[1]
        else:
            assert "integer stride" in str(info.value)


def test_respacing_examples_from_spec():
    assert space_timesteps(1000, "1") == {0}
    assert sorted(space_timesteps(1000, "5")) == [0, 250, 500, 749, 999]
    assert max(space_timesteps(1000, "ddim25")) == 960
    assert sorted(space_timesteps(1000, "fast27"))[-3:] == [799, 800, 997]


def _one_step_check(path: str, rows: int, schedule: str, respacing: str):
    from safetensors.torch import load_file

    f = load_file(str(PARITY / path))
    diffusion = GaussianDiffusion.create(schedule, 1000, respacing)
    image, mask = f["inpaint_image"][:rows], f["inpaint_mask"][:rows]
    steps = f["step.x_t"].shape[0]
    for k in range(steps):
        j = int(f["step.t"][k][0])
        assert int(diffusion.timestep_map[j]) == int(f["step.model_timesteps"][k][0])
        out = diffusion.p_sample_step(
            f["step.model_out"][k][:rows], f["step.x_t"][k][:rows], j, f["step_noise"][k][:rows],
            denoised_fn=lambda x0: x0 * (1 - mask) + image * mask, clip_denoised=True,
        )
        for key in ("mean", "log_variance", "pred_xstart", "sample"):
            # spec tolerance is 1e-4; float32-cast coefficients make it bit-exact here (1e-6
            # leaves room for a last-bit difference of exp/log between CPU kernels)
            torch.testing.assert_close(out[key], f[f"step.{key}"][k][:rows], atol=1e-6, rtol=0,
                                       msg=f"step {k} {key}")


def test_diffusion_math_only_base():
    # all 2 rows: row 1 (unconditional chain) uses the same guided eps and its own v
    _one_step_check("tiny_base_inpaint.sampling.safetensors", 2, "squaredcos_cap_v2", "4")


def test_diffusion_math_only_upsampler():
    _one_step_check("tiny_upsample_inpaint.sampling.safetensors", 1, "linear", "5")


def test_recorded_noise_replays_in_order_and_checks_shape():
    draws = torch.randn(3, 2, 3, 4, 4)
    noise = RecordedNoise(draws)
    x = torch.zeros(2, 3, 4, 4)
    assert torch.equal(noise(x), draws[0]) and torch.equal(noise(x), draws[1])
    with pytest.raises(ValueError, match="shape"):
        noise(torch.zeros(1, 3, 4, 4))
    noise(x)
    with pytest.raises(RuntimeError, match="exhausted"):
        noise(x)


def test_per_item_noise_depends_only_on_the_item_seed():
    both = PerItemNoise.from_seeds([7, 8])
    alone = PerItemNoise.from_seeds([8])
    x2, x1 = torch.zeros(2, 3, 5, 5), torch.zeros(1, 3, 5, 5)
    for _ in range(3):
        assert torch.equal(both(x2)[1], alone(x1)[0])
    assert not torch.equal(PerItemNoise.from_seeds([7])(x1), PerItemNoise.from_seeds([8])(x1))


def test_sampling_loop_draws_one_noise_per_step_and_ends_on_x0():
    diffusion = GaussianDiffusion.create("linear", 1000, "3")
    calls = []

    def model_fn(x, t):
        calls.append(int(t[0]))
        return torch.zeros(x.shape[0], 6, *x.shape[2:])

    draws = torch.randn(3, 1, 3, 4, 4)
    seen = []
    out = diffusion.p_sample_loop(model_fn, torch.randn(1, 3, 4, 4), RecordedNoise(draws),
                                  callback=lambda k, d: seen.append(d))
    assert calls == [999, 500, 0]  # original timesteps, descending
    assert len(seen) == 3
    torch.testing.assert_close(out, seen[-1]["pred_xstart"], atol=0, rtol=0)


def test_one_step_schedule_is_finite():
    diffusion = GaussianDiffusion.create("squaredcos_cap_v2", 1000, "1")
    assert list(diffusion.timestep_map) == [0]
    out = diffusion.p_sample_loop(lambda x, t: torch.zeros(x.shape[0], 6, 4, 4), torch.randn(1, 3, 4, 4),
                                  lambda x: torch.randn_like(x))
    assert torch.isfinite(out).all()


def test_truncated_schedule_starts_at_the_given_timestep():
    full = GaussianDiffusion.create("linear", 1000, "")
    part = GaussianDiffusion.create("linear", 1000, "5", start=200)
    assert part.num_timesteps == 5 and int(part.timestep_map[-1]) == 200 and int(part.timestep_map[0]) == 0
    # the respaced chain still ends at the original's noise level of its last kept timestep
    assert part.alphas_cumprod[-1] == pytest.approx(full.alphas_cumprod[200], rel=1e-12)
    with pytest.raises(ValueError, match="start"):
        GaussianDiffusion.create("linear", 1000, "5", start=1000)


def test_ddim_eta_one_equals_ancestral_step_with_the_small_posterior_variance():
    """DDIM with eta = 1 has the DDPM posterior's mean and variance (Song et al. 2021): with the
    model's variance output at its minimum (v = -1: the clipped posterior variance), one DDIM step
    and one ancestral step give the same sample; eta = 0 adds no noise."""
    d = GaussianDiffusion.create("squaredcos_cap_v2", 1000, "10")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=g)
    eps = torch.randn(2, 3, 4, 4, generator=g) * 0.5
    out = torch.cat([eps, -torch.ones_like(eps)], 1)
    z = torch.randn(2, 3, 4, 4, generator=g)
    for j in (2, 5, 9):
        a = d.p_sample_step(out, x, j, z, clip_denoised=False)["sample"]
        b = d.ddim_step(out, x, j, z, eta=1.0, clip_denoised=False)["sample"]
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
        c0 = d.ddim_step(out, x, j, z, eta=0.0, clip_denoised=False)["sample"]
        c1 = d.ddim_step(out, x, j, torch.zeros_like(z), eta=0.0, clip_denoised=False)["sample"]
        assert torch.equal(c0, c1)
