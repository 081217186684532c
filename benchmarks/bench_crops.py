"""Benchmark: crop extraction (skinlib.crops.extract_crops) vs a straightforward per-window
Python loop of the same method, on the SYNTHETIC demo dataset.

    python benchmarks/bench_crops.py [--photos 3] [--data DIR] [--skip-full]

Three runs over the same photos, each writing the crop folder format:

* ours: ``extract_crops`` (integral-image coverage, vectorised NMS, sampled k-means);
* loop, original colour masks: windows scanned one by one in Python, coverage by slicing; every
  window above the coverage threshold gets scikit-image's ``is_low_contrast`` and its
  two-colour mask right in the scan (k-means, k=5, on *all* pixels of the ill and of the
  healthy region, scikit-learn's ``n_init=10``, its default when the study was done); then
  NMS by a pairwise Python loop. This is the original's cost profile (about 26 s per photo,
  most of it in the colour masks);
* loop, same k-means: the same loop with our k-means settings (a fixed-seed sample of 4096
  pixels per region, one restart), so that every file, two-colour masks included, must be
  byte-identical to ours.

Ours differs in *how*, not *what*: coverage of all windows from one integral image, NMS with
NumPy, contrast and k-means only for the crops NMS keeps, k-means on sampled pixels. All three
write the same files with the same writer (atomic, fsynced PNGs).

Prints seconds per photo (wall clock and CPU) and the ratios, and checks that the crops and
masks are byte-identical (exit status 1 otherwise). Both sides run k-means single-threaded
(threadpoolctl), which is also the faster setting for these small problems.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def plain_loop(pairs, out: Path, p, *, kmeans_samples, kmeans_n_init) -> None:
    """The method written as a plain per-window loop, as the original did it: every window is
    scanned in Python; each window above the coverage threshold gets its contrast test and its
    two-colour mask (k-means) right there; then a pairwise Python NMS picks the crops."""
    from skimage.exposure import is_low_contrast
    from sklearn.cluster import KMeans

    from skinlib.crops import write_crop_files
    from skinlib.data import load_pair

    def dominant(pixels):
        if len(pixels) == 0:
            return None
        if kmeans_samples and len(pixels) > kmeans_samples:
            pixels = pixels[np.random.default_rng(p.seed).choice(len(pixels), size=kmeans_samples, replace=False)]
        km = KMeans(n_clusters=min(p.kmeans_k, len(pixels)), n_init=kmeans_n_init, random_state=p.seed)
        km.fit(pixels.astype(np.float64))
        centre = km.cluster_centers_[np.argmax(np.bincount(km.labels_))]
        return np.clip(np.rint(centre), 0, 255).astype(np.uint8)

    def iou(a, b):
        iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    n_main = n_low = 0
    (out / "low_contrast").mkdir(parents=True, exist_ok=True)
    for pair in pairs:
        photo, mask, _ = load_pair(pair, threshold=p.mask_threshold, max_pixels=p.max_pixels)
        h, w = mask.shape
        windows = []
        for y in range(0, h - p.window + 1, p.stride):
            for x in range(0, w - p.window + 1, p.stride):
                m = mask[y:y + p.window, x:x + p.window]
                coverage = m.mean()
                if coverage > p.min_coverage:
                    crop = photo[y:y + p.window, x:x + p.window]
                    low = is_low_contrast(crop, p.low_contrast_fraction, p.low_contrast_lower_percentile,
                                          p.low_contrast_upper_percentile)
                    mask2 = np.zeros_like(crop)
                    ill, healthy = dominant(crop[m]), dominant(crop[~m])
                    if ill is not None:
                        mask2[m] = ill
                    if healthy is not None:
                        mask2[~m] = healthy
                    windows.append({"box": (x, y, x + p.window, y + p.window), "coverage": coverage,
                                    "crop": crop, "mask": m, "mask2": mask2, "low": low})
        keep = []
        for win in sorted(windows, key=lambda win: -win["coverage"]):
            if all(iou(win["box"], k["box"]) <= p.nms_iou for k in keep):
                keep.append(win)
        keep.sort(key=lambda win: (win["box"][1], win["box"][0]))
        for win in keep:
            if win["low"]:
                write_crop_files(out / "low_contrast", n_low, win["crop"], win["mask"], win["mask2"])
                n_low += 1
            else:
                write_crop_files(out, n_main, win["crop"], win["mask"], win["mask2"])
                n_main += 1


def timed(fn, *args, **kw) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args, **kw)
    return time.perf_counter() - wall, time.process_time() - cpu


def crop_files(folder: Path) -> dict[str, bytes]:
    files = {}
    for sub in (folder, folder / "low_contrast"):
        for f in sorted(sub.glob("[0-9]*.png")):
            files[f.relative_to(folder).as_posix()] = f.read_bytes()
    return files


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=3, help="photos for the loop comparison (spread over the dataset)")
    ap.add_argument("--data", default="", help="dataset folder (default: generate the demo dataset in a temp folder)")
    ap.add_argument("--skip-full", action="store_true", help="do not time extract_crops on the whole dataset")
    args = ap.parse_args(argv)

    from threadpoolctl import threadpool_limits

    from skinlib.crops import CropParams, extract_crops
    from skinlib.data import find_pairs
    from skinlib.demo import DEMO_DEFAULTS, make_demo_dataset

    tmp = Path(tempfile.mkdtemp(prefix="bench_crops_"))
    try:
        if args.data:
            data = Path(args.data)
        else:
            t = time.perf_counter()
            data = make_demo_dataset(tmp / "demo_data", **DEMO_DEFAULTS, progress=False)
            print(f"SYNTHETIC demo dataset generated in {time.perf_counter() - t:.1f} s")
        pairs, _ = find_pairs(data)
        print(f"dataset: {data} ({len(pairs)} photos)")
        params = CropParams()
        if not args.skip_full:
            wall, cpu = timed(extract_crops, data, tmp / "full", progress=False)
            n = len((tmp / "full" / "manifest.csv").read_text().splitlines()) - 1
            print(f"ours on all {len(pairs)} photos: {wall / len(pairs):.3f} s/photo wall, "
                  f"{cpu / len(pairs):.3f} s/photo CPU, {n} crops")

        # the subset every method runs on, copied so that extract_crops sees exactly these photos
        idx = np.unique(np.linspace(0, len(pairs) - 1, min(args.photos, len(pairs))).astype(int))
        subset = [pairs[i] for i in idx]
        sub_dir = tmp / "subset"
        for pair in subset:
            for rel in (pair.source, pair.mask_source):
                (sub_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(data / rel, sub_dir / rel)
        sub_pairs, _ = find_pairs(sub_dir)
        k = len(sub_pairs)
        print(f"\nloop comparison on {k} photos: {', '.join(p.source for p in sub_pairs)}")

        ours = timed(extract_crops, sub_dir, tmp / "ours", progress=False)
        with threadpool_limits(limits=1):
            same = timed(plain_loop, sub_pairs, tmp / "loop_same", params,
                         kmeans_samples=params.kmeans_samples, kmeans_n_init=params.kmeans_n_init)
            orig = timed(plain_loop, sub_pairs, tmp / "loop_original", params, kmeans_samples=None, kmeans_n_init=10)

        rows = [("ours: skinlib.crops.extract_crops", ours),
                ("loop, original colour masks (all pixels, n_init=10)", orig),
                ("loop, same sampled k-means as ours", same)]
        print(f"{'method':56s} {'s/photo wall':>13s} {'s/photo CPU':>12s} {'ratio wall':>11s} {'ratio CPU':>10s}")
        for name, (wall, cpu) in rows:
            print(f"{name:56s} {wall / k:13.3f} {cpu / k:12.3f} {wall / ours[0]:10.1f}x {cpu / ours[1]:9.1f}x")

        a, b, c = crop_files(tmp / "ours"), crop_files(tmp / "loop_same"), crop_files(tmp / "loop_original")
        n_crops = sum(1 for f in a if not f.endswith("_mask.png") and not f.endswith("_mask2.png"))
        crops_masks = [f for f in a if not f.endswith("_mask2.png")]
        same_all = a == b
        same_crops = set(a) == set(c) and all(a[f] == c[f] for f in crops_masks)
        diffs, equal = [], 0
        from PIL import Image
        import io

        for f in a:
            if f.endswith("_mask2.png") and f in c:
                x = np.asarray(Image.open(io.BytesIO(a[f])), dtype=int)
                y = np.asarray(Image.open(io.BytesIO(c[f])), dtype=int)
                diffs.append(np.abs(x - y).max())
                equal += a[f] == c[f]
        print(f"\n{n_crops} crops (main + low-contrast bucket)")
        print(f"identical crops and masks, ours vs original-style loop: {'yes' if same_crops else 'NO'}")
        print(f"every file byte-identical (two-colour masks included), ours vs loop with the same k-means: "
              f"{'yes' if same_all else 'NO'}")
        if diffs:
            print(f"two-colour masks vs the original's full-pixel k-means: {equal} of {len(diffs)} identical, "
                  f"largest colour difference {max(diffs)} / 255 (median {int(np.median(diffs))})")
        ratio = orig[0] / ours[0]
        print(f"\nspeed-up over the original-style loop: {ratio:.1f}x wall ({orig[1] / ours[1]:.1f}x CPU); target >= 20x")
        return 0 if (same_crops and same_all) else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
