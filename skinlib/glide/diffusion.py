"""GLIDE's Gaussian diffusion at inference (spec section 6): schedules, respacing, p_sample loop.

Schedules and derived arrays are float64 NumPy; each per-step coefficient is cast to float32
before use, as in the original, so fixture arithmetic is reproduced to the last bit.

Noise: the loop asks a *noise source* ``noise(x) -> Tensor shaped like x`` for one draw per
step (after the model call, also at the last step where it is multiplied by 0). Use
:class:`RecordedNoise` to replay stored draws and :class:`PerItemNoise` for one seeded
generator per batch item (an item's result then does not depend on the rest of the batch).
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseFn = Callable[[torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------------ schedules
def betas_for_schedule(name: str, steps: int = 1000) -> np.ndarray:
    """float64 betas of ``"squaredcos_cap_v2"`` (cosine, capped at 0.999) or ``"linear"``."""
    if name == "linear":
        scale = 1000 / steps
        return np.linspace(scale * 0.0001, scale * 0.02, steps, dtype=np.float64)
    if name == "squaredcos_cap_v2":
        def alpha_bar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array(
            [min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)],
            dtype=np.float64,
        )
    raise ValueError(f"unknown noise schedule {name!r} (expected 'squaredcos_cap_v2' or 'linear')")


def space_timesteps(num_timesteps: int, spec: str) -> set[int]:
    """Original timesteps kept by a respacing string: ``"100"``, ``"10,10,3,2,2"``,
    ``"fast27"`` or ``"ddimN"``. Raises ValueError when impossible."""
    spec = str(spec)
    if spec == "fast27":
        steps = space_timesteps(num_timesteps, "10,10,3,2,2")
        steps.remove(num_timesteps - 1)
        steps.add(num_timesteps - 3)
        return steps
    if spec.startswith("ddim"):
        n = int(spec[len("ddim"):])
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == n:
                return set(range(0, num_timesteps, stride))
        raise ValueError(
            f"cannot respace {num_timesteps} steps as {spec!r}: no integer stride gives exactly "
            f"{n} steps"
        )
    counts = [int(x) for x in spec.split(",")]
    size_per, extra = divmod(num_timesteps, len(counts))
    start, kept = 0, []
    for i, n in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < n:
            raise ValueError(f"cannot divide section of {size} steps into {n}")
        stride = 1 if n <= 1 else (size - 1) / (n - 1)
        cur = 0.0
        for _ in range(n):
            kept.append(start + round(cur))
            cur += stride
        start += size
    return set(kept)


class GaussianDiffusion:
    """A (respaced) diffusion: float64 arrays indexed by the respaced step j = 0..N-1, and
    ``timestep_map[j]``, the original timestep the network is called with."""

    def __init__(self, betas: np.ndarray, timestep_map: Sequence[int]):
        betas = np.asarray(betas, dtype=np.float64)
        self.betas = betas
        self.timestep_map = np.asarray(timestep_map, dtype=np.int64)
        self.num_timesteps = len(betas)
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas, axis=0)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # entry 0 of the posterior variance is 0: replace it by entry 1 (a 1-step schedule,
        # whose only step adds no noise, uses beta_0 there to stay finite)
        first = self.posterior_variance[1] if len(betas) > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(first, self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        )
        self.log_betas = np.log(betas)

    @classmethod
    def create(cls, noise_schedule: str, steps: int = 1000, respacing: str = "",
               start: Optional[int] = None) -> "GaussianDiffusion":
        """Diffusion for a schedule, respaced by ``respacing`` ("" = all ``steps``, which,
        as in the original, still goes through respacing: betas become 1 - abar_i/abar_{i-1}).
        ``start`` (an original timestep < steps): keep only timesteps 0..start and respace
        those, for sampling that starts from a noised image at ``start`` instead of pure noise
        (SDEdit); None: the whole schedule."""
        base = betas_for_schedule(noise_schedule, steps)
        if start is not None:
            if not 0 < int(start) < steps:
                raise ValueError(f"start must be an original timestep in 1..{steps - 1}, got {start}")
            base = base[:int(start) + 1]
        kept = space_timesteps(len(base), respacing or str(len(base)))
        alphas_cumprod = np.cumprod(1.0 - base)
        last, new_betas, tmap = 1.0, [], []
        for i, ac in enumerate(alphas_cumprod):
            if i in kept:
                new_betas.append(1 - ac / last)
                last = ac
                tmap.append(i)
        return cls(np.array(new_betas, dtype=np.float64), tmap)

    # ------------------------------------------------------------------ one step
    @staticmethod
    def _coef(arr: np.ndarray, j: int, like: torch.Tensor) -> float:
        # rounded to float32 as the original does; a Python scalar multiplies a float32 tensor
        # in float32, and needs no host->device copy
        return float(np.float32(arr[j]))

    def p_mean_variance(self, model_out: torch.Tensor, x_t: torch.Tensor, j: int,
                        denoised_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                        clip_denoised: bool = True) -> dict[str, torch.Tensor]:
        """From model output [B, 6, H, W] (eps | v) at respaced step j: ``mean``,
        ``log_variance`` and ``pred_xstart`` (after denoised_fn, then clipping to [-1, 1])."""
        eps, v = model_out[:, :3].float(), model_out[:, 3:].float()
        x_t = x_t.float()
        frac = (v + 1) / 2
        max_log = self._coef(self.log_betas, j, x_t)
        min_log = self._coef(self.posterior_log_variance_clipped, j, x_t)
        log_variance = frac * max_log + (1 - frac) * min_log
        pred_xstart = (self._coef(self.sqrt_recip_alphas_cumprod, j, x_t) * x_t
                       - self._coef(self.sqrt_recipm1_alphas_cumprod, j, x_t) * eps)
        if denoised_fn is not None:
            pred_xstart = denoised_fn(pred_xstart)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean = (self._coef(self.posterior_mean_coef1, j, x_t) * pred_xstart
                + self._coef(self.posterior_mean_coef2, j, x_t) * x_t)
        return {"mean": mean, "log_variance": log_variance, "pred_xstart": pred_xstart}

    def p_sample_step(self, model_out: torch.Tensor, x_t: torch.Tensor, j: int, noise: torch.Tensor,
                      denoised_fn=None, clip_denoised: bool = True) -> dict[str, torch.Tensor]:
        """p_mean_variance plus ``sample`` = mean + [j != 0] * exp(log_variance / 2) * noise."""
        out = self.p_mean_variance(model_out, x_t, j, denoised_fn, clip_denoised)
        nonzero = 1.0 if j != 0 else 0.0
        out["sample"] = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
        return out

    def ddim_step(self, model_out: torch.Tensor, x_t: torch.Tensor, j: int, noise: torch.Tensor,
                  eta: float = 0.0, denoised_fn=None, clip_denoised: bool = True) -> dict[str, torch.Tensor]:
        """One DDIM step (Song et al. 2021, eq. 12) from the same x0 prediction as
        :meth:`p_sample_step`: ``sample`` = sqrt(abar_prev)·x0 + sqrt(1 - abar_prev - s²)·eps
        + [j != 0]·s·noise with eps re-derived from the (denoised, clipped) x0 and
        s = eta·sqrt((1 - abar_prev) / (1 - abar))·sqrt(1 - abar / abar_prev). eta = 0:
        deterministic, adds no fresh noise, so few steps leave no noise behind."""
        out = self.p_mean_variance(model_out, x_t, j, denoised_fn, clip_denoised)
        x_t, x0 = x_t.float(), out["pred_xstart"]
        eps = ((self._coef(self.sqrt_recip_alphas_cumprod, j, x_t) * x_t - x0)
               / self._coef(self.sqrt_recipm1_alphas_cumprod, j, x_t))
        abar, abar_prev = float(self.alphas_cumprod[j]), float(self.alphas_cumprod_prev[j])
        sigma = eta * math.sqrt((1 - abar_prev) / (1 - abar)) * math.sqrt(1 - abar / abar_prev)
        mean = math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - sigma ** 2, 0.0)) * eps
        out["mean"] = mean
        # the variance this step really uses (the model's learned one plays no part in DDIM)
        out["log_variance"] = torch.full_like(mean, 2 * math.log(sigma) if sigma > 0 else float("-inf"))
        out["sample"] = mean + (sigma if j != 0 else 0.0) * noise
        return out

    def p_sample_loop(self, model_fn: ModelFn, initial_noise: torch.Tensor, noise: NoiseFn, *,
                      denoised_fn=None, clip_denoised: bool = True, progress: bool = False,
                      callback: Optional[Callable[[int, dict], None]] = None,
                      desc: str = "sampling", ddim_eta: Optional[float] = None) -> torch.Tensor:
        """Run j = N-1 .. 0 from ``initial_noise``. ``model_fn(x, t_original) -> [B, 6, H, W]``
        where ``t_original`` is int64 [B] = timestep_map[j]. After each model call one draw
        ``noise(x)`` is taken. ``callback(k, step_dict)`` sees x_t, t, model_timesteps,
        model_out, mean, log_variance, pred_xstart, sample. ``ddim_eta``: None (default, the
        original): ancestral steps (:meth:`p_sample_step`); a number: DDIM steps
        (:meth:`ddim_step`) with that eta. Returns the final sample."""
        from tqdm.auto import tqdm

        x = initial_noise.float()
        steps: Iterable[int] = range(self.num_timesteps - 1, -1, -1)
        if progress:
            steps = tqdm(list(steps), desc=desc, leave=False)
        for k, j in enumerate(steps):
            t = torch.full((x.shape[0],), int(self.timestep_map[j]), dtype=torch.long, device=x.device)
            model_out = model_fn(x, t)
            z = noise(x).to(device=x.device, dtype=x.dtype)
            if ddim_eta is None:
                out = self.p_sample_step(model_out, x, j, z, denoised_fn, clip_denoised)
            else:
                out = self.ddim_step(model_out, x, j, z, ddim_eta, denoised_fn, clip_denoised)
            if callback is not None:
                callback(k, dict(out, x_t=x, t=j, model_timesteps=t, model_out=model_out))
            x = out["sample"]
        return x


# ------------------------------------------------------------------------ noise sources
class RecordedNoise:
    """Replays stored draws in order: ``RecordedNoise(step_noise)`` with step_noise [N, B, ...]."""

    def __init__(self, draws: Sequence[torch.Tensor] | torch.Tensor):
        self._draws = list(draws)
        self._next = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._next >= len(self._draws):
            raise RuntimeError(f"recorded noise exhausted after {len(self._draws)} draws")
        z = self._draws[self._next]
        if tuple(z.shape) != tuple(x.shape):
            raise ValueError(f"recorded draw {self._next} has shape {tuple(z.shape)}, expected {tuple(x.shape)}")
        self._next += 1
        return z


class PerItemNoise:
    """Standard normal draws where row i of every draw comes from ``generators[i]`` (CPU
    generators, so the same seeds give the same noise on every device)."""

    def __init__(self, generators: Sequence[torch.Generator]):
        self.generators = list(generators)

    @classmethod
    def from_seeds(cls, seeds: Sequence[int]) -> "PerItemNoise":
        return cls([torch.Generator("cpu").manual_seed(int(s)) for s in seeds])

    def draw(self, shape_per_item: Sequence[int], device=None) -> torch.Tensor:
        rows = [torch.randn(tuple(shape_per_item), generator=g) for g in self.generators]
        return torch.stack(rows).to(device) if device is not None else torch.stack(rows)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(self.generators):
            raise ValueError(f"batch of {x.shape[0]} rows but {len(self.generators)} generators")
        return self.draw(x.shape[1:], x.device)
