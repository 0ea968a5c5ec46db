"""Exact references of the thesis's GAN experiments (sections 3.2.1 and 3.3.2.1)."""

import math

import numpy as np
import pyro
import pytest
import torch
from scipy import integrate, stats

from pyro_adv.diagnostics import energy_distance
from pyro_adv.infer.divergences import DIVERGENCES
from pyro_adv.models.gan_targets import (
    BIVARIATE_COVARIANCE,
    BIVARIATE_MEAN,
    bivariate_normal_gan,
    bivariate_normal_target,
    divergence_1d,
    exact_divergence_optimum,
    exact_energy_distance_optimum,
    gaussian_divergence,
    gaussian_kl,
    location_scale_gan,
    mixture_cdf,
    mixture_divergence,
    mixture_energy_distance,
    mixture_log_density,
    mixture_moments,
    sample_bivariate_normal,
    sample_mixture,
)


def test_bivariate_target():
    assert np.allclose(BIVARIATE_COVARIANCE, [[0.49, 0.245], [0.245, 0.49]], atol=1e-15)
    target = bivariate_normal_target()
    assert torch.allclose(target.loc, torch.tensor(BIVARIATE_MEAN))
    x = sample_bivariate_normal(200000)
    assert x.shape == (200000, 2)
    assert torch.allclose(x.mean(0), torch.tensor(BIVARIATE_MEAN), atol=0.01)
    assert torch.allclose(torch.cov(x.T), torch.tensor(BIVARIATE_COVARIANCE), atol=0.01)


def test_mixture_density_cdf_moments_and_sampler():
    total, _ = integrate.quad(lambda x: math.exp(mixture_log_density(x)), -5, 9)
    assert abs(total - 1.0) < 1e-8
    x = np.linspace(-1, 5, 7)
    torch_lp = mixture_log_density(torch.tensor(x, dtype=torch.float64)).numpy()
    assert np.allclose(torch_lp, mixture_log_density(x))
    cdf = 0.5 * stats.norm.cdf(x, 1.0, 0.3) + 0.5 * stats.norm.cdf(x, 3.0, 0.3)
    assert np.allclose(mixture_cdf(x), cdf)
    mean, sd = mixture_moments()
    assert mean == 2.0 and abs(sd - math.sqrt(1.09)) < 1e-12
    s = sample_mixture(200000)
    assert abs(s.mean().item() - mean) < 0.01 and abs(s.std().item() - sd) < 0.01


def test_location_scale_gan_is_a_pyro_model():
    x = pyro.infer.Predictive(location_scale_gan, num_samples=2)(n=5000)["x"]
    assert x.shape == (2, 5000)
    assert abs(x.mean().item()) < 0.1 and abs(x.std().item() - 1.0) < 0.1
    with pytest.raises(ValueError, match="data or n"):
        location_scale_gan()


def test_bivariate_normal_gan_simulates_and_subsamples():
    gan = bivariate_normal_gan()
    assert pyro.infer.Predictive(gan, num_samples=2)(n=7)["x"].shape == (2, 7, 2)
    trace = pyro.poutine.trace(gan).get_trace(sample_bivariate_normal(50), batch_size=8)
    assert trace.nodes["x"]["value"].shape == (8, 2)
    # the thesis's generator: 2 -> 20 softplus units -> 2
    shapes = {tuple(p.shape) for p in pyro.get_param_store().values()}
    assert shapes == {(20, 2), (20,), (2, 20), (2,)}


def test_quadrature_matches_closed_forms():
    assert gaussian_kl(0.0, 1.0, 0.0, 1.0) == 0.0
    assert abs(gaussian_divergence("kl", 0.0, 1.0, 1.0, 1.5) - gaussian_kl(0, 1, 1, 1.5)) < 1e-8
    assert abs(gaussian_divergence("reverse_kl", 0, 1, 1, 1.5) - gaussian_kl(1, 1.5, 0, 1)) < 1e-8
    # Pearson chi^2 between normals: exp(mu^2 ...) closed form for equal scales
    assert abs(gaussian_divergence("pearson", 0.0, 1.0, 1.0, 1.0) - math.expm1(1.0)) < 1e-8
    # squared Hellinger for equal scales: 2 (1 - exp(-d^2 / 8))
    hellinger = 2 * (1 - math.exp(-1.0 / 8))
    assert abs(gaussian_divergence("squared_hellinger", 0, 1, 1, 1) - hellinger) < 1e-8
    # total variation for equal scales: sup |P(A) - Q(A)| = 2 Phi(d / 2) - 1 (the kink
    # of |u - 1| costs the trapezoid rule a little accuracy)
    tv = 2 * stats.norm.cdf(0.5) - 1
    assert abs(gaussian_divergence("total_variation", 0, 1, 1, 1) - tv) < 1e-5
    # W1 between equal-scale normals is the distance of the means
    assert abs(gaussian_divergence("wasserstein", 0, 1, 1, 1) - 1.0) < 1e-6
    # the minimax bound is 2 JSD - log 4 and equals -log 4 for equal distributions
    assert abs(gaussian_divergence("minimax", 0, 1, 0, 1) + math.log(4)) < 1e-8
    with pytest.raises(ValueError, match="cdf"):
        divergence_1d("wasserstein", [0.0], [0.0], [0.0])


def test_forward_kl_optimum_matches_moments():
    mean, sd = mixture_moments()
    best = exact_divergence_optimum("kl")
    assert abs(best.loc - mean) < 1e-4 and abs(best.scale - sd) < 1e-4
    assert abs(best.divergence - mixture_divergence("kl", mean, sd)) < 1e-8


def test_reverse_kl_optimum_is_a_mode():
    # thesis Table 1: 2.998 / 0.301; two symmetric optima
    left = exact_divergence_optimum("reverse_kl", init=(0.5, 0.5))
    right = exact_divergence_optimum("reverse_kl", init=(3.5, 0.5))
    assert abs(left.loc - 1.0) < 0.01 and abs(right.loc - 3.0) < 0.01
    assert abs(left.scale - 0.30) < 0.01 and abs(left.scale - right.scale) < 1e-4
    assert abs(left.divergence - right.divergence) < 1e-6
    best = exact_divergence_optimum("reverse_kl")
    assert abs(best.divergence - left.divergence) < 1e-6
    with pytest.raises(ValueError, match="sigma"):
        exact_divergence_optimum("reverse_kl", init=(1.0, 0.0))


@pytest.mark.parametrize("name", ["js", "squared_hellinger", "wasserstein"])
def test_symmetric_divergences_cover_both_modes(name):
    best = exact_divergence_optimum(name)
    assert abs(best.loc - 2.0) < 1e-3 and 0.9 < best.scale < 1.1
    # it is a minimum: nearby points are worse
    for dl, ds in [(0.05, 0), (-0.05, 0), (0, 0.05), (0, -0.05)]:
        assert mixture_divergence(name, best.loc + dl, best.scale + ds) > best.divergence


def test_every_divergence_has_an_optimum():
    assert set(DIVERGENCES) >= {"kl", "reverse_kl", "wasserstein"}
    with pytest.raises(ValueError, match="valid names"):
        exact_divergence_optimum("bogus")


def test_energy_distance_matches_the_sample_estimate_and_its_optimum():
    torch.manual_seed(0)
    fake = 2.0 + 1.2 * torch.randn(4000)
    estimate = energy_distance(sample_mixture(4000), fake, max_samples=4000)
    assert abs(estimate - mixture_energy_distance(2.0, 1.2)) < 0.01
    best = exact_energy_distance_optimum()
    # wider than moment matching (sd 1.044): the energy score is not a likelihood
    assert abs(best.loc - 2.0) < 1e-3 and abs(best.scale - 1.219) < 2e-3
    for dl, ds in [(0.05, 0), (-0.05, 0), (0, 0.05), (0, -0.05)]:
        assert mixture_energy_distance(best.loc + dl, best.scale + ds) > best.divergence
