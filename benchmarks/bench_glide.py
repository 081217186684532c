"""Time the full-size GLIDE inpainting models against a plain baseline in the same process
(random weights, no download).

    python benchmarks/bench_glide.py                 # base + upsampler, batch 1, 2 threads, 5 rounds
    python benchmarks/bench_glide.py --quick         # 3 rounds
    python benchmarks/bench_glide.py --variants baseline,fp32,bfloat16     # without torch.compile
    python benchmarks/bench_glide.py --device cuda --dtypes float32,float16
    python benchmarks/bench_glide.py --quick --cpu-capability avx2   # then again as on an AVX2-only CPU

What is timed: one sampling step = one network forward + the diffusion update (the update takes
milliseconds). Base: the forward of the guidance pair (2n rows: n prompts + n empty prompts,
64 px). Upsampler: one forward of n rows at 256 px. Variants, all built from the same random
weights:

* ``baseline``      our model run the plain way: explicit score-matrix attention with a float32
                    softmax, float32, NCHW layout, text transformer re-run on every step (as the
                    original implementation does; issue 11 measured the original side by side
                    with this code and found it about as fast: 2.52 s vs 2.51 s per base forward,
                    8.53 s vs 7.50 s per upsampler forward, fp32, 2 threads).
* ``fp32``          what GlideInpainter does by default on a CPU: scaled_dot_product_attention,
                    channels-last layout, text and its attention keys/values computed once per
                    prompt, in-place activations.
* ``fp32-compiled`` the same with ``model.set_compile(True)`` (torch.compile/inductor: fused
                    GroupNorm+SiLU and element-wise chains). Its one-off compilation time is
                    printed separately (it is paid once per input shape and process).
* other dtypes      (``--dtypes``, default bfloat16 on CPU, float16 on GPU) like ``fp32``.

The variants are timed round-robin (baseline, fp32, ..., baseline, fp32, ...) so that a change
in machine load hits all of them alike; the printed ratio is the median over rounds of the
per-round ratio baseline / variant, next to the median times. For each variant the max
|difference| of the model output and of the step's x_(t-1) against the baseline is printed
(float32 variants must differ by float rounding only).

bf16 is fast only on CPUs with native bf16 (AVX-512 BF16, AMX; issue 21): every ratio line names
the CPU model, torch's capability and whether bf16 is native there (:mod:`skinlib.cpu`), each
reduced-precision variant also gets its ratio against ``fp32`` ("vs fp32"), and a bf16 ratio
below 1 is explained. ``--cpu-capability avx2`` then runs the same benchmark again in a
subprocess with ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` (torch's ATen kernels and
oneDNN's convolutions / matrix products limited to AVX2: bf16 is then converted in software, as
on a CPU without native bf16; ``ATEN_CPU_CAPABILITY`` alone leaves oneDNN on its bf16
instructions) and prints both bf16 figures side by side. The two runs follow each other, so a
change of machine load between them shows in their absolute times, not in the paired ratios.
``--json PATH`` writes the figures and the CPU record as JSON.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skinlib import cpu  # noqa: E402
from skinlib.glide import configs  # noqa: E402
from skinlib.glide.diffusion import GaussianDiffusion  # noqa: E402
from skinlib.glide.pipeline import GuidedModel, random_model  # noqa: E402


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


def time_interleaved(steps: dict, device, repeats: int, log=print) -> dict:
    """Run every variant once untimed (warm-up: oneDNN primitives, cuDNN autotune, torch.compile),
    then time them round-robin. Returns name -> dict(times=[s per round], first=s, result=(x, out))."""
    res = {}
    with torch.no_grad():
        for name, step in steps.items():
            t0 = time.perf_counter()
            out = step()
            _sync(device)
            res[name] = {"first": time.perf_counter() - t0, "result": out, "times": []}
            log(f"   warm-up {name}: {res[name]['first']:.1f} s", flush=True)
        for _ in range(repeats):
            for name, step in steps.items():
                t0 = time.perf_counter()
                step()
                _sync(device)
                res[name]["times"].append(time.perf_counter() - t0)
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 timed rounds")
    ap.add_argument("--models", default="base,upsampler")
    ap.add_argument("--base-batches", default="1", help="images per base step (forward batch = 2x)")
    ap.add_argument("--upsampler-batches", default="1")
    ap.add_argument("--variants", default="baseline,fp32,fp32-compiled,lowp",
                    help="any of baseline, fp32, fp32-compiled, lowp (the --dtypes)")
    ap.add_argument("--dtypes", default=None, help="reduced-precision dtypes for 'lowp' (default: bfloat16 "
                    "on CPU, float16 on CUDA/MPS)")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--cpu-capability", default=None, choices=sorted(EMULATE),
                    help="after this run, run again in a subprocess with the CPU limited to this level "
                         "(avx2: as a CPU without native bf16) and print both bf16 figures")
    ap.add_argument("--json", default=None, help="write the figures and the CPU record to this JSON file")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    default_dtypes = "bfloat16" if device.type == "cpu" else "float16"
    wanted = args.variants.split(",")
    dtypes = [getattr(torch, d) for d in (args.dtypes or default_dtypes).split(",")] if "lowp" in wanted else []
    repeats = 3 if args.quick else args.repeats
    batches = {"base": [int(b) for b in args.base_batches.split(",")],
               "upsampler": [int(b) for b in args.upsampler_batches.split(",")]}

    info = cpu.cpu_info()
    tag = (f"[{info['model']}; torch {info['torch_capability']}; bf16 "
           f"{'native' if info['native_bf16'] else 'NOT native'}]")
    figures = {"cpu": info, "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device),
               "repeats": repeats, "results": []}
    load = f", load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs" if hasattr(os, "getloadavg") else ""
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}{load}; "
          f"{repeats} timed rounds, variants interleaved. Full-size models, random weights.")
    if device.type == "cpu":
        print("NOTE: the CPU may be shared with other jobs: compare the ratios (paired per round), "
              "not the absolute times.")
    print(f"CPU: {cpu.describe(info)}")
    dtype_names = {str(d).replace("torch.", "") for d in dtypes}
    opts = {"base": (configs.BASE_INPAINT, "100"), "upsampler": (configs.UPSAMPLE_INPAINT, "fast27")}
    for kind in args.models.split(","):
        options, respacing = opts[kind]
        print(f"\n== {kind}: building full-size models with random weights ...", flush=True)
        plain = random_model(options, seed=0).to(device)
        fast = copy.deepcopy(plain).set_channels_last(device.type in ("cpu", "cuda"))
        variants = {}
        if "baseline" in wanted:
            variants["baseline"] = plain.set_naive_attention(True)
        if "fp32" in wanted:
            variants["fp32"] = fast
        if "fp32-compiled" in wanted:
            compiled = copy.copy(fast).set_compile(True)  # shares the weights of ``fast``
            print(f"   fp32-compiled: {compiled.compile_status}")
            variants["fp32-compiled"] = compiled
        for dtype in dtypes:
            variants[str(dtype).replace("torch.", "")] = copy.deepcopy(fast).set_compute_dtype(dtype)
        if "baseline" not in variants:
            raise SystemExit("--variants must include baseline (the ratios are against it)")
        diffusion = GaussianDiffusion.create(options["noise_schedule"], 1000, respacing)
        for n in batches[kind]:
            inp = make_inputs(kind, n, device, plain.text_ctx)
            print(f"-- {kind}, {n} image(s) per step (forward batch {2 * n if kind == 'base' else n}, "
                  f"{64 if kind == 'base' else 256} px)", flush=True)
            steps = {name: make_step(kind, model, diffusion, inp, cached_text=name != "baseline")
                     for name, model in variants.items()}
            res = time_interleaved(steps, device, repeats)
            base = res["baseline"]
            ref_x, ref_out = base["result"]
            print(f"   {'variant':14s} {'median s':>9s} {'min s':>7s} {'ratio':>7s} (median of per-round "
                  f"baseline/variant; min-time ratio)   output max|diff| vs baseline, x_(t-1) max|diff|")
            slow_bf16 = []
            for name, r in res.items():
                med, mn = statistics.median(r["times"]), min(r["times"])
                ratio = statistics.median(b / v for b, v in zip(base["times"], r["times"]))
                vs_fp32 = (statistics.median(f / v for f, v in zip(res["fp32"]["times"], r["times"]))
                           if name in dtype_names and "fp32" in res else None)
                x, out = r["result"]
                extra = (f"   {float((out - ref_out).abs().max()):.2g} (|output| max {float(ref_out.abs().max()):.2g}), "
                         f"{float((x - ref_x).abs().max()):.2g}") if name != "baseline" else ""
                first = f"; first call {r['first']:.0f} s (compilation)" if name == "fp32-compiled" else ""
                fp32_txt = f"; {vs_fp32:.2f}x vs fp32" if vs_fp32 is not None else ""
                print(f"   {name:14s} {med:9.3f} {mn:7.3f} {ratio:6.2f}x ({min(base['times']) / mn:.2f}x){fp32_txt} "
                      f"{tag}{extra}{first}", flush=True)
                if name == "bfloat16" and min(ratio, vs_fp32 if vs_fp32 is not None else ratio) < 1:
                    slow_bf16.append(name)
                figures["results"].append({"model": kind, "images": n, "variant": name, "median_s": med, "min_s": mn,
                                           "ratio_vs_baseline": ratio, "ratio_vs_fp32": vs_fp32})
            if slow_bf16 and device.type == "cpu":
                print(f"   WHY bf16 is below 1x here: {bf16_reason(info)}")
            if "fp32-compiled" in variants:
                print(f"   fp32-compiled status: {variants['fp32-compiled'].compile_status}")
        del variants, plain, fast
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1, default=str), encoding="utf-8")
    if args.cpu_capability:
        emulated(args.cpu_capability, argv if argv is not None else sys.argv[1:], figures)


#: --cpu-capability: the environment that limits torch (ATen) and oneDNN to that level
EMULATE = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}


def bf16_reason(info: dict) -> str:
    """Why bf16 may be slower than fp32 on this CPU (printed beside a bf16 ratio below 1)."""
    if not info["native_bf16"]:
        return (f"this CPU runs without native bf16 ({cpu.describe(info)}): bf16 is converted to fp32 "
                f"in software, so it costs more than fp32 itself; keep fp32 (or dtype='auto').")
    return (f"the CPU reports native bf16 ({cpu.describe(info)}), so bf16 should be faster: suspect "
            f"machine load (the ratios are paired per round) or a torch/oneDNN that does not use it.")


def child_argv(argv: list) -> list:
    """``argv`` without ``--cpu-capability X`` / ``--json X`` (the emulated run's own arguments)."""
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--cpu-capability", "--json"):
            skip = True
        elif not a.startswith(("--cpu-capability=", "--json=")):
            rest.append(a)
    return rest


def summary_lines(runs: list) -> list:
    """One line per reduced-precision result of each run's figures (``--json`` format): its time
    beside fp32's, its ratios, and the CPU it was measured on."""
    lines = []
    for fig in runs:
        fp32 = {(r["model"], r["images"]): r["median_s"] for r in fig["results"] if r["variant"] == "fp32"}
        for r in fig["results"]:
            if r["ratio_vs_fp32"] is None:
                continue
            lines.append(f"   {r['model']:9s} {r['variant']:9s} {r['median_s']:7.3f} s (fp32 {fp32[r['model'], r['images']]:.3f} s)"
                         f"  {r['ratio_vs_fp32']:5.2f}x vs fp32, {r['ratio_vs_baseline']:5.2f}x vs baseline   "
                         f"[{cpu.describe(fig['cpu'])}]")
    return lines


def emulated(level: str, argv: list, native: dict) -> None:
    """Run this script again with the CPU limited to ``level`` (:data:`EMULATE`) and print the
    reduced-precision ratios of both runs side by side."""
    import tempfile

    env = {**os.environ, **EMULATE[level]}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "emulated.json"
        print(f"\n==== again with {' '.join(f'{k}={v}' for k, v in EMULATE[level].items())} "
              f"(as a CPU without native bf16) ====", flush=True)
        subprocess.run([sys.executable, str(Path(__file__).resolve()), *child_argv(argv), "--json", str(out)],
                       env=env, check=True)
        emu = json.loads(out.read_text(encoding="utf-8"))
    print("\n==== summary: reduced precision on this machine, native and emulated (median s per step) ====")
    print("\n".join(summary_lines([native, emu])))


if __name__ == "__main__":
    main()
