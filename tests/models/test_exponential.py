import math

import torch

from pyro_adv.models import (
    exact_posterior_moments,
    exact_posterior_sample,
    exponential_log_joint,
    posterior_summary,
    sample_prior_predictive,
    sample_training_observations,
)


def test_quadrature_matches_reference_values():
    # values quoted in the issue, from an independent computation
    assert abs(exact_posterior_moments(1.0)["mean_norm"] - 1.375) < 1e-3
    assert abs(exact_posterior_moments(30.0)["mean_norm"] - 3.221) < 1e-3
    assert abs(exact_posterior_moments(1.0)["sd_norm"] - 0.767) < 1e-3
    assert abs(exact_posterior_moments(30.0)["sd_norm"] - 0.733) < 1e-3


def test_quadrature_against_brute_force_grid():
    # 2-D Riemann sum of the unnormalized posterior on a fine grid
    g = torch.linspace(-12, 12, 1201, dtype=torch.float64)
    z = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1)
    for x in [1.0, 30.0]:
        w = (exponential_log_joint(z, x)).exp()
        w = w / w.sum()
        r = z.norm(dim=-1)
        exact = exact_posterior_moments(x)
        assert math.isclose((w * r).sum().item(), exact["mean_norm"], rel_tol=1e-4)
        assert math.isclose((w * z[..., 0] ** 2).sum().item(), exact["var_z1"], rel_tol=1e-4)


def test_rejection_sampler_matches_quadrature():
    for x in [1.0, 30.0]:
        s = exact_posterior_sample(x, 40000, torch.Generator().manual_seed(0))
        got, exact = posterior_summary(s), exact_posterior_moments(x)
        for key in ["var_z1", "mean_norm", "sd_norm"]:
            assert abs(got[key] / exact[key] - 1) < 0.03, key
        assert max(abs(m) for m in got["mean"]) < 0.05


def _training_cdf(t, x_max=40.0, low=0.25):
    # the stated law: half uniform on [0, x_max], half log-uniform on [low, x_max]
    uniform = min(max(t / x_max, 0.0), 1.0)
    log_uniform = min(max(math.log(max(t, low) / low) / math.log(x_max / low), 0.0), 1.0)
    return 0.5 * uniform + 0.5 * log_uniform


def test_training_observations_follow_their_stated_law():
    # Kolmogorov-Smirnov distance to the exact mixture CDF (5% critical value ~0.0096
    # at n = 20000); the prior predictive, which the amortized fits used to train on,
    # is far from it (distance ~0.3)
    n = 20000
    x = sample_training_observations(n, generator=torch.Generator().manual_seed(0))
    assert x.min() >= 0 and x.max() <= 40.0
    x = x.double().sort().values
    cdf = torch.tensor([_training_cdf(t) for t in x.tolist()], dtype=torch.float64)
    steps = torch.arange(1, n + 1, dtype=torch.float64) / n
    assert (steps - cdf).abs().max() < 0.012
    _, prior = sample_prior_predictive(n, torch.Generator().manual_seed(0))
    prior = prior.double().sort().values
    cdf = torch.tensor([_training_cdf(t) for t in prior.tolist()], dtype=torch.float64)
    assert (steps - cdf).abs().max() > 0.1
