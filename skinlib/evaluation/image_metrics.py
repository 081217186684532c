"""Image metrics of the patient split (:func:`image_metrics`), with cluster-bootstrap intervals.

Reference = the TEST-patient crops; every row (the "real (train patients)" baseline and each
generator) measures the same number ``N`` of its images against that reference. KID (unbiased,
the headline) and FID with N beside it, each with a 95 % cluster-bootstrap interval (see the
function).

(Part of the former ``skinlib/metrics.py``.)
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .features import extract_features, metric_labels
from .images import FolderImages, warn_sample_size


# ----------------------------------------------------------------------------------------
# image metrics on the patient split
# ----------------------------------------------------------------------------------------
REAL_TRAIN_ROW = "real (train patients)"
CONFIDENCE = 0.95


def folder_features(extractor: nn.Module, folder: FolderImages, *, cache: dict | None = None,
                    device=None, progress: bool = True) -> torch.Tensor:
    """float64 [N, D] features of a folder's images, computed once per ``(name, N, extractor
    kind)`` key of ``cache`` (pass the same dict to :func:`image_metrics` and
    :func:`skinlib.evaluation.memorisation.memorisation_check` to extract each folder once)."""
    key = (folder.name, len(folder), getattr(extractor, "kind", type(extractor).__name__))
    if cache is not None and key in cache:
        return cache[key]
    f = extract_features(extractor, folder.images, device=device, progress=progress, desc=f"features {folder.name}")
    if cache is not None:
        cache[key] = f
    return f


def cluster_ids(rows: Sequence[Mapping[str, str]]) -> np.ndarray:
    """Resampling unit of each image: its patient (``patient``, or ``source_patient`` for
    images derived from a real crop); an image without either is its own unit. int [N]."""
    keys = []
    for i, r in enumerate(rows):
        keys.append(r.get("patient") or r.get("source_patient") or f"__image{i}")
    _, inv = np.unique(np.asarray(keys, dtype=object).astype(str), return_inverse=True)
    return inv.astype(int)


def _cluster_weights(clusters: np.ndarray, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """[n_draws, N] multiplicity of each image when clusters are drawn with replacement
    (each draw takes as many clusters as there are)."""
    k = int(clusters.max()) + 1
    counts = np.stack([np.bincount(rng.integers(0, k, size=k), minlength=k) for _ in range(n_draws)])
    return counts[:, clusters].astype(np.float64)


def _poly_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """KID's cubic polynomial kernel k(x, y) = (x.y / d + 1)^3 (Binkowski et al. 2018), float64."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def kid_unbiased(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None,
                 v: torch.Tensor | None = None) -> torch.Tensor:
    """Unbiased MMD^2 with the cubic kernel (KID) between feature sets x [n, D] and y [m, D],
    on all images (no subsets). Optional multiplicities ``w`` [B, n] / ``v`` [B, m] (bootstrap
    draws) give one value per draw; pairs of an image with itself (or its copies) are left out
    of the within-set means, so a resample stays (nearly) unbiased. Returns float64 [B] ([1]
    without weights)."""
    x, y = x.double(), y.double()
    w = torch.ones(1, len(x), dtype=torch.float64) if w is None else torch.as_tensor(w, dtype=torch.float64)
    v = torch.ones(1, len(y), dtype=torch.float64) if v is None else torch.as_tensor(v, dtype=torch.float64)
    kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)

    def within(k, u):
        total = ((u @ k) * u).sum(1) - (u ** 2 * k.diagonal()).sum(1)
        pairs = u.sum(1) ** 2 - (u ** 2).sum(1)
        return total / pairs

    cross = ((w @ kxy) * v).sum(1) / (w.sum(1) * v.sum(1))
    return within(kxx, w) + within(kyy, v) - 2.0 * cross


def fid_from_features(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None = None,
                      v: torch.Tensor | None = None) -> torch.Tensor:
    """Fréchet distance between Gaussians fitted to x [n, D] and y [m, D] (covariances with
    n - 1), computed exactly in the n x m sample space: tr sqrt(S1 S2) is the nuclear norm of
    A = Xc Yc^T (Xc, Yc: centred rows scaled by sqrt(w / (sum w - 1))), so no D x D sqrtm is
    needed; A, the traces and the means of every draw come from the Gram matrices XX^T, YY^T,
    XY^T computed once. Optional multiplicities ``w`` [B, n] / ``v`` [B, m] give one value per
    bootstrap draw. Returns float64 [B], clamped at 0 (negative values are rounding)."""
    x, y = x.double(), y.double()
    w = torch.ones(1, len(x), dtype=torch.float64) if w is None else torch.as_tensor(w, dtype=torch.float64)
    v = torch.ones(1, len(y), dtype=torch.float64) if v is None else torch.as_tensor(v, dtype=torch.float64)
    gxx, gyy, gxy = x @ x.T, y @ y.T, x @ y.T
    sw, sv = w.sum(1), v.sum(1)                                     # [B]
    wg = w @ gxy / sw[:, None]                                      # [B, m]  mu_x . y_j
    gv = v @ gxy.T / sv[:, None]                                    # [B, n]  x_i . mu_y
    mx_my = (wg * v).sum(1) / sv                                    # mu_x . mu_y
    mx2 = ((w @ gxx) * w).sum(1) / sw ** 2
    my2 = ((v @ gyy) * v).sum(1) / sv ** 2
    tr_x = ((w * gxx.diagonal()).sum(1) - sw * mx2) / (sw - 1)
    tr_y = ((v * gyy.diagonal()).sum(1) - sv * my2) / (sv - 1)
    centred = gxy[None] - wg[:, None, :] - gv[:, :, None] + mx_my[:, None, None]      # [B, n, m]
    a = centred * w.sqrt()[:, :, None] * v.sqrt()[:, None, :] / ((sw - 1) * (sv - 1)).sqrt()[:, None, None]
    small = a if a.shape[1] <= a.shape[2] else a.transpose(1, 2)
    # singular values^2 of A (NumPy's batched LAPACK call: ~3x faster than torch's on CPU here)
    eig = torch.from_numpy(np.linalg.eigvalsh((small @ small.transpose(1, 2)).numpy()))
    nuclear = eig.clamp_min(0).sqrt().sum(1)
    return (mx2 + my2 - 2 * mx_my + tr_x + tr_y - 2 * nuclear).clamp_min(0.0)


def _interval(point: float, draws: np.ndarray, *, recentre: bool = False) -> dict[str, float]:
    """Percentile interval of bootstrap ``draws``; ``recentre``: the draws shifted so their mean is
    ``point`` first and kept >= 0 (for FID, whose draws carry a resampling bias, see
    :func:`image_metrics`)."""
    draws = np.asarray(draws, dtype=np.float64)
    if recentre:
        draws = np.maximum(draws - np.nanmean(draws) + point, 0.0)
    lo, hi = np.nanpercentile(draws, [50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE)])
    return {"mean": float(point), "low": float(lo), "high": float(hi)}


def image_metrics(train_real: FolderImages, test_real: FolderImages, generators: Mapping[str, FolderImages], *,
                  extractor: nn.Module, n: int = 1000, seeds: Sequence[int] = (0,), n_boot: int = 200,
                  feature_cache: dict | None = None, device=None, progress: bool = True) -> list[dict]:
    """KID (headline) and FID of the real train-patient crops and of every generator against
    the TEST-patient crops, all rows with the same sample size N.

    Protocol: reference = every image of ``test_real``; ``N = min(n, |train_real|, |each
    generator|)``; per seed each row takes a seeded random subset of N of its images (the
    train-patient row is the value a generator indistinguishable from new real patients would
    reach at this N; FID is strongly biased by N, so only equal-N values compare). Point
    estimate: mean over seeds of the value on the full reference and the N-subset.

    Interval (95 %, percentile): **cluster bootstrap**, ``n_boot`` draws in all (split over
    the seeds). Each draw resamples the reference's test PATIENTS with replacement (crops of
    one patient overlap and are correlated, so they are drawn together) and each row's clusters
    (its patients for real crops, ``source_patient`` for images derived from a crop, else
    single images) with replacement; every row of one draw uses the same reference draw, so
    ``KID - real`` (a row minus the train-patient row) is a paired difference. KID is the
    unbiased MMD^2 on all pairs (:func:`kid_unbiased`; copies of one image are not paired with
    each other, so resamples stay unbiased). FID has no unbiased form: a resample holds
    fewer distinct images, which raises its FID (~+9 % on 300 vs 200 images in 2048-d), a
    bias of the resampling, not of the data; FID's draws are therefore re-centred on the point
    estimate before taking percentiles (interval = sampling spread around FID at this N).

    Returns one dict per row (train-patient row first): ``name``, ``N``, ``n_images``,
    ``n_reference``, ``n_reference_patients``, ``features`` (extractor name), ``interval``
    (method), and ``{"mean", "low", "high"}`` under the metric labels of :func:`metric_labels`
    ("KID" / "FID" for Inception, "KD (... not KID)" / "FD (... not FID)" otherwise) and under
    ``"<KID label> - real"`` (paired difference to the train-patient row; absent in that row).
    """
    labels = metric_labels(extractor)
    kd, fd = labels["kd"], labels["fd"]
    ref = folder_features(extractor, test_real, cache=feature_cache, device=device, progress=progress)
    rows_in = {REAL_TRAIN_ROW: train_real, **dict(generators)}
    feats = {name: folder_features(extractor, g, cache=feature_cache, device=device, progress=progress)
             for name, g in rows_in.items()}
    n_eval = min([int(n)] + [len(f) for f in feats.values()])
    if n_eval < 2 or len(ref) < 2:
        raise ValueError(f"image metrics need at least 2 images per set: N = {n_eval} (smallest of n={n} and the "
                         f"folders {', '.join(f'{k}: {len(f)}' for k, f in feats.items())}), reference "
                         f"{test_real.name}: {len(ref)} test crops.")
    what = "FID/KID" if getattr(extractor, "is_inception", False) else f"{fd} / {kd}"
    for name in rows_in:
        warn_sample_size(n_eval, name, what=what)
    ref_clusters = cluster_ids(test_real.rows)
    seeds = list(seeds)
    per_seed_draws = max(1, -(-int(n_boot) // len(seeds)))
    point: dict[str, dict[str, list]] = {name: {"kd": [], "fd": []} for name in rows_in}
    draws: dict[str, dict[str, list]] = {name: {"kd": [], "fd": []} for name in rows_in}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        w_ref = torch.from_numpy(_cluster_weights(ref_clusters, per_seed_draws, rng))
        for name, g in rows_in.items():
            pick = np.sort(rng.choice(len(feats[name]), size=n_eval, replace=False))
            sub = feats[name][pick]
            clusters = cluster_ids([g.rows[i] for i in pick]) if g.rows else np.arange(n_eval)
            w_sub = torch.from_numpy(_cluster_weights(clusters, per_seed_draws, rng))
            point[name]["kd"].append(float(kid_unbiased(ref, sub)[0]))
            point[name]["fd"].append(float(fid_from_features(ref, sub)[0]))
            draws[name]["kd"].append(kid_unbiased(ref, sub, w_ref, w_sub).numpy())
            draws[name]["fd"].append(fid_from_features(ref, sub, w_ref, w_sub).numpy())
    method = (f"95 % percentile cluster bootstrap ({per_seed_draws * len(seeds)} draws over {len(seeds)} seed(s); "
              f"test patients and each row's patients/images resampled; KID unbiased; FID draws re-centred on "
              f"the point estimate)")
    base_kd = np.concatenate(draws[REAL_TRAIN_ROW]["kd"])
    out = []
    for name, g in rows_in.items():
        kd_draws, fd_draws = np.concatenate(draws[name]["kd"]), np.concatenate(draws[name]["fd"])
        row = {"name": name, "N": n_eval, "n_images": len(g), "n_reference": len(ref),
               "n_reference_patients": int(ref_clusters.max()) + 1, "features": extractor.name,
               kd: _interval(np.mean(point[name]["kd"]), kd_draws),
               fd: _interval(np.mean(point[name]["fd"]), fd_draws, recentre=True),
               "interval": method}
        if name != REAL_TRAIN_ROW:
            row[f"{kd} - real"] = _interval(np.mean(point[name]["kd"]) - np.mean(point[REAL_TRAIN_ROW]["kd"]),
                                            kd_draws - base_kd)
        out.append(row)
    return out


def flat_image_metrics(rows: Sequence[Mapping]) -> list[dict]:
    """:func:`image_metrics` rows as flat table rows: ``<metric>`` (the mean), ``<metric> low``,
    ``<metric> high`` columns (for :func:`markdown_table` with ``ci=``) and ``N`` beside them."""
    flat = []
    for r in rows:
        f = {}
        for k, v in r.items():
            if isinstance(v, Mapping) and {"mean", "low", "high"} <= set(v):
                f[k], f[f"{k} low"], f[f"{k} high"] = v["mean"], v["low"], v["high"]
            else:
                f[k] = v
        flat.append(f)
    return flat
