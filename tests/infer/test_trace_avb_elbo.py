"""TraceAVB_ELBO and AutoImplicit: accuracy against exact posteriors, update scheme, errors."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO

from benchmarks.recipes import (
    evaluate_conjugate_gaussian,
    evaluate_gamma_poisson,
    failures,
    fit_conjugate_gaussian,
    fit_gamma_poisson,
)
from pyro_adv.infer import NonFiniteLossError, TraceAVB_ELBO, is_discriminator_param
from pyro_adv.infer.autoguide import AutoImplicit
from pyro_adv.models import ConjugateGaussian
from pyro_adv.nn import ImplicitEncoder


def test_conjugate_gaussian_autoimplicit_defaults():
    fitted = fit_conjugate_gaussian()
    assert isinstance(fitted.loss, float)
    errors, _ = evaluate_conjugate_gaussian(fitted)
    assert not failures("conjugate_gaussian", errors), errors
    # Predictive works with the implicit guide, like any autoguide
    pred = Predictive(fitted.model.model, guide=fitted.guide, num_samples=50)(fitted.x)
    assert pred["z"].shape == (50, 1, 2) and pred["x"].shape == (50, 10, 2)


def test_gamma_poisson_positive_latent():
    errors, rate = evaluate_gamma_poisson(fit_gamma_poisson())
    assert (rate > 0).all()
    assert not failures("gamma_poisson", errors), errors


def test_one_step_updates_both_players_and_keeps_stats():
    model = ConjugateGaussian()
    _, x = model.simulate(5, torch.Generator().manual_seed(0))
    guide = AutoImplicit(model.model)
    lrs = {}

    def per_param(name):
        lr = 1e-2 if is_discriminator_param(name) else 1e-3
        lrs[name] = lr
        return {"lr": lr}

    elbo = TraceAVB_ELBO()
    svi = SVI(model.model, guide, pyro.optim.Adam(per_param), elbo)
    svi.step(x)
    store = pyro.get_param_store()
    disc = [n for n in store.keys() if is_discriminator_param(n)]
    assert disc and all(n.startswith("discriminator_joint_AutoImplicit") for n in disc)
    before = {n: store[n].detach().clone() for n in store.keys()}
    svi.step(x)
    changed = {n for n in store.keys() if not torch.equal(before[n], store[n])}
    assert set(disc) <= changed and "AutoImplicit.loc" in changed
    # Pyro hands the callable normalized names ("module.param")
    assert {lr for n, lr in lrs.items() if n.startswith("discriminator_")} == {1e-2}
    assert lrs["AutoImplicit.loc"] == 1e-3
    for key in ["loss", "generator_loss", "discriminator_loss", "kl"]:
        assert isinstance(elbo.stats[key], float)
    assert 0.0 <= elbo.stats["discriminator_accuracy_q"] <= 1.0
    # loss() evaluates without touching parameters
    snapshot = {n: store[n].detach().clone() for n in store.keys()}
    assert isinstance(elbo.loss(model.model, guide, x), float)
    assert all(torch.equal(snapshot[n], store[n]) for n in store.keys())


def test_plain_avb_runs():
    # discriminator_steps=k: tests/infer/test_discriminator_steps.py counts the updates
    model = ConjugateGaussian()
    _, x = model.simulate(5, torch.Generator().manual_seed(0))
    for elbo in [TraceAVB_ELBO(adaptive_contrast=False)]:
        pyro.clear_param_store()
        guide = AutoImplicit(model.model)
        svi = SVI(model.model, guide, pyro.optim.Adam({"lr": 1e-3}), elbo)
        for _ in range(3):
            assert torch.isfinite(torch.tensor(svi.step(x)))


def test_mixed_explicit_and_implicit_guide_sites():
    # a hand-written guide: an implicit site for the mean, an explicit LogNormal for the scale
    def model(x):
        z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
        s = pyro.sample("s", dist.LogNormal(0.0, 0.5))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(z, s.unsqueeze(-1)).to_event(1), obs=x)

    enc = ImplicitEncoder(input_dim=1, latent_dim=1, hidden_dims=(16,))

    def guide(x):
        pyro.module("enc", enc)
        loc = pyro.param("s_loc", torch.tensor(0.0))
        pyro.sample("s", dist.LogNormal(loc, 0.3))
        pyro.sample("z", enc(x.mean(0)))

    x = torch.randn(30, 1) + 1.0
    elbo = TraceAVB_ELBO()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    for _ in range(150):
        svi.step(x)
    # explicit scale site trained by its pathwise gradient toward the sample sd (~1)
    assert abs(pyro.param("s_loc").item()) < 0.3
    z = enc(x.mean(0)).sample((2000,))
    assert abs(z.mean().item() - x.mean().item()) < 0.2


def test_errors_are_clear():
    def discrete_model():
        pyro.sample("k", dist.Poisson(3.0))

    with pytest.raises(ValueError, match="latent site 'k' is discrete"):
        SVI(
            discrete_model,
            lambda: pyro.sample("k", dist.Delta(torch.tensor(1.0))),
            pyro.optim.Adam({"lr": 1e-3}),
            TraceAVB_ELBO(),
        ).step()

    def model():
        pyro.sample("a", dist.Normal(0.0, 1.0))
        pyro.sample("b", dist.Normal(0.0, 1.0))

    def partial_guide():
        pyro.sample("a", dist.Normal(pyro.param("m", torch.tensor(0.0)), 1.0))

    with pytest.raises(ValueError, match="latent site 'b' is not sampled by the guide"):
        TraceAVB_ELBO().loss(model, partial_guide)

    def nonreparam_guide():
        pyro.sample("a", dist.Normal(0.0, 1.0))
        pyro.sample("b", _NoRsample(0.0, 1.0))

    with pytest.raises(ValueError, match="guide site 'b'.*not reparameterizable"):
        TraceAVB_ELBO().loss(model, nonreparam_guide)

    with pytest.raises(ValueError, match="adaptive_contrast"):
        TraceAVB_ELBO(adaptive_contrast="yes")

    # Trace_ELBO refuses the implicit guide and points to the adversarial objectives
    guide = AutoImplicit(model)
    with pytest.raises(ValueError, match="TraceAVB_ELBO"):
        Trace_ELBO().loss(model, guide)


class _NoRsample(dist.Normal):
    has_rsample = False


def test_nan_names_the_player():
    def model(x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    # with validation on, Pyro rejects the NaN observation first (naming the site);
    # without it, the objective's own check must name the player
    pyro.enable_validation(False)
    guide = AutoImplicit(model)
    x = torch.tensor([1.0, float("nan")])
    with pytest.raises(NonFiniteLossError, match="generator"):
        SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), TraceAVB_ELBO()).step(x)


def test_subsampled_elbo_is_unbiased_for_the_full_batch():
    """Scaling by N / batch (Pyro's plate scale) must make minibatch estimates average out
    to the full-batch estimate; a double scaling once blew them up by a factor of N/B."""
    from pyro_adv.infer.autoguide import amortized_guide
    from pyro_adv.models import exponential_model

    x = torch.linspace(0.5, 20.0, 64)
    encoder = ImplicitEncoder(1, 2, noise_dim=3, hidden_dims=(16,), context_transform=torch.log1p)
    guide = amortized_guide(encoder)
    elbo = TraceAVB_ELBO(num_particles=8, moment_particles=64, discriminator_particles=16)
    full = torch.tensor([elbo.loss(exponential_model, guide, x) for _ in range(20)])
    sub = torch.tensor(
        [elbo.loss(exponential_model, guide, x, subsample_size=16) for _ in range(200)]
    )
    assert abs(sub.mean() / full.mean() - 1) < 0.05, (sub.mean(), full.mean())
    assert elbo.stats["kl"] > 0


def test_one_discriminator_module_is_the_one_trained():
    # like Trace_ALI and Trace_GAN, a module given as discriminator= is used as it is
    # (before, AVB called it with the group key and failed deep in torch)
    from pyro_adv.nn import Discriminator

    model = ConjugateGaussian()
    _, x = model.simulate(5, torch.Generator().manual_seed(0))
    module = Discriminator((16,))
    elbo = TraceAVB_ELBO(discriminator=module)
    svi = SVI(model.model, AutoImplicit(model.model), pyro.optim.Adam({"lr": 1e-2}), elbo)
    svi.step(x)
    assert list(elbo.discriminators.values()) == [module]
    before = [p.detach().clone() for p in module.parameters()]
    svi.step(x)
    assert any(not torch.equal(b, p) for b, p in zip(before, module.parameters()))
