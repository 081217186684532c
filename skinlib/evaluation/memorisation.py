"""Memorisation check: does a generator reproduce its training crops?

For every generated image we find its nearest TRAIN-patient crop twice: in feature space (the
same extractor as the image metrics, Euclidean distance between feature vectors) and in pixel
space (RGB downsampled to ``pixel_size`` px, antialiased bilinear, values in [0, 1]; distance =
root-mean-square difference, 0 = identical, 1 = black vs white).

What counts as a near-copy is calibrated on real data, per space: the distance from each
TEST-patient crop to its nearest train crop is what a genuinely new image (a new patient, same
camera, same skin disease) achieves. A generated image is a **near-copy** when it is closer to a
train crop than the ``percentile``-th percentile (default 1) of those real test-to-train
distances, in feature space OR in pixel space (``copy_score = min(d_feat / t_feat,
d_pix / t_pix) <= 1``). By construction about ``2 * percentile`` % of real test crops are flagged
(each space flags ~percentile %); a generator that copies is flagged far above that, and exact
copies (distance 0) always are.

Why test-to-train and not train-to-train: crops are overlapping windows (stride 32 px in a
256 px window) of the same photos, so a train crop's nearest other train crop is usually the
window next to it, 32 px away: train-to-train distances measure the crop overlap, not what a
novel image looks like, and would set the threshold far too low. Test patients never share a
photo with train patients.

GLIDE variants keep their source crop's pixels outside the edited squares, so they sit close to
that (train) crop by design: their near-copy share says how much of the source survives, which
is the method, not a training failure of a generator; read it so.

Test leaks: the same rule against the TEST crops gives ``test_copy_fraction``, the share of a
generator's images that are near-copies of a test-patient crop. A generator trained or
conditioned on test patients shows it (a planted leak of test-crop copies gives ~1); it must be
~0, and the evaluation should refuse a generator where it is not.

Output of :func:`memorisation_check` per generator (and for the real test crops, the
calibration row, whose ``test_copy_fraction`` is None): ``near_copy_fraction``,
``median_nn_distance_feature``, ``median_nn_distance_pixel``, ``n``, ``test_copy_fraction``,
plus the per-space fractions. :func:`closest_pairs_figure`
shows the closest pairs (generated | nearest train crop | distances).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .image_metrics import folder_features
from .images import FolderImages

REAL_TEST_ROW = "real (test patients)"


def pixel_vectors(images: torch.Tensor, size: int = 64) -> torch.Tensor:
    """uint8 [N, 3, S, S] -> float32 [N, 3 * size * size] in [0, 1] (antialiased bilinear resize)."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"expected uint8 images [N, 3, H, W], got {images.dtype} {tuple(images.shape)}")
    x = images.float() / 255.0
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0, 1).reshape(len(x), -1)


def nearest_neighbours(query: torch.Tensor, bank: torch.Tensor, *, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean nearest neighbour of each query row [n, D] in ``bank`` [m, D]: (distance [n]
    float64, index [n] int64). Computed in float64, in chunks of ``chunk`` queries."""
    if len(bank) == 0:
        raise ValueError("nearest_neighbours: the bank (train crops) is empty")
    bank = bank.double()
    dists, idx = [], []
    for i in range(0, len(query), chunk):
        d = torch.cdist(query[i:i + chunk].double(), bank)
        v, j = d.min(dim=1)
        dists.append(v)
        idx.append(j)
    return torch.cat(dists), torch.cat(idx)


@dataclass
class MemorisationReport:
    """Result of :func:`memorisation_check`.

    ``rows``: name -> {near_copy_fraction, near_copy_fraction_feature, near_copy_fraction_pixel,
    median_nn_distance_feature, median_nn_distance_pixel, n} (the generators and
    :data:`REAL_TEST_ROW`); ``thresholds``: feature / pixel thresholds and how they were set;
    ``pairs``: name -> per-image arrays (feature / pixel NN distance and train index, copy score).
    """

    rows: dict[str, dict]
    thresholds: dict
    pairs: dict[str, dict[str, np.ndarray]] = field(repr=False)

    def as_dict(self) -> dict:
        """JSON-ready: ``{"thresholds": ..., "per_generator": rows}``."""
        return {"thresholds": dict(self.thresholds), "per_generator": {k: dict(v) for k, v in self.rows.items()}}


def _row(d_feat: torch.Tensor, d_pix: torch.Tensor, t_feat: float, t_pix: float) -> tuple[dict, np.ndarray]:
    score = torch.minimum(d_feat / t_feat if t_feat > 0 else torch.full_like(d_feat, np.inf),
                          d_pix / t_pix if t_pix > 0 else torch.full_like(d_pix, np.inf))
    # a distance of exactly 0 is a copy whatever the threshold (also when the threshold is 0)
    near = (score <= 1.0) | (d_feat == 0) | (d_pix == 0)
    row = {"near_copy_fraction": float(near.double().mean()),
           "near_copy_fraction_feature": float(((d_feat <= t_feat) | (d_feat == 0)).double().mean()),
           "near_copy_fraction_pixel": float(((d_pix <= t_pix) | (d_pix == 0)).double().mean()),
           "median_nn_distance_feature": float(d_feat.median()),
           "median_nn_distance_pixel": float(d_pix.median()),
           "n": int(len(d_feat))}
    return row, score.numpy()


def memorisation_check(train: FolderImages, test: FolderImages, generators: Mapping[str, FolderImages], *,
                       extractor: nn.Module, percentile: float = 1.0, pixel_size: int = 64,
                       feature_cache: dict | None = None, device=None, progress: bool = True) -> MemorisationReport:
    """Nearest-train-crop distances and near-copy share of every generator (see the module
    docstring for the rule and why it is calibrated on test-to-train distances).

    ``train`` / ``test``: the real crops of the train / test patients (``load_folder_images(...,
    split=...)``); ``generators``: name -> its images (any size: pixel vectors are compared at
    ``pixel_size``). ``percentile`` (0-100): the share of real test crops that defines each
    threshold. ``feature_cache``: the dict given to :func:`skinlib.evaluation.metrics.image_metrics`, so
    features are extracted once. Returns a :class:`MemorisationReport`.
    """
    if not 0 < percentile < 50:
        raise ValueError(f"percentile must be in (0, 50), got {percentile}")
    if len(test) < 2:
        raise ValueError(f"memorisation check: {test.name} has {len(test)} test crop(s); the near-copy threshold "
                         f"needs the test-to-train distances of at least 2 (better 100+) test crops.")
    f_train = folder_features(extractor, train, cache=feature_cache, device=device, progress=progress)
    p_train = pixel_vectors(train.images, pixel_size)
    f_test = folder_features(extractor, test, cache=feature_cache, device=device, progress=progress)
    p_test = pixel_vectors(test.images, pixel_size)

    def distances(g: FolderImages, f_bank=f_train, p_bank=p_train):
        f = folder_features(extractor, g, cache=feature_cache, device=device, progress=progress)
        d_feat, i_feat = nearest_neighbours(f, f_bank)
        d_pix, i_pix = nearest_neighbours(pixel_vectors(g.images, pixel_size), p_bank)
        d_pix = d_pix / np.sqrt(p_bank.shape[1])           # Euclidean -> root-mean-square difference
        return d_feat, i_feat, d_pix, i_pix

    ref = distances(test)
    t_feat = float(np.percentile(ref[0].numpy(), percentile))
    t_pix = float(np.percentile(ref[2].numpy(), percentile))
    thresholds = {"feature": t_feat, "pixel": t_pix, "percentile": float(percentile), "pixel_size": pixel_size,
                  "n_train": len(train), "n_test": len(test), "features": getattr(extractor, "name", ""),
                  "rule": (f"near-copy: nearest-train-crop distance below the {percentile:g}th percentile of real "
                           f"test-to-train nearest distances, in feature OR pixel space (RMS at {pixel_size} px)")}
    rows, pairs = {}, {}
    for name, g in {REAL_TEST_ROW: test, **dict(generators)}.items():
        d_feat, i_feat, d_pix, i_pix = ref if name == REAL_TEST_ROW else distances(g)
        rows[name], score = _row(d_feat, d_pix, t_feat, t_pix)
        if name == REAL_TEST_ROW:
            rows[name]["test_copy_fraction"] = None           # every test crop is its own copy
        else:                                                 # a leak: near-copies of TEST crops
            leak = distances(g, f_test, p_test)
            rows[name]["test_copy_fraction"] = _row(leak[0], leak[2], t_feat, t_pix)[0]["near_copy_fraction"]
        pairs[name] = {"d_feature": d_feat.numpy(), "train_index_feature": i_feat.numpy(),
                       "d_pixel": d_pix.numpy(), "train_index_pixel": i_pix.numpy(), "copy_score": score}
    return MemorisationReport(rows, thresholds, pairs)


def closest_pairs_figure(report: MemorisationReport, train: FolderImages, generators: Mapping[str, FolderImages],
                         *, k: int = 4, title: str = ""):
    """For each generator, its ``k`` images with the lowest copy score beside their nearest train
    crop (in the space that gave the lower score), titled with both distances and whether the
    pair counts as a near-copy. Returns the matplotlib figure (2k columns, one row per generator)."""
    import matplotlib.pyplot as plt

    names = [n for n in generators if n in report.pairs]
    if not names:
        raise ValueError("closest_pairs_figure: none of the generators is in the report")
    fig, axes = plt.subplots(len(names), 2 * k, figsize=(1.7 * 2 * k, 2.0 * len(names) + 0.5), squeeze=False)
    t_feat, t_pix = report.thresholds["feature"], report.thresholds["pixel"]
    for r, name in enumerate(names):
        p = report.pairs[name]
        order = np.argsort(p["copy_score"], kind="stable")[:k]
        for c in range(k):
            ax_g, ax_t = axes[r][2 * c], axes[r][2 * c + 1]
            ax_g.axis("off")
            ax_t.axis("off")
            if c >= len(order):
                continue
            i = order[c]
            by_pixel = (p["d_pixel"][i] / t_pix if t_pix > 0 else np.inf) < (p["d_feature"][i] / t_feat if t_feat > 0 else np.inf)
            j = p["train_index_pixel"][i] if by_pixel else p["train_index_feature"][i]
            ax_g.imshow(generators[name].images[i].permute(1, 2, 0).numpy())
            ax_t.imshow(train.images[j].permute(1, 2, 0).numpy())
            copy = "COPY" if p["copy_score"][i] <= 1 or p["d_feature"][i] == 0 else "ok"
            ax_g.set_title(f"{name} #{i}\n{copy}", fontsize=7)
            ax_t.set_title(f"train #{j}\nfeat {p['d_feature'][i]:.3g} pix {p['d_pixel'][i]:.3g}", fontsize=7)
    fig.suptitle(title or (f"Closest generated / train pairs (near-copy thresholds: feature {t_feat:.3g}, "
                           f"pixel {t_pix:.3g})"), fontsize=9)
    fig.tight_layout()
    return fig
