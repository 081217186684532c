"""Convolutional VAE conditioned on the disease label (CVAE), for 64, 128 and 256 px.

Encoder: stride-2 conv blocks (4x4 conv + BatchNorm + LeakyReLU(0.2)) with 64, 128, 256, 512,
then 512, ... channels down to a 4x4 map (4 blocks at 64 px, one more per doubling), flattened
to ``mu`` and ``logvar`` of size ``latent_dim``. Decoder: a linear layer back to the 4x4 map and
mirrored transposed-conv blocks, Tanh output. With ``num_classes > 1`` the label is given to
the encoder as one-hot extra input channels (constant maps) and concatenated (one-hot) to z for
the decoder; with ``num_classes == 1`` there is no label input and the model is the original
study's plain VAE (4 blocks 64 -> 512 channels at 64 px, latent 100).

Loss per image, averaged over the batch: sum of squared errors over pixels (images in [-1, 1])
+ ``beta`` x KL(q(z|x, y) || N(0, I)) summed over latent dimensions.
Images are float tensors in [-1, 1], NCHW, RGB.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .dcgan import check_image_size


def _widths(image_size: int, base: int, max_channels: int) -> list:
    """Encoder widths, one per stride-2 block from image_size down to 4x4."""
    n = int(math.log2(image_size)) - 2
    return [min(base * 2 ** i, max_channels) for i in range(n)]


class CVAE(nn.Module):
    """Label-conditioned convolutional VAE (plain VAE with ``num_classes=1``)."""

    name = "cvae"

    def __init__(self, image_size: int = 64, num_classes: int = 1, latent_dim: int = 100,
                 base_channels: int = 64, max_channels: int = 512, beta: float = 1.0):
        super().__init__()
        check_image_size(image_size)
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes} must be >= 1 (1 = plain VAE).")
        if beta < 0:
            raise ValueError(f"beta={beta} must be >= 0.")
        self.config = dict(image_size=image_size, num_classes=num_classes, latent_dim=latent_dim,
                           base_channels=base_channels, max_channels=max_channels,
                           beta=float(beta))
        self.image_size = image_size
        self.num_classes = num_classes
        self.latent_dim = latent_dim
        self.beta = float(beta)
        self.label_channels = num_classes if num_classes > 1 else 0
        widths = _widths(image_size, base_channels, max_channels)

        enc, c_in = [], 3 + self.label_channels
        for i, c_out in enumerate(widths):
            enc.append(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=i == 0))
            if i > 0:
                enc.append(nn.BatchNorm2d(c_out))
            enc.append(nn.LeakyReLU(0.2, inplace=True))
            c_in = c_out
        self.encoder = nn.Sequential(*enc)
        self.top_channels = widths[-1]
        flat = widths[-1] * 4 * 4
        self.to_mu = nn.Linear(flat, latent_dim)
        self.to_logvar = nn.Linear(flat, latent_dim)
        self.from_latent = nn.Linear(latent_dim + self.label_channels, flat)

        dec, rev = [], list(reversed(widths))
        for c_in, c_out in zip(rev[:-1], rev[1:]):
            dec += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out),
                    nn.ReLU(True)]
        dec += [nn.ConvTranspose2d(rev[-1], 3, 4, 2, 1), nn.Tanh()]
        self.decoder = nn.Sequential(nn.BatchNorm2d(widths[-1]), nn.ReLU(True), *dec)

    # ---- the VAE -----------------------------------------------------------------------------
    def _one_hot(self, labels: torch.Tensor) -> torch.Tensor:
        if labels is None:
            raise ValueError(f"This CVAE has {self.num_classes} classes: pass labels "
                             f"(int64 tensor of class indices in [0, {self.num_classes})).")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must be class indices in [0, {self.num_classes}); got "
                             f"min {int(labels.min())}, max {int(labels.max())}.")
        return F.one_hot(labels.long(), self.num_classes).float()

    def encode(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None
               ) -> Tuple[torch.Tensor, torch.Tensor]:
        """images [N, 3, S, S] in [-1, 1], labels [N] int64 -> (mu, logvar), each [N, latent_dim]."""
        x = images
        if self.label_channels:
            onehot = self._one_hot(labels).to(images.dtype)
            maps = onehot[:, :, None, None].expand(-1, -1, *images.shape[2:])
            x = torch.cat([images, maps], dim=1)
        h = self.encoder(x).flatten(1)
        return self.to_mu(h), self.to_logvar(h)

    def decode(self, z: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """z [N, latent_dim], labels [N] int64 -> images [N, 3, S, S] in [-1, 1]."""
        if self.label_channels:
            z = torch.cat([z, self._one_hot(labels).to(z.dtype)], dim=1)
        h = self.from_latent(z).view(-1, self.top_channels, 4, 4)
        return self.decoder(h)

    def forward(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None):
        """Returns (reconstruction [N, 3, S, S], mu, logvar); samples z with the global RNG."""
        mu, logvar = self.encode(images, labels)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z, labels), mu, logvar

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Deterministic reconstruction (decode the posterior mean), images in [-1, 1]."""
        mu, _ = self.encode(images, labels)
        return self.decode(mu, labels)

    @torch.no_grad()
    def interpolate(self, z_a: torch.Tensor, z_b: torch.Tensor, label: int = 0,
                    steps: int = 8) -> torch.Tensor:
        """Decode ``steps`` points on the line from latent ``z_a`` to ``z_b`` (each [latent_dim])
        with class ``label`` -> images [steps, 3, S, S] in [-1, 1]."""
        t = torch.linspace(0, 1, steps, device=z_a.device)[:, None]
        z = (1 - t) * z_a[None] + t * z_b[None]
        return self.decode(z, torch.full((steps,), label, dtype=torch.long, device=z.device))

    @torch.no_grad()
    def sample_per_class(self, n_per_class: int, generator: Optional[torch.Generator] = None
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The same ``n_per_class`` noise vectors decoded with every class label: images
        [num_classes * n_per_class, 3, S, S] in [-1, 1] (class-major) and their labels."""
        device = next(self.parameters()).device
        z = self.sample_noise(n_per_class, generator, device).repeat(self.num_classes, 1)
        labels = torch.arange(self.num_classes, device=device).repeat_interleave(n_per_class)
        return self.decode(z, labels), labels

    # ---- interface used by skinlib.baselines.train ---------------------------------------
    def phase_modules(self) -> Dict[str, nn.Module]:
        return {"vae": self}

    def sample_noise(self, n: int, generator: Optional[torch.Generator] = None,
                     device=None) -> torch.Tensor:
        """z ~ N(0, I), shape [n, latent_dim] (drawn on CPU from ``generator``, then moved)."""
        z = torch.randn(n, self.latent_dim, generator=generator)
        return z.to(device) if device is not None else z

    def generate(self, noise: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """noise [N, latent_dim] -> images [N, 3, S, S] in [-1, 1] (labels needed if classes > 1)."""
        return self.decode(noise, labels)

    def loss(self, phase: str, images: torch.Tensor, labels: torch.Tensor,
             cache: dict) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Per-image summed MSE + beta * KL, averaged over the batch; returns (loss, logs)."""
        if phase != "vae":
            raise ValueError(f"CVAE has one phase 'vae', not {phase!r}.")
        recon, mu, logvar = self(images, labels)
        n = images.shape[0]
        mse = F.mse_loss(recon.float(), images.float(), reduction="sum") / n
        mu, logvar = mu.float(), logvar.float()
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / n
        loss = mse + self.beta * kl
        return loss, {"loss": loss.detach(), "mse": mse.detach(), "kl": kl.detach()}
