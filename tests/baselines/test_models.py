"""DCGAN and CVAE architectures: shapes for every size, the classic/study options, the loss interface."""
import pytest
import torch
from torch import nn

from skinlib.baselines.models import CVAE, DCGAN, STUDY_OPTIONS, build_model, check_image_size

TINY_GAN = dict(generator_channels=4, discriminator_channels=4, max_channels=16, z_dim=8)
TINY_VAE = dict(base_channels=4, max_channels=16, latent_dim=8)


@pytest.mark.parametrize("size", [64, 128, 256])
@pytest.mark.parametrize("upsample", ["transposed", "nearest_conv"])
def test_dcgan_shapes(size, upsample):
    torch.manual_seed(0)
    model = DCGAN(size, upsample=upsample, generator_dropout=0.2, **TINY_GAN)
    z = model.sample_noise(2, torch.Generator().manual_seed(0))
    assert z.shape == (2, 8, 1, 1)
    images = model.generate(z)
    assert images.shape == (2, 3, size, size)
    assert images.min() >= -1 and images.max() <= 1
    assert model.discriminator(images).shape == (2,)
    # one stride-2 block per doubling: 4x4 -> size
    n_up = sum(isinstance(m, (nn.ConvTranspose2d, nn.Upsample)) for m in model.generator.modules())
    expected = {"transposed": size.bit_length() - 2, "nearest_conv": size.bit_length() - 3 + 1}
    assert n_up == expected[upsample]


@pytest.mark.parametrize("size", [64, 128, 256])
@pytest.mark.parametrize("classes", [1, 3])
def test_cvae_shapes(size, classes):
    torch.manual_seed(0)
    model = CVAE(size, num_classes=classes, **TINY_VAE)
    x = torch.rand(2, 3, size, size) * 2 - 1
    y = torch.tensor([0, classes - 1])
    recon, mu, logvar = model(x, y)
    assert recon.shape == x.shape and mu.shape == (2, 8) and logvar.shape == (2, 8)
    assert model.generate(model.sample_noise(2), y).shape == x.shape
    first = model.encoder[0]
    assert first.in_channels == 3 + (classes if classes > 1 else 0)


def test_classic_dcgan_is_pytorch_examples_architecture():
    model = DCGAN(64)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # pytorch/examples dcgan (nz=100, ngf=ndf=64): netG 3,576,704 and netD 2,765,568 parameters
    assert count(model.generator) == 3_576_704
    assert count(model.discriminator) == 2_765_568
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    w = torch.cat([c.weight.flatten() for c in convs])
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.001


def test_study_options_change_the_generator():
    model = DCGAN(64, **STUDY_OPTIONS, **TINY_GAN)
    kinds = [type(m) for m in model.generator.modules()]
    assert nn.Dropout2d in kinds and nn.Upsample in kinds
    assert kinds.count(nn.ConvTranspose2d) == 1  # only the z -> 4x4 projection
    assert model.noisy_labels


def test_noisy_labels_are_drawn_from_the_study_ranges(monkeypatch):
    """Discriminator targets: real 1 and fake 0; with noisy_labels, uniform in [0.7, 1] and [0, 0.3]."""
    import torch.nn.functional as F

    targets = []
    original = F.binary_cross_entropy_with_logits

    def recording(logits, target, *args, **kw):
        targets.append(target.detach().clone())
        return original(logits, target, *args, **kw)

    monkeypatch.setattr(F, "binary_cross_entropy_with_logits", recording)
    torch.manual_seed(0)
    model = DCGAN(64, **TINY_GAN)
    x = torch.rand(256, 3, 64, 64) * 2 - 1
    for noisy in (False, True):
        model.noisy_labels = noisy
        targets.clear()
        model.loss("discriminator", x, torch.zeros(256, dtype=torch.long), {})
        real, fake = targets
        assert real.shape == fake.shape == (256,)
        if not noisy:
            assert torch.equal(real, torch.ones(256)) and torch.equal(fake, torch.zeros(256))
            continue
        assert 0.7 <= float(real.min()) and float(real.max()) <= 1.0
        assert 0.0 <= float(fake.min()) and float(fake.max()) <= 0.3
        # spread over the whole range (uniform: 256 draws leave no gap wider than ~0.03)
        assert float(real.min()) < 0.72 and float(real.max()) > 0.98 and len(real.unique()) == 256
        assert float(fake.min()) < 0.02 and float(fake.max()) > 0.28
        assert abs(float(real.mean()) - 0.85) < 0.03 and abs(float(fake.mean()) - 0.15) < 0.03
    # the generator's target stays 1 (the labels are noisy for the discriminator only)
    targets.clear()
    model.loss("generator", x, torch.zeros(256, dtype=torch.long), {"fake": model.generate(model.sample_noise(256))})
    assert torch.equal(targets[0], torch.ones(256))


@pytest.mark.parametrize("bad, match", [(100, "power of two"), (32, "not supported"),
                                        (512, "not supported"), (64.0, "must be an int")])
def test_bad_image_size(bad, match):
    with pytest.raises(ValueError, match=match):
        check_image_size(bad)
    with pytest.raises(ValueError, match=match):
        DCGAN(bad)
    with pytest.raises(ValueError, match=match):
        CVAE(bad)


def test_generator_phase_trains_only_the_generator():
    torch.manual_seed(0)
    model = DCGAN(64, **TINY_GAN)
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    cache = {}
    loss_d, logs = model.loss("discriminator", x, torch.zeros(4, dtype=torch.long), cache)
    assert set(logs) == {"loss_d", "d_real", "d_fake"}
    loss_d.backward()
    assert all(p.grad is None for p in model.generator.parameters())  # fake was detached
    model.zero_grad(set_to_none=True)
    loss_g, logs = model.loss("generator", x, torch.zeros(4, dtype=torch.long), cache)
    loss_g.backward()
    assert all(p.grad is None for p in model.discriminator.parameters())
    assert all(p.grad is not None for p in model.generator.parameters())
    assert all(p.requires_grad for p in model.discriminator.parameters())
    assert list(model.phase_modules()) == ["discriminator", "generator"]


def test_cvae_loss_and_conditioning():
    torch.manual_seed(0)
    model = CVAE(64, num_classes=2, beta=0.0, **TINY_VAE).eval()
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    y = torch.tensor([0, 1, 1])
    loss, logs = model.loss("vae", x, y, {})
    assert torch.equal(loss, logs["mse"]) and logs["kl"] >= 0
    z = model.sample_noise(1).repeat(2, 1)
    a, b = model.generate(z, torch.tensor([0, 1]))
    assert not torch.allclose(a, b)  # the label changes the decoder's output
    with pytest.raises(ValueError, match="class indices"):
        model.generate(z, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="pass labels"):
        model.encode(x, None)


def test_build_model_round_trip():
    model = DCGAN(128, **TINY_GAN)
    again = build_model(model.name, **model.config)
    assert again.config == model.config
    assert [p.shape for p in again.parameters()] == [p.shape for p in model.parameters()]
    with pytest.raises(ValueError, match="Unknown model"):
        build_model("stylegan")
