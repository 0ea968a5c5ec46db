import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI

from pyro_adv.diagnostics import (
    diagnose_guide,
    effective_sample_size,
    importance_diagnostics,
    importance_log_weights,
    log_evidence,
    psis,
)
from pyro_adv.distributions import ImplicitDistribution
from pyro_adv.infer import TraceAVB_ELBO
from pyro_adv.models import ConjugateGaussian
from pyro_adv.nn import MLPGenerator


def exact_guide(cg, widen=1.0):
    """The exact Gaussian posterior of ``cg`` with its scale multiplied by ``widen``."""

    def guide(x=None, num_data=None):
        mean, cov = cg.posterior(x)
        pyro.sample(
            "z", dist.MultivariateNormal(mean, scale_tril=widen * torch.linalg.cholesky(cov))
        )

    return guide


@pytest.fixture
def conjugate():
    cg = ConjugateGaussian()
    _, x = cg.simulate(20, generator=torch.Generator().manual_seed(0))
    return cg, x


def test_core_functions_on_plain_log_weights():
    lw = torch.full((100,), -3.0)
    assert log_evidence(lw) == pytest.approx(-3.0)
    assert effective_sample_size(lw) == pytest.approx(100.0)
    one_dominant = torch.tensor([0.0] + [-50.0] * 99)
    assert effective_sample_size(one_dominant) == pytest.approx(1.0, abs=1e-6)
    # log mean exp, not mean
    assert log_evidence(torch.tensor([0.0, math.log(3.0)])) == pytest.approx(math.log(2.0))
    smoothed, khat = psis(torch.randn(500))
    assert smoothed.shape == (500,)
    assert torch.logsumexp(torch.as_tensor(smoothed), 0).item() == pytest.approx(0.0, abs=1e-6)
    assert khat < 0.7  # log-normal weights: all moments finite


def test_khat_separates_heavy_and_light_tails():
    # log w = u^2 * (1 - 1/s^2) / 2 with u ~ N(0, 1) is the exact weight of a Gaussian
    # guide s times too narrow: the weight tail has Pareto shape 1 - 1/s^2 (8/9 for s=3)
    u = torch.randn(4000)
    assert importance_diagnostics(0.5 * u**2 * (1 - 1 / 1.2**2)).khat < 0.5
    assert importance_diagnostics(0.5 * u**2 * (1 - 1 / 3.0**2)).khat > 0.7


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(3, 4), "1-D"),
        (torch.zeros(3), "at least 5"),
        (torch.tensor([0.0, 1.0, float("nan"), 2.0, 3.0]), "NaN"),
    ],
)
def test_bad_log_weights(bad, match):
    with pytest.raises(ValueError, match=match):
        importance_diagnostics(bad)


def test_khat_explicit_guide_good_vs_shrunk(conjugate):
    cg, x = conjugate
    exact = importance_diagnostics(
        importance_log_weights(cg.model, exact_guide(cg), x, num_samples=2000, seed=0)
    )
    # the exact posterior gives constant weights equal to the evidence
    assert exact.log_weights.std() < 1e-4
    assert exact.khat < 0.7 and exact.reliable
    wide = diagnose_guide(cg.model, exact_guide(cg, 1.2), x, num_samples=2000, seed=0)
    assert wide.khat < 0.7
    assert wide.ess > 1000
    assert wide.log_evidence == pytest.approx(exact.log_evidence, abs=0.05)
    narrow = diagnose_guide(cg.model, exact_guide(cg, 1 / 3), x, num_samples=2000, seed=0)
    assert narrow.khat > 0.7 and not narrow.reliable
    assert narrow.ess < 200
    assert narrow.elbo < exact.elbo


def test_importance_log_weights_is_seeded_and_leaves_rng_alone(conjugate):
    cg, x = conjugate
    state = torch.get_rng_state()
    a = importance_log_weights(cg.model, exact_guide(cg, 1.5), x, num_samples=50, seed=3)
    b = importance_log_weights(cg.model, exact_guide(cg, 1.5), x, num_samples=50, seed=3)
    assert torch.equal(a, b)
    assert torch.equal(state, torch.get_rng_state())


def implicit_guide(generator):
    def guide(x=None, num_data=None, shrink=1.0):
        pyro.module("generator", generator)
        loc = pyro.param("loc", lambda: torch.zeros(2))
        pyro.sample(
            "z", ImplicitDistribution(lambda e: loc + generator(e) / shrink, generator.noise())
        )

    return guide


def test_implicit_guide_needs_objective(conjugate):
    cg, x = conjugate
    guide = implicit_guide(MLPGenerator(3, 2, hidden_dims=(8,)))
    with pytest.raises(ValueError, match="objective"):
        importance_log_weights(cg.model, guide, x, num_samples=10)
    with pytest.raises(TypeError, match="importance weights"):
        importance_log_weights(cg.model, guide, x, num_samples=10, objective=object())


def test_khat_from_avb_discriminator_good_vs_shrunk(conjugate):
    cg, x = conjugate
    guide = implicit_guide(MLPGenerator(3, 2, hidden_dims=(32,)))
    objective = TraceAVB_ELBO(
        num_particles=32, moment_particles=512, discriminator_hidden_dims=(32, 32)
    )
    svi = SVI(cg.model, guide, pyro.optim.Adam({"lr": 1e-2}), objective)
    with pyro.validation_enabled(False):
        for _ in range(250):
            svi.step(x)

    def shrunk(*args, **kwargs):
        return guide(*args, shrink=3.0, **kwargs)

    # svi.loss (the bound method SVI keeps) stands for the objective
    good = diagnose_guide(cg.model, guide, x, objective=svi.loss, num_samples=4000, seed=0)
    bad = diagnose_guide(cg.model, shrunk, x, objective=objective, num_samples=4000, seed=0)
    assert good.khat < 0.7, good
    assert bad.khat > 0.7, bad
    exact = importance_log_weights(cg.model, exact_guide(cg), x, num_samples=10, seed=0)
    assert good.log_evidence == pytest.approx(exact.mean().item(), abs=0.5)


def test_avb_weights_after_training_with_one_particle(conjugate):
    # trained with one particle there is no particle plate: the diagnostic's draws need one
    cg, x = conjugate
    guide = implicit_guide(MLPGenerator(3, 2, hidden_dims=(8,)))
    objective = TraceAVB_ELBO(num_particles=1)
    SVI(cg.model, guide, pyro.optim.Adam({"lr": 1e-3}), objective).step(x)
    nesting = objective.max_plate_nesting
    lw = importance_log_weights(cg.model, guide, x, num_samples=100, objective=objective)
    assert lw.shape == (100,) and torch.isfinite(lw).all()
    assert (objective.num_particles, objective.max_plate_nesting) == (1, nesting)


# ---------------------------------------------------------------- from ALI's discriminator
PRIOR_SD, NOISE_SD = 1.0, 0.5
POST_VAR = 1 / (PRIOR_SD**-2 + NOISE_SD**-2)


def local_model(x=None, num_data=1, subsample_size=None):
    """z_i ~ N(0, 1), x_i | z_i ~ N(z_i, 0.5^2): one (x, z) pair per plate element."""
    n = num_data if x is None else x.shape[0]
    with pyro.plate("data", n, subsample_size=subsample_size) as idx:
        z = pyro.sample("z", dist.Normal(0.0, PRIOR_SD))
        pyro.sample("x", dist.Normal(z, NOISE_SD), obs=None if x is None else x[idx])


def local_exact_guide(widen):
    """The exact posterior N(x * POST_VAR / NOISE_SD^2, POST_VAR), its sd times ``widen``."""

    def guide(x=None, num_data=1, subsample_size=None):
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
            pyro.sample("z", dist.Normal(x[idx] * POST_VAR / NOISE_SD**2, widen * POST_VAR**0.5))

    return guide


@pytest.mark.slow
def test_khat_from_ali_discriminator_good_vs_shrunk():
    # The guides are fixed (no parameters): only ALI's discriminator learns, here the
    # log ratio log p(x, z) / (p_D(x) q(z | x)) for the guide it is shown. For the exact
    # guide the true weights are constant; for the one shrunk 3x they have infinite
    # variance (Pareto shape 1 - 1/9 = 0.89; k-hat from 4000 exact weights measured
    # 0.72-0.87 over seeds, from the discriminator 0.79-0.94 over six runs).
    from pyro_adv.infer import Trace_ALI, simulate
    from pyro_adv.optim import two_timescale_adam

    data = simulate(local_model, 1, num_data=20_000)["x"][0]
    x_obs = torch.tensor([1.0])
    diagnostics = {}
    for widen in (1.0, 1 / 3):
        pyro.clear_param_store()
        guide = local_exact_guide(widen)
        ali = Trace_ALI(discriminator_hidden_dims=(32, 32))
        with pytest.raises(RuntimeError, match="svi.step"):
            ali.importance_log_weights(local_model, guide, x_obs)
        svi = SVI(local_model, guide, two_timescale_adam(1e-3, 2e-2, num_steps=1500), ali)
        for _ in range(1500):
            svi.step(data, subsample_size=512)
        diagnostics[widen] = diagnose_guide(
            local_model, guide, x_obs, objective=svi.loss, num_samples=4000, seed=0
        )
        assert ali.num_particles == 1  # restored after the diagnostic's 4000 particles
    good, bad = diagnostics[1.0], diagnostics[1 / 3]
    assert good.khat < 0.7, good
    assert bad.khat > 0.7, bad
    assert good.ess > 0.5 * good.num_samples > bad.ess, (good, bad)
    # the weights are known up to a constant: no evidence from ALI
    assert math.isnan(good.log_evidence) and "no evidence" in repr(good)


def test_ali_weights_need_a_ratio_estimating_critic():
    from pyro_adv.infer import Trace_ALI, simulate

    data = simulate(local_model, 1, num_data=64)["x"][0]
    ali = Trace_ALI(divergence="wasserstein")
    svi = SVI(local_model, local_exact_guide(1.0), pyro.optim.Adam({"lr": 1e-3}), ali)
    svi.step(data)
    with pytest.raises(ValueError, match="log density ratio"):
        ali.importance_log_weights(local_model, local_exact_guide(1.0), data[:1])
