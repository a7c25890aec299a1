"""KID and precision/recall on features whose answer is known, and the Frechet distance against the formula
pytorch-fid uses (scipy.linalg.sqrtm)."""

import numpy as np
import pytest

from gandeploy.metrics import fid
from gandeploy.metrics.quality import kid, precision_recall


def test_kid_is_unbiased_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    real, same = rng.normal(size=(600, 32)), rng.normal(size=(600, 32))
    mean, std = kid(real, same, subsets=50, subset_size=200)
    assert abs(mean) < 3 * std + 1e-3 and std > 0  # unbiased: centred on zero, unlike FID
    shifted = kid(real, rng.normal(0.5, 1.0, size=(600, 32)), subsets=50, subset_size=200)[0]
    further = kid(real, rng.normal(1.0, 1.0, size=(600, 32)), subsets=50, subset_size=200)[0]
    assert 0 < shifted < further


def test_kid_matches_the_estimator_written_out():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(7, 5)), rng.normal(0.3, 1.0, size=(7, 5))
    k = lambda a, b: (a @ b / 5 + 1) ** 3  # noqa: E731
    m = 7
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    mean, std = kid(y, x, subsets=1, subset_size=7)  # one subset of all samples: the estimator itself
    assert mean == pytest.approx(xx + yy - 2 * xy, rel=1e-12) and std == 0


def test_precision_and_recall_tell_missing_modes_from_bad_samples():
    rng = np.random.default_rng(2)
    modes = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], float)
    real = np.concatenate([m + rng.normal(size=(200, 2)) for m in modes])
    assert precision_recall(real, real.copy()) == (1.0, 1.0)
    one_mode = modes[0] + rng.normal(size=(800, 2))  # good samples, three modes missing
    precision, recall = precision_recall(real, one_mode)
    assert precision > 0.95 and recall < 0.4
    far = rng.normal(50, 1, size=(800, 2))  # nothing like the data
    assert precision_recall(real, far) == (0.0, 0.0)


@pytest.mark.parametrize("n", [400, 70])  # well-conditioned; nearly singular (70 samples in 64 dimensions)
def test_frechet_distance_matches_pytorch_fids_formula(n):
    linalg = pytest.importorskip("scipy.linalg", reason="scipy is in the test extra")
    rng = np.random.default_rng(3)
    mix = rng.normal(size=(64, 64)) * 0.3
    x, y = rng.normal(size=(n, 64)), rng.normal(0.5, 1.0, size=(n, 64)) @ mix
    mu1, s1 = fid.statistics(x)
    mu2, s2 = fid.statistics(y)
    covmean = linalg.sqrtm(s1 @ s2)  # pytorch-fid's calculate_frechet_distance
    if not np.isfinite(covmean).all():
        offset = np.eye(64) * 1e-6
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    diff = mu1 - mu2
    expected = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)
