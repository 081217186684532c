"""DCGAN (Radford et al. 2015) for 64, 128 and 256 px, plus the original study's options.

The classic architecture is the one of pytorch/examples' ``dcgan``: the generator maps
z ~ N(0, I) of shape [N, z_dim, 1, 1] to a 4x4 map and doubles it with one stride-2 block per
doubling (transposed conv 4x4 + BatchNorm + ReLU) up to ``image_size`` with a Tanh output; the
discriminator mirrors it with stride-2 convs + BatchNorm + LeakyReLU(0.2) down to 4x4 and a
final 4x4 conv to one logit. Weights are initialised N(0, 0.02) (BatchNorm weight N(1, 0.02),
bias 0). Channel widths double towards the 4x4 end and are capped at ``max_channels``, so the
64 px model is exactly pytorch/examples' (512 channels at 4x4); 128/256 px add 512-channel blocks.

The original study's options, each a constructor argument:

- ``upsample="nearest_conv"``: generator blocks are nearest 2x upsampling + 3x3 conv instead of
  a transposed conv (avoids checkerboard artefacts);
- ``generator_dropout=p``: Dropout2d(p) after every hidden generator block;
- ``noisy_labels=True``: discriminator targets drawn uniformly, real in [0.7, 1], fake in [0, 0.3];
- lr 2e-4, beta1 0.5 and x0.96 learning-rate decay every 10 epochs are training settings
  (:class:`skinlib.baselines.train.TrainConfig`), see :data:`STUDY_TRAIN_SETTINGS`.

Images are float tensors in [-1, 1], NCHW, RGB. The model talks to :func:`skinlib.baselines.train.train`
through the interface described in :mod:`skinlib.baselines.models` (phases + loss).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED_SIZES = (64, 128, 256)

#: The original study's architecture options (pass as ``DCGAN(**STUDY_OPTIONS)``).
#: The study used Dropout2d in the generator; its rate is not recorded, 0.2 is our choice.
STUDY_OPTIONS = {"upsample": "nearest_conv", "generator_dropout": 0.2, "noisy_labels": True}
#: The original study's optimiser settings (``TrainConfig(**STUDY_TRAIN_SETTINGS)``).
STUDY_TRAIN_SETTINGS = {"lr": 2e-4, "beta1": 0.5, "lr_decay": 0.96, "lr_decay_every": 10}


def check_image_size(image_size) -> int:
    """Return ``image_size`` if it is 64, 128 or 256; otherwise raise ValueError naming the fix."""
    if isinstance(image_size, bool) or not isinstance(image_size, int):
        raise ValueError(f"image_size must be an int (64, 128 or 256), got {image_size!r}.")
    if image_size <= 0 or image_size & (image_size - 1):
        raise ValueError(
            f"image_size={image_size} is not a power of two: use 64, 128 or 256 "
            f"(the models double the resolution once per block).")
    if image_size not in SUPPORTED_SIZES:
        raise ValueError(f"image_size={image_size} is not supported: use 64, 128 or 256.")
    return image_size


def init_dcgan_weights(module: nn.Module) -> None:
    """DCGAN init: conv weights N(0, 0.02); BatchNorm weight N(1, 0.02), bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def _widths(image_size: int, base: int, max_channels: int) -> list:
    """Channel widths at resolutions 4, 8, ..., image_size/2 (len = log2(image_size) - 2)."""
    n = int(math.log2(image_size)) - 2
    return [min(base * 2 ** (n - 1 - i), max_channels) for i in range(n)]


class Generator(nn.Module):
    """z [N, z_dim, 1, 1] (N(0, I)) -> images [N, 3, S, S] in [-1, 1] (Tanh)."""

    def __init__(self, image_size: int = 64, z_dim: int = 100, base_channels: int = 64,
                 max_channels: int = 512, upsample: str = "transposed", dropout: float = 0.0):
        super().__init__()
        check_image_size(image_size)
        if upsample not in ("transposed", "nearest_conv"):
            raise ValueError(f"upsample={upsample!r}: use 'transposed' (classic DCGAN) or "
                             f"'nearest_conv' (upsample + 3x3 conv, the original study's option).")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"generator dropout={dropout} must be in [0, 1).")
        widths = _widths(image_size, base_channels, max_channels)
        layers = [nn.ConvTranspose2d(z_dim, widths[0], 4, 1, 0, bias=False),
                  nn.BatchNorm2d(widths[0]), nn.ReLU(True)]
        if dropout:
            layers.append(nn.Dropout2d(dropout))
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [self._up(c_in, c_out, upsample), nn.BatchNorm2d(c_out), nn.ReLU(True)]
            if dropout:
                layers.append(nn.Dropout2d(dropout))
        layers += [self._up(widths[-1], 3, upsample), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.z_dim = z_dim

    @staticmethod
    def _up(c_in: int, c_out: int, upsample: str) -> nn.Module:
        if upsample == "transposed":
            return nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False)
        return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                             nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


class Discriminator(nn.Module):
    """images [N, 3, S, S] in [-1, 1] -> real/fake logits [N] (no sigmoid; use BCE-with-logits)."""

    def __init__(self, image_size: int = 64, base_channels: int = 64, max_channels: int = 512):
        super().__init__()
        check_image_size(image_size)
        widths = list(reversed(_widths(image_size, base_channels, max_channels)))
        layers = [nn.Conv2d(3, widths[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out),
                       nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False))
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).flatten()


class DCGAN(nn.Module):
    """Generator + discriminator trained with the non-saturating GAN loss.

    Phases per step (see :mod:`skinlib.baselines.models`): ``"discriminator"`` (real vs. detached fake),
    then ``"generator"`` (the same fake batch, against the just-updated discriminator), as in
    pytorch/examples. Class labels are ignored (unconditional); ``num_classes`` is 1.
    """

    name = "dcgan"
    num_classes = 1

    def __init__(self, image_size: int = 64, z_dim: int = 100, generator_channels: int = 64,
                 discriminator_channels: int = 64, max_channels: int = 512,
                 upsample: str = "transposed", generator_dropout: float = 0.0,
                 noisy_labels: bool = False):
        super().__init__()
        self.config = dict(image_size=image_size, z_dim=z_dim,
                           generator_channels=generator_channels,
                           discriminator_channels=discriminator_channels,
                           max_channels=max_channels, upsample=upsample,
                           generator_dropout=float(generator_dropout),
                           noisy_labels=bool(noisy_labels))
        self.image_size = image_size
        self.z_dim = z_dim
        self.noisy_labels = noisy_labels
        self.generator = Generator(image_size, z_dim, generator_channels, max_channels,
                                   upsample, generator_dropout)
        self.discriminator = Discriminator(image_size, discriminator_channels, max_channels)
        init_dcgan_weights(self)

    # ---- interface used by skinlib.baselines.train ---------------------------------------
    def phase_modules(self) -> Dict[str, nn.Module]:
        """One optimiser per phase, stepped in this order every batch."""
        return {"discriminator": self.discriminator, "generator": self.generator}

    def sample_noise(self, n: int, generator: Optional[torch.Generator] = None,
                     device=None) -> torch.Tensor:
        """z ~ N(0, I), shape [n, z_dim, 1, 1] (drawn on CPU from ``generator``, then moved)."""
        z = torch.randn(n, self.z_dim, 1, 1, generator=generator)
        return z.to(device) if device is not None else z

    def generate(self, noise: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """noise [N, z_dim, 1, 1] -> images [N, 3, S, S] in [-1, 1]; ``labels`` are ignored."""
        return self.generator(noise)

    def loss(self, phase: str, images: torch.Tensor, labels: torch.Tensor,
             cache: dict) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Loss of one phase for a batch of real ``images`` [N, 3, S, S] in [-1, 1].

        ``cache`` is a dict shared by the phases of one step (holds the fake batch).
        Returns (loss to minimise, detached scalars to log).
        """
        n = images.shape[0]
        if phase == "discriminator":
            z = torch.randn(n, self.z_dim, 1, 1, device=images.device)
            fake = self.generator(z)
            cache["fake"] = fake
            if self.noisy_labels:  # original study: real in [0.7, 1], fake in [0, 0.3]
                real_t = torch.empty(n, device=images.device).uniform_(0.7, 1.0)
                fake_t = torch.empty(n, device=images.device).uniform_(0.0, 0.3)
            else:
                real_t = torch.ones(n, device=images.device)
                fake_t = torch.zeros(n, device=images.device)
            real_logits = self.discriminator(images)
            fake_logits = self.discriminator(fake.detach())
            loss = (F.binary_cross_entropy_with_logits(real_logits.float(), real_t)
                    + F.binary_cross_entropy_with_logits(fake_logits.float(), fake_t))
            return loss, {"loss_d": loss.detach(),
                          "d_real": torch.sigmoid(real_logits.detach().float()).mean(),
                          "d_fake": torch.sigmoid(fake_logits.detach().float()).mean()}
        if phase == "generator":
            fake = cache.pop("fake")
            # The discriminator's weights get no gradient in this phase (it is not stepped):
            # switching requires_grad off while building the graph skips that work.
            self.discriminator.requires_grad_(False)
            try:
                logits = self.discriminator(fake)
            finally:
                self.discriminator.requires_grad_(True)
            loss = F.binary_cross_entropy_with_logits(logits.float(), torch.ones_like(logits, dtype=torch.float32))
            return loss, {"loss_g": loss.detach()}
        raise ValueError(f"DCGAN has phases 'discriminator' and 'generator', not {phase!r}.")
