"""Training objective of GLIDE's models: improved DDPM's hybrid loss with a learned variance.

The network predicts the noise ε (channels 0:3) and a variance interpolation value v (3:6);
the reverse-step variance is ``log σ² = frac·log β_t + (1 − frac)·log β̃_t`` with
``frac = (v + 1)/2`` and β̃_t the clipped posterior variance (spec 6.4), exactly as at sampling.

    L_hybrid = L_simple + λ·L_vlb,  λ = 0.001

* ``L_simple``: mean squared error between the drawn ε and the predicted ε.
* ``L_vlb``: the variational bound Σ_t L_t, estimated from the one uniformly drawn t of each
  example as ``T·L_t`` (so ``λ·T = 1`` for T = 1000 steps: the per-example vlb term enters with
  weight 1, as in improved DDPM's code). ``L_t`` (in bits per dimension) is the KL between the
  true posterior q(x_{t−1} | x_t, x_0) and the model's Gaussian for t > 0, and the negative
  log-likelihood of x_0 under the discretised Gaussian decoder (8-bit bins of width 2/255) at
  t = 0. The model mean inside ``L_vlb`` is computed from a **detached** ε, so this term trains
  only the variance (v); the mean is trained by ``L_simple`` alone.

Both terms are per-pixel means. ``region`` (optional, float [B, 1, H, W] in {0, 1}) restricts
them to the pixels where it is 1: for inpainting, the pixels to synthesise (the keep-mask's
holes). The known pixels reach the network unnoised through its ``inpaint_image`` input and
their x0 is re-imposed at every sampling step, so their ε is never used; fitting it anyway
(``region`` None: the whole image, as OpenAI trained the released models) spends much of a
small model's training on computing ``(x_t − sqrt(ᾱ)·x0) / sqrt(1 − ᾱ)``, which is hardest at
small t. The variance output is then untrained outside the region: ancestral sampling would
use it there, DDIM does not (the pipeline refuses ancestral steps for such a model).

Shapes: images float [B, 3, H, W] in [-1, 1]; t int64 [B] (original timesteps 0..T−1).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from .diffusion import GaussianDiffusion

VLB_WEIGHT = 0.001  # λ of the hybrid loss


def _extract(arr: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """arr[t] (float64 table) as float32 [B, 1, 1, 1] on like's device."""
    return torch.from_numpy(arr).to(device=t.device)[t].float().view(-1, *([1] * (like.dim() - 1)))


def _pixel_mean(x: torch.Tensor, region: Optional[torch.Tensor]) -> torch.Tensor:
    """Per-example mean [B] of x [B, C, H, W] over all elements, or over the pixels where
    region [B, 1, H, W] is 1 (every channel of them; 0 for an example without such pixels)."""
    if region is None:
        return x.flatten(1).mean(1)
    return (x * region).flatten(1).sum(1) / (region.flatten(1).sum(1) * x.shape[1]).clamp(min=1)


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """Elementwise KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor,
                                        log_scale: torch.Tensor) -> torch.Tensor:
    """Elementwise log-probability (nats) of 8-bit data ``x`` in [-1, 1] under N(mean, e^(2 log_scale))
    integrated over the pixel's bin [x − 1/255, x + 1/255]; the end bins extend to ±∞."""
    inv_std = torch.exp(-log_scale)
    cdf_plus = torch.special.ndtr(inv_std * (x - mean + 1.0 / 255))
    cdf_min = torch.special.ndtr(inv_std * (x - mean - 1.0 / 255))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


class HybridLoss:
    """The hybrid loss for one 1000-step training diffusion ("squaredcos_cap_v2" for the base
    model, "linear" for the upsampler). ``q_sample`` noises clean images; ``__call__`` scores a
    model output."""

    def __init__(self, noise_schedule: str, steps: int = 1000, vlb_weight: float = VLB_WEIGHT):
        self.diffusion = GaussianDiffusion.create(noise_schedule, steps, "")
        d = self.diffusion
        self.num_timesteps = d.num_timesteps
        self.vlb_weight = float(vlb_weight)
        self.sqrt_alphas_cumprod = np.sqrt(d.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - d.alphas_cumprod)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·noise."""
        return (_extract(self.sqrt_alphas_cumprod, t, x0) * x0
                + _extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise)

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean and clipped log-variance of q(x_{t−1} | x_t, x0)."""
        d = self.diffusion
        mean = _extract(d.posterior_mean_coef1, t, x_t) * x0 + _extract(d.posterior_mean_coef2, t, x_t) * x_t
        return mean, _extract(d.posterior_log_variance_clipped, t, x_t).expand_as(x_t)

    def p_mean_logvar(self, model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Model mean (from ε, no clipping) and learned-range log-variance (spec 6.4)."""
        d = self.diffusion
        eps, v = model_out[:, :3], model_out[:, 3:]
        frac = (v + 1) / 2
        logvar = frac * _extract(d.log_betas, t, x_t) + (1 - frac) * _extract(d.posterior_log_variance_clipped, t, x_t)
        x0 = _extract(d.sqrt_recip_alphas_cumprod, t, x_t) * x_t - _extract(d.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        mean = _extract(d.posterior_mean_coef1, t, x_t) * x0 + _extract(d.posterior_mean_coef2, t, x_t) * x_t
        return mean, logvar

    def vlb_terms(self, model_out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor,
                  t: torch.Tensor, region: Optional[torch.Tensor] = None) -> torch.Tensor:
        """L_t per example [B] in bits/dim: KL(q ‖ p) for t > 0, decoder NLL at t = 0, averaged
        over the pixels of ``region`` (None: all)."""
        true_mean, true_logvar = self.q_posterior(x0, x_t, t)
        mean, logvar = self.p_mean_logvar(model_out, x_t, t)
        kl = _pixel_mean(normal_kl(true_mean, true_logvar, mean, logvar), region) / math.log(2.0)
        nll = -_pixel_mean(discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar), region) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def __call__(self, model_out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                 noise: torch.Tensor, region: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """Per-batch means: ``loss`` (hybrid), ``mse`` (L_simple), ``vlb`` (L_t, bits/dim).
        model_out [B, 6, H, W]; x0, x_t, noise [B, 3, H, W]; t [B]; region [B, 1, H, W] in
        {0, 1} (None: every pixel; an example without a pixel of it scores 0)."""
        model_out = model_out.float()
        if region is not None:
            if tuple(region.shape) != (x0.shape[0], 1, *x0.shape[2:]):
                raise ValueError(f"region must be [B, 1, H, W] = {(x0.shape[0], 1, *x0.shape[2:])}, "
                                 f"got {tuple(region.shape)}")
            region = region.to(device=model_out.device, dtype=torch.float32)
        mse = _pixel_mean((noise - model_out[:, :3]) ** 2, region)
        frozen = torch.cat([model_out[:, :3].detach(), model_out[:, 3:]], dim=1)  # stop the mean's gradient
        vlb = self.vlb_terms(frozen, x0.float(), x_t.float(), t, region)
        loss = mse + self.vlb_weight * self.num_timesteps * vlb
        return {"loss": loss.mean(), "mse": mse.mean(), "vlb": vlb.mean()}
