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
  demo data only); ``real + copies`` (duplicates of the train crops, the negative control); and
  ``synthetic only: <generator>`` (the ill class only from the generator, healthy crops real).
* **Data efficiency**: every arm with ``fractions`` (25 %, 50 %, 100 %) of the train patients
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.crops import HEALTHY_DIR
from ..data.dataset import MANIFEST, list_crop_rows
from ..data.photos import natural_key
from ..data.split import require_test_patients
from .intervals import METRICS, BootstrapPlan, class_recall_draws, metric_draws, summarize_metric
from ..io import check_manifest_paths, load_json, read_csv

TASKS = ("auto", "rash-vs-healthy", "disease")
REAL_ONLY = "real only"
AUGMENT = "real + standard aug"
COPIES = "real + copies"
ORACLE = "real + oracle"
SKIN_GROUPS = {1: "I-II", 2: "I-II", 3: "III-IV", 4: "III-IV", 5: "V-VI", 6: "V-VI"}


@dataclass
class DownstreamConfig:
    """Settings shared by every arm (the "same budget")."""

    task: str = "auto"
    image_size: int = 48              # classifier input side, px
    steps: int = 150                  # Adam steps per classifier (every arm)
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    width: int = 8                    # CNN width (channels of the first block)
    synthetic_share: float = 0.5      # P(a batch element of a class comes from the synthetic images of that class)
    fractions: tuple[float, ...] = (0.25, 0.5, 1.0)   # shares of the train patients (data-efficiency curve)
    repetitions: int = 4              # (seed, train subset) repetitions per arm and fraction
    seed: int = 0
    specificity: float = 0.9          # sensitivity is reported at this specificity
    n_boot: int = 1000                # bootstrap draws
    max_synthetic: int | None = 2000  # at most this many images per generator (seeded subset)
    synthetic_only: bool = True       # also train on synthetic ill-skin images only (100 % fraction)
    pair_per_photo: bool = True       # rash-vs-healthy: keep as many ill as healthy crops of each photo
    device: str | None = None

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
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

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx) -> "Examples":
        idx = [int(i) for i in idx]
        t = torch.as_tensor(idx, dtype=torch.long)
        return Examples(self.x[t], self.y[t], [self.patient[i] for i in idx], [self.file[i] for i in idx],
                        [self.group[i] for i in idx] if self.group else [])

    @staticmethod
    def concat(parts: Sequence["Examples"]) -> "Examples":
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ValueError("no examples")
        return Examples(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]),
                        [a for p in parts for a in p.patient], [a for p in parts for a in p.file],
                        [a for p in parts for a in (p.group or [""] * len(p))])


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, s, s] -> float32 in [-1, 1]."""
    return x.float() / 127.5 - 1.0


def load_images(paths: Sequence[Path], size: int, *, desc: str = "", progress: bool = False) -> torch.Tensor:
    """uint8 [N, 3, size, size] of RGB images (antialiased bilinear resize); a missing or
    unreadable file is an error naming it."""
    from PIL import Image, UnidentifiedImageError
    from tqdm.auto import tqdm

    out = torch.empty(len(paths), 3, size, size, dtype=torch.uint8)
    for i, p in enumerate(tqdm(paths, desc=desc or "loading images", disable=not progress, leave=False)):
        try:
            with Image.open(p) as im:
                im = im.convert("RGB")
                if im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR)
                out[i] = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)
        except (OSError, UnidentifiedImageError) as e:
            raise ValueError(f"cannot read image {p}: {e}. Fix: re-create it (re-run the notebook that made "
                             f"it) or remove its row from the manifest beside it.") from e
    return out


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


def skin_types(real_dir) -> dict[str, int]:
    """patient -> Fitzpatrick type (1-6) where known: the demo dataset's ``demo_manifest.csv`` or
    an optional ``metadata.csv`` (columns ``patient``, ``fitzpatrick``) in the dataset root
    (see data_README.md); found through the crops' ``summary.json``. Empty when unknown."""
    summary = Path(real_dir) / "summary.json"
    if not summary.is_file():
        return {}
    root = Path(load_json(summary).get("data_dir", ""))
    out: dict[str, int] = {}
    for name in ("metadata.csv", "demo_manifest.csv"):
        path = root / name
        if path.is_file():
            for r in read_csv(path):
                value = (r.get("fitzpatrick") or "").strip()
                if r.get("patient") and value:
                    try:
                        t = int(float(value))
                    except ValueError as e:
                        raise ValueError(f"{path}: fitzpatrick {value!r} of patient {r['patient']} is not 1-6. "
                                         f"Fix the value or leave it empty.") from e
                    if not 1 <= t <= 6:
                        raise ValueError(f"{path}: fitzpatrick {t} of patient {r['patient']} is not 1-6.")
                    out[r["patient"]] = t
    return out


@dataclass
class RealData:
    """All real examples of a crops folder with their side of the patient split."""

    examples: Examples
    split: np.ndarray          # [N] "train" / "test"
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


def real_examples(real_dir, cfg: DownstreamConfig, *, progress: bool = False) -> RealData:
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
    for folder, r, label in chosen:
        files.append(folder / r["image"])
        labels.append(label)
        patients.append(r["patient"])
        splits.append(r["split"])
    types = skin_types(real_dir)
    x = load_images(files, cfg.image_size, desc="real crops", progress=progress)
    ex = Examples(x, torch.as_tensor(labels, dtype=torch.long), patients, [str(f) for f in files],
                  [SKIN_GROUPS.get(types.get(p, 0), "") for p in patients])
    return RealData(ex, np.asarray(splits), classes, task)


def synthetic_examples(folder, real: RealData, cfg: DownstreamConfig, *, name: str = "",
                       progress: bool = False) -> tuple[Examples, str]:
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
    x = load_images([folder / r["image"] for r in keep_rows], cfg.image_size, desc=f"{name} images", progress=progress)
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


def standard_augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The standard-augmentation control: random horizontal/vertical flips, a random multiple of
    90 degrees, and colour jitter (brightness, contrast, saturation x U(0.8, 1.2)) of a uint8
    batch [N, 3, s, s]; returns uint8."""
    n = len(x)
    flips = torch.rand(n, 2, generator=g) < 0.5
    x = torch.where(flips[:, 0, None, None, None], x.flip(3), x)
    x = torch.where(flips[:, 1, None, None, None], x.flip(2), x)
    k = torch.randint(0, 4, (n,), generator=g)
    x = torch.stack([torch.rot90(xi, int(ki), dims=(1, 2)) for xi, ki in zip(x, k)])
    f = x.float()
    b, c, s = (0.8 + 0.4 * torch.rand(3, n, 1, 1, 1, generator=g))
    f = f * b
    mean = f.mean(dim=(1, 2, 3), keepdim=True)
    f = mean + (f - mean) * c
    grey = (0.299 * f[:, :1] + 0.587 * f[:, 1:2] + 0.114 * f[:, 2:3])
    f = grey + (f - grey) * s
    return f.clamp(0, 255).round().to(torch.uint8)


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
            raise ValueError(f"class {c} has no training image (real or synthetic) in this arm")
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
    standard augmentation, ``synthetic_only``: the ill class only from ``pool``."""

    name: str
    pool: Examples | None = None
    augment: bool = False
    synthetic_only: bool = False
    generator: str = ""


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


def _summaries(plan: BootstrapPlan, y: np.ndarray, groups: np.ndarray, probas: list[np.ndarray],
               base: list[np.ndarray] | None, classes: list[str], cfg: DownstreamConfig) -> dict:
    out: dict = {"metrics": {}, "gain": {}, "per_class": {}, "per_skin_type": {}}
    for m in METRICS:
        fn = _metric_fn(m, cfg.specificity)
        out["metrics"][m] = summarize_metric(plan, y, probas, fn)
        if base is not None:
            out["gain"][m] = summarize_metric(plan, y, probas, fn, baseline=base)
    for c, cname in enumerate(classes):
        out["per_class"][cname] = summarize_metric(plan, y, probas, lambda w, yy, p, c=c: class_recall_draws(w, yy, p, c))
    for grp in sorted({g for g in groups if g}):
        keep = groups == grp
        if len(set(y[keep].tolist())) < len(classes):
            continue
        sub = plan.subset(keep)
        out["per_skin_type"][grp] = {"auroc": summarize_metric(sub, y[keep], [p[keep] for p in probas],
                                                                _metric_fn("auroc", cfg.specificity)),
                                     "n_test": int(keep.sum()), "n_patients": sub.n_patients}
    return out


def run_downstream(real_dir, generators: Mapping[str, Examples], cfg: DownstreamConfig, real: RealData, *,
                   oracle: Examples | None = None, refused: Mapping[str, str] | None = None,
                   failed: Mapping[str, str] | None = None, progress: bool = True) -> DownstreamResult:
    """Train and test every arm (see the module docstring) and summarise with intervals.

    ``generators``: name -> that generator's examples (checked for leaks beforehand, see
    :mod:`skinlib.evaluation.provenance`); ``refused``: name -> why a generator was refused (its arm is
    reported as refused, never trained); ``failed``: name -> why its images could not be used. A failure inside one arm marks that arm ``failed`` with
    the reason; the others go on. Real examples enter as loaded (for rash-vs-healthy, paired per
    photo by :func:`pair_per_photo`)."""
    from tqdm.auto import tqdm

    train, test = real.side("train"), real.side("test")
    if not len(test) or not len(train):
        raise ValueError("the real crops have no train or no test patient: re-run notebook 01")
    num_classes = len(real.classes)
    y_test = test.y.numpy()
    missing = [c for i, c in enumerate(real.classes) if not (y_test == i).any()]
    if missing:
        raise ValueError(f"the test patients have no example of class(es) {missing}: re-run notebook 01 with "
                         f"another split seed or more patients")
    positive = [num_classes - 1] if real.task == "rash-vs-healthy" else list(range(num_classes))
    arms = [Arm(REAL_ONLY), Arm(AUGMENT, augment=True),
            Arm(COPIES, pool=train.subset(np.flatnonzero(np.isin(train.y.numpy(), positive))), generator="copies")]
    if oracle is not None:
        arms.append(Arm(ORACLE, pool=oracle, generator="oracle"))
    for name, ex in generators.items():
        arms.append(Arm(f"real + {name}", pool=ex, generator=name))
    arms += [Arm(f"real + {name}", generator=name) for name in {**(refused or {}), **(failed or {})}
             if name not in generators]
    syn_only = []
    if cfg.synthetic_only:
        syn_only = [Arm(f"synthetic only: {a.generator}", pool=a.pool, synthetic_only=True, generator=a.generator)
                    for a in arms if a.pool is not None and a.generator != "copies"]
    strata = ({p: real.classes[int(y)] for p, y in zip(train.patient, train.y)} if real.task == "disease" else None)
    subsets = train_subsets(train.patient, cfg.fractions, cfg.repetitions, cfg.seed, strata=strata)
    full = max(cfg.fractions)
    jobs = [(a, f) for f in cfg.fractions for a in arms] + [(a, full) for a in syn_only]
    status = {a.name: {"status": "ok", "reason": ""} for a in arms + syn_only}
    for name, why in (refused or {}).items():
        status[f"real + {name}"] = {"status": "refused", "reason": why}
    for name, why in (failed or {}).items():
        status[f"real + {name}"] = {"status": "failed", "reason": why}
    probas: dict[tuple[str, float], list[np.ndarray]] = {}
    per_run: list[dict] = []
    bar = tqdm(total=len(jobs) * cfg.repetitions, desc="downstream classifiers", disable=not progress)
    for r in range(cfg.repetitions):
        seed = cfg.seed * 1000 + r
        for arm, f in jobs:
            bar.update(1)
            if status[arm.name]["status"] != "ok":
                continue
            try:
                pats = set(subsets[(f, r)])
                real_tr = train.subset([i for i, p in enumerate(train.patient) if p in pats])
                pool = arm.pool
                if pool is not None and arm.generator != "oracle":   # derived images: only of subset patients
                    pool = pool.subset([i for i, p in enumerate(pool.patient) if not p or p in pats])
                if arm.synthetic_only:
                    real_cls = [c for c in range(num_classes) if c not in positive]
                    missing = [real.classes[c] for c in positive if pool is None or not (pool.y == c).any()]
                    if missing:
                        raise ValueError(f"{arm.generator} made no image of class(es) {missing}")
                else:
                    real_cls = None
                model = train_classifier(real_tr, num_classes, cfg, seed=seed, synthetic=pool,
                                         augment=arm.augment, real_classes=real_cls)
                p = predict_proba(model, test.x)
            except Exception as e:     # the arm is reported failed with its reason; the others go on
                status[arm.name] = {"status": "failed", "reason": f"{type(e).__name__}: {e}"}
                continue
            probas.setdefault((arm.name, f), []).append(p)
            ones = np.ones((1, len(y_test)))
            per_run.append({"arm": arm.name, "fraction": f, "repetition": r, "seed": seed,
                            "train_patients": len(pats), "n_train_real": len(real_tr),
                            "n_synthetic": 0 if pool is None else len(pool),
                            **{m: float(metric_draws(m, ones, y_test, p, specificity=cfg.specificity)[0])
                               for m in METRICS}})
    bar.close()
    plan = BootstrapPlan.make(test.patient, cfg.repetitions, cfg.n_boot, cfg.seed)
    groups = np.asarray(test.group or [""] * len(test))
    result_arms: dict = {}
    for arm in arms + syn_only:
        entry = dict(status[arm.name])
        entry["fractions"] = {}
        if entry["status"] == "ok":
            for f in ([full] if arm.synthetic_only else cfg.fractions):
                pr = probas.get((arm.name, f), [])
                base = probas.get((REAL_ONLY, f)) if arm.name != REAL_ONLY else None
                if len(pr) != cfg.repetitions or (arm.name != REAL_ONLY and (base is None or len(base) != len(pr))):
                    entry = {"status": "failed", "fractions": {}, "reason": (
                        f"incomplete at {f:.0%} of the train patients: {len(pr)} of {cfg.repetitions} repetitions"
                        + ("" if arm.name == REAL_ONLY or base else "; the real-only baseline failed, so no paired gain"))}
                    break
                entry["fractions"][str(f)] = _summaries(plan, y_test, groups, pr, base, real.classes, cfg)
        result_arms[arm.name] = entry
    n_test = {c: int((y_test == i).sum()) for i, c in enumerate(real.classes)}
    return DownstreamResult(real.task, real.classes, asdict(cfg), len(set(train.patient)), len(set(test.patient)),
                            n_test, result_arms, per_run, {})


__all__ = ["DownstreamConfig", "Examples", "RealData", "real_examples", "synthetic_examples", "SmallCNN",
           "standard_augment", "train_classifier", "predict_proba", "train_subsets", "run_downstream",
           "DownstreamResult", "REAL_ONLY", "AUGMENT", "COPIES", "ORACLE", "skin_types"]
