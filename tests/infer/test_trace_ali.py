"""Trace_ALI and simulate: accuracy against exact posteriors, full ALI, simulation banks, errors."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI
from torch.distributions import constraints

from benchmarks.recipes import (
    ali_adam,
    evaluate_exponential,
    failures,
    fit_exponential_ali,
)
from pyro_adv.distributions import ImplicitDistribution
from pyro_adv.infer import Trace_ALI, is_discriminator_param, simulate
from pyro_adv.infer.autoguide import amortized_guide
from pyro_adv.models import ConjugateGaussian, exponential_model
from pyro_adv.models.random_families import random_linear_simulator
from pyro_adv.nn import ImplicitEncoder, PairDiscriminator


# ----------------------------------------------------------------------------- accuracy
@pytest.mark.slow
def test_exponential_posterior_at_x1_and_x30():
    # thesis 4.2.1: one amortized posterior, trained from a fixed bank of simulations
    fitted = fit_exponential_ali()
    errors, _ = evaluate_exponential(fitted.encoder, num_samples=20000)
    assert not failures("exponential_ali", errors), errors


@pytest.mark.slow
def test_conjugate_gaussian_implicit_simulator_amortized():
    # x = A z + sigma eps is only simulated (an ImplicitDistribution). The posterior is
    # amortized over data sets of 2 observations from the prior predictive: the data sets
    # sit in a plate, so z is plate-local and each data set is one (x, z) pair.
    cg = ConjugateGaussian(noise_scale=1.5)
    design, sigma, n = cg.design, cg.noise_scale, 2

    def model(x=None, num_sets=1, subsample_size=None):
        with pyro.plate("sets", num_sets, subsample_size=subsample_size, dim=-2) as idx:
            z = pyro.sample("z", dist.MultivariateNormal(cg.prior_loc, cg.prior_cov))
            noise = dist.Normal(torch.zeros(n, 2), 1.0).to_event(1)
            with pyro.plate("data", n, dim=-1):
                simulator = ImplicitDistribution(
                    lambda eps: z @ design.T + sigma * eps, noise, event_shape=(2,)
                )
                pyro.sample("x", simulator, obs=None if x is None else x[idx])

    encoder = ImplicitEncoder(2 * n, 2, hidden_dims=(64, 64))

    def guide(x=None, num_sets=1, subsample_size=None):
        pyro.module("encoder", encoder)
        with pyro.plate("sets", x.shape[0], subsample_size=subsample_size, dim=-2) as idx:
            pyro.sample("z", encoder(x[idx].flatten(-2).unsqueeze(-2)))

    data = simulate(model, 1, num_sets=50_000)["x"][0]  # (50000, 2, 2)
    ali = Trace_ALI()  # fresh simulations every step
    steps = 1000
    svi = SVI(model, guide, ali_adam(3e-3, steps, 8.0), ali)
    # the players circle the equilibrium: average the guide over the second half
    average = torch.optim.swa_utils.AveragedModel(encoder)
    for step in range(steps):
        svi.step(data, subsample_size=1024)
        if step >= steps // 2:
            average.update_parameters(encoder)
    assert ali.num_particles == 1  # plate-local latents: one pair per data set
    generator = torch.Generator().manual_seed(123)
    for _ in range(3):
        _, x = cg.simulate(n, generator)
        mean, cov = cg.posterior(x)
        with torch.no_grad():
            z = average.module(x.reshape(-1)).sample((20000,))
        sd = cov.diag().sqrt()
        assert ((z.mean(0) - mean).abs() / sd).max() < 0.15, (z.mean(0), mean, sd)
        ratio = z.var(0) / cov.diag()
        assert ((ratio - 1).abs() < 0.2).all(), ratio


def test_full_ali_learns_decoder_scale():
    # BiGAN: the decoder's noise scale is trained through the simulated pairs
    design = torch.tensor([[1.0], [0.5]])
    truth = 0.5

    def model(x, subsample_size=None):
        scale = pyro.param("scale", torch.tensor(1.5), constraint=constraints.positive)
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ design.T, scale).to_event(1), obs=x[idx])

    encoder = ImplicitEncoder(2, 1, hidden_dims=(32, 32))

    def guide(x, subsample_size=None):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
            pyro.sample("z", encoder(x[idx]))

    z = torch.randn(20000, 1)
    data = z @ design.T + truth * torch.randn(20000, 2)
    steps = 500
    decay = 0.05 ** (1.0 / steps)

    def per_param(name):
        lr = {"scale": 2e-2}.get(name, 1.2e-2 if is_discriminator_param(name) else 3e-3)
        return {"lr": lr, "lrd": decay, "betas": (0.5, 0.9)}

    ali = Trace_ALI()
    svi = SVI(model, guide, pyro.optim.ClippedAdam(per_param), ali)
    for _ in range(steps):
        svi.step(data, subsample_size=256)
    assert abs(pyro.param("scale").item() / truth - 1) < 0.15, pyro.param("scale")


# ------------------------------------------------------------------- simulation banks
class RecordingDiscriminator(PairDiscriminator):
    """Keeps the pairs it is shown: simulated ("real") first, then the guide's."""

    def __init__(self):
        super().__init__((16,))
        self.seen = []

    def forward(self, x, z):
        self.seen.append((x.detach().clone(), z.detach().clone()))
        return super().forward(x, z)


def test_simulate_returns_a_bank_with_a_simulation_dim():
    bank = simulate(exponential_model, 3, num_data=5)
    assert set(bank) == {"z", "x"}
    assert bank["z"].shape == (3, 5, 2) and bank["x"].shape == (3, 5)
    assert (bank["x"] >= 0).all() and not bank["z"].requires_grad
    cg = ConjugateGaussian()
    bank = simulate(cg.model, 4, num_data=6)
    assert bank["z"].shape == (4, 2) and bank["x"].shape == (4, 6, 2)
    with pytest.raises(ValueError, match="num_simulations"):
        simulate(exponential_model, 0, num_data=5)


def test_bank_pairs_minibatch_with_its_own_simulations_and_runs_no_simulator():
    bank = simulate(exponential_model, 1, num_data=500)
    calls = []

    def counting_model(*args, **kwargs):
        calls.append(1)
        return exponential_model(*args, **kwargs)

    recorder = RecordingDiscriminator()
    ali = Trace_ALI(simulations=bank, discriminator=recorder)
    encoder = ImplicitEncoder(1, 2, hidden_dims=(16,))
    svi = SVI(counting_model, amortized_guide(encoder), pyro.optim.Adam({"lr": 1e-3}), ali)
    svi.step(bank["x"][0], subsample_size=32)  # sizes the discriminator, guesses nesting
    calls.clear()
    recorder.seen.clear()
    for _ in range(5):
        loss = svi.step(bank["x"][0], subsample_size=32)
    assert isinstance(loss, float)
    assert len(calls) == 5  # the model is only replayed against the guide, never simulated
    (x_real, z_real), (x_fake, _) = recorder.seen[0], recorder.seen[1]
    assert x_real.shape == (32, 1) and z_real.shape == (32, 2)
    # the simulated pairs are the bank's own, with the minibatch's x
    assert torch.equal(x_real, x_fake)
    rows = [(bank["x"][0] == v).nonzero().item() for v in x_real.squeeze(-1)]
    assert torch.equal(bank["z"][0][rows], z_real)


def test_bank_of_data_sets_for_global_latents_and_its_errors():
    cg = ConjugateGaussian()
    bank = simulate(cg.model, 100, num_data=3)
    recorder = RecordingDiscriminator()
    ali = Trace_ALI(simulations=bank, discriminator=recorder)

    def guide(x=None, num_data=None):
        loc = pyro.param("loc", torch.zeros(2))
        pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))

    svi = SVI(cg.model, guide, pyro.optim.Adam({"lr": 1e-3}), ali)
    x = bank["x"][0]
    svi.step(x)
    assert ali.num_particles == 64  # global latents: one pair per particle
    x_real, z_real = recorder.seen[-2]
    assert x_real.shape == (64, 6) and z_real.shape == (64, 2)
    with pytest.warns(UserWarning, match="same observed data set"):
        svi.step(x)
    # a bank without the latent site
    ali.simulations = {"x": bank["x"]}
    with pytest.raises(ValueError, match="bank has no site 'z'"):
        svi.step(x)
    # a bank whose data sets are too small for the plate
    ali.simulations = simulate(cg.model, 10, num_data=2)
    with pytest.raises(ValueError, match="plate 'data'.*only 2"):
        svi.step(x)
    with pytest.raises(TypeError, match="simulations"):
        Trace_ALI(simulations=[bank["x"]])
    with pytest.raises(ValueError, match="same number of simulations"):
        Trace_ALI(simulations={"x": bank["x"], "z": bank["z"][:5]})


def test_bank_refuses_model_parameters():
    def model(x):
        loc = pyro.param("loc", torch.tensor(0.0))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(loc, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(pyro.param("q", torch.zeros(x.shape[0])), 1.0))

    bank = simulate(model, 1, torch.zeros(10))
    with pytest.raises(ValueError, match=r"parameters \['loc'\].*cannot train"):
        Trace_ALI(simulations=bank).loss(model, guide, bank["x"][0])


# ------------------------------------------------------------- update scheme and stats
def exponential_svi(ali, optim=None):
    encoder = ImplicitEncoder(1, 2, hidden_dims=(16,))
    optim = optim or pyro.optim.Adam({"lr": 1e-3})
    return SVI(exponential_model, amortized_guide(encoder), optim, ali)


def test_one_step_updates_both_players_and_keeps_stats():
    x = simulate(exponential_model, 1, num_data=64)["x"][0]
    ali = Trace_ALI()
    svi = exponential_svi(ali)
    svi.step(x)
    store = pyro.get_param_store()
    disc = [n for n in store.keys() if is_discriminator_param(n)]
    assert disc and all(n.startswith("discriminator_data") for n in disc)
    before = {n: store[n].detach().clone() for n in store.keys()}
    loss = svi.step(x)
    assert isinstance(loss, float)
    changed = {n for n in store.keys() if not torch.equal(before[n], store[n])}
    assert set(disc) <= changed and any(n.startswith("encoder") for n in changed)
    keys = [
        "loss",
        "generator_loss",
        "discriminator_loss",
        "discriminator_accuracy_p",
        "discriminator_accuracy_q",
        "divergence",
    ]
    assert all(isinstance(ali.stats[k], float) for k in keys)
    assert ali.stats["loss"] == ali.stats["divergence"] == loss
    assert ali.num_particles == 1
    snapshot = {n: store[n].detach().clone() for n in store.keys()}
    assert isinstance(ali.loss(exponential_model, svi.guide, x), float)
    assert all(torch.equal(snapshot[n], store[n]) for n in store.keys())


def test_default_discriminator_whitens_the_simulated_pairs():
    # the default discriminator's input map is fixed on the first step's *simulated*
    # pairs (the model's joint, which the untrained guide does not move): on fresh
    # simulations of a linear-Gaussian simulator, whose pairs are jointly Gaussian,
    # the whitened pairs have identity covariance, so the latents enter as their
    # residuals given x at the posterior's scale (8x narrower than the prior here)
    sim = random_linear_simulator(2)
    encoder = ImplicitEncoder(sim.dim_data, sim.dim_parameters, hidden_dims=(16,))
    ali = Trace_ALI()
    svi = SVI(sim.model, sim.guide(encoder), pyro.optim.Adam({"lr": 1e-3}), ali)
    svi.step(sim.sample_joint(2048, torch.Generator().manual_seed(0))[1])
    (disc,) = ali.discriminators.values()
    theta, x = sim.sample_joint(20000, torch.Generator().manual_seed(1))
    u = ((torch.cat([x, theta], -1) - disc.input_loc) / disc.input_scale) @ disc.input_whitener.mT
    eig = torch.linalg.eigvalsh(torch.cov(u.mT))
    # sampling error of 2048 rows in 9 dimensions: eigenvalues within (1 +- 0.07)^2
    assert eig.min() > 0.8 and eig.max() < 1.25, eig


@pytest.mark.parametrize("divergence", ["minimax", "nonsaturating", "js", "wasserstein"])
def test_other_divergences_and_extra_critic_steps_run(divergence):
    x = simulate(exponential_model, 1, num_data=32)["x"][0]
    ali = Trace_ALI(divergence=divergence, discriminator_steps=2, num_particles=2)
    svi = exponential_svi(ali)
    for _ in range(3):
        assert torch.isfinite(torch.tensor(svi.step(x)))


class LinearPairCritic(torch.nn.Module):
    """T(x, z) = a.x + b.z: its gradient on the pair is (a, b) everywhere."""

    def __init__(self, a, b):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a))
        self.b = torch.nn.Parameter(torch.tensor(b))

    def forward(self, x, z):
        return (x * self.a).sum(-1) + (z * self.b).sum(-1)


@pytest.mark.parametrize("one_sided", [True, False])
def test_gradient_penalty_of_a_linear_critic_is_exact(one_sided):
    """The penalty lambda E[(|grad T| - 1)^2] the step reports, on the pairs ALI builds,
    equals its closed form for a linear critic: lambda (|(a, b)| - 1)^2. Breaks if the
    penalty differentiates the wrong inputs (only z, only x) or drops the weight."""
    from pyro_adv.infer.divergences import Wasserstein

    x = simulate(exponential_model, 1, num_data=32)["x"][0]
    a, b = [0.3], [0.4, -0.2]  # |(a, b)| = 0.539: the one-sided penalty is zero
    if one_sided:
        a, b = [1.5], [2.0, -1.0]  # |(a, b)| = 2.69
    ali = Trace_ALI(
        divergence=Wasserstein(gradient_penalty=7.0, one_sided=one_sided),
        discriminator=LinearPairCritic(a, b),
        num_particles=2,
    )
    exponential_svi(ali).step(x)
    norm = torch.tensor(a + b).norm().item()
    excess = max(norm - 1, 0.0) if one_sided else norm - 1
    assert ali.stats["gradient_penalty"] == pytest.approx(7.0 * excess**2, rel=1e-5)


def test_constrained_latents_are_discriminated_in_unconstrained_space():
    recorder = RecordingDiscriminator()

    def model(x):
        with pyro.plate("data", x.shape[0]):
            rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
            pyro.sample("x", dist.Exponential(rate), obs=x)

    encoder = ImplicitEncoder(1, 1, noise_dim=2, hidden_dims=(8,))

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            # a positive implicit latent: exp of the encoder's output
            pyro.sample(
                "rate",
                ImplicitDistribution(
                    lambda e: encoder.generate(x.unsqueeze(-1), e).exp().squeeze(-1),
                    dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1),
                    event_shape=(),
                ),
            )

    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ALI(discriminator=recorder))
    svi.step(torch.rand(16) + 0.1)
    (_, z_real), (_, z_fake) = recorder.seen[0], recorder.seen[1]
    assert (z_real < 0).any() and (z_fake < 0).any()  # log rates, not rates


# ------------------------------------------------------------------------------ errors
def test_errors_are_clear():
    with pytest.raises(ValueError, match="unknown divergence 'kullback'.*reverse_kl"):
        Trace_ALI(divergence="kullback")
    with pytest.raises(ValueError, match="num_particles"):
        Trace_ALI(num_particles=0)

    def discrete_model(x):
        k = pyro.sample("k", dist.Poisson(3.0))
        pyro.sample("x", dist.Normal(k, 1.0), obs=x)

    with pytest.raises(ValueError, match="latent site 'k' is discrete"):
        Trace_ALI().loss(
            discrete_model,
            lambda x: pyro.sample("k", dist.Delta(torch.tensor(1.0))),
            torch.ones(()),
        )

    def model(x):
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        b = pyro.sample("b", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(a + b, 1.0), obs=x)

    def partial_guide(x):
        pyro.sample("a", dist.Normal(pyro.param("m", torch.tensor(0.0)), 1.0))

    with pytest.raises(ValueError, match="latent site 'b' is not sampled by the guide"):
        Trace_ALI().loss(model, partial_guide, torch.ones(()))

    def no_obs_model():
        pyro.sample("a", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="no observed site"):
        Trace_ALI().loss(no_obs_model, lambda: pyro.sample("a", dist.Normal(0.0, 1.0)))

    # a model parameter behind a simulated value without rsample: named, with the fix
    def poisson_model(x):
        rate = pyro.param("rate", torch.tensor(2.0), constraint=constraints.positive)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Poisson(rate * z.exp()), obs=x)

    def poisson_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(pyro.param("q", torch.zeros(x.shape[0])), 1.0))

    with pytest.raises(
        ValueError, match="observed site 'x' \\(Poisson\\) is not reparameterizable"
    ):
        SVI(poisson_model, poisson_guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ALI()).step(
            torch.ones(4)
        )


def test_nan_names_the_player():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(pyro.param("q", torch.zeros(x.shape[0])), 1.0))

    x = torch.tensor([1.0, float("nan"), 2.0])
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ALI())
    # refused before the discriminator's standardization is fixed on it, naming the site
    with pytest.raises(ValueError, match="site 'x' has NaN or inf values"):
        svi.step(x)
