"""GLIDE training: hybrid loss vs a direct computation, keep-masks, learning, exact resume,
train-split only, strict loading of the written weights folder, NaN stop."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from skinlib.glide import checkpoints, configs, finetune
from skinlib.glide.checkpoints import CheckpointInvalidError, CheckpointUnavailableError
from skinlib.glide.diffusion import betas_for_schedule
from skinlib.glide.losses import HybridLoss
from skinlib.glide.masks import random_keep_masks
from skinlib.glide.pipeline import GlideInpainter, encode_prompts
from skinlib.io import read_csv, write_csv
from skinlib.errors import NonFiniteLossError
from _toy_crops import make_crops

FAST = dict(model="fixture-tiny", batch_size=4, lr=1e-3, progress=False, sample_respacing="2", n_samples=2)


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    """12 toy crops, patients p0..p3; patient p3 is the test side of the split."""
    folder = make_crops(tmp_path_factory.mktemp("glide") / "crops", n=12)
    rows = read_csv(folder / "manifest.csv")
    for r in rows:
        r["split"] = "test" if r["patient"] == "p3" else "train"
    write_csv(folder / "manifest.csv", rows)
    return folder


# ----------------------------------------------------------------------------- the loss
def _direct_vlb(schedule: str, x0, x_t, t, eps, v):
    """L_t in bits/dim from the definitions, float64 NumPy/SciPy, independent of skinlib."""
    from scipy.stats import norm

    betas = betas_for_schedule(schedule, 1000)
    abar = np.cumprod(1 - betas)
    abar_prev = np.append(1.0, abar[:-1])
    post_var = betas * (1 - abar_prev) / (1 - abar)
    post_logvar = np.log(np.append(post_var[1], post_var[1:]))
    out = []
    for i, ti in enumerate(t):
        xs, xt, e, vv = x0[i], x_t[i], eps[i], v[i]
        c1 = betas[ti] * np.sqrt(abar_prev[ti]) / (1 - abar[ti])
        c2 = (1 - abar_prev[ti]) * np.sqrt(1 - betas[ti]) / (1 - abar[ti])
        true_mean = c1 * xs + c2 * xt
        x0_pred = xt / np.sqrt(abar[ti]) - np.sqrt(1 / abar[ti] - 1) * e
        mean = c1 * x0_pred + c2 * xt
        frac = (vv + 1) / 2
        logvar = frac * np.log(betas[ti]) + (1 - frac) * post_logvar[ti]
        if ti == 0:
            std = np.exp(0.5 * logvar)
            upper = np.where(xs > 0.999, 1.0, norm.cdf((xs + 1 / 255 - mean) / std))
            lower = np.where(xs < -0.999, 0.0, norm.cdf((xs - 1 / 255 - mean) / std))
            out.append(-np.mean(np.log(upper - lower)) / np.log(2))
        else:
            kl = 0.5 * (-1 + logvar - post_logvar[ti] + np.exp(post_logvar[ti] - logvar)
                        + (true_mean - mean) ** 2 * np.exp(-logvar))
            out.append(np.mean(kl) / np.log(2))
    return np.array(out)


@pytest.mark.parametrize("schedule", ["squaredcos_cap_v2", "linear"])
def test_vlb_term_matches_direct_computation(schedule):
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([0, 0, 1, 137, 999])
    x0 = (torch.randint(0, 256, (5, 3, 4, 4), generator=g) / 127.5 - 1).float()
    x0[0, 0, 0, 0], x0[0, 0, 0, 1] = -1.0, 1.0          # the open-ended edge bins
    noise = torch.randn(5, 3, 4, 4, generator=g)
    out = torch.cat([noise + 0.3 * torch.randn(5, 3, 4, 4, generator=g),
                     torch.rand(5, 3, 4, 4, generator=g) * 2 - 1], dim=1).requires_grad_(True)
    loss = HybridLoss(schedule)
    x_t = loss.q_sample(x0, t, noise)
    vlb = loss.vlb_terms(out, x0, x_t, t)
    expected = _direct_vlb(schedule, x0.double().numpy(), x_t.double().numpy(), t.numpy(),
                           out[:, :3].detach().double().numpy(), out[:, 3:].detach().double().numpy())
    np.testing.assert_allclose(vlb.detach().numpy(), expected, rtol=2e-4, atol=1e-6)

    terms = loss(out, x0, x_t, t, noise)
    mse = ((noise - out[:, :3]) ** 2).mean()
    assert torch.allclose(terms["mse"], mse)
    assert torch.allclose(terms["loss"], mse + 0.001 * 1000 * vlb.mean())  # L_simple + λ·T·L_t
    # the vlb term trains only the variance channels: the mean's gradient is stopped
    grad_eps, grad_v = torch.autograd.grad(terms["vlb"], out, retain_graph=True)[0].split(3, dim=1)
    assert float(grad_eps.abs().max()) == 0.0 and float(grad_v.abs().max()) > 0
    grad_eps, grad_v = torch.autograd.grad(terms["loss"] - terms["vlb"], out)[0].split(3, dim=1)
    assert float(grad_v.abs().max()) == 0.0 and float(grad_eps.abs().max()) > 0


def test_loss_region_scores_only_its_pixels():
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([0, 3, 500, 999])
    x0 = (torch.randint(0, 256, (4, 3, 6, 6), generator=g) / 127.5 - 1).float()
    noise = torch.randn(4, 3, 6, 6, generator=g)
    out = torch.cat([noise + 0.3 * torch.randn(4, 3, 6, 6, generator=g),
                     torch.rand(4, 3, 6, 6, generator=g) * 2 - 1], dim=1).requires_grad_(True)
    loss = HybridLoss("squaredcos_cap_v2")
    x_t = loss.q_sample(x0, t, noise)
    everywhere = loss(out, x0, x_t, t, noise)
    ones = loss(out, x0, x_t, t, noise, region=torch.ones(4, 1, 6, 6))
    assert all(torch.allclose(everywhere[k], ones[k]) for k in everywhere)
    # a region of the top two rows scores exactly what the loss of those rows alone does
    region = torch.zeros(4, 1, 6, 6)
    region[:, :, :2] = 1
    part = loss(out, x0, x_t, t, noise, region=region)
    rows = loss(out[:, :, :2], x0[:, :, :2], x_t[:, :, :2], t, noise[:, :, :2])
    assert all(torch.allclose(part[k], rows[k]) for k in part)
    assert not torch.allclose(part["loss"], everywhere["loss"])
    grad = torch.autograd.grad(part["loss"], out)[0]
    assert float(grad[:, :, 2:].abs().max()) == 0.0 and float(grad[:, :, :2].abs().min()) > 0
    # an example without region pixels scores 0 and leaves the others unchanged
    some = loss(out, x0, x_t, t, noise, region=torch.cat([region[:3], torch.zeros(1, 1, 6, 6)]))
    assert torch.allclose(some["mse"] * 4, part["mse"] * 4 - rows_mse_last(out, noise))
    with pytest.raises(ValueError, match="region must be"):
        loss(out, x0, x_t, t, noise, region=region[:, :, :3])


def rows_mse_last(out, noise):
    """L_simple of the last example over the top two rows."""
    return ((noise[-1:, :, :2] - out[-1:, :3, :2]) ** 2).mean()


def test_patches_on_holes_hold_part_of_the_hole():
    g = torch.Generator().manual_seed(0)
    masks = torch.nn.functional.interpolate(random_keep_masks(200, 16, g), size=(64, 64), mode="nearest")
    offs = finetune.patch_offsets_on_holes(masks, 16, 4, g)
    assert offs.shape == (200, 2) and bool((offs % 4 == 0).all())
    assert bool((offs >= 0).all()) and bool((offs <= 64 - 16).all())
    for m, (y, x) in zip(masks, offs.tolist()):
        assert bool((m[0, y:y + 16, x:x + 16] == 0).any())
    assert len(set(map(tuple, offs.tolist()))) > 50  # spread, not one fixed place
    # patches as small as one low-res pixel still hold the hole (rounding to the grid must not drop it)
    offs = finetune.patch_offsets_on_holes(masks, 4, 4, g)
    for m, (y, x) in zip(masks, offs.tolist()):
        assert bool((m[0, y:y + 4, x:x + 4] == 0).any())


def test_keep_masks_kinds_and_determinism():
    a = random_keep_masks(60, 64, torch.Generator().manual_seed(1))
    b = random_keep_masks(60, 64, torch.Generator().manual_seed(1))
    assert a.shape == (60, 1, 64, 64) and torch.equal(a, b)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    holes = (a == 0).flatten(1).sum(1)
    assert (holes > 0).all() and (holes < 64 * 64).all()
    assert (holes == 15 * 15).sum() >= 15          # the study's 15/64 squares are common
    assert len(set(holes.tolist())) > 20           # boxes and strokes vary
    squares = random_keep_masks(8, 64, torch.Generator().manual_seed(2), probs=(1, 0, 0))
    assert ((squares == 0).flatten(1).sum(1) == 225).all()


# ----------------------------------------------------------------------------- training
def _fixed_batch_loss(model, kind: str, tokenizer, crops: Path) -> float:
    """Hybrid loss of ``model`` on one fixed batch (fixed crops, t, noise, masks; eval mode)."""
    rows = finetune.select_rows(crops, "train", None, 0)[:6]
    opts = model.options
    size = int(opts["image_size"])
    lo_size = size // 4 if opts["super_res"] else None
    images, low, _ = finetune.load_images(crops, rows, size, lo_size, False)
    g = torch.Generator().manual_seed(123)
    x0 = images.float() / 127.5 - 1
    t = torch.randint(0, 1000, (len(rows),), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    mask = random_keep_masks(len(rows), lo_size or size, g)
    mask = torch.nn.functional.interpolate(mask, size=(size, size), mode="nearest")
    loss = HybridLoss(opts["noise_schedule"])
    with torch.no_grad():
        x_t = loss.q_sample(x0, t, noise)
        text = encode_prompts(model, tokenizer, [finetune.DEFAULT_PROMPT] * len(rows))
        out = model(x_t, t, text=text, inpaint_image=x0 * mask, inpaint_mask=mask,
                    low_res=None if low is None else low.float() / 127.5 - 1)
        return float(loss(out, x0, x_t, t, noise)["loss"])


def test_training_lowers_loss_and_writes_a_strictly_loadable_folder(crops, tmp_path):
    out = tmp_path / "w"
    before = {}
    for kind in ("base", "upsampler"):
        model, _ = finetune.initial_model(finetune.FinetuneConfig(model="fixture-tiny"), kind)
        from skinlib.glide.tokenizer import load_tokenizer
        before[kind] = _fixed_batch_loss(model.eval(), kind, load_tokenizer(), crops)
    base = finetune.train("base", crops, out, epochs=4, ema_rate=0.5, sample_every=4, **FAST)
    up = finetune.train("upsampler", crops, out, epochs=4, ema_rate=0.5, patch_size=16, sample_every=4, **FAST)
    assert base.step == up.step == 4 * 2 and (out / "train_base" / "losses.png").is_file()
    assert [p.name for p in (out / "train_base" / "samples").iterdir()] == ["epoch_0004.png"]
    assert len(read_csv(out / "train_upsampler" / "losses.csv")) == 8

    pipe = GlideInpainter.from_pretrained(str(out), device="cpu", base_respacing="2", upsample_respacing="2")
    assert not pipe.is_random and pipe.identity["weights_kind"] == "fixture-tiny-from-scratch"
    assert "not OpenAI's GLIDE" in pipe.name
    info = pipe.identity["base"]
    assert info["trained_on_split"] == "train" and info["n_images"] == 9 and info["steps"] == 8
    for kind, model in (("base", pipe.base), ("upsampler", pipe.upsampler)):
        after = _fixed_batch_loss(model, kind, pipe.tokenizer, crops)
        print(kind, before[kind], after)
        assert after < 0.85 * before[kind], (kind, before[kind], after)
    # the file holds the released checkpoints' key grammar for these options
    state = torch.load(out / "base_inpaint.pt", weights_only=True)
    assert list(state) == list(checkpoints.expected_shapes(configs.FIXTURE_TINY_BASE))

    # the small model's label in every name
    meta = json.loads((out / "glide_options.json").read_text())
    for e in meta["models"].values():
        e["config"] = "small"
    assert checkpoints.weights_label(meta["models"]) == ("small-from-scratch", checkpoints.SMALL_LABEL)


def test_corrupt_or_mismatched_weights_are_refused(crops, tmp_path):
    out = tmp_path / "w"
    finetune.train("base", crops, out, epochs=1, **FAST)
    with pytest.raises(CheckpointUnavailableError, match="no upsampler"):
        GlideInpainter.from_pretrained(str(out), device="cpu")
    finetune.train("upsampler", crops, out, epochs=1, patch_size=16, **FAST)
    meta_path = out / "glide_options.json"
    good = meta_path.read_text()

    data = bytearray((out / "base_inpaint.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / "base_inpaint.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointInvalidError, match="sha256"):
        GlideInpainter.from_pretrained(str(out), device="cpu")

    # a state dict of another architecture, even with a matching hash, fails the strict check
    torch.save(torch.load(out / "upsample_inpaint.pt", weights_only=True), out / "base_inpaint.pt")
    meta = json.loads(good)
    meta["models"]["base"]["sha256"] = checkpoints.skio.sha256_file(out / "base_inpaint.pt")
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointInvalidError, match="does not match the model"):
        GlideInpainter.from_pretrained(str(out), device="cpu")

    (out / "base_inpaint.pt").write_bytes(b"not a checkpoint")
    meta["models"]["base"]["sha256"] = checkpoints.skio.sha256_file(out / "base_inpaint.pt")
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointInvalidError, match="not a readable PyTorch checkpoint"):
        GlideInpainter.from_pretrained(str(out), device="cpu")

    meta["models"]["base"]["options"]["bogus_option"] = 1
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointInvalidError, match="unknown options"):
        GlideInpainter.from_pretrained(str(out), device="cpu")
    meta_path.write_text("{not json")
    with pytest.raises(CheckpointInvalidError, match="not readable JSON"):
        GlideInpainter.from_pretrained(str(out), device="cpu")


@pytest.mark.parametrize("region", ["image", "hole"])
def test_interrupted_then_resumed_equals_uninterrupted(crops, tmp_path, monkeypatch, region):
    cfg = dict(FAST, epochs=3, checkpoint_every=2, patch_size=16, ema_rate=0.9, seed=5, sample_every=3,
               loss_region=region, **({"max_t": 30} if region == "hole" else {}))
    full = finetune.train("upsampler", crops, tmp_path / "full", **cfg)
    assert full.step == 6

    real, calls = finetune._train_step, [0]

    def dies_in_step_4(*a, **kw):
        calls[0] += 1
        if calls[0] == 4:
            raise KeyboardInterrupt("simulated")
        return real(*a, **kw)

    monkeypatch.setattr(finetune, "_train_step", dies_in_step_4)
    with pytest.raises(KeyboardInterrupt):
        finetune.train("upsampler", crops, tmp_path / "cut", **cfg)
    monkeypatch.setattr(finetune, "_train_step", real)
    assert finetune.load_train_checkpoint(tmp_path / "cut/train_upsampler/checkpoint.pt")["step"] == 2
    torch.manual_seed(999)  # everything must come from the checkpoint
    resumed = finetune.train("upsampler", crops, tmp_path / "cut", **cfg)
    assert resumed.resumed_from == 2 and resumed.step == 6

    a = finetune.load_train_checkpoint(tmp_path / "full/train_upsampler/checkpoint.pt")
    b = finetune.load_train_checkpoint(tmp_path / "cut/train_upsampler/checkpoint.pt")
    for part in ("model", "ema"):
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), (part, k)
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    for k in ("torch", "train"):
        assert torch.equal(a["rng"][k], b["rng"][k])
    for name in ("train_upsampler/losses.csv", "train_upsampler/samples/epoch_0003.png"):
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "cut" / name).read_bytes(), name
    wa = torch.load(tmp_path / "full/upsample_inpaint.pt", weights_only=True)
    wb = torch.load(tmp_path / "cut/upsample_inpaint.pt", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    # other settings or other crops: refused with the difference named
    with pytest.raises(finetune.CheckpointError, match="lr"):
        finetune.train("upsampler", crops, tmp_path / "cut", **dict(cfg, lr=5e-4))
    other = "image" if region == "hole" else "hole"
    with pytest.raises(finetune.CheckpointError, match=f"loss_region: checkpoint '{region}', now '{other}'"):
        finetune.train("upsampler", crops, tmp_path / "cut", **dict(cfg, loss_region=other))
    if region == "image":
        # a checkpoint written before loss_region / max_t existed trained on every pixel and every t:
        # it resumes with those values, and the weights entry stays as such folders wrote it
        path = tmp_path / "cut/train_upsampler/checkpoint.pt"
        old = finetune.load_train_checkpoint(path)
        del old["config"]["loss_region"], old["config"]["max_t"]
        torch.save(old, path)
        assert finetune.train("upsampler", crops, tmp_path / "cut", **cfg).resumed_from == 6
        entry = checkpoints.read_weights_json(tmp_path / "cut")["models"]["upsampler"]
        assert "loss_region" not in entry and "max_t" not in entry
    # fewer steps than the checkpoint already has: refused, never a silently longer-trained model
    with pytest.raises(finetune.CheckpointError, match="step 6, beyond the 4 steps"):
        finetune.train("upsampler", crops, tmp_path / "cut", **dict(cfg, max_steps=4))


def _dies_in_call(monkeypatch, n: int):
    real, calls = finetune._train_step, [0]

    def dies(*a, **kw):
        calls[0] += 1
        if calls[0] == n:
            raise KeyboardInterrupt("simulated")
        return real(*a, **kw)

    monkeypatch.setattr(finetune, "_train_step", dies)
    return real


@pytest.mark.parametrize("kind", ["base", "upsampler"])
def test_interrupted_mid_epoch_then_resumed_equals_uninterrupted(crops, tmp_path, monkeypatch, kind):
    """9 train crops, batch 3: 3 steps per epoch; checkpoints every 2 steps, so the one the run
    resumes from (step 4) lies inside epoch 2: a resume that restarted that epoch differs."""
    cfg = dict(FAST, batch_size=3, epochs=3, checkpoint_every=2, ema_rate=0.9, seed=3, sample_every=3,
               **({"patch_size": 16} if kind == "upsampler" else {}))
    full = finetune.train(kind, crops, tmp_path / "full", **cfg)
    assert full.step == 9
    real = _dies_in_call(monkeypatch, 6)  # dies in step 6; the last checkpoint is at step 4
    with pytest.raises(KeyboardInterrupt):
        finetune.train(kind, crops, tmp_path / "cut", **cfg)
    monkeypatch.setattr(finetune, "_train_step", real)
    run = f"train_{kind}"
    assert finetune.load_train_checkpoint(tmp_path / "cut" / run / "checkpoint.pt")["step"] == 4
    torch.manual_seed(999)  # everything must come from the checkpoint
    resumed = finetune.train(kind, crops, tmp_path / "cut", **cfg)
    assert resumed.resumed_from == 4 and resumed.step == 9
    a = finetune.load_train_checkpoint(tmp_path / "full" / run / "checkpoint.pt")
    b = finetune.load_train_checkpoint(tmp_path / "cut" / run / "checkpoint.pt")
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for k, v in a[part].items():
            assert v.dtype == b[part][k].dtype and v.numpy().tobytes() == b[part][k].numpy().tobytes(), (part, k)
    file = configs.CHECKPOINTS[finetune.KINDS[kind]].file
    assert (tmp_path / "full" / file).read_bytes() == (tmp_path / "cut" / file).read_bytes()
    assert (tmp_path / "full" / run / "losses.csv").read_bytes() == (tmp_path / "cut" / run / "losses.csv").read_bytes()


def test_resume_with_other_numerics_or_without_the_loss_scaler_is_refused(crops, tmp_path, monkeypatch):
    """The device and the autocast dtype change the bytes: a resume that changes them is refused,
    naming them; a loss-scaler state (float16 AMP; here a CPU scaler stands in) is restored."""
    real_scaler = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, enabled=True: real_scaler("cpu", growth_interval=2))
    cfg = dict(FAST, epochs=3, checkpoint_every=2, sample_every=0)
    full = finetune.train("base", crops, tmp_path / "full", **cfg)
    real = _dies_in_call(monkeypatch, 4)  # dies in step 4; last checkpoint at step 2
    with pytest.raises(KeyboardInterrupt):
        finetune.train("base", crops, tmp_path / "cut", **cfg)
    monkeypatch.setattr(finetune, "_train_step", real)
    resumed = finetune.train("base", crops, tmp_path / "cut", **cfg)
    assert resumed.resumed_from == 2 and resumed.step == 6
    path = tmp_path / "cut/train_base/checkpoint.pt"
    a, b = finetune.load_train_checkpoint(tmp_path / "full/train_base/checkpoint.pt"), finetune.load_train_checkpoint(path)
    assert a["scaler"]["scale"] == 2.0 ** 19 and a["scaler"] == b["scaler"]  # grew every 2 steps
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())
    monkeypatch.setattr(torch.amp, "GradScaler", real_scaler)
    with pytest.raises(finetune.CheckpointError, match="holds loss-scaler .* this run uses no loss scaler"):
        finetune.train("base", crops, tmp_path / "cut", **dict(cfg, epochs=4))

    assert b["numerics"] == {"device": "cpu", "amp": None, "channels_last": False}
    b["numerics"] = {"device": "cuda", "amp": "bfloat16", "channels_last": False}
    b["scaler"] = {}
    torch.save(b, path)
    with pytest.raises(finetune.CheckpointError, match=r"other numerics \(device: checkpoint 'cuda', now 'cpu'; "
                                                       r"amp: checkpoint 'bfloat16', now None\)"):
        finetune.train("base", crops, tmp_path / "cut", **dict(cfg, epochs=4))


def test_max_t_trains_only_those_timesteps_and_sampling_respects_it(crops, tmp_path, monkeypatch):
    seen = []
    real = HybridLoss.q_sample

    def spy(self, x0, t, noise):
        seen.append(t.clone())
        return real(self, x0, t, noise)

    monkeypatch.setattr(HybridLoss, "q_sample", spy)
    starts, real_fig = [], finetune.figure_diffusion
    monkeypatch.setattr(finetune, "figure_diffusion", lambda o, r, s: starts.append(s) or real_fig(o, r, s))
    out = tmp_path / "w"
    finetune.train("base", crops, out, epochs=3, max_t=40, loss_region="hole", sample_every=3, **FAST)
    finetune.train("upsampler", crops, out, epochs=1, max_t=7, patch_size=16, loss_region="hole", **FAST)
    monkeypatch.setattr(HybridLoss, "q_sample", real)
    base_t, up_t = torch.cat(seen[:6]), torch.cat(seen[6:])
    assert int(base_t.max()) <= 40 and int(up_t.max()) <= 7 and len(base_t.unique()) > 10
    assert (out / "train_base/samples/epoch_0003.png").is_file() and set(starts) == {40, 7}  # not pure noise
    entry = checkpoints.read_weights_json(out)["models"]
    assert (entry["base"]["max_t"], entry["upsampler"]["max_t"], entry["base"]["loss_region"]) == (40, 7, "hole")

    kw = dict(device="cpu", base_respacing="2", upsample_respacing="2")
    images = torch.zeros(1, 3, 32, 32)
    keep = torch.ones(1, 1, 32, 32)
    keep[..., 8:16, 8:16] = 0
    engine = GlideInpainter.from_pretrained(str(out), ddim_eta=0.0, **kw)  # setters may follow loading
    with pytest.raises(ValueError, match=r"base model .* trained on timesteps 0\.\.40 only .* t = 999"):
        engine.inpaint(images, keep, "x", [0])
    engine.set_base_start(40).set_upsample_start(20)
    with pytest.raises(ValueError, match=r"upsampler model .* 0\.\.7 only .* t = 20.*--upsample-start"):
        engine.inpaint(images, keep, "x", [0])
    engine.set_upsample_start(7)
    assert engine.identity["base"]["max_t"] == 40
    assert engine.inpaint(images, keep, "x", [0], guidance_scale=1.0).shape == (1, 3, 32, 32)
    engine.set_ddim(None)  # its variance output is untrained outside the hole: no ancestral steps
    with pytest.raises(ValueError, match="loss_region='hole'.*use DDIM"):
        engine.inpaint(images, keep, "x", [0])
    for bad in (0, 1000, 2.5):
        with pytest.raises(ValueError, match=f"max_t={bad} must be an integer in 1..999"):
            finetune.train("base", crops, tmp_path / "bad", max_t=bad, **FAST)
    with pytest.raises(ValueError, match=r"loss_region='pixels' must be one of \('image', 'hole'\)"):
        finetune.train("base", crops, tmp_path / "bad", loss_region="pixels", **FAST)
    with pytest.raises(ValueError, match="sample_respacing='fast27' does not fit"):
        finetune.train("base", crops, tmp_path / "bad2", max_t=10, **dict(FAST, sample_respacing="fast27"))


def test_train_split_only_and_clear_error_without_split(crops, tmp_path):
    rows = finetune.select_rows(crops, "train", None, 0)
    assert len(rows) == 9 and all(r["patient"] != "p3" for r in rows)
    no_split = make_crops(tmp_path / "nosplit", n=8)
    with pytest.raises(ValueError, match="no 'split' column"):
        finetune.train("base", no_split, tmp_path / "w", **FAST)
    res = finetune.train("base", no_split, tmp_path / "w", split=None, max_steps=1, **FAST)
    meta = checkpoints.read_weights_json(tmp_path / "w")
    assert res.step == 1 and meta["models"]["base"]["trained_on_split"] == "all"


def test_nan_loss_stops_with_step_and_fix(crops, tmp_path, monkeypatch):
    real = HybridLoss.__call__

    def nan_at_third(self, *a, **kw):
        nan_at_third.n += 1
        out = real(self, *a, **kw)
        if nan_at_third.n >= 3:
            out["loss"] = out["loss"] * math.nan
        return out

    nan_at_third.n = 0
    monkeypatch.setattr(HybridLoss, "__call__", nan_at_third)
    with pytest.raises(NonFiniteLossError, match=r"step 3 .*lr="):
        finetune.train("base", crops, tmp_path / "w", epochs=3, checkpoint_every=1, **FAST)
    assert finetune.load_train_checkpoint(tmp_path / "w/train_base/checkpoint.pt")["step"] == 2
