"""
The model zoo's references are the zoo's yardsticks, so they are checked against the
models themselves: each reference must satisfy Stein's identities for the model's own
log density (computed by Pyro from the model, not from the reference's formulas),

    E_p[grad_u log p(u)] = 0   and   E_p[u_k d/du_k log p(u)] = -1   (u unconstrained),

which fail for draws of any other distribution with a different score; plus known
moments, stored-file shapes and one SVI step per model.
"""

import math

import numpy as np
import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.infer.mcmc.util import initialize_model
from pyro.poutine.util import site_is_subsample

from benchmarks.recipes import draw_guide
from pyro_adv.models.zoo import (
    REFERENCE_DIR,
    ZOO,
    Bimodal,
    CorrelatedGaussian,
    EightSchools,
    NealsFunnel,
    get_model,
)

pytest.importorskip("sklearn")

NAMES = list(ZOO)


def _unconstrained_scores(zoo_model, draws):
    """Per draw, the unconstrained value and the score of the model's log density."""
    _, potential_fn, transforms, _ = initialize_model(zoo_model.model, model_args=zoo_model.args)
    u = {s: transforms[s](draws[s]) for s in zoo_model.sites}
    # vmap over draws: the model sees one draw at a time (X @ w keeps its form), and
    # Pyro's support checks would see vmap's batched tensors, so validation is off
    with pyro.validation_enabled(False):
        scores = torch.func.vmap(torch.func.grad(lambda p: -potential_fn(p)))(u)
    return zoo_model.flat(u).double(), zoo_model.flat(scores).double()


@pytest.mark.parametrize("name", NAMES)
def test_reference_satisfies_steins_identities(name):
    zoo_model = get_model(name)
    n = 2000
    draws = zoo_model.reference(n, seed=3)
    u, score = _unconstrained_scores(zoo_model, draws)
    # thinned NUTS draws are close to, but not quite, independent: count half of them
    n_eff = n if zoo_model.reference_kind == "exact" else n / 2
    for stat, target in ((score, 0.0), (u * score, -1.0)):
        z = (stat.mean(0) - target) / (stat.std(0) / math.sqrt(n_eff))
        # 5 sds over at most 2 x 50 statistics: a false alarm has odds below 1e-4
        assert z.abs().max() < 5, (name, zoo_model.labels()[int(z.abs().argmax())], z)


def _wrong_funnel():
    # x 10% too wide
    zoo_model = NealsFunnel()
    draws = zoo_model.reference(2000, seed=3)
    draws["x"] = 1.1 * draws["x"]
    return zoo_model, draws


def _wrong_eight_schools():
    # the grid without the Jacobian tau of log tau: the posterior of tau is off
    zoo_model = EightSchools()
    log_marginal = zoo_model.log_marginal
    zoo_model.log_marginal = lambda mu, log_tau: log_marginal(mu, log_tau) - np.asarray(log_tau)
    draws = zoo_model.reference(2000, seed=3)
    zoo_model.log_marginal = log_marginal
    return zoo_model, draws


@pytest.mark.parametrize("make", [_wrong_funnel, _wrong_eight_schools])
def test_steins_identities_detect_a_wrong_reference(make):
    zoo_model, draws = make()
    u, score = _unconstrained_scores(zoo_model, draws)
    worst = 0.0
    for stat, target in ((score, 0.0), (u * score, -1.0)):
        z = (stat.mean(0) - target) / (stat.std(0) / math.sqrt(2000))
        worst = max(worst, z.abs().max().item())
    assert worst > 5


@pytest.mark.parametrize("name", NAMES)
def test_reference_shapes_and_seeds(name):
    zoo_model = get_model(name)
    a, b = zoo_model.reference(500, seed=0), zoo_model.reference(500, seed=1)
    assert set(a) == set(zoo_model.sites)
    flat = zoo_model.flat(a)
    assert flat.shape == (500, zoo_model.dim) and flat.dtype == torch.float32
    assert len(zoo_model.labels()) == zoo_model.dim
    assert torch.equal(flat, zoo_model.flat(zoo_model.reference(500, seed=0)))
    assert not torch.equal(flat, zoo_model.flat(b))


@pytest.mark.parametrize("name", NAMES)
def test_one_autonormal_step_and_flat_guide_draws(name):
    zoo_model = get_model(name)
    guide = AutoNormal(zoo_model.model)
    svi = SVI(zoo_model.model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    assert math.isfinite(svi.step(*zoo_model.args))
    trace = poutine.trace(zoo_model.model).get_trace(*zoo_model.args)
    latents = [s for s, site in trace.iter_stochastic_nodes() if not site_is_subsample(site)]
    assert sorted(latents) == sorted(zoo_model.sites)
    # guide draws under a plate of draws at dim -2 stack like reference draws
    flat = zoo_model.flat(draw_guide(guide, *zoo_model.args, num_samples=7))
    assert flat.shape == (7, zoo_model.dim)


def test_logistic_regression_keeps_the_x_at_w_form():
    zoo_model = get_model("logistic_regression")
    X, y = zoo_model.args
    assert X.shape == (569, 30) and set(y.unique().tolist()) == {0.0, 1.0}
    # standardized features
    assert X.mean(0).abs().max() < 1e-4 and (X.std(0, unbiased=False) - 1).abs().max() < 1e-3
    trace = poutine.trace(zoo_model.model).get_trace(*zoo_model.args)
    w, b = trace.nodes["w"], trace.nodes["b"]
    assert w["fn"].event_shape == (30,) and w["fn"].batch_shape == ()
    logits = X @ w["value"] + b["value"]
    assert torch.equal(trace.nodes["y"]["fn"].logits, logits)
    # a batch of w (as vectorized particles make it) does not broadcast through X @ w
    with pytest.raises(RuntimeError):
        poutine.condition(zoo_model.model, {"w": torch.zeros(2, 1, 30)})(*zoo_model.args)


@pytest.mark.parametrize("name", ["logistic_regression", "hierarchical_poisson"])
def test_stored_nuts_reference(name):
    zoo_model = get_model(name)
    with np.load(REFERENCE_DIR / f"{name}.npz") as data:
        rows = data[zoo_model.sites[0]].shape[0]
        assert rows == 10_000
        for site in zoo_model.sites:
            assert data[site].dtype == np.float32
            assert data[site].reshape(rows, -1).shape[1] == zoo_model.site_dims[site]
        # the run converged: R-hat and ESS as printed by make_zoo_references
        assert data["rhat"].max() < 1.01 and data["ess"].min() > 1000
    with pytest.raises(ValueError):
        zoo_model.reference(rows + 1)


def test_eight_schools_moments_by_quadrature():
    # E[mu] and E[tau] by Gauss-Legendre quadrature of the marginal posterior (300
    # nodes on each axis; the sampler uses midpoint cells), against the grid sampler
    # (its Monte Carlo sd is sd / 100 at 10,000 draws)
    model = EightSchools()
    nodes, weights = np.polynomial.legendre.leggauss(300)

    def rescale(lo, hi):
        return lo + (hi - lo) * (nodes + 1) / 2, weights * (hi - lo) / 2

    mu, w_mu = rescale(-25.0, 35.0)
    log_tau, w_lt = rescale(-12.0, math.log(300.0))
    logp = model.log_marginal(mu[:, None], log_tau[None, :])
    p = np.exp(logp - logp.max()) * w_mu[:, None] * w_lt[None, :]
    mean_mu = (p * mu[:, None]).sum() / p.sum()
    mean_tau = (p * np.exp(log_tau)[None, :]).sum() / p.sum()
    draws = model.reference(10_000, seed=0)
    assert abs(draws["mu"].mean() - mean_mu) < 4 * draws["mu"].std() / 100
    assert abs(draws["tau"].mean() - mean_tau) < 4 * draws["tau"].std() / 100
    # and the published values (e.g. NumPyro's eight schools example: 4.4 and 3.6)
    assert abs(mean_mu - 4.4) < 0.1 and abs(mean_tau - 3.6) < 0.1


def test_eight_schools_noncentered_is_the_centred_posterior_reparameterized():
    centred = EightSchools(centered=True).reference(10_000, seed=5)
    tilde = EightSchools(centered=False).reference(10_000, seed=6)
    theta = tilde["mu"][:, None] + tilde["tau"][:, None] * tilde["theta_tilde"]
    sd = centred["theta"].std(0)
    assert ((theta.mean(0) - centred["theta"].mean(0)).abs() / sd).max() < 0.06
    assert ((theta.std(0) / sd) - 1).abs().max() < 0.05


def test_correlated_gaussian_reference_moments():
    zoo_model = CorrelatedGaussian()
    mean, cov = zoo_model.posterior()
    # the stated shape of the posterior
    sd = cov.diag().sqrt()
    corr = cov / sd[:, None] / sd[None] - torch.eye(50, dtype=cov.dtype)
    assert 0.25 < sd.min() < sd.max() < 0.85 and 0.8 < corr.abs().max() < 0.9
    z = zoo_model.reference(20_000, seed=0)["z"].double()
    assert ((z.mean(0) - mean).abs() / sd).max() < 4 / math.sqrt(20_000)
    assert (torch.cov(z.T) - cov).abs().max() < 0.02


def test_bimodal_reference_has_two_equal_modes():
    zoo_model = Bimodal()
    z = zoo_model.reference(20_000, seed=0)["z"]
    assert abs((z > 0).float().mean() - 0.5) < 0.015
    # each mode sits at the quadrature mode of its half
    grid = np.linspace(0.01, 3, 30_000)
    mode = grid[zoo_model.log_density(grid).argmax()]
    assert abs(z[z > 0].median() - mode) < 0.02 and abs(z[z < 0].median() + mode) < 0.02
    # and its sd is that of the quadrature density
    grid = np.linspace(-6, 6, 100_001)
    p = np.exp(zoo_model.log_density(grid) - zoo_model.log_density(grid).max())
    var = (grid**2 * p).sum() / p.sum()
    assert abs(z.double().var() / var - 1) < 0.03


def test_get_model_unknown_name():
    with pytest.raises(KeyError, match="unknown zoo model"):
        get_model("nine_schools")
