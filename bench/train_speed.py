"""Training throughput: gandeploy's trainer against the reference loop of the PyTorch DCGAN tutorial.

Both train the same generator and discriminator (gandeploy's DCGAN from the recipe) at the same batch size on the
same machine, interleaved in one run. The reference loop is the tutorial's, line for line: a Sigmoid on D with
BCELoss, real and fake D passes each with its own backward, `.item()` reads every step, a DataLoader over the
images (given the advantage of pre-normalised in-memory tensors instead of per-image PIL transforms).

    python bench/train_speed.py [--recipe recipes/dcgan_mnist.yaml] [--steps 30] [--rounds 5] [--device cpu]

Prints images/s (median over rounds) for the reference, gandeploy with its defaults (bf16 autocast where the
hardware has native bf16) and gandeploy in float32, and the ratios; writes bench/results/train_speed-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from gandeploy.data import batches, load_data
from gandeploy.recipe import load_recipe
from gandeploy.train import Trainer, torch_device


class ReferenceLoop:
    """https://pytorch.org/tutorials/beginner/dcgan_faces_tutorial.html, the training loop of section 'Training'."""

    def __init__(self, trainer: Trainer, batch_size: int):
        recipe, self.device = trainer.recipe, trainer.device
        # the tutorial's models: plain (contiguous) memory format, Sigmoid at the end of D
        self.netG = trainer.G.to(memory_format=torch.contiguous_format)
        self.netD = nn.Sequential(trainer.D, nn.Sigmoid()).to(memory_format=torch.contiguous_format)
        self.nz = recipe.model.latent_dim
        self.criterion = nn.BCELoss()
        self.optimizerD = torch.optim.Adam(self.netD.parameters(), lr=recipe.optim.d_lr, betas=recipe.optim.betas)
        self.optimizerG = torch.optim.Adam(self.netG.parameters(), lr=recipe.optim.g_lr, betas=recipe.optim.betas)
        images = load_data(recipe.data).images.float().div(127.5).sub(1)
        self.dataloader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images),
                                                      batch_size=batch_size, shuffle=True, drop_last=True)
        self.batches = iter(())

    def _next(self):
        try:
            return next(self.batches)
        except StopIteration:
            self.batches = iter(self.dataloader)
            return next(self.batches)

    def step(self):
        real_label, fake_label = 1.0, 0.0
        self.netD.zero_grad()
        real_cpu = self._next()[0].to(self.device)
        b_size = real_cpu.size(0)
        label = torch.full((b_size,), real_label, dtype=torch.float, device=self.device)
        output = self.netD(real_cpu).view(-1)
        errD_real = self.criterion(output, label)
        errD_real.backward()
        D_x = output.mean().item()  # noqa: F841
        noise = torch.randn(b_size, self.nz, device=self.device)
        fake = self.netG(noise)
        label.fill_(fake_label)
        output = self.netD(fake.detach()).view(-1)
        errD_fake = self.criterion(output, label)
        errD_fake.backward()
        D_G_z1 = output.mean().item()  # noqa: F841
        errD = errD_real + errD_fake  # noqa: F841
        self.optimizerD.step()
        self.netG.zero_grad()
        label.fill_(real_label)
        output = self.netD(fake).view(-1)
        errG = self.criterion(output, label)
        errG.backward()
        D_G_z2 = output.mean().item()  # noqa: F841
        self.optimizerG.step()


def images_per_s(step, steps: int, batch_size: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * batch_size / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/dcgan_mnist.yaml")
    parser.add_argument("--steps", type=int, default=30, help="steps per timed window")
    parser.add_argument("--rounds", type=int, default=5, help="timed windows per loop, interleaved")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()

    device = torch_device(args.device)
    recipe = load_recipe(args.recipe)
    batch = recipe.train.batch_size
    fp32 = load_recipe(args.recipe, ["train.amp=none"])
    ours = Trainer(recipe, Path("/nonexistent-unused"), device, progress=False)
    ours_fp32 = Trainer(fp32, Path("/nonexistent-unused"), device, progress=False)
    reference = ReferenceLoop(Trainer(fp32, Path("/nonexistent-unused"), device, progress=False), batch)
    data_iter = batches(ours.data, batch, recipe.train.seed, 0, device)
    loops = {"reference": reference.step, "gandeploy": lambda: ours.train_step(data_iter),
             "gandeploy-fp32": lambda: ours_fp32.train_step(data_iter)}
    for step in loops.values():  # warm-up
        for _ in range(5):
            step()
    results = {name: [] for name in loops}
    for _ in range(args.rounds):
        for name, step in loops.items():
            results[name].append(images_per_s(step, args.steps, batch, device))
    medians = {name: statistics.median(v) for name, v in results.items()}
    ratio = medians["gandeploy"] / medians["reference"]
    ratio_fp32 = medians["gandeploy-fp32"] / medians["reference"]

    machine = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "device": str(device), "torch": torch.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    report = {"recipe": args.recipe, "batch_size": batch, "steps_per_window": args.steps, "rounds": args.rounds,
              "machine": machine, "images_per_s": results, "median_images_per_s": medians, "ratio": ratio,
              "ratio_fp32": ratio_fp32, "amp": ours.amp}
    out = Path(args.out) / f"train_speed-{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'loop':<16}{'images/s (median)':>18}   rounds")
    for name in loops:
        print(f"{name:<16}{medians[name]:>18.0f}   {'  '.join(f'{v:.0f}' for v in results[name])}")
    print(f"ratio gandeploy/reference: {ratio:.2f}x with its default amp={ours.amp}, {ratio_fp32:.2f}x in float32 "
          f"({args.recipe}, batch {batch}, {device}, {torch.get_num_threads()} threads) -> {out}")


if __name__ == "__main__":
    main()
