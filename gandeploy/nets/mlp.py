"""The original MLP GAN (Goodfellow et al. 2014, arXiv:1406.2661) as a tiny baseline, with ReLU/LeakyReLU
instead of maxout units."""

from __future__ import annotations

import torch
from torch import nn

from .layers import maybe_sn, projection


class Generator(nn.Module):
    def __init__(self, latent_dim: int, resolution: int, channels: int, width: int = 64,
                 num_classes: int = 0, embed_dim: int = 32):
        super().__init__()
        self.latent_dim, self.num_classes = latent_dim, num_classes
        self.shape = (channels, resolution, resolution)
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes else None
        hidden = width * 4
        self.net = nn.Sequential(
            nn.Linear(latent_dim + (embed_dim if num_classes else 0), hidden), nn.BatchNorm1d(hidden), nn.ReLU(True),
            nn.Linear(hidden, hidden * 2), nn.BatchNorm1d(hidden * 2), nn.ReLU(True),
            nn.Linear(hidden * 2, channels * resolution * resolution), nn.Tanh())

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], dim=1)
        return self.net(z).view(-1, *self.shape)  # (n, c, res, res)


class Discriminator(nn.Module):
    def __init__(self, resolution: int, channels: int, width: int = 64, num_classes: int = 0,
                 embed_dim: int = 32, norm: str = "batch", spectral_norm: bool = False):
        super().__init__()
        hidden = width * 4
        self.features = nn.Sequential(
            nn.Flatten(), maybe_sn(nn.Linear(channels * resolution * resolution, hidden * 2), spectral_norm),
            nn.LeakyReLU(0.2, True), maybe_sn(nn.Linear(hidden * 2, hidden), spectral_norm), nn.LeakyReLU(0.2, True))
        self.head = maybe_sn(nn.Linear(hidden, 1), spectral_norm)
        self.embed = maybe_sn(nn.Embedding(num_classes, hidden), spectral_norm) if num_classes else None

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(images)  # (n, hidden)
        return projection(self.head(h).flatten(), h, self.embed, labels)
