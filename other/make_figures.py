"""Make the README figures in other/ from one of the project's own runs, each with its caption.

    python -m skinlib run --out runs/readme            # (or --smoke: figures then say so)
    python other/make_figures.py runs/readme           # writes other/*.png, *.gif, FIGURES.md

Figures (each made only when its input exists in the run folder; missing ones are listed with
the reason in FIGURES.md, and an older copy of them is removed, so other/ never shows a figure of
another run). An input that exists but lacks what a figure needs (a missing key, a bad value) is
an error: the script names the input, exits 1 and leaves no figure of that job behind.

* ``crops_grid.png``             crops of notebook 01 with their ill-skin mask outlines
* ``glide_examples.png``         GLIDE iterative inpainting, source -> Gen 1..5 (notebook 04)
* ``glide_output_animation.gif`` the inpainting steps of one variant (notebook 04)
* ``glide_edit_overlays.png``    edited areas and step maps of a few variants (notebook 04)
* ``glide_fill_benchmark.png``   benchmarks/bench_glide_fill.py with the small model notebook 04 trained
* ``dcgan_samples.png`` / ``cvae_samples.png``  generated samples (notebooks 02 / 03)
* ``data_efficiency.png``        notebook 05's headline: test AUROC vs share of train patients, every arm

Every caption names the run folder, the stage and settings that produced the figure, and says
SYNTHETIC demo data / tiny RANDOM weights / the small GLIDE-architecture model trained on the run's
crops (not OpenAI's GLIDE) whenever that is what the figure shows.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from skinlib import viz  # noqa: E402
from skinlib.augment import generate  # noqa: E402
from skinlib.data.dataset import crops_are_synthetic, list_crop_rows  # noqa: E402
from skinlib.io import atomic_write_bytes, atomic_write_text, inside, load_json  # noqa: E402

HERE = Path(__file__).resolve().parent


def save_figure(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def run_provenance(run: Path) -> str:
    info = load_json(run / "run.json") if (run / "run.json").is_file() else {}
    parts = [f"run folder `{run.name}`"]
    if info.get("git_commit"):
        parts.append(f"commit {str(info['git_commit'])[:10]}")
    if info.get("smoke"):
        parts.append("SMOKE settings")
    return ", ".join(parts)


def crops_figure(run: Path, out: Path, n: int) -> str:
    crops = run / "crops"
    rows = list_crop_rows(crops)[:n]
    synthetic = crops_are_synthetic(crops)
    images = [crops / r["image"] for r in rows]
    masks = [inside(crops, r.get("mask") or f"{Path(r['image']).stem}_mask.png", what="mask") for r in rows]
    masks = masks if all(m.is_file() for m in masks) else None
    text = f"the first {len(rows)} crops (notebook 01) with ill-skin mask outlines"
    fig = viz.show_grid(images, masks, nrow=8, text=text, synthetic=synthetic)
    save_figure(fig, out / "crops_grid.png")
    return viz.title(text, synthetic) + f"; {run_provenance(run)}, `crops/`."


def glide_settings(samples: Path) -> str:
    g = load_json(samples / "generation.json")
    if g.get("model_is_random"):
        model = generate.RANDOM_LABEL
    else:  # e.g. "small GLIDE-architecture model trained on this run's crops — not OpenAI's GLIDE"
        model = g["model"].get("weights_label") or f"GLIDE weights {g['model'].get('weights', '?')}"
        if g["model"].get("upsample_window"):
            model += f", upsampler window {g['model']['upsample_window']} px"
        if g["model"].get("ddim_eta") is not None:
            model += f", DDIM steps (eta {g['model']['ddim_eta']})"
        starts = [f"{k} from t={g['model'][k + '_start']}" for k in ("base", "upsample")
                  if g["model"].get(k + "_start") is not None]
        if starts:
            model += ", SDEdit starts: " + ", ".join(starts)
        trained = [g["model"].get(k) for k in ("base", "upsampler")]
        if all(isinstance(e, dict) and e.get("steps") for e in trained):  # models trained by skinlib
            b, u = trained
            model += f", trained {b['steps']} + {u['steps']} steps"
            if b.get("loss_region") or u.get("loss_region"):
                model += f" with the loss on the {b.get('loss_region', 'image')} only"
            if b.get("max_t") is not None or u.get("max_t") is not None:
                model += f" and t up to {b.get('max_t', 999)} / {u.get('max_t', 999)}"
    runs = (f"{sum(g.get('variants_per_source', []))} variants by plan {g['plan'].get('file', '')}"
            if g.get("runs") == "plan" else f"{g['runs']} runs")
    return (f"{model}; prompt \"{g['prompt']}\", {runs} x {g['steps']} steps, sampler "
            f"{g['sampler']}{', zoom ' + str(g['zoom']) if g.get('zoom') else ''}, guidance {g['guidance']}, "
            f"respacing base {g['model'].get('base_respacing', '?')} / upsampler "
            f"{g['model'].get('upsample_respacing', '?')}, seed {g['seed']}")


def glide_figures(run: Path, out: Path) -> dict[str, str]:
    samples, crops = run / "glide" / "samples", run / "crops"
    rows = generate.load_variant_rows(samples)
    if not rows:
        raise FileNotFoundError(f"{samples} holds no variants (notebook 04 not run, e.g. no GLIDE weights)")
    settings = glide_settings(samples)
    synthetic = crops_are_synthetic(crops)
    src = "SYNTHETIC demo crops" if synthetic else "crops"
    captions = {}
    save_figure(generate.plot_variants_grid(samples, crops, n_sources=5, max_runs=5),
                out / "glide_examples.png")
    shown = min(5, len({r["run"] for r in rows}))
    captions["glide_examples.png"] = (f"GLIDE iterative inpainting of {src} (notebook 04): each row a source "
                                      f"crop, then Gen 1..{shown}. {settings}; {run_provenance(run)}, "
                                      f"`glide/samples/`.")
    gif_rows = [r for r in rows if r.get("gif")]
    if gif_rows:
        r = gif_rows[0]
        atomic_write_bytes(out / "glide_output_animation.gif", inside(samples, r["gif"], what="gif").read_bytes())
        captions["glide_output_animation.gif"] = (
            f"The {r['steps']} inpainting steps of variant `{r['image']}` (from {src[:-1]} `{r['source_crop']}`, "
            f"run {r['run']}, seed {r['seed']}). {settings}; {run_provenance(run)}.")
    save_figure(generate.plot_edit_overlays(samples, crops, n=3), out / "glide_edit_overlays.png")
    captions["glide_edit_overlays.png"] = (f"Which pixels are synthetic: source with ill-skin mask (cyan), "
                                           f"variant with the edited area (yellow), step that last edited "
                                           f"each pixel. {settings}; {run_provenance(run)}.")
    return captions


def glide_fill_figure(run: Path, out: Path) -> str:
    """benchmarks/bench_glide_fill.py on the run's validation crops (train-patient crops the small
    model was not trained on) with the small model that notebook 04 trained (``glide/model/small``)."""
    weights = run / "glide" / "model" / "small"
    if not (weights / "glide_options.json").is_file():
        raise FileNotFoundError(f"{weights} holds no trained small model (notebook 04 used other weights)")
    sys.path.insert(0, str(HERE.parent / "benchmarks"))
    import bench_glide_fill

    # the sampler notebook 04 used in this run (generation.json), not the benchmark's defaults
    g = load_json(run / "glide" / "samples" / "generation.json")
    model = g["model"]
    sampler = ["--base-respacing", str(model.get("base_respacing", "8")),
               "--upsample-respacing", str(model.get("upsample_respacing", "3")),
               "--upsample-window", str(model.get("upsample_window") or 0),
               "--base-start", str(model.get("base_start") or 0),
               "--upsample-start", str(model.get("upsample_start") or 0),
               "--ddim-eta", str(-1 if model.get("ddim_eta") is None else model["ddim_eta"]),
               "--guidance", str(g["guidance"]), "--prompt", g["prompt"]]
    table_path = out / ".glide_fill.json"
    bench_glide_fill.main(["--crops", str(run / "crops"), "--weights", str(weights), "--figure",
                           str(out / "glide_fill_benchmark.png"), "--json", str(table_path)] + sampler)
    res = load_json(table_path)
    table_path.unlink()
    t, m = res["table"], list(res["table"]["original"])
    better = {b: sum(t[b][k] > t["trained small"][k] for k in m) for b in ("mean colour", "blurred", "random weights")}
    return (f"What fills a 60 px square of {res['n']} SYNTHETIC demo crops ({res['split']}: "
            + ("train-patient crops the model was not trained on" if res["split"] == "validation" else f"{res['split']} split")
            + ") "
            f"(benchmarks/bench_glide_fill.py): errors of the square vs the surrounding unedited skin "
            f"(colour, contrast, texture, seam; lower is better). Trained small = {res['weights']}, "
            f"sampled as in the run's notebook 04 ({glide_settings(run / 'glide' / 'samples')}). "
            f"The trained model has the lower error on " + ", ".join(f"{v}/{len(m)} metrics vs {b}" for b, v in better.items())
            + f"; {run_provenance(run)}.")


def samples_figure(run: Path, out: Path, name: str, notebook: str) -> str:
    folder = run / name / "samples"
    rows = list_crop_rows(folder) if (folder / "manifest.csv").is_file() else []   # names checked
    if not rows:
        raise FileNotFoundError(f"{folder} holds no samples (notebook {notebook} not run)")
    rows = rows[:32]
    synthetic = crops_are_synthetic(run / "crops")
    ckpt = rows[0].get("checkpoint", "")
    text = f"{name.upper()} samples (notebook {notebook}), trained on {'SYNTHETIC demo ' if synthetic else ''}crops"
    fig = viz.show_grid([folder / r["image"] for r in rows], nrow=8, text=text, synthetic=synthetic)
    save_figure(fig, out / f"{name}_samples.png")
    return (f"{viz.title(text, synthetic)}; {len(rows)} samples, checkpoint `{Path(ckpt).name or '?'}`"
            f"{', training step ' + rows[0]['checkpoint_step'] if rows[0].get('checkpoint_step') else ''}"
            f"{', seed ' + rows[0]['seed'] if rows[0].get('seed') else ''}; {run_provenance(run)}, "
            f"`{name}/samples/`.")


HEADLINE_ARMS = ("real only", "real + standard aug", "real + oracle (ill only)", "real + oracle", "real + copies",
                 "real + oversampling", "real + dcgan", "real + cvae", "real + glide", "real + glide (balanced)",
                 "real + standard aug + dcgan", "real + standard aug + cvae", "real + standard aug + glide",
                 "real + standard aug + glide (balanced)")


def headline_table(res: dict) -> str:
    """The headline numbers as a small table (AUROC at the primary share and at 100 %, the paired
    gain at the primary share with its interval, Holm p), then the generated verdict sentence."""
    prim = res["primary"]
    f, full = prim["fraction"], str(max(res["fractions"]))
    lines = [f"| arm | AUROC @ {float(f):.0%} | gain @ {float(f):.0%} [95 % interval] | p (Holm) | AUROC @ {float(full):.0%} |",
             "|---|---|---|---|---|"]
    for arm in HEADLINE_ARMS:
        e = res["arms"].get(arm, {})
        if e.get("status") != "ok":
            lines.append(f"| {arm} | {e.get('status', 'absent')} | | | |")
            continue
        m = e["by_fraction"][f]["metrics"]["auroc"]
        m100 = e["by_fraction"][full]["metrics"]["auroc"]
        r = prim["arms"].get(arm)
        gain = f"{r['gain']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}]" if r else ""
        holm = (f"{r['p_holm']:.3f}" if "p_holm" in r else "control") if r else ""
        lines.append(f"| {arm} | {m['mean']:.3f} | {gain} | {holm} | {m100['mean']:.3f} |")
    return "\n".join(lines) + f"\n\n{res['verdict']}"


def data_efficiency_figure(run: Path, out: Path) -> str:
    from skinlib.evaluation import evaluate

    res = load_json(run / "eval" / "results.json")
    synthetic = bool(res.get("synthetic_data"))
    fig = evaluate.plot_data_efficiency(res, title=viz.title(
        f"Data efficiency: {res['task']} on {res['n_test_patients']} held-out patients", synthetic))
    save_figure(fig, out / "data_efficiency.png")
    cal = res.get("memorisation_calibration", {})
    return (("SYNTHETIC demo data - " if synthetic else "")
            + f"notebook 05: {res['task']} detector ({res['detector']}: "
            f"{(res.get('probe') or {}).get('model', 'small CNN from scratch')}), test AUROC (mean, 95 % interval: "
            f"bootstrap over {res['n_test_patients']} held-out patients and {res['repetitions']} repetitions) vs the "
            f"share of the {res['n_train_patients']} train patients. Primary endpoint, declared before the run: "
            f"{res['primary']['endpoint']}; minimum detectable gain at 80 % power {res['primary']['design_mdg']:.3f}."
            f"\n\n{headline_table(res)}\n\nMemorisation check: fresh patients (the oracle) flagged "
            f"{cal.get('fresh_patients_flagged', float('nan')):.1%} (nominal {cal.get('nominal_percent', 1):g} %). "
            f"Image features: {res['settings']['features'].get('name')}; {run_provenance(run)}, `eval/results.json`.")


def group_gains_figure(run: Path, out: Path) -> str:
    """Gain per Fitzpatrick group in and out of distribution, uniform vs balanced, with the cost line."""
    from skinlib.evaluation import evaluate

    res = load_json(run / "eval" / "results.json")
    synthetic = bool(res.get("synthetic_data"))
    fig = evaluate.plot_group_gains(res, title=viz.title(
        "Gain per Fitzpatrick group, in and out of distribution (95 % intervals)", synthetic))
    save_figure(fig, out / "group_gains.png")
    share = res["primary"]["fraction"]
    ood = res.get("ood") or {}
    where = (f"out of distribution: every patient of the held-out site {', '.join(ood['sites'])} "
             f"({ood['n_test_patients']} patients)" if ood.get("arms") else f"no out-of-distribution column ({ood.get('note')})")
    cost = res.get("augmentation_cost") or {}
    return (("SYNTHETIC demo data - " if synthetic else "")
            + f"notebook 05: paired AUROC gain over real only (mean, 95 % interval) at {float(share):.0%} of the train "
            f"patients, overall and per Fitzpatrick group (a group with fewer than 3 test patients has no point), in "
            f"distribution ({res['n_test_patients']} test patients of the training site) and {where}; standard "
            f"augmentation, oversampling, the ill-only oracle and every generator, GLIDE uniform (dots) and balanced "
            f"(open squares)."
            + (" Cost: " + "; ".join(evaluate.cost_text(n, c) for n, c in cost.items()) + "." if cost else "")
            + f" {run_provenance(run)}, `eval/results.json`.")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder of `python -m skinlib run --out RUN`")
    p.add_argument("--out", default=str(HERE), help="where to write the figures (default: other/)")
    p.add_argument("--n-crops", type=int, default=64)
    a = p.parse_args(argv)
    run, out = Path(a.run), Path(a.out)
    if not (run / "crops").is_dir():
        raise SystemExit(f"{run}/crops not found: make a run first (`python -m skinlib run --out {run}`).")
    out.mkdir(parents=True, exist_ok=True)
    captions: dict[str, str] = {}
    missing: dict[str, str] = {}
    failed: dict[str, str] = {}
    glide = ["glide_examples.png", "glide_output_animation.gif", "glide_edit_overlays.png"]
    # (name, files it writes, its inputs in the run folder, job)
    jobs = [("crops_grid.png", ["crops_grid.png"], "crops/",
             lambda: {"crops_grid.png": crops_figure(run, out, a.n_crops)}),
            ("glide_*", glide, "glide/samples/ (generation.json, history/) and crops/", lambda: glide_figures(run, out)),
            ("glide_fill_benchmark.png", ["glide_fill_benchmark.png"],
             "glide/model/small/, glide/samples/generation.json and crops/",
             lambda: {"glide_fill_benchmark.png": glide_fill_figure(run, out)}),
            ("dcgan_samples.png", ["dcgan_samples.png"], "dcgan/samples/manifest.csv",
             lambda: {"dcgan_samples.png": samples_figure(run, out, "dcgan", "02")}),
            ("cvae_samples.png", ["cvae_samples.png"], "cvae/samples/manifest.csv",
             lambda: {"cvae_samples.png": samples_figure(run, out, "cvae", "03")}),
            ("data_efficiency.png", ["data_efficiency.png"], "eval/results.json",
             lambda: {"data_efficiency.png": data_efficiency_figure(run, out)}),
            ("group_gains.png", ["group_gains.png"], "eval/results.json (ood, augmentation_cost)",
             lambda: {"group_gains.png": group_gains_figure(run, out)})]
    for name, files, inputs, job in jobs:
        for f in files:                     # no figure of an earlier run survives a job that fails
            (out / f).unlink(missing_ok=True)
        try:
            captions.update(job())
        except FileNotFoundError as e:      # the stage did not run: listed, not an error
            missing[name] = str(e)
        except (KeyError, ValueError, TypeError, IndexError) as e:
            what = f"missing key {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
            failed[name] = f"its input {run}/{inputs} is incomplete ({what})"
            for f in files:
                (out / f).unlink(missing_ok=True)
    lines = ["# Figures", "", f"Made by `python other/make_figures.py {run}` from the project's own run.", ""]
    for name, caption in captions.items():
        lines += [f"## {name}", "", f"![{name}]({name})", "", caption, ""]
    if missing:
        lines += ["## Not made", ""] + [f"- `{k}`: {v}" for k, v in missing.items()] + [""]
    if failed:
        lines += ["## Failed", ""] + [f"- `{k}`: {v}" for k, v in failed.items()] + [""]
    atomic_write_text(out / "FIGURES.md", "\n".join(lines))
    print(json.dumps({"written": sorted(captions), "not_made": missing, "failed": failed}, indent=2))
    if failed:
        print("FIGURES FAILED: " + "; ".join(f"{k}: {v}" for k, v in failed.items()), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
