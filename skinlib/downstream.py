"""Downstream utility of synthetic images: does adding them help a small skin-illness classifier?

A small CNN is trained on real crops only and on real + synthetic images of each generator,
with the same budget (same number of optimiser steps, same batch size, same seed), on a
patient-level train/validation/test split of the real crops (no patient in two splits); it is
evaluated on the real test patients only. Repeated over several seeds (each seed: a new
patient split, initialisation and batch order), reported as mean with a t-interval over seeds,
and the gain over real-only as the paired difference per seed with its t-interval.

Tasks (``task="auto"`` picks "disease" when the real crops hold two or more diseases with at
least three patients each, the minimum for a patient-level split with every disease in train,
validation and test; otherwise "ill-vs-healthy"):

``"disease"``  crop-level disease classification (crops resized to ``image_size``).
    Synthetic label: the row's ``disease`` column (CVAE exports per class; GLIDE variants copy
    their source crop's disease); otherwise the disease of the source crop named by
    ``source_crop``. Images with no known disease (e.g. an unconditional DCGAN) cannot be used:
    the generator is reported as not applicable, never guessed.
``"ill-vs-healthy"``  patch-level: each crop is tiled into square patches of ``patch_fraction``
    of its side; a patch is *ill* when at least ``ill_min`` of its pixels are ill skin in the
    crop's mask, *healthy* when at most ``healthy_max`` are, and left out in between. Synthetic
    images need a mask (``NNNNNN_mask.png``): GLIDE variants carry their source's mask, i.e. a
    re-synthesised pixel keeps its source label (an assumption; ``max_edited_fraction`` < 1
    drops patches that were edited more than that). Mask-free generators are not applicable.

Leakage: a synthetic image derived from a real crop (``source_crop``/``patient`` columns) is used
only when that crop's patient is in the training split of the seed. Generators trained on all
crops (DCGAN/CVAE as run by notebooks 02/03) have seen the test patients; the notebook says so.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import CropDataset, list_crop_rows
from .metrics import source_crop_of

TASKS = ("auto", "disease", "ill-vs-healthy")
REAL_ONLY = "real only"
SPLITS = ("train", "val", "test")
UNKNOWN_PATIENT = "?unknown source patient"


@dataclass
class DownstreamConfig:
    """Settings shared by every arm (the "same budget")."""

    task: str = "auto"
    image_size: int = 64              # classifier input side, px
    patch_fraction: float = 0.25      # ill-vs-healthy: patch side / crop side
    ill_min: float = 0.3              # ill-vs-healthy: ill when >= this fraction of ill pixels
    healthy_max: float = 0.02         # ill-vs-healthy: healthy when <= this fraction
    max_edited_fraction: float = 1.0  # ill-vs-healthy: drop synthetic patches edited more than this
    steps: int = 300                  # optimiser steps per run (every arm)
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    synthetic_share: float = 0.5      # expected fraction of synthetic images in a batch (mixed arms)
    val_every: int = 25               # validation loss every N steps; the best step is tested
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)   # train/val/test share of images
    max_synthetic: int | None = None  # cap synthetic images per generator (seeded subset)
    width: int = 16                   # CNN width (channels of the first block)
    device: str | None = None


@dataclass
class Examples:
    """Classifier examples. ``x`` uint8 [N, 3, s, s] (RGB 0..255; 4x less memory than float,
    converted to [-1, 1] per batch by :func:`to_float`); ``y`` int64 [N]; ``patient`` and
    ``crop`` (file name of the real crop it comes from, "" when none) per example."""

    x: torch.Tensor
    y: torch.Tensor
    patient: list[str]
    crop: list[str]

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx) -> "Examples":
        idx = np.asarray(idx, dtype=int)
        t = torch.as_tensor(idx, dtype=torch.long)
        return Examples(self.x[t], self.y[t], [self.patient[i] for i in idx], [self.crop[i] for i in idx])


def _say(msg: str, verbose: bool = True) -> None:
    if verbose:
        print(f"[downstream] {msg}")


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [..] in [-1, 1] -> uint8 0..255 (rounded)."""
    return ((x.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 in [-1, 1]; float input is returned as float32."""
    return x.float() / 127.5 - 1.0 if x.dtype == torch.uint8 else x.float()


# ----------------------------------------------------------------------------------------
# examples from folders
# ----------------------------------------------------------------------------------------
def choose_task(real_rows: Sequence[Mapping[str, str]], task: str = "auto") -> str:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if task != "auto":
        return task
    patients: dict[str, set] = {}
    for r in real_rows:
        if r.get("disease"):
            patients.setdefault(r["disease"], set()).add(r.get("patient", ""))
    ok = len(patients) >= 2 and all(len(p) >= 3 for p in patients.values())
    return "disease" if ok else "ill-vs-healthy"


def class_names(task: str, real_rows: Sequence[Mapping[str, str]]) -> list[str]:
    if task == "ill-vs-healthy":
        return ["healthy", "ill"]
    names = sorted({r.get("disease", "") for r in real_rows} - {""})
    if len(names) < 2:
        raise ValueError(f"task 'disease' needs crops of at least two diseases (manifest column disease); "
                         f"found {names}. Use task='ill-vs-healthy'.")
    return names


def _patient_of(row: Mapping[str, str], i: int, folder: Path) -> str:
    if row.get("patient"):
        return row["patient"]
    raise ValueError(f"{folder / 'manifest.csv'}: row {i} ({row.get('image')}) has no patient: a patient-level split "
                     f"needs the `patient` column that notebook 01 writes; re-run the cropping.")


def _mask_path(folder: Path, row: Mapping[str, str]) -> Path | None:
    name = row.get("mask") or f"{Path(row['image']).stem}_mask.png"
    path = folder / name
    return path if path.is_file() else None


def _edit_mask(folder: Path, row: Mapping[str, str], size) -> np.ndarray | None:
    from PIL import Image

    name = row.get("edit") or row.get("edit_mask") or f"{Path(row['image']).stem}_edit.png"
    path = folder / name
    if not path.is_file():
        return None
    with Image.open(path) as m:
        m = m.convert("L")
        if m.size != size:
            m = m.resize(size, Image.NEAREST)
        return np.asarray(m) > 127


def _patches(image: torch.Tensor, mask: torch.Tensor, cfg: DownstreamConfig, edited: np.ndarray | None = None):
    """Tile one crop: yields (patch [3, s, s] at cfg.image_size, label 0/1) for unambiguous patches."""
    _, h, w = image.shape
    p = max(1, int(round(min(h, w) * cfg.patch_fraction)))
    for y0 in range(0, h - p + 1, p):
        for x0 in range(0, w - p + 1, p):
            cov = float(mask[0, y0:y0 + p, x0:x0 + p].mean())
            if edited is not None and edited[y0:y0 + p, x0:x0 + p].mean() > cfg.max_edited_fraction:
                continue
            if cov >= cfg.ill_min:
                label = 1
            elif cov <= cfg.healthy_max:
                label = 0
            else:
                continue
            patch = image[:, y0:y0 + p, x0:x0 + p][None]
            if p != cfg.image_size:
                patch = F.interpolate(patch, size=(cfg.image_size, cfg.image_size), mode="bilinear",
                                      align_corners=False, antialias=True)
            yield patch[0].clamp(-1, 1), label


def real_examples(real_crops, task: str, classes: Sequence[str], cfg: DownstreamConfig) -> Examples:
    """Examples of the real crops (every crop for "disease", its patches for "ill-vs-healthy")."""
    folder = Path(real_crops)
    size = cfg.image_size if task == "disease" else None
    ds = CropDataset(folder, image_size=size, classes=list(classes))
    xs, ys, patients, crops = [], [], [], []
    for i, row in enumerate(ds.rows):
        patient = _patient_of(row, i, folder)
        image, mask, _ = ds[i]
        if task == "disease":
            if row.get("disease", "") not in classes:
                continue
            xs.append(image)
            ys.append(classes.index(row["disease"]))
            patients.append(patient)
            crops.append(row["image"])
        else:
            if _mask_path(folder, row) is None:
                raise ValueError(f"{folder}: crop {row['image']} has no mask file; the ill-vs-healthy task "
                                 f"labels patches from the masks notebook 01 writes.")
            for patch, label in _patches(image, mask, cfg):
                xs.append(patch)
                ys.append(label)
                patients.append(patient)
                crops.append(row["image"])
    if not xs:
        raise ValueError(f"{folder}: no usable examples for task {task!r} (check masks / thresholds).")
    return Examples(to_uint8(torch.stack(xs)), torch.tensor(ys, dtype=torch.long), patients, crops)


def synthetic_examples(folder, task: str, classes: Sequence[str], cfg: DownstreamConfig, *,
                       real_crops=None, real_rows: Sequence[Mapping[str, str]] = (), seed: int = 0,
                       verbose: bool = True) -> tuple[Examples | None, str]:
    """Labelled examples of a generator folder (see the module docstring for the labelling rule).

    Returns (examples or None, note). ``note`` says how many images were used / why none could be.
    ``crop``/``patient`` of an example name the real source crop/patient ("" when not derived
    from one) for the leakage filter.
    """
    from PIL import Image

    folder = Path(folder)
    rows = [r for r in list_crop_rows(folder) if not Path(r["image"]).stem.endswith("_edit")]
    if cfg.max_synthetic is not None and len(rows) > cfg.max_synthetic:
        pick = np.sort(np.random.default_rng(seed).choice(len(rows), size=cfg.max_synthetic, replace=False))
        rows = [rows[i] for i in pick]
    by_name = {r["image"]: r for r in real_rows}
    xs, ys, patients, crops = [], [], [], []
    unlabelled = unreadable = 0
    for row in rows:
        src_path = source_crop_of(row, folder, real_crops)
        src_row = by_name.get(src_path.name) if src_path is not None else None
        crop = src_row["image"] if src_row else ""
        derived = src_row is not None or bool(row.get("source_crop") or row.get("source_image"))
        # derived from a real crop whose patient is unknown -> UNKNOWN_PATIENT, never used
        patient = ((src_row or {}).get("patient") or row.get("patient") or UNKNOWN_PATIENT) if derived else ""
        try:
            with Image.open(folder / row["image"]) as im:
                im = im.convert("RGB")
                if task == "disease" and im.size != (cfg.image_size, cfg.image_size):
                    im = im.resize((cfg.image_size, cfg.image_size), Image.BICUBIC)
                arr = np.asarray(im, dtype=np.float32)
        except (OSError, ValueError, SyntaxError):
            unreadable += 1
            continue
        image = (torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0).clamp(-1, 1)
        if task == "disease":
            disease = row.get("disease", "") or (src_row or {}).get("disease", "")
            if disease not in classes:
                unlabelled += 1
                continue
            xs.append(image)
            ys.append(list(classes).index(disease))
            patients.append(patient)
            crops.append(crop)
        else:
            mpath = _mask_path(folder, row)
            if mpath is None:
                unlabelled += 1
                continue
            with Image.open(mpath) as m:
                m = m.convert("L")
                if m.size != (image.shape[2], image.shape[1]):
                    m = m.resize((image.shape[2], image.shape[1]), Image.NEAREST)
                mask = torch.from_numpy((np.asarray(m) > 127).astype(np.float32))[None]
            edited = _edit_mask(folder, row, (image.shape[2], image.shape[1]))
            for patch, label in _patches(image, mask, cfg, edited):
                xs.append(patch)
                ys.append(label)
                patients.append(patient)
                crops.append(crop)
    extra = f", {unreadable} unreadable" if unreadable else ""
    if not xs:
        why = ("no image carries a disease label (manifest column disease, or a source_crop of a "
               "labelled real crop)" if task == "disease" else
               "no image has an ill-skin mask (NNNNNN_mask.png) to label patches")
        return None, f"not applicable: {why} ({len(rows)} images{extra})"
    what = "images" if task == "disease" else "patches"
    note = f"{len(xs)} labelled {what} from {len(rows)} images"
    if unlabelled:
        note += f"; {unlabelled} images without a label left out"
    note += extra
    _say(f"{folder}: {note}", verbose)
    return Examples(to_uint8(torch.stack(xs)), torch.tensor(ys, dtype=torch.long), patients, crops), note


# ----------------------------------------------------------------------------------------
# patient-level split
# ----------------------------------------------------------------------------------------
def patient_split(patients: Sequence[str], labels: Sequence[int], seed: int,
                  fractions: Sequence[float] = (0.6, 0.2, 0.2), tries: int = 200) -> np.ndarray:
    """Assign every example to "train"/"val"/"test" with no patient in two splits.

    Patients are shuffled (seeded) and each goes to the split furthest below its target share
    of examples. Up to ``tries`` shuffles are drawn until every class is present in every split
    (else in train and test; else ValueError). Returns an array of split names per example.
    """
    patients = list(patients)
    labels = np.asarray(labels)
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(patients):
        groups.setdefault(p, []).append(i)
    keys = sorted(groups)
    if len(keys) < 3:
        raise ValueError(f"a patient-level train/val/test split needs at least 3 patients, found {len(keys)} "
                         f"({keys}); add data from more patients.")
    frac = np.asarray(fractions, dtype=np.float64)
    if frac.shape != (3,) or (frac <= 0).any():
        raise ValueError(f"fractions must be three positive shares (train, val, test), got {fractions}")
    frac = frac / frac.sum()
    classes = set(labels.tolist())
    rng = np.random.default_rng(seed)
    fallback = None
    for _ in range(tries):
        order = rng.permutation(len(keys))
        counts = np.zeros(3)
        assign = np.empty(len(patients), dtype=object)
        for j, k in enumerate(order):
            idx = groups[keys[k]]
            remaining = len(keys) - j
            empty = [s for s in range(3) if counts[s] == 0]
            if empty and remaining <= len(empty):
                s = empty[0]                               # every split gets a patient
            else:
                s = int(np.argmax(frac * (counts.sum() + len(idx)) - counts))
            counts[s] += len(idx)
            assign[idx] = SPLITS[s]
        present = [set(labels[assign == s].tolist()) for s in SPLITS]
        if all(p == classes for p in present):
            return assign
        if fallback is None and present[0] == classes and present[2] == classes:
            fallback = assign
    if fallback is not None:
        return fallback
    raise ValueError(f"no patient-level split with every class ({sorted(classes)}) in train and test after "
                     f"{tries} shuffles of {len(keys)} patients: add patients or use fewer classes.")


# ----------------------------------------------------------------------------------------
# model, training, evaluation
# ----------------------------------------------------------------------------------------
class SmallCNN(nn.Module):
    """Four conv-BN-ReLU-maxpool blocks, global average pool, linear head.

    ``x``: float [N, 3, S, S] in [-1, 1] -> logits [N, num_classes].
    """

    def __init__(self, num_classes: int, width: int = 32, dropout: float = 0.2):
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


@torch.no_grad()
def predict_proba(model: nn.Module, x: torch.Tensor, *, batch_size: int = 256, device=None) -> np.ndarray:
    """Class probabilities [N, C] (numpy float64) of images ``x`` (uint8 or float in [-1, 1])."""
    model.eval()
    dev = device or next(model.parameters()).device
    out = [F.softmax(model(to_float(x[i:i + batch_size].to(dev))).float(), dim=1).cpu()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out).double().numpy()


def classification_metrics(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """accuracy; F1 (binary: of class 1; multiclass: macro); AUC (binary ROC AUC; multiclass:
    one-vs-rest macro). AUC is nan when a class is missing from ``y``."""
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    y = np.asarray(y)
    n_classes = proba.shape[1]
    pred = proba.argmax(axis=1)
    acc = accuracy_score(y, pred)
    if n_classes == 2:
        f1 = f1_score(y, pred, average="binary", pos_label=1, zero_division=0)
    else:
        f1 = f1_score(y, pred, average="macro", labels=list(range(n_classes)), zero_division=0)
    if len(set(y.tolist())) < n_classes:
        auc = float("nan")
    elif n_classes == 2:
        auc = roc_auc_score(y, proba[:, 1])
    else:
        auc = roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=list(range(n_classes)))
    return {"accuracy": float(acc), "f1": float(f1), "auc": float(auc)}


def _device(name) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_classifier(train: Examples, val: Examples, num_classes: int, cfg: DownstreamConfig, *,
                     seed: int, synthetic: Examples | None = None) -> tuple[nn.Module, dict]:
    """Train :class:`SmallCNN` for exactly ``cfg.steps`` Adam steps of ``cfg.batch_size``.

    Each batch element comes from ``synthetic`` with probability ``cfg.synthetic_share`` (when
    given) and otherwise from ``train``, uniformly with replacement; random flips. Init, batch
    order and flips are drawn from generators seeded with ``seed``, so arms with the same seed
    start from the same network. The state with the lowest validation loss (checked every
    ``cfg.val_every`` steps and at the end) is returned. Info: best_step, best_val_loss.
    """
    dev = _device(cfg.device)
    torch.manual_seed(seed)
    model = SmallCNN(num_classes, width=cfg.width).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(seed)
    pools = [train] + ([synthetic] if synthetic is not None and len(synthetic) else [])
    best = (math.inf, 0, copy.deepcopy(model.state_dict()))
    vx, vy = val.x.to(dev), val.y.to(dev)

    def val_loss() -> float:
        model.eval()
        with torch.no_grad():
            loss = sum(F.cross_entropy(model(to_float(vx[i:i + 256])), vy[i:i + 256], reduction="sum").item()
                       for i in range(0, len(vx), 256))
        model.train()
        return loss / max(1, len(vx))

    model.train()
    for step in range(1, cfg.steps + 1):
        if len(pools) == 2:
            from_syn = torch.rand(cfg.batch_size, generator=g) < cfg.synthetic_share
        else:
            from_syn = torch.zeros(cfg.batch_size, dtype=torch.bool)
        xb = torch.empty(cfg.batch_size, *train.x.shape[1:], dtype=train.x.dtype)
        yb = torch.empty(cfg.batch_size, dtype=torch.long)
        for k, pool in enumerate(pools):
            sel = from_syn if k == 1 else ~from_syn
            n = int(sel.sum())
            if n:
                idx = torch.randint(len(pool), (n,), generator=g)
                xb[sel], yb[sel] = pool.x[idx], pool.y[idx]
        flip = torch.rand(cfg.batch_size, 2, generator=g) < 0.5
        xb = torch.where(flip[:, 0, None, None, None], xb.flip(3), xb)
        xb = torch.where(flip[:, 1, None, None, None], xb.flip(2), xb)
        loss = F.cross_entropy(model(to_float(xb.to(dev))), yb.to(dev))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"classifier loss became {loss.item()} at step {step}: lower lr (now {cfg.lr}).")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg.val_every == 0 or step == cfg.steps:
            vl = val_loss()
            if vl < best[0]:
                best = (vl, step, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    model.eval()
    return model, {"best_step": best[1], "best_val_loss": best[0]}


# ----------------------------------------------------------------------------------------
# experiment
# ----------------------------------------------------------------------------------------
@dataclass
class DownstreamResult:
    task: str
    classes: list[str]
    config: dict
    per_seed: list[dict]                    # one row per (arm, seed)
    summary: list[dict]                     # one row per arm: means, CIs, gains
    notes: dict[str, str] = field(default_factory=dict)   # generator -> labelling note / why not applicable


def t_interval(values: Sequence[float], confidence: float = 0.95,
               bounds: tuple[float, float] | None = None) -> tuple[float, float, float]:
    """(mean, low, high) Student-t confidence interval of the mean (nan values ignored);
    low/high nan for < 2 values; clipped to ``bounds`` (the metric's range) when given."""
    from scipy import stats

    v = np.asarray([x for x in values if not np.isnan(x)], dtype=np.float64)
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(v.mean())
    if len(v) < 2:
        return m, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    low, high = m - half, m + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return m, low, high


METRICS = ("accuracy", "f1", "auc")


def summarize(per_seed: Sequence[Mapping], confidence: float = 0.95) -> list[dict]:
    """Per arm: ``<metric>``, ``<metric> low``, ``<metric> high`` (t-interval over seeds, clipped
    to [0, 1]) and, for the mixed arms, ``<metric> gain`` (+ low/high, clipped to [-1, 1]): the
    paired per-seed difference to real-only."""
    arms = list(dict.fromkeys(r["arm"] for r in per_seed))
    base = {r["seed"]: r for r in per_seed if r["arm"] == REAL_ONLY}
    out = []
    for arm in arms:
        rows = [r for r in per_seed if r["arm"] == arm]
        s = {"arm": arm, "generator": rows[0].get("generator", ""), "seeds": len(rows),
             "n_train_real": int(np.mean([r["n_train_real"] for r in rows])),
             "n_train_synthetic": int(np.mean([r["n_train_synthetic"] for r in rows]))}
        for m in METRICS:
            s[m], s[f"{m} low"], s[f"{m} high"] = t_interval([r[m] for r in rows], confidence, (0.0, 1.0))
        if arm != REAL_ONLY and base:
            for m in METRICS:
                diffs = [r[m] - base[r["seed"]][m] for r in rows if r["seed"] in base]
                s[f"{m} gain"], s[f"{m} gain low"], s[f"{m} gain high"] = t_interval(diffs, confidence, (-1.0, 1.0))
        out.append(s)
    return out


def run_downstream(real_crops, generators: Mapping[str, str | Path | None], *,
                   seeds: Sequence[int] = (0, 1, 2), config: DownstreamConfig | None = None,
                   progress: bool = True, verbose: bool = True) -> DownstreamResult:
    """Train real-only and real + each generator's images, ``len(seeds)`` times each.

    ``generators`` maps a name to a crop-format folder (None / missing folders are left out with a
    note). Returns per-seed test metrics on the real test patients and their summary.
    """
    from tqdm.auto import tqdm

    cfg = copy.deepcopy(config) if config is not None else DownstreamConfig()
    real_rows = list_crop_rows(real_crops)
    task = choose_task(real_rows, cfg.task)
    classes = class_names(task, real_rows)
    _say(f"task: {task} ({', '.join(classes)}); {cfg.steps} steps x batch {cfg.batch_size} per run, "
         f"{len(seeds)} seeds", verbose)
    real = real_examples(real_crops, task, classes, cfg)
    notes: dict[str, str] = {}
    synth: dict[str, Examples] = {}
    for name, folder in generators.items():
        if not folder or not Path(folder).is_dir():
            notes[name] = f"not available: folder {folder or '(none)'} missing"
            continue
        ex, note = synthetic_examples(folder, task, classes, cfg, real_crops=real_crops, real_rows=real_rows,
                                      verbose=verbose)
        notes[name] = note
        if ex is not None:
            synth[name] = ex
    arms = [(REAL_ONLY, "", None)] + [(f"real + {n}", n, e) for n, e in synth.items()]
    per_seed: list[dict] = []
    bar = tqdm(total=len(seeds) * len(arms), desc="downstream runs", disable=not progress)
    for seed in seeds:
        split = patient_split(real.patient, real.y.numpy(), seed, cfg.fractions)
        tr, va, te = (real.subset(np.nonzero(split == s)[0]) for s in SPLITS)
        train_patients = set(tr.patient)
        for arm, gen, ex in arms:
            use = None
            if ex is not None:
                # derived from a real crop -> only when that patient is a training patient
                keep = [i for i in range(len(ex)) if not ex.patient[i] or ex.patient[i] in train_patients]
                use = ex.subset(keep)
            model, info = train_classifier(tr, va, len(classes), cfg, seed=seed, synthetic=use)
            m = classification_metrics(te.y.numpy(), predict_proba(model, te.x))
            per_seed.append({"arm": arm, "generator": gen, "seed": seed, **m,
                             "n_train_real": len(tr), "n_train_synthetic": len(use) if use is not None else 0,
                             "n_val": len(va), "n_test": len(te), "test_patients": len(set(te.patient)),
                             "steps": cfg.steps, **info})
            bar.update(1)
    bar.close()
    return DownstreamResult(task, classes, asdict(cfg), per_seed, summarize(per_seed), notes)


def plot_downstream(result: DownstreamResult, *, title: str = "", labels: Mapping[str, str] | None = None):
    """Bar chart of accuracy / F1 / AUC per arm with the t-interval as error bars; ``labels``
    maps a generator name to its displayed name (e.g. with "[RANDOM weights]")."""
    import matplotlib.pyplot as plt

    from .metrics import generator_colour

    labels = dict(labels or {})
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.4 * len(METRICS), 3.2), squeeze=False)
    names = [s["arm"] for s in result.summary]
    for ax, m in zip(axes[0], METRICS):
        mean = np.array([s[m] for s in result.summary], dtype=float)
        low = np.array([s[f"{m} low"] for s in result.summary], dtype=float)
        high = np.array([s[f"{m} high"] for s in result.summary], dtype=float)
        err = np.nan_to_num(np.vstack([mean - low, high - mean]))
        ax.bar(range(len(names)), mean, yerr=err, capsize=4, color=[generator_colour(n) for n in names])
        shown = [n if n == REAL_ONLY else f"real + {labels.get(n[len('real + '):], n[len('real + '):])}" for n in names]
        ax.set_xticks(range(len(names)), shown, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"test {m}", fontsize=9)
    fig.suptitle(title or f"Downstream {result.task} classifier, mean and 95% t-interval over seeds", fontsize=10)
    fig.tight_layout()
    return fig


def comparison_table(image_rows: Sequence[Mapping], downstream: DownstreamResult | None = None, *,
                     generators: Sequence[str] = (), status: Mapping[str, str] | None = None,
                     inpainting: Mapping[str, Mapping] | None = None, labels: Mapping[str, str] | None = None,
                     ) -> list[dict]:
    """One row per generator (in ``generators`` order) after the "real (split half)" reference.

    Merges the image metrics (:func:`skinlib.metrics.compare_folders` rows, matched by name),
    inpainting change (``inpainting[name]``), the downstream summary (real row: real-only
    classifier; generator rows: real + that generator, with the gain over real-only) and a
    ``status`` ("ok" or why the row is empty). ``labels[name]`` is the displayed name.
    """
    from .metrics import REAL_SPLIT_ROW

    status = dict(status or {})
    inpainting = dict(inpainting or {})
    labels = dict(labels or {})
    by_name = {r["name"]: r for r in image_rows}
    arms = {s["arm"]: s for s in (downstream.summary if downstream else [])}
    notes = downstream.notes if downstream else {}
    out = []
    for name in [REAL_SPLIT_ROW, *generators]:
        row: dict = {"name": labels.get(name, name), "status": status.get(name, "ok")}
        row.update({k: v for k, v in by_name.get(name, {}).items() if k != "name"})
        for k, v in inpainting.get(name, {}).items():
            row[f"inpaint {k}"] = v
        arm = arms.get(REAL_ONLY if name == REAL_SPLIT_ROW else f"real + {name}")
        if downstream is not None:
            row["downstream task"] = downstream.task
            row["downstream arm"] = arm["arm"] if arm else ""
            row["downstream note"] = notes.get(name, "") if name != REAL_SPLIT_ROW else "real crops only"
        if arm:
            row.update({k: v for k, v in arm.items() if k not in ("arm", "generator")})
        out.append(row)
    return out


def table_columns(rows: Sequence[Mapping]) -> list[str]:
    """Union of the rows' keys in first-seen order (for CSV writing)."""
    return list(dict.fromkeys(k for r in rows for k in r))
