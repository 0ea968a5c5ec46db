import arviz as az
import matplotlib.pyplot as plt
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI

from pyro_adv.diagnostics import importance_diagnostics, to_inference_data
from pyro_adv.infer import TraceAVB_ELBO
from pyro_adv.infer.autoguide import AutoImplicit
from pyro_adv.models import ConjugateGaussian


@pytest.fixture
def conjugate():
    cg = ConjugateGaussian()
    _, x = cg.simulate(10, generator=torch.Generator().manual_seed(0))

    def guide(x=None, num_data=None):
        mean, cov = cg.posterior(x)
        pyro.sample("z", dist.MultivariateNormal(mean, covariance_matrix=cov))

    return cg, x, guide


def _group(data, name):
    return data[name] if az.__version__.split(".")[0] != "0" else getattr(data, name)


@pytest.mark.parametrize("parallel", [True, False])
def test_round_trip_summary_matches_samples(conjugate, parallel):
    cg, x, guide = conjugate
    n = 2000 if parallel else 400
    idata = to_inference_data(cg.model, guide, x, num_samples=n, parallel=parallel, seed=0)
    z = np.asarray(_group(idata, "posterior")["z"])
    assert z.shape == (4, n // 4, 2)
    summary = az.summary(idata, var_names=["z"])
    flat = z.reshape(-1, 2)
    np.testing.assert_allclose(summary["mean"].values, flat.mean(0), atol=0.01)
    np.testing.assert_allclose(summary["sd"].values, flat.std(0, ddof=1), atol=0.01)
    # and the samples are the exact posterior's
    mean, cov = cg.posterior(x)
    se = cov.diagonal().sqrt().numpy() / np.sqrt(n)
    assert (np.abs(flat.mean(0) - mean.numpy()) < 5 * se).all()
    # independent draws split into pseudo-chains: r_hat about 1
    assert (np.abs(summary["r_hat"].values - 1) < 0.02).all()


def test_groups_dims_and_sample_stats(conjugate):
    cg, x, guide = conjugate
    idata = to_inference_data(
        cg.model,
        guide,
        x,
        num_samples=200,
        num_chains=2,
        prior=True,
        posterior_predictive=True,
        coords={"data": np.arange(10) * 10},
        seed=0,
    )
    for group in (
        "posterior",
        "sample_stats",
        "observed_data",
        "prior",
        "prior_predictive",
        "posterior_predictive",
    ):
        _group(idata, group)
    observed = _group(idata, "observed_data")["x"]
    np.testing.assert_allclose(np.asarray(observed), x.numpy())
    assert observed.dims == ("data", "x_dim_1")
    assert list(observed.coords["data"].values) == list(np.arange(10) * 10)
    pp = _group(idata, "posterior_predictive")["x"]
    assert pp.shape == (2, 100, 10, 2)
    # predictive draws are new data, not the observations
    assert not np.allclose(np.asarray(pp[0, 0]), x.numpy())
    assert _group(idata, "prior")["z"].shape == (2, 100, 2)
    assert _group(idata, "prior_predictive")["x"].shape == (2, 100, 10, 2)
    stats = _group(idata, "sample_stats")
    # the exact posterior: log p(x, z) - log q(z | x) is the same log evidence for every draw
    log_w = np.asarray(stats["log_weight"])
    assert log_w.shape == (2, 100)
    assert log_w.std() < 1e-3
    np.testing.assert_allclose(
        np.asarray(stats["lp"]) - np.asarray(stats["log_q"]), log_w, rtol=1e-6
    )


def test_plots_work_on_export(conjugate):
    cg, x, guide = conjugate
    idata = to_inference_data(cg.model, guide, x, num_samples=200, seed=0)
    az.plot_pair(idata, var_names=["z"])
    az.plot_posterior(idata, var_names=["z"])
    plt.close("all")


def local_model(x=None, num_data=None):
    n = x.shape[0] if x is not None else num_data
    scale = pyro.sample("scale", dist.LogNormal(0.0, 0.5))
    with pyro.plate("data", n):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        return pyro.sample("x", dist.Normal(z, scale), obs=x)


def test_plate_dims_and_constrained_sites():
    x = torch.randn(7)

    def guide(x=None, num_data=None):
        pyro.sample("scale", dist.LogNormal(0.0, 0.1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x / 2, 0.7))

    idata = to_inference_data(local_model, guide, x, num_samples=100, seed=0)
    posterior = _group(idata, "posterior")
    assert posterior["z"].dims == ("chain", "draw", "data")
    assert posterior["scale"].shape == (4, 25)
    assert (np.asarray(posterior["scale"]) > 0).all()


def test_implicit_guide_with_avb_objective():
    cg = ConjugateGaussian()
    _, x = cg.simulate(10, generator=torch.Generator().manual_seed(0))
    guide = AutoImplicit(cg.model, hidden_dims=(32,))
    objective = TraceAVB_ELBO(
        num_particles=32, moment_particles=512, discriminator_hidden_dims=(32, 32)
    )
    svi = SVI(cg.model, guide, pyro.optim.Adam({"lr": 1e-2}), objective)
    with pyro.validation_enabled(False):
        for _ in range(150):
            svi.step(x)
    idata = to_inference_data(cg.model, guide, x, num_samples=1000, objective=objective, seed=0)
    stats = _group(idata, "sample_stats")
    assert {"lp", "log_q", "log_weight"} <= set(stats.data_vars)
    log_w = np.asarray(stats["log_weight"]).reshape(-1)
    assert np.isfinite(log_w).all()
    # lp is the model's log joint at each exported draw, computed here by Pyro alone
    # (lp - log_q == log_weight holds by construction and checks nothing)
    z_draws = np.asarray(_group(idata, "posterior")["z"]).reshape(-1, 2)
    lp = np.asarray(stats["lp"]).reshape(-1)
    for i in range(0, 1000, 97):
        conditioned = pyro.poutine.condition(cg.model, data={"z": torch.tensor(z_draws[i])})
        expected = pyro.poutine.trace(conditioned).get_trace(x).log_prob_sum().item()
        assert lp[i] == pytest.approx(expected, rel=1e-5, abs=1e-3)
    assert importance_diagnostics(log_w).khat < 0.7
    z = np.asarray(_group(idata, "posterior")["z"]).reshape(-1, 2)
    mean, cov = cg.posterior(x)
    assert np.abs(z.mean(0) - mean.numpy()).max() < 0.3
    # without the objective the implicit guide still exports, without weights
    plain = to_inference_data(cg.model, guide, x, num_samples=100, seed=0)
    assert "log_weight" not in _group(plain, "sample_stats").data_vars


def test_bad_arguments(conjugate):
    cg, x, guide = conjugate
    with pytest.raises(ValueError, match="multiple of num_chains"):
        to_inference_data(cg.model, guide, x, num_samples=10, num_chains=4)
    with pytest.raises(TypeError, match="importance_log_weights"):
        to_inference_data(cg.model, guide, x, num_samples=8, objective=object())
