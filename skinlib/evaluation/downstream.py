"""Downstream utility: does adding synthetic images make a small skin-illness classifier better?

Protocol (notebook 05, ``python -m skinlib.evaluate``):

* **Task** ``"rash-vs-healthy"`` (the default; the study's data has one disease): is a 256 px crop
  ill (the crops of notebook 01, ill-skin coverage > 0.1) or healthy skin (the ``healthy/``
  bucket: windows of the same photos with coverage <= 0.01)? Both classes come from the same
  patients, so patient identity predicts nothing. ``"disease"`` (an option when the data has
  several diseases with enough patients): which disease does an ill-skin crop show?
* **Patients**: the test set is every crop of the *test* patients of notebook 01's split (fixed:
  the generators never saw them); classifiers train on *train* patients only.
* **Arms**, all with the same budget (``steps`` Adam steps of ``batch_size``, class-balanced
  batches, the same seed and train patients within a repetition): ``real only``;
  ``real + standard aug`` (flips, 90 degree rotations, colour jitter: the control a generator must
  beat); ``real + <generator>`` (each batch element of a class is drawn from the generator's
  images of that class with probability ``synthetic_share``, otherwise from the real ones);
  ``real + oracle`` (new patients rendered by the demo renderer itself, the positive control;
  demo data only); ``real + copies`` (duplicates of the train crops, the negative control);
  ``real + oversampling`` (the same copies drawn so every Fitzpatrick group weighs the same,
  :func:`balanced_draw`: the non-generative rival of balanced synthetic augmentation); and
  ``synthetic only: <generator>`` (the ill class only from the generator, healthy crops real).
* **Out of distribution**: the *ood* patients of notebook 01's split (a held-out site) are scored
  by every classifier too and summarised the same way (``DownstreamResult.ood``).
* **Data efficiency**: every arm with ``fractions`` (default 5 %, 25 %, 100 %) of the train patients
  (a seeded subset per repetition; generator images derived from a real crop are used only
  when that crop's patient is in the subset).
* **Repetitions** ``repetitions`` x (seed, train subset); metrics (AUROC, balanced accuracy,
  sensitivity at ``specificity``) with intervals and paired gains vs ``real only`` from the
  two-level bootstrap of :mod:`skinlib.evaluation.intervals`; per class, and per Fitzpatrick group where
  skin types are known.

Images are uint8 [N, 3, s, s] tensors in memory (RGB 0..255), converted to float in [-1, 1]
per batch.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.crops import HEALTHY_DIR
from ..data.dataset import MANIFEST, list_crop_rows
from ..errors import ArmDataError
from ..data.metadata import SKIN_GROUPS, skin_types
from ..data.photos import natural_key
from .images import load_images, standard_augment, to_float
from ..data.split import require_test_patients
from .intervals import METRICS, BootstrapPlan, class_recall_draws, estimate, metric_draws
from ..io import check_manifest_paths, load_json, read_csv

TASKS = ("auto", "rash-vs-healthy", "disease")
REAL_ONLY = "real only"
AUGMENT = "real + standard aug"
COPIES = "real + copies"
ORACLE = "real + oracle"
ORACLE_ILL = "real + oracle (ill only)"
OVERSAMPLE = "real + oversampling"   # copies of real ill crops, drawn so every Fitzpatrick group weighs the same
DETECTORS = ("features", "cnn")


@dataclass
class DownstreamConfig:
    """Settings shared by every arm (the "same budget")."""

    task: str = "auto"
    detector: str = "features"        # "features": linear probe on frozen Inception features; "cnn": SmallCNN from scratch
    image_size: int = 48              # CNN input side, px
    feature_image_size: int = 256     # images are loaded at this side for the Inception features
    probe_dim: int = 32               # probe: PCA components (fitted on each repetition's real train images)
    probe_c_grid: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0)  # probe: ridge penalties (chosen on train patients)
    max_pairs_per_patient: int | None = 8   # at most this many crops of each class per patient (seeded; None: all)
    steps: int = 150                  # Adam steps per classifier (every arm)
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    width: int = 8                    # CNN width (channels of the first block)
    synthetic_share: float = 0.5      # P(a batch element of a class comes from the synthetic images of that class)
    fractions: tuple[float, ...] = (0.05, 0.25, 1.0)  # shares of the train patients (data-efficiency curve)
    repetitions: int = 100            # (train subset, synthetic draw) repetitions per arm and fraction
    seed: int = 0
    specificity: float = 0.9          # sensitivity is reported at this specificity
    n_boot: int = 1000                # bootstrap draws
    max_synthetic: int | None = 300   # at most this many images per generator (seeded subset)
    synthetic_only: bool = True       # also train on synthetic ill-skin images only (100 % fraction)
    pair_per_photo: bool = True       # rash-vs-healthy: keep as many ill as healthy crops of each photo
    augmented_generator_arms: bool = True   # also "real + standard aug + <generator>" for every generator
    primary_fraction: float | None = None   # the primary endpoint's share (declared before the run; None: the smallest)
    device: str | None = None

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.detector not in DETECTORS:
            raise ValueError(f"detector must be one of {DETECTORS}, got {self.detector!r}")
        if self.max_pairs_per_patient is not None and self.max_pairs_per_patient < 1:
            raise ValueError(f"max_pairs_per_patient must be >= 1 or None, got {self.max_pairs_per_patient}")
        if self.primary_fraction is not None and self.primary_fraction not in self.fractions:
            raise ValueError(f"primary_fraction {self.primary_fraction} is not one of fractions {self.fractions}")
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise ValueError(f"fractions must be in (0, 1], got {self.fractions}")
        if self.repetitions < 2:
            raise ValueError(f"repetitions must be >= 2 for an interval, got {self.repetitions}")
        if not 0 <= self.synthetic_share <= 1:
            raise ValueError(f"synthetic_share must be in [0, 1], got {self.synthetic_share}")


@dataclass
class Examples:
    """Classifier examples: ``x`` uint8 [N, 3, s, s]; ``y`` int64 [N]; per example the
    ``patient`` (for a generated image: its source crop's patient, "" when none), the ``file``
    it was read from and the Fitzpatrick ``group`` ("" when unknown)."""

    x: torch.Tensor
    y: torch.Tensor
    patient: list[str]
    file: list[str]
    group: list[str] = field(default_factory=list)
    feats: torch.Tensor | None = None        # float32 [N, D] frozen features (detector "features")
    feats_aug: torch.Tensor | None = None    # float32 [N, D] features of one standard-augmented view

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx) -> "Examples":
        idx = [int(i) for i in idx]
        t = torch.as_tensor(idx, dtype=torch.long)
        pick = (lambda a: None if a is None else a[t])
        return Examples(self.x[t], self.y[t], [self.patient[i] for i in idx], [self.file[i] for i in idx],
                        [self.group[i] for i in idx] if self.group else [], pick(self.feats), pick(self.feats_aug))

    @staticmethod
    def concat(parts: Sequence["Examples"]) -> "Examples":
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ValueError("no examples")
        cat = (lambda name: torch.cat([getattr(p, name) for p in parts])
               if all(getattr(p, name) is not None for p in parts) else None)
        return Examples(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]),
                        [a for p in parts for a in p.patient], [a for p in parts for a in p.file],
                        [a for p in parts for a in (p.group or [""] * len(p))], cat("feats"), cat("feats_aug"))


# ----------------------------------------------------------------------------------------
# real and generated examples
# ----------------------------------------------------------------------------------------
def choose_task(real_rows: Sequence[Mapping[str, str]], task: str = "auto") -> str:
    """``"auto"`` -> ``"rash-vs-healthy"`` (the study's setting) ; an explicit task is checked:
    ``"disease"`` needs two or more diseases."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if task == "disease":
        diseases = {r.get("disease", "") for r in real_rows}
        if len(diseases) < 2:
            raise ValueError(f"task 'disease' needs crops of two or more diseases, found {sorted(diseases)}; "
                             f"use task='rash-vs-healthy'.")
        return task
    return "rash-vs-healthy"


def class_names(task: str, real_rows: Sequence[Mapping[str, str]]) -> list[str]:
    if task == "disease":
        return sorted({r["disease"] for r in real_rows})
    return ["healthy", "ill"]


@dataclass
class RealData:
    """All real examples of a crops folder with their side of the patient split."""

    examples: Examples
    split: np.ndarray          # [N] "train" / "test" / "ood" (a held-out site's patients)
    classes: list[str]
    task: str

    def side(self, name: str) -> Examples:
        return self.examples.subset(np.flatnonzero(self.split == name))


def pair_per_photo(items: Sequence[tuple], seed: int = 0) -> list[tuple]:
    """Keep, for every photo (manifest column ``source``), as many ill as healthy crops: a seeded
    choice of ``min(n_ill, n_healthy)`` of each (``items``: ``(folder, row, label)``, label 1 =
    ill). A photo, and so a patient, then carries no information about the label: without this
    a patient with extensive rash (many ill crops, few healthy windows) teaches the classifier
    that patient's skin means "ill"."""
    by_photo: dict[str, list[list[tuple]]] = {}
    for it in items:
        by_photo.setdefault(it[1].get("source", ""), [[], []])[int(it[2] == 1)].append(it)
    out = []
    for k, (source, (healthy, ill)) in enumerate(sorted(by_photo.items())):
        n = min(len(healthy), len(ill))
        rng = np.random.default_rng([seed, k])
        for group in (ill, healthy):
            pick = sorted(rng.choice(len(group), n, replace=False).tolist()) if n < len(group) else range(len(group))
            out += [group[i] for i in pick]
    return out


def cap_per_patient(items: Sequence[tuple], cap: int | None, seed: int = 0) -> list[tuple]:
    """At most ``cap`` items of each label per patient (``items``: ``(folder, row, label)``; a
    seeded choice, order kept), so that every patient weighs about the same in training and in the
    test metrics, whatever the extent of its rash. ``None``: all."""
    if cap is None:
        return list(items)
    groups: dict[tuple[str, int], list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault((it[1].get("patient", ""), int(it[2])), []).append(i)
    keep: set[int] = set()
    for k, (key, idx) in enumerate(sorted(groups.items())):
        if len(idx) > cap:
            idx = np.random.default_rng([seed, 7, k]).choice(idx, cap, replace=False).tolist()
        keep.update(idx)
    return [it for i, it in enumerate(items) if i in keep]


def real_examples(real_dir, cfg: DownstreamConfig, *, progress: bool = False, log: list | None = None) -> RealData:
    """The real crops of notebook 01 (and, for rash-vs-healthy, its ``healthy/`` bucket) as
    classifier examples; every row must carry a ``split`` (clear error otherwise)."""
    real_dir = Path(real_dir)
    rows = list_crop_rows(real_dir)
    if "split" not in rows[0]:
        list_crop_rows(real_dir, split="train")     # raises the clear "no split column" error
    task = choose_task(rows, cfg.task)
    classes = class_names(task, rows)
    if task == "disease":                       # a train-only disease has no test patient to test on
        require_test_patients(real_dir, rows, classes)
    files, labels, patients, splits = [], [], [], []
    chosen = [(real_dir, r, classes.index(r["disease"]) if task == "disease" else 1) for r in rows]
    if task == "rash-vs-healthy":
        healthy_manifest = real_dir / HEALTHY_DIR / MANIFEST
        if not healthy_manifest.is_file():
            raise FileNotFoundError(
                f"{healthy_manifest} not found: the rash-vs-healthy task needs the healthy-skin windows that "
                f"notebook 01 writes beside the crops. Fix: re-run notebook 01 (healthy_max_coverage = 0.01).")
        healthy = read_csv(healthy_manifest)
        check_manifest_paths(real_dir / HEALTHY_DIR, healthy)     # files of the healthy folder only
        if healthy and "split" not in healthy[0]:
            raise ValueError(f"{healthy_manifest} has no 'split' column: re-run notebook 01.")
        chosen += [(real_dir / HEALTHY_DIR, r, 0) for r in healthy]
        if cfg.pair_per_photo:
            chosen = pair_per_photo(chosen, cfg.seed)
    chosen = cap_per_patient(chosen, cfg.max_pairs_per_patient, cfg.seed)
    for folder, r, label in chosen:
        files.append(folder / r["image"])
        labels.append(label)
        patients.append(r["patient"])
        splits.append(r["split"])
    types = skin_types(real_dir)
    x = load_images(files, cfg.image_size, desc="real crops", progress=progress, log=log)
    ex = Examples(x, torch.as_tensor(labels, dtype=torch.long), patients, [str(f) for f in files],
                  [SKIN_GROUPS.get(types.get(p, 0), "") for p in patients])
    return RealData(ex, np.asarray(splits), classes, task)


def synthetic_examples(folder, real: RealData, cfg: DownstreamConfig, *, name: str = "",
                       progress: bool = False, log: list | None = None) -> tuple[Examples, str]:
    """A generator's images as examples: ``(examples, note)``.

    Label: a ``label`` column (``ill`` / ``healthy``) where the generator says what it made (no
    generator of this repository writes ``healthy`` yet); otherwise rash-vs-healthy: ill;
    disease task: the row's ``disease``. For inpainting variants with a carried mask, a variant
    counts as ill only when its ill-skin fraction outside the edited area is still above 0.1.
    The patient is the source crop's (``source_patient`` / ``patient`` column) when the image was
    derived from one. At most ``cfg.max_synthetic`` images (seeded subset)."""
    folder = Path(folder)
    rows = list_crop_rows(folder)
    keep_rows, labels, dropped = [], [], 0
    for r in rows:
        label = (r.get("label") or "").strip().lower()
        if real.task == "disease":
            disease = r.get("disease", "")
            if label == "healthy" or disease not in real.classes:
                dropped += 1
                continue
            labels.append(real.classes.index(disease))
        elif label in ("healthy", "ill", ""):
            if label != "healthy" and r.get("ill_fraction") not in (None, ""):
                ill_outside = float(r["ill_fraction"]) - float(r.get("ill_edited_fraction") or 0)
                if ill_outside <= 0.1:
                    dropped += 1
                    continue
            labels.append(0 if label == "healthy" else 1)
        else:
            raise ValueError(f"{folder / MANIFEST}: unknown label {label!r} (expected 'ill' or 'healthy')")
        keep_rows.append(r)
    if not keep_rows:
        raise ValueError(f"{folder}: no image usable for the {real.task} task ({dropped} without a usable label)")
    order = np.arange(len(keep_rows))
    if cfg.max_synthetic is not None and len(order) > cfg.max_synthetic:
        order = np.sort(np.random.default_rng(cfg.seed).choice(len(order), cfg.max_synthetic, replace=False))
    keep_rows = [keep_rows[i] for i in order]
    labels = [labels[i] for i in order]
    patients = [r.get("source_patient") or (r.get("patient", "") if r.get("source_crop") else "") for r in keep_rows]
    x = load_images([folder / r["image"] for r in keep_rows], cfg.image_size, desc=f"{name} images", progress=progress,
                    log=log)
    counts = np.bincount(labels, minlength=len(real.classes))
    note = (f"{len(keep_rows)} images used ("
            + ", ".join(f"{c}: {n}" for c, n in zip(real.classes, counts) if n) + ")"
            + (f"; {dropped} left out (no usable label / too little ill skin outside the edits)" if dropped else "")
            + (f"; capped at {cfg.max_synthetic}" if cfg.max_synthetic is not None and len(rows) > cfg.max_synthetic else ""))
    return Examples(x, torch.as_tensor(labels, dtype=torch.long), patients, [str(folder / r["image"]) for r in keep_rows],
                    [""] * len(keep_rows)), note


# ----------------------------------------------------------------------------------------
# model and training
# ----------------------------------------------------------------------------------------
class SmallCNN(nn.Module):
    """Four conv-BN-ReLU-maxpool blocks, global average pool, linear head.

    ``x``: float [N, 3, S, S] in [-1, 1] -> logits [N, num_classes]."""

    def __init__(self, num_classes: int, width: int = 16, dropout: float = 0.2):
        super().__init__()
        chans = [3, width, width * 2, width * 4, width * 4]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(chans[-1], num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def _device(name) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_classifier(real: Examples, num_classes: int, cfg: DownstreamConfig, *, seed: int,
                     synthetic: Examples | None = None, augment: bool = False,
                     real_classes: Sequence[int] | None = None) -> nn.Module:
    """Train :class:`SmallCNN` for exactly ``cfg.steps`` Adam steps of ``cfg.batch_size``.

    Batches are class-balanced: each element's class is uniform over the classes; it comes from
    ``synthetic``'s images of that class with probability ``cfg.synthetic_share`` (when there are
    any) and otherwise from ``real``'s, uniformly with replacement. ``real_classes`` limits which
    classes may come from real images (synthetic-only arms). Init and batch draws are seeded with
    ``seed``, so arms of one repetition start from the same network. Returns the final model."""
    dev = _device(cfg.device)
    torch.manual_seed(seed)
    model = SmallCNN(num_classes, width=cfg.width).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(seed)
    g_syn = torch.Generator().manual_seed(seed + 7919)    # synthetic picks: their own stream
    allowed = set(range(num_classes) if real_classes is None else real_classes)
    real_idx = [torch.nonzero(real.y == c).flatten() if c in allowed else torch.empty(0, dtype=torch.long)
                for c in range(num_classes)]
    syn_idx = [torch.nonzero(synthetic.y == c).flatten() if synthetic is not None else torch.empty(0, dtype=torch.long)
               for c in range(num_classes)]
    for c in range(num_classes):
        if not len(real_idx[c]) and not len(syn_idx[c]):
            raise ArmDataError(f"class {c} has no training image (real or synthetic) in this arm")
    model.train()
    for step in range(1, cfg.steps + 1):
        cls = torch.randint(0, num_classes, (cfg.batch_size,), generator=g)
        u = torch.rand(cfg.batch_size, generator=g)
        xb = torch.empty(cfg.batch_size, *real.x.shape[1:], dtype=torch.uint8)
        for i in range(cfg.batch_size):
            c = int(cls[i])
            use_syn = len(syn_idx[c]) and (not len(real_idx[c]) or u[i] < cfg.synthetic_share)
            pool, src = (syn_idx[c], synthetic) if use_syn else (real_idx[c], real)
            xb[i] = src.x[pool[int(torch.randint(len(pool), (1,), generator=g_syn if use_syn else g))]]
        if augment:
            xb = standard_augment(xb, g)
        loss = F.cross_entropy(model(to_float(xb.to(dev))), cls.to(dev))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"classifier loss became {loss.item()} at step {step}: lower lr (now {cfg.lr}).")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return model


@torch.no_grad()
def predict_proba(model: nn.Module, x: torch.Tensor, *, batch_size: int = 256) -> np.ndarray:
    """Class probabilities [N, C] (float64) of uint8 images ``x`` [N, 3, s, s]."""
    model.eval()
    dev = next(model.parameters()).device
    out = [F.softmax(model(to_float(x[i:i + batch_size].to(dev))).float(), dim=1).cpu()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out).double().numpy()


# ----------------------------------------------------------------------------------------
# the protocol
# ----------------------------------------------------------------------------------------
@dataclass
class Arm:
    """One way of training: ``pool`` synthetic examples (None: real only), ``augment`` the
    standard augmentation, ``synthetic_only``: the ill class only from ``pool``;
    ``balance_groups``: the pool's usable images are redrawn so every Fitzpatrick group is drawn
    equally often (:func:`balanced_draw`: oversampling of the small groups)."""

    name: str
    pool: Examples | None = None
    augment: bool = False
    synthetic_only: bool = False
    generator: str = ""
    balance_groups: bool = False


@dataclass
class DownstreamResult:
    task: str
    classes: list[str]
    config: dict
    n_train_patients: int
    n_test_patients: int
    n_test: dict                       # class -> test examples
    arms: dict                         # arm name -> {"status", "reason", "fractions": {f: summary}}
    per_run: list[dict]                # one row per (arm, fraction, repetition): point metrics
    notes: dict
    # the test predictions behind the summaries (pooled over cross-validation folds by
    # skinlib.evaluation.folds): {"patient", "file", "group": [n] lists, "y": int [n],
    # "probas": {(arm, fraction): [R arrays float [n, K]]} of every arm that completed}
    predictions: dict | None = None
    # the held-out site's patients (out of distribution): {"n_test_patients", "n_test", "arms":
    # {arm: {"fractions": {f: summary}}}} or {"note": why there is none}; None without such patients
    ood: dict | None = None


def train_subsets(patients: Sequence[str], fractions: Sequence[float], repetitions: int, seed: int,
                  min_patients: int = 2, strata: Mapping[str, str] | None = None) -> dict[tuple[float, int], list[str]]:
    """The train patients of each (fraction, repetition): ``max(min_patients, round(f * n))``
    patients drawn without replacement (seeded per repetition and fraction; all at f = 1).
    ``strata`` (patient -> disease, for the disease task): drawn per disease, at least one each,
    so every class keeps a training patient."""
    ids = sorted(set(patients), key=natural_key)
    groups: dict[str, list[str]] = {}
    for p in ids:
        groups.setdefault((strata or {}).get(p, ""), []).append(p)
    out = {}
    for f in fractions:
        for r in range(repetitions):
            chosen = []
            for g, (name, members) in enumerate(sorted(groups.items())):
                lowest = 1 if len(groups) > 1 else min_patients
                k = min(len(members), max(lowest, int(math.floor(f * len(members) + 0.5))))
                if k == len(members):
                    chosen += members
                else:
                    key = [seed, r, int(round(f * 1000))] + ([g] if len(groups) > 1 else [])
                    pick = np.random.default_rng(key).choice(len(members), k, replace=False)
                    chosen += [members[i] for i in sorted(pick)]
            out[(f, r)] = sorted(chosen, key=natural_key)
    return out


def _metric_fn(name: str, specificity: float):
    return lambda w, y, p: metric_draws(name, w, y, p, specificity=specificity)


def _draws(plan: BootstrapPlan, y: np.ndarray, probas: Sequence[np.ndarray], fn) -> tuple[list, list]:
    """Per repetition: the metric under every bootstrap draw's weights [B] and on the full test set."""
    ones = np.ones((1, len(y)))
    return [fn(plan.weights, y, p) for p in probas], [float(fn(ones, y, p)[0]) for p in probas]


def _summary_pair(plan: BootstrapPlan, y: np.ndarray, probas, base, fn, key, cache: dict | None) -> tuple[dict, dict | None]:
    """The interval of a metric and, with ``base``, of its paired gain, from one evaluation of the
    arm's draws; the baseline's draws are computed once per ``key`` and reused across arms
    (``cache``), which gives the numbers :func:`summarize_metric` gives, without recomputing."""
    per, pt = _draws(plan, y, probas, fn)
    if base is None:
        return estimate(plan, per, pt), None
    ck = (id(base), key)
    if cache is None or ck not in cache:
        b = _draws(plan, y, base, fn)
        if cache is not None:
            cache[ck] = (base, b)            # keep ``base`` alive: its id stays unique
    else:
        b = cache[ck][1]
    return estimate(plan, per, pt), estimate(plan, per, pt, *b)


def _summaries(plan: BootstrapPlan, y: np.ndarray, groups: np.ndarray, probas: list[np.ndarray],
               base: list[np.ndarray] | None, classes: list[str], cfg: DownstreamConfig,
               cache: dict | None = None) -> dict:
    """Metrics, paired gains over ``base`` (real only), per class and per Fitzpatrick group of one
    (arm, share); ``cache``: the baseline's bootstrap draws, shared by the arms of one test set."""
    out: dict = {"metrics": {}, "gain": {}, "per_class": {}, "per_class_gain": {}, "per_skin_type": {}}
    for m in METRICS:
        out["metrics"][m], gain = _summary_pair(plan, y, probas, base, _metric_fn(m, cfg.specificity), ("all", m), cache)
        if gain is not None:
            out["gain"][m] = gain
    for c, cname in enumerate(classes):
        recall = lambda w, yy, p, c=c: class_recall_draws(w, yy, p, c)  # noqa: E731
        out["per_class"][cname], gain = _summary_pair(plan, y, probas, base, recall, ("class", c), cache)
        if gain is not None:
            out["per_class_gain"][cname] = gain
    for grp in sorted({g for g in groups if g}):
        out["per_skin_type"][grp] = _group_summary(plan, y, groups == grp, probas, base, classes, cfg, cache)
    return out


def share_view(summary: dict) -> dict:
    """What ``results.json["arms"][arm]["by_fraction"][share]`` keeps of one share's summary: the
    metrics, the paired gains, and per class / per Fitzpatrick group with their gains."""
    return {k: summary.get(k, {}) for k in ("metrics", "gain", "per_class", "per_class_gain", "per_skin_type")}


#: a Fitzpatrick group with fewer test patients than this gets no interval (its t quantile with
#: n - 1 < 2 degrees of freedom makes any interval meaningless), only its counts and a note
MIN_GROUP_PATIENTS = 3


def _group_summary(plan: BootstrapPlan, y: np.ndarray, keep: np.ndarray, probas: list[np.ndarray],
                   base: list[np.ndarray] | None, classes: list[str], cfg: DownstreamConfig,
                   cache: dict | None = None) -> dict:
    """AUROC and sensitivity at the fixed specificity of the test examples where ``keep`` [n] (one
    Fitzpatrick group), with intervals and the paired gains over real only (``base``); a group
    with both classes but under :data:`MIN_GROUP_PATIENTS` test patients, or one class only, says
    so instead."""
    sub = plan.subset(keep)
    entry: dict = {"n_test": int(keep.sum()), "n_patients": sub.n_patients}
    if len(set(y[keep].tolist())) < len(classes):
        return {**entry, "note": "its test crops hold one class only: no AUROC"}
    if sub.n_patients < MIN_GROUP_PATIENTS:
        return {**entry, "note": f"{sub.n_patients} test patient(s): too few for an interval "
                                 f"(needs {MIN_GROUP_PATIENTS})"}
    group_base = None
    if base is not None:                        # one sliced baseline per (base, group), shared by the arms
        ck = (id(base), "group-base", int(keep.sum()), keep.tobytes())
        if cache is not None and ck in cache:
            group_base = cache[ck][1]
        else:
            group_base = [b[keep] for b in base]
            if cache is not None:
                cache[ck] = (base, group_base)
    for m in ("auroc", "sens_at_spec"):
        entry[m], gain = _summary_pair(sub, y[keep], [p[keep] for p in probas], group_base,
                                       _metric_fn(m, cfg.specificity), ("group", m), cache)
        if gain is not None:
            entry[f"gain_{m}"] = gain
    return entry


def balanced_draw(groups: Sequence[str], usable: np.ndarray, seed: int) -> np.ndarray:
    """Oversampling: ``len(usable)`` indices drawn with replacement from ``usable`` (indices into
    ``groups``, one Fitzpatrick group per image, "" = unknown counts as a group) so that every
    group present is drawn equally often (counts differ by at most one); seeded, sorted."""
    usable = np.asarray(usable, dtype=np.int64)
    if not len(usable):
        return usable
    g = np.asarray([groups[i] if groups else "" for i in usable])
    names = sorted(set(g.tolist()))
    per = np.full(len(names), len(usable) // len(names))
    per[:len(usable) % len(names)] += 1
    rng = np.random.default_rng([seed, 99])
    return np.sort(np.concatenate([rng.choice(usable[g == name], int(k)) for name, k in zip(names, per)]))


def _pool_draw(n: int, seed: int, name: str) -> np.ndarray:
    """This repetition's synthetic images: ``n`` indices into the ``n`` usable images of a pool,
    drawn with replacement (seeded by the repetition and the generator, so the arms of one
    generator with and without standard augmentation share the draw), as the CNN's batches draw
    them."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return np.sort(rng.integers(0, n, n))


class _ProbeContext:
    """One (share, repetition) of the linear probe: the projector fitted on its real train images
    and every feature set it needs projected once (arms differ only in what they add)."""

    def __init__(self, real_tr: Examples, test: Examples, dim: int, ood: Examples | None = None):
        from .linear_probe import Projector

        self.proj = Projector.fit(real_tr.feats.numpy(), dim)
        self.real_z, self.real_y = self.proj(real_tr.feats.numpy()), real_tr.y.numpy()
        self.aug_z = self.proj(real_tr.feats_aug.numpy())
        self.test_z = self.proj(test.feats.numpy())
        self.ood_z = None if ood is None else self.proj(ood.feats.numpy())
        self._pools: dict[int, np.ndarray] = {}

    def pool_z(self, pool: Examples) -> np.ndarray:
        if id(pool) not in self._pools:
            self._pools[id(pool)] = self.proj(pool.feats.numpy())
        return self._pools[id(pool)]


def _probe_job(ctx: _ProbeContext, pool: Examples | None, usable: np.ndarray | None, arm: "Arm",
               cfg: DownstreamConfig, penalty: float, num_classes: int, real_classes: Sequence[int] | None,
               seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Test probabilities (and those of the held-out site's patients, None without them) of one
    (arm, share, repetition) with the linear probe; ``usable``: the indices of ``pool``'s images
    this repetition may use (of subset patients)."""
    from .linear_probe import balanced_weights, fit_probe

    allowed = set(range(num_classes) if real_classes is None else real_classes)
    keep = np.isin(ctx.real_y, sorted(allowed))
    zs, ys = [ctx.real_z[keep]], [ctx.real_y[keep]]
    if arm.augment:
        zs.append(ctx.aug_z[keep])
        ys.append(ctx.real_y[keep])
    n_real = sum(len(y) for y in ys)
    if pool is not None and len(usable):
        drawn = usable[_pool_draw(len(usable), seed, arm.generator)]
        zs.append(ctx.pool_z(pool)[drawn])
        ys.append(pool.y.numpy()[drawn])
    z, y = np.concatenate(zs), np.concatenate(ys)
    syn = np.arange(len(y)) >= n_real
    missing = sorted(set(range(num_classes)) - set(y.tolist()))
    if missing:
        raise ArmDataError(f"class(es) {missing} have no training image (real or synthetic) in this arm")
    w = balanced_weights(y, syn, num_classes, cfg.synthetic_share)
    model = fit_probe(z, y, w, penalty, num_classes)
    return model.proba(ctx.test_z), None if ctx.ood_z is None else model.proba(ctx.ood_z)


def run_downstream(real_dir, generators: Mapping[str, Examples], cfg: DownstreamConfig, real: RealData, *,
                   oracle: Examples | None = None, refused: Mapping[str, str] | None = None,
                   failed: Mapping[str, str] | None = None, progress: bool = True) -> DownstreamResult:
    """Train and test every arm (see the module docstring) and summarise with intervals.

    ``generators``: name -> that generator's examples (checked for leaks beforehand, see
    :mod:`skinlib.evaluation.provenance`); ``refused``: name -> why a generator was refused (its arm is
    reported as refused, never trained); ``failed``: name -> why its images could not be used. A
    data problem inside one arm (:class:`~skinlib.errors.ArmDataError`, a diverging loss) marks that
    arm ``failed`` with the reason and the others go on; any other exception stops the evaluation.
    Real examples enter as loaded (for rash-vs-healthy, paired per photo by :func:`pair_per_photo`).
    With ``cfg.detector == "features"`` every example set must carry ``feats`` (and the real train
    examples ``feats_aug``), see :func:`skinlib.evaluation.linear_probe.attach_features`."""
    from tqdm.auto import tqdm

    from .linear_probe import balanced_weights, choose_c, fit_probe

    train, test = real.side("train"), real.side("test")
    if not len(test) or not len(train):
        raise ValueError("the real crops have no train or no test patient: re-run notebook 01")
    ood, ood_note = real.side("ood"), ""
    if not len(ood):
        ood = None
    elif len(set(ood.y.tolist())) < len(real.classes):
        ood_note = (f"the held-out site's {len(set(ood.patient))} patients have no example of class(es) "
                    f"{[c for i, c in enumerate(real.classes) if i not in set(ood.y.tolist())]}: no OOD evaluation")
        ood = None
    num_classes = len(real.classes)
    y_test = test.y.numpy()
    missing = [c for i, c in enumerate(real.classes) if not (y_test == i).any()]
    if missing:
        raise ValueError(f"the test patients have no example of class(es) {missing}: re-run notebook 01 with "
                         f"another split seed or more patients")
    features = cfg.detector == "features"
    if features:
        sets = {"real": real.examples, "oracle": oracle, **generators}
        lacking = [n for n, e in sets.items() if e is not None and e.feats is None]
        if lacking or real.examples.feats_aug is None:
            raise ValueError(f"detector 'features' needs the features of every example set (missing: "
                             f"{lacking or ['real (augmented view)']}): call linear_probe.attach_features first")
    positive = [num_classes - 1] if real.task == "rash-vs-healthy" else list(range(num_classes))
    ill_train = train.subset(np.flatnonzero(np.isin(train.y.numpy(), positive)))
    arms = [Arm(REAL_ONLY), Arm(AUGMENT, augment=True), Arm(COPIES, pool=ill_train, generator="copies"),
            Arm(OVERSAMPLE, pool=ill_train, generator="oversampling", balance_groups=True)]
    if oracle is not None:
        arms.append(Arm(ORACLE, pool=oracle, generator="oracle"))
        ill = np.flatnonzero(np.isin(oracle.y.numpy(), positive))
        arms.append(Arm(ORACLE_ILL, pool=oracle.subset(ill), generator="oracle"))
    for name, ex in generators.items():
        arms.append(Arm(f"real + {name}", pool=ex, generator=name))
    if cfg.augmented_generator_arms:
        arms += [Arm(f"real + standard aug + {name}", pool=ex, augment=True, generator=name)
                 for name, ex in generators.items()]
    arms += [Arm(f"real + {name}", generator=name) for name in {**(refused or {}), **(failed or {})}
             if name not in generators]
    syn_only = []
    if cfg.synthetic_only:
        syn_only = [Arm(f"synthetic only: {a.generator}", pool=a.pool, synthetic_only=True, generator=a.generator)
                    for a in arms if a.pool is not None and a.generator not in ("copies", "oversampling")
                    and not a.augment and a.name != ORACLE_ILL]
    strata = ({p: real.classes[int(y)] for p, y in zip(train.patient, train.y)} if real.task == "disease" else None)
    subsets = train_subsets(train.patient, cfg.fractions, cfg.repetitions, cfg.seed, strata=strata)
    full = max(cfg.fractions)
    jobs = [(a, f) for f in cfg.fractions for a in arms] + [(a, full) for a in syn_only]
    status = {a.name: {"status": "ok", "reason": ""} for a in arms + syn_only}
    for name, why in (refused or {}).items():
        status[f"real + {name}"] = {"status": "refused", "reason": why}
    for name, why in (failed or {}).items():
        status[f"real + {name}"] = {"status": "failed", "reason": why}
    notes: dict = {"detector": cfg.detector}
    if features:
        c, cv = choose_c(train.feats.numpy(), train.y.numpy(), train.patient, num_classes, cfg.probe_c_grid,
                         cfg.probe_dim, seed=cfg.seed)
        notes["probe"] = {"penalty": c, "cv_auroc": {str(k): v for k, v in cv.items()}, "pca_dim": cfg.probe_dim,
                          "model": "weighted ridge classifier on PCA-projected frozen features",
                          "chosen_on": "5-fold patient-grouped cross-validation of the train patients (real only)"}
    probas: dict[tuple[str, float], list[np.ndarray]] = {}
    probas_ood: dict[tuple[str, float], list[np.ndarray]] = {}
    per_run: list[dict] = []
    label_scorer = None
    bar = tqdm(total=len(jobs) * cfg.repetitions, desc=f"downstream detectors ({cfg.detector})", disable=not progress)
    for r in range(cfg.repetitions):
        seed = cfg.seed * 1000 + r
        contexts: dict[float, tuple] = {}          # per share: its patients, real train examples, probe context
        for arm, f in jobs:
            bar.update(1)
            if status[arm.name]["status"] != "ok":
                continue
            if f not in contexts:
                pats = set(subsets[(f, r)])
                real_tr = train.subset([i for i, p in enumerate(train.patient) if p in pats])
                contexts[f] = (pats, real_tr, _ProbeContext(real_tr, test, cfg.probe_dim, ood) if features else None)
            pats, real_tr, ctx = contexts[f]
            pool, usable = arm.pool, None
            if pool is not None:                   # derived images: only of subset patients (the oracle's: all)
                usable = np.asarray([i for i, p in enumerate(pool.patient)
                                     if arm.generator.startswith("oracle") or not p or p in pats], dtype=np.int64)
                if arm.balance_groups:
                    usable = balanced_draw(pool.group, usable, seed)
                if not features:
                    pool = pool.subset(usable)
            try:
                if arm.synthetic_only:
                    real_cls = [c for c in range(num_classes) if c not in positive]
                    ys = set() if pool is None else set(pool.y[torch.as_tensor(usable)].tolist() if features
                                                         else pool.y.tolist())
                    missing = [real.classes[c] for c in positive if c not in ys]
                    if missing:
                        raise ArmDataError(f"{arm.generator} made no image of class(es) {missing}")
                else:
                    real_cls = None
                if features:
                    p, p_ood = _probe_job(ctx, pool, usable, arm, cfg, notes["probe"]["penalty"], num_classes,
                                          real_cls, seed)
                    if arm.name == REAL_ONLY and f == full and r == 0:
                        model = fit_probe(ctx.real_z, ctx.real_y,
                                          balanced_weights(ctx.real_y, np.zeros(len(ctx.real_y), bool), num_classes, 0),
                                          notes["probe"]["penalty"], num_classes)
                        label_scorer = (lambda ex, m=model, pj=ctx.proj: m.proba(pj(ex.feats.numpy())))
                else:
                    model = train_classifier(real_tr, num_classes, cfg, seed=seed, synthetic=pool,
                                             augment=arm.augment, real_classes=real_cls)
                    p = predict_proba(model, test.x)
                    p_ood = None if ood is None else predict_proba(model, ood.x)
                    if arm.name == REAL_ONLY and f == full and r == 0:
                        label_scorer = (lambda ex, m=model: predict_proba(m, ex.x))
            except (ArmDataError, FloatingPointError) as e:   # a data problem fails this arm only
                status[arm.name] = {"status": "failed", "reason": f"{type(e).__name__}: {e}"}
                continue
            probas.setdefault((arm.name, f), []).append(p)
            if p_ood is not None:
                probas_ood.setdefault((arm.name, f), []).append(p_ood)
            ones = np.ones((1, len(y_test)))
            per_run.append({"arm": arm.name, "fraction": f, "repetition": r, "seed": seed,
                            "train_patients": len(pats), "n_train_real": len(real_tr),
                            "n_synthetic": 0 if pool is None else len(usable),
                            **{m: float(metric_draws(m, ones, y_test, p, specificity=cfg.specificity)[0])
                               for m in METRICS}})
    bar.close()
    if label_scorer is not None:
        notes["label_check"] = label_check(label_scorer, {a.generator: a.pool for a in arms
                                                          if a.pool is not None and not a.augment
                                                          and a.name not in (ORACLE_ILL, OVERSAMPLE)},
                                           real.task, real.classes)
    plan = BootstrapPlan.make(test.patient, cfg.repetitions, cfg.n_boot, cfg.seed)
    cache: dict = {}                       # real only's bootstrap draws, computed once per share
    groups = np.asarray(test.group or [""] * len(test))
    result_arms: dict = {}
    for arm in arms + syn_only:
        entry = dict(status[arm.name])
        entry["generator"] = arm.generator
        entry["fractions"] = {}
        if entry["status"] == "ok":
            for f in ([full] if arm.synthetic_only else cfg.fractions):
                pr = probas.get((arm.name, f), [])
                base = probas.get((REAL_ONLY, f)) if arm.name != REAL_ONLY else None
                if len(pr) != cfg.repetitions or (arm.name != REAL_ONLY and (base is None or len(base) != len(pr))):
                    entry = {"status": "failed", "generator": arm.generator, "fractions": {}, "reason": (
                        f"incomplete at {f:.0%} of the train patients: {len(pr)} of {cfg.repetitions} repetitions"
                        + ("" if arm.name == REAL_ONLY or base else "; the real-only baseline failed, so no paired gain"))}
                    break
                entry["fractions"][str(f)] = _summaries(plan, y_test, groups, pr, base, real.classes, cfg, cache)
        result_arms[arm.name] = entry
    n_test = {c: int((y_test == i).sum()) for i, c in enumerate(real.classes)}
    complete = {(a, f): pr for (a, f), pr in probas.items()
                if result_arms.get(a, {}).get("status") == "ok" and len(pr) == cfg.repetitions}
    predictions = {"patient": list(test.patient), "file": list(test.file), "group": groups.tolist(), "y": y_test,
                   "probas": complete}
    ood_result = ({"note": ood_note} if ood_note else
                  None if ood is None else _ood_summaries(ood, probas_ood, arms + syn_only, result_arms, real.classes, cfg))
    return DownstreamResult(real.task, real.classes, asdict(cfg), len(set(train.patient)), len(set(test.patient)),
                            n_test, result_arms, per_run, notes, predictions, ood_result)


def _ood_summaries(ood: Examples, probas_ood: Mapping, arms: Sequence[Arm], result_arms: Mapping,
                   classes: list[str], cfg: DownstreamConfig) -> dict:
    """The out-of-distribution column: every arm that is ok, summarised on the held-out site's
    patients exactly as on the in-distribution test patients (own bootstrap over its patients,
    paired gains over real only), at every share it was trained at."""
    y = ood.y.numpy()
    plan = BootstrapPlan.make(ood.patient, cfg.repetitions, cfg.n_boot, cfg.seed)
    groups = np.asarray(ood.group or [""] * len(ood))
    cache: dict = {}
    out: dict = {}
    for arm in arms:
        if result_arms.get(arm.name, {}).get("status") != "ok":
            continue
        out[arm.name] = {"generator": arm.generator, "fractions": {}}
        for f in result_arms[arm.name]["fractions"]:
            pr = probas_ood.get((arm.name, float(f)), [])
            base = probas_ood.get((REAL_ONLY, float(f))) if arm.name != REAL_ONLY else None
            out[arm.name]["fractions"][f] = _summaries(plan, y, groups, pr, base, classes, cfg, cache)
    return {"n_test_patients": len(set(ood.patient)), "n_test": {c: int((y == i).sum()) for i, c in enumerate(classes)},
            "arms": out}


PREDICTIONS_FILE = "predictions.npz"


def save_predictions(path, res: DownstreamResult) -> None:
    """Write ``res.predictions`` to ``path`` (.npz, no pickles): ``patient``, ``test_file``, ``group`` str [n],
    ``y`` int64 [n], ``classes`` str [K], ``task``; per completed (arm, fraction) i: ``arm``[i],
    ``fraction``[i] and ``proba_<i>`` float64 [R, n, K] (repetition r of the arm at that share)."""
    from ..io import atomic_write_bytes
    import io

    pr = res.predictions
    keys = sorted(pr["probas"], key=lambda k: (k[1], k[0]))
    arrays = {"patient": np.asarray(pr["patient"], dtype=str), "test_file": np.asarray(pr["file"], dtype=str),
              "group": np.asarray(pr["group"], dtype=str), "y": np.asarray(pr["y"], dtype=np.int64),
              "classes": np.asarray(res.classes, dtype=str), "task": np.asarray(res.task),
              "arm": np.asarray([a for a, _ in keys], dtype=str), "fraction": np.asarray([f for _, f in keys], float)}
    for i, k in enumerate(keys):
        arrays[f"proba_{i}"] = np.stack(pr["probas"][k]).astype(np.float64)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_predictions(path) -> dict:
    """What :func:`save_predictions` wrote: ``{"patient", "file", "group", "y", "classes", "task",
    "probas": {(arm, fraction): float [R, n, K]}}``; a clear error when the file is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the test predictions of this evaluation were not saved "
                                f"(made before they were). Fix: re-run notebook 05 for this folder.")
    with np.load(path, allow_pickle=False) as z:
        out = {k: z[k] for k in ("patient", "group", "y", "classes")}
        out["file"] = z["test_file"]
        out["task"] = str(z["task"])
        out["probas"] = {(str(a), float(f)): z[f"proba_{i}"] for i, (a, f) in enumerate(zip(z["arm"], z["fraction"]))}
    return out


def label_check(score, pools: Mapping[str, Examples], task: str, classes: Sequence[str]) -> dict:
    """Do a generator's images show what their label says? ``score(examples) -> proba [N, K]`` is
    the detector trained on all real train patients (real only); per pool: the share of its
    images of each label that the detector assigns to that label (rash-vs-healthy: the share of
    its "ill" images called ill). A generator whose ill images look healthy shows at once."""
    out = {}
    for name, pool in pools.items():
        if pool is None or not len(pool):
            continue
        pred = score(pool).argmax(1)
        y = pool.y.numpy()
        row = {"n": int(len(y))}
        for c, cname in enumerate(classes):
            m = y == c
            if m.any():
                row[f"called_{cname}"] = float((pred[m] == c).mean())
        out[name] = row
    return out


__all__ = ["DownstreamConfig", "Examples", "RealData", "real_examples", "synthetic_examples", "SmallCNN",
           "standard_augment", "train_classifier", "predict_proba", "train_subsets", "run_downstream",
           "DownstreamResult", "REAL_ONLY", "AUGMENT", "COPIES", "ORACLE", "ORACLE_ILL", "skin_types",
           "cap_per_patient", "label_check", "DETECTORS", "save_predictions", "load_predictions",
           "PREDICTIONS_FILE"]
