"""Fidelity and coverage of generated features: improved precision/recall and density/coverage.

k-nearest-neighbour manifolds in feature space (Kynkäänniemi et al. 2019; Naeem et al. 2020).
(Part of the former ``skinlib/metrics.py``.)
"""
from __future__ import annotations


import torch


def _kth_neighbour_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(x, x)
    return d.kthvalue(k + 1, dim=1).values    # +1: the point itself is at distance 0


def precision_recall(real: torch.Tensor, fake: torch.Tensor, *, k: int = 3) -> dict[str, float]:
    """Improved precision/recall (Kynkäänniemi et al. 2019) with k-NN manifolds.

    precision: fraction of fake samples inside the real manifold (union of k-NN balls);
    recall: fraction of real samples inside the fake manifold. Both in [0, 1].
    """
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} images per set, got "
                         f"{len(real)} and {len(fake)}")
    real, fake = real.double(), fake.double()
    r_real, r_fake = _kth_neighbour_radius(real, k), _kth_neighbour_radius(fake, k)
    d = torch.cdist(fake, real)                               # [n_fake, n_real]
    precision = (d <= r_real[None, :]).any(dim=1).double().mean()
    recall = (d.t() <= r_fake[None, :]).any(dim=1).double().mean()
    return {"precision": float(precision), "recall": float(recall)}


def density_coverage(real: torch.Tensor, fake: torch.Tensor, *, k: int = 5) -> dict[str, float]:
    """Density and coverage (Naeem et al. 2020). density: mean number of real k-NN balls
    containing a fake sample, divided by k (1 ~ matches, can exceed 1); coverage: fraction of
    real samples whose k-NN ball contains at least one fake sample, in [0, 1]."""
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"density/coverage with k={k} needs more than {k} images per set, got "
                         f"{len(real)} and {len(fake)}")
    real, fake = real.double(), fake.double()
    r_real = _kth_neighbour_radius(real, k)
    inside = torch.cdist(fake, real) <= r_real[None, :]          # [n_fake, n_real]
    density = inside.double().sum() / (k * len(fake))
    coverage = inside.any(dim=0).double().mean()
    return {"density": float(density), "coverage": float(coverage)}
