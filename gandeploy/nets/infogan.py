"""The InfoGAN networks (Chen et al. 2016, arXiv:1606.03657, app. C.1): DCGAN's two stride-2 stages with a
1,024-unit fully connected layer in both G and D. Lucic et al. 2018 ("Are GANs Created Equal?", compare_gan) train
every GAN on MNIST with them, so this family is the one to use beside their table. Resolutions 4 * base, base <= 8.

At width 64: G is z -> FC 1024 -> FC 128 x base x base -> 64 x 2base -> channels x 4base, with BatchNorm and ReLU;
D is 64 -> 128 (BatchNorm) -> FC 1024 (BatchNorm) -> 1, with LeakyReLU 0.2.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import maybe_sn, norm_layer, projection

RESOLUTIONS = (28, 32)


def _base(resolution: int) -> int:
    assert resolution in RESOLUTIONS, f"infogan builds {RESOLUTIONS} pixels, not {resolution}"
    return resolution // 4


def _norm_1d(kind: str, features: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(features)
    if kind == "layer":
        return nn.LayerNorm(features)
    return nn.Identity()  # "instance" has no meaning for a vector; "none"


class Generator(nn.Module):
    def __init__(self, latent_dim: int, resolution: int, channels: int, width: int = 64,
                 num_classes: int = 0, embed_dim: int = 32):
        super().__init__()
        self.latent_dim, self.num_classes = latent_dim, num_classes
        base, c, hidden = _base(resolution), width * 2, width * 16
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes else None
        in_dim = latent_dim + (embed_dim if num_classes else 0)
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(True),
            nn.Linear(hidden, c * base * base, bias=False), nn.BatchNorm1d(c * base * base), nn.ReLU(True),
            nn.Unflatten(1, (c, base, base)),
            nn.ConvTranspose2d(c, width, 4, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True),
            nn.ConvTranspose2d(width, channels, 4, 2, 1, bias=False), nn.Tanh())

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], dim=1)  # (n, latent_dim + embed_dim)
        return self.net(z)  # (n, c, res, res)


class Discriminator(nn.Module):
    def __init__(self, resolution: int, channels: int, width: int = 64, num_classes: int = 0,
                 embed_dim: int = 32, norm: str = "batch", spectral_norm: bool = False):
        super().__init__()
        base, hidden = _base(resolution), width * 16
        bias = norm == "none"
        self.features = nn.Sequential(
            maybe_sn(nn.Conv2d(channels, width, 4, 2, 1), spectral_norm), nn.LeakyReLU(0.2, True),
            maybe_sn(nn.Conv2d(width, width * 2, 4, 2, 1, bias=bias), spectral_norm), norm_layer(norm, width * 2),
            nn.LeakyReLU(0.2, True), nn.Flatten(),
            maybe_sn(nn.Linear(width * 2 * base * base, hidden, bias=bias), spectral_norm), _norm_1d(norm, hidden),
            nn.LeakyReLU(0.2, True))  # (n, hidden)
        self.head = maybe_sn(nn.Linear(hidden, 1), spectral_norm)
        self.embed = maybe_sn(nn.Embedding(num_classes, hidden), spectral_norm) if num_classes else None

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(images)  # (n, hidden)
        return projection(self.head(h).flatten(), h, self.embed, labels)
