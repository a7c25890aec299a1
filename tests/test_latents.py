import numpy as np
import pytest

from gandeploy.latents import latents


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
