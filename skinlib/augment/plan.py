"""Augmentation plans: how many GLIDE variants each train crop gets (issue 20, item 1).

A plan is one row per source crop (:data:`PLAN_FIELDS`): ``crop`` (file name in the crops
folder), ``patient``, ``disease``, ``group`` (Fitzpatrick group "I-II" / "III-IV" / "V-VI", or
"unknown" when the patient's type is not recorded), ``fitzpatrick`` (1-6 or empty) and
``variants`` (int >= 0). A *cell* is a (disease, group) pair.

* :func:`plan_uniform` -- the study's N variants per crop;
* :func:`plan_balanced` -- water-filling: the cells with the fewest real crops are filled
  first, until every cell's *resulting* total (real + variants) is equal, as far as the budget
  of variants allows; never more variants than the budget;
* :func:`plan_targets` -- per-cell resulting totals given by hand (:func:`read_targets`);
* :func:`read_plan` / :func:`write_plan` -- the plan CSV; reading validates every row and names
  the row number and the fix.

Within a cell the variants are spread over its crops as evenly as possible (counts differ by
at most one); the crops that get one more are taken in turn from the cell's patients (patients
and crops in a seeded random order), so a small remainder covers many patients. Everything is
deterministic for a given ``seed``. The command line is :func:`main`
(``python -m skinlib.plan``); timings in :mod:`.cost`.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Collection, Mapping, Sequence

import numpy as np

from ..data.metadata import SKIN_GROUPS
from ..io import read_csv, write_csv
from .inpaint import DEFAULT_PROMPT, derive_seed

UNKNOWN_GROUP = "unknown"
GROUPS = tuple(dict.fromkeys(SKIN_GROUPS.values())) + (UNKNOWN_GROUP,)
PLAN_FIELDS = ["crop", "patient", "disease", "group", "fitzpatrick", "variants"]
TARGET_FIELDS = ["disease", "group", "target"]

Cell = tuple[str, str]


def crop_group(patient: str, types: Mapping[str, int]) -> tuple[str, str]:
    """(group, fitzpatrick) of a patient: ("V-VI", "5"), or ("unknown", "") when not recorded."""
    t = types.get(patient)
    return (SKIN_GROUPS[t], str(t)) if t in SKIN_GROUPS else (UNKNOWN_GROUP, "")


def empty_plan(rows: Sequence[Mapping[str, str]], types: Mapping[str, int]) -> list[dict]:
    """Plan rows with 0 variants for crop ``rows`` (the crops manifest's rows, see
    :func:`skinlib.data.dataset.list_crop_rows`); ``types``: patient -> Fitzpatrick type 1-6."""
    out = []
    for r in rows:
        group, fitz = crop_group(r.get("patient", ""), types)
        out.append({"crop": r["image"], "patient": r.get("patient", ""), "disease": r.get("disease", ""),
                    "group": group, "fitzpatrick": fitz, "variants": 0})
    return out


def cell_of(row: Mapping[str, str]) -> Cell:
    return (row.get("disease", "") or "unknown", row["group"])


def plan_uniform(rows: Sequence[Mapping[str, str]], n: int, types: Mapping[str, int]) -> list[dict]:
    """The study's plan: ``n`` variants for every crop of ``rows``."""
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"variants per crop must be an integer >= 0, got {n!r}")
    return [{**p, "variants": int(n)} for p in empty_plan(rows, types)]


def _water_fill(real: Mapping[Cell, int], budget: int, capacity: Mapping[Cell, int | None],
                order: Sequence[Cell]) -> dict[Cell, int]:
    """Variants per cell: the highest common level L with sum(min(max(0, L - real), capacity))
    <= budget, then one more for cells at the level (in ``order``) while budget is left."""
    def need(level: int) -> int:
        return sum(min(max(0, level - real[c]), capacity[c] if capacity[c] is not None else level)
                   for c in real)

    lo, hi = min(real.values()), max(real.values()) + budget
    while lo < hi:                              # largest level whose need fits the budget
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if need(mid) <= budget else (lo, mid - 1)
    add = {c: min(max(0, lo - real[c]), capacity[c] if capacity[c] is not None else lo) for c in real}
    left = budget - sum(add.values())
    for c in order:
        if left == 0:
            break
        if real[c] + add[c] == lo and (capacity[c] is None or add[c] < capacity[c]):
            add[c] += 1
            left -= 1
    return add


def _spread(plan: list[dict], idx: list[int], total: int, rng: np.random.Generator) -> None:
    """Give the crops ``idx`` of one cell ``total`` variants, as evenly as possible; the
    remainder goes to crops taken in turn from the cell's patients (seeded order)."""
    base, rem = divmod(total, len(idx))
    by_patient: dict[str, list[int]] = {}
    for i in idx:
        by_patient.setdefault(plan[i]["patient"], []).append(i)
    patients = [by_patient[p] for p in rng.permutation(sorted(by_patient))]
    for crops in patients:
        rng.shuffle(crops)
    order = [crops[d] for d in range(max(map(len, patients))) for crops in patients if d < len(crops)]
    extra = set(order[:rem])
    for i in idx:
        plan[i]["variants"] = base + (i in extra)


def _cells(plan: Sequence[Mapping]) -> dict[Cell, list[int]]:
    cells: dict[Cell, list[int]] = {}
    for i, p in enumerate(plan):
        cells.setdefault(cell_of(p), []).append(i)
    return cells


def _rng(seed: int, cell: Cell) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, "plan", cell[0], cell[1]))


def plan_balanced(rows: Sequence[Mapping[str, str]], budget_variants: int, types: Mapping[str, int], *,
                  max_per_crop: int | None = None, seed: int = 0, only: Collection[str] | None = None) -> list[dict]:
    """Balanced plan: equalise the resulting (real + variants) totals of the (disease, group)
    cells, filling the smallest cells first, with at most ``budget_variants`` variants in all.

    With a budget too small to reach equality the smallest cells are raised to a common level
    (totals then differ by at most one among the cells that got variants; larger cells get
    none). ``max_per_crop`` caps the variants of any one crop (near-duplicates of one photo
    add little): a cell whose crops all reach the cap stops below the level and its share of
    the budget goes to the other cells. Ties (which cell at the level gets one more) go to the
    cells with fewer real crops, then in a seeded random order. ``only`` (crop file names, e.g.
    the sources notebook 04 spreads over patients): variants go to these crops only, while every
    row still counts as a real crop of its cell; a cell without such a crop gets none.
    """
    if not isinstance(budget_variants, (int, np.integer)) or budget_variants < 0:
        raise ValueError(f"budget_variants must be an integer >= 0, got {budget_variants!r}")
    if max_per_crop is not None and max_per_crop < 0:
        raise ValueError(f"max_per_crop must be >= 0 or None, got {max_per_crop}")
    plan = empty_plan(rows, types)
    if not plan:
        raise ValueError("no crops to plan for: the crops folder's train split is empty")
    cells = _cells(plan)
    real = {c: len(i) for c, i in cells.items()}
    eligible = {c: [i for i in idx if only is None or plan[i]["crop"] in only] for c, idx in cells.items()}
    if only is not None and not any(eligible.values()):
        raise ValueError(f"only={sorted(only)[:3]}...: none of these crops is among the rows to plan")
    capacity = {c: (None if max_per_crop is None and only is None else
                    0 if not eligible[c] else None if max_per_crop is None else max_per_crop * len(eligible[c]))
                for c in cells}
    tie = np.random.default_rng(derive_seed(seed, "plan-ties")).permutation(len(cells))
    order = [c for _, _, c in sorted(zip([real[c] for c in cells], tie, cells))]
    add = _water_fill(real, int(budget_variants), capacity, order)
    for c in cells:
        if eligible[c]:
            _spread(plan, eligible[c], add[c], _rng(seed, c))
    return plan


def plan_pair(rows: Sequence[Mapping[str, str]], sources: Collection[str], runs: int, types: Mapping[str, int], *,
              seed: int = 0) -> dict[str, list[dict]]:
    """Notebook 04's two GLIDE arms on the same source crops (file names ``sources``, e.g. spread
    over patients) and the same number of variants, ``runs x len(sources)``:

    * ``"uniform"``: the study's ``runs`` variants of every source (0 for the other ``rows``);
    * ``"balanced"``: :func:`plan_balanced` with ``only=sources``: the same budget, given to the
      sources of the (disease, Fitzpatrick group) cells with the fewest real crops first;
    * ``"union"``: per crop the larger of the two counts, generated once: variant r of a crop
      is the same image in both arms (its seed depends on the crop and r only), so the balanced
      arm costs only the variants the uniform one lacks.
    """
    chosen = set(sources)
    uniform = [{**p, "variants": int(runs) if p["crop"] in chosen else 0} for p in empty_plan(rows, types)]
    balanced = plan_balanced(rows, int(runs) * len(chosen), types, seed=seed, only=chosen)
    union = [{**u, "variants": max(u["variants"], b["variants"])} for u, b in zip(uniform, balanced)]
    return {"uniform": uniform, "balanced": balanced, "union": union}


def plan_targets(rows: Sequence[Mapping[str, str]], targets: Mapping[Cell, int], types: Mapping[str, int], *,
                 budget_variants: int | None = None, seed: int = 0) -> list[dict]:
    """Plan that brings each cell's resulting total to ``targets[(disease, group)]`` (a cell
    already above its target gets no variant; real crops are never removed). Raises ValueError
    when a train cell has no target, a target names a cell without train crops, or the
    targets need more than ``budget_variants``."""
    plan = empty_plan(rows, types)
    cells = _cells(plan)
    missing = sorted(set(cells) - set(targets))
    if missing:
        raise ValueError(f"the targets give no count for cell(s) {', '.join(map(str, missing))}: "
                         f"add a row (disease, group, target) for each; target 0 = no variants")
    extra = sorted(set(targets) - set(cells))
    if extra:
        raise ValueError(f"the targets name cell(s) without train crops: {', '.join(map(str, extra))}; "
                         f"no variant can be made from no crop. Remove the row(s)")
    add = {c: max(0, int(targets[c]) - len(idx)) for c, idx in cells.items()}
    if budget_variants is not None and sum(add.values()) > budget_variants:
        raise ValueError(f"the targets need {sum(add.values())} variants but the budget is "
                         f"{budget_variants}: lower the targets or raise the budget")
    for c, idx in cells.items():
        _spread(plan, idx, add[c], _rng(seed, c))
    return plan


def read_targets(path) -> dict[Cell, int]:
    """Per-cell targets from a CSV with columns disease, group, target (the resulting count of
    real + synthetic crops of that cell). Errors name the file, the row and the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"targets file {path} does not exist: write a CSV with columns "
                                f"{', '.join(TARGET_FIELDS)}")
    rows = read_csv(path)
    if not rows or set(TARGET_FIELDS) - set(rows[0]):
        raise ValueError(f"{path}: needs the columns {', '.join(TARGET_FIELDS)} and one row per "
                         f"(disease, Fitzpatrick group) cell")
    out: dict[Cell, int] = {}
    for n, r in enumerate(rows, start=2):          # row 1 is the header
        where = f"{path} row {n} ({r['disease']!r}, {r['group']!r})"
        if r["group"] not in GROUPS:
            raise ValueError(f"{where}: group must be one of {', '.join(GROUPS)}")
        out_key = (r["disease"] or "unknown", r["group"])
        if out_key in out:
            raise ValueError(f"{where}: this cell is listed twice; keep one row")
        out[out_key] = _count(r["target"], f"{where}: target")
    return out


def _count(value: str, where: str) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ValueError(f"{where} {value!r} is not a whole number; write an integer >= 0") from None
    if n < 0:
        raise ValueError(f"{where} is {n}: counts must be >= 0 (0 = no variant)")
    return n


def write_plan(path, plan: Sequence[Mapping]) -> Path:
    """Write the plan CSV (:data:`PLAN_FIELDS`, one row per crop)."""
    write_csv(Path(path), [{k: p[k] for k in PLAN_FIELDS} for p in plan], PLAN_FIELDS)
    return Path(path)


def plan_sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_plan(path, rows: Sequence[Mapping[str, str]], split: str | None = "train",
              types: Mapping[str, int] | None = None) -> list[dict]:
    """The plan CSV at ``path`` checked against the crops manifest ``rows`` (every crop of the
    folder, test split included), returned in the manifest's order.

    Refused, naming the row: a crop not in the folder, a crop listed twice, a variants count
    that is not a whole number >= 0, a crop of another split than ``split`` (e.g. a test
    patient's crop: augmenting it would leak the test set into training), a patient or disease
    that differs from the manifest's (a plan written for another crops folder), with ``types``
    (patient -> Fitzpatrick type) a group that differs from the metadata's (the metadata changed
    since the plan was written). A crop of ``split`` that the plan does not list is refused too
    (add it with variants 0). The returned rows' ``group`` / ``fitzpatrick`` are the metadata's
    when ``types`` is given."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"plan {path} does not exist: write one with `python -m skinlib.plan`")
    plan_rows = read_csv(path)
    if not plan_rows or {"crop", "variants"} - set(plan_rows[0]):
        raise ValueError(f"plan {path} needs the columns {', '.join(PLAN_FIELDS)} (at least crop and "
                         f"variants), one row per crop: write it with `python -m skinlib.plan`")
    by_image = {r["image"]: r for r in rows}
    wanted = [r for r in rows if split is None or r.get("split") == split]
    got: dict[str, dict] = {}
    for n, p in enumerate(plan_rows, start=2):
        where = f"plan {path} row {n} (crop {p['crop']!r})"
        src = by_image.get(p["crop"])
        if src is None:
            raise ValueError(f"{where}: no such crop in the crops folder's manifest; the plan was "
                             f"written for another folder? Re-write it with `python -m skinlib.plan`")
        if split is not None and src.get("split") != split:
            raise ValueError(f"{where}: the crop is of patient {src.get('patient')!r} of the "
                             f"{src.get('split') or 'unknown'!r} split, not {split!r}; augmenting it "
                             f"would leak that split into training. Remove the row")
        for col in ("patient", "disease"):
            if col in p and p[col] != src.get(col, ""):
                raise ValueError(f"{where}: {col} {p[col]!r} but the crops manifest says "
                                 f"{src.get(col, '')!r}; re-write the plan for this folder")
        if p["crop"] in got:
            raise ValueError(f"{where}: the crop is listed twice; keep one row")
        got[p["crop"]] = {**{k: p.get(k, "") for k in PLAN_FIELDS},
                          "variants": _count(p["variants"], f"{where}: variants")}
        if types is not None:
            group, fitz = crop_group(src.get("patient", ""), types)
            if p.get("group") and p["group"] != group:
                raise ValueError(f"{where}: group {p['group']!r} but the dataset's metadata gives patient "
                                 f"{src.get('patient')!r} the group {group!r} (the metadata changed since "
                                 f"the plan was written?); re-write the plan")
            got[p["crop"]].update(group=group, fitzpatrick=fitz)
    missing = [r["image"] for r in wanted if r["image"] not in got]
    if missing:
        raise ValueError(f"plan {path} has no row for {len(missing)} crop(s) of the {split or 'whole'} "
                         f"split ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}): "
                         f"add them with variants 0, or re-write the plan")
    return [got[r["image"]] for r in wanted]


def cell_table(plan: Sequence[Mapping]) -> list[dict]:
    """Per cell (sorted by disease, group): ``real`` crops, ``variants``, ``total`` = real +
    variants, ``share_before`` = real / all real crops, ``share_after`` = total / all totals."""
    cells = _cells(plan)
    n_real = len(plan)
    n_total = n_real + sum(int(p["variants"]) for p in plan)
    out = []
    for c in sorted(cells, key=lambda c: (c[0], GROUPS.index(c[1]) if c[1] in GROUPS else 99)):
        v = sum(int(plan[i]["variants"]) for i in cells[c])
        out.append({"disease": c[0], "group": c[1], "real": len(cells[c]), "variants": v,
                    "total": len(cells[c]) + v, "share_before": len(cells[c]) / n_real,
                    "share_after": (len(cells[c]) + v) / n_total})
    return out


def format_table(plan: Sequence[Mapping]) -> str:
    """The printed per-cell plan (see :func:`cell_table`), with a total line."""
    rows = cell_table(plan)
    w = max([len("disease")] + [len(r["disease"]) for r in rows])
    lines = [f"{'disease':<{w}}  {'group':<7} {'real':>5} {'variants':>8} {'total':>6}  "
             f"{'share before':>12} {'share after':>11}"]
    for r in rows:
        lines.append(f"{r['disease']:<{w}}  {r['group']:<7} {r['real']:>5} {r['variants']:>8} "
                     f"{r['total']:>6}  {100 * r['share_before']:>11.1f}% {100 * r['share_after']:>10.1f}%")
    real, var = sum(r["real"] for r in rows), sum(r["variants"] for r in rows)
    lines.append(f"{'all':<{w}}  {'':<7} {real:>5} {var:>8} {real + var:>6}  {100.0:>11.1f}% {100.0:>10.1f}%")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# command line: python -m skinlib.plan
# ----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``python -m skinlib.plan --crops DIR --target balanced|uniform|FILE (--variants-per-crop N
    | --budget B) --out plan.csv``: write the plan, print it per cell with its expected time."""
    import argparse

    from ..data.dataset import list_crop_rows
    from ..data.metadata import skin_types
    from . import cost

    p = argparse.ArgumentParser(prog="python -m skinlib.plan", description=main.__doc__)
    p.add_argument("--crops", required=True, help="crops folder of notebook 01 (train split is planned)")
    p.add_argument("--target", required=True,
                   help='"balanced" (equal (disease, Fitzpatrick group) totals as far as the budget allows), '
                        '"uniform" (N variants per crop, the study) or a CSV of per-cell targets '
                        '(columns disease, group, target = real + synthetic)')
    p.add_argument("--variants-per-crop", type=int, default=None,
                   help="uniform: N per crop; balanced / targets file: a budget of N x train crops variants")
    p.add_argument("--budget", default=None,
                   help="balanced / targets file: 500v (variants), 3600s, 2h (hours on the measured "
                        "device) or 1.5gpu-h (needs a GPU timing)")
    p.add_argument("--out", required=True, help="plan CSV to write")
    p.add_argument("--max-per-crop", type=int, default=None, help="balanced: at most this many variants of one crop")
    p.add_argument("--seed", type=int, default=0, help="seeds the tie-breaks (which crops get one more)")
    p.add_argument("--calibrate", type=int, nargs="?", const=2, default=None, metavar="N",
                   help="measure seconds per variant: N variants (default 2) of the first train crop, one batch")
    p.add_argument("--seconds-per-variant-file", default=None, help="a timing JSON written by --timing-out")
    p.add_argument("--timing-out", default=None, help="write the calibration's timing JSON here")
    p.add_argument("--price-per-gpu-hour", type=float, default=None, help="GPU price; cost = GPU hours x price")
    p.add_argument("--weights", default="official", help="calibration: as python -m skinlib.generate --weights")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--device", default=None, help="calibration device (default: cuda when available, else cpu)")
    p.add_argument("--steps", type=int, default=12, help="calibration: inpainting steps per variant")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="calibration: the prompt (or template) of the generation")
    p.add_argument("--base-respacing", default="100")
    p.add_argument("--upsample-respacing", default="fast27")
    a = p.parse_args(argv)
    if a.calibrate is not None and a.seconds_per_variant_file:
        p.error("give --calibrate or --seconds-per-variant-file, not both")
    if a.variants_per_crop is not None and a.budget is not None:
        p.error("give --variants-per-crop or --budget, not both")
    try:
        rows = list_crop_rows(a.crops, "train")
        types = skin_types(a.crops)
        timing = None
        if a.seconds_per_variant_file:
            timing = cost.read_timing(a.seconds_per_variant_file)
        elif a.calibrate is not None:
            import torch

            from ..glide.pipeline import GlideInpainter

            device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
            engine = GlideInpainter.from_pretrained(a.weights, device=device, cache_dir=a.cache_dir,
                                                    base_respacing=a.base_respacing,
                                                    upsample_respacing=a.upsample_respacing)
            from .prompts import render_prompt

            prompt = render_prompt(a.prompt, rows[0], types.get(rows[0].get("patient", "")))
            timing = cost.calibrate(engine, a.crops, rows[0], variants=a.calibrate, steps=a.steps,
                                    prompt=prompt)
            if a.timing_out:
                cost.save_timing(a.timing_out, timing)
        budget = None
        if a.budget is not None:
            budget = cost.budget_variants(*cost.parse_budget(a.budget), timing)
        elif a.variants_per_crop is not None and a.target != "uniform":
            budget = a.variants_per_crop * len(rows)
        if a.target == "uniform":
            if a.variants_per_crop is None:
                p.error("--target uniform needs --variants-per-crop N (the study: 5)")
            plan = plan_uniform(rows, a.variants_per_crop, types)
        elif a.target == "balanced":
            if budget is None:
                p.error("--target balanced needs --variants-per-crop N (budget N x train crops) or --budget")
            plan = plan_balanced(rows, budget, types, max_per_crop=a.max_per_crop, seed=a.seed)
        else:
            plan = plan_targets(rows, read_targets(a.target), types, budget_variants=budget, seed=a.seed)
    except (ValueError, FileNotFoundError) as e:     # bad input: the message names it and the fix
        p.error(str(e))
    write_plan(a.out, plan)
    total = sum(p["variants"] for p in plan)
    unknown = sum(p["group"] == UNKNOWN_GROUP for p in plan)
    print(f"Plan {a.out} ({a.target}) for {len(plan)} train crops of {a.crops}:")
    print(format_table(plan))
    if budget is not None:
        print(f"Budget: {budget} variants, planned {total}"
              + (f" ({budget - total} unused: every cell is balanced or at --max-per-crop)" if total < budget else ""))
    if unknown:
        print(f"{unknown} crop(s) have no recorded Fitzpatrick type: they form the group 'unknown' "
              f"(metadata.csv in the dataset folder gives the types)")
    present = {cell_of(x) for x in plan}
    diseases = sorted({c[0] for c in present})
    groups = sorted({c[1] for c in present if c[1] != UNKNOWN_GROUP}, key=GROUPS.index)
    empty = [f"({d}, {g})" for d in diseases for g in groups if (d, g) not in present]
    if empty:
        print(f"No train crop, so no variant possible, in: {', '.join(empty)}")
    print(cost.time_text(total, timing, a.price_per_gpu_hour))
    if a.timing_out and timing is not None and a.calibrate is not None:
        print(f"Timing written to {a.timing_out}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
