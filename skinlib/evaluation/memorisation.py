"""Memorisation check: does a generator reproduce its training crops?

For every generated image we find its nearest TRAIN-patient crop twice: in feature space (the
same extractor as the image metrics, Euclidean distance between feature vectors) and in pixel
space (RGB downsampled to ``pixel_size`` px, antialiased bilinear, values in [0, 1]; distance =
root-mean-square difference, 0 = identical, 1 = black vs white).

What counts as a near-copy is calibrated on real data: the distance from each TEST-patient crop
to its nearest train crop is what a genuinely new image (a new patient, same camera, same skin
disease) achieves. A generated image is a **near-copy** when its feature distance or its
pixel distance is at most the k-th smallest of those reference distances in that space, with k
the largest rank at which the two spaces *together* flag at most ``percentile`` % (default
1 %) of the real test crops (:func:`calibrate`; the old rule took each space's percentile and
so flagged about twice the nominal share); exact copies (distance 0) always are. Fresh patients (the demo's oracle) should then be flagged at about the
nominal rate, which the evaluation reports as the calibration check; a generator that copies is
flagged far above it.

Why test-to-train and not train-to-train: crops are overlapping windows (stride 32 px in a
256 px window) of the same photos, so a train crop's nearest other train crop is usually the
window next to it, 32 px away: train-to-train distances measure the crop overlap, not what a
novel image looks like, and would set the threshold far too low. Test patients never share a
photo with train patients.

GLIDE variants keep their source crop's pixels outside the edited squares, so they sit close to
that (train) crop by design: their near-copy share says how much of the source survives, which
is the method, not a training failure of a generator; read it so.

Test leaks: the same kind of rule against EVERY test-patient crop (ill-skin crops, healthy
windows and the low-contrast bucket: ``test_extra``) gives ``test_copy_fraction``, the share of a
generator's images that are near-copies of a test-patient crop; its reference is how close the
real train crops (never copies of test crops) come to their nearest test-patient crop. A generator trained or
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


def _row(d_feat: torch.Tensor, d_pix: torch.Tensor, cal: dict) -> tuple[dict, np.ndarray]:
    """Near-copy shares of one set: near-copy when ``d_feat <= cal["feature"]`` or ``d_pix <=
    cal["pixel"]`` (or a distance is exactly 0). Returns the row and the copy score
    ``min(d_feat / t_feat, d_pix / t_pix)`` (<= 1: near-copy)."""
    t_feat, t_pix = cal["feature"], cal["pixel"]
    score = torch.minimum(d_feat / t_feat if t_feat > 0 else torch.full_like(d_feat, np.inf),
                          d_pix / t_pix if t_pix > 0 else torch.full_like(d_pix, np.inf))
    near = (score <= 1.0) | (d_feat == 0) | (d_pix == 0)
    row = {"near_copy_fraction": float(near.double().mean()),
           "near_copy_fraction_feature": float(((d_feat <= t_feat) | (d_feat == 0)).double().mean()),
           "near_copy_fraction_pixel": float(((d_pix <= t_pix) | (d_pix == 0)).double().mean()),
           "median_nn_distance_feature": float(d_feat.median()),
           "median_nn_distance_pixel": float(d_pix.median()),
           "n": int(len(d_feat))}
    return row, np.where(near.numpy(), np.minimum(score.numpy(), 1.0), score.numpy())


def calibrate(ref_feature: np.ndarray, ref_pixel: np.ndarray, nominal: float) -> dict:
    """The per-space thresholds: the k-th smallest reference distance in each space, with k the
    largest rank at which "feature OR pixel distance at most its threshold" flags at most
    ``nominal`` % of the reference images themselves (both spaces together, not each). With
    fewer than 100 / nominal reference images no k >= 1 qualifies; k = 1 then (the closest
    reference image of each space is flagged), and the realised share is reported as
    ``reference_flagged``."""
    f = np.sort(np.asarray(ref_feature, np.float64))
    p = np.sort(np.asarray(ref_pixel, np.float64))
    rf, rp = np.asarray(ref_feature, np.float64), np.asarray(ref_pixel, np.float64)
    n = len(f)

    def share(k):
        return float(((rf <= f[k - 1]) | (rp <= p[k - 1])).mean())

    k = 1
    while k < n and share(k + 1) <= nominal / 100 + 1e-12:
        k += 1
    return {"k": k, "feature": float(f[k - 1]), "pixel": float(p[k - 1]), "reference_flagged": share(k)}


def memorisation_check(train: FolderImages, test: FolderImages, generators: Mapping[str, FolderImages], *,
                       extractor: nn.Module, percentile: float = 1.0, pixel_size: int = 64,
                       feature_cache: dict | None = None, device=None, progress: bool = True,
                       test_extra: Mapping[str, FolderImages] | None = None) -> MemorisationReport:
    """Nearest-train-crop distances and near-copy share of every generator (see the module
    docstring for the rule and why it is calibrated on test-to-train distances).

    ``train`` / ``test``: the real crops of the train / test patients (``load_folder_images(...,
    split=...)``); ``generators``: name -> its images (any size: pixel vectors are compared at
    ``pixel_size``). ``percentile`` (0-100): the share of real test crops that defines each
    threshold (both spaces together). ``test_extra``: the test patients' other crops (healthy
    windows, low-contrast bucket), added to the bank of the test-leak check. ``feature_cache``: the dict given to :func:`skinlib.evaluation.metrics.image_metrics`, so
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
    cal = calibrate(ref[0].numpy(), ref[2].numpy(), percentile)
    thresholds = {"feature": cal["feature"], "pixel": cal["pixel"], "percentile": float(percentile),
                  "rank": cal["k"], "reference_flagged": cal["reference_flagged"], "pixel_size": pixel_size,
                  "n_train": len(train), "n_test": len(test),
                  "n_test_bank": len(test) + sum(len(b) for b in (test_extra or {}).values()),
                  "features": getattr(extractor, "name", ""),
                  "rule": (f"near-copy: nearest-train-crop distance at most the {cal['k']}-th smallest real "
                           f"test-to-train nearest distance, in feature OR pixel space (RMS at {pixel_size} px): the "
                           f"rank at which the two spaces together flag at most {percentile:g} % of the real test crops")}
    f_bank_test, p_bank_test = f_test, p_test
    for extra in (test_extra or {}).values():          # leak check: every test-patient crop, healthy ones too
        f_bank_test = torch.cat([f_bank_test, folder_features(extractor, extra, cache=feature_cache, device=device,
                                                                progress=progress)])
        p_bank_test = torch.cat([p_bank_test, pixel_vectors(extra.images, pixel_size)])
    # the leak rule's own reference: how close real TRAIN crops (certainly no copies of test crops)
    # come to the nearest test-patient crop of any bucket
    leak_ref = distances(train, f_bank_test, p_bank_test)
    cal_leak = calibrate(leak_ref[0].numpy(), leak_ref[2].numpy(), percentile)
    thresholds["leak"] = {"feature": cal_leak["feature"], "pixel": cal_leak["pixel"], "rank": cal_leak["k"],
                          "reference_flagged": cal_leak["reference_flagged"],
                          "rule": (f"near-copy of a test-patient crop: nearest distance to the {len(f_bank_test)} "
                                   f"test-patient crops (all buckets) at most the {cal_leak['k']}-th smallest such "
                                   f"distance of the real train crops, feature OR pixel")}
    rows, pairs = {}, {}
    for name, g in {REAL_TEST_ROW: test, **dict(generators)}.items():
        d_feat, i_feat, d_pix, i_pix = ref if name == REAL_TEST_ROW else distances(g)
        rows[name], score = _row(d_feat, d_pix, cal)
        if name == REAL_TEST_ROW:
            rows[name]["test_copy_fraction"] = None           # every test crop is its own copy
        else:                                                 # a leak: near-copies of TEST crops
            leak = distances(g, f_bank_test, p_bank_test)
            rows[name]["test_copy_fraction"] = _row(leak[0], leak[2], cal_leak)[0]["near_copy_fraction"]
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


def calibration_figure(report: MemorisationReport, *, title: str = ""):
    """How the near-copy thresholds were set: per space (features, pixels), the empirical CDF of
    the nearest-train-crop distances of the real test crops (the reference), of fresh patients
    (the oracle, where present) and of each generator, with the threshold that flags the nominal
    share of the reference. A set whose curve rises left of the line holds near-copies."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    t = report.thresholds
    for ax, space, key in ((axes[0], "feature", "d_feature"), (axes[1], "pixel", "d_pixel")):
        for name, p in report.pairs.items():
            d = np.sort(p[key])
            if not len(d):
                continue
            flagged = report.rows[name]["near_copy_fraction"]
            style = dict(color="black", lw=2.0) if name == REAL_TEST_ROW else dict(lw=1.2)
            ax.step(d, np.arange(1, len(d) + 1) / len(d), where="post",
                    label=f"{name} (n={len(d)}, near-copies {flagged:.1%})", **style)
        ax.axvline(t[space], color="red", ls="--", lw=1, label=f"threshold {t[space]:.3g}")
        ax.set_xscale("symlog", linthresh=max(t[space], 1e-6) / 10)
        ax.set_xlabel(f"distance to the nearest train crop ({space}{' RMS' if space == 'pixel' else ''})")
        ax.set_ylabel("share of images")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=6, loc="lower right")
    fig.suptitle(title or (f"Memorisation check calibration: the two spaces together flag {t['percentile']:g} % "
                           f"of real test crops (here {t.get('reference_flagged', float('nan')):.1%})"), fontsize=9)
    fig.tight_layout()
    return fig
