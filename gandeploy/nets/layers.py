"""Layers shared by the families, each with the paper it comes from."""

from __future__ import annotations

import torch
from torch import nn


def dcgan_init(module: nn.Module) -> None:
    """Radford et al. 2016 (arXiv:1511.06434), sec. 4: all weights from N(0, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
            weight = getattr(m, "parametrizations", None)
            target = weight.weight.original if weight is not None else m.weight
            nn.init.normal_(target, 0.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm, nn.InstanceNorm2d)) and m.affine:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":  # normalises over (C, H, W) per sample, as the WGAN-GP critic wants
        return nn.GroupNorm(1, channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


def maybe_sn(layer: nn.Module, on: bool) -> nn.Module:
    """Miyato et al. 2018 (arXiv:1802.05957): spectral normalisation of the discriminator's weights."""
    return nn.utils.parametrizations.spectral_norm(layer) if on else layer


def projection(logits: torch.Tensor, features: torch.Tensor, embed: nn.Module | None, labels) -> torch.Tensor:
    """Miyato & Koyama 2018 (arXiv:1802.05637): class-conditional D adds <embed(y), phi(x)> to its logit."""
    if embed is None:
        return logits
    return logits + (embed(labels) * features).sum(dim=1)
