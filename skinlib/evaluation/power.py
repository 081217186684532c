"""What the evaluation can detect: the primary endpoint, its minimum detectable gain, and a
multiplicity-corrected verdict across the arms.

* **Primary endpoint** (declared in the settings before the run): the paired AUROC gain over
  ``real only`` at the primary share of the train patients (default: the smallest share, where
  augmentation should matter most).
* **Test of one arm**: t = gain / se with P - 1 degrees of freedom (P test patients; se the
  standard deviation of the two-level bootstrap draws, :mod:`skinlib.evaluation.intervals`);
  two-sided p-value.
* **Minimum detectable gain** (MDG) at 80 % power and two-sided alpha = 0.05:
  (t(0.975, P - 1) + t(0.80, P - 1)) x se. Reported per arm and, for the design, from the
  median se of the generator arms (or of all arms when there is no generator).
* **Holm** step-down correction over the arms that are hypotheses (generators and their
  standard-augmentation combinations; the controls are checks of the protocol, not hypotheses).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

ALPHA = 0.05
POWER = 0.80


def t_test(gain: Mapping) -> dict:
    """``{"t", "p"}`` of a gain summary ``{"mean", "se", "df"}`` (two-sided; nan when unknown)."""
    from scipy.stats import t as student

    mean, se, df = gain.get("mean"), gain.get("se"), gain.get("df")
    if mean is None or se is None or not np.isfinite(mean) or not np.isfinite(se) or not df:
        return {"t": float("nan"), "p": float("nan")}
    if se == 0:
        return {"t": float("inf") if mean else float("nan"), "p": 0.0 if mean else 1.0}
    tv = mean / se
    return {"t": float(tv), "p": float(2 * student.sf(abs(tv), df))}


def minimum_detectable_gain(se: float, df: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest true gain detected with probability ``power`` by a two-sided test at ``alpha``."""
    from scipy.stats import t as student

    if se is None or not np.isfinite(se) or df < 1:
        return float("nan")
    return float((student.ppf(1 - alpha / 2, df) + student.ppf(power, df)) * se)


def holm(pvalues: Mapping[str, float], alpha: float = ALPHA) -> dict[str, dict]:
    """Holm's step-down adjustment: name -> ``{"p", "p_holm", "reject"}`` (nan p-values are
    left out of the family and never rejected)."""
    finite = sorted(((p, n) for n, p in pvalues.items() if np.isfinite(p)))
    m = len(finite)
    out = {n: {"p": p, "p_holm": float("nan"), "reject": False} for n, p in pvalues.items()}
    running = 0.0
    for i, (p, n) in enumerate(finite):
        running = max(running, min(1.0, (m - i) * p))
        out[n]["p_holm"] = running
    stop = False
    for i, (p, n) in enumerate(finite):
        if not stop and p <= alpha / (m - i):
            out[n]["reject"] = True
        else:
            stop = True
    return out


def primary_analysis(arms: Mapping[str, Mapping], fraction: str, hypotheses: list[str], metric: str = "auroc") -> dict:
    """The primary endpoint of every arm: gain, interval, t test, MDG; Holm over ``hypotheses``;
    the design's MDG. ``arms``: name -> the results.json arm entry (``by_fraction``)."""
    rows: dict[str, dict] = {}
    for name, e in arms.items():
        g = e.get("by_fraction", {}).get(fraction, {}).get("gain", {}).get(metric)
        if e.get("status") != "ok" or not g:
            continue
        rows[name] = {"gain": g.get("mean"), "low": g.get("low"), "high": g.get("high"), "se": g.get("se"),
                      "se_patients": g.get("se_patients"), "sd_repetitions": g.get("sd_repetitions"),
                      **t_test(g), "mdg": minimum_detectable_gain(g.get("se"), g.get("df") or 0)}
    family = holm({n: rows[n]["p"] for n in hypotheses if n in rows})
    for n, h in family.items():
        rows[n].update(p_holm=h["p_holm"], significant_holm=h["reject"])
    ses = [rows[n]["mdg"] for n in hypotheses if n in rows and np.isfinite(rows[n]["mdg"])] or \
          [r["mdg"] for r in rows.values() if np.isfinite(r["mdg"])]
    return {"endpoint": f"paired {metric} gain vs real only at {float(fraction):.0%} of the train patients",
            "fraction": fraction, "metric": metric, "alpha": ALPHA, "power": POWER,
            "method": "t = gain / se (se: sd of the two-level bootstrap draws), df = test patients - 1; "
                      "MDG = (t(1 - alpha/2, df) + t(power, df)) x se; Holm over the generator arms",
            "design_mdg": float(np.median(ses)) if ses else float("nan"),
            "hypotheses": [n for n in hypotheses if n in rows], "arms": rows}


def verdict(primary: Mapping, controls: Mapping[str, str]) -> str:
    """One generated sentence per check: the positive control, the negative control, and each
    hypothesis after Holm. ``controls``: {"positive": arm name, "negative": arm name}."""
    rows = primary["arms"]
    share = f"{float(primary['fraction']):.0%}"
    out = []

    def fmt(n):
        r = rows[n]
        return f"{r['gain']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}]"

    pos, neg = controls.get("positive"), controls.get("negative")
    if pos in rows:
        ok = rows[pos]["low"] is not None and rows[pos]["low"] > 0
        out.append(f"Positive control ({pos}) at {share}: {fmt(pos)} — "
                   + ("the protocol sees a real gain." if ok else "its interval includes 0: the protocol did NOT see "
                      "a real gain, so a null result of a generator says nothing."))
    if neg in rows:
        ok = rows[neg]["low"] is not None and rows[neg]["low"] <= 0 <= rows[neg]["high"]
        out.append(f"Negative control ({neg}): {fmt(neg)} — " + ("contains 0, as it must." if ok
                                                                 else "EXCLUDES 0: the protocol is miscalibrated."))
    hyp = primary["hypotheses"]
    if hyp:
        better = [n for n in hyp if rows[n].get("significant_holm") and rows[n]["gain"] > 0]
        worse = [n for n in hyp if rows[n].get("significant_holm") and rows[n]["gain"] < 0]
        out.append(f"Generators (Holm over {len(hyp)} arms, alpha {primary['alpha']}): "
                   + (f"better than real only: {', '.join(better)}; " if better else "none better than real only; ")
                   + (f"worse: {', '.join(worse)}. " if worse else "none significantly worse. ")
                   + f"The design detects a true gain of {primary['design_mdg']:.3f} AUROC with 80 % power; "
                   "smaller gains cannot be excluded.")
    return " ".join(out)


__all__ = ["t_test", "minimum_detectable_gain", "holm", "primary_analysis", "verdict"]
