"""Tables and figures of the evaluation report: generator colours, sample grids, Markdown tables.

(Part of the former ``skinlib/metrics.py``.)
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch


# ----------------------------------------------------------------------------------------
# figures
# ----------------------------------------------------------------------------------------
def generator_colour(name: str) -> str:
    """A fixed matplotlib colour per generator, the same in every figure ("real..." is grey)."""
    key = name.split(" [")[0].removeprefix("real + ").strip()
    if key.startswith("real"):
        return "0.6"
    order = ["dcgan", "cvae", "glide"]
    return f"C{order.index(key) + 1}" if key in order else f"C{5 + sum(map(ord, key)) % 5}"


def sample_grid_figure(sets: Mapping[str, torch.Tensor], *, n: int = 8, seed: int = 0, title: str = ""):
    """Side-by-side sample grids: one column of ``n`` seeded random images per set (uint8
    [N, 3, H, W] each). Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    names = list(sets)
    fig, axes = plt.subplots(n, len(names), figsize=(max(1.6 * len(names), 5.0), 1.6 * n + 0.4), squeeze=False)
    rng = np.random.default_rng(seed)
    for c, name in enumerate(names):
        imgs = sets[name]
        pick = rng.choice(len(imgs), size=min(n, len(imgs)), replace=False)
        for r in range(n):
            ax = axes[r][c]
            ax.axis("off")
            if r < len(pick):
                ax.imshow(imgs[pick[r]].permute(1, 2, 0).numpy())
        axes[0][c].set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------
# inputs of the evaluation notebook
# ----------------------------------------------------------------------------------------
def is_random_model_folder(rows: Sequence[Mapping[str, str]]) -> bool:
    """True when a generator manifest says its images come from a RANDOM-weight model (smoke)."""
    return any(str(r.get("model_is_random", "")).strip().lower() in ("true", "1", "yes") for r in rows)


def _fmt(value, digits: int) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, (float, np.floating)):
        return "nan" if np.isnan(value) else f"{value:.{digits}g}" if abs(value) >= 1000 else f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str], *, digits: int = 3,
                   pm: Mapping[str, str] | None = None, ci: Sequence[str] = ()) -> str:
    """A Markdown table of ``columns``; ``pm`` maps a shown column to the column holding its
    error (shown as ``mean ± err``); columns in ``ci`` are followed by their interval from the
    columns ``<col> low`` / ``<col> high`` (shown as ``mean [low, high]``)."""
    pm = dict(pm or {})
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    lines = []
    for r in rows:
        cells = []
        for c in columns:
            cell = _fmt(r.get(c, ""), digits)
            if c in pm and cell not in ("", "nan") and r.get(pm[c], "") not in ("", None):
                cell += f" ± {_fmt(r[pm[c]], digits)}"
            if c in ci and cell not in ("", "nan") and r.get(f"{c} low", "") not in ("", None):
                cell += f" [{_fmt(r[f'{c} low'], digits)}, {_fmt(r[f'{c} high'], digits)}]"
            cells.append(cell.replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines)
