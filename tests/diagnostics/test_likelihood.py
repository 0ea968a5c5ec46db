"""fitted_proposal_log_likelihood against the exact evidence of a linear-Gaussian model."""

import pyro.distributions as dist
import pytest
import torch

from pyro_adv.diagnostics import fitted_proposal_log_likelihood
from pyro_adv.models import ConjugateGaussian

LATENT, OBS, BATCH = 3, 5, 6


@pytest.fixture
def linear_gaussian():
    """A linear-Gaussian decoder ``x | z ~ N(A z, 0.5^2 I)``, z ~ N(mu0, Sigma0), and
    ``BATCH`` observations, each its own data set (a VAE's per-datum latent)."""
    g = torch.Generator().manual_seed(0)
    design = torch.randn(OBS, LATENT, generator=g, dtype=torch.float64)
    loc = 0.3 * torch.randn(LATENT, generator=g, dtype=torch.float64)
    root = torch.randn(LATENT, LATENT, generator=g, dtype=torch.float64)
    cov = root @ root.T / LATENT + 0.5 * torch.eye(LATENT, dtype=torch.float64)
    cg = ConjugateGaussian(loc, cov, design, noise_scale=0.5)
    z = loc + torch.randn(BATCH, LATENT, generator=g, dtype=torch.float64) @ root.T
    x = z @ design.T + 0.5 * torch.randn(BATCH, OBS, generator=g, dtype=torch.float64)
    return cg, x


def _log_joint(cg, x):
    prior = dist.MultivariateNormal(cg.prior_loc, cg.prior_cov)

    def log_joint(z):  # (k, B, D) -> (k, B)
        lik = dist.Normal(z @ cg.design.T, cg.noise_scale).log_prob(x).sum(-1)
        return prior.log_prob(z) + lik

    return log_joint


def _posterior_draws(cg, x, num_draws, shift=0.0, widen=1.0, seed=1):
    """Draws from each context's exact posterior, optionally shifted (in posterior
    standard deviations) and widened: a stand-in for an encoder's draws."""
    g = torch.Generator().manual_seed(seed)
    draws = []
    for b in range(x.shape[0]):
        mean, cov = cg.posterior(x[b : b + 1])
        chol = torch.linalg.cholesky(cov)
        eps = torch.randn(num_draws, LATENT, generator=g, dtype=torch.float64)
        draws.append(mean + shift * cov.diagonal().sqrt() + widen * eps @ chol.T)
    return torch.stack(draws, 1)  # (S, B, D)


def _exact(cg, x):
    return torch.stack([cg.log_evidence(x[b : b + 1]) for b in range(x.shape[0])])


def test_log_evidence_is_bayes_identity(linear_gaussian):
    # an independent check of the reference: log p(x) = log p(x|z) + log p(z) - log p(z|x)
    cg, x = linear_gaussian
    data = x[:3]
    mean, cov = cg.posterior(data)
    z = mean + torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    lik = dist.Normal(z @ cg.design.T, cg.noise_scale).log_prob(data).sum()
    prior = dist.MultivariateNormal(cg.prior_loc, cg.prior_cov).log_prob(z)
    post = dist.MultivariateNormal(mean, cov).log_prob(z)
    assert torch.allclose(cg.log_evidence(data), lik + prior - post, atol=1e-9)


def test_exact_posterior_draws(linear_gaussian):
    # proposal fitted to exact posterior draws: the weights are nearly constant
    cg, x = linear_gaussian
    draws = _posterior_draws(cg, x, 400)
    est = fitted_proposal_log_likelihood(
        _log_joint(cg, x), draws, num_samples=2000, generator=torch.Generator().manual_seed(2)
    )
    exact = _exact(cg, x)
    assert est.log_likelihood.shape == (BATCH,)
    assert (est.log_likelihood - exact).abs().max() < 0.04, (est.log_likelihood, exact)
    assert (est.effective_sample_size > 0.8 * 2000).all()


def test_poor_encoder_still_estimates_the_same_quantity(linear_gaussian):
    # draws off-centre by 0.5 sd and 20% too narrow: importance sampling corrects them,
    # the ESS drops, and the estimate stays a (stochastic) lower bound near log p(x)
    cg, x = linear_gaussian
    draws = _posterior_draws(cg, x, 400, shift=0.5, widen=0.8)
    est = fitted_proposal_log_likelihood(
        _log_joint(cg, x),
        draws,
        num_samples=4000,
        chunk_size=1000,
        generator=torch.Generator().manual_seed(3),
    )
    exact = _exact(cg, x)
    gap = est.log_likelihood - exact
    assert gap.abs().max() < 0.06, gap
    assert gap.mean() < 0.02, gap
    assert (est.effective_sample_size < 0.9 * 4000).all()


def test_clear_errors(linear_gaussian):
    cg, x = linear_gaussian
    log_joint = _log_joint(cg, x)
    with pytest.raises(ValueError, match=r"shape \(S, B, D\)"):
        fitted_proposal_log_likelihood(log_joint, torch.zeros(10, LATENT))
    with pytest.raises(ValueError, match="cannot fit a covariance"):
        fitted_proposal_log_likelihood(log_joint, torch.zeros(3, BATCH, LATENT))
    with pytest.raises(ValueError, match="inflation"):
        fitted_proposal_log_likelihood(log_joint, _posterior_draws(cg, x, 50), inflation=0.5)
    with pytest.raises(ValueError, match="log_joint must map"):
        fitted_proposal_log_likelihood(
            lambda z: log_joint(z).sum(0), _posterior_draws(cg, x, 50), num_samples=10
        )
