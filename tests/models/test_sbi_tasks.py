"""The sbibm tasks' simulators, likelihoods and exact reference posteriors."""

import math

import pyro
import pytest
import torch

from pyro_adv.infer import simulate
from pyro_adv.models import (
    BERNOULLI_GLM,
    GAUSSIAN_LINEAR,
    GAUSSIAN_MIXTURE,
    NPE_C2ST_10K,
    SBI_TASKS,
    SLCP,
    TWO_MOONS,
    TwoMoons,
    TwoMoonsLikelihood,
)
from pyro_adv.nn import ImplicitEncoder

TASKS = list(SBI_TASKS.values())


def _grid(lo, hi, n):
    g = torch.linspace(lo, hi, n, dtype=torch.float64)
    return torch.stack(torch.meshgrid(g, g, indexing="ij"), -1), (hi - lo) / (n - 1)


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_shapes_model_and_observations(task):
    d, m = task.dim_parameters, task.dim_data
    theta, x = task.sample_joint(7, torch.Generator().manual_seed(0))
    assert theta.shape == (7, d) and x.shape == (7, m)
    assert task.simulator(theta.expand(3, 7, d)).shape == (3, 7, m)
    bank = simulate(task.model, 2, num_data=5)
    assert bank["theta"].shape == (2, 5, d) and bank["x"].shape == (2, 5, m)
    # the model scores its data like the task's likelihood, and subsamples
    trace = pyro.poutine.trace(task.model).get_trace(x)
    trace.compute_log_prob()
    expected = task.log_likelihood(trace.nodes["theta"]["value"], x)
    assert torch.allclose(trace.nodes["x"]["log_prob"], expected)
    trace = pyro.poutine.trace(task.model).get_trace(x, subsample_size=3)
    assert trace.nodes["x"]["value"].shape == (3, m)
    # fixed observations: the same every call, one seed each
    theta_obs, x_obs = task.observations(3)
    assert theta_obs.shape == (3, d) and x_obs.shape == (3, m)
    assert torch.equal(task.observations(3)[1], x_obs)
    assert torch.equal(task.observations(5)[1][:3], x_obs)
    assert not torch.equal(x_obs[0], x_obs[1])
    assert 0.5 < task.npe_c2st < 1 and task.npe_c2st == NPE_C2ST_10K[task.name]


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_guide_stays_in_the_prior_support(task):
    encoder = ImplicitEncoder(task.dim_data, task.dim_parameters)
    with torch.no_grad():
        encoder.net.net[-1].bias.fill_(30.0)  # far outside a bounded prior's box
    _, x = task.sample_joint(4)
    q = task.posterior(encoder, x)
    draws = q.sample((50,))
    assert draws.shape == (50, 4, task.dim_parameters)
    assert torch.isfinite(task.prior().log_prob(draws)).all()
    trace = pyro.poutine.trace(task.guide(encoder)).get_trace(x, subsample_size=2)
    assert trace.nodes["theta"]["value"].shape == (2, task.dim_parameters)


def test_gaussian_linear_posterior():
    task = GAUSSIAN_LINEAR
    # sbibm's observation 2: near enough the prior's bulk for importance sampling from it
    x = task.observations(2)[1][1].double()
    mean, cov = task.posterior_moments(x)
    # sbibm's formula: Sigma = (P_prior + P_sim)^-1, mu = Sigma P_sim x, P = inverse(0.1 I)
    precision = torch.linalg.inv(0.1 * torch.eye(10, dtype=torch.float64))
    sbibm_cov = torch.linalg.inv(precision + precision)
    assert torch.allclose(cov, sbibm_cov) and torch.allclose(mean, sbibm_cov @ precision @ x)
    assert torch.allclose(cov, 0.05 * torch.eye(10, dtype=torch.float64))
    # independent check: self-normalized importance sampling from the prior
    prior_draws = task.sample_prior(400_000, torch.Generator().manual_seed(1)).double()
    log_w = task.log_likelihood(prior_draws, x)
    w = (log_w - log_w.max()).exp()
    w = w / w.sum()
    assert (w.sum() ** 2 / (w**2).sum()) > 1000  # enough effective draws
    is_mean = (w[:, None] * prior_draws).sum(0)
    assert (is_mean - mean).abs().max() < 4 * math.sqrt(0.05 / 1000)
    s = task.reference_posterior_sample(x, 20_000, torch.Generator().manual_seed(2)).double()
    assert (s.mean(0) - mean).abs().max() < 0.01
    assert (torch.cov(s.T) - cov).abs().max() < 0.005


@pytest.mark.parametrize("width", [0.0, 0.002])
def test_two_moons_likelihood_is_a_density_of_the_simulator(width):
    theta = torch.tensor([0.3, -0.1], dtype=torch.float64)
    shift = TwoMoonsLikelihood.shift(theta)
    grid, h = _grid(-0.2, 0.2, 1600)  # an even count misses r = 0, where 1 / r is infinite
    x = grid + shift + torch.tensor([0.25, 0.0], dtype=torch.float64)
    density = TwoMoonsLikelihood(theta, width).log_prob(x).exp()
    assert abs((density * h * h).sum().item() - 1) < 2e-3
    # the density's moments are the simulator's
    sims = TWO_MOONS.simulator(theta.expand(200_000, 2), torch.Generator().manual_seed(0))
    grid_mean = (density[..., None] * x).sum((0, 1)) * h * h
    assert (sims.mean(0) - grid_mean).abs().max() < 1e-3 + 0.06 * width


def test_two_moons_reference_matches_grid_posterior():
    task = TWO_MOONS
    grid, h = _grid(-1.0, 1.0, 2001)
    _, x_obs = task.observations(2)
    for k, x in enumerate(x_obs):
        # posterior on a 0.001 grid: the exact likelihood times the flat prior
        p = TwoMoonsLikelihood(grid).log_prob(x.double()).exp()
        p = p / p.sum()
        s = task.reference_posterior_sample(x, 50_000, torch.Generator().manual_seed(k)).double()
        assert (s.abs() <= 1).all()
        mean = (p[..., None] * grid).sum((0, 1))
        assert (s.mean(0) - mean).abs().max() < 0.01
        second = (p[..., None, None] * grid[..., :, None] * grid[..., None, :]).sum((0, 1))
        assert (s.T @ s / s.shape[0] - second).abs().max() < 0.01
        # probabilities of 0.1 x 0.1 cells: total variation (sampling noise alone: ~0.01)
        edges = torch.linspace(-1, 1, 21, dtype=torch.float64)
        cell = (torch.bucketize(s, edges[1:-1]) * torch.tensor([20, 1])).sum(-1)
        hist = torch.bincount(cell, minlength=400).double() / s.shape[0]
        gcell = (torch.bucketize(grid, edges[1:-1]) * torch.tensor([20, 1])).sum(-1)
        grid_hist = torch.zeros(400, dtype=torch.float64).index_add_(
            0, gcell.flatten(), p.flatten()
        )
        assert 0.5 * (hist - grid_hist).abs().sum() < 0.02


def test_two_moons_posterior_is_two_mirrored_crescents():
    x = TWO_MOONS.observations(1)[1][0]
    s = TWO_MOONS.reference_posterior_sample(x, 20_000, torch.Generator().manual_seed(0))
    assert abs(TWO_MOONS.minor_crescent_share(s) - 0.5) < 0.02
    assert TWO_MOONS.minor_crescent_share(s[s.sum(-1) > 0]) == 0.0
    # every draw lies on the crescent: radius 0.1 (sd 0.01) around its centre
    p = x - TwoMoonsLikelihood.shift(s)
    r = (p - torch.tensor([0.25, 0.0])).norm(dim=-1)
    assert abs(r.mean().item() - 0.1) < 1e-3 and abs(r.std().item() - 0.01) < 1e-3
    assert (p[:, 0] >= 0.25 - 1e-6).all()


def test_two_moons_soft_boundary_leaves_reference_exact():
    soft = TwoMoons(boundary_width=0.002)
    theta = torch.tensor([[0.2, 0.3]])
    # the crescent's centre minus 0.1 along p_1: on its circle, but in the left half-plane
    x = TwoMoonsLikelihood.shift(theta) + torch.tensor([0.15, 0.0])
    assert torch.isfinite(soft.log_likelihood(theta, x)).all()
    assert torch.isinf(TWO_MOONS.log_likelihood(theta, x)).all()
    x_obs = TWO_MOONS.observations(1)[1][0]
    a = soft.reference_posterior_sample(x_obs, 100, torch.Generator().manual_seed(0))
    b = TWO_MOONS.reference_posterior_sample(x_obs, 100, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


def test_published_anchors():
    assert SLCP.published_c2st(10_000)["NPE"] == 0.901
    assert TWO_MOONS.published_c2st(100_000)["GATSBI"] == 0.856
    with pytest.raises(ValueError, match="no published C2ST at 500"):
        SLCP.published_c2st(500)


def test_gaussian_mixture_likelihood_simulator_and_reference():
    task = GAUSSIAN_MIXTURE
    theta = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    x = torch.tensor([[1.3, -2.2], [4.0, 0.0]], dtype=torch.float64)
    by_hand = torch.logsumexp(
        torch.stack(
            [
                torch.distributions.Normal(theta, s).log_prob(x).sum(-1) + math.log(0.5)
                for s in (1.0, 0.1)
            ]
        ),
        0,
    )
    assert torch.allclose(task.log_likelihood(theta, x), by_hand)
    # the simulator: half its draws from each component
    sims = task.simulator(theta.float().expand(100_000, 2), torch.Generator().manual_seed(0))
    d2 = (sims - theta.float()).pow(2).sum(-1)
    assert abs(d2.mean().item() - (0.5 * 2 + 0.5 * 0.02)) < 0.02
    assert abs((d2 < 0.1).float().mean().item() - (0.5 * (1 - math.exp(-5)) + 0.5 * 0.0488)) < 0.01
    # the reference near the box's face: the truncated mixture, by importance sampling
    x0 = torch.tensor([9.5, 0.0])
    ref = task.reference_posterior_sample(x0, 40_000, torch.Generator().manual_seed(1)).double()
    assert (ref.abs() <= 10).all()
    prior = task.sample_prior(400_000, torch.Generator().manual_seed(2)).double()
    w = task.log_likelihood(prior, x0.double()).exp()
    is_mean = (w[:, None] * prior).sum(0) / w.sum()
    assert (ref.mean(0) - is_mean).abs().max() < 0.03


def test_slcp_likelihood_and_simulator():
    theta = torch.tensor([[0.5, -1.0, 1.2, -0.8, 0.7]], dtype=torch.float64)
    s1, s2, rho = 1.2**2, 0.8**2, math.tanh(0.7)
    cov = torch.tensor([[s1**2, rho * s1 * s2], [rho * s1 * s2, s2**2]], dtype=torch.float64)
    cov = cov + 1e-6 * torch.eye(2, dtype=torch.float64)
    mvn = torch.distributions.MultivariateNormal(torch.tensor([0.5, -1.0]).double(), cov)
    x = mvn.sample((3, 4)).reshape(3, 8)
    assert torch.allclose(SLCP.log_likelihood(theta, x), mvn.log_prob(x.reshape(3, 4, 2)).sum(-1))
    sims = SLCP.simulator(theta.expand(50_000, 5), torch.Generator().manual_seed(0))
    pairs = sims.reshape(-1, 2)
    assert torch.allclose(torch.cov(pairs.T), cov, rtol=0.03, atol=1e-3)
    assert torch.allclose(pairs.mean(0), mvn.mean, atol=0.02)
    # Pyro's sampling path (simulate) draws from the same distribution
    draws = SLCP.likelihood(theta.expand(50_000, 5)).sample().reshape(-1, 2)
    assert torch.allclose(torch.cov(draws.T), cov, rtol=0.03, atol=1e-3)


def test_bernoulli_glm_prior_likelihood_and_simulator():
    task = BERNOULLI_GLM
    assert torch.allclose(
        torch.linalg.inv(task.prior_scale_tril @ task.prior_scale_tril.T),
        task.prior_precision,
        atol=1e-3,
    )
    theta = task.sample_prior(1, torch.Generator().manual_seed(3)).double()
    design = task.design.double()
    # the simulator's mean is X^T sigmoid(X theta); the likelihood's gradient is x minus it
    sims = task.simulator(theta.expand(20_000, 10), torch.Generator().manual_seed(0))
    expected = torch.sigmoid(design @ theta[0]) @ design
    sd = (
        (torch.sigmoid(design @ theta[0]) * (1 - torch.sigmoid(design @ theta[0]))) @ design**2
    ).sqrt()
    assert ((sims.mean(0) - expected).abs() / (sd / math.sqrt(20_000))).max() < 5
    draws = task.likelihood(theta.expand(20_000, 10)).sample()
    assert ((draws.mean(0) - expected).abs() / (sd / math.sqrt(20_000))).max() < 5
    t = theta.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(task.log_likelihood(t, sims[0]).sum(), t)
    assert torch.allclose(grad[0], sims[0] - expected)
