"""Trace_GAN: GAN samplers written as Pyro models, fitted with the divergence family."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, Predictive
from pyro.optim import Adam
from torch import nn

from benchmarks.recipes import (
    evaluate_gan_bivariate,
    evaluate_gan_mixture,
    failures,
    fit_gan_bivariate,
    fit_gan_mixture,
    gan_adam,
    no_guide,
)
from pyro_adv.distributions import ImplicitDistribution
from pyro_adv.infer import Trace_GAN
from pyro_adv.models.gan_targets import bivariate_normal_gan, sample_bivariate_normal
from pyro_adv.nn import ImplicitEncoder


@pytest.fixture(autouse=True)
def _one_thread():
    # these networks are tiny: extra intra-op threads only wait on each other, and on
    # a shared machine they slow every step down several times
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------ thesis 3.2.1
def assert_bivariate_fit(divergence):
    fitted = fit_gan_bivariate(divergence)
    errors, samples = evaluate_gan_bivariate(fitted)
    assert samples.shape == (1, 20000, 2)
    assert not failures(f"gan_bivariate_{divergence}", errors), errors
    return fitted


def test_bivariate_normal_nonsaturating():
    assert_bivariate_fit("nonsaturating")


def test_bivariate_normal_wasserstein_gp():
    assert_bivariate_fit("wasserstein")


def test_gradient_penalty_of_a_linear_critic_is_exact():
    """For a linear critic T(x) = w.x the step's penalty is lambda (|w| - 1)^2 exactly
    (two-sided); breaks if the penalty is taken on the wrong inputs or weighted wrongly."""
    from pyro_adv.infer.divergences import Wasserstein

    critic = nn.Linear(2, 1)
    with torch.no_grad():
        critic.weight.copy_(torch.tensor([[0.6, -1.7]]))
    gan = Trace_GAN(
        divergence=Wasserstein(gradient_penalty=3.0, one_sided=False),
        discriminator=nn.Sequential(critic, nn.Flatten(-2)),
    )
    data = sample_bivariate_normal(64)
    SVI(bivariate_normal_gan(), lambda *a, **k: None, Adam({"lr": 1e-3}), gan).step(data)
    norm = torch.tensor([0.6, -1.7]).norm().item()  # the weights the step saw
    assert gan.stats["gradient_penalty"] == pytest.approx(3.0 * (norm - 1) ** 2, rel=1e-5)


# ---------------------------------------------------------- thesis 3.3.2.1
def test_mixture_forward_kl_covers_both_modes():
    errors, fit = evaluate_gan_mixture(fit_gan_mixture("kl"))
    assert not failures("gan_mixture_kl", errors), fit


def test_mixture_reverse_kl_collapses_onto_a_mode():
    errors, fit = evaluate_gan_mixture(fit_gan_mixture("reverse_kl"))
    assert not failures("gan_mixture_reverse_kl", errors), (fit, errors)


# ------------------------------------------------------------- the interface
def test_step_returns_float_and_keeps_stats():
    gan = bivariate_normal_gan()
    loss = Trace_GAN("js")
    svi = SVI(gan, no_guide, Adam({"lr": 1e-3}), loss=loss)
    value = svi.step(sample_bivariate_normal(64))
    assert isinstance(value, float)
    assert set(loss.stats) == {
        "loss",
        "generator_loss",
        "discriminator_loss",
        "discriminator_accuracy_p",
        "discriminator_accuracy_q",
        "divergence",
        "discriminator_max_abs_logit",  # for fit's saturation check
    }
    assert loss.stats["loss"] == value == loss.stats["divergence"]
    names = list(pyro.get_param_store().keys())
    assert any(n.startswith("discriminator_data$$$") for n in names)
    assert any(n.startswith("generator$$$") for n in names)
    # evaluation without gradients, and the Wasserstein penalty under no_grad
    assert isinstance(svi.evaluate_loss(sample_bivariate_normal(64)), float)
    # a second objective in the same param store needs its own discriminator names
    wloss = Trace_GAN("wasserstein", discriminator_steps=3, discriminator_prefix="critic")
    svi = SVI(gan, no_guide, Adam({"lr": 1e-3}), loss=wloss)
    assert isinstance(svi.step(sample_bivariate_normal(64)), float)
    assert isinstance(svi.evaluate_loss(sample_bivariate_normal(64)), float)


def test_one_backward_updates_both_players():
    gan = bivariate_normal_gan()
    svi = SVI(gan, no_guide, Adam({"lr": 1e-2}), loss=Trace_GAN("minimax"))
    svi.step(sample_bivariate_normal(32))
    before = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    svi.step(sample_bivariate_normal(32))
    after = dict(pyro.get_param_store().items())
    for name, value in before.items():
        assert not torch.equal(value, after[name].detach()), f"{name} was not updated"


class Recorder(nn.Module):
    """A discriminator that remembers the inputs it was shown."""

    def __init__(self):
        super().__init__()
        self.linear = nn.LazyLinear(1)
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.detach())
        return self.linear(x).squeeze(-1)


def recorded_step(model, loss, *args, **kwargs):
    recorder = loss.discriminator_spec
    svi = SVI(model, no_guide, Adam({"lr": 1e-3}), loss=loss)
    svi.step(*args, **kwargs)
    # per step: the init call, real, detached fake, then the generator's frozen call
    real, fake = recorder.inputs[-3], recorder.inputs[-2]
    return real, fake


def test_delta_of_latent_noise():
    # x = G(z) with explicit latent noise z and a Delta observation
    loc = torch.tensor(0.0)

    def model(data=None, n=100):
        mu = pyro.param("mu", loc)
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Delta(mu + z), obs=data)

    data = 3.0 + torch.randn(4000)
    svi = SVI(lambda d: model(d, len(d)), no_guide, Adam({"lr": 0.02}), loss=Trace_GAN("js"))
    for _ in range(300):
        svi.step(data[torch.randint(4000, (128,))])
    assert abs(pyro.param("mu").item() - 3.0) < 0.3
    assert Predictive(model, num_samples=2)(n=7)["x"].shape == (2, 7)


def linear_conditional(x, y=None, record=True):
    # y | x = a x + b + s eps; only a discriminator that sees x identifies a
    a = pyro.param("a", torch.tensor(0.0))
    b = pyro.param("b", torch.tensor(0.0))
    s = pyro.param("s", torch.tensor(1.0), constraint=dist.constraints.positive)
    with pyro.plate("data", x.shape[0]):
        if record:
            pyro.deterministic("x", x, event_dim=0)
        noise = dist.Normal(torch.zeros_like(x), 1.0)
        generated = ImplicitDistribution(lambda e: a * x + b + s * e, noise, event_shape=())
        pyro.sample("y", generated, obs=y)


@pytest.mark.parametrize("how", ["deterministic", "condition"])
def test_conditional_generator(how):
    x = torch.randn(4000)
    y = 2.0 * x + 1.0 + 0.5 * torch.randn(4000)
    if how == "deterministic":
        model, loss = linear_conditional, Trace_GAN("js")
    else:

        def model(x, y=None):
            linear_conditional(x, y, record=False)

        loss = Trace_GAN("js", condition=lambda x, y=None: x)
    svi = SVI(model, no_guide, gan_adam(2e-2, 5e-3, 600, 0.2), loss=loss)
    for _ in range(600):
        idx = torch.randint(4000, (256,))
        svi.step(x[idx], y[idx])
    store = pyro.get_param_store()
    a, b, s = store["a"].item(), store["b"].item(), store["s"].item()
    assert abs(a - 2.0) < 0.25 and abs(b - 1.0) < 0.25 and abs(s - 0.5) < 0.25, (a, b, s)


def test_conditional_encoder_and_predictive():
    encoder = ImplicitEncoder(input_dim=1, latent_dim=2, hidden_dims=(8,))

    def cgan(x, y=None):
        pyro.module("generator", encoder)
        with pyro.plate("data", x.shape[0]):
            pyro.deterministic("x", x, event_dim=1)
            pyro.sample("y", encoder(x), obs=y)

    loss = Trace_GAN("nonsaturating", discriminator=Recorder())
    real, fake = recorded_step(cgan, loss, torch.randn(16, 1), torch.randn(16, 2))
    assert real.shape == fake.shape == (16, 3)
    # the condition columns are the same on both sides
    assert torch.equal(real[:, :1], fake[:, :1])
    assert Predictive(cgan, num_samples=3)(torch.randn(5, 1))["y"].shape == (3, 5, 2)


def test_deterministic_records_of_simulated_values_are_left_out():
    def model(x, y=None):
        m = pyro.param("m", torch.zeros(()))
        with pyro.plate("data", x.shape[0]):
            pyro.deterministic("x", x, event_dim=0)
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.deterministic("z_record", z, event_dim=0)
            pyro.sample("y", dist.Delta(m + z), obs=y)

    loss = Trace_GAN("js", discriminator=Recorder())
    real, fake = recorded_step(model, loss, torch.randn(9), torch.randn(9))
    assert real.shape == fake.shape == (9, 2)


def test_subsampling_uses_the_same_indices_on_both_sides():
    x_all = torch.arange(100.0).unsqueeze(-1)
    y_all = torch.randn(100, 1)

    def model(x, y):
        with pyro.plate("data", 100, subsample_size=10) as ind:
            pyro.deterministic("x", x[ind], event_dim=1)
            pyro.sample(
                "y", dist.Normal(pyro.param("m", torch.zeros(1)), 1.0).to_event(1), obs=y[ind]
            )

    loss = Trace_GAN("js", discriminator=Recorder())
    real, fake = recorded_step(model, loss, x_all, y_all)
    assert real.shape == fake.shape == (10, 2)
    assert torch.equal(real[:, 0], fake[:, 0])
    assert torch.equal(real[:, 1], y_all[real[:, 0].long(), 0])


def test_masked_elements_are_dropped_and_particles_add_fakes():
    keep = torch.arange(12) % 3 != 0

    def model(data):
        loc = pyro.param("m", torch.zeros(2))
        with pyro.plate("data", 12), poutine.mask(mask=keep):
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=data)

    real, fake = recorded_step(model, Trace_GAN("js", discriminator=Recorder()), torch.randn(12, 2))
    assert real.shape == fake.shape == (8, 2)
    pyro.clear_param_store()  # a second objective: its own discriminator
    loss = Trace_GAN("js", discriminator=Recorder(), num_particles=3)
    real, fake = recorded_step(model, loss, torch.randn(12, 2))
    assert real.shape == (8, 2) and fake.shape == (24, 2)


def test_inner_plates_are_folded_into_features():
    def model(data):
        loc = pyro.param("m", torch.zeros(()))
        with pyro.plate("series", 5, dim=-2):
            with pyro.plate("time", 4, dim=-1):
                pyro.sample("x", dist.Normal(loc, 1.0), obs=data)
            pyro.sample("total", dist.Normal(loc, 1.0), obs=data.sum(-1, keepdim=True))

    real, fake = recorded_step(model, Trace_GAN("js", discriminator=Recorder()), torch.randn(5, 4))
    assert real.shape == fake.shape == (5, 5)


# --------------------------------------------------------------------- errors
def test_error_without_observed_site():
    svi = SVI(bivariate_normal_gan(), no_guide, Adam({"lr": 1e-3}), loss=Trace_GAN())
    with pytest.raises(ValueError, match="no observed site"):
        svi.step(None, n=10)


def test_error_on_shape_mismatch():
    svi = SVI(bivariate_normal_gan(), no_guide, Adam({"lr": 1e-3}), loss=Trace_GAN())
    with pytest.raises(ValueError, match=r"'x'.*shape \(10, 3\)"):
        svi.step(torch.randn(10, 3))


def test_error_on_deterministic_without_event_dim():
    def model(x, y=None):
        with pyro.plate("data", x.shape[0]):
            pyro.deterministic("x", x)
            pyro.sample("y", dist.Normal(pyro.param("m", torch.zeros(())), 1.0), obs=y)

    svi = SVI(model, no_guide, Adam({"lr": 1e-3}), loss=Trace_GAN())
    with pytest.raises(ValueError, match="event_dim"):
        svi.step(torch.randn(6, 2), torch.randn(6))


def test_error_on_undeclared_batch_dim():
    def model(data):
        with pyro.plate("data", 6):
            pyro.sample("x", dist.Normal(pyro.param("m", torch.zeros(())), 1.0), obs=data)
        pyro.sample("w", dist.Normal(torch.zeros(3), 1.0), obs=torch.zeros(3))

    svi = SVI(model, no_guide, Adam({"lr": 1e-3}), loss=Trace_GAN())
    with pytest.raises(ValueError, match="'w'.*no pyro.plate"):
        svi.step(torch.randn(6))


def test_error_on_non_reparameterizable_observed_site():
    def model(data):
        rate = pyro.param("rate", torch.tensor(2.0), constraint=dist.constraints.positive)
        with pyro.plate("data", data.shape[0]):
            pyro.sample("x", dist.Poisson(rate), obs=data)

    svi = SVI(model, no_guide, Adam({"lr": 1e-3}), loss=Trace_GAN())
    with pytest.raises(ValueError, match="'x' \\(Poisson\\) is not reparameterizable"):
        svi.step(torch.ones(5))


def test_error_on_non_reparameterizable_latent():
    def model(data):
        p = pyro.param("p", torch.tensor(0.5), constraint=dist.constraints.unit_interval)
        with pyro.plate("data", data.shape[0]):
            k = pyro.sample("k", dist.Bernoulli(p))
            pyro.sample("x", dist.Normal(k, 1.0), obs=data)

    svi = SVI(model, no_guide, Adam({"lr": 1e-3}), loss=Trace_GAN())
    with pytest.raises(ValueError, match="latent site 'k' \\(Bernoulli\\)"):
        svi.step(torch.ones(5))


def test_error_on_guide_with_latents():
    def guide(data=None, n=1000):
        pyro.sample("z", dist.Normal(0.0, 1.0))

    svi = SVI(bivariate_normal_gan(), guide, Adam({"lr": 1e-3}), loss=Trace_GAN())
    with pytest.raises(ValueError, match="guide samples 'z'"):
        svi.step(torch.randn(10, 2))


def test_error_on_bad_arguments():
    with pytest.raises(ValueError, match="valid names are"):
        Trace_GAN("fisher")
    with pytest.raises(ValueError, match="num_particles"):
        Trace_GAN(num_particles=0)
    with pytest.raises(TypeError, match="condition"):
        Trace_GAN(condition=3)
    with pytest.raises(TypeError, match="discriminator"):
        Trace_GAN(discriminator="mlp")


def test_error_on_condition_with_wrong_rows():
    def model(x, y=None):
        linear_conditional(x, y, record=False)

    loss = Trace_GAN(condition=lambda x, y=None: x[:3])
    svi = SVI(model, no_guide, Adam({"lr": 1e-3}), loss=loss)
    with pytest.raises(ValueError, match="one row per element of plate 'data'"):
        svi.step(torch.randn(8), torch.randn(8))
