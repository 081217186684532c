"""Time one sampling step of the full-size GLIDE inpainting models (random weights, no download).

    python benchmarks/bench_glide.py            # base batch 1 and 4, upsampler batch 1 and 2
    python benchmarks/bench_glide.py --quick    # batch 1 only, fewer repeats
    python benchmarks/bench_glide.py --device cuda --dtypes float32,float16

One base step = one forward of the guidance pair (2n rows at 64 px) + the diffusion update;
one upsampler step = one forward of n rows at 256 px + the update. Variants:

* ``baseline``  in-process baseline: our model run the plain way - explicit softmax attention,
                float32, NCHW layout, text transformer re-run on every step.
* ``fast``      what GlideInpainter does: scaled_dot_product_attention, channels-last layout,
                text encoded once per prompt; in each requested dtype.

Ratios are printed against the in-process baseline (measured here, same process) and against
the original implementation's figures recorded in issue 3 (3.3 s per base forward at batch 2,
8.3 s per upsampler forward at batch 1, fp32, on the project's 2-core CPU machines); those two
numbers are NOT measured by this script. For bf16/fp16 the max |difference| of the model
output and of the step's x_{t-1} against float32 on the same input is printed.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skinlib.glide import configs  # noqa: E402
from skinlib.glide.diffusion import GaussianDiffusion  # noqa: E402
from skinlib.glide.pipeline import GuidedModel, random_model  # noqa: E402

ISSUE_REFERENCE_S = {"base": 3.3, "upsampler": 8.3}  # original code, fp32, 2-core CPU (issue 3)
ISSUE_REFERENCE_BATCH = {"base": 1, "upsampler": 1}  # images per reference forward


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def make_inputs(kind: str, n: int, device: torch.device, text_ctx: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    size = 64 if kind == "base" else 256
    rows = 2 * n if kind == "base" else n
    tokens = torch.randint(0, 50256, (rows, text_ctx), generator=g)
    mask = torch.zeros(rows, text_ctx, dtype=torch.bool)
    mask[:n, :12] = True  # prompts of 12 tokens; base: n empty prompts for guidance
    if kind == "base":
        tokens[n:] = 50256
    image = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    keep = torch.ones(n, 1, size, size)
    keep[..., size // 4:, :] = 0
    x = torch.randn(n, 3, size, size, generator=g)
    low_res = torch.rand(n, 3, 64, 64, generator=g) * 2 - 1 if kind == "upsampler" else None
    to = (lambda t: None if t is None else t.to(device))
    return dict(tokens=to(tokens), mask=to(mask), image=to(image * keep), keep=to(keep), x=to(x),
                low_res=to(low_res), noise=to(torch.randn(n, 3, size, size, generator=g)))


def make_step(kind: str, model, diffusion: GaussianDiffusion, inp: dict, cached_text: bool):
    """A closure running one sampling step (model call(s) + p_sample update) -> (x_prev, model_out)."""
    j = diffusion.num_timesteps // 2
    text = model.encode_text(inp["tokens"], inp["mask"]) if cached_text else None

    def step():
        txt = text if cached_text else model.encode_text(inp["tokens"], inp["mask"])
        x = inp["x"]
        t = torch.full((x.shape[0],), int(diffusion.timestep_map[j]), dtype=torch.long, device=x.device)
        if kind == "base":
            out = GuidedModel(model, txt, 5.0, inp["image"], inp["keep"])(x, t)
        else:
            out = model(x, t, text=txt, inpaint_image=inp["image"], inpaint_mask=inp["keep"], low_res=inp["low_res"])
        res = diffusion.p_sample_step(out, x, j, inp["noise"])
        return res["sample"], out

    return step


def time_interleaved(steps: dict, device, repeats: int) -> dict:
    """Warm every variant up, then time them round-robin (so a change in machine load hits
    all variants alike). Returns name -> (median s, min s, (x_prev, model_out))."""
    results, times = {}, {name: [] for name in steps}
    with torch.no_grad():
        for name, step in steps.items():
            results[name] = step()  # warm-up (oneDNN primitive creation, cuDNN autotune, ...)
            _sync(device)
        for _ in range(repeats):
            for name, step in steps.items():
                t0 = time.perf_counter()
                step()
                _sync(device)
                times[name].append(time.perf_counter() - t0)
    return {n: (statistics.median(t), min(t), results[n]) for n, t in times.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="batch 1 only and 2 timed repeats")
    ap.add_argument("--models", default="base,upsampler")
    ap.add_argument("--base-batches", default="1,4", help="images per base step (forward batch = 2x)")
    ap.add_argument("--upsampler-batches", default="1,2")
    ap.add_argument("--dtypes", default=None, help="fast-variant dtypes (default: float32,bfloat16 on "
                    "CPU, float32,float16 on CUDA/MPS)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    default_dtypes = "float32,bfloat16" if device.type == "cpu" else "float32,float16"
    dtypes = [getattr(torch, d) for d in (args.dtypes or default_dtypes).split(",")]
    repeats = 2 if args.quick else args.repeats
    batches = {"base": [int(b) for b in args.base_batches.split(",")],
               "upsampler": [int(b) for b in args.upsampler_batches.split(",")]}
    if args.quick:
        batches = {k: v[:1] for k, v in batches.items()}

    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"{repeats} timed repeats per variant, interleaved (median s/step; min in brackets). "
          "Full-size models, random weights.")
    if device.type == "cpu":
        print("NOTE: the CPU may be shared with other jobs; figures vary from run to run.")
    opts = {"base": (configs.BASE_INPAINT, "100"), "upsampler": (configs.UPSAMPLE_INPAINT, "fast27")}
    for kind in args.models.split(","):
        options, respacing = opts[kind]
        print(f"\n== {kind}: building full-size models with random weights ...", flush=True)
        baseline = random_model(options, seed=0).to(device).set_naive_attention(True)
        variants = {"baseline": baseline}
        for dtype in dtypes:
            fast = copy.deepcopy(baseline).set_naive_attention(False).set_channels_last(True)
            variants[str(dtype).replace("torch.", "")] = fast.set_compute_dtype(dtype)
        diffusion = GaussianDiffusion.create(options["noise_schedule"], 1000, respacing)
        for n in batches[kind]:
            inp = make_inputs(kind, n, device, baseline.text_ctx)
            print(f"-- {kind}, {n} image(s) per step (forward batch {2 * n if kind == 'base' else n}, "
                  f"{64 if kind == 'base' else 256} px)", flush=True)
            steps = {name: make_step(kind, model, diffusion, inp, cached_text=name != "baseline")
                     for name, model in variants.items()}
            res = time_interleaved(steps, device, repeats)
            base_s, base_min, (ref_x, ref_out) = res.pop("baseline")
            print(f"   baseline  float32  {base_s:7.3f} s/step [{base_min:.3f}]  {n / base_s:7.3f} images/s"
                  "  (naive attention, NCHW, text re-encoded each step)")
            ref = ISSUE_REFERENCE_S[kind] * n / ISSUE_REFERENCE_BATCH[kind]
            scaled = "" if n == ISSUE_REFERENCE_BATCH[kind] else f", {ISSUE_REFERENCE_S[kind]} s x {n} images"
            for name, (s, s_min, (x, out)) in res.items():
                print(f"   fast      {name:8s} {s:7.3f} s/step [{s_min:.3f}]  {n / s:7.3f} images/s  "
                      f"x{base_s / s:4.2f} [x{base_min / s_min:4.2f}] vs in-process baseline  "
                      f"x{ref / s:4.2f} [x{ref / s_min:4.2f}] vs issue's recorded original "
                      f"({ref:.1f} s{scaled}; not measured here)")
                print(f"             vs baseline float32 on the same input: output max|diff| "
                      f"{float((out - ref_out).abs().max()):.3g} (|output| max {float(ref_out.abs().max()):.3g}, "
                      f"mean|diff| {float((out - ref_out).abs().mean()):.3g}), "
                      f"x_(t-1) max|diff| {float((x - ref_x).abs().max()):.3g}", flush=True)
        del variants, baseline


if __name__ == "__main__":
    main()
