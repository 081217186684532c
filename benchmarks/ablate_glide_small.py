"""Which training options and sampler settings of notebook 04's small GLIDE-architecture model
fill a square best, chosen on **validation** crops (train-patient crops the model did not see),
never on test patients.

    python -m skinlib run --only 01 --out runs/ablation          # the default demo crops
    python benchmarks/ablate_glide_small.py --crops runs/ablation/crops --out runs/ablation/models

Trains the small model four times with notebook 04's settings (96 crops, 300 base + 100
upsampler steps, batch 8, seed 0), once per combination of

* the loss region: ``image`` (every pixel, as OpenAI trained) or ``hole`` (only the pixels to
  synthesise);
* the timesteps: all 1000, or ``t <= 250`` (base) / ``t <= 20`` (upsampler), where notebook 04
  samples;

then scores each with ``bench_glide_fill.py`` on the same validation crops and squares, and the
default model once more with a few sampler settings (SDEdit start of the base model, its number
of DDIM steps). Prints one markdown table (lower is better in every column), the CPU and the
seconds each part took. Resumes: a trained variant is not trained again.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_glide_fill  # noqa: E402

from skinlib.cpu import describe  # noqa: E402
from skinlib.glide.finetune import train_small  # noqa: E402

TRAINING = {  # name: (loss region, base max_t, upsampler max_t)
    "whole-image loss, all t": ("image", None, None),
    "whole-image loss, t <= 250 / 20": ("image", 250, 20),
    "hole loss, all t": ("hole", None, None),
    "hole loss, t <= 250 / 20 (notebook 04)": ("hole", 250, 20),
}
DEFAULT = "hole loss, t <= 250 / 20 (notebook 04)"
SAMPLERS = {  # extra bench_glide_fill arguments, on the default model
    "base starts at t = 150": ["--base-start", "150"],
    "base 16 DDIM steps instead of 8": ["--base-respacing", "16"],
}
# (Starting either model above its training max_t, e.g. the upsampler from pure noise, is refused
# by the engine for a model trained with max_t: not a row.)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--crops", required=True, help="crops folder of a default notebook-01 run")
    p.add_argument("--out", required=True, help="folder for the trained variants and the score files")
    p.add_argument("--n", type=int, default=24, help="validation crops scored")
    p.add_argument("--steps", type=int, default=300, help="base training steps (notebook 04: 300)")
    p.add_argument("--upsample-steps", type=int, default=100, help="upsampler training steps (notebook 04: 100)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, seconds = {}, {}

    def score(name: str, weights: Path, extra: list) -> dict:
        path = out / f"scores_{len(rows):02d}.json"
        bench_glide_fill.main(["--crops", a.crops, "--weights", str(weights), "--split", "validation",
                               "--n", str(a.n), "--seed", str(a.seed), "--json", str(path),
                               "--figure", str(out / f"fill_{len(rows):02d}.png"), *extra])
        table = json.loads(path.read_text())
        if not rows:  # the reference rows, once: same crops and squares for every model
            rows["(original crop)"] = table["table"]["original"]
            rows["(blurred fill)"] = table["table"]["blurred"]
        rows[name] = table["table"]["trained small"]
        return table

    for name, (region, base_t, up_t) in TRAINING.items():
        weights = out / name.split(" (")[0].replace(" ", "_").replace(",", "").replace("<=", "le").replace("/", "")
        t = time.perf_counter()
        train_small(a.crops, weights, steps=a.steps, upsample_steps=a.upsample_steps, loss_region=region,
                    base_max_t=base_t, upsample_max_t=up_t, seed=a.seed)
        seconds[f"train {name}"] = time.perf_counter() - t
        score(name, weights, [])
        if name == DEFAULT:
            default_weights = weights
    for name, extra in SAMPLERS.items():
        score(f"notebook 04's model, {name}", default_weights, extra)

    metrics = list(rows["(original crop)"])
    print(f"\n{a.n} validation crops of {a.crops} (train patients, not seen in training), one square each; "
          f"CPU: {describe()}")
    print("| model / sampler | " + " | ".join(metrics) + " |")
    print("|---|" + "---|" * len(metrics))
    for name, vals in rows.items():
        print(f"| {name} | " + " | ".join(f"{vals[m]:.2f}" for m in metrics) + " |")
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    (out / "ablation.json").write_text(json.dumps({"rows": rows, "seconds": seconds, "n": a.n,
                                                   "crops": str(a.crops), "cpu": describe()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
