"""Diversity of one image set: mean pairwise MS-SSIM between random pairs (near 1 = mode collapse).

(Part of the former ``skinlib/metrics.py``.)
"""
from __future__ import annotations


import numpy as np
import torch


# ----------------------------------------------------------------------------------------
# diversity and inpainting change (pixel metrics)
# ----------------------------------------------------------------------------------------
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim_scales(size: int, kernel_size: int = 11) -> int:
    """Number of MS-SSIM scales (<= 5) that torchmetrics accepts at this image side."""
    for n in range(5, 0, -1):
        if size >= 2 ** n and size > (kernel_size - 1) * max(1, n - 1) ** 2:
            return n
    raise ValueError(f"images of side {size} are too small for MS-SSIM (need > {kernel_size - 1})")


def ms_ssim_diversity(images: torch.Tensor, *, n_pairs: int = 100, seed: int = 0,
                      batch_size: int = 32) -> dict[str, float]:
    """Mean pairwise MS-SSIM between random pairs of distinct images of one set.

    ``images``: uint8 [N, 3, S, S]. High values (near 1) mean near-identical images: mode
    collapse. Uses the standard 5 scales when S allows (S > 160), fewer (renormalised weights)
    for smaller images; ``scales`` says how many. Returns mean, std over pairs, n_pairs, scales.
    """
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as msssim

    n = len(images)
    if n < 2:
        raise ValueError(f"diversity needs at least 2 images, got {n}")
    scales = ms_ssim_scales(images.shape[-1])
    betas = tuple(b / sum(MS_SSIM_BETAS[:scales]) for b in MS_SSIM_BETAS[:scales])
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=n_pairs)
    j = (i + rng.integers(1, n, size=n_pairs)) % n              # j != i
    vals = []
    for s in range(0, n_pairs, batch_size):
        a = images[i[s:s + batch_size]].float() / 255.0
        b = images[j[s:s + batch_size]].float() / 255.0
        vals.append(msssim(a, b, data_range=1.0, betas=betas, reduction="none").reshape(-1).double())
    v = torch.cat(vals)
    return {"mean": float(v.mean()), "std": float(v.std(unbiased=False)), "n_pairs": int(n_pairs),
            "scales": scales}
