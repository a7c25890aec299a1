import math

import torch

from gandeploy.losses import LOSSES, gradient_penalty, instance_noise_std, r1_penalty


def test_loss_values_on_known_logits():
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([-1.0, 1.0])
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731  softplus
    ns = LOSSES["ns"]
    assert math.isclose(ns.d(real, fake).item(), (sp(-2) + sp(0)) / 2 + (sp(-1) + sp(1)) / 2, rel_tol=1e-6)
    assert math.isclose(ns.g(fake).item(), (sp(1) + sp(-1)) / 2, rel_tol=1e-6)
    # one-sided smoothing changes only the real targets
    smoothed = ns.d(real, fake, 0.1).item()
    expected = (0.9 * sp(-2) + 0.1 * sp(2) + 0.9 * sp(0) + 0.1 * sp(0)) / 2 + (sp(-1) + sp(1)) / 2
    assert math.isclose(smoothed, expected, rel_tol=1e-6)
    assert math.isclose(LOSSES["wgan-gp"].d(real, fake).item(), 0.0 - 1.0)
    assert math.isclose(LOSSES["hinge"].d(real, fake).item(), (0 + 1) / 2 + (0 + 2) / 2)
    assert math.isclose(LOSSES["lsgan"].d(real, fake).item(), 0.5 * (1 + 1) / 2 + 0.5 * (1 + 1) / 2)
    assert math.isclose(LOSSES["lsgan"].g(fake).item(), 0.5 * (4 + 0) / 2)


def test_non_saturating_loss_is_stable_on_large_logits():
    huge = torch.tensor([1e4, -1e4])
    for loss in LOSSES.values():
        assert torch.isfinite(loss.d(huge, -huge)) and torch.isfinite(loss.g(huge))


def test_gradient_penalty_of_a_linear_critic():
    """For D(x) = <w, x> the gradient is w everywhere, so the penalty is (||w|| - 1)^2 exactly."""
    w = torch.randn(1, 3, 4, 4)
    critic = lambda x, labels: (x * w).flatten(1).sum(1)  # noqa: E731
    real, fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    gp = gradient_penalty(critic, real, fake, None, torch.rand(5, 1, 1, 1))
    assert math.isclose(gp.item(), (w.norm().item() - 1) ** 2, rel_tol=1e-5)


def test_r1_penalty_of_a_quadratic_discriminator():
    """For D(x) = sum(x^2) / 2 the gradient is x, so the penalty is the mean squared norm of the real images."""
    real = torch.randn(6, 1, 4, 4)
    r1 = r1_penalty(lambda x, labels: 0.5 * x.pow(2).flatten(1).sum(1), real, None)
    assert math.isclose(r1.item(), real.flatten(1).pow(2).sum(1).mean().item(), rel_tol=1e-5)
    assert r1.requires_grad  # it trains D: gradients flow through it


def test_instance_noise_decays_linearly_to_zero():
    assert instance_noise_std(0.2, 100, 0) == 0.2
    assert math.isclose(instance_noise_std(0.2, 100, 50), 0.1)
    assert instance_noise_std(0.2, 100, 150) == 0.0
