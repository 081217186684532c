"""Benchmark: crop extraction (skinlib.data.crops.extract_crops) vs a straightforward per-window
Python loop of the same method, on the SYNTHETIC demo dataset.

    python benchmarks/bench_crops.py [--photos 3] [--data DIR] [--skip-full]

Three methods on the same photos, taking turns photo by photo (so that a change in the load of a
shared machine hits all three alike), each writing the crop folder format:

* ours: ``extract_crops`` (integral-image coverage, vectorised NMS, sampled k-means), without the
  healthy-skin bucket (our addition, which the loops do not make);
* loop, original colour masks: windows scanned one by one in Python, coverage by slicing; every
  window above the coverage threshold gets scikit-image's ``is_low_contrast`` and its
  two-colour mask right in the scan (k-means, k=5, on *all* pixels of the ill and of the
  healthy region, scikit-learn's ``n_init=10``, its default when the study was done); then
  NMS by a pairwise Python loop. This is the original's cost profile (most of the time goes
  into the colour masks);
* loop, same k-means: the same loop with our k-means settings (a fixed-seed sample of 4096
  pixels per region, one restart), so that every file, two-colour masks included, must be
  byte-identical to ours.

Ours differs from the second loop only in *how*: coverage of all windows from one integral
image, NMS with NumPy, contrast and k-means only for the crops NMS keeps. All three write the same
files with the same writer (atomic, fsynced PNGs).

Prints seconds per photo (wall clock and CPU) and both ratios:

* vs the loop with the original colour masks: the speed-up over the original's way of working,
  but the two-colour masks are NOT identical (sampled, one-restart k-means vs all-pixel,
  ten-restart k-means): the script prints how many differ and by how much (per crop, the largest
  |difference| of the ill and of the healthy colour, in 8-bit levels; median and max over crops);
  crops and binary masks are identical;
* vs the loop with the same k-means settings: the speed-up that comes from the code alone; every
  file must be byte-identical.

Exit status 1 when the crops/binary masks differ from either loop, or any file differs from the
same-settings loop. Both sides run k-means single-threaded (threadpoolctl), which is also the
faster setting for these small problems.
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

    from skinlib.data.crops import write_crop_files
    from skinlib.data.photos import load_pair

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


def _png(data: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)), dtype=int)


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

    from skinlib.data.crops import CropParams, extract_crops
    from skinlib.data.photos import find_pairs
    from skinlib.data.demo import DEMO_DEFAULTS, make_demo_dataset

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

        # every method runs on the same photos, one photo at a time in turn (ours, loop with the
        # same k-means, loop with the original colour masks), so that a change in machine load
        # hits all three alike; each photo is copied into a folder of its own for extract_crops
        idx = np.unique(np.linspace(0, len(pairs) - 1, min(args.photos, len(pairs))).astype(int))
        print(f"\nloop comparison on {len(idx)} photos: {', '.join(pairs[i].source for i in idx)}")
        times = {"ours": [], "same": [], "orig": []}  # per photo: (wall, cpu)
        a, b, c = {}, {}, {}
        # the loops make no healthy-skin bucket (our addition for the evaluation): ours skips it too
        ours_kw = dict(progress=False, healthy_max_coverage=None)
        for i in idx:
            pair = pairs[i]
            sub_dir = tmp / f"photo{i}"
            for rel in (pair.source, pair.mask_source):
                (sub_dir / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(data / rel, sub_dir / rel)
            sub_pairs, _ = find_pairs(sub_dir)
            if i == idx[0]:  # untimed warm-up: lazy imports, first-call caches
                extract_crops(sub_dir, tmp / "warm-up", **ours_kw)
            times["ours"].append(timed(extract_crops, sub_dir, tmp / f"ours{i}", **ours_kw))
            with threadpool_limits(limits=1):
                times["same"].append(timed(plain_loop, sub_pairs, tmp / f"same{i}", params,
                                           kmeans_samples=params.kmeans_samples,
                                           kmeans_n_init=params.kmeans_n_init))
                times["orig"].append(timed(plain_loop, sub_pairs, tmp / f"orig{i}", params,
                                           kmeans_samples=None, kmeans_n_init=10))
            for d, name in ((a, "ours"), (b, "same"), (c, "orig")):
                d.update({f"photo{i}/{f}": v for f, v in crop_files(tmp / f"{name}{i}").items()})
        k = len(idx)

        def ratio(name: str, j: int) -> float:  # median over photos of loop time / our time
            return float(np.median([t[j] / o[j] for t, o in zip(times[name], times["ours"])]))

        rows = [("ours: skinlib.data.crops.extract_crops", "ours"),
                ("loop, original colour masks (all pixels, n_init=10)", "orig"),
                (f"loop, same k-means as ours ({params.kmeans_samples} px, n_init={params.kmeans_n_init})", "same")]
        print(f"{'method':62s} {'s/photo wall':>13s} {'s/photo CPU':>12s} {'ratio wall':>11s} {'ratio CPU':>10s}")
        for label, name in rows:
            wall, cpu = (sum(t[j] for t in times[name]) / k for j in (0, 1))
            print(f"{label:62s} {wall:13.3f} {cpu:12.3f} {ratio(name, 0):10.1f}x {ratio(name, 1):9.1f}x")
        print("(ratios: median over the photos of the per-photo ratio)")

        n_crops = sum(1 for f in a if not f.endswith("_mask.png") and not f.endswith("_mask2.png"))
        crops_masks = [f for f in a if not f.endswith("_mask2.png")]
        same_all = a == b
        same_crops = set(a) == set(c) and all(a[f] == c[f] for f in crops_masks)
        n_masks, equal, ill_diff, healthy_diff = 0, 0, [], []
        for f in a:
            if f.endswith("_mask2.png") and f in c:
                n_masks += 1
                equal += a[f] == c[f]
                binary = _png(a[f.replace("_mask2.png", "_mask.png")]) > 0  # 1 = ill pixel
                x, y = _png(a[f]), _png(c[f])
                for region, out in ((binary, ill_diff), (~binary, healthy_diff)):
                    if region.any():  # the region's one colour in each file
                        out.append(int(np.abs(x[region][0] - y[region][0]).max()))
        print(f"\n{n_crops} crops (main + low-contrast bucket)")
        print(f"crops and binary masks identical, ours vs loop with the original colour masks: "
              f"{'yes' if same_crops else 'NO'}")
        print(f"every file byte-identical (two-colour masks included), ours vs loop with the same k-means: "
              f"{'yes' if same_all else 'NO'}")
        if n_masks:
            print(f"two-colour masks, ours (sampled {params.kmeans_samples} px, n_init={params.kmeans_n_init}) vs "
                  f"the original's all-pixel k-means (n_init=10): {equal} of {n_masks} identical")
            for name, d in (("ill colour", ill_diff), ("healthy colour", healthy_diff)):
                if d:
                    print(f"   {name:15s} max |difference| per crop, 8-bit levels: median {np.median(d):.1f}, "
                          f"90th percentile {np.percentile(d, 90):.1f}, max {max(d)} ({len(d)} crops)")
        print(f"\nspeed-up, ours vs loop with the original colour masks: {ratio('orig', 0):.1f}x wall "
              f"({ratio('orig', 1):.1f}x CPU); target >= 20x (two-colour masks differ as above)")
        print(f"speed-up, ours vs loop with the same k-means settings: {ratio('same', 0):.1f}x wall "
              f"({ratio('same', 1):.1f}x CPU); every file identical: {'yes' if same_all else 'NO'}")
        return 0 if (same_crops and same_all) else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
