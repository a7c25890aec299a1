import math

import numpy as np
import pytest

from gandeploy.formats.latents import distribution, latents


@pytest.mark.parametrize("dim", [1, 3, 64, 100, 128])
def test_image_k_depends_on_seed_and_k_only(dim):
    whole = latents(7, 25, dim)
    assert whole.shape == (25, dim) and whole.dtype == np.float32
    np.testing.assert_array_equal(latents(7, 10, dim), whole[:10])
    np.testing.assert_array_equal(latents(7, 5, dim, start=13), whole[13:18])
    assert not np.array_equal(latents(8, 10, dim), whole[:10])


def test_latents_are_standard_normal():
    z = latents(0, 4000, 100).astype(np.float64).ravel()
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert abs((z > 1.96).mean() - 0.025) < 0.002


def test_latents_follow_the_documented_recipe():
    """Reimplements the module docstring's recipe word by word for image 3 of seed 11."""
    dim, k = 6, 3
    bitgen = np.random.Philox(key=11)
    words = bitgen.random_raw((k + 1) * 8)[k * 8:(k + 1) * 8]
    u = [(int(w) >> 11) * 2.0**-53 for w in words]
    expected = []
    for u1, u2 in zip(u[0::2], u[1::2]):
        r = np.sqrt(-2 * np.log(1 - u1))
        expected += [r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)]
    np.testing.assert_allclose(latents(11, 1, dim, start=k)[0], np.float32(expected[:dim]), rtol=1e-6)


@pytest.mark.parametrize("seed", [-1, 1.5, "3", True, 2**64])
def test_bad_seeds(seed):
    with pytest.raises(ValueError, match="seed must be an integer"):
        latents(seed, 1, 4)


def _normal_cdf(x):
    return 0.5 * np.vectorize(math.erfc)(-np.asarray(x, np.float64) / math.sqrt(2))


def _ks(sample, cdf):
    """Kolmogorov-Smirnov statistic of a sample against a CDF."""
    x = np.sort(sample.astype(np.float64))
    f = cdf(x)
    n = len(x)
    return max(np.max(np.arange(1, n + 1) / n - f), np.max(f - np.arange(n) / n))


@pytest.mark.parametrize("bound, scale", [(2.0, 1.0), (0.5, 0.4), (4.0, 1.0)])
def test_truncated_normal_latents(bound, scale):
    dist = distribution("truncated_normal", bound, scale)
    z = latents(3, 500, 40, dist=dist).ravel() / scale
    assert np.abs(z).max() <= bound and np.abs(z).max() > min(0.99 * bound, 3.0)
    lo = _normal_cdf(-bound)
    ks = _ks(z, lambda x: (_normal_cdf(x) - lo) / (1 - 2 * lo))
    assert ks < 1.63 / np.sqrt(len(z))  # the 1% critical value: a wrong quantile function fails by far
    whole = latents(3, 20, 40, dist=dist)
    np.testing.assert_array_equal(latents(3, 5, 40, start=7, dist=dist), whole[7:12])


def test_truncated_normal_follows_the_documented_recipe():
    """Phi(z) = Phi(-t) + u (Phi(t) - Phi(-t)) for each word's u, to float32 precision."""
    t, dim, k = 1.5, 7, 2
    words = np.random.Philox(key=5).random_raw((k + 1) * 8)[k * 8:k * 8 + dim]
    u = np.array([(int(w) >> 11) * 2.0**-53 for w in words])
    z = latents(5, 1, dim, start=k, dist=distribution("truncated_normal", t))[0]
    lo = _normal_cdf(-t)
    np.testing.assert_allclose(_normal_cdf(z), lo + u * (1 - 2 * lo), atol=2e-7)


def test_uniform_latents():
    z = latents(1, 400, 50, dist=distribution("uniform", 3.0)).ravel()
    assert -3 <= z.min() < -2.99 and 2.99 < z.max() < 3
    assert _ks(z, lambda x: (x + 3) / 6) < 1.63 / np.sqrt(len(z))


@pytest.mark.parametrize("args, message", [
    (("gauss",), "is not one of normal, truncated_normal, uniform"),
    (("normal", 2.0), "a normal latent distribution has no bound"),
    (("truncated_normal", 0.0), r"bound must be a number in \(0, 1000\]"),
    (("uniform", float("nan")), r"bound must be a number in \(0, 1000\]"),
    (("truncated_normal", 2.0, -1.0), r"scale must be a number in \(0, 1000\]"),
])
def test_bad_distributions(args, message):
    with pytest.raises(ValueError, match=message):
        distribution(*args)
