"""What fills an edited square: the trained small GLIDE-architecture model vs simple fills.

    python benchmarks/bench_glide_fill.py --crops runs/demo/crops --weights runs/demo/glide/model/small

On validation crops (by default the **train**-patient crops the model was not trained on, so
that design choices are never made on test patients; ``--split test`` scores the held-out
patients for a final report), one square of 15/64 of the side (the study's region, on the 64 px grid) is erased per
crop and filled by

* ``mean colour``: the mean colour of the surrounding ring of unedited skin;
* ``blurred``: normalised Gaussian blur of the known pixels (a smooth interpolation);
* ``random weights``: the same small GLIDE architecture with seeded random weights;
* ``trained small``: the small GLIDE-architecture model trained on the run's crops
  (``--weights``, a folder written by ``skinlib.glide.finetune``), same sampler settings as
  notebook 04;
* ``original``: the crop itself (what real skin scores: the floor of every error).

Scores of the edited square against the ring of unedited skin around it (``--ring`` px wide),
per crop, then averaged (lower is better for every error):

* colour: per channel, the Wasserstein-1 distance between the pixel values of the square and of
  the ring (0-255 units; compares the whole colour distribution), ``|Δ mean RGB|`` (0 for the
  mean-colour fill by construction) and ``|log(std_square / std_ring)|`` (contrast);
* texture: ``|log(hf_square / hf_ring)|`` with hf = std of the image minus its Gaussian blur
  (sigma 1.5 px), both 5 px away from the square's border: fine texture of skin (a flat fill
  has hf 0 and a large error);
* seam: ``|log(seam / ring step)|``: mean absolute step across the square's border vs the mean
  step between neighbouring pixels inside the ring.

Prints the table and each baseline's error / the trained model's error (> 1: the trained
model is better), and writes a figure of examples + the bars (``--figure``).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skinlib.data import list_crop_rows, load_crop  # noqa: E402
from skinlib.glide import GlideInpainter, configs  # noqa: E402
from skinlib.glide.pipeline import random_model  # noqa: E402
from skinlib.glide.tokenizer import load_tokenizer  # noqa: E402

SIDE = 60  # 15/64 of 256 px


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(3 * sigma))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float32) ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).to(x)
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def squares(n: int, seed: int) -> list[tuple[int, int]]:
    """Top-left corners on the 64 px grid (x4), away from the border by the ring width."""
    g = np.random.default_rng(seed)
    return [(int(g.integers(4, 64 - 15 - 4)) * 4, int(g.integers(4, 64 - 15 - 4)) * 4) for _ in range(n)]


def fill_mean(img: torch.Tensor, hole: torch.Tensor, ring: torch.Tensor) -> torch.Tensor:
    mean = (img * ring).sum((2, 3), keepdim=True) / ring.sum((2, 3), keepdim=True)
    return torch.where(hole.bool(), mean.expand_as(img), img)


def fill_blur(img: torch.Tensor, hole: torch.Tensor, sigma: float = 12.0) -> torch.Tensor:
    known = 1 - hole
    est = gaussian_blur(img * known, sigma) / gaussian_blur(known, sigma).clamp(min=1e-6)
    return torch.where(hole.bool(), est.clamp(-1, 1), img)


def scores(img: torch.Tensor, hole: torch.Tensor, ring: torch.Tensor) -> dict[str, float]:
    """Errors of the square vs the ring for one image [1, 3, H, W] in [-1, 1] (0-255 units)."""
    x = (img + 1) * 127.5
    h, r = hole[0, 0].bool(), ring[0, 0].bool()
    sq, rg = x[0][:, h], x[0][:, r]
    hf = x - gaussian_blur(x, 1.5)
    # texture inside the square / ring, 5 px (> 3 sigma) away from their common border
    grow = F.max_pool2d(hole.float(), 11, stride=1, padding=5)[0, 0].bool()
    shrink = ~F.max_pool2d(1 - hole.float(), 11, stride=1, padding=5)[0, 0].bool()
    q = torch.linspace(0, 1, 101)
    w1 = (torch.quantile(sq, q, dim=1) - torch.quantile(rg, q, dim=1)).abs().mean()
    out = {"colour W1": float(w1),
           "colour |dmean|": float((sq.mean(1) - rg.mean(1)).abs().mean()),
           "contrast |log std|": float((torch.log(sq.std(1) + 1e-3) - torch.log(rg.std(1) + 1e-3)).abs().mean()),
           "texture |log hf|": float((torch.log(hf[0][:, shrink].std(1) + 1e-3)
                                      - torch.log(hf[0][:, r & ~grow].std(1) + 1e-3)).abs().mean())}
    # seam: steps between pixel pairs straddling the square's border vs neighbour steps in the ring
    ys, xs = h.any(1).nonzero().flatten(), h.any(0).nonzero().flatten()
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    across = torch.cat([(x[0, :, y0, x0:x1] - x[0, :, y0 - 1, x0:x1]).abs().flatten(),
                        (x[0, :, y1 - 1, x0:x1] - x[0, :, y1, x0:x1]).abs().flatten(),
                        (x[0, :, y0:y1, x0] - x[0, :, y0:y1, x0 - 1]).abs().flatten(),
                        (x[0, :, y0:y1, x1 - 1] - x[0, :, y0:y1, x1]).abs().flatten()]).mean()
    dy = (x[0, :, 1:, :] - x[0, :, :-1, :]).abs()[:, r[1:, :] & r[:-1, :]]
    dx = (x[0, :, :, 1:] - x[0, :, :, :-1]).abs()[:, r[:, 1:] & r[:, :-1]]
    inside = torch.cat([dy.flatten(), dx.flatten()]).mean()
    out["seam |log ratio|"] = float(abs(math.log((float(across) + 1e-3) / (float(inside) + 1e-3))))
    return out


def scored_rows(crops, weights, split: str) -> list[dict]:
    """The crops to score. ``"validation"``: train-split crops that the weights were not trained
    on (their ``glide_options.json`` records the split and the seeded selection, re-made with
    ``skinlib.glide.finetune.select_rows``): design choices are made on train patients, never on
    test patients. ``"test"`` / ``"train"`` / ``"all"``: that side of the split."""
    from pathlib import Path

    from skinlib.glide.finetune import select_rows
    from skinlib.io import load_json

    if split != "validation":
        return list_crop_rows(crops, None if split == "all" else split)
    opts_path = Path(weights) / "glide_options.json"
    if not opts_path.is_file():
        raise SystemExit(f"--split validation needs {opts_path} (the training record of --weights) to know which "
                         f"crops the model saw. Fix: point --weights at a folder written by skinlib.glide.finetune, "
                         f"or pass --split test|train|all.")
    models = load_json(opts_path).get("models", {})
    if not models or any("data_selection" not in e for e in models.values()):
        raise SystemExit(f"{opts_path} records no data_selection: cannot tell which crops the model saw; "
                         f"pass --split test|train|all.")
    seen = set()                           # what any of the networks (base, upsampler) was trained on
    for e in models.values():
        split = None if e.get("trained_on_split") == "all" else e.get("trained_on_split") or "train"
        sel = e["data_selection"]
        seen |= {r["image"] for r in select_rows(Path(crops), split, sel.get("max_images"), int(sel.get("seed", 0)))}
    rows = [r for r in list_crop_rows(crops, "train") if r["image"] not in seen]
    if not rows:
        raise SystemExit(f"the model saw every train-split crop of {crops}: no validation crop is left; "
                         f"train it with max_images below the number of train crops.")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--crops", required=True)
    p.add_argument("--weights", required=True, help="weights folder of the trained small model")
    p.add_argument("--split", default="validation",
                   help='crops to score: "validation" (default: train-patient crops the model was not trained on; '
                        'design choices are made here), "test" (held-out patients: only for a final report), '
                        '"train" or "all"')
    p.add_argument("--n", type=int, default=24, help="crops scored")
    p.add_argument("--ring", type=int, default=16, help="width of the ring of unedited skin, px")
    p.add_argument("--base-respacing", default="8")
    p.add_argument("--upsample-respacing", default="3")
    p.add_argument("--upsample-window", type=int, default=128, help="0: the whole image")
    p.add_argument("--upsample-start", type=int, default=5,
                   help="upsampler starts from the noised upsample of the base result at this timestep "
                        "(SDEdit; default: notebook 04's small-model setting); 0: from pure noise")
    p.add_argument("--base-start", type=int, default=250,
                   help="base model starts from a noised smooth fill at this timestep (SDEdit; default: "
                        "notebook 04's small-model setting); 0: from pure noise")
    p.add_argument("--ddim-eta", type=float, default=0.0,
                   help="DDIM steps with this eta (default 0: notebook 04's small-model setting); -1: the "
                        "original's ancestral steps")
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--prompt", default="an image of measles on dark skin")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--figure", default="benchmarks/glide_fill.png")
    p.add_argument("--json", default=None, help="also write the table as JSON here")
    a = p.parse_args(argv)
    a.base_start, a.upsample_start = a.base_start or None, a.upsample_start or None
    a.upsample_window = a.upsample_window or None
    a.ddim_eta = None if a.ddim_eta < 0 else a.ddim_eta
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = scored_rows(a.crops, a.weights, a.split)[:a.n]
    images = torch.stack([load_crop(a.crops, r, 256)[0] for r in rows])
    n = len(rows)
    corners = squares(n, a.seed)
    hole = torch.zeros(n, 1, 256, 256)
    ring = torch.zeros(n, 1, 256, 256)
    for i, (y, x) in enumerate(corners):
        ring[i, :, y - a.ring:y + SIDE + a.ring, x - a.ring:x + SIDE + a.ring] = 1
        hole[i, :, y:y + SIDE, x:x + SIDE] = 1
    ring = ring * (1 - hole)
    keep = 1 - hole

    trained = GlideInpainter.from_pretrained(a.weights, device="cpu", base_respacing=a.base_respacing,
                                             upsample_respacing=a.upsample_respacing,
                                             upsample_window=a.upsample_window,
                                             upsample_start=a.upsample_start, base_start=a.base_start,
                                             ddim_eta=a.ddim_eta)
    rand = GlideInpainter(random_model(trained.base.options, 1), random_model(trained.upsampler.options, 2),
                          load_tokenizer(), base_respacing=a.base_respacing,
                          upsample_respacing=a.upsample_respacing, is_random=True,
                          identity={"weights": "random (benchmark baseline)"}).set_upsample_window(a.upsample_window)
    rand.set_ddim(a.ddim_eta)
    if a.base_start is not None:
        rand.set_base_start(a.base_start)
    if a.upsample_start is not None:
        rand.set_upsample_start(a.upsample_start)
    seeds = [a.seed * 1000 + i for i in range(n)]
    fills, seconds = {"original": images}, {}
    t = time.perf_counter()
    fills["mean colour"] = torch.cat([fill_mean(images[i:i + 1], hole[i:i + 1], ring[i:i + 1]) for i in range(n)])
    fills["blurred"] = torch.cat([fill_blur(images[i:i + 1], hole[i:i + 1]) for i in range(n)])
    seconds["simple fills"] = time.perf_counter() - t
    for name, engine in (("random weights", rand), ("trained small", trained)):
        t = time.perf_counter()
        fills[name] = torch.cat([engine.inpaint(images[i:i + 4], keep[i:i + 4], a.prompt, seeds[i:i + 4],
                                                guidance_scale=a.guidance) for i in range(0, n, 4)])
        seconds[name] = time.perf_counter() - t

    table = {name: {k: float(np.mean([scores(f[i:i + 1], hole[i:i + 1], ring[i:i + 1])[k] for i in range(n)]))
                    for k in scores(images[:1], hole[:1], ring[:1])} for name, f in fills.items()}
    metrics = list(table["original"])
    print(f"{n} {a.split}-split crops of {a.crops}, one {SIDE} px square each; weights {a.weights}: "
          f"{trained.name}; respacing {a.base_respacing}/{a.upsample_respacing}, upsampler window "
          f"{a.upsample_window}, starts {a.base_start}/{a.upsample_start}, DDIM eta {a.ddim_eta}, guidance "
          f"{a.guidance}; torch threads {torch.get_num_threads()}")
    print(f"{'fill':16s}" + "".join(f"{m:>22s}" for m in metrics))
    for name, vals in table.items():
        print(f"{name:16s}" + "".join(f"{vals[m]:22.3f}" for m in metrics))
    print("error of each baseline / error of the trained small model (> 1: trained model better):")
    for name in ("mean colour", "blurred", "random weights"):
        print(f"{name:16s}" + "".join(f"{table[name][m] / max(table['trained small'][m], 1e-9):22.2f}" for m in metrics))
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    if a.json:
        Path(a.json).write_text(json.dumps({"table": table, "n": n, "split": a.split, "weights": trained.name,
                                            "seconds": seconds}, indent=2))
    figure(fills, table, metrics, corners, a, trained.name, n)
    return 0


def figure(fills, table, metrics, corners, a, label: str, n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["original", "mean colour", "blurred", "random weights", "trained small"]
    show = min(5, n)
    picks = sorted({round(i * (n - 1) / max(show - 1, 1)) for i in range(show)})  # spread over the crops
    fig = plt.figure(figsize=(2.2 * len(names), 2.2 * len(picks) + 3.2))
    grid = fig.add_gridspec(len(picks) + 1, len(names), height_ratios=[1] * len(picks) + [1.4])
    for r, i in enumerate(picks):
        y, x = corners[i]
        m = 24  # px of context around the square: the view is zoomed so that the fill is visible
        top, left = max(y - m, 0), max(x - m, 0)
        for c, name in enumerate(names):
            ax = fig.add_subplot(grid[r, c])
            img = ((fills[name][i].permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).byte().numpy()
            ax.imshow(img[top:y + SIDE + m, left:x + SIDE + m], interpolation="nearest")
            ax.add_patch(plt.Rectangle((x - left - 0.5, y - top - 0.5), SIDE, SIDE, fill=False, ec="yellow",
                                       lw=0.8, ls=":"))
            ax.set_axis_off()
            if r == 0:
                ax.set_title(name, fontsize=9)
            if c == 0:
                ax.text(2, 8, f"crop {i}", fontsize=7, color="white")
    ax = fig.add_subplot(grid[len(picks), :])
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        ax.bar(np.arange(len(metrics)) + k * width, [table[name][m] for m in metrics], width, label=name)
    ax.set_xticks(np.arange(len(metrics)) + 0.4 - width / 2, metrics, fontsize=8)
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_ylabel("error vs surrounding skin\n(lower = better; symlog)", fontsize=8)
    ax.legend(fontsize=7, ncol=len(names))
    held = {"test": "held-out ", "validation": "unseen train-patient "}.get(a.split, "")
    fig.suptitle(f"What fills a {SIDE} px square of {held}SYNTHETIC demo crops ({a.split} split, n={n}; "
                 f"views zoomed to the square and its surroundings); trained small = {label}", fontsize=8,
                 wrap=True)
    fig.tight_layout()
    Path(a.figure).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.figure, dpi=90)
    print(f"figure: {a.figure}")


if __name__ == "__main__":
    sys.exit(main())
