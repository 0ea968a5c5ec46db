"""
TraceAVB_ELBO accepts what Trace_ELBO accepts: models that do not broadcast over
particles (``X @ w``), hierarchical models written with plates under
AutoImplicit, and Pyro's validation of model/guide shapes and sites.
"""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Predictive
from pyro.optim import Adam

from pyro_adv.distributions import ImplicitDistribution
from pyro_adv.infer import TraceAVB_ELBO
from pyro_adv.infer.autoguide import AutoImplicit
from pyro_adv.models import ConjugateGaussian

# A linear regression whose posterior is exact (conjugate), written as users write
# it: X @ w, which fails under a leftmost particle dimension.
_gen = torch.Generator().manual_seed(3)
X = torch.randn(40, 3, generator=_gen)
W_TRUE = torch.tensor([1.0, -2.0, 0.5])
Y = X @ W_TRUE + 0.5 * torch.randn(40, generator=_gen)


def regression(x, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal(x @ w, 0.5), obs=y)


@pytest.mark.slow
def test_a_model_that_does_not_broadcast_runs_one_particle_at_a_time():
    guide = AutoImplicit(regression)
    objective = TraceAVB_ELBO()
    svi = SVI(regression, guide, Adam({"lr": 5e-3}), loss=objective)
    with pytest.warns(UserWarning, match="one at a time"):
        svi.step(X, Y)
    assert objective.particle_mode == "model_sequential"
    for _ in range(600):
        svi.step(X, Y)
    # the exact posterior: the same model in ConjugateGaussian's form (x_i = y_i, A = X_i)
    precision = torch.eye(3) + X.T @ X / 0.25
    cov = torch.linalg.inv(precision)
    mean = cov @ (X.T @ Y) / 0.25
    draws = Predictive(regression, guide=guide, num_samples=2000)(X, Y)["w"].reshape(-1, 3)
    sd = cov.diagonal().sqrt()
    assert ((draws.mean(0) - mean).abs() / sd).max() < 0.25
    ratio = draws.var(0) / cov.diagonal()
    assert ((ratio - 1).abs() < 0.35).all(), ratio


def test_particle_mode_is_vectorized_where_the_model_broadcasts():
    model = ConjugateGaussian()
    _, x = model.simulate(10)
    objective = TraceAVB_ELBO()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        SVI(model.model, AutoImplicit(model.model), Adam({"lr": 1e-3}), objective).step(x)
    assert objective.particle_mode == "vectorized"


def eight_schools(sigma, y=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", len(sigma)):
        theta_tilde = pyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(mu + tau * theta_tilde, sigma), obs=y)


def test_autoimplicit_on_a_plate_model_discriminates_each_latent_once():
    sigma = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
    y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
    guide = AutoImplicit(eight_schools)
    objective = TraceAVB_ELBO()
    SVI(eight_schools, guide, Adam({"lr": 1e-3}), loss=objective).step(sigma, y)
    (disc,) = objective.discriminators.values()
    # mu, tau and eight theta_tilde: 10 dimensions, not mu and tau copied per school
    assert disc.input_dim == 10 == guide.latent_dim


@pytest.mark.parametrize("guide_dim", [1, 3])
def test_validation_names_a_site_of_the_wrong_shape(guide_dim):
    def model():
        pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    def guide():
        base = dist.Normal(torch.zeros(guide_dim), 1.0).to_event(1)
        pyro.sample("z", ImplicitDistribution(lambda e: 2.0 * e, base))

    # a 1-D draw broadcasts against the 2-D prior, so only the shape check can see it
    match = "shapes disagree at site 'z'" if guide_dim == 1 else "site 'z'"
    with pytest.raises(ValueError, match=match):
        TraceAVB_ELBO().loss(model, guide)


def test_validation_warns_about_extra_guide_sites():
    def model():
        pyro.sample("z", dist.Normal(0.0, 1.0))

    def guide():
        noise = dist.Normal(torch.zeros(()), 1.0)
        pyro.sample("z", ImplicitDistribution(lambda e: e, noise, event_shape=()))
        pyro.sample("extra", dist.Normal(0.0, 1.0))

    with pytest.warns(UserWarning, match="guide but not model"):
        TraceAVB_ELBO().loss(model, guide)
