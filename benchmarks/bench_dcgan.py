"""DCGAN training throughput: skinlib's DCGAN + training loop vs. pytorch/examples' DCGAN.

Both train the 64 px DCGAN (nz=100, ngf=ndf=64) at batch 64 with Adam(2e-4, beta1 0.5) on the
same synthetic crops, in this process, alternating rounds; each side saves a fixed-noise grid
every epoch and its weights at the end. Ours is the real thing: ``skinlib.baselines.train.train`` on a crops
folder (loss logging, NaN checks, grids, checkpoint with optimiser states; images/s counted over
the training steps, not the initial decoding of the crops). The baseline is pytorch/examples' dcgan/main.py
architecture and loop written out plainly below (its data loader replaced by an in-memory
TensorDataset, which only makes the baseline faster). Prints images/s of both and the ratio
ours / baseline (target >= 1.0 on CPU). With a GPU (or ``--gpu-sizes``) it also records our
images/s at 64/128/256 px with mixed precision.

    python benchmarks/bench_dcgan.py            # 7 rounds x 2 epochs x 6 steps
    python benchmarks/bench_dcgan.py --quick    # 3 rounds x 2 epochs x 4 steps

On a shared CPU the neighbours' load changes the speed of both sides; the printed ratio is the
median of the per-round ratios (each round runs ours, then the baseline), and the load average
is printed before and after.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
import torchvision.utils as vutils

from skinlib.io import save_png, write_csv
from skinlib.baselines.models import DCGAN
from skinlib.baselines.train import train

NZ, NGF, NDF, NC = 100, 64, 64, 3


# ---- pytorch/examples dcgan/main.py, written plainly --------------------------------------------------
def weights_init(m):
    classname = m.__class__.__name__
    if classname.find("Conv") != -1:
        torch.nn.init.normal_(m.weight, 0.0, 0.02)
    elif classname.find("BatchNorm") != -1:
        torch.nn.init.normal_(m.weight, 1.0, 0.02)
        torch.nn.init.zeros_(m.bias)


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(NZ, NGF * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(NGF * 8), nn.ReLU(True),
            nn.ConvTranspose2d(NGF * 8, NGF * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(NGF * 4), nn.ReLU(True),
            nn.ConvTranspose2d(NGF * 4, NGF * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(NGF * 2), nn.ReLU(True),
            nn.ConvTranspose2d(NGF * 2, NGF, 4, 2, 1, bias=False), nn.BatchNorm2d(NGF), nn.ReLU(True),
            nn.ConvTranspose2d(NGF, NC, 4, 2, 1, bias=False), nn.Tanh())

    def forward(self, x):
        return self.main(x)


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(NC, NDF, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(NDF, NDF * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(NDF * 2), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(NDF * 2, NDF * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(NDF * 4), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(NDF * 4, NDF * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(NDF * 8), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(NDF * 8, 1, 4, 1, 0, bias=False), nn.Sigmoid())

    def forward(self, x):
        return self.main(x).view(-1, 1).squeeze(1)


def baseline_run(images: torch.Tensor, epochs: int, batch_size: int, out: Path, device) -> float:
    """pytorch/examples' training loop; returns training images/s."""
    dataloader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images),
                                             batch_size=batch_size, shuffle=True, drop_last=True)
    netG = Generator().to(device)
    netG.apply(weights_init)
    netD = Discriminator().to(device)
    netD.apply(weights_init)
    criterion = nn.BCELoss()
    fixed_noise = torch.randn(64, NZ, 1, 1, device=device)
    real_label, fake_label = 1, 0
    optimizerD = optim.Adam(netD.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optimizerG = optim.Adam(netG.parameters(), lr=2e-4, betas=(0.5, 0.999))
    t0, n = time.perf_counter(), 0
    for epoch in range(epochs):
        for i, data in enumerate(dataloader, 0):
            netD.zero_grad()
            real_cpu = data[0].to(device)
            b_size = real_cpu.size(0)
            label = torch.full((b_size,), real_label, dtype=real_cpu.dtype, device=device)
            output = netD(real_cpu)
            errD_real = criterion(output, label)
            errD_real.backward()
            D_x = output.mean().item()
            noise = torch.randn(b_size, NZ, 1, 1, device=device)
            fake = netG(noise)
            label.fill_(fake_label)
            output = netD(fake.detach())
            errD_fake = criterion(output, label)
            errD_fake.backward()
            D_G_z1 = output.mean().item()
            errD = errD_real + errD_fake
            optimizerD.step()
            netG.zero_grad()
            label.fill_(real_label)
            output = netD(fake)
            errG = criterion(output, label)
            errG.backward()
            D_G_z2 = output.mean().item()
            optimizerG.step()
            _ = (errD.item(), errG.item(), D_x, D_G_z1, D_G_z2)
            n += b_size
        fake = netG(fixed_noise)
        vutils.save_image(fake.detach(), out / f"fake_samples_epoch_{epoch:03d}.png", normalize=True)
    torch.save(netG.state_dict(), out / "netG.pth")
    torch.save(netD.state_dict(), out / "netD.pth")
    return n / (time.perf_counter() - t0)


# ---- ours ---------------------------------------------------------------------------------------
def ours_run(crops: Path, epochs: int, batch_size: int, out: Path, device, image_size=64,
             amp=True) -> float:
    model = DCGAN(image_size)
    result = train(model, crops, out, epochs=epochs, batch_size=batch_size, device=str(device),
                   resume=False, progress=False, amp=amp, grid_size=64)
    return result.images_per_second


def make_crops(folder: Path, n: int, size: int, seed: int = 0) -> None:
    """Random smooth RGB crops (content is irrelevant for throughput)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = np.kron(small, np.ones((size // 8, size // 8, 1), dtype=np.uint8))
        save_png(folder / f"{i:06d}.png", img)
        rows.append({"image": f"{i:06d}.png", "disease": "demo"})
    write_csv(folder / "manifest.csv", rows)


def load_images(folder: Path, n: int) -> torch.Tensor:
    from skinlib.data.dataset import CropDataset

    ds = CropDataset(folder, image_size=64)
    return torch.stack([ds[i][0] for i in range(n)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 rounds x 2 epochs x 4 steps")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto")
    ap.add_argument("--gpu-sizes", action="store_true",
                    help="also time ours at 64/128/256 px with AMP (default when on CUDA)")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = args.rounds or (3 if args.quick else 7)
    epochs, steps = (2, 4) if args.quick else (2, 6)
    batch = 64
    torch.manual_seed(0)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"batch={batch} epochs={epochs} steps/epoch={steps} rounds={rounds} "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        crops = tmp / "crops64"
        make_crops(crops, batch * steps, 64)
        images = load_images(crops, batch * steps)
        # warm-up (allocator, oneDNN/cuDNN kernel selection), not timed
        ours_run(crops, 1, batch, tmp / "warm_ours", device)
        (tmp / "warm_base").mkdir()
        baseline_run(images[: batch * 2], 1, batch, tmp / "warm_base", device)
        ours, base = [], []
        for r in range(rounds):
            ours.append(ours_run(crops, epochs, batch, tmp / f"ours{r}", device))
            (tmp / f"base{r}").mkdir()
            base.append(baseline_run(images, epochs, batch, tmp / f"base{r}", device))
            print(f"round {r + 1}: ours {ours[-1]:.1f} img/s, pytorch/examples {base[-1]:.1f} "
                  f"img/s, ratio {ours[-1] / base[-1]:.3f}")
        o, b = statistics.median(ours), statistics.median(base)
        ratio = statistics.median(x / y for x, y in zip(ours, base))  # paired: robust to load drift
        print(f"median: ours {o:.1f} img/s, pytorch/examples {b:.1f} img/s")
        print(f"ratio ours/baseline = {ratio:.3f} (median of the per-round ratios; target >= 1.0); "
              f"load average now {os.getloadavg()[0]:.2f}")
        if device.type == "cuda" or args.gpu_sizes:
            for size in (64, 128, 256):
                folder = tmp / f"crops{size}"
                make_crops(folder, batch * steps, size)
                ours_run(folder, 1, batch, tmp / f"warm{size}", device, size)
                ips = ours_run(folder, epochs, batch, tmp / f"amp{size}", device, size)
                print(f"ours {size}px batch {batch} amp={device.type == 'cuda'}: {ips:.1f} img/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
