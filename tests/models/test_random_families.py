"""Randomized task families (issue 12, item 5): seeded draws, exact references, and one
small fixed-seed run of each Table 5 family on the library defaults."""

import math

import pytest
import torch

from pyro_adv.models.exponential import exact_posterior_moments
from pyro_adv.models.random_families import (
    gaussian_errors,
    random_conjugate_gaussian,
    random_correlation,
    random_exponential_observations,
    random_gaussian_target,
    random_linear_simulator,
)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _condition(joint_cov, joint_mean, d, x):
    """Posterior of the first d coordinates of a joint Gaussian given the rest = x (Schur)."""
    s_zz, s_zx, s_xx = joint_cov[:d, :d], joint_cov[:d, d:], joint_cov[d:, d:]
    gain = s_zx @ torch.linalg.inv(s_xx)
    return joint_mean[:d] + gain @ (x - joint_mean[d:]), s_zz - gain @ s_zx.T


def test_draws_are_seeded_and_leave_the_global_stream_alone():
    state = torch.get_rng_state()
    a, b = random_gaussian_target(3, 5), random_gaussian_target(3, 5)
    assert torch.equal(a.loc, b.loc) and torch.equal(a.covariance, b.covariance)
    assert not torch.equal(a.loc, random_gaussian_target(4, 5).loc)
    random_conjugate_gaussian(3)
    random_linear_simulator(3)
    assert torch.equal(torch.get_rng_state(), state)


def test_random_gaussian_target():
    dims = set()
    for seed in range(20):
        t = random_gaussian_target(seed, dim=2)
        sd = t.covariance.diagonal().sqrt()
        corr = t.covariance[0, 1] / sd.prod()
        assert 0.5 - 1e-6 <= sd.min() and sd.max() <= 2 + 1e-6 and abs(corr) < 0.85
        dims.add(round(corr.item(), 3))
    assert len(dims) == 20  # different correlations, both signs
    corr = random_correlation(5, __import__("numpy").random.default_rng(0))
    assert abs(corr.diagonal() - 1).max() < 1e-12 and (abs(corr - corr.T) < 1e-12).all()
    target = random_gaussian_target(0, dim=5)
    x = target.sample(50000, torch.Generator().manual_seed(0))
    errors = gaussian_errors(x, target.loc, target.covariance)
    assert errors["mean (sd)"] < 0.03 and errors["sd ratio - 1"] < 0.03, errors


def test_conjugate_posterior_is_the_joint_gaussian_conditioned():
    # an independent route to the posterior: condition the joint Gaussian of (z, x_1..x_N)
    seen = set()
    for seed in range(6):
        task = random_conjugate_gaussian(seed)
        m = task.model
        d, n, k = m.latent_dim, task.data.shape[0], m.obs_dim
        seen.add(d)
        big = torch.cat([m.design] * n).double()  # (n k, d): stacked observations
        prior = m.prior_cov.double()
        joint = torch.zeros(d + n * k, d + n * k, dtype=torch.float64)
        joint[:d, :d] = prior
        joint[:d, d:] = prior @ big.T
        joint[d:, :d] = big @ prior
        joint[d:, d:] = big @ prior @ big.T + m.noise_scale**2 * torch.eye(n * k)
        mean = torch.cat([m.prior_loc.double(), big @ m.prior_loc.double()])
        loc, cov = _condition(joint, mean, d, task.data.double().reshape(-1))
        assert torch.allclose(task.posterior_loc.double(), loc, atol=1e-4)
        assert torch.allclose(task.posterior_covariance.double(), cov, atol=1e-4)
        assert 2 <= d <= 10
    assert len(seen) > 2


def test_linear_simulator_posterior_and_sampler():
    sim = random_linear_simulator(0)
    theta, x = sim.sample_joint(200000, torch.Generator().manual_seed(0))
    assert x.shape == (200000, sim.dim_data)
    # the simulator agrees with the likelihood: standardized residuals are N(0, 1)
    resid = (x - theta @ sim.design.T - sim.offset) / sim.noise_scale
    assert abs(resid.mean()) < 0.01 and abs(resid.std() - 1) < 0.01
    # exact posterior = the joint Gaussian of (theta, x) conditioned on x
    d = sim.dim_parameters
    prior = torch.diag(sim.prior_scale**2).double()
    a = sim.design.double()
    joint = torch.zeros(d + sim.dim_data, d + sim.dim_data, dtype=torch.float64)
    joint[:d, :d], joint[:d, d:], joint[d:, :d] = prior, prior @ a.T, a @ prior
    joint[d:, d:] = a @ prior @ a.T + sim.noise_scale**2 * torch.eye(sim.dim_data)
    mean = torch.cat([sim.prior_loc.double(), a @ sim.prior_loc.double() + sim.offset.double()])
    loc, cov = _condition(joint, mean, d, x[0].double())
    got_loc, got_cov = sim.posterior_moments(x[0])
    assert torch.allclose(got_loc.double(), loc, atol=1e-4)
    assert torch.allclose(got_cov.double(), cov, atol=1e-4)
    draws = sim.reference_posterior_sample(x[0], 50000, torch.Generator().manual_seed(1))
    assert gaussian_errors(draws, got_loc, got_cov)["sd ratio - 1"] < 0.03
    # the data are informative: the posterior is narrower than the prior
    assert (cov.diagonal().sqrt() < sim.prior_scale.double()).all()


def test_exponential_observations_span_the_range():
    xs = random_exponential_observations(0)
    assert len(xs) == 3 and 0.2 <= xs[0] < 1.2 and xs[-1] > 6.0 and xs == sorted(xs)
    for x in xs:
        assert exact_posterior_moments(x)["sd_norm"] > 0


def test_gaussian_errors_catch_a_wrong_correlation():
    cov = torch.tensor([[1.0, 0.8], [0.8, 1.0]])
    wrong = torch.randn(20000, 2, generator=torch.Generator().manual_seed(0))  # right marginals
    errors = gaussian_errors(wrong, torch.zeros(2), cov)
    assert errors["marginal sd ratio - 1"] < 0.03 and errors["sd ratio - 1"] > 0.5
    assert math.isinf(
        gaussian_errors(torch.full((5, 2), math.nan), torch.zeros(2), cov)["mean (sd)"]
    )


# ------------------------------------------------ one small run of each Table 5 family
#: the fixed seed where it is not 0. ALI (1500 steps, half the table's, ~20 s on a free
#: core): seed 5 is 4-D, the table's worst before the encoder's regression base (mean
#: 0.32 sd and sd 43% off at 3000 steps); with the base its mean is 0.13 sd and its sd
#: 6% off, and with the base off (ImplicitEncoder(regression_base=False)) 0.57 sd and
#: 42%, a miss
_SEEDS = {"ali_linear_simulator": 5}


@pytest.mark.slow
@pytest.mark.parametrize(
    "family",
    [
        "gan_gaussian_2d",
        "gan_gaussian_5d",
        "avb_conjugate",
        "ali_linear_simulator",
        "avb_linear_simulator",
        # 2000 steps of the README's amortized code (~70 s on a free core): seed 0 within
        # 6.8% at every x; with the context's automatic log off
        # (ImplicitEncoder(log_context=False)) 8.4%, and at 1000 steps 22% off, a miss.
        # It replaces the tuned recipe's 3000-step run of the same model (129 s): the
        # library's defaults, checked against quadrature at five x including 1 and 30
        "exponential_avb",
    ],
)
def test_family_small_run(family):
    from benchmarks.robustness import run_seed

    result = run_seed(family, seed=_SEEDS.get(family, 0), suite="test")
    assert not result["note"], result["note"]
    assert result["passed"], result["failures"]
