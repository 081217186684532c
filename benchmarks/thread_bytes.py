"""Does torch's CPU thread count change GLIDE generation's bytes? (the measurement in other/docs/cluster.md)

    python benchmarks/thread_bytes.py                 # 1 vs 2 threads, tiny RANDOM-weight engine

Two measurements in this process, each run once per thread count with everything else equal:

1. one engine call (2 images, one diffusion step per stage): largest difference of the float
   outputs, share of values that differ, and 8-bit values that differ;
2. a generation job (3 sources x 2 runs x 2 inpainting steps, batches of 4, base/upsampler
   respacing 2/2): which output files differ, and by how many channel values / levels.

Weights are random (tiny-random): they amplify small differences more than trained weights would.
Not a test (the numbers depend on the CPU and its math libraries); the test suite checks what the
code does about it (a CPU job refuses to resume with another thread count).
"""
from __future__ import annotations

import argparse
import io
import logging
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from skinlib.augment.generate import generate_variants
from skinlib.glide.pipeline import GlideInpainter
from skinlib.io import write_csv


def make_crops(root: Path, n: int = 3) -> Path:
    """n random 256 px crops with a disc-shaped ill-skin mask (measurement input only)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:256, :256]
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(root / f"{i:06d}.png")
        disc = (yy - 60 - 25 * i) ** 2 + (xx - 128) ** 2 < 50 ** 2
        Image.fromarray(disc.astype(np.uint8) * 255).save(root / f"{i:06d}_mask.png")
        rows.append({"image": f"{i:06d}.png", "mask": f"{i:06d}_mask.png", "disease": "demo",
                     "patient": f"p{i}", "split": "train"})
    write_csv(root / "manifest.csv", rows)
    return root


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "generation.json"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs=2, default=[1, 2], metavar=("A", "B"))
    a = p.parse_args(argv)
    logging.disable(logging.WARNING)
    before = torch.get_num_threads()
    print(f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads by "
          f"default; torch {torch.__version__}; tiny RANDOM weights")

    # 1. one engine call
    engine = GlideInpainter.from_pretrained("tiny-random", device="cpu", base_respacing="1", upsample_respacing="1")
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 256, 256, generator=g) * 2 - 1
    keep = torch.ones(2, 1, 256, 256)
    keep[:, :, 64:124, 64:124] = 0
    outs = {}
    for t in a.threads:
        torch.set_num_threads(t)
        outs[t] = engine.inpaint(images, keep, "an image of measles on dark skin", [1, 2])
    x, y = (outs[t] for t in a.threads)
    level = lambda o: torch.round((o.clamp(-1, 1) + 1) * 127.5)  # noqa: E731
    d = (x - y).abs()
    print(f"one engine call, {a.threads[0]} vs {a.threads[1]} threads: max |difference| {float(d.max()):.3g}, "
          f"{100 * float((d > 0).float().mean()):.1f}% of values differ, "
          f"{int((level(x) != level(y)).sum())} 8-bit values differ")

    # 2. a generation job
    engine = GlideInpainter.from_pretrained("tiny-random", device="cpu", base_respacing="2", upsample_respacing="2")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        crops = make_crops(tmp / "crops")
        out = {}
        for t in a.threads:
            torch.set_num_threads(t)
            generate_variants(crops, tmp / f"t{t}", inpainter=engine, runs=2, steps=2, seed=3, batch_size=4,
                              progress=False, log=lambda *_: None)
            out[t] = files(tmp / f"t{t}")
        fa, fb = (out[t] for t in a.threads)
        differ = [k for k in fa if fa[k] != fb.get(k)]
        variants = [k for k in fa if k.endswith(".png") and "/" not in k and k[:6].isdigit() and len(k) == 10]
        print(f"generation job (3 sources x 2 runs x 2 steps), {a.threads[0]} vs {a.threads[1]} threads: "
              f"{sum(k in differ for k in variants)} of {len(variants)} variants differ")
        for k in variants:
            u = np.asarray(Image.open(io.BytesIO(fa[k]))).astype(int)
            v = np.asarray(Image.open(io.BytesIO(fb[k]))).astype(int)
            print(f"  {k}: {int((u != v).sum())} channel values differ, by up to {int(np.abs(u - v).max())} levels")
    torch.set_num_threads(before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
