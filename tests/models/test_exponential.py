import math

import torch

from pyro_adv.models import (
    exact_posterior_moments,
    exact_posterior_sample,
    exponential_log_joint,
    posterior_summary,
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
