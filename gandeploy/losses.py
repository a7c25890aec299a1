"""GAN losses, one pair of functions each: `d(real_logits, fake_logits, smoothing)` and `g(fake_logits)`.

Logits are raw discriminator outputs of shape (n,): no Sigmoid layer anywhere, so the losses stay finite in float16.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


# Goodfellow et al. 2014 (arXiv:1406.2661), sec. 3: the non-saturating generator loss -log D(G(z)).
# One-sided label smoothing: Salimans et al. 2016 (arXiv:1606.03498), sec. 3.4: real targets 1 - s, fakes stay 0.
def ns_d(real: Tensor, fake: Tensor, smoothing: float = 0.0) -> Tensor:
    return (F.binary_cross_entropy_with_logits(real, torch.full_like(real, 1.0 - smoothing))
            + F.softplus(fake).mean())


def ns_g(fake: Tensor) -> Tensor:
    return F.softplus(-fake).mean()


# Arjovsky et al. 2017 (arXiv:1701.07875) critic loss. The trainer keeps the critic Lipschitz: by clipping its
# weights to [-c, c] after every step (loss "wgan", Algorithm 1), or by the gradient penalty of Gulrajani et al. 2017
# (arXiv:1704.00028, loss "wgan-gp") through `gradient_penalty`.
def wgan_d(real: Tensor, fake: Tensor, smoothing: float = 0.0) -> Tensor:
    return fake.mean() - real.mean()


def wgan_g(fake: Tensor) -> Tensor:
    return -fake.mean()


# Lim & Ye 2017 (arXiv:1705.02894), used with spectral norm by Miyato et al. 2018 (arXiv:1802.05957).
def hinge_d(real: Tensor, fake: Tensor, smoothing: float = 0.0) -> Tensor:
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


# Mao et al. 2017 (arXiv:1611.04076), least-squares GAN with targets a=0, b=1, c=1.
def lsgan_d(real: Tensor, fake: Tensor, smoothing: float = 0.0) -> Tensor:
    return 0.5 * ((real - (1.0 - smoothing)) ** 2).mean() + 0.5 * (fake**2).mean()


def lsgan_g(fake: Tensor) -> Tensor:
    return 0.5 * ((fake - 1.0) ** 2).mean()


@dataclass(frozen=True)
class Loss:
    d: Callable[..., Tensor]
    g: Callable[[Tensor], Tensor]
    gradient_penalty: bool = False
    clip: bool = False  # clip the critic's weights to [-loss.clip, loss.clip] after each step
    score: Callable[[Tensor], Tensor] = torch.nn.Identity()  # what the progress bar shows as D(x) and D(G(z))


LOSSES = {
    "ns": Loss(ns_d, ns_g, score=torch.sigmoid),
    "wgan": Loss(wgan_d, wgan_g, clip=True),
    "wgan-gp": Loss(wgan_d, wgan_g, gradient_penalty=True),
    "hinge": Loss(hinge_d, wgan_g),
    "lsgan": Loss(lsgan_d, lsgan_g),
}


def gradient_penalty(critic, real: Tensor, fake: Tensor, labels, alpha: Tensor) -> Tensor:
    """Gulrajani et al. 2017, eq. 3: (||grad_x D(x_hat)||_2 - 1)^2 on x_hat between real and fake samples."""
    x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)  # alpha: (n, 1, 1, 1)
    out = critic(x_hat, labels)
    (grad,) = torch.autograd.grad(out.sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def r1_penalty(discriminator, real: Tensor, labels) -> Tensor:
    """Mescheder et al. 2018 (arXiv:1801.04406), eq. 9 without its gamma / 2: E ||grad_x D(x)||^2 on real images."""
    real = real.detach().requires_grad_(True)
    out = discriminator(real, labels)
    (grad,) = torch.autograd.grad(out.float().sum(), real, create_graph=True)
    return grad.float().flatten(1).pow(2).sum(dim=1).mean()


def instance_noise_std(start: float, decay_steps: int, step: int) -> float:
    """Sønderby et al. 2017 (arXiv:1610.04490), Arjovsky & Bottou 2017 (arXiv:1701.04862): noise on both real
    and fake inputs of D, annealed linearly to zero."""
    return start * max(0.0, 1.0 - step / decay_steps)
