"""Fréchet and kernel (KID) distances between two feature sets, by torchmetrics' formulas.

They are FID/KID only when the features are Inception's (see :mod:`.features`).
(Part of the former ``skinlib/metrics.py``.)
"""
from __future__ import annotations

import warnings

import torch
from torch import nn


# ----------------------------------------------------------------------------------------
# distances on features
# ----------------------------------------------------------------------------------------
class _Precomputed(nn.Module):
    """Identity "feature extractor" so torchmetrics' FID/KID run on features we computed once."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, x):
        return x


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, D] (torchmetrics FID
    formula, float64). It is FID only when the features are Inception's."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"Fréchet distance needs at least 2 images per set, got {len(real)} and {len(fake)}")
    m = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]))
    m.update(real.double(), real=True)
    m.update(fake.double(), real=False)
    return float(m.compute())


def kernel_distance(real: torch.Tensor, fake: torch.Tensor, *, subsets: int = 100,
                    subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID (torchmetrics: cubic polynomial kernel MMD over random subsets) on feature sets.
    ``subset_size`` is capped at the smaller set. Returns (mean, std over subsets)."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {len(real)} and {len(fake)}")
    with warnings.catch_warnings():   # "will save all extracted features in buffer": intended here
        warnings.simplefilter("ignore", UserWarning)
        m = KernelInceptionDistance(feature=_Precomputed(real.shape[1]), subsets=subsets, subset_size=size)
    m.update(real.double(), real=True)
    m.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = m.compute()
    return float(mean), float(std)
