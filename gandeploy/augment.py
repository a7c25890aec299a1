"""Differentiable augmentation of the discriminator's inputs (DiffAugment: Zhao et al. 2020, arXiv:2006.10738).

Real and generated images both pass through the same kind of random change before D sees them, in D's step and in
G's, and the change is differentiable, so G learns the data and not the augmentation while D cannot memorise a
small training set. Each operation draws its randomness from the trainer's generator, so a resumed run augments
exactly as one that never stopped. Images are in [-1, 1], (n, c, h, w).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def translation(x: Tensor, rng: torch.Generator, ratio: float = 0.125) -> Tensor:
    """Shift each image by up to `ratio` of its size in each direction; the border is extended (replicate)."""
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    padded = F.pad(x, (sw, sw, sh, sh), mode="replicate")
    dy = torch.randint(0, 2 * sh + 1, (n, 1, 1), generator=rng, device=x.device)
    dx = torch.randint(0, 2 * sw + 1, (n, 1, 1), generator=rng, device=x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1) + dy  # (n, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w) + dx  # (n, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2)  # advanced indices first: (n, h, w, c) -> (n, c, h, w)


def cutout(x: Tensor, rng: torch.Generator, ratio: float = 0.5) -> Tensor:
    """Set a square of `ratio` of the image's size, centred anywhere in it (clipped at the edges), to 0."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + 1 - ch % 2, (n, 1, 1), generator=rng, device=x.device) - ch // 2
    cx = torch.randint(0, w + 1 - cw % 2, (n, 1, 1), generator=rng, device=x.device) - cw // 2
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (rows >= cy) & (rows < cy + ch) & (cols >= cx) & (cols < cx + cw)  # (n, h, w)
    return x * (~inside).unsqueeze(1).to(x.dtype)


def color(x: Tensor, rng: torch.Generator) -> Tensor:
    """Random brightness (+- 0.5), saturation (x 0..2) and contrast (x 0.5..1.5), as in DiffAugment."""
    def u(*shape):
        return torch.rand(x.shape[0], *shape, generator=rng, device=x.device, dtype=x.dtype)

    x = x + (u(1, 1, 1) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (u(1, 1, 1) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (u(1, 1, 1) + 0.5) + mean


OPS = {"translation": translation, "cutout": cutout, "color": color}


def parse_policy(policy: str) -> list[str]:
    """'translation,cutout' -> ['translation', 'cutout']; raises ValueError naming an unknown operation."""
    names = [p.strip() for p in policy.split(",") if p.strip()]
    unknown = [p for p in names if p not in OPS]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown[0]!r}; valid: {', '.join(OPS)} (comma-separated)")
    return names


def augment(x: Tensor, names: list[str], rng: torch.Generator) -> Tensor:
    for name in names:
        x = OPS[name](x, rng)
    return x
