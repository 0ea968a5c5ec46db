"""Issue 13, item 7: ArviZ export with an objective, log-likelihoods and az.loo."""

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI
from pyro.infer.autoguide import AutoNormal
from scipy.special import logsumexp

from pyro_adv.diagnostics import to_inference_data
from pyro_adv.distributions import ImplicitDistribution
from pyro_adv.infer import TraceAVB_ELBO
from pyro_adv.infer.autoguide import AutoImplicit
from pyro_adv.training import fit

X = torch.tensor([3.0, 5.0, 4.0, 6.0, 2.0, 4.0, 7.0, 3.0])


def model(x):
    # README.md's first example
    rate = pyro.sample("rate", dist.Gamma(2.0, 0.5))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Poisson(rate), obs=x)


def known_guide(x):
    # a log-normal with a known density, presented as implicit
    loc = pyro.param("loc", torch.tensor(1.4))
    noise = dist.Normal(torch.zeros(()), 1.0)
    pyro.sample("rate", ImplicitDistribution(lambda eps: (loc + 0.15 * eps).exp(), noise))


def log_joint(rate):
    """``log p(x, rate)`` by Pyro alone, for one draw."""
    conditioned = poutine.condition(model, data={"rate": torch.tensor(rate)})
    return poutine.trace(conditioned).get_trace(X).log_prob_sum().item()


def trained(guide):
    avb = TraceAVB_ELBO(num_particles=8, moment_particles=64, discriminator_particles=32)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 5e-3}), loss=avb)
    for _ in range(20):
        svi.step(X)
    return avb


@pytest.mark.parametrize("make_guide", [lambda: known_guide, lambda: AutoImplicit(model)])
def test_lp_is_the_log_joint_of_each_exported_draw(make_guide):
    guide = make_guide()
    avb = trained(guide)
    idata = to_inference_data(model, guide, X, num_samples=40, num_chains=2, objective=avb, seed=1)
    rate = idata.posterior["rate"].values.reshape(-1)
    lp = idata.sample_stats["lp"].values.reshape(-1)
    expected = np.array([log_joint(r) for r in rate])
    # old code: the same lp (e.g. -493) for every draw, where these are about -17
    np.testing.assert_allclose(lp, expected, rtol=1e-5, atol=1e-4)
    assert np.ptp(lp) > 0


def test_posterior_predictive_with_an_objective_on_the_readme_model():
    guide = AutoImplicit(model)
    avb = trained(guide)
    # old code: ValueError "cannot arrange a value of shape (40, 40, 8) as 40 draws"
    idata = to_inference_data(
        model, guide, X, num_samples=40, num_chains=2, objective=avb, posterior_predictive=True
    )
    pp = idata.posterior_predictive["x"].values
    assert pp.shape == (2, 20, len(X))
    rate = idata.posterior["rate"].values
    # each draw's replicated data follows its own rate: the per-draw means track it
    assert np.corrcoef(rate.reshape(-1), pp.reshape(40, -1).mean(-1))[0, 1] > 0.3


def test_log_likelihood_group_feeds_az_loo():
    guide = AutoNormal(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 5e-2}), loss=pyro.infer.Trace_ELBO())
    for _ in range(100):
        svi.step(X)
    idata = to_inference_data(model, guide, X, num_samples=400, num_chains=4, seed=0)
    ll = idata.log_likelihood["x"].values  # (chain, draw, data)
    rate = torch.tensor(idata.posterior["rate"].values)
    by_hand = dist.Poisson(rate.unsqueeze(-1)).log_prob(X).numpy()
    np.testing.assert_allclose(ll, by_hand, rtol=1e-5)
    loo = az.loo(idata, pointwise=True)  # old code: no log_likelihood group, TypeError
    # plain importance-sampling LOO by hand: p(x_i | x_-i) = 1 / E_post[1 / p(x_i | z)]
    flat = ll.reshape(-1, len(X))
    elpd_is = -(logsumexp(-flat, axis=0) - np.log(flat.shape[0]))
    assert loo.elpd_loo == pytest.approx(elpd_is.sum(), abs=0.1)
    np.testing.assert_allclose(np.asarray(loo.loo_i), elpd_is, atol=0.05)


def test_fit_with_avb_and_no_implicit_site():
    avb = TraceAVB_ELBO(num_particles=4, moment_particles=16, discriminator_particles=8)
    svi = SVI(model, AutoNormal(model), pyro.optim.Adam({"lr": 1e-2}), loss=avb)
    history = fit(svi, 3, X, progress=True)  # old code: TypeError comparing None accuracies
    assert len(history["loss"]) == 3
