"""DCGAN (Radford et al. 2016, arXiv:1511.06434), sized by resolution.

Resolutions are base * 2**k with base 7 (for 28) or 4 (for 32, 64, 128). The generator starts from a base x base
map and doubles it with stride-2 transposed convolutions; the discriminator mirrors it with stride-2 convolutions.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import maybe_sn, norm_layer, projection

RESOLUTIONS = (28, 32, 64, 128)


def _stages(resolution: int) -> tuple[int, int]:
    base = 7 if resolution == 28 else 4
    n_up = (resolution // base).bit_length() - 1
    assert base * 2**n_up == resolution, f"dcgan cannot build resolution {resolution}"
    return base, n_up


class Generator(nn.Module):
    def __init__(self, latent_dim: int, resolution: int, channels: int, width: int = 64,
                 num_classes: int = 0, embed_dim: int = 32):
        super().__init__()
        self.latent_dim, self.num_classes = latent_dim, num_classes
        base, n_up = _stages(resolution)
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes else None
        c = width * 2 ** (n_up - 1)
        in_dim = latent_dim + (embed_dim if num_classes else 0)
        layers = [nn.ConvTranspose2d(in_dim, c, base, 1, 0, bias=False), nn.BatchNorm2d(c), nn.ReLU(True)]
        for _ in range(n_up - 1):
            layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(c // 2), nn.ReLU(True)]
            c //= 2
        layers += [nn.ConvTranspose2d(c, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], dim=1)  # (n, latent_dim + embed_dim)
        return self.net(z[:, :, None, None])  # (n, c, res, res)


class Discriminator(nn.Module):
    def __init__(self, resolution: int, channels: int, width: int = 64, num_classes: int = 0,
                 embed_dim: int = 32, norm: str = "batch", spectral_norm: bool = False):
        super().__init__()
        base, n_down = _stages(resolution)
        c = width
        # No normalisation on the first layer (Radford et al., sec. 3).
        layers = [maybe_sn(nn.Conv2d(channels, c, 4, 2, 1), spectral_norm), nn.LeakyReLU(0.2, True)]
        for _ in range(n_down - 1):
            layers += [maybe_sn(nn.Conv2d(c, c * 2, 4, 2, 1, bias=norm == "none"), spectral_norm),
                       norm_layer(norm, c * 2), nn.LeakyReLU(0.2, True)]
            c *= 2
        self.features = nn.Sequential(*layers)  # (n, c, base, base)
        self.head = maybe_sn(nn.Conv2d(c, 1, base, 1, 0), spectral_norm)
        self.embed = maybe_sn(nn.Embedding(num_classes, c), spectral_norm) if num_classes else None

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(images)
        logits = self.head(h).flatten()  # (n,)
        return projection(logits, h.sum(dim=(2, 3)), self.embed, labels)
