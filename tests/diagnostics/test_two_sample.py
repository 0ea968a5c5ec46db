import numpy as np
import pytest
import torch

from pyro_adv.diagnostics import c2st, energy_distance, mmd, moment_errors, two_sample_metrics


@pytest.fixture
def samples():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 2, generator=g)
    b = torch.randn(500, 2, generator=g)
    far = torch.randn(500, 2, generator=g) * 0.5 + torch.tensor([3.0, -3.0])
    return a, b, far


def test_c2st_same_vs_different(samples):
    a, b, far = samples
    same = c2st(a, b, seed=0)
    assert abs(same - 0.5) < 0.08
    assert c2st(a, far, seed=0) > 0.97
    # seeded: identical calls agree exactly, and numpy input works
    assert c2st(a.numpy(), b.numpy(), seed=0) == same


def test_c2st_unequal_sizes_keep_chance_at_one_half(samples):
    a, b, _ = samples
    # 500 vs 150 of one distribution: a majority-class classifier would score 0.77
    assert abs(c2st(a, b[:150], seed=0) - 0.5) < 0.1


def test_c2st_sees_a_narrow_approximation(samples):
    a, b, _ = samples
    # a guide 3x too narrow is easy to tell apart from the reference
    assert c2st(a, b / 3, seed=0) > 0.7


def test_mmd_and_energy_distance(samples):
    a, b, far = samples
    assert abs(mmd(a, b)) < 0.01
    assert mmd(a, far) > 0.5
    assert mmd(a, far, bandwidth=1.0) > 0.5
    assert abs(energy_distance(a, b)) < 0.05
    assert energy_distance(a, far) > 3.0
    # exact value for point masses: 2|x - y| - 0 - 0 between two constant samples
    x, y = torch.zeros(10, 1), torch.ones(10, 1)
    assert energy_distance(x, y) == pytest.approx(2.0)


def test_moment_errors(samples):
    a, b, _ = samples
    errors = moment_errors(a * 0.5 + 0.2, a)
    assert errors["mean_error"].shape == (2,)
    np.testing.assert_allclose(errors["variance_ratio"], 0.25, rtol=1e-5)
    expected = ((0.2 - 0.5 * a.mean(0)).abs() / a.std(0)).numpy()
    np.testing.assert_allclose(errors["mean_error"], expected, rtol=1e-5)
    metrics = two_sample_metrics(b, a, seed=0)
    assert set(metrics) == {
        "c2st",
        "mmd",
        "energy_distance",
        "max_mean_error",
        "min_variance_ratio",
        "max_variance_ratio",
    }


def test_one_dimensional_input():
    g = torch.Generator().manual_seed(1)
    assert mmd(torch.randn(200, generator=g), torch.randn(200, generator=g) + 5.0) > 0.5


@pytest.mark.parametrize(
    "x, y, match",
    [
        (torch.zeros(20, 2), torch.zeros(20, 3), "different dimensions"),
        (torch.zeros(20, 2, 2), torch.zeros(20, 2, 2), r"\(num_samples, dim\)"),
        (torch.zeros(1, 2), torch.zeros(20, 2), "at least"),
        (torch.full((20, 2), float("nan")), torch.zeros(20, 2), "NaN"),
    ],
)
def test_bad_input(x, y, match):
    with pytest.raises(ValueError, match=match):
        mmd(x, y)
    with pytest.raises(ValueError, match=match):
        c2st(x, y)
