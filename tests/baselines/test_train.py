"""The shared training loop and the export: learning, exact resume, checkpoints, bad inputs."""

import numpy as np
import pytest
import torch
from PIL import Image

from skinlib.baselines.export import export_samples, to_uint8
from skinlib.io import read_csv, save_png
from skinlib.baselines.models import CVAE, DCGAN
from skinlib.baselines.train import TrainConfig, load_checkpoint, load_model, train
from skinlib.errors import CheckpointError, NonFiniteLossError
from skinlib.io import read_losses
from _toy_crops import make_crops

TINY_GAN = dict(generator_channels=4, discriminator_channels=4, max_channels=16, z_dim=8)
TINY_VAE = dict(base_channels=4, max_channels=16, latent_dim=4)
QUIET = dict(progress=False, grid_size=4)


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    return make_crops(tmp_path_factory.mktemp("crops") / "crops", n=12)


def tiny_gan(**kw):
    torch.manual_seed(123)
    return DCGAN(64, **{**TINY_GAN, **kw})


GAN_CFG = TrainConfig(epochs=3, batch_size=4, checkpoint_every=2, seed=7, lr_decay=0.5,
                      lr_decay_every=1, **QUIET)


def test_cvae_loss_falls_on_toy_set(crops, tmp_path):
    torch.manual_seed(0)
    model = CVAE(64, num_classes=2, **TINY_VAE)
    result = train(model, crops, tmp_path / "run", epochs=8, batch_size=4, lr=3e-3, beta1=0.9,
                   **QUIET)
    losses = [r["loss"] for r in result.losses]
    assert len(losses) == 8 * 3 == result.step
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < 0.7 * first, (first, last)


def _interrupt_at(model, call: int):
    """Make the model raise KeyboardInterrupt on its ``call``-th loss evaluation."""
    original, count = model.loss, [0]

    def loss(*args, **kwargs):
        count[0] += 1
        if count[0] == call:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    model.loss = loss


def test_interrupted_then_resumed_equals_uninterrupted(crops, tmp_path):
    # the study options use every source of randomness: dropout, noisy labels, lr decay
    study = dict(upsample="nearest_conv", generator_dropout=0.2, noisy_labels=True)
    full = train(tiny_gan(**study), crops, tmp_path / "full", GAN_CFG)
    assert full.step == 9 and full.resumed_from == 0

    model = tiny_gan(**study)
    _interrupt_at(model, 2 * 6)  # dies in step 6's generator phase; last checkpoint is step 4
    with pytest.raises(KeyboardInterrupt):
        train(model, crops, tmp_path / "cut", GAN_CFG)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"] == 4
    assert len(read_losses(tmp_path / "cut")) == 4

    torch.manual_seed(999)  # a differently initialised model: everything must come from the checkpoint
    resumed = train(DCGAN(64, **TINY_GAN, **study), crops, tmp_path / "cut", GAN_CFG)
    assert resumed.resumed_from == 4 and resumed.step == 9
    a = load_checkpoint(full.checkpoint)
    b = load_checkpoint(resumed.checkpoint)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for phase in a["optimizers"]:
        sa, sb = a["optimizers"][phase]["state"], b["optimizers"][phase]["state"]
        assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    assert a["schedulers"] == b["schedulers"]
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert full.losses == resumed.losses
    assert (tmp_path / "full/losses.csv").read_bytes() == (tmp_path / "cut/losses.csv").read_bytes()
    for epoch in (1, 2, 3):
        name = f"grids/epoch_{epoch:04d}.png"
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "cut" / name).read_bytes()
    assert [r["lr"] for r in full.losses][::3] == [2e-4, 1e-4, 5e-5]


def test_uncached_loader_equals_cached(crops, tmp_path):
    a = train(tiny_gan(), crops, tmp_path / "a", GAN_CFG, epochs=1)
    b = train(tiny_gan(), crops, tmp_path / "b", GAN_CFG, epochs=1, cache_images=False)
    assert a.losses == b.losses


def test_checkpoint_is_weights_only_and_finished_run_is_not_retrained(crops, tmp_path):
    result = train(tiny_gan(), crops, tmp_path / "run", GAN_CFG, epochs=1)
    state = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    assert state["step"] == 3 and state["model_name"] == "dcgan"
    assert state["classes"] == ["measles", "rubella"]
    again = train(tiny_gan(), crops, tmp_path / "run", GAN_CFG, epochs=1)
    assert again.step == again.resumed_from == 3 and again.losses == result.losses
    more = train(tiny_gan(), crops, tmp_path / "run", GAN_CFG, epochs=2)  # continue training
    assert more.resumed_from == 3 and more.step == 6
    model = load_model(result.checkpoint)
    assert not model.training and model.checkpoint_step == 6


def test_checkpoint_beyond_the_steps_asked_for_is_refused(crops, tmp_path):
    """Train 2 epochs, ask for 1: not the 2-epoch model under a 1-epoch config.json."""
    run = tmp_path / "run"
    train(tiny_gan(), crops, run, GAN_CFG, epochs=2)
    config = (run / "config.json").read_bytes()
    with pytest.raises(CheckpointError, match=r"at step 6, beyond the 3 steps asked for.*epochs >= 2"):
        train(tiny_gan(), crops, run, GAN_CFG, epochs=1)
    with pytest.raises(CheckpointError, match=r"at step 6, beyond the 5 steps.*max_steps=5"):
        train(tiny_gan(), crops, run, GAN_CFG, epochs=2, max_steps=5)
    assert (run / "config.json").read_bytes() == config
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 6


def test_resume_mismatches_are_clear_errors(crops, tmp_path):
    run = tmp_path / "run"
    train(tiny_gan(), crops, run, GAN_CFG, epochs=1)
    with pytest.raises(CheckpointError, match=r"generator_channels: checkpoint 4, now 8.*new run_dir"):
        train(tiny_gan(generator_channels=8), crops, run, GAN_CFG, epochs=1)
    with pytest.raises(CheckpointError, match="holds a dcgan model, not a cvae"):
        train(CVAE(64, num_classes=2, **TINY_VAE), crops, run, GAN_CFG, epochs=1)
    with pytest.raises(CheckpointError, match="batch_size: checkpoint 4, now 3"):
        train(tiny_gan(), crops, run, GAN_CFG, epochs=1, batch_size=3)
    other = make_crops(tmp_path / "other", n=8)
    with pytest.raises(CheckpointError, match="other crops"):
        train(tiny_gan(), other, run, GAN_CFG, epochs=1)
    # resume=False starts afresh and replaces the earlier run's files
    (run / "grids" / "epoch_0009.png").write_bytes(b"stale")
    fresh = train(tiny_gan(generator_channels=8), crops, run, GAN_CFG, epochs=1, resume=False)
    assert fresh.resumed_from == 0
    assert sorted(p.name for p in (run / "grids").iterdir()) == ["epoch_0001.png"]
    assert load_checkpoint(run / "checkpoint.pt")["model_config"]["generator_channels"] == 8


def test_resume_with_other_numerics_is_refused_naming_the_setting(crops, tmp_path):
    """channels_last, the device and the autocast dtype change the bytes a step computes: a resume
    that changes them is refused, naming them; amp on a CPU (ignored there) changes nothing."""
    run = tmp_path / "run"
    train(tiny_gan(), crops, run, GAN_CFG, epochs=1)
    with pytest.raises(CheckpointError, match=r"other numerics \(channels_last: checkpoint True, now False\)"):
        train(tiny_gan(), crops, run, GAN_CFG, epochs=2, channels_last=False)
    assert train(tiny_gan(), crops, run, GAN_CFG, epochs=2, amp=False).resumed_from == 3
    # a checkpoint from a GPU with float16 AMP (a loss-scaler state): not resumed on this CPU
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["numerics"] == {"device": "cpu", "amp": None, "channels_last": True}
    state["numerics"] = {"device": "cuda", "amp": "float16", "channels_last": True}
    state["scaler"] = torch.amp.GradScaler("cpu").state_dict()
    torch.save(state, run / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"device: checkpoint 'cuda', now 'cpu'; amp: checkpoint "
                                              r"'float16', now None"):
        train(tiny_gan(), crops, run, GAN_CFG, epochs=3)
    # written before the record existed: derived from the CUDA RNG states and the scaler state
    del state["numerics"]
    state["train_config"]["amp"] = True
    state["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)]
    torch.save(state, run / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"device: checkpoint 'cuda', now 'cpu'; amp: checkpoint 'float16'"):
        train(tiny_gan(), crops, run, GAN_CFG, epochs=3)


def test_loss_scaler_state_is_restored_not_dropped(crops, tmp_path, monkeypatch):
    """A run with a loss scaler (float16 AMP on a GPU; here a CPU scaler stands in) resumes with
    the scaler's state: interrupted + resumed equals uninterrupted, scaler included; resuming it
    without a scaler is refused."""
    real = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, enabled=True: real("cpu", growth_interval=3))
    full = train(tiny_gan(), crops, tmp_path / "full", GAN_CFG)
    model = tiny_gan()
    _interrupt_at(model, 2 * 6)  # dies in step 6; last checkpoint at step 4
    with pytest.raises(KeyboardInterrupt):
        train(model, crops, tmp_path / "cut", GAN_CFG)
    resumed = train(tiny_gan(), crops, tmp_path / "cut", GAN_CFG)
    assert resumed.resumed_from == 4 and resumed.step == 9
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(resumed.checkpoint)
    assert a["scaler"]["scale"] == 2.0 ** 19 and a["scaler"] == b["scaler"]  # grew every 3 steps
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())
    monkeypatch.setattr(torch.amp, "GradScaler", real)
    with pytest.raises(CheckpointError, match="holds loss-scaler .* this run uses no loss scaler"):
        train(tiny_gan(), crops, tmp_path / "cut", GAN_CFG, epochs=4)


class _Tensors(torch.utils.data.Dataset):
    """A dataset that is no crops folder: (image, mask, label) tensors."""

    def __init__(self, images):
        self.images, self.classes, self.image_size = images, ["measles", "rubella"], 64

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], torch.ones(1, 64, 64), i % 2


def test_other_dataset_content_of_the_same_length_is_refused(tmp_path):
    images = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    train(tiny_gan(), _Tensors(images), tmp_path / "run", GAN_CFG, epochs=1)
    changed = images.clone()
    changed[3, 0, 5, 5] = -changed[3, 0, 5, 5]
    with pytest.raises(CheckpointError, match="other crops.*images_sha"):
        train(tiny_gan(), _Tensors(changed), tmp_path / "run", GAN_CFG, epochs=2)
    assert train(tiny_gan(), _Tensors(images.clone()), tmp_path / "run", GAN_CFG, epochs=2).resumed_from == 2


def test_truncated_checkpoint_is_a_clear_error(crops, tmp_path):
    run = tmp_path / "run"
    result = train(tiny_gan(), crops, run, GAN_CFG, epochs=1)
    data = result.checkpoint.read_bytes()
    result.checkpoint.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt.*Delete it"):
        train(tiny_gan(), crops, run, GAN_CFG, epochs=1)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(result.checkpoint)
    torch.save({"weights": torch.zeros(1)}, result.checkpoint)
    with pytest.raises(CheckpointError, match="not a skinlib training checkpoint"):
        load_checkpoint(result.checkpoint)


def test_nan_loss_stops_with_step_and_fix(crops, tmp_path):
    model = tiny_gan()
    original, calls = model.loss, [0]

    def loss(phase, *args):
        value, logs = original(phase, *args)
        calls[0] += phase == "generator"
        if calls[0] == 5 and phase == "generator":
            value = value * float("nan")
            logs = {**logs, "loss_g": value.detach()}
        return value, logs

    model.loss = loss
    with pytest.raises(NonFiniteLossError, match=r"loss_g became nan at step 5 \(epoch 2\).*Lower the learning rate"):
        train(model, crops, tmp_path / "run", GAN_CFG, checkpoint_every=1, log_every=1)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 4  # no NaN checkpoint


def test_bad_inputs_name_the_fix(crops, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(tiny_gan(), tmp_path / "nowhere", tmp_path / "run", GAN_CFG)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no crops"):
        train(tiny_gan(), tmp_path / "empty", tmp_path / "run", GAN_CFG)
    small = make_crops(tmp_path / "small", n=4, size=32)
    with pytest.raises(ValueError, match="smaller than image_size=64.*smaller image_size"):
        train(tiny_gan(), small, tmp_path / "run", GAN_CFG)
    with pytest.raises(ValueError, match="batch_size=64 is larger than the 12 crops.*at most 12"):
        train(tiny_gan(), crops, tmp_path / "run", GAN_CFG, batch_size=64)
    with pytest.raises(ValueError, match="num_classes=2"):
        train(CVAE(64, num_classes=3, **TINY_VAE), crops, tmp_path / "run", GAN_CFG)
    oblong = make_crops(tmp_path / "oblong", n=4)
    save_png(oblong / "000001.png", np.zeros((64, 96, 3), np.uint8))
    with pytest.raises(ValueError, match=r"not square.*000001.png \(96x64\)"):
        train(tiny_gan(), oblong, tmp_path / "run", GAN_CFG)
    missing = make_crops(tmp_path / "missing", n=4)
    (missing / "000002.png").unlink()
    with pytest.raises(FileNotFoundError, match="000002.png"):
        train(tiny_gan(), missing, tmp_path / "run", GAN_CFG)
    with pytest.raises(ValueError, match="epochs=0"):
        train(tiny_gan(), crops, tmp_path / "run", GAN_CFG, epochs=0)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_export_writes_what_the_manifest_says(crops, tmp_path, monkeypatch):
    torch.manual_seed(0)
    result = train(CVAE(64, num_classes=2, **TINY_VAE), crops, tmp_path / "run", GAN_CFG,
                   epochs=1, lr=1e-3)
    out = tmp_path / "run" / "samples"
    rows = export_samples(result.checkpoint, out, n=5, seed=3, batch_size=2, progress=False)
    assert read_csv(out / "manifest.csv") == rows
    assert sorted(p.name for p in out.glob("*.png")) == [r["image"] for r in rows]
    assert [r["disease"] for r in rows] == ["measles", "rubella"] * 2 + ["measles"]
    for r in rows:
        assert r["generator"] == "cvae" and r["checkpoint_step"] == "3" and r["seed"] == "3"
        with Image.open(out / r["image"]) as im:
            assert im.size == (64, 64) and im.mode == "RGB"
    # any file can be regenerated from its row
    model = load_model(rows[3]["checkpoint"])
    noise = model.sample_noise(5, torch.Generator().manual_seed(int(rows[3]["seed"])))
    expected = to_uint8(model.generate(noise[3:4], torch.tensor([1])))[0]
    assert np.array_equal(np.asarray(Image.open(out / rows[3]["image"])), expected)
    # a smaller re-export leaves no stale files; real crops are never overwritten
    rows = export_samples(result.checkpoint, out, n=2, seed=3, progress=False)
    assert sorted(p.name for p in out.glob("*.png")) == ["000000.png", "000001.png"]
    with pytest.raises(ValueError, match="not generated images"):
        export_samples(result.checkpoint, crops, n=2, progress=False)
    # an interrupted re-export never leaves the old manifest describing the new images
    def interrupted(path, arr):
        raise KeyboardInterrupt

    monkeypatch.setattr("skinlib.baselines.export.save_png", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_samples(result.checkpoint, out, n=2, seed=4, progress=False)
    assert not (out / "manifest.csv").exists()
    with pytest.raises(ValueError, match="not one of the model's classes"):
        export_samples(result.checkpoint, out, n=2, disease="scabies", progress=False)


def test_training_figures(crops, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from skinlib import viz
    from skinlib.baselines import figures

    run = tmp_path / "run"
    result = train(tiny_gan(), crops, run, GAN_CFG, epochs=2)
    fig = viz.plot_losses(run)
    assert [ax.get_title() for ax in fig.axes] == ["loss_d", "d_real", "d_fake", "loss_g"]
    assert [p.name for p in figures.epoch_grids(run)] == ["epoch_0001.png", "epoch_0002.png"]
    assert len(figures.show_epoch_grids(run).axes) == 2
    assert figures.epoch_grid_browser(run).children[1].value == (run / "grids/epoch_0002.png").read_bytes()
    images = load_model(result.checkpoint).generate(torch.zeros(3, 8, 1, 1))
    assert len(figures.show_images(images, nrow=3, row_labels=["a"]).axes) == 1
    with pytest.raises(FileNotFoundError, match="No epoch grids"):
        figures.show_epoch_grids(tmp_path)


def test_config_json_records_the_profile_and_the_first_step_gives_the_expected_time(crops, tmp_path, capsys):
    """Issue 19: the notebook's resolved profile lands in config.json; training says how long it will take."""
    import json

    record = {"asked": "auto", "name": "cpu-demo", "device": "cpu", "values": {"image_size": 64, "epochs": 3},
              "set_by_profile": ["image_size", "epochs"]}
    result = train(tiny_gan(), crops, tmp_path / "run", GAN_CFG, progress=True, profile=record)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["profile"] == record
    out = capsys.readouterr()
    assert "Expected about " in out.out + out.err
    assert f"for {result.total_steps} steps of dcgan at 64 px on cpu" in out.out + out.err
