"""Throughput of the whole GLIDE augmentation algorithm: batch 1 vs batched over runs and sources.

    python benchmarks/bench_inpaint.py                      # tiny RANDOM-weight engine, CPU-friendly
    python benchmarks/bench_inpaint.py --full --device cuda # full-size GLIDE architecture, RANDOM weights

Both arms run ``skinlib.augment.generate.generate_variants`` (regions, engine calls, bookkeeping, PNG/GIF
writing) on the same crops with the same engine and settings; only ``batch_size`` differs: 1
(one variant per engine call) vs ``sources x runs`` (all variants of the job in every call).
Prints variants/s and inpaints/s of each arm and the speed-up ratio, measured in this process.
Weights are random in both modes (speed does not depend on their values); say so when quoting.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from skinlib.augment.generate import generate_variants
from skinlib.io import write_csv


def make_crops(root: Path, n: int, seed: int = 0) -> Path:
    """n smooth random 256 px crops with a disc-shaped ill-skin mask (benchmark input only)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:256, :256]
    rows = []
    for i in range(n):
        coarse = rng.integers(60, 200, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((256, 256), Image.BICUBIC)
        img.save(root / f"{i:06d}.png")
        disc = ((yy - 128) ** 2 + (xx - 128) ** 2 < 60 ** 2).astype(np.uint8) * 255
        Image.fromarray(disc).save(root / f"{i:06d}_mask.png")
        rows.append({"image": f"{i:06d}.png", "mask": f"{i:06d}_mask.png", "disease": "benchmark", "split": "train"})
    write_csv(root / "manifest.csv", rows)
    return root


def build_engine(args):
    from skinlib.glide.pipeline import GlideInpainter

    if not args.full:
        return GlideInpainter.from_pretrained("tiny-random", device=args.device,
                                              base_respacing=args.base_respacing,
                                              upsample_respacing=args.upsample_respacing)
    from skinlib.glide import configs
    from skinlib.glide.pipeline import random_model
    from skinlib.glide.tokenizer import load_tokenizer

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    base = random_model(configs.BASE_INPAINT, 0).to(device).set_compute_dtype(dtype)
    up = random_model(configs.UPSAMPLE_INPAINT, 1).to(device).set_compute_dtype(dtype)
    return GlideInpainter(base, up, load_tokenizer(), base_respacing=args.base_respacing,
                          upsample_respacing=args.upsample_respacing, is_random=True,
                          identity={"weights": "full-size architecture, RANDOM weights (benchmark)"})


def timed_run(engine, crops: Path, out: Path, args, batch_size: int) -> float:
    if out.exists():
        shutil.rmtree(out)
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    generate_variants(crops, out, inpainter=engine, runs=args.runs, steps=args.steps, seed=0,
                      batch_size=batch_size, progress=False, log=lambda *_: None)
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="full-size GLIDE architecture (random weights)")
    p.add_argument("--sources", type=int, default=2)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--base-respacing", default=None, help='default "2" (tiny) / "100" (--full)')
    p.add_argument("--upsample-respacing", default=None, help='default "2" (tiny) / "fast27" (--full)')
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args(argv)
    args.base_respacing = args.base_respacing or ("100" if args.full else "2")
    args.upsample_respacing = args.upsample_respacing or ("fast27" if args.full else "2")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)      # the tiny engine logs a RANDOM-weights line per call

    engine = build_engine(args)
    n_variants = args.sources * args.runs
    batched = n_variants
    print(f"engine: {'full-size' if args.full else 'tiny'} GLIDE architecture, RANDOM weights, "
          f"device {engine.device}, dtype {engine.dtype}, respacing base {args.base_respacing} / "
          f"upsampler {args.upsample_respacing}, torch threads {torch.get_num_threads()}")
    print(f"job: {args.sources} sources x {args.runs} runs x {args.steps} steps = {n_variants} variants, "
          f"{n_variants * args.steps} inpaints; batch 1 vs batch {batched}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        crops = make_crops(tmp / "crops", args.sources)
        # warm-up (lazy init, allocator, kernel selection) on both batch shapes, not timed
        for bs in (1, batched):
            engine.inpaint(torch.zeros(bs, 3, 256, 256), torch.ones(bs, 1, 256, 256),
                           "warm-up", list(range(bs)))
        times = {1: [], batched: []}
        for _ in range(args.repeats):
            for bs in (1, batched):
                times[bs].append(timed_run(engine, crops, tmp / f"out{bs}", args, bs))
    rate = {bs: n_variants / min(ts) for bs, ts in times.items()}
    for bs in (1, batched):
        print(f"batch {bs:3d}: {min(times[bs]):8.2f} s  {rate[bs]:8.4f} variants/s  "
              f"{rate[bs] * args.steps:8.4f} inpaints/s")
    print(f"speed-up batched / batch 1: {rate[batched] / rate[1]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
