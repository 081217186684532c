"""The default detector of the downstream evaluation: a linear probe on frozen Inception features.

A from-scratch CNN trained for a few hundred steps on a few hundred crops is a noisy instrument:
its test AUROC moves by ~0.1 between two seeds, which drowns the gain a generator could bring.
The probe instead

* describes every image by the 2048-d pool features of the standard FID Inception network
  (:class:`~skinlib.evaluation.features.FidHelperInceptionFeatures`, shipped offline), computed
  once per file (:func:`attach_features`, cached by file path; the standard-augmentation arm gets
  one augmented view of each real image, :func:`~skinlib.evaluation.images.standard_augment`);
* per (train share, repetition), standardises and projects the features with a PCA fitted on
  that repetition's **real train** images only (:class:`Projector`), and
* fits a weighted ridge classifier (:func:`fit_probe`, closed form: the same answer on every run
  of one machine, and hundreds of fits cost seconds) with per-example weights: classes balanced,
  and a class's synthetic images together weighing ``synthetic_share`` of that class (as the
  CNN's batches draw them).

Its one hyper-parameter, the ridge penalty, is chosen once by patient-grouped cross-validation on
the **train** patients (real only; :func:`choose_c`), never on test patients.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import ArmDataError


def attach_features(paths: Sequence[str], extractor, *, cache: dict, image_size: int = 256,
                    augment_seed: int | None = None, batch_size: int = 32, progress: bool = False,
                    desc: str = "features", log: list | None = None) -> torch.Tensor:
    """float32 [N, D] features of the images at ``paths`` (RGB, resized to ``image_size`` when
    another size), each computed once: ``cache`` maps ``path`` (or ``"aug:<seed>:" + path`` for
    the augmented view) to its feature row; ``log`` receives ``(file, what was done)`` for
    images converted or resized while loading. With ``augment_seed``, each image is first passed
    through the standard augmentation (flips, 90 degree rotations, colour jitter), seeded per
    image by ``(augment_seed, index of the path)``."""
    from tqdm.auto import tqdm

    from .images import load_images, standard_augment

    keys = [p if augment_seed is None else f"aug:{augment_seed}:{p}" for p in paths]
    todo = [i for i, k in enumerate(keys) if k not in cache]
    for start in tqdm(range(0, len(todo), batch_size), desc=desc, disable=not progress or not todo, leave=False):
        idx = todo[start:start + batch_size]
        x = load_images([Path(paths[i]) for i in idx], image_size, log=log if augment_seed is None else None)
        if augment_seed is not None:
            x = torch.cat([standard_augment(x[j:j + 1], torch.Generator().manual_seed(augment_seed * 100003 + i))
                           for j, i in enumerate(idx)])
        with torch.no_grad():
            f = extractor(x).float().cpu()
        for j, i in enumerate(idx):
            cache[keys[i]] = f[j]
    if not paths:
        return torch.empty(0, getattr(extractor, "num_features", 0))
    return torch.stack([cache[k] for k in keys])


@dataclass
class Projector:
    """Standardise then project onto the leading principal components of the fitting set:
    float [N, D] -> float64 [N, k] (k <= ``dim``). The components come from the eigenvectors of
    the N x N Gram matrix (N is a few hundred, D = 2048: far cheaper than an SVD of N x D)."""

    mean: np.ndarray
    scale: np.ndarray
    components: np.ndarray      # [k, D]

    @classmethod
    def fit(cls, feats, dim: int = 64) -> "Projector":
        x = torch.as_tensor(np.asarray(feats), dtype=torch.float64)
        mean = x.mean(0)
        scale = x.std(0) + 1e-6
        z = (x - mean) / scale
        z = z - z.mean(0)
        gram = (z @ z.T).float()                                  # float32: 3-8x faster, ample for a basis
        evals, evecs = torch.linalg.eigh(gram)                    # ascending
        evals, evecs = evals.double(), evecs.double()
        k = max(1, min(dim, len(z) - 1))
        evals, evecs = evals.flip(0)[:k], evecs.flip(1)[:, :k]
        keep = evals > evals[0] * 1e-10
        comps = (z.T @ evecs[:, keep]) / evals[keep].sqrt()        # [D, k] orthonormal right singular vectors
        return cls(mean.numpy(), scale.numpy(), comps.T.numpy())

    def __call__(self, feats) -> np.ndarray:
        return ((np.asarray(feats, dtype=np.float64) - self.mean) / self.scale) @ self.components.T


def balanced_weights(y: np.ndarray, synthetic: np.ndarray, num_classes: int, synthetic_share: float) -> np.ndarray:
    """Per-example weights [N]: every class weighs the same in total; within a class that has
    synthetic examples, those weigh ``synthetic_share`` of it together and the real ones the rest
    (a class with only real, or only synthetic, examples gives them all its weight). Mean 1."""
    y = np.asarray(y)
    synthetic = np.asarray(synthetic, dtype=bool)
    w = np.zeros(len(y))
    for c in range(num_classes):
        real_c, syn_c = (y == c) & ~synthetic, (y == c) & synthetic
        share = synthetic_share if real_c.any() and syn_c.any() else float(syn_c.any())
        if real_c.any():
            w[real_c] = (1 - share) / real_c.sum()
        if syn_c.any():
            w[syn_c] = share / syn_c.sum()
    return w * len(y) / w.sum()


@dataclass
class RidgeProbe:
    """A weighted ridge-regression classifier (targets +-1, one column per class, or one column
    for two classes): closed form, deterministic, microseconds on 32 dimensions."""

    mean: np.ndarray
    coef: np.ndarray            # [k, C'] (C' = 1 for two classes)
    offset: np.ndarray          # [C']
    num_classes: int

    def scores(self, z: np.ndarray) -> np.ndarray:
        return (np.asarray(z) - self.mean) @ self.coef + self.offset

    def proba(self, z: np.ndarray) -> np.ndarray:
        """[N, num_classes] scores mapped to (0, 1) (sigmoid / softmax of 4 x the ridge output):
        rank-preserving, 0.5 at the decision boundary, not calibrated probabilities."""
        s = 4.0 * self.scores(z)
        if self.num_classes == 2:
            p1 = 1.0 / (1.0 + np.exp(-s[:, 0]))
            return np.stack([1 - p1, p1], 1)
        e = np.exp(s - s.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)


def fit_probe(z: np.ndarray, y: np.ndarray, w: np.ndarray, lam: float, num_classes: int) -> RidgeProbe:
    """Weighted ridge fit on projected features ``z`` [N, k]: minimises
    sum_i w_i ||t_i - b - z_i B||^2 + lam * sum_i w_i * ||B||^2 (intercept not penalised)."""
    y = np.asarray(y)
    missing = sorted(set(range(num_classes)) - set(y.tolist()))
    if missing:
        raise ArmDataError(f"class(es) {missing} have no training example in this arm")
    w = np.asarray(w, dtype=np.float64)
    t = (2.0 * (y == 1) - 1.0)[:, None] if num_classes == 2 else 2.0 * np.eye(num_classes)[y] - 1.0
    mean = (w[:, None] * z).sum(0) / w.sum()
    tbar = (w[:, None] * t).sum(0) / w.sum()
    zc = z - mean
    a = zc.T @ (w[:, None] * zc) + lam * w.sum() * np.eye(z.shape[1])
    coef = np.linalg.solve(a, zc.T @ (w[:, None] * (t - tbar)))
    return RidgeProbe(mean, coef, tbar, num_classes)


def choose_c(feats: np.ndarray, y: np.ndarray, patients: Sequence[str], num_classes: int,
             grid: Sequence[float], dim: int, folds: int = 5, seed: int = 0) -> tuple[float, dict]:
    """The ridge penalty of ``grid`` with the best mean AUROC in patient-grouped ``folds``-fold
    cross-validation on these (train-patient, real) examples; ``(penalty, {penalty: mean
    AUROC})``. The projector is refitted on each fold's training part. When no fold can be
    scored (too few train patients), the middle of the grid and a ``"not chosen"`` note instead."""
    from sklearn.metrics import roc_auc_score

    ids = np.unique(np.asarray(patients))
    rng = np.random.default_rng(seed)
    fold_of = dict(zip(ids[rng.permutation(len(ids))], np.arange(len(ids)) % max(2, min(folds, len(ids)))))
    fold = np.asarray([fold_of[p] for p in patients])
    y = np.asarray(y)
    scores: dict[float, list[float]] = {c: [] for c in grid}
    for k in np.unique(fold):
        tr, va = fold != k, fold == k
        if len(set(y[va].tolist())) < num_classes or len(set(y[tr].tolist())) < num_classes:
            continue
        proj = Projector.fit(feats[tr], dim)
        ztr, zva = proj(feats[tr]), proj(feats[va])
        w = balanced_weights(y[tr], np.zeros(tr.sum(), bool), num_classes, 0.0)
        for c in grid:
            p = fit_probe(ztr, y[tr], w, c, num_classes).proba(zva)
            scores[c].append(roc_auc_score(y[va], p[:, 1]) if num_classes == 2
                             else roc_auc_score(y[va], p, multi_class="ovr"))
    means = {c: float(np.mean(s)) if s else float("nan") for c, s in scores.items()}
    finite = {c: m for c, m in means.items() if np.isfinite(m)}
    if not finite:          # e.g. a smoke run's 2 train patients: said in the result, never silent
        middle = sorted(grid)[len(grid) // 2]
        return float(middle), {"not chosen": f"no validation fold of the {len(ids)} train patients holds every class; "
                                             f"the middle of the grid ({middle:g}) was used"}
    best = max(finite, key=lambda c: (round(finite[c], 6), c))     # ties: the stronger penalty
    return float(best), means


__all__ = ["attach_features", "Projector", "balanced_weights", "RidgeProbe", "fit_probe", "choose_c"]
