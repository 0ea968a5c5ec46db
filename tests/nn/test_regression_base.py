"""ImplicitEncoder's regression base and the objectives fitting it on simulated pairs."""

import pyro
import pytest
import torch
from pyro.infer import SVI

from pyro_adv.infer import Trace_ALI, TraceAVB_ELBO
from pyro_adv.infer.pairs import fit_regression_bases
from pyro_adv.models import exponential_model
from pyro_adv.models.random_families import random_linear_simulator
from pyro_adv.nn import ImplicitEncoder


def exact_regression(sim):
    """The posterior of a linear-Gaussian simulator: mean a + B x, covariance L L^T."""
    mean0, cov = sim.posterior_moments(torch.zeros(sim.dim_data))
    basis = torch.eye(sim.dim_data)
    coef = torch.stack([sim.posterior_moments(e)[0] - mean0 for e in basis], -1)
    return mean0, coef, torch.linalg.cholesky(cov)


def test_fit_regression_base_recovers_the_linear_gaussian_posterior():
    sim = random_linear_simulator(5)
    theta, x = sim.sample_joint(50_000, torch.Generator().manual_seed(0))
    encoder = ImplicitEncoder(sim.dim_data, sim.dim_parameters, hidden_dims=(8,))
    assert encoder.regression_base_pending
    assert encoder.fit_regression_base(x, theta)
    assert not encoder.regression_base_pending
    loc, coef, tril = exact_regression(sim)
    assert torch.allclose(encoder.base_coef, coef, atol=0.02)
    assert torch.allclose(encoder.base_scale_tril, tril, atol=0.02)
    assert torch.allclose(encoder.base_loc, loc, atol=0.05)
    # the draws: a + B x + L G(x, eps); at one x the mean moves with B
    x0 = x[:1]
    draws = encoder(x0).sample((4000,)).squeeze(1)
    with torch.no_grad():
        net = encoder.net(
            torch.cat(
                [
                    ((x0 - encoder.context_loc) * torch.exp(-encoder.context_log_scale)).expand(
                        4000, -1
                    ),
                    torch.randn(4000, encoder.noise_dim),
                ],
                -1,
            )
        )
    expected = loc + x0 @ coef.mT + net.mean(0) @ tril.mT
    assert torch.allclose(draws.mean(0), expected.squeeze(0), atol=0.05)


def test_regression_base_state_round_trips_and_can_be_off():
    sim = random_linear_simulator(1)
    theta, x = sim.sample_joint(4000, torch.Generator().manual_seed(0))
    encoder = ImplicitEncoder(sim.dim_data, sim.dim_parameters, hidden_dims=(8,))
    encoder(x)  # fixes the context standardization
    encoder.fit_regression_base(x, theta)
    loaded = ImplicitEncoder(sim.dim_data, sim.dim_parameters, hidden_dims=(8,))
    loaded.load_state_dict(encoder.state_dict())
    assert not loaded.regression_base_pending
    eps = torch.randn(3, encoder.noise_dim)
    assert torch.allclose(loaded.generate(x[:3], eps), encoder.generate(x[:3], eps))
    off = ImplicitEncoder(sim.dim_data, sim.dim_parameters, regression_base=False)
    assert not off.regression_base_pending
    # too few rows per coefficient: left as it is
    fresh = ImplicitEncoder(sim.dim_data, sim.dim_parameters)
    assert not fresh.fit_regression_base(x[:5], theta[:5])
    assert fresh.regression_base_pending


@pytest.mark.parametrize("objective_class", [Trace_ALI, TraceAVB_ELBO])
def test_objective_fits_the_base_before_its_first_step(objective_class):
    # Trace_ALI on its first step's simulated pairs, TraceAVB_ELBO on one
    # gradient-free forward run of the model
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    sim = random_linear_simulator(5)
    encoder = ImplicitEncoder(sim.dim_data, sim.dim_parameters, hidden_dims=(16,))
    objective = objective_class()
    svi = SVI(sim.model, sim.guide(encoder), pyro.optim.Adam({"lr": 1e-3}), objective)
    svi.step(sim.sample_joint(2048, torch.Generator().manual_seed(0))[1])
    assert encoder.base_fitted
    # 2,048 simulated pairs: the posterior regression within sampling error
    _, coef, tril = exact_regression(sim)
    assert torch.allclose(encoder.base_coef, coef, atol=0.1), (encoder.base_coef, coef)
    assert torch.allclose(encoder.base_scale_tril, tril, atol=0.1)
    # fitted once: later steps leave it
    before = encoder.base_coef.clone()
    svi.step(sim.sample_joint(2048, torch.Generator().manual_seed(1))[1])
    assert torch.equal(before, encoder.base_coef)


def test_context_that_is_not_an_observed_value_is_left_alone():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    encoder = ImplicitEncoder(1, 2, hidden_dims=(8,))

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            # a summary of x, not x itself: no simulated contexts to regress on
            pyro.sample("z", encoder(torch.log1p(x).unsqueeze(-1)))

    x = torch.distributions.Exponential(1.0).sample((256,))
    SVI(exponential_model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ALI()).step(x)
    assert encoder.regression_base_pending
    assert callable(fit_regression_bases)


def test_mixture_encoders_get_a_base_per_component_by_default():
    assert ImplicitEncoder(2, 2, num_components=2).regression_base_pending
    off = ImplicitEncoder(2, 2, num_components=2, regression_base=False)
    assert not off.regression_base_pending


def test_no_base_when_the_model_is_being_trained():
    # a decoder with parameters: its first simulations would fix the base on an
    # untrained model, so the encoder is left as it is
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    decoder = torch.nn.Linear(2, 3)
    encoder = ImplicitEncoder(3, 2, hidden_dims=(8,))

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", pyro.distributions.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", pyro.distributions.Normal(decoder(z), 0.5).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", encoder(x))

    x = torch.randn(512, 3)
    for objective in (TraceAVB_ELBO(), Trace_ALI()):
        pyro.clear_param_store()
        SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), objective).step(x)
        assert encoder.regression_base_pending, type(objective).__name__


def test_a_mixture_encoder_gets_one_regression_per_branch():
    # z ~ N(0, 2^2), x ~ N(z^2, 0.5^2): the posterior has two branches, z ~ +-sqrt(x);
    # one regression of z on x is flat (E[z | x] = 0), two find a branch each
    g = torch.Generator().manual_seed(0)
    z = 2.0 * torch.randn(4096, 1, generator=g)
    x = z**2 + 0.5 * torch.randn(4096, 1, generator=g)
    encoder = ImplicitEncoder(1, 1, num_components=2)
    assert encoder.fit_regression_base(x, z)
    slopes = encoder.base_coef.reshape(2).sort().values
    assert slopes[0] < -0.05 and slopes[1] > 0.05, slopes
    # each component draws on its own branch: at x = 4 one near -2, one near +2
    with torch.no_grad():
        draws = encoder(torch.full((4000, 1), 4.0)).sample().reshape(-1)
        assert 0.4 < (draws > 0).double().mean() < 0.6
        assert (draws.abs() > 1.0).double().mean() > 0.9
    # a one-component encoder's single regression has no slope here
    single = ImplicitEncoder(1, 1)
    assert single.fit_regression_base(x, z)
    assert single.base_coef.abs().item() < 0.05
