"""Augmentation plans (issue 20, item 1): uniform, balanced (water-filling), per-cell targets,
the plan CSV's validation, budgets and the printed time / cost."""
from __future__ import annotations

from collections import Counter

import pytest

from skinlib.augment.cost import budget_variants, parse_budget, read_timing, save_timing, time_text
from skinlib.augment.plan import (cell_table, format_table, plan_balanced, plan_targets, plan_uniform,
                                  read_plan, read_targets, write_plan)
from skinlib.io import write_csv


def crop_rows(cells: dict[tuple[str, int | None], int], patients_per_cell: int = 2, test: int = 0):
    """Crop rows and Fitzpatrick types: ``cells[(disease, type)]`` train crops each (type None =
    unknown), spread over ``patients_per_cell`` patients; ``test`` test crops of one more patient."""
    rows, types = [], {}
    for (disease, t), n in cells.items():
        for k in range(n):
            patient = f"{disease}-{t}-p{k % patients_per_cell}"
            if t is not None:
                types[patient] = t
            rows.append({"image": f"{len(rows):06d}.png", "patient": patient, "disease": disease, "split": "train"})
    for k in range(test):
        rows.append({"image": f"{len(rows):06d}.png", "patient": "tp", "disease": "rash", "split": "test"})
    types["tp"] = 6
    return rows, types


CELLS = {("rash", 1): 20, ("rash", 3): 8, ("rash", 5): 3, ("hives", 2): 6, ("hives", None): 2}


def totals(plan):
    return {(r["disease"], r["group"]): r["total"] for r in cell_table(plan)}


def test_uniform_is_the_studys_n_per_crop():
    rows, types = crop_rows(CELLS)
    plan = plan_uniform(rows, 5, types)
    assert [p["variants"] for p in plan] == [5] * len(rows)
    assert [p["crop"] for p in plan] == [r["image"] for r in rows]
    assert {p["group"] for p in plan} == {"I-II", "III-IV", "V-VI", "unknown"}
    with pytest.raises(ValueError, match="integer >= 0"):
        plan_uniform(rows, -1, types)


@pytest.mark.parametrize("budget", [0, 1, 7, 20, 41, 83, 1000])
def test_balanced_fills_the_smallest_cells_first_within_the_budget(budget):
    rows, types = crop_rows(CELLS)
    plan = plan_balanced(rows, budget, types, seed=3)
    used = sum(p["variants"] for p in plan)
    assert used == budget                            # no cap: the whole budget, never more
    t = totals(plan)
    real = Counter((p["disease"], p["group"]) for p in plan)
    got = [c for c in t if t[c] > real[c]]           # cells that received variants
    if got:
        level = min(t[c] for c in got)
        assert max(t[c] for c in got) <= level + 1   # equal, up to one, where the budget allows
        assert all(real[c] >= level for c in t if c not in got)   # untouched cells were at or above it
    # within a cell: as even as possible
    for c in t:
        counts = [p["variants"] for p in plan if (p["disease"], p["group"]) == c]
        assert max(counts) - min(counts) <= 1
    if budget >= sum(20 - n for n in CELLS.values()):
        assert max(t.values()) - min(t.values()) <= 1     # a budget big enough balances every cell


def test_balanced_equal_totals_when_the_budget_is_exact_and_deterministic():
    rows, types = crop_rows(CELLS)
    need = sum(20 - n for n in CELLS.values())        # every cell up to the largest (20)
    plan = plan_balanced(rows, need, types)
    assert set(totals(plan).values()) == {20}
    assert plan == plan_balanced(rows, need, types)   # deterministic
    other = plan_balanced(rows, need + 3, types, seed=1)
    assert [p["variants"] for p in plan] != [p["variants"] for p in other]


def test_balanced_spreads_a_remainder_over_patients_and_honours_the_cap():
    rows, types = crop_rows({("rash", 1): 4, ("rash", 5): 4}, patients_per_cell=2)
    plan = plan_balanced(rows, 2, types)             # the two cells are equal: one variant each
    assert sum(p["variants"] for p in plan) == 2
    rows, types = crop_rows({("rash", 1): 10, ("rash", 5): 4}, patients_per_cell=4)
    plan = plan_balanced(rows, 2, types)
    given = [p for p in plan if p["variants"]]
    assert len(given) == 2 and len({p["patient"] for p in given}) == 2 and given[0]["group"] == "V-VI"
    # one patient's crops first in the manifest: the remainder still goes to both patients
    rows = [{"image": f"{i}.png", "patient": "ab"[i // 3], "disease": "rash", "split": "train"} for i in range(6)]
    types = {"a": 5, "b": 5}
    for seed in range(5):
        given = [p for p in plan_balanced(rows, 2, types, seed=seed) if p["variants"]]
        assert sorted(p["patient"] for p in given) == ["a", "b"], seed
    rows, types = crop_rows({("rash", 1): 10, ("rash", 5): 4}, patients_per_cell=4)
    capped = plan_balanced(rows, 100, types, max_per_crop=1)
    assert max(p["variants"] for p in capped) <= 1
    assert sum(p["variants"] for p in capped) == 14  # the cap binds: 4 + 10, budget left unused


def test_hand_written_targets(tmp_path):
    rows, types = crop_rows(CELLS)
    path = tmp_path / "targets.csv"
    write_csv(path, [{"disease": "rash", "group": "I-II", "target": 20}, {"disease": "rash", "group": "III-IV", "target": 10},
                     {"disease": "rash", "group": "V-VI", "target": 12}, {"disease": "hives", "group": "I-II", "target": 3},
                     {"disease": "hives", "group": "unknown", "target": 2}])
    plan = plan_targets(rows, read_targets(path), types)
    assert totals(plan) == {("rash", "I-II"): 20, ("rash", "III-IV"): 10, ("rash", "V-VI"): 12,
                            ("hives", "I-II"): 6, ("hives", "unknown"): 2}   # 6 real > 3: kept
    with pytest.raises(ValueError, match="need 11 variants but the budget is 10"):
        plan_targets(rows, read_targets(path), types, budget_variants=10)
    write_csv(path, [{"disease": "rash", "group": "I-II", "target": 20}])
    with pytest.raises(ValueError, match=r"no count for cell.*'hives', 'I-II'"):
        plan_targets(rows, read_targets(path), types)
    write_csv(path, [{"disease": "rash", "group": "I-II", "target": -2}])
    with pytest.raises(ValueError, match=r"row 2 .*target is -2"):
        read_targets(path)
    write_csv(path, [{"disease": "rash", "group": "I-II", "target": 2}, {"disease": "rash", "group": "dark", "target": 2}])
    with pytest.raises(ValueError, match=r"row 3 .*group must be one of"):
        read_targets(path)


def test_plan_file_round_trip_and_bad_rows_named(tmp_path):
    rows, types = crop_rows(CELLS, test=2)
    train = [r for r in rows if r["split"] == "train"]
    plan = plan_balanced(train, 30, types)
    path = write_plan(tmp_path / "plan.csv", plan)
    back = read_plan(path, rows)
    assert [(p["crop"], p["variants"]) for p in back] == [(p["crop"], p["variants"]) for p in plan]

    def broken(row_index: int, **change):
        bad = [dict(p) for p in plan]
        bad[row_index].update(change)
        return write_plan(tmp_path / "bad.csv", bad)

    with pytest.raises(ValueError, match=r"row 4 \(crop 'nope.png'\): no such crop"):
        read_plan(broken(2, crop="nope.png"), rows)
    with pytest.raises(ValueError, match=r"row 3 .*variants is -1"):
        read_plan(broken(1, variants=-1), rows)
    with pytest.raises(ValueError, match=r"row 2 .*not a whole number"):
        read_plan(broken(0, variants="2.5"), rows)
    test_crop = next(r for r in rows if r["split"] == "test")
    with pytest.raises(ValueError, match=r"row 6 .*patient 'tp' of the 'test' split.*leak"):
        read_plan(broken(4, crop=test_crop["image"], patient="tp", disease="rash"), rows)
    with pytest.raises(ValueError, match=r"row 2 .*patient 'x' but the crops manifest says"):
        read_plan(broken(0, patient="x"), rows)
    with pytest.raises(ValueError, match=r"row 3 .*listed twice"):
        read_plan(broken(1, crop=plan[0]["crop"], patient=plan[0]["patient"]), rows)
    write_plan(tmp_path / "short.csv", plan[1:])
    with pytest.raises(ValueError, match=r"no row for 1 crop.*000000.png.*variants 0"):
        read_plan(tmp_path / "short.csv", rows)


def test_cell_table_shares():
    rows, types = crop_rows({("rash", 1): 6, ("rash", 5): 2})
    plan = plan_balanced(rows, 4, types)
    table = {r["group"]: r for r in cell_table(plan)}
    assert table["V-VI"]["variants"] == 4 and table["V-VI"]["share_before"] == pytest.approx(0.25)
    assert table["V-VI"]["share_after"] == pytest.approx(0.5) and table["I-II"]["share_after"] == pytest.approx(0.5)
    text = format_table(plan)
    assert "V-VI" in text and "25.0%" in text and "50.0%" in text


def test_budget_units_and_time_text(tmp_path):
    cpu = {"seconds_per_variant": 30.0, "variants": 2, "batch_size": 2, "device": "cpu",
           "device_name": "Some CPU", "is_gpu": False, "weights": "w", "steps": 12}
    assert parse_budget("500v") == (500, "variants") and parse_budget("2h") == (2, "hours")
    assert parse_budget("1.5gpu-h") == (1.5, "gpu-hours") and parse_budget("90s") == (90, "seconds")
    with pytest.raises(ValueError, match="with its unit"):
        parse_budget("500")
    assert budget_variants(3600, "seconds", cpu) == 120 and budget_variants(1, "hours", cpu) == 120
    assert budget_variants(100, "seconds", cpu) == 3      # rounded down: never over the budget
    with pytest.raises(ValueError, match="GPU not measured"):
        budget_variants(1, "gpu-hours", cpu)
    with pytest.raises(ValueError, match="needs the measured seconds per variant"):
        budget_variants(1, "hours", None)
    text = time_text(240, cpu, price_per_gpu_hour=3.0)
    assert "expected 2.00 h on cpu" in text and "30 s/variant" in text and "GPU not measured" in text
    assert "cost 0" not in text and "per GPU-hour" not in text
    gpu = {**cpu, "device": "cuda:0", "device_name": "H100", "is_gpu": True, "seconds_per_variant": 1.8}
    assert budget_variants(1, "gpu-hours", gpu) == 2000
    assert "cost 0.36 at 3 per GPU-hour" in time_text(240, gpu, price_per_gpu_hour=3.0)
    save_timing(tmp_path / "t.json", cpu)
    assert read_timing(tmp_path / "t.json")["seconds_per_variant"] == 30.0
    (tmp_path / "bench.json").write_text('{"base": {"fp32": 1.2}}')
    with pytest.raises(ValueError, match="not a calibration record"):
        read_timing(tmp_path / "bench.json")


def test_plan_group_checked_against_the_metadata(tmp_path):
    rows, types = crop_rows({("rash", 5): 2})
    path = write_plan(tmp_path / "plan.csv", plan_uniform(rows, 1, types))
    assert [p["group"] for p in read_plan(path, rows, types=types)] == ["V-VI", "V-VI"]
    changed = {p: 1 for p in types}
    with pytest.raises(ValueError, match=r"row 2 .*group 'V-VI' but the dataset's metadata gives .*'I-II'"):
        read_plan(path, rows, types=changed)
