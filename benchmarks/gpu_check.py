"""GPU readiness check: one command, under 8 minutes on one recent NVIDIA GPU.

    python benchmarks/gpu_check.py --out DIR                          # CUDA, full size
    python benchmarks/gpu_check.py --out DIR --device cpu --quick     # about a minute on a CPU

Writes ``DIR/gpu_check.json`` (every figure, the device, versions and settings) and prints a
table. What it measures (all models have RANDOM weights: speed and numerics, not image quality):

1. ``glide_precision``: full-size base-inpaint (guidance pair, 64 px) and upsample-inpaint
   (256 px): one forward in float32 (TF32 off) and one in the reduced dtype (fp16 on CUDA), same
   input: max and mean |difference| of the output (eps | v) and the output's scale; then one
   whole inpaint at batch 1 in both dtypes with the same seed: mean/max |difference| in 8-bit
   levels (the diffusion chain amplifies rounding, so this is larger than the forward's).
2. ``glide_latency``: one inpaint (base "100" steps with guidance + upsampler "fast27") at batch
   1, reduced dtype: seconds (target < 2 s on an H100-class GPU) and peak memory.
3. ``glide_throughput``: the same at batch 4, 8, 16: inpaints/s (target > 4/s) and peak memory.
4. ``training``: DCGAN and CVAE, the real ``skinlib.baselines.train.train`` loop with AMP, batch 64,
   at 64/128/256 px: images/s (after a warm-up run).
5. ``shards``: tiny-random GLIDE generation (``skinlib.augment.generate.generate_variants``) as two shards
   and as one shard on this device: every output file byte-identical?
6. ``resume``: training interrupted (``max_steps``) and resumed vs one straight run (max |diff| of
   the final weights; exact on CPU, cuDNN may choose non-deterministic kernels on CUDA), and
   generation with finished variants deleted then resumed vs uninterrupted (bytes).

``--quick`` uses the tiny-random GLIDE configs (the real 64/256 px pipeline), respacings "2"/"2",
batches 1 and 2, 64 px training only, a few steps: for checking the script itself on a CPU. On a
CPU the reduced dtype is bfloat16 (fp16 convolutions are slow or missing there) and peak memory is
not measured (recorded as null).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGETS = {"latency_s_batch1": 2.0, "throughput_inpaints_per_s": 4.0}


@dataclasses.dataclass
class Plan:
    """What to run. ``full()`` is the GPU check; ``quick()`` checks the script on a CPU."""

    glide_configs: str = "full"              # "full" (released sizes) or "tiny" (tiny-random configs)
    base_respacing: str = "100"
    upsample_respacing: str = "fast27"
    latency_repeats: int = 3                 # timed batch-1 inpaints (median reported)
    warmup: bool = True                      # untimed warm-up runs (2-step inpaint per batch, 2 training steps)
    batches: tuple = (4, 8, 16)
    fp32_inpaint: bool = True                # the whole-inpaint fp16-vs-fp32 comparison
    train_models: tuple = ("dcgan", "cvae")
    train_sizes: tuple = (64, 128, 256)
    train_batch: int = 64
    train_steps: int = 12                    # steps per timed epoch
    train_epochs: int = 2                    # timed epochs (each ends with a sample grid + checkpoint)
    shard_sources: int = 4
    shard_runs: int = 2
    shard_steps: int = 2
    shard_batch: int = 2
    shard_respacing: str = "4"
    resume_steps: int = 6                    # training steps before / after the interruption

    @classmethod
    def full(cls) -> "Plan":
        return cls()

    @classmethod
    def quick(cls) -> "Plan":
        return cls(glide_configs="tiny", base_respacing="2", upsample_respacing="2", latency_repeats=1,
                   batches=(2,), train_sizes=(64,), train_batch=8, train_steps=2, train_epochs=1,
                   shard_sources=2, shard_runs=2, shard_steps=1, shard_batch=2, shard_respacing="2",
                   resume_steps=2)


# ------------------------------------------------------------------------------------------ helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> Optional[float]:
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None


def _inputs(n: int, seed: int = 0):
    """n images [n,3,256,256] in [-1, 1] and keep masks [n,1,256,256] (1 = keep; a 96 px hole)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 256, 256, generator=g) * 2 - 1
    keep = torch.ones(n, 1, 256, 256)
    keep[:, :, 80:176, 80:176] = 0
    return images, keep


def _glide_models(plan: Plan):
    from skinlib.glide import configs

    if plan.glide_configs == "full":
        return configs.BASE_INPAINT, configs.UPSAMPLE_INPAINT
    return configs.TINY_RANDOM_BASE, configs.TINY_RANDOM_UPSAMPLE


def _pipe(base, up, plan: Plan, respacings=None):
    """GlideInpainter on the given (prepared) models; RANDOM weights."""
    from skinlib.glide import GlideInpainter, load_tokenizer

    b, u = respacings or (plan.base_respacing, plan.upsample_respacing)
    return GlideInpainter(base, up, load_tokenizer(), base_respacing=b, upsample_respacing=u,
                          is_random=True, identity={"weights": f"{plan.glide_configs}-size RANDOM"})


def _prepared(model, device, dtype):
    """A copy of the float32 random ``model`` on ``device`` in ``dtype`` (channels-last)."""
    import copy

    m = copy.deepcopy(model).to(device).set_compute_dtype(dtype)
    return m.set_channels_last(device.type in ("cpu", "cuda"))


def _time_inpaint(pipe, n: int, device, repeats: int = 1) -> tuple[float, Optional[float], torch.Tensor]:
    images, keep = _inputs(n)
    _reset_peak(device)
    times, out = [], None
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = pipe.inpaint(images, keep, "an image of a maculopapular rash", seeds=list(range(n)))
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), _peak_gib(device), out


# ------------------------------------------------------------------------------------------ GLIDE
def check_glide(plan: Plan, device: torch.device, dtype: torch.dtype, log) -> dict:
    from skinlib.glide import random_model
    from skinlib.glide.pipeline import GuidedModel

    base_opts, up_opts = _glide_models(plan)
    t0 = time.perf_counter()
    base32, up32 = random_model(base_opts, seed=0), random_model(up_opts, seed=1)
    log(f"GLIDE {plan.glide_configs}-size random models built in {time.perf_counter() - t0:.1f} s")
    res: dict[str, Any] = {"configs": plan.glide_configs, "dtype": str(dtype).replace("torch.", ""),
                           "base_respacing": plan.base_respacing, "upsample_respacing": plan.upsample_respacing}

    # 1. one forward, fp32 vs reduced dtype, same input
    prec = {}
    fp32 = _pipe(_prepared(base32, device, torch.float32), _prepared(up32, device, torch.float32), plan)
    low = _pipe(_prepared(base32, device, dtype), _prepared(up32, device, dtype), plan)
    del base32, up32
    g = torch.Generator().manual_seed(0)
    tokens, mask = fp32.tokenizer.tokenize(["an image of a maculopapular rash", ""], fp32.base.text_ctx)
    tokens, mask = tokens.to(device), mask.to(device)
    with torch.no_grad():
        for kind in ("base", "upsampler"):
            size = 64 if kind == "base" else 256
            x = torch.randn(1, 3, size, size, generator=g).to(device)
            img = (torch.rand(1, 3, size, size, generator=g) * 2 - 1).to(device)
            keep = torch.ones(1, 1, size, size, device=device)
            keep[..., size // 4:, :] = 0
            t = torch.tensor([500], device=device)
            outs = []
            for p in (fp32, low):
                if kind == "base":
                    text = p.base.encode_text(tokens, mask)
                    outs.append(GuidedModel(p.base, text, 5.0, img * keep, keep)(x, t).float())
                else:
                    text = p.upsampler.encode_text(tokens[:1], mask[:1])
                    lr = (torch.rand(1, 3, 64, 64, generator=g) * 2 - 1).to(device)
                    outs.append(p.upsampler(x, t, text=text, inpaint_image=img * keep, inpaint_mask=keep,
                                            low_res=lr).float())
            d = (outs[1] - outs[0]).abs()
            prec[kind] = {"forward_max_abs_diff": float(d.max()), "forward_mean_abs_diff": float(d.mean()),
                          "output_max_abs": float(outs[0].abs().max())}
    if plan.fp32_inpaint:
        _, _, a = _time_inpaint(fp32, 1, device)
        _, _, b = _time_inpaint(low, 1, device)
        d = ((a - b).abs() * 127.5)
        prec["inpaint_batch1_8bit_levels"] = {"mean_abs_diff": float(d.mean()), "max_abs_diff": float(d.max())}
    res["precision"] = prec
    del fp32
    if device.type == "cuda":
        torch.cuda.empty_cache()
    log(f"  fp32 vs {res['dtype']}: {json.dumps(prec)}")

    # 2-3. latency and throughput in the reduced dtype (warm-up with a 2-step schedule per batch size)
    warm = _pipe(low.base, low.upsampler, plan, respacings=("2", "2"))  # same modules, short schedule
    rows = []
    for n in (1,) + tuple(plan.batches):
        if plan.warmup:
            _time_inpaint(warm, n, device)
        reps = plan.latency_repeats if n == 1 else 1
        s, peak, _ = _time_inpaint(low, n, device, reps)
        rows.append({"batch": n, "seconds": s, "seconds_per_inpaint": s / n, "inpaints_per_s": n / s,
                     "peak_memory_gib": peak})
        log(f"  batch {n:2d}: {s:.2f} s, {n / s:.2f} inpaints/s, peak memory "
            f"{'n/a' if peak is None else f'{peak:.2f} GiB'}")
    res["latency"] = rows[0]
    res["throughput"] = rows[1:]
    res["targets"] = {
        "latency_batch1_s_below": TARGETS["latency_s_batch1"],
        "latency_met": rows[0]["seconds"] < TARGETS["latency_s_batch1"],
        "throughput_inpaints_per_s_above": TARGETS["throughput_inpaints_per_s"],
        "throughput_met": max((r["inpaints_per_s"] for r in rows[1:]), default=0.0) > TARGETS["throughput_inpaints_per_s"],
        "note": "targets are for the full-size models on an H100-class GPU",
    }
    return res


# ------------------------------------------------------------------------------------------ training
def make_crops(folder: Path, n: int, size: int, seed: int = 0) -> Path:
    """n smooth random RGB crops (content is irrelevant for throughput), manifest with split=train."""
    from skinlib.io import save_png, write_csv

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        save_png(folder / f"{i:06d}.png", np.kron(small, np.ones((size // 8, size // 8, 1), dtype=np.uint8)))
        rows.append({"image": f"{i:06d}.png", "mask": "", "disease": "demo", "patient": f"p{i % 4}",
                     "split": "train"})
    write_csv(folder / "manifest.csv", rows)
    return folder


def _model(name: str, size: int):
    from skinlib.baselines.models import CVAE, DCGAN

    return DCGAN(size) if name == "dcgan" else CVAE(size)


def check_training(plan: Plan, device: torch.device, tmp: Path, log) -> list:
    from skinlib.baselines.train import train

    rows = []
    for size in plan.train_sizes:
        crops = make_crops(tmp / f"crops{size}", plan.train_batch * plan.train_steps, size)
        for name in plan.train_models:
            kw = dict(batch_size=plan.train_batch, device=str(device), amp=True, progress=False,
                      resume=False, grid_size=16)
            if plan.warmup:
                torch.manual_seed(0)
                train(_model(name, size), crops, tmp / f"warm_{name}{size}", epochs=1, max_steps=2, **kw)
            torch.manual_seed(0)
            r = train(_model(name, size), crops, tmp / f"{name}{size}", epochs=plan.train_epochs, **kw)
            rows.append({"model": name, "image_size": size, "batch": plan.train_batch,
                         "amp": device.type == "cuda", "images_per_s": r.images_per_second})
            log(f"  {name} {size} px: {r.images_per_second:.1f} images/s")
    return rows


# ------------------------------------------------------------------------------------------ shards, resume
def _folder_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".shard-" not in p.name and p.name != "generation.json"}


def _gen_crops(folder: Path, n: int) -> Path:
    from PIL import Image

    from skinlib.io import write_csv

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:256, :256]
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")
        disc = (yy - 80 - 20 * i) ** 2 + (xx - 128) ** 2 < 50 ** 2
        Image.fromarray(disc.astype(np.uint8) * 255).save(folder / f"{i:06d}_mask.png")
        rows.append({"image": f"{i:06d}.png", "mask": f"{i:06d}_mask.png", "disease": "demo",
                     "patient": f"p{i}", "source": f"photo{i}.jpg", "split": "train"})
    write_csv(folder / "manifest.csv", rows)
    return folder


def check_generation(plan: Plan, device: torch.device, tmp: Path, log) -> tuple[dict, dict]:
    from skinlib.augment.generate import generate_variants
    from skinlib.glide import GlideInpainter

    engine = GlideInpainter.from_pretrained("tiny-random", device=device, base_respacing=plan.shard_respacing,
                                            upsample_respacing=plan.shard_respacing)
    crops = _gen_crops(tmp / "gen_crops", plan.shard_sources)
    s = dict(inpainter=engine, runs=plan.shard_runs, steps=plan.shard_steps, seed=3,
             batch_size=plan.shard_batch, progress=False, log=lambda *_: None)
    one, two = tmp / "gen_one", tmp / "gen_two"
    generate_variants(crops, one, **s)
    for k in range(2):
        generate_variants(crops, two, shard_index=k, num_shards=2, **s)
    a, b = _folder_bytes(one), _folder_bytes(two)
    differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    shards = {"files": len(a), "identical": not differ, "differing_files": differ[:20],
              "settings": {k: v for k, v in s.items() if k not in ("inpainter", "log")}}
    log(f"  two shards == one shard: {shards['identical']} ({len(a)} files)")

    # resume: delete the last variant's "finished" marker and one of its files, then re-run
    done = sorted((one / "history").glob("[0-9]*.json"))
    victim = done[-1].stem
    for p in [done[-1], one / f"{victim}.png"]:
        p.unlink()
    generate_variants(crops, one, **s)
    c = _folder_bytes(one)
    differ = sorted(k for k in set(a) | set(c) if a.get(k) != c.get(k))
    gen_resume = {"deleted_variant": victim, "identical_after_resume": not differ, "differing_files": differ[:20]}
    log(f"  generation resumed after deleting variant {victim}: identical {not differ}")
    return shards, gen_resume


def check_train_resume(plan: Plan, device: torch.device, tmp: Path, log) -> dict:
    from skinlib.baselines.train import load_checkpoint, train

    crops = make_crops(tmp / "resume_crops", plan.train_batch * plan.resume_steps, 64, seed=1)
    kw = dict(batch_size=plan.train_batch, device=str(device), amp=True, progress=False, grid_size=16)
    straight, parts = tmp / "resume_straight", tmp / "resume_parts"

    def model():  # the same initial weights for both runs (the resumed call loads its checkpoint)
        torch.manual_seed(0)
        return _model("dcgan", 64)

    train(model(), crops, straight, epochs=2, resume=False, **kw)
    train(model(), crops, parts, epochs=2, resume=False, max_steps=plan.resume_steps + 1, **kw)
    train(model(), crops, parts, epochs=2, resume=True, **kw)
    a = load_checkpoint(straight / "checkpoint.pt")["model"]
    b = load_checkpoint(parts / "checkpoint.pt")["model"]
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())
    res = {"model": "dcgan 64 px", "steps": 2 * plan.resume_steps, "interrupted_after": plan.resume_steps + 1,
           "exact": diff == 0.0, "max_abs_weight_diff": diff,
           "note": ("exact" if diff == 0.0 else "not bit-exact: cuDNN picks non-deterministic kernels "
                    "(cudnn.benchmark); the resumed run continues from the same state and differs only "
                    "by float rounding that accumulates over the steps")}
    log(f"  training resume: exact {res['exact']} (max |weight diff| {diff:.3g})")
    return res


# ------------------------------------------------------------------------------------------ main
def _table(report: dict) -> str:
    lines = [f"device: {report['device_name']} ({report['device']}), torch {report['torch']}, "
             f"mode {'quick' if report['quick'] else 'full'}", ""]
    g = report.get("glide")
    if g:
        lines.append(f"GLIDE {g['configs']}-size, RANDOM weights, {g['dtype']}, respacing "
                     f"{g['base_respacing']} + {g['upsample_respacing']}")
        for kind, p in g["precision"].items():
            if kind.startswith("inpaint"):
                lines.append(f"  whole inpaint fp32 vs {g['dtype']}: mean |diff| {p['mean_abs_diff']:.2f}, "
                             f"max {p['max_abs_diff']:.1f} (8-bit levels)")
            else:
                lines.append(f"  {kind:9s} forward fp32 vs {g['dtype']}: max |diff| {p['forward_max_abs_diff']:.3g}, "
                             f"mean {p['forward_mean_abs_diff']:.3g} (|output| up to {p['output_max_abs']:.3g})")
        lines.append(f"  {'batch':>5s} {'s/call':>8s} {'s/inpaint':>10s} {'inpaints/s':>11s} {'peak GiB':>9s}")
        for r in [g["latency"]] + g["throughput"]:
            peak = "n/a" if r["peak_memory_gib"] is None else f"{r['peak_memory_gib']:.2f}"
            lines.append(f"  {r['batch']:5d} {r['seconds']:8.2f} {r['seconds_per_inpaint']:10.3f} "
                         f"{r['inpaints_per_s']:11.2f} {peak:>9s}")
        t = g["targets"]
        lines.append(f"  targets (H100-class, full size): batch 1 < {t['latency_batch1_s_below']} s: "
                     f"{'met' if t['latency_met'] else 'NOT met'}; > {t['throughput_inpaints_per_s_above']} "
                     f"inpaints/s batched: {'met' if t['throughput_met'] else 'NOT met'}")
    if report.get("training"):
        lines += ["", "training (skinlib.baselines.train.train, AMP on CUDA), images/s:"]
        for r in report["training"]:
            lines.append(f"  {r['model']:6s} {r['image_size']:4d} px batch {r['batch']}: {r['images_per_s']:9.1f}")
    if report.get("shards"):
        lines += ["", f"tiny-random generation, two shards == one shard: {report['shards']['identical']}"]
    if report.get("resume"):
        r = report["resume"]
        lines.append(f"generation resume identical: {r['generation']['identical_after_resume']}; training "
                     f"resume exact: {r['training']['exact']} (max |weight diff| {r['training']['max_abs_weight_diff']:.3g})")
    took = ", ".join(f"{k} {v:.0f} s" for k, v in report.get("section_seconds", {}).items())
    lines.append(f"\ntotal {report['seconds']:.0f} s ({took})")
    return "\n".join(lines)


def run_check(out: Path, device: str = "cuda", plan: Optional[Plan] = None, quick: bool = False,
              sections: tuple = ("glide", "training", "generation"), log=print) -> dict:
    """Run the check, write ``out/gpu_check.json`` and return the report."""
    from skinlib.io import save_json

    plan = plan or (Plan.quick() if quick else Plan.full())
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: CUDA is not available here; use --device cpu --quick to check the script")
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 in the precision comparison
        torch.backends.cudnn.allow_tf32 = False
        name = torch.cuda.get_device_name(dev)
    else:
        name = platform.processor() or platform.machine()
    dtype = torch.float16 if dev.type == "cuda" else torch.bfloat16
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"device": str(dev), "device_name": name, "torch": torch.__version__,
                              "python": platform.python_version(), "quick": quick,
                              "plan": dataclasses.asdict(plan), "threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        tmp = Path(tmp)
        report["section_seconds"] = took = {}
        if "glide" in sections:
            t = time.perf_counter()
            report["glide"] = check_glide(plan, dev, dtype, log)
            took["glide"] = time.perf_counter() - t
        if "training" in sections:
            log("training throughput:")
            t = time.perf_counter()
            report["training"] = check_training(plan, dev, tmp, log)
            took["training"] = time.perf_counter() - t
        if "generation" in sections:
            log("sharding and resume:")
            t = time.perf_counter()
            shards, gen_resume = check_generation(plan, dev, tmp, log)
            report["shards"] = shards
            report["resume"] = {"generation": gen_resume, "training": check_train_resume(plan, dev, tmp, log)}
            took["generation_and_resume"] = time.perf_counter() - t
    report["seconds"] = time.perf_counter() - t0
    save_json(out / "gpu_check.json", report)
    log("\n" + _table(report))
    log(f"\nwritten: {out / 'gpu_check.json'}")
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for gpu_check.json")
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--quick", action="store_true", help="tiny GLIDE configs and few steps (script check)")
    args = ap.parse_args(argv)
    report = run_check(Path(args.out), args.device, quick=args.quick)
    ok = report["shards"]["identical"] and report["resume"]["generation"]["identical_after_resume"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
